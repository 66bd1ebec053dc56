//! Hardware events over a real `ipc://` socket in a temporary directory: add and remove
//! reach the capabilities repository, malformed events are dropped, and the socket file of
//! a crashed agent does not block the next one.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::Arc;

use motey::capabilities::events::{
    publish_capability_event, publish_messages, CapabilityAction, CapabilityChange,
    CapabilityEvents, EventError,
};
use motey::domain::Capability;
use motey::store::{Repository, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

fn capability(name: &str) -> Capability {
    Capability {
        capability: name.into(),
        capability_type: "hardware".into(),
    }
}

async fn next_change(changes: &mut broadcast::Receiver<CapabilityChange>) -> CapabilityChange {
    tokio::time::timeout(cluster::PATIENCE, changes.recv())
        .await
        .expect("a change within the patience")
        .unwrap()
}

#[tokio::test]
async fn add_and_remove_events_change_the_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("capabilities.ipc").display());
    let store = Store::temporary().unwrap();
    let shutdown = CancellationToken::new();
    let events = CapabilityEvents::bind(&endpoint, store.capabilities.clone(), shutdown.clone())
        .await
        .unwrap();
    let mut changes = events.subscribe();

    publish_capability_event(&endpoint, "zigbee", "hardware", CapabilityAction::Add)
        .await
        .unwrap();
    let change = next_change(&mut changes).await;
    assert_eq!(change.capability, capability("zigbee"));
    assert_eq!(change.action, CapabilityAction::Add);
    assert!(change.changed);
    assert_eq!(
        store.capabilities.list().unwrap(),
        vec![capability("zigbee")]
    );

    // Adding it again changes nothing, and says so.
    publish_capability_event(&endpoint, "zigbee", "hardware", CapabilityAction::Add)
        .await
        .unwrap();
    assert!(!next_change(&mut changes).await.changed);

    publish_capability_event(&endpoint, "zigbee", "hardware", CapabilityAction::Remove)
        .await
        .unwrap();
    let change = next_change(&mut changes).await;
    assert_eq!(change.action, CapabilityAction::Remove);
    assert!(change.changed);
    assert!(store.capabilities.list().unwrap().is_empty());

    shutdown.cancel();
    events.join().await;
    assert!(
        !dir.path().join("capabilities.ipc").exists(),
        "the socket file is removed on shutdown"
    );
}

#[tokio::test]
async fn malformed_events_are_dropped_and_later_ones_still_applied() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("events.ipc").display());
    let store = Store::temporary().unwrap();
    let shutdown = CancellationToken::new();
    let events = CapabilityEvents::bind(&endpoint, store.capabilities.clone(), shutdown.clone())
        .await
        .unwrap();
    let mut changes = events.subscribe();

    let messages: Vec<Vec<u8>> = vec![
        b"capabilityevent#{not json".to_vec(),
        b"capabilityevent".to_vec(),
        br#"capabilityevent#{"capability":"","capability_type":"hardware","action":"add"}"#
            .to_vec(),
        br#"capabilityevent#{"capability":"x","capability_type":"hardware","action":"explode"}"#
            .to_vec(),
        vec![0xff; 64],
        // Motey's own form: Python's dict repr, no action (adds).
        b"capabilityevent#{'capability': 'optical-probe', 'capability_type': 'hardware'}".to_vec(),
    ];
    publish_messages(&endpoint, &messages).await.unwrap();
    let change = next_change(&mut changes).await;
    assert_eq!(change.capability, capability("optical-probe"));
    assert_eq!(
        store.capabilities.list().unwrap(),
        vec![capability("optical-probe")]
    );
    assert!(changes.try_recv().is_err(), "nothing else was applied");
    shutdown.cancel();
    events.join().await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("capabilities.ipc");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // What a crashed agent leaves behind: the socket file, nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());

    let endpoint = format!("ipc://{}", path.display());
    let store = Store::temporary().unwrap();
    let repository: Arc<dyn Repository<Capability>> = store.capabilities.clone();
    let shutdown = CancellationToken::new();
    let first = CapabilityEvents::bind(&endpoint, repository.clone(), shutdown.clone())
        .await
        .unwrap();

    let second = CapabilityEvents::bind(&endpoint, repository, CancellationToken::new()).await;
    let error = second
        .err()
        .expect("a second agent cannot take the endpoint");
    assert!(error.to_string().contains("another agent"), "{error}");
    shutdown.cancel();
    first.join().await;
}

#[tokio::test]
async fn publishing_without_an_agent_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("nobody.ipc").display());
    let error = publish_capability_event(&endpoint, "zigbee", "hardware", CapabilityAction::Add)
        .await
        .unwrap_err();
    assert!(matches!(error, EventError::NoListener { .. }), "{error}");
    assert!(error.to_string().contains("nobody.ipc"), "{error}");

    let error = publish_capability_event(&endpoint, "bad name", "hardware", CapabilityAction::Add)
        .await
        .unwrap_err();
    assert!(matches!(error, EventError::Malformed(_)), "{error}");
}

#[tokio::test]
async fn the_socket_is_owner_only_and_another_user_cannot_publish() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // Others may enter both directories: only the socket's own mode keeps them out.
    for open in [dir.path(), run.as_path()] {
        std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = run.join("capabilities.ipc");
    let endpoint = format!("ipc://{}", path.display());
    let store = Store::temporary().unwrap();
    let shutdown = CancellationToken::new();
    let events = CapabilityEvents::bind(&endpoint, store.capabilities.clone(), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(events.endpoint(), endpoint);
    let metadata = std::fs::metadata(&path).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().collect();
    assert_eq!(
        leftovers.len(),
        1,
        "only the socket is left in its directory"
    );

    // Only root can run a process as another user.
    if metadata.uid() == 0 {
        // `motey capability add` as user nobody.
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_motey"))
            .args(["capability", "add", "zigbee"])
            .env("MOTEY_ZEROMQ_CAPABILITY_EVENTS", &endpoint)
            .env("MOTEY_GENERAL_DATA_DIR", dir.path().join("nobody"))
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(!output.status.success(), "another user published an event");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("ermission denied"), "{stderr}");
    }
    // The owner still can.
    let mut changes = events.subscribe();
    publish_capability_event(&endpoint, "zigbee", "hardware", CapabilityAction::Add)
        .await
        .unwrap();
    assert!(next_change(&mut changes).await.changed);
    assert_eq!(
        store.capabilities.list().unwrap(),
        vec![capability("zigbee")]
    );
    shutdown.cancel();
    events.join().await;
}

#[tokio::test]
async fn a_socket_directory_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("capabilities.ipc").display());
    let store = Store::temporary().unwrap();
    let refused = CapabilityEvents::bind(
        &endpoint,
        store.capabilities.clone(),
        CancellationToken::new(),
    )
    .await;
    let error = refused
        .err()
        .expect("a world-writable directory is refused");
    assert!(matches!(error, EventError::Endpoint { .. }), "{error}");
    assert!(error.to_string().contains("writable by others"), "{error}");
    assert!(!dir.path().join("capabilities.ipc").exists());
}
