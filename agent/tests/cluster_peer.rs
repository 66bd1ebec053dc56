//! The peer protocol over real TCP sockets: the four requests round-trip; unsigned,
//! forged, replayed and stale messages are refused without reaching the handler; a peer
//! that hangs or vanishes mid-request costs a timeout, and the next request succeeds.
//! The other side of several tests is another ZeroMQ implementation (the `zeromq`
//! crate), so the agent's own ZMTP stays wire-compatible both ways.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::Arc;
use std::time::Duration;

use cluster::{key, node_info, RecordingHandler};
use motey::discovery::{Liveness, PeerDirectory};
use motey::domain::{ImageDeployment, ImageState, NodeId, ServiceId};
use motey::orchestrator::remote::{RemoteError, RemoteNodes};
use motey::peer::envelope::now_ms;
use motey::peer::{
    CallError, ClusterKey, Envelope, ErrorCode, PeerClient, PeerHandler, PeerServer, Received,
    Reply, Request, Requester,
};
use motey::store::Store;
use serde_json::json;
use zeromq::{ReqSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

async fn serve(node: &str, handler: Arc<RecordingHandler>) -> PeerServer {
    PeerServer::bind(
        "tcp://127.0.0.1:0",
        NodeId(node.into()),
        key(),
        handler as Arc<dyn PeerHandler>,
    )
    .await
    .unwrap()
}

/// A client node whose directory knows `peers` (id, peer port) as alive.
fn client_knowing(peers: &[(&str, u16)], key: ClusterKey, timeout: Duration) -> PeerClient {
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
    PeerClient::new(directory, key, timeout)
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

/// Sends raw bytes on a REQ socket of its own and returns the decoded reply.
async fn send_raw(endpoint: &str, body: Vec<u8>) -> Envelope {
    let mut socket = ReqSocket::new();
    socket.connect(endpoint).await.unwrap();
    socket.send(ZmqMessage::from(body)).await.unwrap();
    let reply = tokio::time::timeout(cluster::PATIENCE, socket.recv())
        .await
        .expect("the server answers refused messages too")
        .unwrap();
    let bytes: Vec<u8> = reply.try_into().unwrap();
    Envelope::parse(&bytes).unwrap()
}

fn error_code(reply: &Envelope) -> ErrorCode {
    match Reply::from_parts(&reply.kind, reply.payload.clone()).unwrap() {
        Reply::Error { code, .. } => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn signed_request(request: &Request, key: &ClusterKey) -> Envelope {
    let mut envelope = Envelope::new(
        request.kind(),
        uuid::Uuid::new_v4().to_string(),
        "tester",
        request.payload(),
    );
    envelope.sign(key);
    envelope
}

#[tokio::test]
async fn all_four_requests_round_trip() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let client = client_knowing(&[("b", server.port())], key(), Duration::from_secs(30));
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
        matches!(&error, RemoteError::Refused { reason, .. } if reason.contains("no image unknown")),
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
    let client = PeerClient::new(directory.clone(), key(), Duration::from_secs(30));
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
async fn unsigned_forged_replayed_and_stale_messages_are_refused_and_not_executed() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let endpoint = server.endpoint().to_owned();
    let deploy = Request::DeployImage(Box::new(deployment("svc-1", "reader")));

    // No MAC at all.
    let mut unsigned = signed_request(&deploy, &key());
    unsigned.mac = None;
    let reply = send_raw(&endpoint, unsigned.to_bytes()).await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthorized);
    assert_eq!(reply.id, unsigned.id, "the refusal names the request");

    // Signed with another cluster's key.
    let forged = signed_request(&deploy, &ClusterKey::from_secret("not the cluster's key!"));
    let reply = send_raw(&endpoint, forged.to_bytes()).await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthorized);

    // Signed correctly, then altered on the way.
    let mut altered = signed_request(&deploy, &key());
    altered.payload["image"]["image"] = json!("evil/miner:latest");
    let reply = send_raw(&endpoint, altered.to_bytes()).await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthorized);

    // A stale timestamp, correctly signed.
    let mut stale = Envelope::new(deploy.kind(), "stale-1", "tester", deploy.payload());
    stale.ts = now_ms() - 10 * 60 * 1000;
    stale.sign(&key());
    let reply = send_raw(&endpoint, stale.to_bytes()).await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthorized);
    assert!(reply.payload["message"].as_str().unwrap().contains("clock"));

    // Garbage.
    let reply = send_raw(&endpoint, b"\x00not json at all".to_vec()).await;
    assert_eq!(error_code(&reply), ErrorCode::BadRequest);

    assert_eq!(handler.calls(), 0, "no refused message reached the handler");
    assert!(handler.deployments.lock().unwrap().is_empty());

    // A valid message runs once; the same bytes again are a replay.
    let valid = signed_request(&deploy, &key()).to_bytes();
    let reply = send_raw(&endpoint, valid.clone()).await;
    assert_eq!(reply.kind, "deploy_image_reply");
    reply.verify(&key()).unwrap();
    let replayed = send_raw(&endpoint, valid).await;
    assert_eq!(error_code(&replayed), ErrorCode::Unauthorized);
    assert!(replayed.payload["message"]
        .as_str()
        .unwrap()
        .contains("replay"));
    assert_eq!(handler.deployments.lock().unwrap().len(), 1);
    assert_eq!(server.stats().refused(), 6);
    assert_eq!(server.stats().handled(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_node_with_another_key_is_refused_and_learns_why() {
    let handler = cluster::shared(RecordingHandler::new("b"));
    let server = serve("b", handler.clone()).await;
    let outsider = client_knowing(
        &[("b", server.port())],
        ClusterKey::from_secret("some other cluster secret"),
        Duration::from_secs(30),
    );
    let error = outsider
        .capabilities(&NodeId("b".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, RemoteError::Refused { reason, .. } if reason.contains("unauthorized")),
        "{error}"
    );
    assert_eq!(handler.calls(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_hanging_peer_costs_one_timeout_and_the_socket_is_replaced() {
    let handler = cluster::shared(RecordingHandler::hanging("b"));
    let server = serve("b", handler.clone()).await;
    let requester = Requester::new(NodeId("a".into()), key(), Duration::from_millis(1500));
    let endpoint = server.endpoint().to_owned();

    let deploy = Request::DeployImage(Box::new(deployment("svc-1", "reader")));
    let error = requester.call(&endpoint, &deploy).await.unwrap_err();
    assert!(matches!(error, CallError::Timeout(_)), "{error}");

    // The REQ socket stuck waiting for that answer is gone; a new one asks at once.
    for _ in 0..3 {
        let reply = requester
            .call(&endpoint, &Request::Capabilities)
            .await
            .unwrap();
        assert!(matches!(reply, Reply::Capabilities { .. }));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_socket_idle_past_its_last_deadline_is_reused_with_a_fresh_one() {
    let server = serve("b", cluster::shared(RecordingHandler::new("b"))).await;
    let requester = Requester::new(NodeId("a".into()), key(), Duration::from_millis(300));
    let endpoint = server.endpoint().to_owned();
    for _ in 0..2 {
        let reply = requester.call(&endpoint, &Request::Capabilities).await;
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
        key(),
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
        key(),
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
        b.clone(),
        key(),
        handler.clone() as Arc<dyn PeerHandler>,
    )
    .await
    .unwrap();
    let status = client.deploy_image(&b, deployment("s", "a")).await.unwrap();
    assert_eq!(status.state, ImageState::Instantiating);
    assert_eq!(handler.deployments.lock().unwrap().len(), 1);
    restarted.shutdown().await;
}

#[tokio::test]
async fn the_client_talks_to_another_zeromq_implementation() {
    // A ROUTER socket of the zeromq crate, answering as a peer server would.
    let mut router = RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let answering = tokio::spawn(async move {
        for _ in 0..2 {
            let mut frames = router.recv().await.unwrap().into_vec();
            let body = frames.pop().unwrap();
            let request = Received::parse(&body).unwrap();
            request.verify(&body, &key()).unwrap();
            let reply = Reply::Capabilities {
                digest: "0123456789abcdef".into(),
                capabilities: Vec::new(),
            };
            let body = Envelope::new(reply.kind(), request.id.as_ref(), "router", reply.payload())
                .signed_bytes(&key());
            let mut out = ZmqMessage::from(body);
            for frame in frames.into_iter().rev() {
                out.push_front(frame);
            }
            router.send(out).await.unwrap();
        }
    });
    let requester = Requester::new(NodeId("a".into()), key(), Duration::from_secs(30));
    // The second request goes over the pooled connection.
    for _ in 0..2 {
        let reply = requester
            .call(&endpoint, &Request::Capabilities)
            .await
            .unwrap();
        assert!(matches!(reply, Reply::Capabilities { .. }), "{reply:?}");
    }
    answering.await.unwrap();
}
