//! The reconcile loop against the in-memory engine and scripted peers.

use std::collections::BTreeMap;
use std::sync::Arc;

use motey_val::fake::FakeEngine;
use motey_val::{labels, ImageState};

use super::remote::{NoPeers, RemoteNodes};
use super::scripted_fog::{node, Fog, Script};
use super::*;
use crate::domain::{Capability, ImageDeployment};

/// Orchestrator settings of the unit tests: fast passes, no waiting.
pub(super) fn settings() -> config::Orchestrator {
    config::Orchestrator {
        reconcile_interval_secs: 1,
        stop_grace_secs: 0,
        update_settle_secs: 0,
        update_timeout_secs: 60,
    }
}

/// The orchestrator of node `id` over the in-memory engine, a temporary store and `remote`.
pub(super) fn orchestrator_of(
    id: &str,
    engine: &FakeEngine,
    store: &Store,
    remote: Arc<dyn RemoteNodes>,
) -> Orchestrator {
    Orchestrator::new(
        NodeId(id.into()),
        store.clone(),
        Arc::new(engine.clone()),
        remote,
        settings(),
        Default::default(),
    )
}

pub(super) fn orchestrator(
    engine: &FakeEngine,
    store: &Store,
    remote: Arc<dyn RemoteNodes>,
) -> Orchestrator {
    orchestrator_of("here", engine, store, remote)
}

pub(super) fn blueprint(yaml: &str) -> Blueprint {
    crate::blueprint::parse(yaml, &Default::default()).unwrap()
}

const TWO_IMAGES: &str =
    "name: shop\nimages:\n  - {name: web, image: nginx}\n  - {name: db, image: busybox}\n";

#[tokio::test]
async fn submitted_service_runs_and_terminates() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator.submit(blueprint(TWO_IMAGES)).await.unwrap();
    assert_eq!(service.state, ServiceState::Initial);

    orchestrator.reconcile_all().await;
    let running = orchestrator.service(&service.id).unwrap();
    assert_eq!(running.state, ServiceState::Running, "{running:?}");
    assert!(running
        .images
        .iter()
        .all(|i| i.node == Some(NodeId("here".into())) && i.container_id.is_some()));
    assert_eq!(engine.containers().len(), 2);
    let labelled = &engine.containers()[0].labels;
    assert_eq!(labelled[labels::SERVICE_ID], service.id.to_string());

    // A second pass changes nothing.
    orchestrator.reconcile_all().await;
    assert_eq!(engine.created_count(), 2);

    let stopping = orchestrator.terminate(&service.id).await.unwrap();
    assert_eq!(stopping.state, ServiceState::Stopping);
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Terminated
    );
    assert!(engine.containers().is_empty());
    // Terminating again is fine.
    orchestrator.terminate(&service.id).await.unwrap();
}

#[tokio::test]
async fn restarted_agent_adopts_containers_instead_of_duplicating() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let first = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = first.submit(blueprint(TWO_IMAGES)).await.unwrap();
    first.reconcile_all().await;
    let before = first.service(&service.id).unwrap();

    let second = orchestrator(&engine, &store, Arc::new(NoPeers));
    second.reconcile_all().await;
    let after = second.service(&service.id).unwrap();
    assert_eq!(engine.created_count(), 2);
    assert_eq!(before.images, after.images);
}

#[tokio::test]
async fn exited_image_makes_the_service_error_with_its_reason() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator.submit(blueprint(TWO_IMAGES)).await.unwrap();
    orchestrator.reconcile_all().await;
    let db = orchestrator
        .service(&service.id)
        .unwrap()
        .image("db")
        .unwrap()
        .container_id
        .clone()
        .unwrap();
    engine.set_state(&db, ImageState::Error, Some("exited with code 3"));
    orchestrator.reconcile_all().await;
    let failed = orchestrator.service(&service.id).unwrap();
    assert_eq!(failed.state, ServiceState::Error);
    assert_eq!(
        failed.reason.as_deref(),
        Some("image db: exited with code 3")
    );
    // The failed container is not replaced behind the user's back.
    assert_eq!(engine.created_count(), 2);
}

