//! Updates and device access against the in-memory engine.

use std::sync::Arc;

use motey_val::fake::FakeEngine;
use motey_val::{labels, ExecRequest, ImageState, LogQuery};

use super::remote::NoPeers;
use super::scripted_fog::{Fog, Script};
use super::*;
use crate::domain::{RevisionEvent, RolloutPhase};

fn orchestrator(engine: &FakeEngine, store: &Store) -> Orchestrator {
    super::tests::orchestrator(engine, store, Arc::new(NoPeers))
}

fn blueprint(web_env: &str, db_env: &str) -> Blueprint {
    crate::blueprint::parse(
        &format!(
            "name: shop\nimages:\n  - {{name: web, image: nginx, env: {{V: \"{web_env}\"}}}}\n  - {{name: db, image: busybox, env: {{V: \"{db_env}\"}}}}\n"
        ),
        &Default::default(),
    )
    .unwrap()
}

/// Containers of one image, with the `V` of their specification.
fn versions(engine: &FakeEngine, image: &str) -> Vec<(String, ImageState, String)> {
    engine
        .containers()
        .into_iter()
        .filter(|c| c.labels.get(labels::IMAGE_ID).map(String::as_str) == Some(image))
        .map(|c| {
            let v = engine.spec(&c.id).unwrap().env["V"].clone();
            (c.id, c.state, v)
        })
        .collect()
}

fn running_versions(engine: &FakeEngine, image: &str) -> Vec<String> {
    versions(engine, image)
        .into_iter()
        .filter(|(_, state, _)| *state == ImageState::Running)
        .map(|(_, _, v)| v)
        .collect()
}

async fn deployed(engine: &FakeEngine, store: &Store) -> (Orchestrator, ServiceId) {
    let orchestrator = orchestrator(engine, store);
    let service = orchestrator.submit(blueprint("1", "1")).await.unwrap();
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Running
    );
    (orchestrator, service.id)
}

#[tokio::test]
async fn update_starts_the_new_version_beside_the_old_then_stops_the_old() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (orchestrator, id) = deployed(&engine, &store).await;

    let updating = orchestrator.update(&id, blueprint("2", "1")).await.unwrap();
    assert_eq!(updating.state, ServiceState::Updating);
    for _ in 0..6 {
        orchestrator.reconcile_all().await;
        // Never a moment without a running web container.
        assert!(!running_versions(&engine, "web").is_empty());
    }
    let updated = orchestrator.service(&id).unwrap();
    assert_eq!(updated.state, ServiceState::Running, "{updated:?}");
    assert_eq!(updated.version, 2);
    assert_eq!(running_versions(&engine, "web"), vec!["2".to_owned()]);
    assert_eq!(versions(&engine, "web").len(), 1);
    // The unchanged image was left alone.
    assert_eq!(running_versions(&engine, "db"), vec!["1".to_owned()]);
    assert_eq!(engine.created_count(), 3);
    let events: Vec<_> = updated
        .history
        .iter()
        .map(|r| (r.event, r.version))
        .collect();
    assert_eq!(
        events,
        vec![
            (RevisionEvent::Deployed, 1),
            (RevisionEvent::UpdateStarted, 2),
            (RevisionEvent::Updated, 2)
        ]
    );
    assert_eq!(updated.rollout.unwrap().phase, RolloutPhase::Completed);
    // The new container carries its own name.
    let web = updated.images.iter().find(|i| i.id() == "web").unwrap();
    assert_eq!(web.version, 2);
    let name = engine
        .containers()
        .into_iter()
        .find(|c| Some(&c.id) == web.container_id.as_ref())
        .unwrap()
        .name;
    assert!(name.ends_with("-v2"), "{name}");
}

