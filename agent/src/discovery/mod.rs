//! Node discovery over MQTT (Motey, sections 4.2.2 and 5.4.4), extended with crash
//! detection. Every node subscribes to the discovery topics under `<prefix>/nodes/`:
//!
//! | topic | message (`type`) | when |
//! |---|---|---|
//! | `<prefix>/nodes/request` | `node_request` | a node (re)connects: every node, itself included, answers with its metadata |
//! | `<prefix>/nodes/meta/<id>` | `node_meta` (metadata and lifecycle phase) | answer to a request, on connecting, on a metadata or phase change, and every heartbeat interval |
//! | `<prefix>/nodes/leave/<id>` | `node_leave` (`reason: leave`) | the node stops gracefully: the others forget it |
//! | `<prefix>/nodes/leave/<id>` | `node_leave` (`reason: lost`) | the node's MQTT last will: the broker publishes it when the connection breaks without a goodbye; the others mark the node gone |
//!
//! | `<prefix>/cluster/revocations` | the CA-signed revocation list (PEM, retained) | published by the CA node when it changed |
//!
//! Each message is the signed envelope of the peer protocol (`peer/PROTOCOL.md`), so a
//! node without the cluster key can neither join nor make others forget a node. A node
//! that is a member by certificate (`crate::cluster`) also signs each message with its own
//! key and sends its certificate (`cluster::signed`), and believes only messages signed
//! by the node they name: a node can announce only itself. `node_meta`, `node_request`
//! and a graceful `node_leave` are refused when replayed (nonce and time). A node
//! not heard of for `peer_suspect_after` seconds becomes suspect, after `peer_gone_after`
//! seconds gone ([`PeerDirectory`]). Announcements carry the node's connection *epoch*
//! (unix ms when the connection was opened), so that the last will of an older connection
//! arriving late cannot mark a reconnected node gone.
//!
//! If the broker cannot be reached the node keeps retrying with exponential backoff, does
//! not judge its peers meanwhile (it cannot hear them), and on reconnecting requests
//! everyone's metadata again, so the cluster re-converges.
//!
//! Wiring:
//!
//! ```no_run
//! # async fn wire(config: motey::config::Config, store: motey::store::Store, this_node: motey::domain::NodeInfo, key: motey::peer::ClusterKey) -> Result<(), Box<dyn std::error::Error>> {
//! use motey::discovery::{embedded_broker, Discovery, DiscoverySettings, Liveness, PeerDirectory};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let _broker = if config.mqtt.embedded {
//!     Some(embedded_broker::start(embedded_broker::BrokerSettings::from_config(&config.mqtt, &key)?).await?)
//! } else {
//!     None
//! };
//! let directory = PeerDirectory::open(this_node, store.nodes.clone(), Liveness::from_config(&config.mqtt))?;
//! let mut settings = DiscoverySettings::from_config(&config.mqtt);
//! settings.credentials = Some(motey::discovery::broker_credentials(&config.mqtt, &key));
//! let discovery = Discovery::start(settings, directory.clone(), key, shutdown.clone())?;
//! // GET /v1/nodes: directory.list(); after a capability change: discovery.set_capabilities(&capabilities);
//! # Ok(()) }
//! ```

mod directory;
pub mod embedded_broker;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::cluster::Membership;
use crate::domain::{Capability, NodeId, NodeInfo};
use crate::peer::envelope::{now_ms, ClusterKey, Envelope, ReplayGuard};

pub use directory::{Liveness, Peer, PeerDirectory, PeerEvent, PeerState};

/// Envelope types of the discovery messages.
pub mod kinds {
    pub const NODE_REQUEST: &str = "node_request";
    pub const NODE_META: &str = "node_meta";
    pub const NODE_LEAVE: &str = "node_leave";
}