#[tokio::test]
async fn vanished_container_is_recreated() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator.submit(blueprint(TWO_IMAGES)).await.unwrap();
    orchestrator.reconcile_all().await;
    let web = orchestrator
        .service(&service.id)
        .unwrap()
        .image("web")
        .unwrap()
        .container_id
        .clone()
        .unwrap();
    engine.forget(&web);
    orchestrator.reconcile_all().await;
    let healed = orchestrator.service(&service.id).unwrap();
    assert_eq!(healed.state, ServiceState::Running);
    assert_ne!(
        healed.image("web").unwrap().container_id.as_deref(),
        Some(web.as_str())
    );
    assert_eq!(engine.containers().len(), 2);
}

#[tokio::test]
async fn unavailable_image_is_an_error_naming_it() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    engine.make_unavailable("busybox");
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator.submit(blueprint(TWO_IMAGES)).await.unwrap();
    orchestrator.reconcile_all().await;
    let failed = orchestrator.service(&service.id).unwrap();
    assert_eq!(failed.state, ServiceState::Error);
    assert!(
        failed.reason.as_deref().unwrap().contains("busybox"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn missing_capability_is_named_and_placement_resumes_when_it_appears() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator
        .submit(blueprint(
            "name: meter\nimages:\n  - image: reader\n    capabilities: [optical-probe]\n",
        ))
        .await
        .unwrap();
    orchestrator.reconcile_all().await;
    let waiting = orchestrator.service(&service.id).unwrap();
    assert_eq!(waiting.state, ServiceState::Error);
    assert_eq!(
        waiting.reason.as_deref(),
        Some("image reader: no node offers the capabilities optical-probe")
    );
    assert!(engine.containers().is_empty());

    store
        .capabilities
        .put(&Capability {
            capability: "optical-probe".into(),
            capability_type: "hardware".into(),
        })
        .unwrap();
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Running
    );
}

#[tokio::test]
async fn containers_no_service_wants_are_removed() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let service = orchestrator.submit(blueprint(TWO_IMAGES)).await.unwrap();
    orchestrator.reconcile_all().await;
    // The service disappears while the agent is down (e.g. the store was restored).
    store.services.remove(service.id.as_str()).unwrap();
    orchestrator.reconcile_all().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test]
async fn image_needing_a_peer_capability_runs_there_and_is_rescheduled_when_it_is_gone() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("probe-node", Script::capable())]);
    let orchestrator = orchestrator(&engine, &store, fog.clone());
    let service = orchestrator
        .submit(blueprint("name: meter\nimages:\n  - {name: reader, image: r, capabilities: [optical-probe]}\n  - {name: local, image: l}\n"))
        .await
        .unwrap();
    orchestrator.reconcile_all().await;
    orchestrator.reconcile_all().await;
    let placed = orchestrator.service(&service.id).unwrap();
    assert_eq!(
        placed.image("reader").unwrap().node,
        Some(NodeId("probe-node".into()))
    );
    assert_eq!(
        placed.image("local").unwrap().node,
        Some(NodeId("here".into()))
    );
    assert_eq!(placed.state, ServiceState::Running, "{placed:?}");
    assert_eq!(
        fog.deployed.lock().unwrap()[0].1.owner,
        NodeId("here".into())
    );
    assert_eq!(
        engine.containers().len(),
        1,
        "only the local image runs here"
    );

    // The peer vanishes: the image is placed again; with no capable node it waits in ERROR.
    fog.change("probe-node", |peer| (peer.alive, peer.gone) = (false, true));
    orchestrator.reconcile_all().await;
    orchestrator.reconcile_all().await;
    let lost = orchestrator.service(&service.id).unwrap();
    assert_eq!(lost.image("reader").unwrap().node, None);
    assert_eq!(lost.state, ServiceState::Error);

    fog.change("probe-node", |peer| (peer.alive, peer.gone) = (true, false));
    orchestrator.reconcile_all().await;
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Running
    );

    orchestrator.terminate(&service.id).await.unwrap();
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Terminated
    );
    assert_eq!(
        *fog.terminated.lock().unwrap(),
        [(node("probe-node"), "reader".to_string())]
    );
}