#[tokio::test]
async fn failing_new_version_is_rolled_back_and_says_why() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (orchestrator, id) = deployed(&engine, &store).await;

    orchestrator.update(&id, blueprint("2", "2")).await.unwrap();
    orchestrator.reconcile_all().await; // web v2 started beside web v1
    orchestrator.reconcile_all().await; // web v2 replaced web v1
    orchestrator.reconcile_all().await; // db v2 started beside db v1
    assert_eq!(running_versions(&engine, "web"), vec!["2".to_owned()]);
    let db_new = versions(&engine, "db")
        .into_iter()
        .find(|(_, _, v)| v == "2")
        .unwrap()
        .0;
    engine.set_state(&db_new, ImageState::Error, Some("exited with code 1"));
    for _ in 0..8 {
        orchestrator.reconcile_all().await;
        assert!(!running_versions(&engine, "web").is_empty());
        assert!(!running_versions(&engine, "db").is_empty());
    }
    let rolled_back = orchestrator.service(&id).unwrap();
    assert_eq!(
        rolled_back.state,
        ServiceState::RolledBack,
        "{rolled_back:?}"
    );
    let reason = rolled_back.reason.clone().unwrap();
    assert!(
        reason.contains("rolled back") && reason.contains("image db version 2: exited with code 1"),
        "{reason}"
    );
    assert_eq!(rolled_back.version, 1);
    // Both images run version 1 again; nothing of version 2 is left.
    assert_eq!(running_versions(&engine, "web"), vec!["1".to_owned()]);
    assert_eq!(running_versions(&engine, "db"), vec!["1".to_owned()]);
    assert_eq!(engine.containers().len(), 2);
    assert_eq!(
        rolled_back.history.last().map(|r| r.event),
        Some(RevisionEvent::RolledBack)
    );
    // A later update may try again.
    orchestrator.update(&id, blueprint("3", "1")).await.unwrap();
    for _ in 0..4 {
        orchestrator.reconcile_all().await;
    }
    let again = orchestrator.service(&id).unwrap();
    assert_eq!(again.state, ServiceState::Running);
    assert_eq!(again.version, 2);
}

#[tokio::test]
async fn agent_restarted_mid_update_finishes_it_without_duplicates() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (first, id) = deployed(&engine, &store).await;
    first.update(&id, blueprint("2", "1")).await.unwrap();
    first.reconcile_all().await;
    assert_eq!(
        versions(&engine, "web").len(),
        2,
        "both versions run for now"
    );

    let second = orchestrator(&engine, &store);
    for _ in 0..4 {
        second.reconcile_all().await;
    }
    assert_eq!(second.service(&id).unwrap().state, ServiceState::Running);
    assert_eq!(running_versions(&engine, "web"), vec!["2".to_owned()]);
    assert_eq!(versions(&engine, "web").len(), 1);
    assert_eq!(engine.created_count(), 3);
}

#[tokio::test]
async fn updates_that_do_not_fit_are_refused_naming_the_field() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (orchestrator, id) = deployed(&engine, &store).await;
    let other_images = crate::blueprint::parse(
        "name: shop\nimages:\n  - {name: web, image: nginx}\n  - {name: cache, image: busybox}\n",
        &Default::default(),
    )
    .unwrap();
    match orchestrator.update(&id, other_images).await {
        Err(OrchestratorError::UpdateRefused { field, .. }) => {
            assert_eq!(field.as_deref(), Some("images[1].name"))
        }
        other => panic!("{other:?}"),
    }
    match orchestrator.update(&id, blueprint("1", "1")).await {
        Err(OrchestratorError::UpdateRefused { code, .. }) => assert_eq!(code, "no_change"),
        other => panic!("{other:?}"),
    }
    orchestrator.update(&id, blueprint("2", "1")).await.unwrap();
    match orchestrator.update(&id, blueprint("3", "1")).await {
        Err(OrchestratorError::UpdateRefused { code, .. }) => {
            assert_eq!(code, "update_in_progress")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn terminating_during_an_update_removes_both_versions() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (orchestrator, id) = deployed(&engine, &store).await;
    orchestrator.update(&id, blueprint("2", "1")).await.unwrap();
    orchestrator.reconcile_all().await;
    orchestrator.terminate(&id).await.unwrap();
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&id).unwrap().state,
        ServiceState::Terminated
    );
    assert!(engine.containers().is_empty());
}

