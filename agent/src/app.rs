//! Wiring of one agent: store, engine plugin, orchestrator and REST API, started and
//! stopped together. `motey start` runs this; tests run it in-process too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, ApiState, NodeDirectory, StoredNodes};
use crate::config::Config;
use crate::domain::{NodeId, NodeInfo};
use crate::orchestrator::remote::{NoPeers, RemoteNodes};
use crate::orchestrator::Orchestrator;
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
    #[error("virtualization plugin: {0}")]
    Engine(#[from] motey_val::ValError),
}

/// An agent whose sockets are bound, ready to run.
pub struct Agent {
    config: Config,
    store: Store,
    orchestrator: Orchestrator,
    listener: TcpListener,
    state: ApiState,
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
        std::fs::create_dir_all(&config.general.data_dir).map_err(|error| StartError::DataDir {
            path: config.general.data_dir.display().to_string(),
            reason: error.to_string(),
        })?;
        let store = Store::open(&config.database.path)?;
        let node = node_id(&config, &store)?;
        let token = api_token(&config)?;
        match engine.ping().await {
            Ok(version) => {
                info!(plugin = engine.name(), %version, "virtualization engine reachable")
            }
            Err(error) => {
                warn!(plugin = engine.name(), %error, "virtualization engine not reachable yet; will keep trying")
            }
        }
        let remote: Arc<dyn RemoteNodes> = Arc::new(NoPeers);
        let orchestrator = Orchestrator::new(
            node.clone(),
            store.clone(),
            engine,
            remote,
            config.orchestrator.clone(),
        );
        let address = SocketAddr::new(config.webserver.ip, config.webserver.port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| StartError::Listen {
                address,
                reason: error.to_string(),
            })?;
        let this_node = NodeInfo {
            id: node,
            name: config.general.node_name.clone(),
            addresses: advertised_addresses(&config),
            rest_port: listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(config.webserver.port),
            peer_port: config.zeromq.peer_port,
            last_seen: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities_digest: String::new(),
        };
        let nodes: Arc<dyn NodeDirectory> = Arc::new(StoredNodes(store.clone()));
        let state = ApiState::new(
            orchestrator.clone(),
            store.clone(),
            nodes,
            this_node,
            &config,
            token,
        );
        Ok(Agent {
            config,
            store,
            orchestrator,
            listener,
            state,
        })
    }

    /// Where the REST API listens (the real port when 0 was configured).
    pub fn rest_address(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
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

    /// Serves until `shutdown` is cancelled. Containers keep running when the agent stops:
    /// the next start adopts them.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Agent {
            config,
            orchestrator,
            listener,
            state,
            ..
        } = self;
        info!(
            node = %orchestrator.node(),
            name = %config.general.node_name,
            rest = %listener.local_addr()?,
            "agent started"
        );
        let reconcile = tokio::spawn(orchestrator.run(shutdown.child_token()));
        let server = axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let served = server.await;
        shutdown.cancel();
        let _ = reconcile.await;
        info!("agent stopped");
        served
    }
}

/// The configured node id, else the one generated on the first start and kept in the store.
fn node_id(config: &Config, store: &Store) -> Result<NodeId, StoreError> {
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

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
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
