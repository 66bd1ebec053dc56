//! Pulling through the plugin from a real registry (Debian's `docker-registry`) on loopback.
//! Docker allows plain HTTP to registries in 127.0.0.0/8, so no TLS set-up is needed.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use common::{docker, poll, Fixture, TESTBOX};
use motey_val::{ImageState, PullProgress, ValError, VirtualizationEngine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A registry process serving a temporary storage directory on a free loopback port;
/// killed when dropped.
struct LocalRegistry {
    process: Child,
    address: String,
    _storage: tempfile::TempDir,
}

impl LocalRegistry {
    async fn start() -> LocalRegistry {
        let storage = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = storage.path().join("config.yml");
        let mut file = std::fs::File::create(&config).unwrap();
        write!(
            file,
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n  secret: motey-test\n",
            storage.path().join("data").display()
        )
        .unwrap();
        let process = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(storage.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {REGISTRY_BINARY} (Debian package docker-registry): {e}")
            });
        let registry = LocalRegistry {
            process,
            address,
            _storage: storage,
        };
        poll("the registry to answer /v2/", || registry.answers()).await;
        registry
    }

    async fn answers(&self) -> Option<()> {
        let mut stream = tokio::net::TcpStream::connect(&self.address).await.ok()?;
        stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        // Go answers in the request's HTTP version.
        (response.split_whitespace().nth(1) == Some("200")).then_some(())
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Removes a local image tag when dropped (the tag only; the test image stays).
struct TagGuard(String);

impl Drop for TagGuard {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

#[tokio::test]
async fn ensure_image_pulls_from_a_registry_and_the_image_runs() {
    let fixture = Fixture::new("pull");
    let registry = LocalRegistry::start().await;
    let reference = format!("{}/testbox:{}", registry.address, fixture.node_id);
    let _tag = TagGuard(reference.clone());

    docker(&["tag", TESTBOX, &reference]).unwrap();
    docker(&["push", &reference]).unwrap_or_else(|e| panic!("push {reference}: {e}"));
    docker(&["rmi", &reference]).unwrap();
    assert!(
        docker(&["image", "inspect", &reference]).is_err(),
        "tag still present locally"
    );

    let progress = Mutex::new(Vec::<PullProgress>::new());
    fixture
        .engine
        .ensure_image(&reference, &|update| progress.lock().unwrap().push(update))
        .await
        .unwrap();
    let progress = progress.into_inner().unwrap();
    assert!(!progress.is_empty(), "no pull progress reported");
    assert!(progress.iter().all(|update| update.image == reference));
    assert!(
        progress
            .iter()
            .any(|update| update.status.contains("Digest") || update.status.contains("Status")),
        "{progress:?}"
    );
    docker(&["image", "inspect", &reference]).expect("pulled image is present");

    let mut spec = fixture.spec("pulled");
    spec.image = reference.clone();
    let id = fixture.engine.create_and_start(&spec).await.unwrap();
    let status = fixture.engine.inspect(&id).await.unwrap();
    assert_eq!(status.state, ImageState::Running);
    assert_eq!(status.image, reference);
    fixture.engine.remove(&id).await.unwrap();

    // A tag the registry does not have: the registry's answer is the reason.
    let missing = format!("{}/testbox:missing-{}", registry.address, fixture.node_id);
    match fixture
        .engine
        .ensure_image(&missing, &|_| {})
        .await
        .unwrap_err()
    {
        ValError::ImageUnavailable { image, reason } => {
            assert_eq!(image, missing);
            assert!(
                reason.contains("manifest unknown") || reason.contains("not found"),
                "{reason}"
            );
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
}
