//! Pulling through the plugin from a real registry (Debian's `docker-registry`) on loopback.
//! Docker allows plain HTTP to registries in 127.0.0.0/8, so no TLS set-up is needed.

mod common;

use std::sync::Mutex;

use common::{docker, Fixture, TESTBOX};
use motey_val::{ImageState, PullProgress, ValError, VirtualizationEngine};
use system_tests::registry::LocalRegistry;

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
    let registry = LocalRegistry::start();
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
