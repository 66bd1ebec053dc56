//! The asking side of the peer protocol: requests over REQ sockets of the `zeromq`
//! crate, each socket one connection with a Noise session to one node, one request at a
//! time. Sockets are kept per endpoint for reuse; a socket whose request timed out is
//! dropped (a REQ socket waiting for an answer that will never come would refuse every
//! later send), so a peer that vanishes mid-request costs one timeout, never a dead lock.
//! Requests to different peers run in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use serde::Deserialize;
use snow::TransportState;
use tokio::time::{timeout_at, Instant};
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use super::envelope::{
    canonical_json, now_ms, peer_message, AuthError, Received, ReplayGuard, MAX_MESSAGE_BYTES,
};
use super::messages::{ErrorCode, Reply, Request};
use super::noise::{self, label, Initiator, NoiseError};
use super::session_trust::SessionTrust;
use crate::discovery::{PeerDirectory, PeerState};
use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, NodeInfo, ServiceId};
use crate::orchestrator::remote::{RemoteError, RemoteNodes};
use motey_val::{ExecOutput, ExecRequest, LogLine, LogQuery};

/// Sockets open to one endpoint at the same time, idle or in use: a node with many
/// requests for one peer queues them instead of opening ever more connections.
const MAX_OPEN_PER_ENDPOINT: usize = 8;

/// Longest a client tries to connect to one address before it tries the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Transport(String),
    #[error("no session: {0}")]
    Session(NoiseError),
    #[error("the endpoint is node {found}, not node {expected}")]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("the reply is not authentic: {0}")]
    Unauthenticated(AuthError),
    #[error("invalid reply: {0}")]
    BadReply(String),
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

/// A connected REQ socket with its Noise session and the node it proved to be.
struct Connection {
    socket: zeromq::ReqSocket,
    session: TransportState,
    node: NodeId,
}

/// Sends requests to peer endpoints in Noise sessions and checks their replies.
pub struct Requester {
    trust: Arc<dyn SessionTrust>,
    node: String,
    timeout: Duration,
    freshness: ReplayGuard,
    idle: Mutex<HashMap<String, EndpointSockets>>,
}

/// The sockets of one endpoint.
#[derive(Default)]
struct EndpointSockets {
    idle: Vec<Connection>,
    /// Requests holding a socket (or connecting one).
    in_use: usize,
    /// Requests waiting for one of them to finish.
    waiting: usize,
    freed: Arc<tokio::sync::Notify>,
}

/// One request's place among an endpoint's sockets, given back when it is dropped
/// (however the request ends), with the socket to keep idle if there is one.
struct InUse<'a> {
    requester: &'a Requester,
    endpoint: &'a str,
    keep: Option<Connection>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut pool = self.requester.pool();
        let Some(sockets) = pool.get_mut(self.endpoint) else {
            return;
        };
        sockets.in_use -= 1;
        sockets.idle.extend(self.keep.take());
        if sockets.waiting > 0 {
            sockets.freed.notify_one();
        }
    }
}

/// How one exchange on a connection failed.
enum Failed {
    Timeout,
    /// The connection or its session is no longer usable (closed, or the server forgot
    /// the session): a reused one is worth one retry on a new connection.
    Stale(CallError),
    /// The request itself failed.
    Final(CallError),
}

#[derive(Deserialize)]
struct ClearError {
    code: ErrorCode,
    #[serde(default)]
    message: String,
}

