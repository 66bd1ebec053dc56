//! The Docker plugin against the real Docker Engine, with the `motey/testbox` image.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use common::{docker, next_event, poll, Fixture};
use motey_val::{
    labels, DeviceMapping, EngineEvent, ImageState, PortMapping, Protocol, RestartPolicy, ValError,
    VirtualizationEngine, VolumeMount,
};
use motey_val_docker::DockerEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The raw Docker view of a container, to check what the plugin asked Docker for.
async fn docker_inspect(id: &str) -> bollard::models::ContainerInspectResponse {
    let docker = bollard::Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .unwrap()
}

async fn http_get(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

#[tokio::test]
async fn endpoints_are_configurable_and_failures_are_unreachable() {
    let fixture = Fixture::new("endpoints");
    let version = fixture.engine.ping().await.unwrap();
    assert!(!version.is_empty());
    assert_eq!(fixture.engine.name(), "docker");

    let explicit = DockerEngine::connect(Some("unix:///var/run/docker.sock")).unwrap();
    assert_eq!(explicit.ping().await.unwrap(), version);
    let bare_path = DockerEngine::connect(Some("/var/run/docker.sock")).unwrap();
    assert_eq!(bare_path.ping().await.unwrap(), version);

    // Docker may start after the agent: a socket that is not there yet is looked for again
    // at every operation, which fails as unreachable naming it until it appears.
    let later = tempfile::tempdir().unwrap();
    let socket = later.path().join("docker.sock");
    let waiting = DockerEngine::connect(Some(socket.to_str().unwrap())).unwrap();
    let missing = waiting.ping().await.unwrap_err();
    assert!(
        matches!(missing, ValError::Unreachable(ref m) if m.contains("docker.sock")),
        "{missing:?}"
    );
    let mut relay = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", socket.display()))
        .arg("UNIX-CONNECT:/var/run/docker.sock")
        .spawn()
        .expect("socat (scripts/setup-deps.sh installs it)");
    let reached = poll("the engine behind the new socket", || async {
        waiting.ping().await.ok()
    })
    .await;
    let _ = relay.kill();
    let _ = relay.wait();
    assert_eq!(reached, version);

    // Port 1 on loopback: nothing listens there.
    let closed = DockerEngine::connect(Some("tcp://127.0.0.1:1")).unwrap();
    let error = closed.ping().await.unwrap_err();
    assert!(matches!(error, ValError::Unreachable(_)), "{error:?}");
    let error = closed.inspect("whatever").await.unwrap_err();
    assert!(matches!(error, ValError::Unreachable(_)), "{error:?}");

    let unsupported = DockerEngine::connect(Some("ftp://example")).unwrap_err();
    assert!(
        matches!(unsupported, ValError::Unreachable(ref m) if m.contains("ftp://example")),
        "{unsupported:?}"
    );
}

#[tokio::test]
async fn create_applies_labels_env_ports_mounts_devices_and_privileges() {
    let fixture = Fixture::new("create");
    let shared = tempfile::tempdir().unwrap();
    let mut spec = fixture.spec("web");
    spec.env = BTreeMap::from([
        ("TESTBOX_LISTEN".into(), "8080".into()),
        ("TESTBOX_BODY".into(), fixture.node_id.clone()),
    ]);
    spec.ports = vec![
        PortMapping {
            container_port: 8080,
            host_port: None,
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Tcp,
        },
        PortMapping {
            container_port: 7070,
            host_port: None,
            host_ip: Some("127.0.0.1".into()),
            protocol: Protocol::Udp,
        },
    ];
    spec.volumes = vec![VolumeMount {
        source: shared.path().to_str().unwrap().into(),
        target: "/shared".into(),
        read_only: true,
    }];
    spec.devices = vec![DeviceMapping {
        host_path: "/dev/null".into(),
        container_path: "/dev/probe".into(),
        permissions: None,
    }];
    spec.privileges.cap_add = vec!["NET_ADMIN".into()];
    spec.restart = RestartPolicy::UnlessStopped;
    spec.command = None;

    let id = fixture.engine.create_and_start(&spec).await.unwrap();

    let status = fixture.engine.inspect(&id).await.unwrap();
    assert_eq!(status.state, ImageState::Running);
    assert_eq!(status.engine_state, "running");
    assert_eq!(status.name, spec.name);
    assert_eq!(status.image, spec.image);
    assert_eq!(status.reason, None);
    for (key, value) in &spec.labels {
        assert_eq!(status.labels.get(key), Some(value), "label {key}");
    }

    let raw = docker_inspect(&id).await;
    let env = raw.config.as_ref().unwrap().env.clone().unwrap();
    assert!(
        env.contains(&format!("TESTBOX_BODY={}", fixture.node_id)),
        "{env:?}"
    );
    let host = raw.host_config.unwrap();
    let bindings = host.port_bindings.unwrap();
    assert_eq!(
        bindings["8080/tcp"].as_ref().unwrap()[0].host_ip.as_deref(),
        Some("127.0.0.1")
    );
    assert!(bindings.contains_key("7070/udp"), "{bindings:?}");
    let mount = &host.mounts.unwrap()[0];
    assert_eq!(mount.target.as_deref(), Some("/shared"));
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        host.devices.unwrap()[0].path_in_container.as_deref(),
        Some("/dev/probe")
    );
    assert_eq!(host.cap_add, Some(vec!["NET_ADMIN".to_string()]));
    assert_eq!(
        host.restart_policy.unwrap().name,
        Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED)
    );

    // The published port really reaches the workload.
    let ports = raw.network_settings.unwrap().ports.unwrap();
    let host_port: u16 = ports["8080/tcp"].as_ref().unwrap()[0]
        .host_port
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    let response = poll("testbox to answer on its published port", || {
        http_get(host_port)
    })
    .await;
    assert!(response.ends_with(&fixture.node_id), "{response}");

    let logs = fixture.engine.logs(&id, 100).await.unwrap();
    assert!(logs.contains(&"testbox started".to_string()), "{logs:?}");
    assert!(
        logs.contains(&format!("env TESTBOX_BODY={}", fixture.node_id)),
        "{logs:?}"
    );
    let last = fixture.engine.logs(&id, 1).await.unwrap();
    assert_eq!(last.len(), 1, "{last:?}");

    fixture.engine.stop(&id, 10).await.unwrap();
    fixture.engine.remove(&id).await.unwrap();
}

