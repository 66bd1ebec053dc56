//! Node lifecycle decisions of the reconcile loop, against the in-memory engine and a
//! scripted fog: grace period, owners confirming hosted images, lost capabilities,
//! phases that refuse deployments, decommissioning.

use std::time::Duration;

use motey_val::fake::FakeEngine;
use motey_val::ImageState;

use super::*;
use crate::domain::ImageDeployment;

use super::scripted_fog::{node, probe, Fog, Script};
use super::tests::{blueprint, orchestrator_of};

const READER: &str =
    "name: meter\nimages:\n  - {name: reader, image: r, capabilities: [optical-probe]}\n";

async fn passes(orchestrator: &Orchestrator, count: usize) {
    for _ in 0..count {
        orchestrator.reconcile_all().await;
    }
}

#[tokio::test]
async fn a_peer_back_within_the_grace_period_is_readopted_not_churned() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("b", Script::capable()), ("c", Script::capable())]);
    let owner = orchestrator_of("a", &engine, &store, fog.clone());
    owner.set_reschedule_grace(Duration::from_secs(60));
    let service = owner.submit(blueprint(READER)).await.unwrap();
    passes(&owner, 2).await;
    assert_eq!(
        owner
            .service(&service.id)
            .unwrap()
            .image("reader")
            .unwrap()
            .node,
        Some(node("b"))
    );

    // b is cut off and turns gone: within the grace period its image stays with it.
    fog.change("b", |b| {
        b.alive = false;
        b.gone = true;
    });
    passes(&owner, 3).await;
    let waiting = owner.service(&service.id).unwrap();
    let reader = waiting.image("reader").unwrap();
    assert_eq!(reader.node, Some(node("b")));
    assert!(
        reader.reason.as_deref().unwrap().contains("node b is gone"),
        "{reader:?}"
    );

    // Back before the grace period ends: re-adopted, never deployed elsewhere.
    fog.change("b", |b| {
        b.alive = true;
        b.gone = false;
    });
    passes(&owner, 1).await;
    let back = owner.service(&service.id).unwrap();
    assert_eq!(back.state, ServiceState::Running, "{back:?}");
    assert_eq!(back.image("reader").unwrap().reason, None);
    assert_eq!(fog.deployments_to("b"), 1);
    assert_eq!(fog.deployments_to("c"), 0);
}

#[tokio::test]
async fn after_the_grace_period_the_image_moves_to_another_capable_node() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("b", Script::capable()), ("c", Script::capable())]);
    let owner = orchestrator_of("a", &engine, &store, fog.clone());
    owner.set_reschedule_grace(Duration::from_millis(200));
    let service = owner.submit(blueprint(READER)).await.unwrap();
    passes(&owner, 2).await;
    fog.change("b", |b| {
        b.alive = false;
        b.gone = true;
    });
    passes(&owner, 1).await;
    assert_eq!(
        owner
            .service(&service.id)
            .unwrap()
            .image("reader")
            .unwrap()
            .node,
        Some(node("b"))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    passes(&owner, 2).await;
    let moved = owner.service(&service.id).unwrap();
    assert_eq!(moved.image("reader").unwrap().node, Some(node("c")));
    assert_eq!(moved.state, ServiceState::Running);
}

#[tokio::test]
async fn a_suspect_peer_is_not_a_gone_peer() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("b", Script::capable()), ("c", Script::capable())]);
    let owner = orchestrator_of("a", &engine, &store, fog.clone());
    let service = owner.submit(blueprint(READER)).await.unwrap();
    passes(&owner, 2).await;
    fog.change("b", |b| b.alive = false); // silent, not gone yet
    passes(&owner, 2).await;
    let reader = owner.service(&service.id).unwrap().images[0].clone();
    assert_eq!(reader.node, Some(node("b")));
    assert!(reader.reason.unwrap().starts_with("state unknown"));
}

fn hosted_reader() -> ImageDeployment {
    ImageDeployment {
        service_id: ServiceId("svc1".into()),
        service_name: "meter".into(),
        owner: node("owner"),
        image: blueprint(READER).images.remove(0),
        version: 1,
    }
}