impl Requester {
    /// Requests on behalf of the node `trust` names, each answered within `timeout` or
    /// failed.
    pub fn new(trust: Arc<dyn SessionTrust>, timeout: Duration) -> Requester {
        Requester {
            node: trust.node_id().to_string(),
            trust,
            timeout,
            freshness: ReplayGuard::default(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request to node `to` at `endpoint` (e.g. `tcp://10.0.0.7:5091`) and
    /// returns its successful reply; error replies become [`CallError::Refused`].
    pub async fn call(
        &self,
        endpoint: &str,
        to: &NodeId,
        request: &Request,
    ) -> Result<Reply, CallError> {
        self.call_within(endpoint, to, request, self.timeout).await
    }

    /// As [`Requester::call`], with a deadline of its own (a diagnostic command that may
    /// run longer than an ordinary request).
    pub async fn call_within(
        &self,
        endpoint: &str,
        to: &NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let deadline = Instant::now() + timeout;
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
        let body = peer_message(
            request.kind(),
            id,
            &self.node,
            &to.0,
            &canonical_json(&request.payload()),
        );
        let reply = self.exchange(endpoint, to, &body, deadline).await?;
        self.check_reply(request, id, to, &reply)
    }

    fn check_reply(
        &self,
        request: &Request,
        id: &str,
        to: &NodeId,
        bytes: &[u8],
    ) -> Result<Reply, CallError> {
        let envelope =
            Received::parse(bytes).map_err(|error| CallError::BadReply(error.to_string()))?;
        if envelope.id != id {
            return Err(CallError::BadReply(format!(
                "answers request {:?}, not {id:?}",
                envelope.id
            )));
        }
        if envelope.sender != to.0 || envelope.to != self.node {
            return Err(CallError::Unauthenticated(AuthError::Malformed(format!(
                "reply from {} for {} in a session of {} with {to}",
                envelope.sender, envelope.to, self.node
            ))));
        }
        self.freshness
            .check_freshness(&envelope, now_ms())
            .map_err(CallError::Unauthenticated)?;
        match Reply::from_parts(&envelope.kind, envelope.payload()) {
            Err(error) => Err(CallError::BadReply(error.to_string())),
            Ok(Reply::Error { code, message }) => Err(CallError::Refused { code, message }),
            Ok(reply) if reply.kind() == request.reply_kind() => Ok(reply),
            Ok(reply) => Err(CallError::BadReply(format!(
                "{} answers {}",
                reply.kind(),
                request.kind()
            ))),
        }
    }

    async fn exchange(
        &self,
        endpoint: &str,
        to: &NodeId,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let (mut in_use, idle) = timeout_at(deadline, self.check_out(endpoint))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?;
        if let Some(mut connection) = idle.filter(|connection| connection.node == *to) {
            match reuse(&mut connection, body, deadline).await {
                Ok(reply) => {
                    in_use.keep = Some(connection);
                    return Ok(reply);
                }
                Err(Failed::Timeout) => {
                    self.clear_idle(endpoint);
                    return Err(CallError::Timeout(self.timeout));
                }
                Err(Failed::Final(error)) => {
                    in_use.keep = Some(connection);
                    return Err(error);
                }
                // The peer closed this connection or forgot its session while it was
                // idle (typically: it restarted). Its siblings are as stale; retry once
                // on a fresh one.
                Err(Failed::Stale(error)) => {
                    tracing::debug!(%endpoint, %error, "idle peer connection is stale; reconnecting");
                    self.clear_idle(endpoint);
                }
            }
        }
        let (connection, reply) = self.connect(endpoint, to, body, deadline).await?;
        in_use.keep = Some(connection);
        Ok(reply)
    }

    /// Connects, makes a session with node `to` and sends the first request with the
    /// handshake's last message: the connection and the reply.
    async fn connect(
        &self,
        endpoint: &str,
        to: &NodeId,
        body: &[u8],
        deadline: Instant,
    ) -> Result<(Connection, Vec<u8>), CallError> {
        if !endpoint.starts_with("tcp://") {
            return Err(CallError::Connect(format!(
                "{endpoint}: only tcp:// endpoints are supported"
            )));
        }
        let timeout = CallError::Timeout(self.timeout);
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_TIMEOUT.min(deadline - Instant::now()));
        let mut socket = zeromq::ReqSocket::with_options(options);
        timeout_at(deadline, socket.connect(endpoint))
            .await
            .map_err(|_| timeout.clone())?
            .map_err(|error| CallError::Connect(error.to_string()))?;
        let (initiator, hello) =
            Initiator::start(self.trust.as_ref()).map_err(CallError::Session)?;
        let welcome = match round_trip(
            &mut socket,
            vec![label::HELLO.into(), hello.into()],
            deadline,
        )
        .await
        {
            Ok(frames) => frames,
            Err(Failed::Timeout) => return Err(timeout),
            Err(Failed::Stale(error) | Failed::Final(error)) => return Err(error),
        };
        let welcome = match welcome.as_slice() {
            [kind, welcome] if kind.as_ref() == label::WELCOME => welcome.clone(),
            frames => return Err(unexpected_frames(frames)),
        };
        let (mut session, node, finish) = initiator
            .finish(self.trust.as_ref(), &welcome)
            .map_err(CallError::Session)?;
        if node != *to {
            return Err(CallError::WrongNode {
                expected: to.clone(),
                found: node,
            });
        }
        let mut frames = vec![Bytes::from_static(label::FINISH), Bytes::from(finish)];
        frames.extend(noise::seal(&mut session, body));
        let mut connection = Connection {
            socket,
            session,
            node,
        };
        match send_sealed(&mut connection, frames, deadline).await {
            Ok(reply) => Ok((connection, reply)),
            Err(Failed::Timeout) => Err(timeout),
            Err(Failed::Stale(error) | Failed::Final(error)) => Err(error),
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndpointSockets>> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place among the sockets of `endpoint`, waiting while all of them are in use,
    /// with an idle socket if there is one. Sockets are connected only when none is idle,
    /// so they never number more than [`MAX_OPEN_PER_ENDPOINT`].
    async fn check_out<'a>(&'a self, endpoint: &'a str) -> (InUse<'a>, Option<Connection>) {
        let mut waited = false;
        loop {
            let freed = {
                let mut pool = self.pool();
                let sockets = match pool.get_mut(endpoint) {
                    Some(sockets) => sockets,
                    None => pool.entry(endpoint.to_owned()).or_default(),
                };
                if waited {
                    sockets.waiting -= 1;
                }
                if sockets.in_use < MAX_OPEN_PER_ENDPOINT {
                    sockets.in_use += 1;
                    let idle = sockets.idle.pop();
                    let in_use = InUse {
                        requester: self,
                        endpoint,
                        keep: None,
                    };
                    return (in_use, idle);
                }
                sockets.waiting += 1;
                sockets.freed.clone()
            };
            waited = true;
            // Leaving while counted as waiting would leave the count too high: count
            // down even when the caller gives up here.
            let mut waiter = Waiting {
                requester: self,
                endpoint,
                counted: true,
            };
            freed.notified().await;
            waiter.counted = false;
        }
    }

    fn clear_idle(&self, endpoint: &str) {
        if let Some(sockets) = self.pool().get_mut(endpoint) {
            sockets.idle.clear();
        }
    }

    /// Drops the idle sockets of endpoints not in `keep` (peers that left or moved).
    pub fn retain_endpoints(&self, keep: &[String]) {
        self.pool().retain(|endpoint, _| keep.contains(endpoint));
    }
}

/// A request waiting for a socket of `endpoint`; counted down if it gives up.
struct Waiting<'a> {
    requester: &'a Requester,
    endpoint: &'a str,
    counted: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.counted {
            if let Some(sockets) = self.requester.pool().get_mut(self.endpoint) {
                sockets.waiting -= 1;
            }
        }
    }
}

/// A request on a connection whose session exists already.
async fn reuse(
    connection: &mut Connection,
    body: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, Failed> {
    let mut frames = vec![Bytes::from_static(label::REQUEST)];
    frames.extend(noise::seal(&mut connection.session, body));
    send_sealed(connection, frames, deadline).await
}

/// Sends sealed request frames and opens the sealed reply.
async fn send_sealed(
    connection: &mut Connection,
    frames: Vec<Bytes>,
    deadline: Instant,
) -> Result<Vec<u8>, Failed> {
    let reply = round_trip(&mut connection.socket, frames, deadline).await?;
    match reply.split_first() {
        Some((kind, sealed)) if kind.as_ref() == label::REPLY => {
            noise::open(&mut connection.session, sealed, 2 * MAX_MESSAGE_BYTES)
                .map_err(|error| Failed::Stale(CallError::Session(error)))
        }
        // Outside the session: the server has none for this connection (it restarted,
        // or forgot the session for idling), or refused the handshake.
        Some((kind, [body])) if kind.as_ref() == label::ERROR => {
            let error = clear_error(body);
            match error {
                CallError::Refused {
                    code: ErrorCode::Unauthorized,
                    ..
                } => Err(Failed::Stale(error)),
                _ => Err(Failed::Final(error)),
            }
        }
        _ => Err(Failed::Final(unexpected_frames(&reply))),
    }
}

fn clear_error(body: &[u8]) -> CallError {
    match serde_json::from_slice::<ClearError>(body) {
        Ok(error) => CallError::Refused {
            code: error.code,
            message: error.message,
        },
        Err(error) => CallError::BadReply(format!("error frame: {error}")),
    }
}

fn unexpected_frames(frames: &[Bytes]) -> CallError {
    match frames.split_first() {
        Some((kind, [body])) if kind.as_ref() == label::ERROR => clear_error(body),
        Some((kind, rest)) => CallError::BadReply(format!(
            "unexpected {:?} with {} frames",
            String::from_utf8_lossy(&kind[..kind.len().min(16)]),
            rest.len()
        )),
        None => CallError::BadReply("empty reply".into()),
    }
}

/// Sends one message and receives the answer within `deadline`.
async fn round_trip(
    socket: &mut zeromq::ReqSocket,
    frames: Vec<Bytes>,
    deadline: Instant,
) -> Result<Vec<Bytes>, Failed> {
    let message = ZmqMessage::try_from(frames).expect("a request has frames");
    let exchange = async {
        socket
            .send(message)
            .await
            .map_err(|error| Failed::Stale(CallError::Transport(error.to_string())))?;
        socket
            .recv()
            .await
            .map_err(|error| Failed::Stale(CallError::Transport(error.to_string())))
    };
    match timeout_at(deadline, exchange).await {
        Ok(reply) => Ok(reply?.into_vec()),
        Err(_) => Err(Failed::Timeout),
    }
}

/// The ZeroMQ endpoints of a node, in the order of its announced addresses.
pub fn endpoints_of(info: &NodeInfo) -> Vec<String> {
    info.addresses
        .iter()
        .map(|address| match address.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => format!("tcp://[{ip}]:{}", info.peer_port),
            Err(_) => format!("tcp://{address}:{}", info.peer_port),
        })
        .collect()
}

/// The other nodes of the fog over the peer protocol: addresses come from the
/// [`PeerDirectory`], and only alive peers are asked.
pub struct PeerClient {
    requester: Requester,
    directory: PeerDirectory,
    /// Capabilities of each peer with the digest they had, asked again only when the
    /// peer announces another digest.
    capabilities: Mutex<HashMap<NodeId, (String, Vec<Capability>)>>,
}

impl PeerClient {
    pub fn new(
        directory: PeerDirectory,
        trust: Arc<dyn SessionTrust>,
        timeout: Duration,
    ) -> PeerClient {
        PeerClient {
            requester: Requester::new(trust, timeout),
            directory,
            capabilities: Mutex::new(HashMap::new()),
        }
    }

