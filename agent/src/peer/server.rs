//! The answering side of the peer protocol: a ZeroMQ ROUTER socket (a REQ client sees it
//! as a REP socket; ZMTP spoken by [`super::zmtp`]) that authenticates every request
//! before handing it to the orchestrator's [`PeerHandler`]. ROUTER rather than REP lets
//! slow requests (a deploy that pulls an image) run concurrently instead of holding up
//! everyone else's: each connection has its own task, and a slow handler its own too.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::envelope::{
    canonical_json, now_ms, AuthError, ClusterKey, Envelope, Received, ReplayGuard,
};
use super::messages::{kinds, ErrorCode, Reply, Request};
use super::zmtp::{self, FrameReader, Incoming, ReadBudget, SocketType};
use super::PeerError;
use crate::discovery::capabilities_digest;
use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, ServiceId};
use crate::logging::RateLimit;
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

/// Limits of a peer server. The port is open to anyone on the node's network, so every
/// resource a connection can hold without the cluster key is bounded here.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How far a request's timestamp may be from this node's clock.
    pub replay_window: Duration,
    /// Requests handled at the same time; more are answered `busy`.
    pub max_in_flight: usize,
    /// Requests of one connection handled at the same time (a client pipelining without
    /// waiting for answers); more are answered `busy`.
    pub max_in_flight_per_connection: usize,
    /// Connections open at the same time; more are closed at once.
    pub max_connections: usize,
    /// Connections from one remote address open at the same time; more are closed at once.
    pub max_connections_per_address: usize,
    /// Bytes that all connections together may hold of messages that have not arrived
    /// whole, beyond 16 KiB each; a connection that would hold more is closed.
    pub max_buffered_bytes: usize,
    /// How long a new connection may take to greet (a port scanner, a stuck client).
    pub handshake_timeout: Duration,
    /// How long a connection may stay without a complete message while none of its
    /// requests is in progress before it is closed.
    pub idle_timeout: Duration,
    /// At most one warning per kind of refusal in this time; the others are counted.
    pub refusal_log_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            replay_window: super::envelope::DEFAULT_REPLAY_WINDOW,
            max_in_flight: 64,
            max_in_flight_per_connection: 8,
            max_connections: 256,
            max_connections_per_address: 16,
            max_buffered_bytes: 8 << 20,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            refusal_log_interval: Duration::from_secs(10),
        }
    }
}

/// Counters of a peer server.
#[derive(Debug, Default)]
pub struct ServerStats {
    handled: AtomicU64,
    refused: AtomicU64,
    connections: AtomicUsize,
    connections_refused: AtomicU64,
    closed_idle: AtomicU64,
}

impl ServerStats {
    /// Requests that reached the handler.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Messages refused as badly framed, unsigned, forged, stale, replayed, malformed or
    /// over the requests in flight.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections open now (greeted or not).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections closed at once for being over a connection cap, or closed for
    /// breaking the transport protocol (no greeting in time, an oversized frame...).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Connections closed for staying idle longer than the idle timeout.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }
}

/// The kinds of refusal, each logged at most once per [`ServerOptions::refusal_log_interval`].
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Over a connection cap.
    Connection,
    /// Not ZMTP as the protocol speaks it: no greeting in time, an oversized frame.
    Transport,
    /// Frames other than a REQ client's delimiter and body.
    Framing,
    Malformed,
    Unauthorized,
    NotUnderstood,
    Busy,
}

const REFUSAL_KINDS: usize = 7;

/// The rate limits of the refusal warnings, one per kind.
struct RefusalLog([RateLimit; REFUSAL_KINDS]);

impl RefusalLog {
    fn new(interval: Duration) -> RefusalLog {
        RefusalLog(std::array::from_fn(|_| RateLimit::new(interval)))
    }

    fn admit(&self, kind: Refusal) -> Option<crate::logging::Suppressed> {
        self.0[kind as usize].admit()
    }
}

/// Connections open, in all and per remote address.
#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One admitted connection's place under the caps, given back when it is dropped
/// (whichever way its task ends).
struct Admitted {
    state: Arc<State>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.state.open_connections();
        open.total -= 1;
        if let Some(count) = open.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&self.address);
            }
        }
        self.state
            .stats
            .connections
            .store(open.total, Ordering::Relaxed);
    }
}

