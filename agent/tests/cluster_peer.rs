//! The peer protocol over real TCP sockets: the requests round-trip in Noise sessions; a
//! request whose sender is not the session's node, one for another node, a replayed, a
//! stale one and garbage are refused without reaching the handler; a message captured
//! for node B is refused by node C; a node of another cluster gets no session; a version
//! 1 request is refused naming the upgrade; a peer that hangs or vanishes mid-request
//! costs a timeout, and the next request succeeds. The reference client of PROTOCOL.md
//! (Python: pyzmq on libzmq, noiseprotocol) completes a capability request against a
//! real agent.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::{key, node_info, trust, trust_with_key, RecordingHandler};
use motey::discovery::{Liveness, PeerDirectory};
use motey::domain::{ImageDeployment, ImageState, NodeId, ServiceId};
use motey::orchestrator::remote::{RemoteError, RemoteNodes};
use motey::peer::envelope::{canonical_json, peer_message};
use motey::peer::noise::{self, label, Initiator};
use motey::peer::{
    CallError, ClusterKey, Envelope, ErrorCode, PeerClient, PeerHandler, PeerServer, Received,
    Reply, Request, Requester, SessionTrust,
};
use motey::store::Store;
use serde_json::json;
use snow::TransportState;
use zeromq::{ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

async fn serve(node: &str, handler: Arc<RecordingHandler>) -> PeerServer {
    PeerServer::bind(
        "tcp://127.0.0.1:0",
        trust(node),
        handler as Arc<dyn PeerHandler>,
    )
    .await
    .unwrap()
}

/// A client node whose directory knows `peers` (id, peer port) as alive.
fn client_knowing(
    peers: &[(&str, u16)],
    trust: Arc<dyn SessionTrust>,
    timeout: Duration,
) -> PeerClient {
    let store = Store::temporary().unwrap();
    let directory = PeerDirectory::open(
        node_info("client"),
        store.nodes.clone(),
        Liveness::default(),
    )
    .unwrap();
    for (id, port) in peers {
        let mut info = node_info(id);
        info.peer_port = *port;
        directory.observe(info, 1, tokio::time::Instant::now());
    }
    PeerClient::new(directory, trust, timeout)
}

fn deployment(service: &str, image: &str) -> ImageDeployment {
    ImageDeployment {
        service_id: ServiceId(service.into()),
        service_name: "metering".into(),
        owner: NodeId("client".into()),
        image: serde_json::from_value(json!({
            "id": image,
            "image": "motey/meter-reader:latest",
            "capabilities": ["optical-probe"],
            "devices": [{"host_path": "/dev/ttyUSB0", "container_path": "/dev/ttyUSB0"}]
        }))
        .unwrap(),
        version: 1,
    }
}

/// A session made by hand, as a client that writes its envelopes itself would: it may
/// claim another sender, name another recipient or send the same message twice.
struct RawSession {
    socket: ReqSocket,
    session: TransportState,
}

impl RawSession {
    async fn open(endpoint: &str, server: &str, trust: &dyn SessionTrust) -> RawSession {
        let mut socket = ReqSocket::new();
        socket.connect(endpoint).await.unwrap();
        let (initiator, hello) = Initiator::start(trust).unwrap();
        let welcome = exchange(&mut socket, vec![label::HELLO.into(), hello.into()]).await;
        assert_eq!(welcome[0].as_ref(), label::WELCOME);
        let (session, _, finish) = initiator.finish(trust, &welcome[1]).unwrap();
        // The finish carries a first request, as the agent's client sends it.
        let mut raw = RawSession { socket, session };
        let first = peer_message(
            "capability_request",
            "first",
            &trust.node_id().0,
            server,
            b"{}",
        );
        let mut frames = vec![Bytes::from_static(label::FINISH), Bytes::from(finish)];
        frames.extend(noise::seal(&mut raw.session, &first));
        let reply = exchange(&mut raw.socket, frames).await;
        assert_eq!(reply[0].as_ref(), label::REPLY, "{reply:?}");
        noise::open(&mut raw.session, &reply[1..], 1 << 21).unwrap();
        raw
    }

    /// Seals `plaintext`, sends it and returns the request frames sent and the reply.
    async fn request(&mut self, plaintext: &[u8]) -> (Vec<Bytes>, Vec<Bytes>) {
        let mut frames = vec![Bytes::from_static(label::REQUEST)];
        frames.extend(noise::seal(&mut self.session, plaintext));
        let reply = exchange(&mut self.socket, frames.clone()).await;
        (frames, reply)
    }

    /// The error code of a sealed reply.
    fn code_of(&mut self, reply: &[Bytes]) -> (ErrorCode, String) {
        assert_eq!(reply[0].as_ref(), label::REPLY, "{reply:?}");
        let plaintext = noise::open(&mut self.session, &reply[1..], 1 << 21).unwrap();
        let envelope = Received::parse(&plaintext).unwrap();
        match Reply::from_parts(&envelope.kind, envelope.payload()).unwrap() {
            Reply::Error { code, message } => (code, message),
            other => panic!("expected an error reply, got {other:?}"),
        }
    }
}

async fn exchange(socket: &mut ReqSocket, frames: Vec<Bytes>) -> Vec<Bytes> {
    socket
        .send(ZmqMessage::try_from(frames).unwrap())
        .await
        .unwrap();
    tokio::time::timeout(cluster::PATIENCE, socket.recv())
        .await
        .expect("the server answers refused messages too")
        .unwrap()
        .into_vec()
}

/// The code of an error sent outside any session.
fn clear_code(reply: &[Bytes]) -> ErrorCode {
    assert_eq!(reply[0].as_ref(), label::ERROR, "{reply:?}");
    let body: serde_json::Value = serde_json::from_slice(&reply[1]).unwrap();
    serde_json::from_value(body["code"].clone()).unwrap()
}

fn deploy_message(sender: &str, to: &str) -> Vec<u8> {
    let deploy = Request::DeployImage(Box::new(deployment("svc-1", "reader")));
    peer_message(
        deploy.kind(),
        &uuid::Uuid::new_v4().to_string(),
        sender,
        to,
        &canonical_json(&deploy.payload()),
    )
}

#[tokio::test]
async fn all_four_requests_round_trip() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let client = client_knowing(
        &[("b", server.port())],
        trust("client"),
        Duration::from_secs(30),
    );
    let b = NodeId("b".into());
    let service = ServiceId("svc-1".into());

    assert_eq!(client.alive_peers().await.len(), 1);
    let capabilities = client.capabilities(&b).await.unwrap();
    assert_eq!(capabilities[0].capability, "optical-probe");

    let status = client
        .deploy_image(&b, deployment("svc-1", "reader"))
        .await
        .unwrap();
    assert_eq!(status.state, ImageState::Instantiating);
    assert_eq!(status.node, b);
    let deployed = handler.deployments.lock().unwrap().clone();
    assert_eq!(deployed, vec![deployment("svc-1", "reader")]);

    let status = client.image_status(&b, &service, "reader").await.unwrap();
    assert_eq!(status.state, ImageState::Running);
    assert_eq!(status.container_id.as_deref(), Some("svc-1-reader"));

    client
        .terminate_image(&b, &service, "reader")
        .await
        .unwrap();
    assert_eq!(
        handler.terminated.lock().unwrap().clone(),
        vec![(service.clone(), "reader".to_owned())]
    );

    // A handler's refusal reaches the caller with its reason.
    let error = client
        .image_status(&b, &service, "unknown")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RemoteError::NotFound { reason, .. } if reason.contains("no image unknown")),
        "{error}"
    );
    // Unknown nodes are not asked at all.
    assert!(matches!(
        client.capabilities(&NodeId("nobody".into())).await,
        Err(RemoteError::UnknownNode(_))
    ));
    assert_eq!(server.stats().refused(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn capabilities_are_asked_again_only_when_the_digest_changes() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let store = Store::temporary().unwrap();
    let directory = PeerDirectory::open(
        node_info("client"),
        store.nodes.clone(),
        Liveness::default(),
    )
    .unwrap();
    let mut info = node_info("b");
    info.peer_port = server.port();
    info.capabilities_digest = motey::discovery::capabilities_digest(&handler.capabilities);
    directory.observe(info.clone(), 1, tokio::time::Instant::now());
    let client = PeerClient::new(directory.clone(), trust("client"), Duration::from_secs(30));
    let b = NodeId("b".into());

    client.capabilities(&b).await.unwrap();
    client.capabilities(&b).await.unwrap();
    assert_eq!(handler.calls(), 1, "the second answer came from the cache");

    info.capabilities_digest = "changed".into();
    directory.observe(info, 1, tokio::time::Instant::now());
    client.capabilities(&b).await.unwrap();
    assert_eq!(handler.calls(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_not_from_the_session_node_or_for_another_node_or_replayed_are_refused() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let endpoint = server.endpoint().to_owned();
    let tester = trust("tester");
    let mut raw = RawSession::open(&endpoint, "b", tester.as_ref()).await;
    let calls_after_handshake = handler.calls();

    // The session proved node tester: it may not speak as the owner.
    let (_, reply) = raw.request(&deploy_message("owner", "b")).await;
    let (code, message) = raw.code_of(&reply);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(
        message.contains("not the node of this session"),
        "{message}"
    );

    // A message for node c is refused by node b.
    let (_, reply) = raw.request(&deploy_message("tester", "c")).await;
    assert_eq!(raw.code_of(&reply).0, ErrorCode::Misdirected);

    // Stale, and garbage.
    let stale = String::from_utf8(deploy_message("tester", "b")).unwrap();
    let ts = stale
        .split("\"ts\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let stale = stale.replace(&format!("\"ts\":{ts}"), "\"ts\":1000");
    let (_, reply) = raw.request(stale.as_bytes()).await;
    let (code, message) = raw.code_of(&reply);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("clock"), "{message}");
    let (_, reply) = raw.request(b"\x00not json at all").await;
    assert_eq!(raw.code_of(&reply).0, ErrorCode::BadRequest);
    assert_eq!(
        handler.calls(),
        calls_after_handshake,
        "no refused message reached the handler"
    );

    // A valid message runs once; the same envelope sealed again is a replay.
    let valid = deploy_message("tester", "b");
    let (captured, reply) = raw.request(&valid).await;
    assert_eq!(reply[0].as_ref(), label::REPLY);
    noise::open(&mut raw.session, &reply[1..], 1 << 21).unwrap();
    let (_, reply) = raw.request(&valid).await;
    let (code, message) = raw.code_of(&reply);
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(message.contains("replay"), "{message}");
    assert_eq!(handler.deployments.lock().unwrap().len(), 1);

    // The captured frames played again on the same connection do not open (the
    // session's nonces moved on); the server drops that session.
    let replayed = exchange(&mut raw.socket, captured.clone()).await;
    assert_eq!(clear_code(&replayed), ErrorCode::Unauthorized);
    assert_eq!(handler.deployments.lock().unwrap().len(), 1);
    assert_eq!(server.stats().refused(), 6);
    server.shutdown().await;

    // Captured for node b, played to node c: c has no session for it.
    let other = cluster::shared(RecordingHandler::new("c"));
    let c = serve("c", other.clone()).await;
    let mut socket = ReqSocket::new();
    socket.connect(c.endpoint()).await.unwrap();
    let refused = exchange(&mut socket, captured).await;
    assert_eq!(clear_code(&refused), ErrorCode::Unauthorized);
    assert_eq!(other.calls(), 0);
    c.shutdown().await;
}

#[tokio::test]
async fn a_node_of_another_cluster_gets_no_session_and_learns_why() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let outsider = client_knowing(
        &[("b", server.port())],
        trust_with_key(
            "client",
            ClusterKey::from_secret("some other cluster secret"),
        ),
        Duration::from_secs(30),
    );
    let error = outsider
        .capabilities(&NodeId("b".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RemoteError::Refused { reason, .. } if reason.contains("another cluster")),
        "{error}"
    );
    assert_eq!(handler.calls(), 0);

    // Asked as node c, node b is refused by the client before any request.
    let requester = Requester::new(trust("a"), Duration::from_secs(30));
    let error = requester
        .call(
            server.endpoint(),
            &NodeId("c".into()),
            &Request::Capabilities,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CallError::WrongNode { found, .. } if found.0 == "b"),
        "{error}"
    );
    assert_eq!(handler.calls(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_version_1_request_is_refused_naming_the_upgrade() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let mut socket = ReqSocket::new();
    socket.connect(server.endpoint()).await.unwrap();
    let mut v1 = Envelope::new("capability_request", "old-1", "old-node", json!({}));
    v1.sign(&key());
    let reply = exchange(&mut socket, vec![Bytes::from(v1.to_bytes())]).await;
    assert_eq!(reply.len(), 1);
    let reply = Envelope::parse(&reply[0]).unwrap();
    assert_eq!(reply.id, "old-1");
    assert_eq!(reply.payload["code"], "unsupported_version");
    let message = reply.payload["message"].as_str().unwrap();
    assert!(message.contains("upgrade"), "{message}");
    assert_eq!(handler.calls(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_hanging_peer_costs_one_timeout_and_the_socket_is_replaced() {
    let handler = cluster::shared(RecordingHandler::hanging("b"));
    let server = serve("b", handler.clone()).await;
    let requester = Requester::new(trust("a"), Duration::from_millis(1500));
    let endpoint = server.endpoint().to_owned();
    let b = NodeId("b".into());

    let deploy = Request::DeployImage(Box::new(deployment("svc-1", "reader")));
    let error = requester.call(&endpoint, &b, &deploy).await.unwrap_err();
    assert!(matches!(error, CallError::Timeout(_)), "{error}");

    // The REQ socket stuck waiting for that answer is gone; a new one asks at once.
    for _ in 0..3 {
        let reply = requester
            .call(&endpoint, &b, &Request::Capabilities)
            .await
            .unwrap();
        assert!(matches!(reply, Reply::Capabilities { .. }));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_idle_past_its_last_deadline_is_reused_with_a_fresh_one() {
    let server = serve("b", cluster::shared(RecordingHandler::new("b"))).await;
    let requester = Requester::new(trust("a"), Duration::from_millis(300));
    let endpoint = server.endpoint().to_owned();
    let b = NodeId("b".into());
    for _ in 0..2 {
        let reply = requester.call(&endpoint, &b, &Request::Capabilities).await;
        assert!(matches!(reply, Ok(Reply::Capabilities { .. })), "{reply:?}");
        // Idle beyond the deadline of the request just answered.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(server.stats().handled(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_to_different_peers_do_not_wait_for_each_other() {
    let hanging = cluster::shared(RecordingHandler::hanging("slow"));
    let answering = cluster::shared(RecordingHandler::new("fast"));
    let slow = serve("slow", hanging).await;
    let fast = serve("fast", answering).await;
    let client = client_knowing(
        &[("slow", slow.port()), ("fast", fast.port())],
        trust("client"),
        Duration::from_secs(3),
    );
    let (slow_node, fast_node) = (NodeId("slow".into()), NodeId("fast".into()));
    let (stuck, answered) = tokio::join!(
        client.deploy_image(&slow_node, deployment("s", "a")),
        async {
            // Let the slow request take its socket first.
            tokio::task::yield_now().await;
            client.deploy_image(&fast_node, deployment("s", "b")).await
        }
    );
    assert!(
        matches!(stuck, Err(RemoteError::Unreachable { .. })),
        "{stuck:?}"
    );
    assert_eq!(answered.unwrap().node, NodeId("fast".into()));
    slow.shutdown().await;
    fast.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_vanishes_mid_request_and_restarts_is_reached_again() {
    let handler = cluster::shared(RecordingHandler::hanging("b"));
    let server = serve("b", handler).await;
    let port = server.port();
    let client = Arc::new(client_knowing(
        &[("b", port)],
        trust("client"),
        Duration::from_secs(2),
    ));
    let b = NodeId("b".into());

    // Warm a pooled connection, then leave a deployment hanging on it.
    client.capabilities(&b).await.unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        let b = b.clone();
        async move { client.deploy_image(&b, deployment("s", "a")).await }
    });
    cluster::eventually("the deployment reached the peer", || {
        server.stats().handled() == 2
    })
    .await;
    server.shutdown().await;
    let error = pending.await.unwrap().unwrap_err();
    assert!(matches!(error, RemoteError::Unreachable { .. }), "{error}");

    // The node comes back on the same port.
    let handler = cluster::shared(RecordingHandler::new("b"));
    let restarted = PeerServer::bind(
        &format!("tcp://127.0.0.1:{port}"),
        trust("b"),
        handler.clone() as Arc<dyn PeerHandler>,
    )
    .await
    .unwrap();
    let status = client.deploy_image(&b, deployment("s", "a")).await.unwrap();
    assert_eq!(status.state, ImageState::Instantiating);
    assert_eq!(handler.deployments.lock().unwrap().len(), 1);
    restarted.shutdown().await;
}

/// The Python reference client, against a real agent: with the cluster key it gets the
/// agent's capabilities; with another key it is refused.
#[tokio::test]
async fn the_python_reference_client_asks_an_agent_for_its_capabilities() {
    let secret = "the python client's cluster key, 32+";
    let agent = support::AgentProcess::start_without_images(
        "python-client",
        &[("MOTEY_CLUSTER_KEY", secret)],
    )
    .await;
    let python = system_tests::python::venv("peer-client-venv", &["pyzmq", "noiseprotocol"]);
    let script = system_tests::docker::repo_root().join("tests/peer_client.py");
    let endpoint = format!("tcp://127.0.0.1:{}", agent.peer_port);
    let run = |key: &str| {
        std::process::Command::new(&python)
            .arg(&script)
            .args([
                endpoint.as_str(),
                key,
                "python-client",
                agent.node_id.as_str(),
            ])
            .output()
            .expect("the reference client runs")
    };
    let answered = run(secret);
    let stdout = String::from_utf8_lossy(&answered.stdout);
    let stderr = String::from_utf8_lossy(&answered.stderr);
    assert!(answered.status.success(), "{stdout}\n{stderr}");
    let payload: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(payload["capabilities"].is_array(), "{payload}");
    assert_eq!(
        payload["digest"].as_str().map(str::len),
        Some(16),
        "{payload}"
    );

    let refused = run("another cluster's key entirely");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("proof does not hold"), "{stderr}");
}
