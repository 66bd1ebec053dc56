//! The asking side of the peer protocol: signed requests over ZeroMQ REQ sockets (ZMTP
//! spoken by [`super::zmtp`]), one request per socket at a time. REQ sockets are kept per
//! endpoint for reuse; a socket whose request timed out is dropped (a REQ socket waiting
//! for an answer that will never come would refuse every later send), so a peer that
//! vanishes mid-request costs one timeout, never a dead lock. Requests to different peers
//! run in parallel.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::zmtp::{self, FrameReader, Incoming, SocketType};

use super::envelope::{
    canonical_json, now_ms, AuthError, ClusterKey, Envelope, Received, ReplayGuard,
};
use super::messages::{ErrorCode, Reply, Request};
use crate::discovery::{PeerDirectory, PeerState};
use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, NodeInfo, ServiceId};
use crate::orchestrator::remote::{RemoteError, RemoteNodes};
use motey_val::{ExecOutput, ExecRequest, LogLine, LogQuery};

/// Sockets open to one endpoint at the same time, idle or in use: below a server's cap
/// on connections per address (16 by default), so a node with many requests for one peer
/// queues them instead of being refused connections.
const MAX_OPEN_PER_ENDPOINT: usize = 8;

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection failed: {0}")]
    Transport(String),
    #[error("the reply is not authentic: {0}")]
    Unauthenticated(AuthError),
    #[error("invalid reply: {0}")]
    BadReply(String),
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
}

enum RoundTrip {
    Timeout,
    Transport(String),
}

/// Largest reply a client reads.
const MAX_REPLY_BYTES: usize = 2 * super::envelope::MAX_MESSAGE_BYTES;