/// A running peer server; it stops when dropped or shut down.
pub struct PeerServer {
    endpoint: String,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

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
            refusals: RefusalLog::new(options.refusal_log_interval),
            open: std::sync::Mutex::new(OpenConnections::default()),
            read_budget: ReadBudget::new(options.max_buffered_bytes),
            options,
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
    refusals: RefusalLog,
    open: std::sync::Mutex<OpenConnections>,
    read_budget: Arc<ReadBudget>,
    options: ServerOptions,
}

struct CapabilitiesAnswer {
    capabilities: Vec<Capability>,
    payload: Arc<[u8]>,
}

impl State {
    /// A place under the connection caps for a connection from `address`, or the cap it
    /// is over.
    fn admit_connection(self: &Arc<State>, address: IpAddr) -> Result<Admitted, String> {
        let mut open = self.open_connections();
        if open.total >= self.options.max_connections {
            return Err(format!(
                "{} connections are open, the most allowed",
                open.total
            ));
        }
        let from_address = open.per_address.entry(address).or_default();
        if *from_address >= self.options.max_connections_per_address {
            return Err(format!(
                "{from_address} connections from this address are open, the most allowed"
            ));
        }
        *from_address += 1;
        open.total += 1;
        self.stats.connections.store(open.total, Ordering::Relaxed);
        Ok(Admitted {
            state: self.clone(),
            address,
        })
    }

    fn open_connections(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Counts a refused message.
    fn refuse(&self, kind: Refusal) -> Option<crate::logging::Suppressed> {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.refusals.admit(kind)
    }

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
                Ok((stream, peer)) => match state.admit_connection(peer.ip().to_canonical()) {
                    Ok(admitted) => {
                        connections.spawn(connection(stream, peer, admitted, stop.clone()));
                    }
                    Err(cap) => refuse_connection(&state, stream, peer, &cap),
                },
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

/// Closes a connection over a cap at once: it holds nothing, and the client sees the
/// connection end before its greeting.
fn refuse_connection(state: &State, stream: TcpStream, peer: SocketAddr, cap: &str) {
    drop(stream);
    state
        .stats
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = state.refusals.admit(Refusal::Connection) {
        tracing::warn!(%peer, "peer connection refused: {cap}{suppressed}");
    }
}

/// A connection that broke the transport protocol is closed; the first of each interval
/// says why.
fn refuse_transport(state: &State, peer: SocketAddr, error: &dyn std::fmt::Display) {
    state
        .stats
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = state.refusals.admit(Refusal::Transport) {
        tracing::warn!(%peer, "peer connection closed: {error}{suppressed}");
    }
}

/// The writing half of a connection, shared with the tasks of its slow requests, and
/// the number of those still running.
struct Link {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    in_flight: AtomicUsize,
}

/// Serves one client connection: reads a request, checks it and answers it on this task
/// when the handler answers at once (one write); slow handlers answer from a task of their
/// own, so a REQ client's next request waits only for its own previous one.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    stop: CancellationToken,
) {
    let state = admitted.state.clone();
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut frames = FrameReader::with_budget(MAX_READ_BYTES, state.read_budget.clone());
    let greeted = async {
        let mut both = tokio::io::join(&mut read, &mut write);
        zmtp::handshake(&mut both, &mut frames, SocketType::Router).await
    };
    match tokio::time::timeout(state.options.handshake_timeout, greeted).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
            refuse_transport(&state, peer, &format_args!("handshake refused: {error}"));
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "peer connection ended at the handshake");
            return;
        }
        Err(_) => {
            refuse_transport(&state, peer, &"no ZeroMQ greeting in time");
            return;
        }
    }
    let link = Arc::new(Link {
        writer: tokio::sync::Mutex::new(write),
        in_flight: AtomicUsize::new(0),
    });
    // Registered once, not once per request.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let idle_timeout = state.options.idle_timeout;
    // Armed once and moved only when it fires: a message costs a clock reading, not a
    // timer registration.
    let mut last_message = tokio::time::Instant::now();
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        let incoming = tokio::select! {
            biased;
            _ = &mut stopped => break,
            incoming = frames.message(&mut read) => incoming,
            () = &mut idle => {
                let now = tokio::time::Instant::now();
                if link.in_flight.load(Ordering::Relaxed) > 0 {
                    // Waiting for its own answer is not idling.
                    idle.as_mut().reset(now + idle_timeout);
                    continue;
                }
                if now < last_message + idle_timeout {
                    idle.as_mut().reset(last_message + idle_timeout);
                    continue;
                }
                state.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "idle peer connection closed");
                break;
            }
        };
        let out = match incoming {
            Ok(Incoming::Message(message)) => {
                last_message = tokio::time::Instant::now();
                match accept(&state, message, &link) {
                    Answer::Now(reply) => reply,
                    Answer::Later(answer) => {
                        answer_later(link.clone(), answer);
                        continue;
                    }
                    Answer::Nothing => continue,
                }
            }
            Ok(Incoming::Pong(pong)) => pong,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::OutOfMemory
                ) =>
            {
                refuse_transport(&state, peer, &error);
                break;
            }
            Err(error) => {
                if error.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(%peer, %error, "peer connection closed");
                }
                break;
            }
        };
        if let Err(error) = link.writer.lock().await.write_all(&out).await {
            tracing::debug!(%peer, %error, "peer reply not delivered");
            break;
        }
    }
    // Tell the client at once, even if a slow handler still holds the writer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        link.writer.lock().await.shutdown().await
    })
    .await;
    drop(admitted);
}