/// A short digest of a set of capabilities (order and duplicates do not matter), announced
/// with a node's metadata so that peers know when to ask for its capabilities again.
pub fn capabilities_digest(capabilities: &[Capability]) -> String {
    let mut keys: Vec<String> = capabilities
        .iter()
        .map(|c| format!("{}/{}", c.capability_type, c.capability))
        .collect();
    keys.sort();
    keys.dedup();
    let mut hasher = Sha256::new();
    for key in keys {
        hasher.update(key.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Why discovery cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("MQTT TLS file {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
}

/// TLS towards the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// CA certificate(s) (PEM) the broker's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM), for brokers that authenticate clients.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// User name of the broker account derived from the cluster key.
pub const DERIVED_BROKER_USER: &str = "motey";

/// The broker login of this node: `[MQTT] username`/`password` when set, else an account
/// derived from the cluster key, which the embedded broker requires and every node of
/// the cluster computes alike.
pub fn broker_credentials(mqtt: &crate::config::Mqtt, key: &ClusterKey) -> (String, String) {
    match &mqtt.username {
        Some(user) => (user.clone(), mqtt.password.clone().unwrap_or_default()),
        None => (
            DERIVED_BROKER_USER.into(),
            key.derive_secret("motey mqtt broker password"),
        ),
    }
}

/// How to reach the broker and how often to speak.
#[derive(Debug, Clone)]
pub struct DiscoverySettings {
    pub broker_host: String,
    pub broker_port: u16,
    pub keepalive: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<MqttTls>,
    pub topic_prefix: String,
    pub heartbeat_interval: Duration,
    /// First and longest wait between two connection attempts (doubling in between).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Membership by node certificate: announcements are then signed by this node's key
    /// and only those signed by the node they name are believed.
    pub membership: Option<Membership>,
}

impl DiscoverySettings {
    /// Settings for a broker at `host:port`, with the defaults of `config.ini`.
    pub fn new(host: impl Into<String>, port: u16) -> DiscoverySettings {
        DiscoverySettings {
            broker_host: host.into(),
            broker_port: port,
            keepalive: Duration::from_secs(60),
            credentials: None,
            tls: None,
            topic_prefix: "motey".into(),
            heartbeat_interval: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
            membership: None,
        }
    }

    /// From the `[MQTT]` section. An embedded broker listening on all interfaces
    /// (`0.0.0.0`) is reached on the loopback address.
    pub fn from_config(mqtt: &crate::config::Mqtt) -> DiscoverySettings {
        let host = match mqtt.ip.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            Ok(ip) if ip.is_unspecified() => "::1".to_owned(),
            _ => mqtt.ip.clone(),
        };
        let mut settings = DiscoverySettings::new(host, mqtt.port);
        settings.keepalive = Duration::from_secs(mqtt.keepalive.max(1));
        settings.credentials = mqtt
            .username
            .clone()
            .map(|user| (user, mqtt.password.clone().unwrap_or_default()));
        settings.tls = mqtt.tls_ca_file.clone().map(|ca_file| MqttTls {
            ca_file,
            client_cert_file: mqtt.tls_client_cert_file.clone(),
            client_key_file: mqtt.tls_client_key_file.clone(),
        });
        settings.topic_prefix = mqtt.topic_prefix.clone();
        settings.heartbeat_interval = Duration::from_secs(mqtt.heartbeat_interval_secs);
        settings
    }
}

/// The discovery topics of one prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

enum Topic {
    Request,
    Meta(String),
    Leave(String),
    Revocations,
}

impl Topics {
    pub fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn request(&self) -> String {
        format!("{}/nodes/request", self.prefix)
    }

    pub fn meta(&self, node: &NodeId) -> String {
        format!("{}/nodes/meta/{}", self.prefix, node)
    }

    pub fn leave(&self, node: &NodeId) -> String {
        format!("{}/nodes/leave/{}", self.prefix, node)
    }

    /// The CA-signed revocation list, retained by the broker so that a node starting
    /// later receives it at once.
    pub fn revocations(&self) -> String {
        format!("{}/cluster/revocations", self.prefix)
    }

    /// The filters a node subscribes to.
    pub fn filters(&self) -> [String; 4] {
        [
            self.revocations(),
            self.request(),
            format!("{}/nodes/meta/+", self.prefix),
            format!("{}/nodes/leave/+", self.prefix),
        ]
    }

    fn classify(&self, topic: &str) -> Option<Topic> {
        if topic == self.revocations() {
            return Some(Topic::Revocations);
        }
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/nodes/")?;
        if rest == "request" {
            return Some(Topic::Request);
        }
        if let Some(id) = rest.strip_prefix("meta/") {
            return Some(Topic::Meta(id.to_owned()));
        }
        rest.strip_prefix("leave/")
            .map(|id| Topic::Leave(id.to_owned()))
    }
}

/// Payload of `node_meta`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaPayload {
    pub node: NodeInfo,
    /// Connection epoch (unix ms when the node's current broker connection was opened).
    pub epoch: u64,
    /// Random per agent start: two agents claiming one node id are told apart by it.
    pub instance: String,
    /// The node's lifecycle phase (absent from nodes that do not announce one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::lifecycle::PhaseReport>,
}

/// Why a node leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// Graceful stop.
    Leave,
    /// The node's last will: its connection broke.
    Lost,
}

