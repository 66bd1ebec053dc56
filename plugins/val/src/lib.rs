//! The virtualization abstraction layer (VAL) of the Motey agent.
//!
//! The agent's orchestrator speaks only this engine-neutral contract: what one image of a
//! service should look like when it runs ([`ContainerSpec`]), what the engine observed
//! ([`ContainerStatus`], [`ImageState`]) and the operations an engine plugin offers
//! ([`VirtualizationEngine`]). Docker is the default plugin (`motey-val-docker`); another
//! engine is added by implementing the trait, without touching the agent.

pub mod fake;

use std::collections::BTreeMap;

use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

/// Label keys every managed container carries, so that the agent can find (and adopt) its
/// containers after a restart without keeping engine ids as the source of truth.
pub mod labels {
    /// Marks a container as managed by Motey.
    pub const MANAGED: &str = "io.motey.managed";
    /// The id of the service the container belongs to.
    pub const SERVICE_ID: &str = "io.motey.service-id";
    /// The name of the service the container belongs to (for humans).
    pub const SERVICE_NAME: &str = "io.motey.service-name";
    /// The id of the image (within its service) the container runs.
    pub const IMAGE_ID: &str = "io.motey.image-id";
    /// The id of the node whose agent owns the container. Several agents may share one
    /// engine in tests; each only touches containers carrying its own node id.
    pub const NODE_ID: &str = "io.motey.node-id";
    /// A digest of the image specification, so a changed blueprint is noticed on adoption.
    pub const SPEC_DIGEST: &str = "io.motey.spec-digest";
}

/// Restart policy of a container, as the engine should apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart; an exit is reported to the agent as it is.
    #[default]
    No,
    /// Restart when the process exits with a non-zero code.
    OnFailure,
    /// Restart always, unless the agent stopped it.
    UnlessStopped,
    /// Restart always.
    Always,
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    /// `None` lets the engine choose a free host port.
    pub host_port: Option<u16>,
    /// Host address to bind; `None` binds all addresses.
    pub host_ip: Option<String>,
    pub protocol: Protocol,
}

/// A host path or named volume mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// An absolute host path (bind mount) or a volume name.
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A host device (such as an optical probe at `/dev/ttyUSB0`) passed into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMapping {
    pub host_path: String,
    pub container_path: String,
    /// The cgroup permissions (`r`, `w`, `m`); `None` gives all three. Left out of the
    /// serialized form when unset, so that specifications written before it keep their
    /// digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

impl DeviceMapping {
    /// The cgroup permissions the container gets on the device.
    pub fn permissions(&self) -> &str {
        self.permissions.as_deref().unwrap_or("rwm")
    }
}

/// Everything an engine needs to run one image of a service. The agent builds it from a
/// validated blueprint; plugins translate it to their engine's API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name as the engine should show it (unique per engine).
    pub name: String,
    /// Image reference, e.g. `registry.local:5000/meter-reader:1.0`.
    pub image: String,
    /// Overrides the image's command when set.
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<VolumeMount>,
    pub devices: Vec<DeviceMapping>,
    pub restart: RestartPolicy,
    /// Labels to set on the container; the agent always includes those of [`labels`].
    pub labels: BTreeMap<String, String>,
    /// Host-level privileges; only set when the node's configuration allows them.
    pub privileges: Privileges,
}

/// Options that give a container power over its host. Refused by the agent unless the
/// node's configuration allows each one explicitly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    pub privileged: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub cap_add: Vec<String>,
}

/// The engine-neutral state of one image of a service (listing 5.8 of the Motey thesis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImageState {
    /// Known to the agent, nothing created yet.
    Initial,
    /// Being pulled, created or started.
    Instantiating,
    Running,
    Stopping,
    /// Stopped and removed on purpose.
    Terminated,
    /// Failed; the accompanying reason says why.
    Error,
}

/// What the engine reports about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: ImageState,
    /// The engine's own word for the state (e.g. Docker's `exited`), for humans.
    pub engine_state: String,
    pub exit_code: Option<i64>,
    /// Why the container is in [`ImageState::Error`], when it is.
    pub reason: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Something the engine reports on its own, without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A managed container changed state (died, was restarted, was removed, ...).
    ContainerChanged {
        container_id: String,
        labels: BTreeMap<String, String>,
        /// The engine's action word, e.g. `die`, `start`, `destroy`.
        action: String,
        exit_code: Option<i64>,
    },
}

