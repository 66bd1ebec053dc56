//! The REST API (`/v1/...`): services from YAML blueprints, capabilities, known nodes and
//! this node's status. Handlers translate HTTP to calls on the orchestrator and the store;
//! no orchestration logic lives here.

mod access;
mod auth;
mod capabilities;
pub mod cluster;
pub mod decommission;
pub mod error;
mod nodes;
pub mod serve;
mod services;
mod status;
pub mod tls;

use std::sync::{Arc, Mutex};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::trace::TraceLayer;

use crate::domain::NodeInfo;
use crate::orchestrator::Orchestrator;
use crate::store::Store;

pub use nodes::{NodeDirectory, NodeView, StoredNodes};

/// Blueprint parses that may run at once: each takes a blocking thread and a core while
/// it runs, and a node has few cores; further requests wait their turn.
pub const BLUEPRINT_PARSES: usize = 2;

/// What every handler may use.
#[derive(Clone)]
pub struct ApiState {
    pub orchestrator: Orchestrator,
    pub store: Store,
    pub nodes: Arc<dyn NodeDirectory>,
    pub token: Arc<str>,
    /// Token for device access (logs, exec); also good for everything the API token is.
    pub admin_token: Arc<str>,
    pub access: Arc<crate::config::Access>,
    pub open_reads: bool,
    pub max_body_bytes: usize,
    /// Longest a request may take to be answered (streamed bodies go on after it).
    pub request_timeout: std::time::Duration,
    /// Permits for blueprint parses running at once.
    parses: Arc<tokio::sync::Semaphore>,
    pub this_node: Arc<NodeInfo>,
    pub security: Arc<crate::config::Security>,
    /// Bumped whenever the API changes this node's capabilities.
    capabilities_changed: Option<Arc<tokio::sync::watch::Sender<u64>>>,
    /// `None` where the platform gives no statistics.
    system: Arc<Mutex<Option<sysinfo::System>>>,
    /// Where `POST /v1/decommission` hands its drain timeout to the agent.
    decommission: Option<tokio::sync::mpsc::Sender<std::time::Duration>>,
    /// On the CA node: what `POST /v1/cluster/join` needs.
    join: Option<cluster::JoinDesk>,
}

impl ApiState {
    pub fn new(
        orchestrator: Orchestrator,
        store: Store,
        nodes: Arc<dyn NodeDirectory>,
        this_node: NodeInfo,
        config: &crate::config::Config,
        token: String,
    ) -> ApiState {
        let webserver = &config.webserver;
        ApiState {
            orchestrator,
            store,
            nodes,
            token: token.into(),
            admin_token: "".into(),
            access: Arc::new(config.access.clone()),
            open_reads: webserver.open_reads,
            max_body_bytes: webserver.max_body_bytes,
            request_timeout: webserver.request_timeout,
            parses: Arc::new(tokio::sync::Semaphore::new(BLUEPRINT_PARSES)),
            this_node: Arc::new(this_node),
            security: Arc::new(config.security.clone()),
            capabilities_changed: None,
            system: Arc::new(Mutex::new(sysinfo::System::new().ok())),
            decommission: None,
            join: None,
        }
    }
}

impl ApiState {
    /// Sets the token that device access (logs, exec) needs.
    pub fn with_admin_token(mut self, token: String) -> ApiState {
        self.admin_token = token.into();
        self
    }

    /// Tells `listener` about every capability change made through the API.
    pub fn with_capability_listener(
        mut self,
        listener: tokio::sync::watch::Sender<u64>,
    ) -> ApiState {
        self.capabilities_changed = Some(Arc::new(listener));
        self
    }

    /// Lets `POST /v1/decommission` ask the agent to drain and leave, within the given time.
    pub fn with_decommission_listener(
        mut self,
        listener: tokio::sync::mpsc::Sender<std::time::Duration>,
    ) -> ApiState {
        self.decommission = Some(listener);
        self
    }

    /// Lets nodes join through `POST /v1/cluster/join` (on the CA node).
    pub fn with_join_desk(mut self, desk: cluster::JoinDesk) -> ApiState {
        self.join = Some(desk);
        self
    }

    pub(crate) fn capabilities_changed(&self) {
        if let Some(listener) = &self.capabilities_changed {
            listener.send_modify(|version| *version += 1);
        }
        self.orchestrator.wake();
    }
}

/// The whole HTTP application.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/services", get(services::list).post(services::create))
        .route(
            "/services/{id}",
            get(services::show)
                .delete(services::terminate)
                .put(services::update),
        )
        .route("/services/{id}/history", get(services::history))
        .route("/services/{id}/images/{image}/logs", get(access::logs))
        .route(
            "/services/{id}/images/{image}/exec",
            axum::routing::post(access::exec),
        )
        .route(
            "/capabilities",
            get(capabilities::list)
                .put(capabilities::add)
                .delete(capabilities::remove),
        )
        // Motey's paths, so its clients keep working.
        .route(
            "/service",
            get(services::list)
                .post(services::create)
                .delete(services::terminate_by_blueprint),
        )
        .route("/nodes", get(nodes::list))
        .route("/nodestatus", get(status::node_status))
        .route("/decommission", post(decommission::decommission))
        .route("/heartbeat", get(status::heartbeat))
        .route("/openapi.json", get(status::openapi))
        .fallback(|| async { error::ApiError::not_found("no such endpoint") })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Bodies are limited by the handlers themselves so that the refusal is JSON.
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/health", get(status::health))
        // Authenticated by the join token in the body, not by the API token.
        .route("/v1/cluster/join", post(cluster::join))
        .route("/v1/cluster/renew", post(cluster::renew))
        .nest("/v1", v1)
        // The admin web client, embedded; its assets are public (it signs in itself).
        .merge(motey_webclient::routes(motey_webclient::ADMIN_CLIENT))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            within_request_timeout,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Answers 503 `request_timeout` to a request not answered within
/// `[WEBSERVER] request_timeout`, so that a slow client or a slow step cannot hold a
/// connection and its memory for as long as it likes.
async fn within_request_timeout(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request was not answered within {} s ([WEBSERVER] request_timeout)",
                state.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Reads a request body up to the configured size, refusing larger ones with 413.
pub(crate) async fn read_body(
    state: &ApiState,
    body: axum::body::Body,
) -> Result<bytes::Bytes, error::ApiError> {
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            error::ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body exceeds {} bytes ([WEBSERVER] max_body_bytes)",
                    state.max_body_bytes
                ),
            )
        })
}