/// Payload of `node_leave`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeavePayload {
    pub epoch: u64,
    pub reason: LeaveReason,
}

/// The node's link to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BrokerStatus {
    Connecting,
    Connected {
        since: DateTime<Utc>,
    },
    Disconnected {
        since: DateTime<Utc>,
        error: String,
        attempts: u32,
    },
    Stopped,
}

enum Command {
    Announce,
    Leave(oneshot::Sender<()>),
}

enum Drive {
    Connected,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Disconnected {
        error: String,
        attempts: u32,
        retry_in: Duration,
    },
    Closed,
}

/// Starts node discovery.
pub struct Discovery;

impl Discovery {
    /// Connects to the broker (in the background, retrying until it answers), announces
    /// this node and keeps `directory` up to date until `shutdown` is cancelled, then
    /// announces the leave.
    pub fn start(
        settings: DiscoverySettings,
        directory: PeerDirectory,
        key: ClusterKey,
        shutdown: CancellationToken,
    ) -> Result<DiscoveryHandle, DiscoveryError> {
        let this_node = directory.this_node();
        let instance = crate::peer::envelope::new_nonce()[..16].to_owned();
        let topics = Topics::new(&settings.topic_prefix);
        let epoch = Arc::new(AtomicU64::new(0));
        let first_epoch = next_epoch(&epoch);

        let client_id = format!("motey-{}-{}", this_node.id, &instance[..6]);
        let mut options = MqttOptions::new(
            client_id,
            settings.broker_host.clone(),
            settings.broker_port,
        );
        options.set_keep_alive(settings.keepalive);
        options.set_clean_session(true);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        if let Some((user, password)) = &settings.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &settings.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_client_config(tls)?,
            )));
        }
        let will = WillMaker {
            topic: topics.leave(&this_node.id),
            sender: this_node.id.to_string(),
            key: key.clone(),
            membership: settings.membership.clone(),
        };
        options.set_last_will(will.make(first_epoch));
        let (client, eventloop) = AsyncClient::new(options, 64);

        let (drive_tx, drive_rx) = mpsc::channel(1024);
        let broker = BrokerTarget {
            address: format!("{}:{}", settings.broker_host, settings.broker_port),
            tls: settings.tls.is_some(),
        };
        let poll_task = tokio::spawn(drive(
            eventloop,
            drive_tx,
            epoch.clone(),
            will,
            broker,
            settings.reconnect_min,
            settings.reconnect_max,
        ));
        let (status_tx, status_rx) = watch::channel(BrokerStatus::Connecting);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        tracing::info!(
            broker = %format!("{}:{}", settings.broker_host, settings.broker_port),
            tls = settings.tls.is_some(),
            prefix = %settings.topic_prefix,
            node = %this_node.id,
            "starting node discovery"
        );
        let worker = Worker {
            directory: directory.clone(),
            key,
            topics,
            client,
            instance,
            epoch,
            status: status_tx,
            guard: ReplayGuard::default(),
            warned: HashSet::new(),
            connected: false,
            membership: settings.membership.clone(),
            published_revocations: 0,
        };
        let poll_abort = poll_task.abort_handle();
        let task = tokio::spawn(worker.run(
            settings.heartbeat_interval,
            drive_rx,
            commands_rx,
            poll_task,
            shutdown,
        ));
        Ok(DiscoveryHandle {
            commands: commands_tx,
            status: status_rx,
            directory,
            task,
            poll_abort,
        })
    }
}