/// The owner updates a hosted image while a pass, started from the old record, is under
/// way: that pass must not write the old specification back over the new one.
#[tokio::test]
async fn a_pass_started_before_an_update_of_a_hosted_image_does_not_undo_it() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let deployment = |body: &str| ImageDeployment {
        service_id: ServiceId("svc1".into()),
        service_name: "meter".into(),
        owner: NodeId("owner".into()),
        image: blueprint(&format!(
            "name: x\nimages:\n  - {{name: reader, image: r, env: {{BODY: {body}}}}}\n"
        ))
        .images
        .remove(0),
        version: 1,
    };
    orchestrator
        .host_image(&NodeId("owner".into()), deployment("v1"))
        .await
        .unwrap();
    orchestrator.reconcile_all().await;
    let before_update = store.services.get("svc1").unwrap().unwrap();

    orchestrator
        .host_image(&NodeId("owner".into()), deployment("v2"))
        .await
        .unwrap();
    orchestrator.reconcile_service(before_update).await;
    let stored = store.services.get("svc1").unwrap().unwrap();
    assert_eq!(stored.images[0].blueprint.env["BODY"], "v2");

    orchestrator.reconcile_all().await;
    let bodies: Vec<String> = engine
        .containers()
        .iter()
        .map(|c| engine.spec(&c.id).unwrap().env["BODY"].clone())
        .collect();
    assert_eq!(bodies, ["v2"]);
}

#[tokio::test]
async fn hosted_images_run_for_their_owner_until_released() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let image = blueprint(
        "name: x\nimages:\n  - {name: reader, image: r, capabilities: [optical-probe]}\n",
    )
    .images
    .remove(0);
    let deployment = ImageDeployment {
        service_id: ServiceId("svc1".into()),
        service_name: "meter".into(),
        owner: NodeId("owner".into()),
        image,
        version: 1,
    };
    let refused = orchestrator
        .host_image(&deployment.owner, deployment.clone())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("optical-probe"), "{refused}");

    store
        .capabilities
        .put(&Capability {
            capability: "optical-probe".into(),
            capability_type: "hardware".into(),
        })
        .unwrap();
    orchestrator
        .host_image(&deployment.owner, deployment.clone())
        .await
        .unwrap();
    orchestrator
        .host_image(&deployment.owner, deployment.clone())
        .await
        .unwrap(); // a retried request
    orchestrator.reconcile_all().await;
    let status = orchestrator
        .hosted_image_status(&deployment.owner, &deployment.service_id, "reader")
        .unwrap();
    assert_eq!(status.state, ImageState::Running);
    assert_eq!(engine.containers().len(), 1);
    let not_owner = orchestrator
        .terminate(&deployment.service_id)
        .await
        .unwrap_err();
    assert!(matches!(not_owner, OrchestratorError::NotOwner { .. }));

    orchestrator
        .release_hosted_image(&deployment.owner, &deployment.service_id, "reader")
        .await
        .unwrap();
    orchestrator.reconcile_all().await;
    assert!(engine.containers().is_empty());
    assert!(orchestrator
        .hosted_image_status(&deployment.owner, &deployment.service_id, "reader")
        .is_err());
    let _ = BTreeMap::<String, String>::new();
}

fn hosted(service: &str, name: &str, owner: &str, yaml_options: &str) -> ImageDeployment {
    ImageDeployment {
        service_id: ServiceId(service.into()),
        service_name: name.into(),
        owner: NodeId(owner.into()),
        image: blueprint(&format!(
            "name: {name}\nimages:\n  - name: reader\n    image: r\n{yaml_options}"
        ))
        .images
        .remove(0),
        version: 1,
    }
}