    pub fn requester(&self) -> &Requester {
        &self.requester
    }

    fn alive_peer(&self, node: &NodeId) -> Result<NodeInfo, RemoteError> {
        let peer = self
            .directory
            .get(node)
            .filter(|peer| !peer.this_node)
            .ok_or_else(|| RemoteError::UnknownNode(node.clone()))?;
        match peer.state {
            PeerState::Alive => Ok(peer.info),
            state => Err(RemoteError::Unreachable {
                node: node.clone(),
                reason: format!(
                    "node is {} ({})",
                    serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    peer.reason.unwrap_or_default()
                ),
            }),
        }
    }

    /// Sends a request to an alive peer, trying its addresses in order while they cannot
    /// be connected to.
    pub async fn call(&self, node: &NodeId, request: &Request) -> Result<Reply, RemoteError> {
        self.call_within(node, request, self.requester.timeout)
            .await
    }

    /// As [`PeerClient::call`], answered within `timeout`.
    pub async fn call_within(
        &self,
        node: &NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, RemoteError> {
        let info = self.alive_peer(node)?;
        let endpoints = endpoints_of(&info);
        let mut last = RemoteError::Unreachable {
            node: node.clone(),
            reason: "the node announces no address".into(),
        };
        for endpoint in endpoints.iter().take(3) {
            match self
                .requester
                .call_within(endpoint, node, request, timeout)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(error @ CallError::Connect(_)) => {
                    last = remote_error(node, error);
                }
                Err(error) => {
                    tracing::debug!(%node, %endpoint, kind = request.kind(), %error, "peer request failed");
                    return Err(remote_error(node, error));
                }
            }
        }
        Err(last)
    }

