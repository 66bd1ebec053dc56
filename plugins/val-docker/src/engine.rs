//! [`DockerEngine`]: the [`VirtualizationEngine`] implementation over the Docker Engine API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use motey_val::{
    ContainerSpec, ContainerStatus, EngineEvent, ExecOutput, ExecRequest, LogLine, LogQuery,
    LogStream, PullProgress, ValError, VirtualizationEngine,
};
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::errors::{has_status, pull_error, to_val_error, Subject};
use crate::{events, image, spec, state};

/// Seconds a single request (not a stream) may take before the engine counts as unreachable.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// How many containers `list` inspects at once.
const INSPECT_CONCURRENCY: usize = 8;

/// The Docker plugin of the VAL. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct DockerEngine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The endpoint as configured (`None`: `DOCKER_HOST` or the default socket).
    configured: Option<String>,
    endpoint: String,
    /// The client, set once it has agreed on an API version with the daemon. Older
    /// daemons refuse requests from a newer client, so nothing is sent before this; and a
    /// socket that does not exist yet (Docker starting after the agent) is looked for again
    /// at the next operation.
    docker: OnceCell<Docker>,
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

/// A client for `endpoint` (see [`DockerEngine::connect`]); nothing is sent yet.
fn open(endpoint: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    match endpoint {
        None => Docker::connect_with_defaults(),
        Some(path) if path.starts_with('/') => {
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        }
        Some(host) => Docker::connect_with_host(host),
    }
}

impl DockerEngine {
    /// Prepares a client for the Docker Engine at `endpoint`: `unix:///path/docker.sock`,
    /// a bare socket path, or `tcp://host:port`. `None` uses `DOCKER_HOST`, else the default
    /// Unix socket. Nothing is sent yet; the first operation negotiates the API version, so
    /// an agent may start before its engine does.
    pub fn connect(endpoint: Option<&str>) -> Result<DockerEngine, ValError> {
        match open(endpoint) {
            Ok(_) => {}
            // The socket appears when Docker starts; until then operations fail as
            // unreachable, which the agent reports and retries.
            Err(bollard::errors::Error::SocketNotFoundError(socket)) => {
                warn!(%socket, "the Docker socket does not exist yet; will keep looking for it");
            }
            Err(error) => return Err(to_val_error("connect", Subject::Engine, error)),
        }
        let configured = endpoint.map(str::to_owned);
        let endpoint = configured
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        debug!(%endpoint, "Docker client prepared");
        Ok(DockerEngine {
            inner: Arc::new(Inner {
                configured,
                endpoint,
                docker: OnceCell::new(),
            }),
        })
    }

    /// The endpoint this engine talks to, for logs.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The client, after agreeing on an API version (once; retried while that fails).
    async fn client(&self) -> Result<&Docker, ValError> {
        let inner = &self.inner;
        inner
            .docker
            .get_or_try_init(|| async {
                let docker = open(inner.configured.as_deref())
                    .map_err(|error| to_val_error("connect", Subject::Engine, error))?
                    .negotiate_version()
                    .await
                    .map_err(|error| to_val_error("negotiate API version", Subject::Engine, error))?;
                info!(endpoint = %inner.endpoint, api_version = %docker.client_version(), "connected to Docker");
                Ok::<Docker, ValError>(docker)
            })
            .await
    }