#[tokio::test]
async fn a_hosted_image_its_owner_moved_elsewhere_is_removed_after_a_restart() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let fog = Fog::with(&[]);
    *fog.assigned.lock().unwrap() = Some(true);
    let host = orchestrator_of("b", &engine, &store, fog.clone());
    host.host_image(&node("owner"), hosted_reader())
        .await
        .unwrap();
    passes(&host, 2).await;
    assert_eq!(engine.containers().len(), 1);
    assert_eq!(
        *fog.asked.lock().unwrap(),
        1,
        "asked once, then trusted a while"
    );

    // While b was down, the owner moved the image away. The restarted agent asks first.
    *fog.assigned.lock().unwrap() = Some(false);
    let restarted = orchestrator_of("b", &engine, &store, fog.clone());
    passes(&restarted, 1).await;
    assert!(engine.containers().is_empty(), "nothing runs twice");
    assert!(restarted
        .hosted_image_status(&node("owner"), &ServiceId("svc1".into()), "reader")
        .is_err());
}

#[tokio::test]
async fn a_hosted_image_keeps_running_while_its_owner_is_unreachable() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let fog = Fog::with(&[]);
    let host = orchestrator_of("b", &engine, &store, fog.clone());
    host.host_image(&node("owner"), hosted_reader())
        .await
        .unwrap();
    passes(&host, 1).await;
    // Rebooted while the link is down: adopted and kept (edge autonomy).
    let rebooted = orchestrator_of("b", &engine, &store, fog.clone());
    passes(&rebooted, 2).await;
    assert_eq!(engine.containers().len(), 1);
    assert_eq!(engine.created_count(), 1);
    let status = rebooted
        .hosted_image_status(&node("owner"), &ServiceId("svc1".into()), "reader")
        .unwrap();
    assert_eq!(status.state, ImageState::Running);
}

#[tokio::test]
async fn the_owner_says_which_node_it_assigns_an_image_to() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("b", Script::capable())]);
    let owner = orchestrator_of("a", &engine, &store, fog.clone());
    let service = owner.submit(blueprint(READER)).await.unwrap();
    passes(&owner, 1).await;
    assert!(owner.assigns(&service.id, "reader", &node("b")).unwrap());
    assert!(!owner.assigns(&service.id, "reader", &node("c")).unwrap());
    assert!(!owner.assigns(&service.id, "other", &node("b")).unwrap());
    assert!(!owner
        .assigns(&ServiceId("unknown".into()), "reader", &node("b"))
        .unwrap());
    owner.terminate(&service.id).await.unwrap();
    assert!(!owner.assigns(&service.id, "reader", &node("b")).unwrap());
}

#[tokio::test]
async fn a_lost_capability_moves_the_image_or_names_it_in_error() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let fog = Fog::with(&[]);
    let orchestrator = orchestrator_of("a", &engine, &store, fog.clone());
    let service = orchestrator.submit(blueprint(READER)).await.unwrap();
    passes(&orchestrator, 1).await;
    assert_eq!(engine.containers().len(), 1);

    // The probe is unplugged and no other node has one.
    store.capabilities.remove("hardware/optical-probe").unwrap();
    passes(&orchestrator, 1).await;
    assert!(engine.containers().is_empty());
    let failed = orchestrator.service(&service.id).unwrap();
    assert_eq!(failed.state, ServiceState::Error);
    assert_eq!(
        failed.reason.as_deref(),
        Some("image reader: no node offers the capabilities optical-probe")
    );

    // A peer with a probe appears: the image moves there.
    fog.join("c", Script::capable());
    passes(&orchestrator, 2).await;
    let moved = orchestrator.service(&service.id).unwrap();
    assert_eq!(moved.image("reader").unwrap().node, Some(node("c")));
    assert_eq!(moved.state, ServiceState::Running);
}