/// Progress of a long engine operation such as an image pull, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    pub image: String,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// Errors of a VAL plugin, in terms the orchestrator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ValError {
    /// The engine cannot be reached at all (daemon down, socket missing).
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    /// The image does not exist locally and cannot be pulled.
    #[error("image {image} not available: {reason}")]
    ImageUnavailable { image: String, reason: String },
    /// The container does not exist (any more).
    #[error("container {0} not found")]
    NotFound(String),
    /// The engine refused the request (conflict, bad parameter, ...).
    #[error("engine refused {operation}: {reason}")]
    Refused { operation: String, reason: String },
}

/// Which log lines of a container to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// At most this many lines, the latest.
    pub tail: usize,
    /// Only lines written after this instant (unix time in nanoseconds).
    pub since_ns: Option<i64>,
}

/// Which output a log line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the engine received it (unix time in nanoseconds), if the engine says.
    pub at_ns: Option<i64>,
    pub stream: LogStream,
    /// The line without its line break.
    pub text: String,
}

/// A diagnostic command to run inside a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments, run without a shell.
    pub command: Vec<String>,
    /// Seconds after which the engine stops waiting for the command.
    pub timeout_secs: u64,
    /// Bytes of output kept; more is cut off.
    pub max_output_bytes: usize,
}

/// What a diagnostic command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// `None` when the command was still running at the timeout.
    pub exit_code: Option<i64>,
    /// Standard output and error, interleaved as written, at most the asked bytes.
    pub output: String,
    /// Whether output was cut off at the limit.
    pub truncated: bool,
    /// Whether the command was still running when the time ran out.
    pub timed_out: bool,
}

fn unsupported(engine: &str, what: &str) -> ValError {
    ValError::Refused {
        operation: what.to_owned(),
        reason: format!("the {engine} engine plugin does not support it"),
    }
}

/// A virtualization engine plugin: Docker by default, others by implementing this trait.
///
/// All methods are idempotent where the engine allows it: stopping a stopped container
/// or removing a missing one succeeds, so the orchestrator's reconcile loop can call them
/// again after a crash without special cases.
#[async_trait::async_trait]
pub trait VirtualizationEngine: Send + Sync + 'static {
    /// A short name for logs and `nodestatus`, e.g. `docker`.
    fn name(&self) -> &str;

    /// Checks that the engine answers; returns its version string.
    async fn ping(&self) -> Result<String, ValError>;

    /// Makes sure the image is present locally, pulling it if it is absent. Progress is
    /// reported through `progress` (may be called many times).
    async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), ValError>;

    /// Creates and starts a container; returns its engine id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, ValError>;

    /// Stops a container (gracefully, then forcibly after `grace_secs`).
    async fn stop(&self, container_id: &str, grace_secs: u32) -> Result<(), ValError>;

    /// Removes a container (and its anonymous volumes). A missing container is not an error.
    async fn remove(&self, container_id: &str) -> Result<(), ValError>;

    /// Current status of one container.
    async fn inspect(&self, container_id: &str) -> Result<ContainerStatus, ValError>;

    /// All containers (running or not) whose labels include every given `key=value`.
    async fn list(
        &self,
        label_filter: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerStatus>, ValError>;

    /// The last `tail` lines of a container's output (stdout and stderr interleaved).
    async fn logs(&self, container_id: &str, tail: usize) -> Result<Vec<String>, ValError>;

    /// Log lines of a container, oldest first: the last `query.tail` lines, only those
    /// written after `query.since` when it is set. Engines that cannot do this refuse.
    async fn log_lines(
        &self,
        container_id: &str,
        query: &LogQuery,
    ) -> Result<Vec<LogLine>, ValError> {
        let _ = (container_id, query);
        Err(unsupported(self.name(), "reading logs with timestamps"))
    }

    /// The last `tail` log lines of a container, then every new one as it is written,
    /// until the container stops or the stream is dropped.
    fn follow_logs(
        &self,
        container_id: &str,
        tail: usize,
    ) -> BoxStream<'static, Result<LogLine, ValError>> {
        let _ = (container_id, tail);
        let error = unsupported(self.name(), "following logs");
        futures::stream::once(async move { Err(error) }).boxed()
    }

    /// Runs a diagnostic command inside a running container, bounded in time and output.
    async fn exec(
        &self,
        container_id: &str,
        request: &ExecRequest,
    ) -> Result<ExecOutput, ValError> {
        let _ = (container_id, request);
        Err(unsupported(self.name(), "running commands in containers"))
    }

    /// A live stream of events about managed containers. The stream ends if the engine
    /// connection is lost; the caller re-subscribes (and reconciles) then.
    fn events(&self) -> BoxStream<'static, Result<EngineEvent, ValError>>;
}