    async fn pull(
        &self,
        reference: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), ValError> {
        let docker = self.client().await?;
        let started = Instant::now();
        info!(image = reference, "pulling image");
        let mut messages = docker.create_image(Some(image::pull_options(reference)), None, None);
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| pull_error(reference, error))?;
            if let Some(update) = image::progress(reference, &message) {
                // Byte counts arrive many times a second; steps (a layer done, the
                // digest) are few and tell an operator how far the pull got.
                if update.total.is_some() {
                    debug!(
                        image = reference,
                        status = %update.status,
                        current = update.current,
                        total = update.total,
                        "pull progress"
                    );
                } else {
                    info!(image = reference, status = %update.status, "pull progress");
                }
                progress(update);
            }
        }
        info!(
            image = reference,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled image"
        );
        Ok(())
    }

    async fn start(&self, docker: &Docker, id: &str, spec: &ContainerSpec) -> Result<(), ValError> {
        let started = docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|error| to_val_error("start container", Subject::Container(id), error));
        if let Err(error) = started {
            // Do not leave a never-started container behind; the orchestrator decides
            // whether to try again.
            warn!(container = %spec.name, %error, "start failed; removing the created container");
            if let Err(cleanup) = self.remove(id).await {
                warn!(container = %spec.name, error = %cleanup, "could not remove the failed container");
            }
            return Err(error);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl VirtualizationEngine for DockerEngine {
    fn name(&self) -> &str {
        "docker"
    }

    async fn ping(&self) -> Result<String, ValError> {
        let version = self
            .client()
            .await?
            .version()
            .await
            .map_err(|error| to_val_error("ping", Subject::Engine, error))?;
        Ok(version.version.unwrap_or_else(|| "unknown".into()))
    }

    async fn ensure_image(
        &self,
        reference: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), ValError> {
        match self.client().await?.inspect_image(reference).await {
            Ok(_) => {
                debug!(image = reference, "image present");
                Ok(())
            }
            Err(error) if has_status(&error, 404) => self.pull(reference, progress).await,
            Err(error) => Err(to_val_error(
                "inspect image",
                Subject::Image(reference),
                error,
            )),
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, ValError> {
        let docker = self.client().await?;
        let options = CreateContainerOptions {
            // An empty name lets Docker choose one.
            name: (!spec.name.is_empty()).then(|| spec.name.clone()),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(options), spec::create_body(spec))
            .await
            .map_err(|error| match error {
                // The only thing a create can miss is the image.
                error if has_status(&error, 404) => {
                    to_val_error("create container", Subject::Image(&spec.image), error)
                }
                error => to_val_error("create container", Subject::Container(&spec.name), error),
            })?;
        for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
            warn!(container = %spec.name, %warning, "Docker warned on create");
        }
        self.start(docker, &created.id, spec).await?;
        info!(container = %spec.name, id = %created.id, image = %spec.image, "container started");
        Ok(created.id)
    }

    /// Stopping a stopped or missing container succeeds.
    async fn stop(&self, container_id: &str, grace_secs: u32) -> Result<(), ValError> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace_secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self
            .client()
            .await?
            .stop_container(container_id, Some(options))
            .await
        {
            Ok(()) => {
                info!(container = container_id, "container stopped");
                Ok(())
            }
            // 304: already stopped; 404: already gone.
            Err(error) if has_status(&error, 304) || has_status(&error, 404) => {
                debug!(container = container_id, "container was not running");
                Ok(())
            }
            Err(error) => Err(to_val_error(
                "stop container",
                Subject::Container(container_id),
                error,
            )),
        }
    }

    async fn remove(&self, container_id: &str) -> Result<(), ValError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self
            .client()
            .await?
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => {
                info!(container = container_id, "container removed");
                Ok(())
            }
            Err(error) if has_status(&error, 404) => {
                debug!(container = container_id, "container already removed");
                Ok(())
            }
            // Docker is already removing it (409 "removal ... already in progress").
            Err(error)
                if has_status(&error, 409) && error.to_string().contains("already in progress") =>
            {
                Ok(())
            }
            Err(error) => Err(to_val_error(
                "remove container",
                Subject::Container(container_id),
                error,
            )),
        }
    }

    async fn inspect(&self, container_id: &str) -> Result<ContainerStatus, ValError> {
        let inspected = self
            .client()
            .await?
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
            .map_err(|error| {
                to_val_error("inspect container", Subject::Container(container_id), error)
            })?;
        Ok(state::container_status(inspected))
    }

    /// Lists through Docker's label filter, then inspects each container: only an inspect
    /// tells the exit code and whether the kernel killed it for memory.
    async fn list(
        &self,
        label_filter: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerStatus>, ValError> {
        let labels = label_filter
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        let summaries = self
            .client()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(|error| to_val_error("list containers", Subject::Engine, error))?;
        let statuses: Vec<Result<ContainerStatus, ValError>> =
            stream::iter(summaries.into_iter().filter_map(|s| s.id))
                .map(|id| async move { self.inspect(&id).await })
                .buffered(INSPECT_CONCURRENCY)
                .collect()
                .await;
        statuses
            .into_iter()
            // A container removed between listing and inspecting is simply not there.
            .filter(|status| !matches!(status, Err(ValError::NotFound(_))))
            .collect()
    }

    async fn logs(&self, container_id: &str, tail: usize) -> Result<Vec<String>, ValError> {
        let query = LogQuery {
            tail,
            since_ns: None,
        };
        let lines = self.log_lines(container_id, &query).await?;
        Ok(lines.into_iter().map(|line| line.text).collect())
    }

    async fn log_lines(
        &self,
        container_id: &str,
        query: &LogQuery,
    ) -> Result<Vec<LogLine>, ValError> {
        // Docker's `since` has whole seconds: ask from the second, drop the rest here.
        let since_secs = query
            .since_ns
            .map(|ns| i32::try_from(ns / 1_000_000_000).unwrap_or(i32::MAX))
            .unwrap_or(0);
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            since: since_secs,
            tail: query.tail.to_string(),
            ..Default::default()
        };
        let chunks: Vec<LogOutput> = self
            .client()
            .await?
            .logs(container_id, Some(options))
            .try_collect()
            .await
            .map_err(|error| to_val_error("read logs", Subject::Container(container_id), error))?;
        Ok(chunks
            .iter()
            .flat_map(log_lines_of)
            .filter(|line| match (query.since_ns, line.at_ns) {
                (Some(since), Some(at)) => at > since,
                _ => true,
            })
            .collect())
    }

    fn follow_logs(
        &self,
        container_id: &str,
        tail: usize,
    ) -> BoxStream<'static, Result<LogLine, ValError>> {
        let engine = self.clone();
        let container = container_id.to_owned();
        stream::once(async move {
            let docker = engine.client().await?.clone();
            let options = LogsOptions {
                stdout: true,
                stderr: true,
                timestamps: true,
                follow: true,
                tail: tail.to_string(),
                ..Default::default()
            };
            let subject = container.clone();
            Ok::<_, ValError>(
                docker
                    .logs(&container, Some(options))
                    .map_err(move |error| {
                        to_val_error("follow logs", Subject::Container(&subject), error)
                    })
                    .map_ok(|chunk| stream::iter(log_lines_of(&chunk).into_iter().map(Ok)))
                    .try_flatten(),
            )
        })
        .try_flatten()
        .boxed()
    }

    async fn exec(
        &self,
        container_id: &str,
        request: &ExecRequest,
    ) -> Result<ExecOutput, ValError> {
        let docker = self.client().await?;
        let failed = |error| to_val_error("exec", Subject::Container(container_id), error);
        let created = docker
            .create_exec(
                container_id,
                CreateExecOptions::<String> {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(request.command.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(failed)?;
        let started = docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(failed)?;
        let mut output = Vec::new();
        let mut truncated = false;
        let mut timed_out = false;
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = started
        {
            let deadline =
                tokio::time::Instant::now() + std::time::Duration::from_secs(request.timeout_secs);
            loop {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Err(_) => {
                        timed_out = true;
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(error))) => return Err(failed(error)),
                    Ok(Some(Ok(chunk))) => {
                        let room = request.max_output_bytes.saturating_sub(output.len());
                        let bytes = chunk.into_bytes();
                        if bytes.len() > room {
                            truncated = true;
                        }
                        output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                }
            }
        }
        // Docker cannot stop an exec'd process: after a timeout it runs on in the
        // container, and its exit code is unknown here.
        let exit_code = if timed_out {
            None
        } else {
            docker
                .inspect_exec(&created.id)
                .await
                .map_err(failed)?
                .exit_code
        };
        Ok(ExecOutput {
            exit_code,
            output: String::from_utf8_lossy(&output).into_owned(),
            truncated,
            timed_out,
        })
    }

    fn events(&self) -> BoxStream<'static, Result<EngineEvent, ValError>> {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|now| format!("{}.{:09}", now.as_secs(), now.subsec_nanos()))
            .unwrap_or_else(|_| "0".into());
        let engine = self.clone();
        stream::once(async move {
            let docker = engine.client().await?.clone();
            debug!(endpoint = %engine.endpoint(), "following Docker events");
            Ok::<_, ValError>(
                docker
                    .events(Some(events::subscription(since)))
                    .map_err(|error| to_val_error("follow events", Subject::Engine, error)),
            )
        })
        .try_flatten()
        .try_filter_map(|message| async move { Ok(events::engine_event(message)) })
        .boxed()
    }
}