/// Controls a running discovery.
pub struct DiscoveryHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<BrokerStatus>,
    directory: PeerDirectory,
    task: JoinHandle<()>,
    poll_abort: tokio::task::AbortHandle,
}

impl DiscoveryHandle {
    /// The link to the broker, as it changes.
    pub fn status(&self) -> watch::Receiver<BrokerStatus> {
        self.status.clone()
    }

    /// Whether the broker is connected now.
    pub fn is_connected(&self) -> bool {
        matches!(*self.status.borrow(), BrokerStatus::Connected { .. })
    }

    pub fn directory(&self) -> &PeerDirectory {
        &self.directory
    }

    /// Announces this node's metadata now (after `PeerDirectory::update_this_node`).
    pub fn announce(&self) {
        let _ = self.commands.try_send(Command::Announce);
    }

    /// Something that announces this node's metadata now, usable after the handle is gone.
    pub fn announcer(&self) -> Announcer {
        Announcer(self.commands.clone())
    }

    /// Records this node's new capabilities digest and announces it.
    pub fn set_capabilities(&self, capabilities: &[Capability]) {
        let digest = capabilities_digest(capabilities);
        self.directory
            .update_this_node(|info| info.capabilities_digest = digest);
        self.announce();
    }

    /// Announces the leave, disconnects from the broker and waits until done.
    pub async fn leave(self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.commands.send(Command::Leave(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let _ = self.task.await;
    }

    /// Stops at once, without a goodbye, as a crash would: the broker then publishes this
    /// node's last will.
    pub fn abort(self) {
        self.poll_abort.abort();
        self.task.abort();
    }

    /// Waits until discovery has stopped (after the shutdown token was cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Announces this node's metadata on request (e.g. after its phase changed).
#[derive(Clone)]
pub struct Announcer(mpsc::Sender<Command>);

impl Announcer {
    pub fn announce(&self) {
        let _ = self.0.try_send(Command::Announce);
    }
}

/// Builds the (signed) last will of one connection.
struct WillMaker {
    topic: String,
    sender: String,
    key: ClusterKey,
    membership: Option<Membership>,
}

impl WillMaker {
    fn make(&self, epoch: u64) -> LastWill {
        let payload = serde_json::to_value(LeavePayload {
            epoch,
            reason: LeaveReason::Lost,
        })
        .expect("a leave payload serializes");
        let envelope = Envelope::new(
            kinds::NODE_LEAVE,
            uuid::Uuid::new_v4().to_string(),
            self.sender.clone(),
            payload,
        );
        LastWill::new(
            self.topic.clone(),
            seal(&self.membership, envelope.signed_bytes(&self.key)),
            QoS::AtLeastOnce,
            false,
        )
    }
}

/// A new connection epoch: the current unix time in ms, strictly increasing.
fn next_epoch(epoch: &AtomicU64) -> u64 {
    let now = now_ms().max(0) as u64;
    let mut current = epoch.load(Ordering::SeqCst);
    loop {
        let next = now.max(current + 1);
        match epoch.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return next,
            Err(actual) => current = actual,
        }
    }
}

/// Drives the MQTT connection: polls the event loop, reconnects with backoff after errors
/// (with a new epoch and last will for the new connection) and hands what happens to the
/// worker.
async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Drive>,
    epoch: Arc<AtomicU64>,
    will: WillMaker,
    broker: BrokerTarget,
    reconnect_min: Duration,
    reconnect_max: Duration,
) {
    let mut delay = reconnect_min;
    let mut attempts = 0u32;
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                delay = reconnect_min;
                attempts = 0;
                Drive::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Drive::Message {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
            },
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = events.send(Drive::Closed).await;
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                attempts = attempts.saturating_add(1);
                // Announcements queued while cut off are stale; fresh ones follow the
                // reconnection.
                eventloop.pending.clear();
                eventloop
                    .mqtt_options
                    .set_last_will(will.make(next_epoch(&epoch)));
                let event = Drive::Disconnected {
                    error: broker.explain(&error),
                    attempts,
                    retry_in: delay,
                };
                if events.send(event).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(reconnect_max);
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// The broker as configured, to say in an error what to check.
struct BrokerTarget {
    address: String,
    tls: bool,
}

impl BrokerTarget {
    /// The connection error with the setting most likely at fault, so that an operator
    /// reading the log knows what to fix (the bare library errors do not say).
    fn explain(&self, error: &ConnectionError) -> String {
        let address = &self.address;
        match error {
            ConnectionError::ConnectionRefused(
                code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
            ) => format!(
                "the broker at {address} refused this node's credentials ({code:?}); \
                 check [MQTT] username and password"
            ),
            ConnectionError::ConnectionRefused(code) => {
                format!("the broker at {address} refused the connection ({code:?})")
            }
            ConnectionError::Tls(tls) => format!(
                "TLS with the broker at {address} failed: {tls}; check [MQTT] tls_ca_file \
                 (the broker's certificate must chain to it and name the configured [MQTT] ip)"
            ),
            ConnectionError::Io(io) if self.tls => format!(
                "no TLS connection to the broker at {address}: {io}; check [MQTT] ip and port, \
                 and that the broker listens with TLS there"
            ),
            ConnectionError::Io(io) => format!(
                "no connection to the broker at {address}: {io}; check [MQTT] ip and port \
                 (and tls_ca_file if the broker expects TLS)"
            ),
            other => format!("broker at {address}: {other}"),
        }
    }
}

struct Worker {
    directory: PeerDirectory,
    key: ClusterKey,
    topics: Topics,
    client: AsyncClient,
    instance: String,
    epoch: Arc<AtomicU64>,
    status: watch::Sender<BrokerStatus>,
    guard: ReplayGuard,
    /// Senders already warned about (one warning each, not one per heartbeat).
    warned: HashSet<String>,
    connected: bool,
    membership: Option<Membership>,
    /// Number of the revocation list this (CA) node last published.
    published_revocations: u64,
}

impl Worker {
    async fn run(
        mut self,
        heartbeat_interval: Duration,
        mut drive: mpsc::Receiver<Drive>,
        mut commands: mpsc::Receiver<Command>,
        poll_task: JoinHandle<()>,
        shutdown: CancellationToken,
    ) {
        let mut heartbeat = tokio::time::interval(heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let check_every = (self.directory.liveness().suspect_after / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut expiry = tokio::time::interval(check_every);
        expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut done: Option<oneshot::Sender<()>> = None;
        // Discovery outlives a dropped handle; it then stops with the shutdown token.
        let mut handle_alive = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                command = commands.recv(), if handle_alive => match command {
                    Some(Command::Announce) => self.announce(),
                    Some(Command::Leave(reply)) => {
                        done = Some(reply);
                        break;
                    }
                    None => handle_alive = false,
                },
                event = drive.recv() => match event {
                    Some(event) => self.on_drive(event),
                    None => break,
                },
                _ = heartbeat.tick() => {
                    self.publish_revocations();
                    self.announce();
                }
                _ = expiry.tick() => self.directory.expire(Instant::now()),
            }
        }
        self.leave(&mut drive, poll_task).await;
        self.directory.broker_disconnected();
        let _ = self.status.send(BrokerStatus::Stopped);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn on_drive(&mut self, event: Drive) {
        match event {
            Drive::Connected => {
                tracing::info!(node = %self.directory.this_node().id, "connected to the MQTT broker");
                self.connected = true;
                self.directory.broker_connected(Instant::now());
                let _ = self
                    .status
                    .send(BrokerStatus::Connected { since: Utc::now() });
                let filters = self
                    .topics
                    .filters()
                    .map(|filter| rumqttc::SubscribeFilter::new(filter, QoS::AtLeastOnce));
                if let Err(error) = self.client.try_subscribe_many(filters) {
                    tracing::warn!(%error, "cannot subscribe to the discovery topics");
                }
                self.published_revocations = 0;
                self.publish_revocations();
                self.publish(
                    self.topics.request(),
                    kinds::NODE_REQUEST,
                    serde_json::json!({}),
                );
                self.announce();
            }
            Drive::Message { topic, payload } => self.on_message(&topic, &payload),
            Drive::Disconnected {
                error,
                attempts,
                retry_in,
            } => {
                if self.connected || attempts == 1 {
                    tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "MQTT broker unreachable; retrying with backoff");
                } else {
                    tracing::debug!(%error, attempts, retry_in_ms = retry_in.as_millis() as u64, "MQTT broker still unreachable");
                }
                self.connected = false;
                self.directory.broker_disconnected();
                let since = match &*self.status.borrow() {
                    BrokerStatus::Disconnected { since, .. } => *since,
                    _ => Utc::now(),
                };
                let _ = self.status.send(BrokerStatus::Disconnected {
                    since,
                    error,
                    attempts,
                });
            }
            Drive::Closed => self.connected = false,
        }
    }

    fn publish(&self, topic: String, kind: &str, payload: serde_json::Value) {
        if !self.connected {
            return;
        }
        let envelope = Envelope::new(
            kind,
            uuid::Uuid::new_v4().to_string(),
            self.directory.this_node().id.to_string(),
            payload,
        );
        if let Err(error) = self.client.try_publish(
            topic,
            QoS::AtLeastOnce,
            false,
            seal(&self.membership, envelope.signed_bytes(&self.key)),
        ) {
            tracing::debug!(%error, kind, "discovery message not sent");
        }
    }

    fn announce(&self) {
        let node = self.directory.this_node();
        let topic = self.topics.meta(&node.id);
        let payload = MetaPayload {
            node,
            epoch: self.epoch.load(Ordering::SeqCst),
            instance: self.instance.clone(),
            phase: self.directory.this_phase(),
        };
        self.publish(
            topic,
            kinds::NODE_META,
            serde_json::to_value(payload).expect("metadata serializes"),
        );
    }

    fn refuse(&mut self, sender: &str, topic: &str, reason: &str) {
        if self.warned.insert(sender.to_owned()) {
            tracing::warn!(%sender, %topic, %reason, "ignoring discovery messages of a node (further ones are logged at debug level)");
        } else {
            tracing::debug!(%sender, %topic, %reason, "ignored discovery message");
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let Some(kind_of_topic) = self.topics.classify(topic) else {
            return;
        };
        if let Topic::Revocations = kind_of_topic {
            self.on_revocations(payload);
            return;
        }
        let (signer, payload) = match &self.membership {
            Some(membership) => match crate::cluster::signed::open(membership, payload) {
                Ok((member, message)) => (Some(member.node_id), message),
                Err(refusal) => {
                    if let crate::cluster::TrustRefusal::Revoked { node } = &refusal {
                        self.directory.revoked(&NodeId(node.clone()));
                    }
                    let sender = Envelope::parse(payload)
                        .map(|e| e.sender)
                        .unwrap_or_else(|_| "(unsigned)".into());
                    self.refuse(
                        &sender,
                        topic,
                        &format!("{refusal}; has it joined this cluster?"),
                    );
                    return;
                }
            },
            None => (None, payload.to_vec()),
        };
        let envelope = match Envelope::parse(&payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::debug!(%topic, %error, "malformed discovery message dropped");
                return;
            }
        };
        if let Err(error) = envelope.verify(&self.key) {
            self.refuse(
                &envelope.sender,
                topic,
                &format!("{error}; is it configured with another cluster key?"),
            );
            return;
        }
        if let Some(signer) = signer.filter(|signer| signer.as_str() != envelope.sender) {
            self.refuse(
                &envelope.sender,
                topic,
                &format!("signed by node {signer}: a node may announce only itself"),
            );
            return;
        }
        let this_id = self.directory.this_node().id;
        let now = now_ms();
        match (kind_of_topic, envelope.kind.as_str()) {
            (Topic::Request, kinds::NODE_REQUEST) => {
                // A replayed request would make every node announce again.
                match self.guard.check(&envelope, now) {
                    Ok(()) => self.announce(),
                    Err(error) => self.refuse(&envelope.sender, topic, &error.to_string()),
                }
            }
            (Topic::Meta(id), kinds::NODE_META) => {
                if let Err(error) = self.guard.check(&envelope, now) {
                    self.refuse(&envelope.sender, topic, &error.to_string());
                    return;
                }
                let meta: MetaPayload = match serde_json::from_value(envelope.payload) {
                    Ok(meta) => meta,
                    Err(error) => {
                        tracing::debug!(%topic, %error, "malformed node metadata dropped");
                        return;
                    }
                };
                if meta.node.id.as_str() != id || envelope.sender != id {
                    self.refuse(&envelope.sender, topic, "node id differs from the topic");
                    return;
                }
                if let Err(reason) = check_node_info(&meta.node) {
                    self.refuse(&envelope.sender, topic, &reason);
                    return;
                }
                if meta.node.id == this_id {
                    if meta.instance != self.instance {
                        self.refuse(
                            &format!("{}#{}", envelope.sender, meta.instance),
                            topic,
                            "another agent announces this node's id; give each node its own [GENERAL] node_id",
                        );
                    }
                    return;
                }
                self.directory.observe_with_phase(
                    meta.node,
                    meta.phase,
                    meta.epoch,
                    Instant::now(),
                );
            }
            (Topic::Leave(id), kinds::NODE_LEAVE) => {
                let leave: LeavePayload = match serde_json::from_value(envelope.payload.clone()) {
                    Ok(leave) => leave,
                    Err(error) => {
                        tracing::debug!(%topic, %error, "malformed leave message dropped");
                        return;
                    }
                };
                if envelope.sender != id || id == this_id.as_str() {
                    return;
                }
                let node = NodeId(id);
                match leave.reason {
                    LeaveReason::Leave => {
                        if let Err(error) = self.guard.check(&envelope, now) {
                            self.refuse(&envelope.sender, topic, &error.to_string());
                            return;
                        }
                        self.directory.leave(&node, leave.epoch);
                    }
                    // A last will is published whenever the broker notices the broken
                    // connection, so its age says nothing; the epoch tells its connection.
                    LeaveReason::Lost => self.directory.lost(&node, leave.epoch),
                }
            }
            (_, kind) => {
                tracing::debug!(%topic, kind, "unexpected discovery message dropped");
            }
        }
    }

    /// On the CA node: publishes the revocation list (retained) when it changed, so that
    /// every node refuses a revoked one within a heartbeat interval.
    fn publish_revocations(&mut self) {
        let Some(membership) = &self.membership else {
            return;
        };
        let files = membership.files();
        if !self.connected || !files.is_authority() {
            return;
        }
        let Ok(pem) = std::fs::read_to_string(files.revocations()) else {
            return;
        };
        let list = match crate::cluster::RevocationList::verify(&pem, membership.ca_der()) {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "the revocation list of this CA does not verify; not published");
                return;
            }
        };
        if list.number() == self.published_revocations {
            return;
        }
        self.on_revocations(pem.as_bytes());
        match self.client.try_publish(
            self.topics.revocations(),
            QoS::AtLeastOnce,
            true,
            pem.into_bytes(),
        ) {
            Ok(()) => self.published_revocations = list.number(),
            Err(error) => tracing::debug!(%error, "revocation list not sent"),
        }
    }

