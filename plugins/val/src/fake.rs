//! An in-memory engine for unit tests of code above the VAL: containers are records,
//! images are "present" unless declared missing, and tests can change a container's state
//! as a crashed or exited process would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::stream::{self, BoxStream, StreamExt};

use crate::{
    ContainerSpec, ContainerStatus, EngineEvent, ExecOutput, ExecRequest, ImageState, LogLine,
    LogQuery, LogStream, PullProgress, ValError, VirtualizationEngine,
};

#[derive(Debug, Default)]
struct World {
    containers: BTreeMap<String, (ContainerSpec, ContainerStatus)>,
    missing_images: BTreeSet<String>,
    logs: BTreeMap<String, Vec<LogLine>>,
    execs: Vec<(String, Vec<String>)>,
    next_id: u64,
    created: u64,
}

/// A fake engine; clones share the same world.
#[derive(Debug, Clone, Default)]
pub struct FakeEngine {
    world: Arc<Mutex<World>>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    /// Pulling `image` will fail as if no registry had it.
    pub fn make_unavailable(&self, image: &str) {
        self.lock().missing_images.insert(image.to_owned());
    }

    /// Sets a container's state, as if its process had exited or crashed.
    pub fn set_state(&self, container_id: &str, state: ImageState, reason: Option<&str>) {
        if let Some((_, status)) = self.lock().containers.get_mut(container_id) {
            status.state = state;
            status.reason = reason.map(str::to_owned);
        }
    }

    /// Removes a container behind the agent's back.
    pub fn forget(&self, container_id: &str) {
        self.lock().containers.remove(container_id);
    }

    /// Every container, as `list` with no filter would give.
    pub fn containers(&self) -> Vec<ContainerStatus> {
        self.lock()
            .containers
            .values()
            .map(|(_, status)| status.clone())
            .collect()
    }

    /// The specification a container was created from.
    pub fn spec(&self, container_id: &str) -> Option<ContainerSpec> {
        self.lock()
            .containers
            .get(container_id)
            .map(|(spec, _)| spec.clone())
    }

    /// The container writes `text` to its output.
    pub fn write_log(&self, container_id: &str, text: &str) {
        let mut world = self.lock();
        let at = world.logs.values().map(Vec::len).sum::<usize>() as i64 + 1;
        world
            .logs
            .entry(container_id.to_owned())
            .or_default()
            .push(LogLine {
                at_ns: Some(at),
                stream: LogStream::Stdout,
                text: text.to_owned(),
            });
    }

    /// Every command run with `exec`, with its container.
    pub fn execs(&self) -> Vec<(String, Vec<String>)> {
        self.lock().execs.clone()
    }

    /// How many containers were ever created.
    pub fn created_count(&self) -> u64 {
        self.lock().created
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl VirtualizationEngine for FakeEngine {
    fn name(&self) -> &str {
        "fake"
    }

    async fn ping(&self) -> Result<String, ValError> {
        Ok("fake-1".into())
    }

    async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), ValError> {
        if self.lock().missing_images.contains(image) {
            return Err(ValError::ImageUnavailable {
                image: image.to_owned(),
                reason: "not found in any registry".into(),
            });
        }
        progress(PullProgress {
            image: image.to_owned(),
            status: "present".into(),
            current: None,
            total: None,
        });
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, ValError> {
        let mut world = self.lock();
        if world
            .containers
            .values()
            .any(|(other, _)| other.name == spec.name)
        {
            return Err(ValError::Refused {
                operation: "create container".into(),
                reason: format!("the name {} is already in use", spec.name),
            });
        }
        world.next_id += 1;
        world.created += 1;
        let id = format!("fake{:06}", world.next_id);
        let status = ContainerStatus {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            state: ImageState::Running,
            engine_state: "running".into(),
            exit_code: None,
            reason: None,
            labels: spec.labels.clone(),
        };
        world.containers.insert(id.clone(), (spec.clone(), status));
        Ok(id)
    }

    async fn stop(&self, container_id: &str, _grace_secs: u32) -> Result<(), ValError> {
        match self.lock().containers.get_mut(container_id) {
            Some((_, status)) => {
                status.state = ImageState::Terminated;
                Ok(())
            }
            None => Err(ValError::NotFound(container_id.to_owned())),
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), ValError> {
        self.lock().containers.remove(container_id);
        Ok(())
    }

    async fn inspect(&self, container_id: &str) -> Result<ContainerStatus, ValError> {
        self.lock()
            .containers
            .get(container_id)
            .map(|(_, status)| status.clone())
            .ok_or_else(|| ValError::NotFound(container_id.to_owned()))
    }

    async fn list(
        &self,
        label_filter: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerStatus>, ValError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|(_, status)| {
                label_filter
                    .iter()
                    .all(|(key, value)| status.labels.get(key) == Some(value))
            })
            .map(|(_, status)| status.clone())
            .collect())
    }

    async fn logs(&self, container_id: &str, _tail: usize) -> Result<Vec<String>, ValError> {
        self.inspect(container_id).await.map(|_| Vec::new())
    }

    async fn log_lines(
        &self,
        container_id: &str,
        query: &LogQuery,
    ) -> Result<Vec<LogLine>, ValError> {
        self.inspect(container_id).await?;
        let lines: Vec<LogLine> = self
            .lock()
            .logs
            .get(container_id)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|line| query.since_ns.is_none_or(|since| line.at_ns > Some(since)))
            .collect();
        let skip = lines.len().saturating_sub(query.tail);
        Ok(lines.into_iter().skip(skip).collect())
    }

    fn follow_logs(
        &self,
        container_id: &str,
        tail: usize,
    ) -> BoxStream<'static, Result<LogLine, ValError>> {
        let lines = self
            .lock()
            .logs
            .get(container_id)
            .cloned()
            .unwrap_or_default();
        let skip = lines.len().saturating_sub(tail);
        stream::iter(lines.into_iter().skip(skip).map(Ok))
            .chain(stream::pending())
            .boxed()
    }

    /// Answers `echo ARGS` with the arguments; any other command with its own words.
    async fn exec(
        &self,
        container_id: &str,
        request: &ExecRequest,
    ) -> Result<ExecOutput, ValError> {
        let status = self.inspect(container_id).await?;
        if status.state != ImageState::Running {
            return Err(ValError::Refused {
                operation: "exec".into(),
                reason: format!("container {container_id} is not running"),
            });
        }
        self.lock()
            .execs
            .push((container_id.to_owned(), request.command.clone()));
        let output = match request.command.split_first() {
            Some((program, args)) if program == "echo" => format!("{}\n", args.join(" ")),
            _ => format!("{}\n", request.command.join(" ")),
        };
        Ok(ExecOutput {
            exit_code: Some(0),
            truncated: output.len() > request.max_output_bytes,
            output: output.chars().take(request.max_output_bytes).collect(),
            timed_out: false,
        })
    }

    fn events(&self) -> BoxStream<'static, Result<EngineEvent, ValError>> {
        stream::pending().boxed()
    }
}
