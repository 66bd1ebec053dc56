//! The answering side of the peer protocol: a ZeroMQ ROUTER socket (a REQ client sees it
//! as a REP socket; ZMTP spoken by [`super::zmtp`]) that authenticates every request
//! before handing it to the orchestrator's [`PeerHandler`]. ROUTER rather than REP lets
//! slow requests (a deploy that pulls an image) run concurrently instead of holding up
//! everyone else's: each connection has its own task, and a slow handler its own too.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::envelope::{
    canonical_json, now_ms, AuthError, ClusterKey, Envelope, Received, ReplayGuard,
};
use super::messages::{kinds, ErrorCode, Reply, Request};
use super::zmtp::{self, FrameReader, Incoming, SocketType};
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
    /// `sender` is the node the request came from, as the peer protocol authenticated it;
    /// it alone may deploy, observe and terminate the images it placed here.
    async fn deploy_image(
        &self,
        sender: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, String>;
    async fn image_status(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, String>;
    async fn terminate_image(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<(), String>;
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

/// How long a new connection may take to greet (a port scanner, a stuck client).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message a connection reads before it is closed: oversized envelopes up to
/// this are answered `bad_request`, larger ones are not read at all.
const MAX_READ_BYTES: usize = 2 * super::envelope::MAX_MESSAGE_BYTES;

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
        let bind_error = |reason: String| PeerError::Bind {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let address = endpoint
            .strip_prefix("tcp://")
            .ok_or_else(|| bind_error("only tcp:// endpoints are supported".into()))?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| bind_error(error.to_string()))?;
        let bound = format!(
            "tcp://{}",
            listener
                .local_addr()
                .map_err(|error| bind_error(error.to_string()))?
        );
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
            last_capabilities: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, state, stop.clone()));
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

    /// The TCP port bound.
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

    /// Stops answering, closes every connection and releases the endpoint.
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
    /// The capabilities last answered, with their digest and the reply's payload in
    /// canonical form: they rarely change, and the digest (sorting, formatting, hashing)
    /// and the payload (converting, sorting keys) were a visible part of answering.
    last_capabilities: std::sync::Mutex<Option<Arc<CapabilitiesAnswer>>>,
}

struct CapabilitiesAnswer {
    capabilities: Vec<Capability>,
    payload: Arc<[u8]>,
}

impl State {
    fn capabilities_answer(&self, capabilities: &[Capability]) -> Arc<CapabilitiesAnswer> {
        let mut last = self
            .last_capabilities
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match &*last {
            Some(answer) if answer.capabilities.as_slice() == capabilities => answer.clone(),
            _ => {
                let reply = Reply::Capabilities {
                    capabilities: capabilities.to_vec(),
                    digest: capabilities_digest(capabilities),
                };
                let answer = Arc::new(CapabilitiesAnswer {
                    capabilities: capabilities.to_vec(),
                    payload: canonical_json(&reply.payload()).into(),
                });
                *last = Some(answer.clone());
                answer
            }
        }
    }
}

/// Accepts connections, each served by a task of its own, until `stop`; then waits for
/// the connections to close.
async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, state.clone(), stop.clone()));
                }
                Err(error) => {
                    // Out of file descriptors, typically: wait instead of spinning.
                    tracing::warn!(%error, "peer connection not accepted");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let closing = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), closing)
        .await
        .is_err()
    {
        connections.shutdown().await;
    }
}

/// Serves one client connection: reads a request, checks it and answers it on this task
/// when the handler answers at once (one write); slow handlers answer from a task of their
/// own, so a REQ client's next request waits only for its own previous one.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut frames = FrameReader::new(MAX_READ_BYTES);
    let greeted = async {
        let mut both = tokio::io::join(&mut read, &mut write);
        zmtp::handshake(&mut both, &mut frames, SocketType::Router).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, greeted).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "peer connection refused at the handshake");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "peer connection did not greet in time");
            return;
        }
    }
    let writer = Arc::new(tokio::sync::Mutex::new(write));
    // Registered once, not once per request.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let incoming = tokio::select! {
            biased;
            _ = &mut stopped => break,
            incoming = frames.message(&mut read) => incoming,
        };
        let out = match incoming {
            Ok(Incoming::Message(message)) => match accept(&state, message) {
                Answer::Now(reply) => reply,
                Answer::Later(answer) => {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        let reply = answer.await;
                        if let Err(error) = writer.lock().await.write_all(&reply).await {
                            // The requester went away before its answer was ready.
                            tracing::debug!(%error, "peer reply not delivered");
                        }
                    });
                    continue;
                }
                Answer::Nothing => continue,
            },
            Ok(Incoming::Pong(pong)) => pong,
            Err(error) => {
                if error.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, %error, "peer connection closed");
                }
                break;
            }
        };
        if let Err(error) = writer.lock().await.write_all(&out).await {
            tracing::debug!(%peer, %error, "peer reply not delivered");
            break;
        }
    }
    // Tell the client at once, even if a slow handler still holds the writer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        writer.lock().await.shutdown().await
    })
    .await;
}