#[tokio::test]
async fn logs_and_exec_reach_the_image_and_peers_only_for_their_own_services() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let (orchestrator, id) = deployed(&engine, &store).await;
    let web = orchestrator
        .service(&id)
        .unwrap()
        .image("web")
        .unwrap()
        .container_id
        .clone()
        .unwrap();
    for n in 0..5 {
        engine.write_log(&web, &format!("line {n}"));
    }
    let (location, lines) = orchestrator
        .image_logs(
            &id,
            "web",
            LogQuery {
                tail: 2,
                since_ns: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(location, access::Location::Here(web.clone()));
    let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(texts, ["line 3", "line 4"]);

    let exec = ExecRequest {
        command: vec!["echo".into(), "hello".into()],
        timeout_secs: 5,
        max_output_bytes: 1024,
    };
    let (_, output) = orchestrator
        .image_exec(&id, "web", exec.clone())
        .await
        .unwrap();
    assert_eq!(output.output, "hello\n");
    assert!(matches!(
        orchestrator.image_exec(&id, "nope", exec.clone()).await,
        Err(access::AccessError::NotFound { .. })
    ));
    // Our own service is owned by us: another node may not reach into it.
    let stranger = NodeId("stranger".into());
    let limits = config::Access {
        admin_token: None,
        allow_exec: true,
        exec_timeout_secs: 5,
        exec_max_output: 1024,
    };
    assert!(matches!(
        orchestrator
            .hosted_image_exec(&stranger, &id, "web", exec.clone(), &limits)
            .await,
        Err(access::AccessError::Refused(_))
    ));
    assert!(matches!(
        orchestrator
            .hosted_image_logs(&stranger, &id, "web", LogQuery::default())
            .await,
        Err(access::AccessError::Refused(_))
    ));
    let owner = NodeId("here".into());
    let forbidden = config::Access {
        allow_exec: false,
        ..limits
    };
    assert!(orchestrator
        .hosted_image_exec(&owner, &id, "web", exec, &forbidden)
        .await
        .is_err());
    assert_eq!(engine.execs().len(), 1);
}

#[tokio::test]
async fn peer_hosted_image_is_redeployed_there_and_rolled_back_there() {
    let (engine, store) = (FakeEngine::new(), Store::temporary().unwrap());
    let fog = Fog::with(&[("edge", Script::capable())]);
    let orchestrator = super::tests::orchestrator(&engine, &store, fog.clone());
    let running_on_edge = || {
        fog.last_deployed("edge", "reader")
            .map(|image| image.env["V"].clone())
    };
    let reader = |v: &str| {
        crate::blueprint::parse(
            &format!("name: metering\nimages:\n  - {{name: reader, image: busybox, env: {{V: {v}}}, capabilities: [optical-probe]}}\n"),
            &Default::default(),
        )
        .unwrap()
    };
    let service = orchestrator.submit(reader("1")).await.unwrap();
    orchestrator.reconcile_all().await;
    orchestrator.reconcile_all().await;
    assert_eq!(
        orchestrator.service(&service.id).unwrap().state,
        ServiceState::Running
    );
    assert_eq!(running_on_edge().as_deref(), Some("1"));
    assert!(engine.containers().is_empty());

    orchestrator.update(&service.id, reader("2")).await.unwrap();
    for _ in 0..4 {
        orchestrator.reconcile_all().await;
    }
    let updated = orchestrator.service(&service.id).unwrap();
    assert_eq!(updated.state, ServiceState::Running, "{updated:?}");
    assert_eq!(updated.version, 2);
    assert_eq!(running_on_edge().as_deref(), Some("2"));

    orchestrator
        .update(&service.id, reader("broken"))
        .await
        .unwrap();
    for _ in 0..6 {
        orchestrator.reconcile_all().await;
    }
    let rolled_back = orchestrator.service(&service.id).unwrap();
    assert_eq!(
        rolled_back.state,
        ServiceState::RolledBack,
        "{rolled_back:?}"
    );
    assert!(rolled_back
        .reason
        .unwrap()
        .contains("image reader version 3: exited with code 1"));
    // The peer was given version 2 again.
    assert_eq!(running_on_edge().as_deref(), Some("2"));
    assert_eq!(rolled_back.images[0].blueprint.env["V"], "2");
}