/// The lines of one chunk of Docker's log stream (asked with timestamps): each line starts
/// with its RFC 3339 timestamp and a space.
fn log_lines_of(chunk: &LogOutput) -> Vec<LogLine> {
    let stream = match chunk {
        LogOutput::StdErr { .. } => LogStream::Stderr,
        _ => LogStream::Stdout,
    };
    String::from_utf8_lossy(chunk.as_ref())
        .lines()
        .map(|line| {
            let (at_ns, text) = line
                .split_once(' ')
                .and_then(|(stamp, text)| {
                    chrono::DateTime::parse_from_rfc3339(stamp)
                        .ok()
                        .and_then(|at| at.timestamp_nanos_opt())
                        .map(|at| (Some(at), text))
                })
                .unwrap_or((None, line));
            LogLine {
                at_ns,
                stream,
                text: text.to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn timestamps_are_taken_off_each_line() {
        let chunk = LogOutput::StdOut {
            message: "2024-05-01T10:00:00.5Z hello world\nno stamp\n".into(),
        };
        let lines = log_lines_of(&chunk);
        assert_eq!(lines[0].text, "hello world");
        assert_eq!(lines[0].at_ns, Some(1_714_557_600_500_000_000));
        assert_eq!(lines[1].text, "no stamp");
        assert_eq!(lines[1].at_ns, None);
    }
}