#[tokio::test]
async fn a_lost_capability_releases_a_hosted_image_to_its_owner() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let fog = Fog::with(&[]);
    *fog.assigned.lock().unwrap() = Some(true);
    let host = orchestrator_of("b", &engine, &store, fog.clone());
    host.host_image(&node("owner"), hosted_reader())
        .await
        .unwrap();
    passes(&host, 1).await;
    store.capabilities.remove("hardware/optical-probe").unwrap();
    passes(&host, 1).await;
    assert!(engine.containers().is_empty());
    let gone = host
        .hosted_image_status(&node("owner"), &ServiceId("svc1".into()), "reader")
        .unwrap_err();
    assert!(gone.to_string().contains("not found"), "{gone}");
}

#[tokio::test]
async fn a_node_that_is_not_operating_refuses_deployments_with_the_reason() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let orchestrator = orchestrator_of("a", &engine, &store, Fog::with(&[]));
    orchestrator.lifecycle().set(
        crate::lifecycle::NodePhase::Recovering,
        Some("container engine unreachable: no such socket".into()),
    );
    let refused = orchestrator.submit(blueprint(READER)).await.unwrap_err();
    assert_eq!(
        refused.to_string(),
        "node a is recovering (container engine unreachable: no such socket) and accepts no deployments"
    );
    let refused = orchestrator
        .host_image(&node("owner"), hosted_reader())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("recovering"), "{refused}");

    orchestrator
        .lifecycle()
        .set(crate::lifecycle::NodePhase::Operating, None);
    orchestrator.submit(blueprint(READER)).await.unwrap();
}

#[tokio::test]
async fn images_on_a_decommissioning_peer_move_to_another_capable_node() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("b", Script::capable())]);
    let owner = orchestrator_of("a", &engine, &store, fog.clone());
    let service = owner.submit(blueprint(READER)).await.unwrap();
    passes(&owner, 1).await;
    assert_eq!(
        owner.service(&service.id).unwrap().images[0].node,
        Some(node("b"))
    );

    fog.join("c", Script::capable());
    fog.change("b", |b| b.decommissioning = true);
    passes(&owner, 2).await;
    let moved = owner.service(&service.id).unwrap();
    assert_eq!(moved.images[0].node, Some(node("c")));
    assert_eq!(moved.state, ServiceState::Running);
    assert_eq!(
        *fog.terminated.lock().unwrap(),
        vec![(node("b"), "reader".to_string())]
    );
}

#[tokio::test]
async fn decommissioning_terminates_own_services_and_waits_for_hosted_images() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    store.capabilities.put(&probe()).unwrap();
    let fog = Fog::with(&[]);
    let node_b = orchestrator_of("b", &engine, &store, fog.clone());
    let own = node_b
        .submit(blueprint(
            "name: local\nimages:\n  - {name: web, image: nginx}\n",
        ))
        .await
        .unwrap();
    node_b
        .host_image(&node("owner"), hosted_reader())
        .await
        .unwrap();
    passes(&node_b, 1).await;
    assert_eq!(engine.containers().len(), 2);

    let progress = node_b.decommission().await.unwrap();
    assert_eq!(progress.own_services, 1);
    assert_eq!(progress.hosted_images, 1);
    let refused = node_b
        .hosted_image_status(&node("owner"), &ServiceId("svc1".into()), "reader")
        .unwrap_err();
    assert!(
        refused.to_string().contains("is decommissioning"),
        "{refused}"
    );
    passes(&node_b, 1).await;
    assert_eq!(
        node_b.service(&own.id).unwrap().state,
        ServiceState::Terminated
    );
    let progress = node_b.drain_progress().unwrap();
    assert!(!progress.is_drained());
    assert_eq!(
        engine.containers().len(),
        1,
        "the hosted image runs until taken back"
    );

    // The owner placed it elsewhere and releases it here.
    node_b
        .release_hosted_image(&node("owner"), &ServiceId("svc1".into()), "reader")
        .await
        .unwrap();
    passes(&node_b, 1).await;
    assert!(node_b.drain_progress().unwrap().is_drained());
    assert!(engine.containers().is_empty());
}