/// What becomes of one incoming message.
enum Answer {
    /// The reply (framed), ready now.
    Now(Vec<u8>),
    /// The reply once the handler is done.
    Later(Pin<Box<dyn Future<Output = Vec<u8>> + Send>>),
    /// Not ours (bad framing): dropped without an answer.
    Nothing,
}

/// Checks one incoming message and, if it deserves it, runs its handler.
fn accept(state: &Arc<State>, frames: Vec<Bytes>) -> Answer {
    // A REQ client sends [empty delimiter, body]; anything else is not ours.
    let Ok([delimiter, body]) = <[Bytes; 2]>::try_from(frames) else {
        tracing::debug!("peer message with unexpected framing dropped");
        return Answer::Nothing;
    };
    if !delimiter.is_empty() {
        tracing::debug!("peer message without delimiter dropped");
        return Answer::Nothing;
    }
    let respond = |reply: Reply, id: String| {
        Answer::Now(frame_reply(sign_reply(state, Outgoing::Reply(reply), id)))
    };
    let envelope = match Received::parse(&body) {
        Ok(envelope) => envelope,
        Err(error) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, bytes = body.len(), "malformed peer message refused");
            let code = match error {
                AuthError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::BadRequest,
            };
            return respond(Reply::error(code, error.to_string()), best_effort_id(&body));
        }
    };
    let checked = envelope
        .verify(&body, &state.key)
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
        return respond(
            Reply::error(ErrorCode::Unauthorized, error.to_string()),
            envelope.id.into_owned(),
        );
    }
    let request = match Request::from_parts(&envelope.kind, envelope.payload()) {
        Ok(request) => request,
        Err(error) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sender = %envelope.sender, %error, "peer request not understood");
            let code = match error {
                super::messages::DecodeError::UnknownType(_) => ErrorCode::UnknownType,
                _ => ErrorCode::BadRequest,
            };
            return respond(
                Reply::error(code, error.to_string()),
                envelope.id.into_owned(),
            );
        }
    };
    let Ok(permit) = state.permits.clone().try_acquire_owned() else {
        tracing::warn!(sender = %envelope.sender, kind = request.kind(), "too many peer requests in progress");
        return respond(
            Reply::error(ErrorCode::Busy, "too many requests in progress"),
            envelope.id.into_owned(),
        );
    };
    state.stats.handled.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(sender = %envelope.sender, kind = request.kind(), id = %envelope.id, "peer request");
    let state = state.clone();
    let id = envelope.id.into_owned();
    let sender = NodeId(envelope.sender.into_owned());
    let mut answer = Box::pin(async move {
        let kind = request.kind();
        let reply = std::panic::AssertUnwindSafe(dispatch(&state, request, &sender))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(kind, "peer request handler panicked");
                Outgoing::Reply(Reply::error(ErrorCode::Internal, "the handler failed"))
            });
        drop(permit);
        frame_reply(sign_reply(&state, reply, id))
    });
    // A handler that answers without waiting (capabilities, most statuses) is answered
    // inline, saving a task; the others run in a task of their own.
    match (&mut answer).now_or_never() {
        Some(reply) => Answer::Now(reply),
        None => Answer::Later(answer),
    }
}

/// What a request is answered with.
enum Outgoing {
    Reply(Reply),
    /// The capabilities, as kept while they stay the same.
    Capabilities(Arc<CapabilitiesAnswer>),
}

async fn dispatch(state: &State, request: Request, sender: &NodeId) -> Outgoing {
    let handler = state.handler.as_ref();
    let refused = |reason: String| Reply::error(ErrorCode::Refused, reason);
    let reply = match request {
        Request::Capabilities => {
            let capabilities = handler.capabilities().await;
            return Outgoing::Capabilities(state.capabilities_answer(&capabilities));
        }
        Request::DeployImage(deployment) => handler
            .deploy_image(sender, *deployment)
            .await
            .map_or_else(refused, Reply::Deployed),
        Request::ImageStatus {
            service_id,
            image_id,
        } => handler
            .image_status(sender, &service_id, &image_id)
            .await
            .map_or_else(refused, Reply::ImageStatus),
        Request::TerminateImage {
            service_id,
            image_id,
        } => handler
            .terminate_image(sender, &service_id, &image_id)
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
    };
    Outgoing::Reply(reply)
}

fn sign_reply(state: &State, reply: Outgoing, id: String) -> Vec<u8> {
    let (kind, payload) = match reply {
        Outgoing::Capabilities(answer) => (kinds::CAPABILITY_REPLY, answer.payload.clone()),
        Outgoing::Reply(reply) => (reply.kind(), canonical_json(&reply.payload()).into()),
    };
    Envelope::signed_bytes_with_payload(kind, &id, &state.node, &payload, &state.key)
}

/// A reply as a REQ client expects it: the empty delimiter, then the envelope.
fn frame_reply(body: Vec<u8>) -> Vec<u8> {
    zmtp::delimited(body)
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