    /// The capabilities of every alive peer, asked in parallel.
    pub async fn capabilities_of_alive_peers(
        &self,
    ) -> Vec<(NodeInfo, Result<Vec<Capability>, RemoteError>)> {
        let peers = self.directory.alive();
        let answers = join_all(peers.iter().map(|peer| self.capabilities_of(&peer.id))).await;
        peers.into_iter().zip(answers).collect()
    }

    async fn capabilities_of(&self, node: &NodeId) -> Result<Vec<Capability>, RemoteError> {
        let info = self.alive_peer(node)?;
        {
            let cache = self.capabilities.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((digest, capabilities)) = cache.get(node) {
                if !digest.is_empty() && *digest == info.capabilities_digest {
                    return Ok(capabilities.clone());
                }
            }
        }
        match self.call(node, &Request::Capabilities).await? {
            Reply::Capabilities {
                capabilities,
                digest,
            } => {
                self.capabilities
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node.clone(), (digest, capabilities.clone()));
                Ok(capabilities)
            }
            other => Err(unexpected(node, &other)),
        }
    }
}

fn remote_error(node: &NodeId, error: CallError) -> RemoteError {
    let node = node.clone();
    match error {
        CallError::Timeout(_) | CallError::Connect(_) | CallError::Transport(_) => {
            RemoteError::Unreachable {
                node,
                reason: error.to_string(),
            }
        }
        CallError::Refused {
            code: ErrorCode::NotFound,
            message,
        } => RemoteError::NotFound {
            node,
            reason: message,
        },
        CallError::Refused {
            code: ErrorCode::Decommissioning,
            message,
        } => RemoteError::Decommissioning {
            node,
            reason: message,
        },
        CallError::Refused {
            code: ErrorCode::Refused,
            message,
        } => RemoteError::Refused {
            node,
            reason: message,
        },
        other => RemoteError::Refused {
            node,
            reason: other.to_string(),
        },
    }
}

