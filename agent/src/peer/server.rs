//! The answering side of the peer protocol: a ZeroMQ ROUTER socket (a REQ client sees it
//! as a REP socket) that authenticates every request before handing it to the
//! orchestrator's [`PeerHandler`]. ROUTER rather than REP lets slow requests (a deploy
//! that pulls an image) run concurrently instead of holding up everyone else's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::envelope::{now_ms, AuthError, ClusterKey, Envelope, ReplayGuard};
use super::messages::{ErrorCode, Reply, Request};
use super::PeerError;
use crate::discovery::capabilities_digest;
use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, ServiceId};
use motey_val::{ExecOutput, ExecRequest, LogLine, LogQuery};

/// What a node does for its peers. The orchestrator implements it.
///
/// Every request may arrive more than once (a client retries once when it finds its
/// connection closed before the answer), so handlers must be idempotent: deploying an
/// image that already runs answers its status, terminating one that is gone succeeds.
/// Answers are awaited within the caller's request timeout, so `deploy_image` should
/// return as soon as the deployment is under way (state INSTANTIATING).
#[async_trait::async_trait]
pub trait PeerHandler: Send + Sync {
    async fn capabilities(&self) -> Vec<Capability>;
    async fn deploy_image(&self, deployment: ImageDeployment) -> Result<ImageStatus, String>;
    async fn image_status(
        &self,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, String>;
    async fn terminate_image(&self, service: &ServiceId, image_id: &str) -> Result<(), String>;
    /// Whether this node, as the service's owner, still places the image on `node`.
    async fn image_assignment(
        &self,
        service: &ServiceId,
        image_id: &str,
        node: &NodeId,
    ) -> Result<bool, String> {
        let _ = (service, image_id, node);
        Err("this node does not answer image assignments".into())
    }

    /// Log lines of an image this node hosts for `requester` (its owner).
    async fn image_logs(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image_id: &str,
        query: LogQuery,
    ) -> Result<Vec<LogLine>, String> {
        let _ = (requester, service, image_id, query);
        Err("this node does not give access to logs".into())
    }

    /// Runs a diagnostic command in an image this node hosts for `requester` (its owner).
    async fn image_exec(
        &self,
        requester: &NodeId,
        service: &ServiceId,
        image_id: &str,
        exec: ExecRequest,
    ) -> Result<ExecOutput, String> {
        let _ = (requester, service, image_id, exec);
        Err("this node does not run diagnostic commands".into())
    }
}

/// Limits of a peer server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How far a request's timestamp may be from this node's clock.
    pub replay_window: Duration,
    /// Requests handled at the same time; more are answered `busy`.
    pub max_in_flight: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            replay_window: super::envelope::DEFAULT_REPLAY_WINDOW,
            max_in_flight: 64,
        }
    }
}

/// Counters of a peer server.
#[derive(Debug, Default)]
pub struct ServerStats {
    handled: AtomicU64,
    refused: AtomicU64,
}

impl ServerStats {
    /// Requests that reached the handler.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Messages refused as unsigned, forged, stale, replayed or malformed.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A running peer server; it stops when dropped or shut down.
pub struct PeerServer {
    endpoint: String,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl PeerServer {
    /// Binds `endpoint` (e.g. `tcp://0.0.0.0:5091`; port 0 picks a free port) and answers
    /// requests signed with `key` on behalf of node `node`.
    pub async fn bind(
        endpoint: &str,
        node: NodeId,
        key: ClusterKey,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<PeerServer, PeerError> {
        PeerServer::bind_with(endpoint, node, key, handler, ServerOptions::default()).await
    }

    pub async fn bind_with(
        endpoint: &str,
        node: NodeId,
        key: ClusterKey,
        handler: Arc<dyn PeerHandler>,
        options: ServerOptions,
    ) -> Result<PeerServer, PeerError> {
        let mut socket = RouterSocket::new();
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|error| PeerError::Bind {
                endpoint: endpoint.to_owned(),
                reason: error.to_string(),
            })?
            .to_string();
        tracing::info!(endpoint = %bound, key = key.fingerprint(), "peer server listening");
        let stats = Arc::new(ServerStats::default());
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            node: node.to_string(),
            key,
            guard: ReplayGuard::new(options.replay_window),
            handler,
            stats: stats.clone(),
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
        });
        let task = tokio::spawn(serve(socket, state, stop.clone()));
        Ok(PeerServer {
            endpoint: bound,
            stats,
            stop,
            task: Some(task),
        })
    }

