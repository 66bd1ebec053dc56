//! Wiring of one agent: store, engine plugin, orchestrator and REST API, started and
//! stopped together. `motey start` runs this; tests run it in-process too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiState, NodeDirectory};
use crate::capabilities::events::CapabilityEvents;
use crate::config::Config;
use crate::discovery::embedded_broker::{self, BrokerSettings, EmbeddedBroker};
use crate::discovery::{
    capabilities_digest, Announcer, BrokerStatus, Discovery, DiscoverySettings, Liveness,
    PeerDirectory,
};
use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, NodeInfo, ServiceId};
use crate::lifecycle::{self, Health, NodePhase};
use crate::orchestrator::remote::RemoteNodes;
use crate::orchestrator::Orchestrator;
use crate::peer::{
    load_or_generate_key, ClusterKey, ClusterKeyTrust, ErrorCode, PeerClient, PeerHandler,
    PeerRefusal, PeerServer, ServerOptions, SessionTrust,
};
use crate::store::{Store, StoreError};
use crate::val;

/// Why the agent could not start. Each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use the API token file {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("cannot listen for the REST API on {address}: {reason} (see [WEBSERVER] ip and port)")]
    Listen { address: SocketAddr, reason: String },
    #[error("REST API certificate: {0} (see [WEBSERVER] tls, tls_cert_file and tls_key_file)")]
    Tls(#[from] crate::api::tls::TlsError),
    #[error("virtualization plugin: {0}")]
    Engine(#[from] motey_val::ValError),
    #[error("embedded MQTT broker: {0} (see [MQTT] ip, port and embedded)")]
    Broker(#[from] crate::discovery::embedded_broker::BrokerError),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error("node discovery: {0}")]
    Discovery(#[from] crate::discovery::DiscoveryError),
    #[error("cluster membership: {0} (see [CLUSTER] role and <data_dir>/cluster/)")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("hardware events: {0} (see [ZEROMQ] capability_events)")]
    CapabilityEvents(#[from] crate::capabilities::events::EventError),
}

/// An agent whose sockets are bound, ready to run.
pub struct Agent {
    config: Config,
    store: Store,
    orchestrator: Orchestrator,
    listener: TcpListener,
    /// `None`: the REST API is plain HTTP.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// SHA-256 of the certificate the REST API presents.
    rest_fingerprint: Option<String>,
    state: ApiState,
    directory: PeerDirectory,
    key: ClusterKey,
    broker: Option<EmbeddedBroker>,
    peer_server: PeerServer,
    /// The peer port others connect to: the front of `peer_server`.
    peer_port: u16,
    capability_events: CapabilityEvents,
    capability_changes: watch::Receiver<u64>,
    /// Drain timeouts of `POST /v1/decommission`.
    decommission_requests: mpsc::Receiver<Duration>,
    /// Stops what was started in [`Agent::bind`] (the event socket) when the agent ends.
    stopping: CancellationToken,
    /// `None`: the node has not joined a cluster by certificate (shared key only).
    membership: Option<crate::cluster::Membership>,
}

impl Agent {
    /// Opens everything the agent needs, failing early with a clear message, but does
    /// not start serving yet.
    pub async fn bind(config: Config) -> Result<Agent, StartError> {
        let engine = val::connect(&config.val)?;
        Agent::bind_with_engine(config, engine).await
    }

    /// As [`Agent::bind`], with a given engine instead of the configured plugin.
    pub async fn bind_with_engine(
        config: Config,
        engine: Arc<dyn motey_val::VirtualizationEngine>,
    ) -> Result<Agent, StartError> {
        let tightened =
            crate::private_fs::private_dir(&config.general.data_dir).map_err(|error| {
                StartError::DataDir {
                    path: config.general.data_dir.display().to_string(),
                    reason: error.to_string(),
                }
            })?;
        if tightened {
            warn!(path = %config.general.data_dir.display(), "the data directory was readable by others; now 0700");
        }
        let store = Store::open(&config.database.path)?;
        let node = node_id(&config, &store)?;
        let token = api_token(&config)?;
        let key = load_or_generate_key(config.cluster.key.as_deref(), &config.general.data_dir)?;
        match engine.ping().await {
            Ok(version) => {
                info!(plugin = engine.name(), %version, "virtualization engine reachable")
            }
            Err(error) => {
                warn!(plugin = engine.name(), %error, "virtualization engine not reachable yet; will keep trying")
            }
        }
        let address = SocketAddr::new(config.webserver.ip, config.webserver.port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| StartError::Listen {
                address,
                reason: error.to_string(),
            })?;
        let cluster_files = crate::cluster::ClusterFiles::in_data_dir(&config.general.data_dir);
        if config.cluster.role == crate::config::ClusterRole::Init
            && !cluster_files.is_authority()
            && !cluster_files.is_member()
        {
            let authority = crate::cluster::ClusterAuthority::init(
                &cluster_files,
                node.as_str(),
                config.cluster.certificate_lifetime,
            )?;
            crate::api::tls::issue_under_cluster_ca(&config, &authority)?;
            warn!(ca_fingerprint = %authority.fingerprint(), "made the cluster CA ([CLUSTER] role = init); other nodes join with `motey cluster token` and `motey join`");
        }
        let membership = if cluster_files.is_member() {
            let membership = crate::cluster::Membership::load(&cluster_files)?;
            if membership.node_id() != node {
                return Err(crate::cluster::ClusterError::Invalid(format!(
                    "the node certificate names node {}, but this node is {node} ([GENERAL] node_id)",
                    membership.node_id()
                ))
                .into());
            }
            info!(ca_fingerprint = %membership.ca_fingerprint(), revoked = membership.revocations().len(), "member of a cluster by node certificate");
            Some(membership)
        } else {
            None
        };
        // Peer sessions are trusted by node certificate once this node joined; before, by
        // the cluster key every node holds.
        let trust: Arc<dyn SessionTrust> = match &membership {
            Some(membership) => Arc::new(crate::cluster::peer_trust::CertifiedSessions::new(
                membership.clone(),
            )?),
            None => Arc::new(ClusterKeyTrust::load(
                node.clone(),
                key.clone(),
                &config.general.data_dir,
            )?),
        };
        let (tls, rest_fingerprint) = if crate::api::tls::serves_tls(&config.webserver) {
            let identity = crate::api::tls::server_identity(&config)?;
            let fingerprint = identity.fingerprint.clone();
            (Some(identity.server_config()?), Some(fingerprint))
        } else {
            (None, None)
        };
        let broker = if config.mqtt.embedded {
            let mut settings = BrokerSettings::from_config(&config.mqtt, &key)?;
            if settings.needs_tls() {
                // Beyond loopback the broker presents the node's REST certificate.
                settings.tls = Some(match &tls {
                    Some(tls) => tls.clone(),
                    None => crate::api::tls::server_identity(&config)?.server_config()?,
                });
            }
            Some(embedded_broker::start(settings).await?)
        } else {
            None
        };
        let this_node = NodeInfo {
            id: node.clone(),
            name: config.general.node_name.clone(),
            addresses: advertised_addresses(&config),
            rest_port: listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(config.webserver.port),
            peer_port: config.zeromq.peer_port,
            last_seen: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities_digest: capabilities_digest(&store.capabilities.list()?),
        };
        let directory = PeerDirectory::open(
            this_node,
            store.nodes.clone(),
            Liveness::from_config(&config.mqtt),
        )?;
        let timeout = Duration::from_millis(config.cluster.request_timeout_ms);
        let remote: Arc<dyn RemoteNodes> =
            Arc::new(PeerClient::new(directory.clone(), trust.clone(), timeout));
        let orchestrator = Orchestrator::new(
            node.clone(),
            store.clone(),
            engine,
            remote,
            config.orchestrator.clone(),
            config.security.clone(),
        );
        orchestrator
            .set_reschedule_grace(Duration::from_secs(config.cluster.reschedule_grace_secs));
        // Identity and keys are in place; with a plausible clock the node starts joining.
        let (phase, reason) = match lifecycle::clock_problem() {
            Some(problem) => (NodePhase::Commissioning, Some(problem)),
            None => (
                NodePhase::Provisioning,
                Some("joining the fog (waiting for the MQTT broker)".into()),
            ),
        };
        orchestrator.lifecycle().set(phase, reason);
        directory.set_this_phase(orchestrator.lifecycle().current());
        // The zeromq crate's ROUTER neither sees nor closes single connections, so it
        // listens on loopback behind a front that holds the caps per address.
        let loopback = if config.webserver.ip.is_ipv6() {
            "[::1]"
        } else {
            "127.0.0.1"
        };
        let peer_server = PeerServer::bind_with(
            &format!("tcp://{loopback}:0"),
            trust,
            Arc::new(HostedImages {
                orchestrator: orchestrator.clone(),
                access: config.access.clone(),
                membership: membership.clone(),
            }),
            peer_limits(&config.zeromq),
        )
        .await?;
        let peer_port = peer_front(&config, &peer_server).await?;
        // The real port, when 0 was configured.
        let this_node = directory.update_this_node(|info| info.peer_port = peer_port);
        let stopping = CancellationToken::new();
        let capability_events = CapabilityEvents::bind(
            &config.zeromq.capability_events,
            store.capabilities.clone(),
            stopping.clone(),
        )
        .await?;
        let (capabilities_changed, capability_changes) = watch::channel(0);
        let (decommission_listener, decommission_requests) = mpsc::channel(1);
        let nodes: Arc<dyn NodeDirectory> = Arc::new(directory.clone());
        let state = ApiState::new(
            orchestrator.clone(),
            store.clone(),
            nodes,
            this_node,
            &config,
            token,
        )
        .with_capability_listener(capabilities_changed)
        .with_decommission_listener(decommission_listener)
        .with_admin_token(admin_token(&config)?);
        let state = if cluster_files.is_authority() {
            let cluster_key = match config
                .cluster
                .key
                .as_deref()
                .filter(|k| !k.trim().is_empty())
            {
                Some(secret) => {
                    crate::api::cluster::ClusterKeySource::Configured(secret.trim().into())
                }
                None => crate::api::cluster::ClusterKeySource::File(
                    config.general.data_dir.join(crate::peer::KEY_FILE),
                ),
            };
            state.with_join_desk(crate::api::cluster::JoinDesk {
                files: cluster_files.clone(),
                certificate_lifetime: config.cluster.certificate_lifetime,
                cluster_key,
            })
        } else {
            state
        };
        Ok(Agent {
            membership,
            config,
            store,
            orchestrator,
            listener,
            tls,
            rest_fingerprint,
            state,
            directory,
            key,
            broker,
            peer_server,
            peer_port,
            capability_events,
            capability_changes,
            decommission_requests,
            stopping,
        })
    }

    /// Where the REST API listens (the real port when 0 was configured).
    pub fn rest_address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// SHA-256 fingerprint of the REST API's certificate; `None` when it serves plain HTTP.
    pub fn rest_fingerprint(&self) -> Option<&str> {
        self.rest_fingerprint.as_deref()
    }

    /// Port of the peer (ZeroMQ) socket.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Address of the embedded MQTT broker, if this agent runs one.
    pub fn broker_address(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(EmbeddedBroker::local_addr)
    }

    pub fn node_id(&self) -> &NodeId {
        self.orchestrator.node()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    pub fn directory(&self) -> &PeerDirectory {
        &self.directory
    }

    /// Serves until `shutdown` is cancelled, then announces the leave to the peers.
    /// Containers keep running when the agent stops: the next start adopts them.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Agent {
            config,
            store,
            orchestrator,
            listener,
            tls,
            rest_fingerprint,
            state,
            directory,
            key,
            broker,
            peer_server,
            peer_port,
            capability_events,
            mut capability_changes,
            mut decommission_requests,
            stopping,
            membership,
        } = self;
        let mut settings = DiscoverySettings::from_config(&config.mqtt);
        if let Some(broker) = &broker {
            let address = broker.client_addr();
            settings.broker_host = address.ip().to_string();
            settings.broker_port = address.port();
        }
        settings.credentials = Some(crate::discovery::broker_credentials(&config.mqtt, &key));
        if let Some(membership) = &membership {
            tokio::spawn(crate::cluster::renewal::keep_renewed(
                membership.clone(),
                config.cluster.certificate_lifetime,
                settings.heartbeat_interval,
                stopping.clone(),
            ));
        }
        settings.membership = membership;
        let discovery = match Discovery::start(settings, directory.clone(), key, stopping.clone()) {
            Ok(discovery) => Some(discovery),
            Err(error) => {
                // The node still serves its API and its own services without a broker.
                error!(%error, "node discovery cannot start; running without peers");
                None
            }
        };
        // The node's phase follows its health: the first check before serving, so that a
        // node that reaches its broker at once is operating when its API answers.
        let broker_status = discovery.as_ref().map(|d| d.status());
        let announcer = discovery.as_ref().map(|d| d.announcer());
        if let Some(mut status) = broker_status.clone() {
            let connected = status.wait_for(|s| matches!(s, BrokerStatus::Connected { .. }));
            let _ = tokio::time::timeout(Duration::from_secs(5), connected).await;
        }
        let mut health_monitor = HealthMonitor {
            orchestrator: orchestrator.clone(),
            directory: directory.clone(),
            broker: broker_status,
            announcer,
            data_dir: config.general.data_dir.clone(),
            broker_ever_connected: false,
        };
        health_monitor.check().await;
        let health = tokio::spawn(health_monitor.run(stopping.clone()));
        let drain = {
            let orchestrator = orchestrator.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let Some(timeout) = decommission_requests.recv().await else {
                    return;
                };
                drain_and_leave(&orchestrator, timeout).await;
                shutdown.cancel();
            })
        };
        info!(
            node = %orchestrator.node(),
            name = %config.general.node_name,
            rest = %listener.local_addr()?,
            https = tls.is_some(),
            certificate_sha256 = rest_fingerprint.as_deref().unwrap_or("-"),
            peer_port,
            broker = ?broker.as_ref().map(EmbeddedBroker::local_addr),
            capability_events = capability_events.endpoint(),
            "agent started"
        );
        // A capability added or removed (REST or hardware event) may make waiting images
        // placeable, and peers must learn the new digest.
        let mut hardware_events = capability_events.subscribe();
        let announcer = {
            let orchestrator = orchestrator.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stopping.cancelled() => break,
                        changed = capability_changes.changed() => if changed.is_err() { break },
                        received = hardware_events.recv() => match received {
                            Ok(change) if !change.changed => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                            _ => {}
                        },
                    }
                    // The next heartbeat announces the new digest.
                    if let Ok(capabilities) = store.capabilities.list() {
                        let digest = capabilities_digest(&capabilities);
                        directory.update_this_node(|info| info.capabilities_digest = digest);
                    }
                    orchestrator.wake();
                }
            })
        };
        let reconcile = tokio::spawn(orchestrator.run(shutdown.child_token()));
        let header_timeout = state.request_timeout;
        let served = api::serve::serve(
            listener,
            tls,
            api::router(state),
            header_timeout,
            shutdown.clone().cancelled_owned(),
        )
        .await;
        shutdown.cancel();
        let _ = reconcile.await;
        if let Some(discovery) = discovery {
            discovery.leave().await;
        }
        stopping.cancel();
        drain.abort();
        let _ = health.await;
        let _ = announcer.await;
        capability_events.join().await;
        peer_server.shutdown().await;
        info!("agent stopped");
        served
    }
}

