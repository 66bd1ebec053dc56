//! Shared set-up of the Docker tests: the test image, unique names, and a guard that
//! removes every container a test created (and nothing else).

#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use motey_val::{
    labels, ContainerSpec, ContainerStatus, EngineEvent, Privileges, RestartPolicy,
    VirtualizationEngine,
};
use motey_val_docker::DockerEngine;

pub use system_tests::docker::{docker, ensure_testbox, remove_containers_with_label, TESTBOX};

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
        remove_containers_with_label(labels::NODE_ID, &self.node_id);
    }
}

/// Retries `attempt` until it yields a value; panics naming `what` after 30 s.
pub async fn poll<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    system_tests::wait_for(what, Duration::from_secs(30), attempt).await
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