    /// The bound endpoint, with the actual port.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The TCP port bound (0 for other transports).
    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or(0)
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops answering and releases the endpoint.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct State {
    node: String,
    key: ClusterKey,
    guard: ReplayGuard,
    handler: Arc<dyn PeerHandler>,
    stats: Arc<ServerStats>,
    permits: Arc<Semaphore>,
}

async fn serve(mut socket: RouterSocket, state: Arc<State>, stop: CancellationToken) {
    let (replies_tx, mut replies_rx) = mpsc::channel::<ZmqMessage>(256);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(reply) = replies_rx.recv() => {
                if let Err(error) = socket.send(reply).await {
                    // The requester went away before its answer was ready.
                    tracing::debug!(%error, "peer reply not delivered");
                }
            }
            incoming = socket.recv() => match incoming {
                Ok(message) => {
                    if let Some(reply) = accept(&state, message, &replies_tx) {
                        if let Err(error) = socket.send(reply).await {
                            tracing::debug!(%error, "peer reply not delivered");
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "peer receive failed"),
            },
        }
    }
    let errors = socket.close().await;
    if !errors.is_empty() {
        tracing::debug!(?errors, "peer server closed with errors");
    }
}

/// Checks one incoming message and, if it deserves it, runs its handler. Returns the reply
/// when it is ready at once; otherwise it goes back through `replies` later.
fn accept(
    state: &Arc<State>,
    message: ZmqMessage,
    replies: &mpsc::Sender<ZmqMessage>,
) -> Option<ZmqMessage> {
    let frames = message.into_vec();
    // A REQ client sends [identity, empty delimiter, body]; anything else is not ours.
    let [identity, delimiter, body] = <[Bytes; 3]>::try_from(frames).unwrap_or_else(|frames| {
        tracing::debug!(
            frames = frames.len(),
            "peer message with unexpected framing dropped"
        );
        [Bytes::new(), Bytes::from_static(b"x"), Bytes::new()]
    });
    if identity.is_empty() || !delimiter.is_empty() {
        return None;
    }
    let respond = |reply: Reply, id: String| {
        let body = sign_reply(state, &reply, id);
        let _ = replies.try_send(frame_reply(identity.clone(), body));
    };
    let envelope = match Envelope::parse(&body) {
        Ok(envelope) => envelope,
        Err(error) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, bytes = body.len(), "malformed peer message refused");
            let code = match error {
                AuthError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::BadRequest,
            };
            respond(Reply::error(code, error.to_string()), best_effort_id(&body));
            return None;
        }
    };
    let checked = envelope
        .verify(&state.key)
        .and_then(|()| state.guard.check(&envelope, now_ms()));
    if let Err(error) = checked {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            sender = %envelope.sender,
            kind = %envelope.kind,
            id = %envelope.id,
            reason = %error,
            "peer message refused, not executed"
        );
        respond(
            Reply::error(ErrorCode::Unauthorized, error.to_string()),
            envelope.id,
        );
        return None;
    }
    let request = match Request::from_parts(&envelope.kind, envelope.payload) {
        Ok(request) => request,
        Err(error) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sender = %envelope.sender, %error, "peer request not understood");
            let code = match error {
                super::messages::DecodeError::UnknownType(_) => ErrorCode::UnknownType,
                _ => ErrorCode::BadRequest,
            };
            respond(Reply::error(code, error.to_string()), envelope.id);
            return None;
        }
    };
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        tracing::warn!(sender = %envelope.sender, kind = request.kind(), "too many peer requests in progress");
        respond(
            Reply::error(ErrorCode::Busy, "too many requests in progress"),
            envelope.id,
        );
        return None;
    };
    state.stats.handled.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(sender = %envelope.sender, kind = request.kind(), id = %envelope.id, "peer request");
    let state = state.clone();
    let id = envelope.id;
    let sender = NodeId(envelope.sender);
    let mut answer = Box::pin(async move {
        let kind = request.kind();
        let reply =
            std::panic::AssertUnwindSafe(dispatch(state.handler.as_ref(), request, &sender))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(kind, "peer request handler panicked");
                    Reply::error(ErrorCode::Internal, "the handler failed")
                });
        drop(permit);
        frame_reply(identity, sign_reply(&state, &reply, id))
    });
    // A handler that answers without waiting (capabilities, most statuses) is answered
    // inline, saving a task and a channel hop; the others run in a task of their own.
    if let Some(reply) = (&mut answer).now_or_never() {
        return Some(reply);
    }
    let replies = replies.clone();
    tokio::spawn(async move {
        let reply = answer.await;
        let _ = replies.send(reply).await;
    });
    None
}

async fn dispatch(handler: &dyn PeerHandler, request: Request, sender: &NodeId) -> Reply {
    let refused = |reason: String| Reply::error(ErrorCode::Refused, reason);
    match request {
        Request::Capabilities => {
            let capabilities = handler.capabilities().await;
            Reply::Capabilities {
                digest: capabilities_digest(&capabilities),
                capabilities,
            }
        }
        Request::DeployImage(deployment) => handler
            .deploy_image(*deployment)
            .await
            .map_or_else(refused, Reply::Deployed),
        Request::ImageStatus {
            service_id,
            image_id,
        } => handler
            .image_status(&service_id, &image_id)
            .await
            .map_or_else(refused, Reply::ImageStatus),
        Request::TerminateImage {
            service_id,
            image_id,
        } => handler
            .terminate_image(&service_id, &image_id)
            .await
            .map_or_else(refused, |()| Reply::Terminated),
        Request::ImageAssignment {
            service_id,
            image_id,
            node,
        } => handler
            .image_assignment(&service_id, &image_id, &node)
            .await
            .map_or_else(refused, |assigned| Reply::Assignment { assigned }),
        Request::ImageLogs {
            service_id,
            image_id,
            query,
        } => handler
            .image_logs(sender, &service_id, &image_id, query)
            .await
            .map_or_else(refused, Reply::ImageLogs),
        Request::ImageExec {
            service_id,
            image_id,
            exec,
        } => handler
            .image_exec(sender, &service_id, &image_id, exec)
            .await
            .map_or_else(refused, Reply::ImageExec),
    }
}

fn sign_reply(state: &State, reply: &Reply, id: String) -> Vec<u8> {
    Envelope::new(reply.kind(), id, state.node.clone(), reply.payload()).signed_bytes(&state.key)
}

fn frame_reply(identity: Bytes, body: Vec<u8>) -> ZmqMessage {
    let mut message = ZmqMessage::from(body);
    message.push_front(Bytes::new());
    message.push_front(identity);
    message
}

/// The request id of a message that is not a valid envelope, if it has one, so that the
/// error reply can be matched to its request.
fn best_effort_id(body: &[u8]) -> String {
    if body.len() > super::envelope::MAX_MESSAGE_BYTES {
        return String::new();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        })
        .filter(|id| id.len() <= 128)
        .unwrap_or_default()
}