/// Waits until the owners took back the images this node hosts and its own services are
/// terminated (at most `timeout`), then removes whatever is left, so that the node leaves
/// nothing running behind.
async fn drain_and_leave(orchestrator: &Orchestrator, timeout: Duration) {
    info!(
        timeout_secs = timeout.as_secs(),
        "decommissioning: draining the images of this node"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match orchestrator.drain_progress() {
            Ok(progress) if progress.is_drained() => {
                info!("decommissioning: drained");
                break;
            }
            Ok(progress) if tokio::time::Instant::now() >= deadline => {
                warn!(
                    own_services = progress.own_services,
                    hosted_images = progress.hosted_images,
                    "decommissioning: not drained in time; removing what is left"
                );
                break;
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "decommissioning: cannot read the store"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    orchestrator.abandon_hosted_images().await;
    orchestrator.remove_all_containers().await;
    info!("decommissioning: leaving the fog");
}

/// Derives this node's phase from its health, every few seconds and whenever the broker
/// link changes, and announces it.
struct HealthMonitor {
    orchestrator: Orchestrator,
    directory: PeerDirectory,
    broker: Option<watch::Receiver<BrokerStatus>>,
    announcer: Option<Announcer>,
    data_dir: std::path::PathBuf,
    broker_ever_connected: bool,
}

impl HealthMonitor {
    async fn run(mut self, stopping: CancellationToken) {
        let mut phases = self.orchestrator.lifecycle().subscribe();
        loop {
            let broker_changed = async {
                match self.broker.as_mut() {
                    Some(status) => {
                        if status.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = broker_changed => {}
                _ = phases.changed() => {}
                _ = tokio::time::sleep(lifecycle::HEALTH_CHECK_INTERVAL) => {}
            }
            self.check().await;
        }
    }

    async fn check(&mut self) {
        let broker_problem = match self.broker.as_ref().map(|status| status.borrow().clone()) {
            Some(BrokerStatus::Connected { .. }) => {
                self.broker_ever_connected = true;
                None
            }
            Some(BrokerStatus::Disconnected { error, .. }) => Some(error),
            Some(BrokerStatus::Connecting) => None,
            Some(BrokerStatus::Stopped) => Some("node discovery stopped".into()),
            None => Some("node discovery did not start".into()),
        };
        let engine = self.orchestrator.engine();
        let engine_problem = match tokio::time::timeout(Duration::from_secs(5), engine.ping()).await
        {
            Ok(Ok(_)) => None,
            // The phase's reason already says "container engine unreachable".
            Ok(Err(motey_val::ValError::Unreachable(why))) => Some(why),
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some("no answer within 5 s".into()),
        };
        let health = Health {
            clock_problem: lifecycle::clock_problem(),
            broker_ever_connected: self.broker_ever_connected,
            broker_problem,
            engine_problem,
            disk_problem: lifecycle::disk_problem(&self.data_dir),
        };
        let (phase, reason) = lifecycle::phase_of(&health);
        let lifecycle = self.orchestrator.lifecycle();
        if lifecycle.set(phase, reason) && lifecycle.current().accepts_deployments() {
            // Images waiting for a node in norm may be placed now.
            self.orchestrator.wake();
        }
        let current = lifecycle.current();
        if self.directory.this_phase().as_ref() != Some(&current) {
            self.directory.set_this_phase(current);
            if let Some(announcer) = &self.announcer {
                announcer.announce();
            }
        }
    }
}

/// Answers peers' requests about images this node runs for them, giving device access
/// within this node's own `[SECURITY]` limits.
struct HostedImages {
    orchestrator: Orchestrator,
    access: crate::config::Access,
    membership: Option<crate::cluster::Membership>,
}

impl HostedImages {
    /// Refuses a node whose certificate was revoked; logs who asked what (`motey::audit`).
    fn admit(
        &self,
        sender: &NodeId,
        request: &str,
        service: &ServiceId,
        image: &str,
    ) -> Result<(), PeerRefusal> {
        if self
            .membership
            .as_ref()
            .is_some_and(|m| m.is_revoked(sender))
        {
            tracing::warn!(target: "motey::audit", %sender, request, %service, image, outcome = "refused", "request of a revoked node");
            return Err(PeerRefusal::new(
                ErrorCode::Unauthorized,
                format!("node {sender} is revoked"),
            ));
        }
        tracing::info!(target: "motey::audit", %sender, request, %service, image, "peer request");
        Ok(())
    }
}

#[async_trait::async_trait]
impl PeerHandler for HostedImages {
    async fn capabilities(&self) -> Vec<Capability> {
        self.orchestrator.capabilities().unwrap_or_default()
    }

    async fn deploy_image(
        &self,
        sender: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, PeerRefusal> {
        self.admit(
            sender,
            "deploy_image",
            &deployment.service_id,
            &deployment.image.id,
        )?;
        self.orchestrator
            .host_image(sender, deployment)
            .await
            .map_err(hosted_refusal)
    }

    async fn image_status(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, PeerRefusal> {
        self.admit(sender, "image_status", service, image_id)?;
        self.orchestrator
            .hosted_image_status(sender, service, image_id)
            .map_err(hosted_refusal)
    }

    async fn terminate_image(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<(), PeerRefusal> {
        self.admit(sender, "terminate_image", service, image_id)?;
        self.orchestrator
            .release_hosted_image(sender, service, image_id)
            .await
            .map_err(hosted_refusal)
    }

    async fn image_assignment(
        &self,
        service: &ServiceId,
        image_id: &str,
        node: &NodeId,
    ) -> Result<bool, PeerRefusal> {
        self.orchestrator
            .assigns(service, image_id, node)
            .map_err(|error| PeerRefusal::from(error.to_string()))
    }

    async fn image_logs(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image_id: &str,
        query: motey_val::LogQuery,
    ) -> Result<Vec<motey_val::LogLine>, PeerRefusal> {
        self.admit(requester, "image_logs", service, image_id)?;
        self.orchestrator
            .hosted_image_logs(requester, service, image_id, query)
            .await
            .map_err(access_refusal)
    }

    async fn image_exec(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image_id: &str,
        exec: motey_val::ExecRequest,
    ) -> Result<motey_val::ExecOutput, PeerRefusal> {
        self.admit(requester, "image_exec", service, image_id)?;
        self.orchestrator
            .hosted_image_exec(requester, service, image_id, exec, &self.access)
            .await
            .map_err(access_refusal)
    }
}

/// A refusal about a hosted image with the code its owner acts on.
fn hosted_refusal(error: crate::orchestrator::HostedImageError) -> PeerRefusal {
    use crate::orchestrator::HostedImageError;
    let code = match &error {
        HostedImageError::NotFound { .. } => ErrorCode::NotFound,
        HostedImageError::Decommissioning(_) => ErrorCode::Decommissioning,
        _ => ErrorCode::Refused,
    };
    PeerRefusal::new(code, error.to_string())
}

fn access_refusal(error: crate::orchestrator::access::AccessError) -> PeerRefusal {
    let code = match &error {
        crate::orchestrator::access::AccessError::NotFound { .. } => ErrorCode::NotFound,
        _ => ErrorCode::Refused,
    };
    PeerRefusal::new(code, error.to_string())
}

impl NodeDirectory for PeerDirectory {
    fn peers(&self) -> Vec<crate::api::NodeView> {
        self.list()
            .into_iter()
            .filter(|peer| !peer.this_node)
            .map(|peer| crate::api::NodeView {
                info: NodeInfo {
                    last_seen: peer.last_seen,
                    ..peer.info
                },
                state: serde_json::to_value(peer.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                this_node: false,
                phase_reason: peer.phase.as_ref().and_then(|p| p.reason.clone()),
                phase: peer.phase.map(|p| p.phase),
            })
            .collect()
    }
}

/// The configured node id, else the one generated on the first start and kept in the store.
/// The peer server's limits from `[ZEROMQ]`.
/// Starts the front of the peer port, relaying to `server` on loopback; its port.
async fn peer_front(config: &Config, server: &PeerServer) -> Result<u16, crate::peer::PeerError> {
    let listen = SocketAddr::new(config.webserver.ip, config.zeromq.peer_port);
    let front = crate::front::Front {
        name: "peer port",
        settings: "[ZEROMQ] max_connections, max_connections_per_address",
        listen,
        tls: None,
        handshake_timeout: Duration::from_secs(config.zeromq.idle_timeout_secs),
        max_connections: config.zeromq.max_connections,
        max_connections_per_address: config.zeromq.max_connections_per_address,
        // Version 2 seals a message in frames of at most 64 KiB, so 256 KiB is ample, and
        // all connections together can make the crate reserve at most 64 MiB.
        zmtp_max_frame: Some(256 * 1024),
    };
    let backend = SocketAddr::new(
        if listen.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        },
        server.port(),
    );
    let bound = front
        .start(backend)
        .await
        .map_err(|error| crate::peer::PeerError::Bind {
            endpoint: format!("tcp://{listen}"),
            reason: error.to_string(),
        })?;
    Ok(bound.port())
}

fn peer_limits(settings: &crate::config::ZeroMq) -> ServerOptions {
    ServerOptions {
        max_connections: settings.max_connections,
        max_connections_per_address: settings.max_connections_per_address,
        max_buffered_bytes: settings.max_buffered_bytes,
        idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
        max_in_flight_per_connection: settings.max_requests_per_connection,
        ..ServerOptions::default()
    }
}

/// This node's id: the configured one, else the one kept in the store (made on first use).
pub fn node_id(config: &Config, store: &Store) -> Result<NodeId, StoreError> {
    if let Some(id) = &config.general.node_id {
        return Ok(NodeId(id.clone()));
    }
    if let Some(id) = store.meta("node_id")? {
        return Ok(NodeId(id));
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    store.set_meta("node_id", &id)?;
    info!(node = %id, "generated the id of this node");
    Ok(NodeId(id))
}

/// The configured token, else the one kept in `<data_dir>/api-token` (generated on the
/// first start, readable by the owner only).
fn api_token(config: &Config) -> Result<String, StartError> {
    if let Some(token) = &config.webserver.token {
        return Ok(token.clone());
    }
    let path = config.general.data_dir.join("api-token");
    let error = |reason: std::io::Error| StartError::Token {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    let generate = || -> Result<String, StartError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        write_private(&path, &token).map_err(error)?;
        info!(path = %path.display(), "generated an API token");
        Ok(token)
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) => generate(),
        Err(reason) if reason.kind() == std::io::ErrorKind::NotFound => generate(),
        Err(reason) => Err(error(reason)),
    }
}

/// The configured admin token, else the one kept in `<data_dir>/admin-token` (generated
/// on the first start, readable by the owner only). It is not the API token: device
/// access (logs, exec) reaches into workloads and households' devices.
fn admin_token(config: &Config) -> Result<String, StartError> {
    if let Some(token) = &config.access.admin_token {
        return Ok(token.clone());
    }
    let path = config.general.data_dir.join("admin-token");
    let error = |reason: std::io::Error| StartError::Token {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Err(reason) if reason.kind() != std::io::ErrorKind::NotFound => Err(error(reason)),
        _ => {
            let token = uuid::Uuid::new_v4().simple().to_string();
            write_private(&path, &token).map_err(error)?;
            info!(path = %path.display(), "generated an admin token");
            Ok(token)
        }
    }
}

pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())
}

/// Addresses peers may use: the configured IP unless it is a wildcard.
fn advertised_addresses(config: &Config) -> Vec<String> {
    let ip = config.webserver.ip;
    if ip.is_unspecified() {
        vec!["127.0.0.1".into()]
    } else {
        vec![ip.to_string()]
    }
}