/// A connected REQ socket: one TCP connection to one peer, greeted.
struct ReqSocket {
    stream: TcpStream,
    frames: FrameReader,
    /// The deadline of the request in progress.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// Sends signed requests to peer endpoints and checks their replies.
pub struct Requester {
    node: String,
    key: ClusterKey,
    timeout: Duration,
    freshness: ReplayGuard,
    idle: Mutex<HashMap<String, EndpointSockets>>,
}

/// The sockets of one endpoint.
#[derive(Default)]
struct EndpointSockets {
    idle: Vec<ReqSocket>,
    /// Requests holding a socket (or connecting one).
    in_use: usize,
    /// Requests waiting for one of them to finish.
    waiting: usize,
    freed: std::sync::Arc<tokio::sync::Notify>,
}

/// One request's place among an endpoint's sockets, given back when it is dropped
/// (however the request ends), with the socket to keep idle if there is one.
struct InUse<'a> {
    requester: &'a Requester,
    endpoint: &'a str,
    keep: Option<ReqSocket>,
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

impl Requester {
    /// Requests on behalf of node `node`, each answered within `timeout` or failed.
    pub fn new(node: NodeId, key: ClusterKey, timeout: Duration) -> Requester {
        Requester {
            node: node.to_string(),
            key,
            timeout,
            freshness: ReplayGuard::default(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request to `endpoint` (e.g. `tcp://10.0.0.7:5091`) and returns its
    /// successful reply; error replies become [`CallError::Refused`].
    pub async fn call(&self, endpoint: &str, request: &Request) -> Result<Reply, CallError> {
        self.call_within(endpoint, request, self.timeout).await
    }

    /// As [`Requester::call`], with a deadline of its own (a diagnostic command that may
    /// run longer than an ordinary request).
    pub async fn call_within(
        &self,
        endpoint: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let deadline = Instant::now() + timeout;
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
        let body = Envelope::signed_bytes_with_payload(
            request.kind(),
            id,
            &self.node,
            &canonical_json(&request.payload()),
            &self.key,
        );
        // Framed once: a retry on a new connection sends the same bytes.
        let framed = zmtp::delimited(body);
        let reply = self.exchange(endpoint, &framed, deadline).await?;
        self.check_reply(request, id, &reply)
    }

    fn check_reply(&self, request: &Request, id: &str, bytes: &[u8]) -> Result<Reply, CallError> {
        let envelope =
            Received::parse(bytes).map_err(|error| CallError::BadReply(error.to_string()))?;
        if envelope.id != id {
            return Err(CallError::BadReply(format!(
                "answers request {:?}, not {id:?}",
                envelope.id
            )));
        }
        let authentic = envelope
            .verify(bytes, &self.key)
            .and_then(|()| self.freshness.check_freshness(&envelope, now_ms()));
        let reply = Reply::from_parts(&envelope.kind, envelope.payload());
        match (authentic, reply) {
            // An error reply changes nothing here, so even an unauthenticated one may
            // explain the failure (typically: the peer has another cluster key).
            (Err(auth), Ok(Reply::Error { code, message })) => Err(CallError::Refused {
                code,
                message: format!("{message} (the error reply itself is not authentic: {auth})"),
            }),
            (Err(auth), _) => Err(CallError::Unauthenticated(auth)),
            (Ok(()), Err(error)) => Err(CallError::BadReply(error.to_string())),
            (Ok(()), Ok(Reply::Error { code, message })) => {
                Err(CallError::Refused { code, message })
            }
            (Ok(()), Ok(reply)) if reply.kind() == request.reply_kind() => Ok(reply),
            (Ok(()), Ok(reply)) => Err(CallError::BadReply(format!(
                "{} answers {}",
                reply.kind(),
                request.kind()
            ))),
        }
    }

    async fn exchange(
        &self,
        endpoint: &str,
        framed: &[u8],
        deadline: Instant,
    ) -> Result<bytes::Bytes, CallError> {
        let (mut in_use, idle) = timeout_at(deadline, self.check_out(endpoint))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))?;
        if let Some(mut socket) = idle {
            match round_trip(&mut socket, framed, deadline).await {
                Ok(reply) => {
                    in_use.keep = Some(socket);
                    return Ok(reply);
                }
                Err(RoundTrip::Timeout) => {
                    self.clear_idle(endpoint);
                    return Err(CallError::Timeout(self.timeout));
                }
                // The peer closed this connection while it was idle (typically: it
                // restarted). Its siblings are as stale; retry once on a fresh one.
                Err(RoundTrip::Transport(error)) => {
                    tracing::debug!(%endpoint, %error, "idle peer connection was closed; reconnecting");
                    self.clear_idle(endpoint);
                }
            }
        }
        let mut socket = self.connect(endpoint, deadline).await?;
        match round_trip(&mut socket, framed, deadline).await {
            Ok(reply) => {
                in_use.keep = Some(socket);
                Ok(reply)
            }
            Err(RoundTrip::Timeout) => Err(CallError::Timeout(self.timeout)),
            Err(RoundTrip::Transport(error)) => Err(CallError::Transport(error)),
        }
    }

    async fn connect(&self, endpoint: &str, deadline: Instant) -> Result<ReqSocket, CallError> {
        let address = endpoint.strip_prefix("tcp://").ok_or_else(|| {
            CallError::Connect(format!("{endpoint}: only tcp:// endpoints are supported"))
        })?;
        let connected = async {
            let mut stream = TcpStream::connect(address)
                .await
                .map_err(|error| CallError::Connect(error.to_string()))?;
            let _ = stream.set_nodelay(true);
            let mut frames = FrameReader::new(MAX_REPLY_BYTES);
            zmtp::handshake(&mut stream, &mut frames, SocketType::Req)
                .await
                .map_err(|error| CallError::Connect(format!("ZeroMQ handshake: {error}")))?;
            Ok(ReqSocket {
                stream,
                frames,
                timer: Box::pin(tokio::time::sleep_until(deadline)),
            })
        };
        timeout_at(deadline, connected)
            .await
            .unwrap_or(Err(CallError::Timeout(self.timeout)))
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, HashMap<String, EndpointSockets>> {
        self.idle
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place among the sockets of `endpoint`, waiting while all of them are in use,
    /// with an idle socket if there is one. Sockets are connected only when none is idle,
    /// so they never number more than [`MAX_OPEN_PER_ENDPOINT`].
    async fn check_out<'a>(&'a self, endpoint: &'a str) -> (InUse<'a>, Option<ReqSocket>) {
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

/// Sends one request (already framed by [`zmtp::delimited`]) and reads its reply.
async fn round_trip(
    socket: &mut ReqSocket,
    framed: &[u8],
    deadline: Instant,
) -> Result<bytes::Bytes, RoundTrip> {
    let transport = |error: std::io::Error| RoundTrip::Transport(error.to_string());
    let ReqSocket {
        stream,
        frames,
        timer,
    } = socket;
    // One deadline over both directions, on the socket's own timer: moved to a later
    // instant it stays registered, where a new timer per request was registered and
    // removed under the runtime's timer lock each time.
    timer.as_mut().reset(deadline);
    let exchange = async {
        stream.write_all(framed).await.map_err(transport)?;
        loop {
            match frames.message(stream).await.map_err(transport)? {
                Incoming::Message(frames) => return Ok(frames),
                Incoming::Pong(pong) => stream.write_all(&pong).await.map_err(transport)?,
            }
        }
    };
    let frames = tokio::select! {
        biased;
        result = exchange => result?,
        () = timer.as_mut() => return Err(RoundTrip::Timeout),
    };
    // A REQ socket drops the empty delimiter and hands on the rest.
    match <[bytes::Bytes; 2]>::try_from(frames) {
        Ok([delimiter, body]) if delimiter.is_empty() => Ok(body),
        Ok(_) => Err(RoundTrip::Transport("reply without delimiter".into())),
        Err(frames) => Err(RoundTrip::Transport(format!(
            "reply has {} frames, expected 1",
            frames.len().saturating_sub(1)
        ))),
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
    pub fn new(directory: PeerDirectory, key: ClusterKey, timeout: Duration) -> PeerClient {
        let node = directory.this_node().id;
        PeerClient {
            requester: Requester::new(node, key, timeout),
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
            match self.requester.call_within(endpoint, request, timeout).await {
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