    /// A revocation list from the cluster: the CA's signature is its authentication.
    fn on_revocations(&mut self, payload: &[u8]) {
        let Some(membership) = &self.membership else {
            return;
        };
        let Ok(pem) = std::str::from_utf8(payload) else {
            tracing::debug!("revocation list that is not text dropped");
            return;
        };
        match membership.apply_revocations(pem) {
            Ok(Some(revoked)) => {
                tracing::info!(
                    number = membership.revocations().number(),
                    revoked = membership.revocations().len(),
                    "took a newer revocation list"
                );
                for node in revoked {
                    tracing::warn!(target: "motey::audit", %node, "node revoked by the cluster CA");
                    self.directory.revoked(&node);
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "ignoring a revocation list not signed by this cluster's CA")
            }
        }
    }

    /// Says goodbye if the broker is connected, then closes the connection.
    async fn leave(&mut self, drive: &mut mpsc::Receiver<Drive>, poll_task: JoinHandle<()>) {
        if self.connected {
            let node = self.directory.this_node().id;
            let payload = LeavePayload {
                epoch: self.epoch.load(Ordering::SeqCst),
                reason: LeaveReason::Leave,
            };
            self.publish(
                self.topics.leave(&node),
                kinds::NODE_LEAVE,
                serde_json::to_value(payload).expect("a leave payload serializes"),
            );
            let _ = self.client.try_disconnect();
            let closed = async {
                while let Some(event) = drive.recv().await {
                    if matches!(event, Drive::Closed) {
                        break;
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(3), closed)
                .await
                .is_err()
            {
                tracing::warn!("the MQTT broker did not take the leave in time");
            }
            tracing::info!(%node, "left the fog");
        }
        self.connected = false;
        poll_task.abort();
        let _ = poll_task.await;
    }
}

/// A discovery message as sent: signed by this node's key when it is a member by
/// certificate.
fn seal(membership: &Option<Membership>, message: Vec<u8>) -> Vec<u8> {
    match membership {
        Some(membership) => crate::cluster::signed::seal(&membership.identity(), &message),
        None => message,
    }
}

/// Bounds on announced metadata, so that a peer cannot fill the store with junk.
fn check_node_info(info: &NodeInfo) -> Result<(), String> {
    let id_ok = !info.id.as_str().is_empty()
        && info.id.as_str().len() <= 128
        && info
            .id
            .as_str()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !id_ok {
        return Err("invalid node id".into());
    }
    if info.name.len() > 256 || info.version.len() > 64 || info.capabilities_digest.len() > 128 {
        return Err("oversized metadata".into());
    }
    if info.addresses.len() > 16 || info.addresses.iter().any(|a| a.len() > 255) {
        return Err("too many or too long addresses".into());
    }
    Ok(())
}

fn tls_client_config(tls: &MqttTls) -> Result<Arc<rustls::ClientConfig>, DiscoveryError> {
    let error = |path: &Path, reason: String| DiscoveryError::Tls {
        path: path.to_owned(),
        reason,
    };
    let read = |path: &Path| std::fs::read(path).map_err(|e| error(path, e.to_string()));
    let mut roots = rustls::RootCertStore::empty();
    let ca = read(&tls.ca_file)?;
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|e| error(&tls.ca_file, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| error(&tls.ca_file, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(error(&tls.ca_file, "no PEM certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| error(&tls.ca_file, e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let pem = read(cert_file)?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(cert_file, e.to_string()))?;
            if certs.is_empty() {
                return Err(error(cert_file, "no PEM certificate found".into()));
            }
            let pem = read(key_file)?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| error(key_file, e.to_string()))?
                .ok_or_else(|| error(key_file, "no PEM private key found".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| error(cert_file, e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_ignores_order_and_duplicates() {
        let zigbee = Capability {
            capability: "zigbee".into(),
            capability_type: "hardware".into(),
        };
        let probe = Capability {
            capability: "optical-probe".into(),
            capability_type: "hardware".into(),
        };
        let a = capabilities_digest(&[zigbee.clone(), probe.clone()]);
        let b = capabilities_digest(&[probe.clone(), zigbee.clone(), probe]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert_ne!(a, capabilities_digest(&[zigbee]));
        assert_ne!(capabilities_digest(&[]), a);
    }

    #[test]
    fn topics_are_classified() {
        let topics = Topics::new("fog/a");
        assert!(matches!(
            topics.classify("fog/a/nodes/request"),
            Some(Topic::Request)
        ));
        assert!(
            matches!(topics.classify("fog/a/nodes/meta/n1"), Some(Topic::Meta(id)) if id == "n1")
        );
        assert!(
            matches!(topics.classify("fog/a/nodes/leave/n1"), Some(Topic::Leave(id)) if id == "n1")
        );
        assert!(topics.classify("fog/b/nodes/request").is_none());
        assert!(topics.classify("fog/a/other").is_none());
    }

    #[test]
    fn epochs_strictly_increase() {
        let epoch = AtomicU64::new(0);
        let a = next_epoch(&epoch);
        let b = next_epoch(&epoch);
        assert!(b > a);
    }

    #[test]
    fn unspecified_embedded_address_is_reached_on_loopback() {
        let mut config = crate::config::RawConfig::defaults().parse_config().unwrap();
        config.mqtt.ip = "0.0.0.0".into();
        assert_eq!(
            DiscoverySettings::from_config(&config.mqtt).broker_host,
            "127.0.0.1"
        );
    }

    #[test]
    fn missing_tls_files_are_named() {
        let error = tls_client_config(&MqttTls {
            ca_file: "/nonexistent/ca.pem".into(),
            client_cert_file: None,
            client_key_file: None,
        })
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
