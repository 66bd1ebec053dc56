//! The answering side of the peer protocol: a ROUTER socket of the `zeromq` crate (a REQ
//! client sees it as a REP socket) that makes a Noise session with each connection, opens
//! every request in its session and checks it before handing it to the orchestrator's
//! [`PeerHandler`]. ROUTER rather than REP lets slow requests (a deploy that pulls an
//! image) run concurrently instead of holding up everyone else's: a slow handler answers
//! from a task of its own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use snow::TransportState;
use tokio::sync::mpsc;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::envelope::{
    canonical_json, now_ms, peer_message, version_of, AuthError, Envelope, Received, ReplayGuard,
    MAX_MESSAGE_BYTES, PEER_PROTOCOL_VERSION,
};
use super::messages::{kinds, ErrorCode, PeerRefusal, Reply, Request};
use super::noise::{self, label, NoiseError, Responder};
use super::session_trust::SessionTrust;
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
    ) -> Result<ImageStatus, PeerRefusal>;
    async fn image_status(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, PeerRefusal>;
    async fn terminate_image(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<(), PeerRefusal>;
    /// Whether this node, as the service's owner, still places the image on `node`.
    async fn image_assignment(
        &self,
        service: &ServiceId,
        image_id: &str,
        node: &NodeId,
    ) -> Result<bool, PeerRefusal> {
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
    ) -> Result<Vec<LogLine>, PeerRefusal> {
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
    ) -> Result<ExecOutput, PeerRefusal> {
        let _ = (requester, service, image_id, exec);
        Err("this node does not run diagnostic commands".into())
    }
}

/// Limits of a peer server. The port is open to anyone on the node's network, so what a
/// connection can hold before it proves its node is bounded here, as far as the `zeromq`
/// crate lets a server see its connections (see PROTOCOL.md, Limits).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How far a request's timestamp may be from this node's clock.
    pub replay_window: Duration,
    /// Requests handled at the same time; more are answered `busy`.
    pub max_in_flight: usize,
    /// Requests of one session handled at the same time (a client pipelining without
    /// waiting for answers); more are answered `busy`.
    pub max_in_flight_per_connection: usize,
    /// Sessions (and handshakes in progress) kept at the same time; a hello beyond is
    /// answered `busy`.
    pub max_connections: usize,
    /// Not enforced: the `zeromq` crate does not tell a server a connection's remote
    /// address, nor let it close one connection (see PROTOCOL.md, Limits).
    pub max_connections_per_address: usize,
    /// Not enforced: the `zeromq` crate reads a message whole before handing it on.
    pub max_buffered_bytes: usize,
    /// How long a handshake may take between hello and finish.
    pub handshake_timeout: Duration,
    /// How long a session may go without a request while none of its requests is in
    /// progress before it is forgotten (its client then makes a new one).
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

    /// Messages refused: badly framed, no session, handshake not believed, unreadable in
    /// their session, malformed, from another sender, for another node, stale, replayed,
    /// not understood or over the requests in flight.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sessions (and handshakes in progress) kept now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Handshakes refused for being over the session cap or for a proof not believed.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Sessions forgotten for staying idle longer than the idle timeout.
    pub fn closed_idle(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }
}

/// The kinds of refusal, each logged at most once per [`ServerOptions::refusal_log_interval`].
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Over the session cap.
    Connection,
    /// A handshake that failed or whose proof was not believed.
    Handshake,
    /// Frames other than the protocol's, or a message without a session.
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

/// A running peer server; it stops when dropped or shut down.
pub struct PeerServer {
    endpoint: String,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// Largest message (all frames) a server opens; a larger one is answered `bad_request`.
const MAX_READ_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

impl PeerServer {
    /// Binds `endpoint` (e.g. `tcp://0.0.0.0:5091`; port 0 picks a free port) and answers
    /// requests in sessions with the nodes `trust` believes, on behalf of its node.
    pub async fn bind(
        endpoint: &str,
        trust: Arc<dyn SessionTrust>,
        handler: Arc<dyn PeerHandler>,
    ) -> Result<PeerServer, PeerError> {
        PeerServer::bind_with(endpoint, trust, handler, ServerOptions::default()).await
    }