/// Answers a slow request from a task of its own, counted as in flight on its
/// connection until its reply is written.
fn answer_later(link: Arc<Link>, answer: Pin<Box<dyn Future<Output = Vec<u8>> + Send>>) {
    link.in_flight.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let reply = answer.await;
        if let Err(error) = link.writer.lock().await.write_all(&reply).await {
            // The requester went away before its answer was ready.
            tracing::debug!(%error, "peer reply not delivered");
        }
        link.in_flight.fetch_sub(1, Ordering::Relaxed);
    });
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

/// Checks one incoming message and, if it deserves it, runs its handler. Refusals are
/// warned about at most once per interval and kind: anyone who reaches the port can
/// send them by the thousand.
fn accept(state: &Arc<State>, frames: Vec<Bytes>, link: &Link) -> Answer {
    // A REQ client sends [empty delimiter, body]; anything else is not ours.
    let body = match <[Bytes; 2]>::try_from(frames) {
        Ok([delimiter, body]) if delimiter.is_empty() => body,
        Ok(_) => return drop_misframed(state, "the first of its two frames is not empty"),
        Err(frames) => {
            let framing = format!("{} frames, not a delimiter and a body", frames.len());
            return drop_misframed(state, &framing);
        }
    };
    let respond = |reply: Reply, id: String| {
        Answer::Now(frame_reply(sign_reply(state, Outgoing::Reply(reply), id)))
    };
    let envelope = match Received::parse(&body) {
        Ok(envelope) => envelope,
        Err(error) => {
            if let Some(suppressed) = state.refuse(Refusal::Malformed) {
                tracing::warn!(%error, bytes = body.len(), "malformed peer message refused{suppressed}");
            }
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
        if let Some(suppressed) = state.refuse(Refusal::Unauthorized) {
            tracing::warn!(
                sender = %envelope.sender,
                kind = %envelope.kind,
                id = %envelope.id,
                reason = %error,
                "peer message refused, not executed{suppressed}"
            );
        }
        return respond(
            Reply::error(ErrorCode::Unauthorized, error.to_string()),
            envelope.id.into_owned(),
        );
    }
    let request = match Request::from_parts(&envelope.kind, envelope.payload()) {
        Ok(request) => request,
        Err(error) => {
            if let Some(suppressed) = state.refuse(Refusal::NotUnderstood) {
                tracing::warn!(sender = %envelope.sender, %error, "peer request not understood{suppressed}");
            }
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
    // Only this connection's task adds to its requests in flight, so the count read
    // here cannot grow before this request is counted.
    let over_connection =
        link.in_flight.load(Ordering::Relaxed) >= state.options.max_in_flight_per_connection;
    let permit = if over_connection {
        None
    } else {
        state.permits.clone().try_acquire_owned().ok()
    };
    let Some(permit) = permit else {
        let reason = if over_connection {
            "too many requests of this connection in progress"
        } else {
            "too many requests in progress"
        };
        if let Some(suppressed) = state.refuse(Refusal::Busy) {
            tracing::warn!(sender = %envelope.sender, kind = request.kind(), "peer request refused: {reason}{suppressed}");
        }
        return respond(
            Reply::error(ErrorCode::Busy, reason),
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

/// Drops a message that is not a REQ client's (no answer: a REQ client could not read it).
fn drop_misframed(state: &State, framing: &str) -> Answer {
    if let Some(suppressed) = state.refuse(Refusal::Framing) {
        tracing::warn!("peer message dropped: {framing}{suppressed}");
    }
    Answer::Nothing
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