#[tokio::test]
async fn container_states_map_to_image_states() {
    let fixture = Fixture::new("states");
    let running = fixture
        .engine
        .create_and_start(&fixture.spec("running"))
        .await
        .unwrap();

    let mut clean = fixture.spec("clean-exit");
    clean.env = BTreeMap::from([("TESTBOX_EXIT_AFTER_MS".into(), "100".into())]);
    let clean = fixture.engine.create_and_start(&clean).await.unwrap();

    let mut failing = fixture.spec("failing");
    failing.env = BTreeMap::from([
        ("TESTBOX_EXIT_AFTER_MS".into(), "100".into()),
        ("TESTBOX_EXIT_CODE".into(), "3".into()),
    ]);
    let failing = fixture.engine.create_and_start(&failing).await.unwrap();

    let status = fixture.engine.inspect(&running).await.unwrap();
    assert_eq!((status.state, status.reason), (ImageState::Running, None));

    // Paused behind the agent's back: not doing its work, so an error.
    docker(&["pause", &running]).unwrap();
    let status = fixture.engine.inspect(&running).await.unwrap();
    assert_eq!(
        (status.state, status.engine_state.as_str()),
        (ImageState::Error, "paused")
    );
    assert!(status.reason.unwrap().starts_with("paused"));
    docker(&["unpause", &running]).unwrap();

    let status = fixture
        .wait_for(&clean, "clean exit", |s| s.engine_state == "exited")
        .await;
    assert_eq!(status.state, ImageState::Terminated);
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(status.reason, None);

    let status = fixture
        .wait_for(&failing, "failing exit", |s| s.engine_state == "exited")
        .await;
    assert_eq!(status.state, ImageState::Error);
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.reason.as_deref(), Some("exited with code 3"));

    // `list` sees all three by node id, and only the failing one by image id.
    let mine = BTreeMap::from([(labels::NODE_ID.to_owned(), fixture.node_id.clone())]);
    let mut ids: Vec<String> = fixture
        .engine
        .list(&mine)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    let mut expected = vec![running.clone(), clean.clone(), failing.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let mut only_failing = mine.clone();
    only_failing.insert(labels::IMAGE_ID.to_owned(), "failing".into());
    let listed = fixture.engine.list(&only_failing).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, failing);
    assert_eq!(listed[0].reason.as_deref(), Some("exited with code 3"));

    // SIGTERM ends testbox with code 0: a stopped container is terminated, not failed.
    fixture.engine.stop(&running, 10).await.unwrap();
    let status = fixture.engine.inspect(&running).await.unwrap();
    assert_eq!(
        (status.state, status.exit_code),
        (ImageState::Terminated, Some(0))
    );
}

#[tokio::test]
async fn events_report_a_die_with_its_exit_code() {
    let fixture = Fixture::new("events");
    // Subscribed before the container exists; the first poll comes later on purpose.
    let mut events = fixture.engine.events();
    let mut spec = fixture.spec("crashing");
    spec.env = BTreeMap::from([
        ("TESTBOX_EXIT_AFTER_MS".into(), "200".into()),
        ("TESTBOX_EXIT_CODE".into(), "7".into()),
    ]);
    let id = fixture.engine.create_and_start(&spec).await.unwrap();

    next_event(&mut events, &id, "start").await;
    let EngineEvent::ContainerChanged {
        labels: event_labels,
        exit_code,
        ..
    } = next_event(&mut events, &id, "die").await;
    assert_eq!(exit_code, Some(7));
    assert_eq!(event_labels.get(labels::NODE_ID), Some(&fixture.node_id));
    assert_eq!(
        event_labels.get(labels::IMAGE_ID).map(String::as_str),
        Some("crashing")
    );
    assert!(!event_labels.contains_key("exitCode"));

    fixture.engine.remove(&id).await.unwrap();
    next_event(&mut events, &id, "destroy").await;
}