#[tokio::test]
async fn a_peer_deployment_passes_this_nodes_policy_not_the_owners() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let mut privileged = hosted("svc1", "meter", "owner", "");
    privileged.image.privileges.privileged = true;
    privileged.image.volumes = vec![motey_val::VolumeMount {
        source: "/".into(),
        target: "/host".into(),
        read_only: false,
    }];
    let refused = orchestrator
        .host_image(&NodeId("owner".into()), privileged)
        .await
        .unwrap_err();
    assert!(matches!(refused, HostedImageError::Policy(_)), "{refused}");
    let reason = refused.to_string();
    assert!(
        reason.contains("privileged") && reason.contains("bind mount of /"),
        "{reason}"
    );
    assert!(store.services.get("svc1").unwrap().is_none());
    orchestrator.reconcile_all().await;
    assert!(engine.containers().is_empty());
}

#[tokio::test]
async fn only_the_recorded_owner_may_act_on_a_hosted_image_and_nobody_on_an_own_one() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let (owner, intruder) = (NodeId("owner".into()), NodeId("intruder".into()));
    orchestrator
        .host_image(&owner, hosted("svc1", "meter", "owner", ""))
        .await
        .unwrap();
    let own = orchestrator
        .submit(blueprint(
            "name: own\nimages:\n  - {name: reader, image: r}\n",
        ))
        .await
        .unwrap();
    orchestrator.reconcile_all().await;
    assert_eq!(engine.containers().len(), 2);

    let forged = orchestrator
        .host_image(&intruder, hosted("svc1", "meter", "owner", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(forged, HostedImageError::ForgedOwner { .. }),
        "{forged}"
    );
    for (sender, service) in [
        (&intruder, ServiceId("svc1".into())),
        (&intruder, own.id.clone()),
        (orchestrator.node(), own.id.clone()),
    ] {
        let deploy = hosted(service.as_str(), "meter", sender.as_str(), "");
        let refused = orchestrator.host_image(sender, deploy).await.unwrap_err();
        assert!(
            matches!(refused, HostedImageError::NotOwner { .. }),
            "{refused}"
        );
        let refused = orchestrator
            .release_hosted_image(sender, &service, "reader")
            .await
            .unwrap_err();
        assert!(
            matches!(refused, HostedImageError::NotOwner { .. }),
            "{refused}"
        );
        let refused = orchestrator
            .hosted_image_status(sender, &service, "reader")
            .unwrap_err();
        assert!(
            matches!(refused, HostedImageError::NotOwner { .. }),
            "{refused}"
        );
    }
    orchestrator.reconcile_all().await;
    assert_eq!(
        engine.containers().len(),
        2,
        "a refused request changed what runs"
    );
    assert_eq!(
        orchestrator.service(&own.id).unwrap().state,
        ServiceState::Running
    );

    // One live service per name: a second would share the first one's volumes.
    let namesake = orchestrator
        .host_image(&intruder, hosted("svc2", "own", "intruder", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(namesake, HostedImageError::NameTaken { .. }),
        "{namesake}"
    );
    let namesake = orchestrator
        .submit(blueprint(
            "name: meter\nimages:\n  - {name: web, image: r}\n",
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(namesake, OrchestratorError::NameTaken { .. }),
        "{namesake}"
    );
}

#[tokio::test]
async fn an_image_this_nodes_policy_no_longer_allows_is_not_started() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let orchestrator = orchestrator(&engine, &store, Arc::new(NoPeers));
    let mut asking = blueprint("name: shop\nimages:\n  - {name: web, image: nginx}\n");
    // As a blueprint accepted under an earlier, looser setting, or a rollback target.
    asking.images[0].privileges.host_network = true;
    let service = orchestrator.submit(asking).await.unwrap();
    orchestrator.reconcile_all().await;
    assert!(engine.containers().is_empty());
    let stored = orchestrator.service(&service.id).unwrap();
    assert_eq!(stored.images[0].state, ImageState::Error);
    let reason = stored.images[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("host network"), "{reason}");
}