fn unexpected(node: &NodeId, reply: &Reply) -> RemoteError {
    RemoteError::Refused {
        node: node.clone(),
        reason: format!("unexpected reply {}", reply.kind()),
    }
}

#[async_trait::async_trait]
impl RemoteNodes for PeerClient {
    async fn alive_peers(&self) -> Vec<NodeInfo> {
        self.directory.alive()
    }

    async fn capabilities(&self, node: &NodeId) -> Result<Vec<Capability>, RemoteError> {
        self.capabilities_of(node).await
    }

    async fn deploy_image(
        &self,
        node: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, RemoteError> {
        match self
            .call(node, &Request::DeployImage(Box::new(deployment)))
            .await?
        {
            Reply::Deployed(status) => Ok(status),
            other => Err(unexpected(node, &other)),
        }
    }

    async fn image_status(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, RemoteError> {
        let request = Request::ImageStatus {
            service_id: service_id.clone(),
            image_id: image_id.to_owned(),
        };
        match self.call(node, &request).await? {
            Reply::ImageStatus(status) => Ok(status),
            other => Err(unexpected(node, &other)),
        }
    }

    async fn is_gone(&self, node: &NodeId) -> bool {
        self.directory
            .get(node)
            .is_none_or(|peer| peer.state == PeerState::Gone)
    }

    async fn image_assigned(
        &self,
        owner: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<bool, RemoteError> {
        let request = Request::ImageAssignment {
            service_id: service_id.clone(),
            image_id: image_id.to_owned(),
            node: self.directory.this_node().id,
        };
        match self.call(owner, &request).await? {
            Reply::Assignment { assigned } => Ok(assigned),
            other => Err(unexpected(owner, &other)),
        }
    }

    async fn terminate_image(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<(), RemoteError> {
        let request = Request::TerminateImage {
            service_id: service_id.clone(),
            image_id: image_id.to_owned(),
        };
        match self.call(node, &request).await? {
            Reply::Terminated => Ok(()),
            other => Err(unexpected(node, &other)),
        }
    }

    async fn image_logs(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
        query: LogQuery,
    ) -> Result<Vec<LogLine>, RemoteError> {
        let request = Request::ImageLogs {
            service_id: service_id.clone(),
            image_id: image_id.to_owned(),
            query,
        };
        match self.call(node, &request).await? {
            Reply::ImageLogs(lines) => Ok(lines),
            other => Err(unexpected(node, &other)),
        }
    }

    async fn image_exec(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
        exec: ExecRequest,
    ) -> Result<ExecOutput, RemoteError> {
        // The command may take its whole time on the peer; the request gets that on top.
        let timeout = self.requester.timeout + Duration::from_secs(exec.timeout_secs);
        let request = Request::ImageExec {
            service_id: service_id.clone(),
            image_id: image_id.to_owned(),
            exec,
        };
        match self.call_within(node, &request, timeout).await? {
            Reply::ImageExec(output) => Ok(output),
            other => Err(unexpected(node, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_announced_addresses() {
        let info = NodeInfo {
            id: NodeId("n".into()),
            name: "n".into(),
            addresses: vec!["10.0.0.7".into(), "fe80::1".into(), "node-b.local".into()],
            rest_port: 5023,
            peer_port: 5091,
            last_seen: None,
            version: String::new(),
            capabilities_digest: String::new(),
        };
        assert_eq!(
            endpoints_of(&info),
            vec![
                "tcp://10.0.0.7:5091",
                "tcp://[fe80::1]:5091",
                "tcp://node-b.local:5091"
            ]
        );
    }
}
