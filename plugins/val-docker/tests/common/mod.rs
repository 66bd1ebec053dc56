//! Shared set-up of the Docker tests: the test image, unique names, and a guard that
//! removes every container a test created (and nothing else).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use motey_val::{
    labels, ContainerSpec, ContainerStatus, EngineEvent, Privileges, RestartPolicy,
    VirtualizationEngine,
};
use motey_val_docker::DockerEngine;

pub const TESTBOX: &str = "motey/testbox:latest";

/// Repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `motey/testbox:latest` with `scripts/build-images.sh` unless it exists.
pub fn ensure_testbox() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        if docker(&["image", "inspect", TESTBOX]).is_ok() {
            return;
        }
        let status = Command::new(repo_root().join("scripts/build-images.sh"))
            .arg("testbox")
            .current_dir(repo_root())
            .status()
            .expect("run scripts/build-images.sh");
        assert!(status.success(), "scripts/build-images.sh testbox failed");
    });
}

/// Runs the `docker` CLI; stdout on success, stderr as error.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One test's world: an engine, a node id no other test uses, and clean-up on drop of
/// every container carrying that node id.
pub struct Fixture {
    pub engine: DockerEngine,
    pub node_id: String,
}

impl Fixture {
    pub fn new(test: &str) -> Fixture {
        init_tracing();
        ensure_testbox();
        let node_id = format!(
            "valtest-{test}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Fixture {
            engine: DockerEngine::connect(None).expect("connect to Docker"),
            node_id,
        }
    }

    /// A testbox container spec named uniquely, labelled like the agent labels its own.
    pub fn spec(&self, image_id: &str) -> ContainerSpec {
        let labels = BTreeMap::from([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::NODE_ID.to_owned(), self.node_id.clone()),
            (
                labels::SERVICE_ID.to_owned(),
                format!("{}-svc", self.node_id),
            ),
            (
                labels::SERVICE_NAME.to_owned(),
                "val-docker-test".to_owned(),
            ),
            (labels::IMAGE_ID.to_owned(), image_id.to_owned()),
        ]);
        ContainerSpec {
            name: format!("{}-{image_id}", self.node_id),
            image: TESTBOX.to_owned(),
            command: None,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            devices: Vec::new(),
            restart: RestartPolicy::No,
            labels,
            privileges: Privileges::default(),
        }
    }

    /// Polls `inspect` until `done` holds (panics after 30 s: the engine is stuck).
    pub async fn wait_for(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&ContainerStatus) -> bool,
    ) -> ContainerStatus {
        poll(what, || async {
            let status = self.engine.inspect(id).await.expect("inspect");
            done(&status).then_some(status)
        })
        .await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let filter = format!("label={}={}", labels::NODE_ID, self.node_id);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            for id in ids.lines().filter(|id| !id.is_empty()) {
                let _ = docker(&["rm", "-f", "-v", id]);
            }
        }
    }
}

/// Retries `attempt` every 100 ms until it yields a value; panics naming `what` after 30 s.
pub async fn poll<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the next event about `container_id` with `action`; panics after 30 s.
pub async fn next_event(
    events: &mut futures::stream::BoxStream<'static, Result<EngineEvent, motey_val::ValError>>,
    container_id: &str,
    action: &str,
) -> EngineEvent {
    use futures::StreamExt;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event stream");
            let EngineEvent::ContainerChanged {
                container_id: id,
                action: a,
                ..
            } = &event;
            if id == container_id && a == action {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended before `{action}`"),
        Err(_) => panic!("no `{action}` event within 30 s"),
    }
}