    pub async fn bind_with(
        endpoint: &str,
        trust: Arc<dyn SessionTrust>,
        handler: Arc<dyn PeerHandler>,
        options: ServerOptions,
    ) -> Result<PeerServer, PeerError> {
        let bind_error = |reason: String| PeerError::Bind {
            endpoint: endpoint.to_owned(),
            reason,
        };
        if !endpoint.starts_with("tcp://") {
            return Err(bind_error("only tcp:// endpoints are supported".into()));
        }
        let mut socket = zeromq::RouterSocket::new();
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|error| bind_error(error.to_string()))?
            .to_string();
        let node = trust.node_id();
        tracing::info!(endpoint = %bound, %node, noise = noise::NOISE_PARAMS, "peer server listening");
        let stats = Arc::new(ServerStats::default());
        let stop = CancellationToken::new();
        let state = Arc::new(State {
            node: node.to_string(),
            trust,
            guard: ReplayGuard::new(options.replay_window),
            handler,
            stats: stats.clone(),
            permits: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            last_capabilities: Mutex::new(None),
            refusals: RefusalLog::new(options.refusal_log_interval),
            peers: Mutex::new(HashMap::new()),
            options,
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

/// A connection as the server knows it: by the identity the ROUTER socket gave it.
enum Peer {
    /// Between welcome and finish.
    Handshaking {
        responder: Box<Responder>,
        since: Instant,
    },
    Established(Arc<Session>),
}

/// The Noise session of one connection, with the node its handshake proved.
struct Session {
    node: NodeId,
    transport: Mutex<TransportState>,
    /// When its last request arrived, as milliseconds since the server's start.
    last_request: AtomicU64,
    in_flight: AtomicUsize,
}

struct State {
    node: String,
    trust: Arc<dyn SessionTrust>,
    guard: ReplayGuard,
    handler: Arc<dyn PeerHandler>,
    stats: Arc<ServerStats>,
    permits: Arc<Semaphore>,
    /// The capabilities last answered, with the reply's payload in canonical form: they
    /// rarely change, and the digest and payload were a visible part of answering.
    last_capabilities: Mutex<Option<Arc<CapabilitiesAnswer>>>,
    refusals: RefusalLog,
    peers: Mutex<HashMap<Bytes, Peer>>,
    options: ServerOptions,
}

struct CapabilitiesAnswer {
    capabilities: Vec<Capability>,
    payload: Arc<[u8]>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl State {
    /// Counts a refused message.
    fn refuse(&self, kind: Refusal) -> Option<crate::logging::Suppressed> {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.refusals.admit(kind)
    }

    fn capabilities_answer(&self, capabilities: &[Capability]) -> Arc<CapabilitiesAnswer> {
        let mut last = lock(&self.last_capabilities);
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

    /// Forgets handshakes older than the handshake timeout and sessions idle longer than
    /// the idle timeout with none of their requests in progress.
    fn forget_stale(&self, started: Instant) {
        let now = Instant::now();
        let now_ms = elapsed_ms(started);
        let idle_ms = self.options.idle_timeout.as_millis() as u64;
        let mut peers = lock(&self.peers);
        let before = peers.len();
        let mut idle = 0;
        peers.retain(|_, peer| match peer {
            Peer::Handshaking { since, .. } => now - *since < self.options.handshake_timeout,
            Peer::Established(session) => {
                let busy = session.in_flight.load(Ordering::Relaxed) > 0;
                let recent =
                    now_ms.saturating_sub(session.last_request.load(Ordering::Relaxed)) < idle_ms;
                let keep = busy || recent;
                idle += u64::from(!keep);
                keep
            }
        });
        if peers.len() != before {
            tracing::debug!(
                forgotten = before - peers.len(),
                "stale peer sessions forgotten"
            );
        }
        self.stats.closed_idle.fetch_add(idle, Ordering::Relaxed);
        self.stats.connections.store(peers.len(), Ordering::Relaxed);
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Receives messages until `stop`, answering each in turn; slow handlers answer from
/// tasks of their own, whose replies this task sends. The socket is this task's alone,
/// so the endpoint is released when it ends, even while a handler still runs.
async fn serve(mut socket: RouterSocket, state: Arc<State>, stop: CancellationToken) {
    let started = Instant::now();
    let sweep_every = (state
        .options
        .idle_timeout
        .min(state.options.handshake_timeout)
        / 4)
    .max(Duration::from_millis(50));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded by the requests in flight.
    let (replies, mut answered) = mpsc::unbounded_channel::<(Bytes, Vec<Bytes>)>();
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some((identity, frames)) = answered.recv() => {
                send(&mut socket, identity, frames).await;
                continue;
            }
            _ = sweep.tick() => {
                state.forget_stale(started);
                continue;
            }
            message = socket.recv() => message,
        };
        let frames = match message {
            Ok(message) => message.into_vec(),
            Err(error) => {
                tracing::debug!(%error, "peer socket receive failed");
                continue;
            }
        };
        let Some((identity, answer)) = accept(&state, frames, started) else {
            continue;
        };
        match answer {
            Answer::Now(frames) => send(&mut socket, identity, frames).await,
            Answer::Later(answer) => {
                let replies = replies.clone();
                tokio::spawn(async move {
                    // Nobody to send it once the server stopped.
                    let _ = replies.send((identity, answer.await));
                });
            }
        }
    }
    socket.close().await;
}

/// Sends `frames` to the connection `identity`, as a REQ client expects them (after the
/// empty delimiter).
async fn send(socket: &mut RouterSocket, identity: Bytes, frames: Vec<Bytes>) {
    let mut message = ZmqMessage::from(identity);
    message.push_back(Bytes::new());
    for frame in frames {
        message.push_back(frame);
    }
    if let Err(error) = socket.send(message).await {
        // The requester went away before its answer was ready.
        tracing::debug!(%error, "peer reply not delivered");
    }
}

/// What becomes of one incoming message.
enum Answer {
    /// The reply's frames, ready now.
    Now(Vec<Bytes>),
    /// The reply's frames once the handler is done.
    Later(Pin<Box<dyn Future<Output = Vec<Bytes>> + Send>>),
}

/// A refusal outside any session, in the clear: `error` and a JSON object with the code
/// and the reason.
fn clear_error(code: ErrorCode, message: &str) -> Answer {
    let body = serde_json::json!({"code": code, "message": message});
    Answer::Now(vec![
        Bytes::from_static(label::ERROR),
        Bytes::from(serde_json::to_vec(&body).expect("JSON serializes")),
    ])
}

/// Checks one incoming message and answers it. Refusals are warned about at most once
/// per interval and kind: anyone who reaches the port can send them by the thousand.
fn accept(state: &Arc<State>, frames: Vec<Bytes>, started: Instant) -> Option<(Bytes, Answer)> {
    let mut frames = frames.into_iter();
    let identity = frames.next()?;
    // A REQ client sends the empty delimiter, then the message; anything else is not
    // ours and could not read an answer.
    let body: Vec<Bytes> = match frames.next() {
        Some(delimiter) if delimiter.is_empty() => frames.collect(),
        _ => {
            if let Some(suppressed) = state.refuse(Refusal::Framing) {
                tracing::warn!(
                    "peer message dropped: not a REQ client's (no empty delimiter){suppressed}"
                );
            }
            return None;
        }
    };
    let size: usize = body.iter().map(Bytes::len).sum();
    if size > MAX_READ_BYTES {
        if let Some(suppressed) = state.refuse(Refusal::Malformed) {
            tracing::warn!(bytes = size, "oversized peer message refused{suppressed}");
        }
        let reason = format!("{size} bytes, more than the {MAX_READ_BYTES} allowed");
        return Some((identity, clear_error(ErrorCode::BadRequest, &reason)));
    }
    let answer = match body.split_first() {
        Some((first, [])) if first.first() == Some(&b'{') => refuse_older_version(state, first),
        Some((kind, rest)) if kind.as_ref() == label::HELLO => hello(state, &identity, rest),
        Some((kind, [finish, sealed @ ..])) if kind.as_ref() == label::FINISH => {
            match finish_handshake(state, &identity, finish) {
                Ok(session) => request(state, &session, sealed, started),
                Err(answer) => answer,
            }
        }
        Some((kind, sealed)) if kind.as_ref() == label::REQUEST => {
            match established(state, &identity) {
                Some(session) => request(state, &session, sealed, started),
                None => {
                    if let Some(suppressed) = state.refuse(Refusal::Framing) {
                        tracing::warn!("peer request without a session refused{suppressed}");
                    }
                    clear_error(
                        ErrorCode::Unauthorized,
                        "no session on this connection; start one with hello",
                    )
                }
            }
        }
        _ => {
            if let Some(suppressed) = state.refuse(Refusal::Framing) {
                tracing::warn!(
                    frames = body.len(),
                    "peer message with unknown framing refused{suppressed}"
                );
            }
            clear_error(
                ErrorCode::BadRequest,
                "unknown framing: expected hello, finish or request",
            )
        }
    };
    Some((identity, answer))
}

/// A version 1 request (one frame of signed JSON): answered in version 1's shape,
/// unsigned, so that an older node reads why and what to do.
fn refuse_older_version(state: &State, body: &[u8]) -> Answer {
    if let Some(suppressed) = state.refuse(Refusal::Malformed) {
        tracing::warn!(
            version = ?version_of(body),
            "peer request of an older protocol version refused{suppressed}"
        );
    }
    let id = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.get("id")?.as_str().map(str::to_owned))
        .filter(|id| id.len() <= 128)
        .unwrap_or_default();
    let message = format!(
        "this node speaks peer protocol version {PEER_PROTOCOL_VERSION} only (Noise sessions); \
         upgrade motey on the requesting node"
    );
    let reply = Envelope::new(
        kinds::ERROR,
        id,
        state.node.clone(),
        serde_json::json!({"code": ErrorCode::UnsupportedVersion, "message": message}),
    );
    Answer::Now(vec![Bytes::from(reply.to_bytes())])
}

/// A hello: a new handshake on this connection (replacing any session it had).
fn hello(state: &State, identity: &Bytes, frames: &[Bytes]) -> Answer {
    let [hello] = frames else {
        return clear_error(ErrorCode::BadRequest, "hello carries one frame");
    };
    let mut peers = lock(&state.peers);
    if peers.len() >= state.options.max_connections && !peers.contains_key(identity) {
        drop(peers);
        state
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = state.refuse(Refusal::Connection) {
            tracing::warn!(
                "peer handshake refused: {} sessions are kept, the most allowed{suppressed}",
                state.options.max_connections
            );
        }
        return clear_error(ErrorCode::Busy, "too many sessions; try again later");
    }
    match Responder::welcome(state.trust.as_ref(), hello) {
        Ok((responder, welcome)) => {
            peers.insert(
                identity.clone(),
                Peer::Handshaking {
                    responder: Box::new(responder),
                    since: Instant::now(),
                },
            );
            state
                .stats
                .connections
                .store(peers.len(), Ordering::Relaxed);
            Answer::Now(vec![
                Bytes::from_static(label::WELCOME),
                Bytes::from(welcome),
            ])
        }
        Err(error) => {
            drop(peers);
            refuse_handshake(state, &error)
        }
    }
}

fn refuse_handshake(state: &State, error: &NoiseError) -> Answer {
    state
        .stats
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = state.refuse(Refusal::Handshake) {
        tracing::warn!(%error, "peer handshake refused{suppressed}");
    }
    clear_error(ErrorCode::Unauthorized, &error.to_string())
}

/// A finish: the client's proof; the session is made if it is believed.
fn finish_handshake(
    state: &State,
    identity: &Bytes,
    finish: &[u8],
) -> Result<Arc<Session>, Answer> {
    let pending = lock(&state.peers).remove(identity);
    let Some(Peer::Handshaking { responder, .. }) = pending else {
        return Err(clear_error(
            ErrorCode::Unauthorized,
            "no handshake in progress on this connection; start one with hello",
        ));
    };
    let (transport, node) = responder
        .finish(state.trust.as_ref(), finish)
        .map_err(|error| refuse_handshake(state, &error))?;
    tracing::debug!(%node, "peer session made");
    let session = Arc::new(Session {
        node,
        transport: Mutex::new(transport),
        last_request: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let mut peers = lock(&state.peers);
    peers.insert(identity.clone(), Peer::Established(session.clone()));
    state
        .stats
        .connections
        .store(peers.len(), Ordering::Relaxed);
    Ok(session)
}

fn established(state: &State, identity: &Bytes) -> Option<Arc<Session>> {
    match lock(&state.peers).get(identity) {
        Some(Peer::Established(session)) => Some(session.clone()),
        _ => None,
    }
}

/// The reply to a request of `session`, sealed in it.
fn sealed(session: &Session, reply: &[u8]) -> Vec<Bytes> {
    let mut frames = vec![Bytes::from_static(label::REPLY)];
    frames.extend(noise::seal(&mut lock(&session.transport), reply));
    frames
}

/// Opens a request in its session, checks it and, if it deserves it, runs its handler.
fn request(
    state: &Arc<State>,
    session: &Arc<Session>,
    frames: &[Bytes],
    started: Instant,
) -> Answer {
    session
        .last_request
        .store(elapsed_ms(started), Ordering::Relaxed);
    let plaintext = match noise::open(&mut lock(&session.transport), frames, MAX_MESSAGE_BYTES) {
        Ok(plaintext) => plaintext,
        Err(error) => {
            if let Some(suppressed) = state.refuse(Refusal::Unauthorized) {
                tracing::warn!(node = %session.node, %error, "peer request refused, not executed{suppressed}");
            }
            // Its nonces are out of step now: the client must make a new session.
            lock(&state.peers).retain(
                |_, peer| !matches!(peer, Peer::Established(other) if Arc::ptr_eq(other, session)),
            );
            return clear_error(ErrorCode::Unauthorized, &error.to_string());
        }
    };
    let respond = |reply: Reply, id: &str| {
        Answer::Now(sealed(
            session,
            &reply_bytes(state, &session.node, Outgoing::Reply(reply), id),
        ))
    };
    let envelope = match Received::parse(&plaintext) {
        Ok(envelope) => envelope,
        Err(error) => {
            if let Some(suppressed) = state.refuse(Refusal::Malformed) {
                tracing::warn!(node = %session.node, %error, bytes = plaintext.len(), "malformed peer message refused{suppressed}");
            }
            let code = match error {
                AuthError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
                _ => ErrorCode::BadRequest,
            };
            return respond(Reply::error(code, error.to_string()), "");
        }
    };
    if let Err((code, reason)) = check_request(state, session, &envelope) {
        if let Some(suppressed) = state.refuse(Refusal::Unauthorized) {
            tracing::warn!(
                node = %session.node,
                sender = %envelope.sender,
                to = %envelope.to,
                kind = %envelope.kind,
                id = %envelope.id,
                %reason,
                "peer message refused, not executed{suppressed}"
            );
        }
        return respond(Reply::error(code, reason), &envelope.id);
    }
    let request = match Request::from_parts(&envelope.kind, envelope.payload()) {
        Ok(request) => request,
        Err(error) => {
            if let Some(suppressed) = state.refuse(Refusal::NotUnderstood) {
                tracing::warn!(node = %session.node, %error, "peer request not understood{suppressed}");
            }
            let code = match error {
                super::messages::DecodeError::UnknownType(_) => ErrorCode::UnknownType,
                _ => ErrorCode::BadRequest,
            };
            return respond(Reply::error(code, error.to_string()), &envelope.id);
        }
    };
    let over_session =
        session.in_flight.load(Ordering::Relaxed) >= state.options.max_in_flight_per_connection;
    let permit = if over_session {
        None
    } else {
        state.permits.clone().try_acquire_owned().ok()
    };
    let Some(permit) = permit else {
        let reason = if over_session {
            "too many requests of this connection in progress"
        } else {
            "too many requests in progress"
        };
        if let Some(suppressed) = state.refuse(Refusal::Busy) {
            tracing::warn!(node = %session.node, kind = request.kind(), "peer request refused: {reason}{suppressed}");
        }
        return respond(Reply::error(ErrorCode::Busy, reason), &envelope.id);
    };
    state.stats.handled.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(node = %session.node, kind = request.kind(), id = %envelope.id, "peer request");
    session.in_flight.fetch_add(1, Ordering::Relaxed);
    let state = state.clone();
    let session = session.clone();
    let id = envelope.id.into_owned();
    let mut answer = Box::pin(async move {
        let kind = request.kind();
        let reply = std::panic::AssertUnwindSafe(dispatch(&state, request, &session.node))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(kind, "peer request handler panicked");
                Outgoing::Reply(Reply::error(ErrorCode::Internal, "the handler failed"))
            });
        drop(permit);
        let frames = sealed(&session, &reply_bytes(&state, &session.node, reply, &id));
        session.in_flight.fetch_sub(1, Ordering::Relaxed);
        frames
    });
    // A handler that answers without waiting (capabilities, most statuses) is answered
    // inline, saving a task; the others run in a task of their own.
    match (&mut answer).now_or_never() {
        Some(frames) => Answer::Now(frames),
        None => Answer::Later(answer),
    }
}

/// The checks of a request opened in its session: it is from the session's node, for
/// this node, from a node still trusted, fresh and not seen before.
fn check_request(
    state: &State,
    session: &Session,
    envelope: &Received,
) -> Result<(), (ErrorCode, String)> {
    if envelope.sender != session.node.0 {
        return Err((
            ErrorCode::Unauthorized,
            format!(
                "sender {} is not the node of this session ({})",
                envelope.sender, session.node
            ),
        ));
    }
    if envelope.to != state.node {
        return Err((
            ErrorCode::Misdirected,
            format!(
                "the message is for node {}, this is node {}",
                envelope.to, state.node
            ),
        ));
    }
    if !state.trust.still_trusted(&session.node) {
        return Err((
            ErrorCode::Unauthorized,
            format!("node {} is no longer trusted", session.node),
        ));
    }
    state
        .guard
        .check(envelope, now_ms())
        .map_err(|error| (ErrorCode::Unauthorized, error.to_string()))
}

/// What a request is answered with.
enum Outgoing {
    Reply(Reply),
    /// The capabilities, as kept while they stay the same.
    Capabilities(Arc<CapabilitiesAnswer>),
}

async fn dispatch(state: &State, request: Request, sender: &NodeId) -> Outgoing {
    let handler = state.handler.as_ref();
    let refused = |refusal: PeerRefusal| Reply::error(refusal.code, refusal.message);
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

fn reply_bytes(state: &State, to: &NodeId, reply: Outgoing, id: &str) -> Vec<u8> {
    let (kind, payload) = match reply {
        Outgoing::Capabilities(answer) => (kinds::CAPABILITY_REPLY, answer.payload.clone()),
        Outgoing::Reply(reply) => (reply.kind(), canonical_json(&reply.payload()).into()),
    };
    peer_message(kind, id, &state.node, &to.0, &payload)
}