#[tokio::test]
async fn on_failure_policy_makes_docker_restart_the_container() {
    let fixture = Fixture::new("restart");
    let mut events = fixture.engine.events();
    let mut spec = fixture.spec("flaky");
    spec.restart = RestartPolicy::OnFailure;
    spec.env = BTreeMap::from([
        ("TESTBOX_EXIT_AFTER_MS".into(), "300".into()),
        ("TESTBOX_EXIT_CODE".into(), "4".into()),
    ]);
    let id = fixture.engine.create_and_start(&spec).await.unwrap();

    next_event(&mut events, &id, "start").await;
    let EngineEvent::ContainerChanged { exit_code, .. } = next_event(&mut events, &id, "die").await;
    assert_eq!(exit_code, Some(4));
    // Docker, not the agent, starts it again.
    next_event(&mut events, &id, "start").await;
    let raw = docker_inspect(&id).await;
    assert!(
        raw.restart_count.unwrap_or(0) >= 1,
        "restart count {:?}",
        raw.restart_count
    );

    // A stop ends the restarting for good.
    fixture.engine.stop(&id, 10).await.unwrap();
    let status = fixture.engine.inspect(&id).await.unwrap();
    assert_ne!(status.state, ImageState::Running);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        fixture.engine.inspect(&id).await.unwrap().engine_state,
        "exited"
    );
}

#[tokio::test]
async fn stop_and_remove_are_idempotent() {
    let fixture = Fixture::new("idempotent");
    let id = fixture
        .engine
        .create_and_start(&fixture.spec("idle"))
        .await
        .unwrap();

    fixture.engine.stop(&id, 10).await.unwrap();
    fixture.engine.stop(&id, 10).await.unwrap();
    fixture.engine.remove(&id).await.unwrap();
    fixture.engine.remove(&id).await.unwrap();
    fixture.engine.stop(&id, 10).await.unwrap();

    let error = fixture.engine.inspect(&id).await.unwrap_err();
    assert!(
        matches!(error, ValError::NotFound(ref missing) if *missing == id),
        "{error:?}"
    );
    let error = fixture.engine.logs(&id, 10).await.unwrap_err();
    assert!(matches!(error, ValError::NotFound(_)), "{error:?}");

    // Removing a running container forces it.
    let running = fixture
        .engine
        .create_and_start(&fixture.spec("forced"))
        .await
        .unwrap();
    fixture.engine.remove(&running).await.unwrap();
    assert!(matches!(
        fixture.engine.inspect(&running).await,
        Err(ValError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_taken_name_is_refused() {
    let fixture = Fixture::new("conflict");
    let spec = fixture.spec("twice");
    fixture.engine.create_and_start(&spec).await.unwrap();
    let error = fixture.engine.create_and_start(&spec).await.unwrap_err();
    match error {
        ValError::Refused { operation, reason } => {
            assert_eq!(operation, "create container");
            assert!(reason.contains("already in use"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_start_leaves_no_container() {
    let fixture = Fixture::new("badstart");
    let mut spec = fixture.spec("nodevice");
    spec.devices = vec![DeviceMapping {
        host_path: format!("/dev/motey-missing-{}", fixture.node_id),
        container_path: "/dev/probe".into(),
        permissions: None,
    }];
    let error = fixture.engine.create_and_start(&spec).await.unwrap_err();
    assert!(matches!(error, ValError::Refused { .. }), "{error:?}");
    assert!(error.to_string().contains("motey-missing"), "{error}");
    let filter = format!("label={}={}", labels::NODE_ID, fixture.node_id);
    assert_eq!(docker(&["ps", "-aq", "--filter", &filter]).unwrap(), "");
}

#[tokio::test]
async fn a_missing_image_is_unavailable_with_the_engines_reason() {
    let fixture = Fixture::new("noimage");
    // Nothing listens on loopback port 1, so the pull fails fast and offline.
    let reference = format!("127.0.0.1:1/motey-missing:{}", fixture.node_id);
    let error = fixture
        .engine
        .ensure_image(&reference, &|_| {})
        .await
        .unwrap_err();
    match error {
        ValError::ImageUnavailable { image, reason } => {
            assert_eq!(image, reference);
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }

    // Creating from an image that is not there (and not pulled) says so too.
    let mut spec = fixture.spec("noimage");
    spec.image = format!("motey-missing-{}:never", fixture.node_id);
    let error = fixture.engine.create_and_start(&spec).await.unwrap_err();
    match error {
        ValError::ImageUnavailable { image, reason } => {
            assert_eq!(image, spec.image);
            assert!(reason.contains("No such image"), "{reason}");
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }

    // A present image needs no pull and reports no progress.
    let calls = std::sync::atomic::AtomicUsize::new(0);
    fixture
        .engine
        .ensure_image(common::TESTBOX, &|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .unwrap();
    assert_eq!(calls.into_inner(), 0);
}
