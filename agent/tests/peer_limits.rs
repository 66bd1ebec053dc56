//! The peer port's limits, attacked over real TCP: handshakes over the session cap are
//! answered `busy`, and a handshake left unfinished gives its place back; an idle session
//! is forgotten after the idle timeout, one waiting for its own slow answer is not, and a
//! client whose pooled session was forgotten so just makes a new one; a client pipelining
//! requests in one session is answered `busy` beyond its share; a node with many
//! requests for one peer stays under its share of connections. Against a real `motey`
//! process: connections over the cap of one address are closed at once while another
//! address still gets in, 300 half-open connections leave its memory small and its REST
//! API and peer port answering, and 1,000 garbage messages do not write 1,000 warnings.
//!
//! The `zeromq` crate gives a server no remote address per connection and no way to close
//! one, and reads every message whole: the agent's front on the peer port holds the caps
//! (`src/front.rs`); closing an idle connection and the read budget of unfinished
//! messages are not enforced (see PROTOCOL.md, Limits).

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster::{trust, RecordingHandler, PATIENCE};
use motey::domain::{ImageDeployment, NodeId, ServiceId};
use motey::peer::envelope::{canonical_json, peer_message};
use motey::peer::noise::{self, label, Initiator};
use motey::peer::{ErrorCode, PeerHandler, PeerServer, Reply, Request, Requester, ServerOptions};
use serde_json::json;
use support::AgentProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use zeromq::{DealerSocket, ReqSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

async fn serve_with(handler: RecordingHandler, options: ServerOptions) -> PeerServer {
    PeerServer::bind_with(
        "tcp://127.0.0.1:0",
        trust("b"),
        Arc::new(handler) as Arc<dyn PeerHandler>,
        options,
    )
    .await
    .unwrap()
}

fn address(endpoint: &str) -> SocketAddr {
    endpoint.strip_prefix("tcp://").unwrap().parse().unwrap()
}

/// A TCP connection to `server` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether the server sent its ZeroMQ greeting on this connection.
async fn greeted(stream: &mut TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tokio::time::timeout(PATIENCE, stream.read(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0xff,
        Ok(_) => false,
        Err(_) => panic!("the server neither greeted nor closed the connection"),
    }
}

fn deployment(service: &str) -> ImageDeployment {
    ImageDeployment {
        service_id: ServiceId(service.into()),
        service_name: "metering".into(),
        owner: NodeId("a".into()),
        image: serde_json::from_value(
            json!({"id": "reader", "image": "motey/meter-reader:latest"}),
        )
        .unwrap(),
        version: 1,
    }
}

async fn exchange(socket: &mut ReqSocket, frames: Vec<Bytes>) -> Vec<Bytes> {
    socket
        .send(ZmqMessage::try_from(frames).unwrap())
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, socket.recv())
        .await
        .expect("the server answers")
        .unwrap()
        .into_vec()
}

/// Sends a hello on a connection of its own: the socket and the first frame answered.
async fn hello(endpoint: &str) -> (ReqSocket, Vec<Bytes>) {
    let mut socket = ReqSocket::new();
    socket.connect(endpoint).await.unwrap();
    let (_, hello) = Initiator::start(trust("a").as_ref()).unwrap();
    let reply = exchange(&mut socket, vec![label::HELLO.into(), hello.into()]).await;
    (socket, reply)
}

fn clear_code(reply: &[Bytes]) -> ErrorCode {
    assert_eq!(reply[0].as_ref(), label::ERROR, "{reply:?}");
    let body: serde_json::Value = serde_json::from_slice(&reply[1]).unwrap();
    serde_json::from_value(body["code"].clone()).unwrap()
}

#[tokio::test]
async fn handshakes_over_the_session_cap_are_answered_busy() {
    let options = ServerOptions {
        max_connections: 3,
        handshake_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = serve_with(RecordingHandler::new("b"), options).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (socket, reply) = hello(server.endpoint()).await;
        assert_eq!(reply[0].as_ref(), label::WELCOME);
        held.push(socket);
    }
    let (_, reply) = hello(server.endpoint()).await;
    assert_eq!(clear_code(&reply), ErrorCode::Busy);
    assert_eq!(server.stats().connections_refused(), 1);
    assert_eq!(server.stats().connections(), 3);

    // Handshakes never finished give their places back.
    cluster::eventually("the unfinished handshakes are forgotten", || {
        server.stats().connections() == 0
    })
    .await;
    let (_, reply) = hello(server.endpoint()).await;
    assert_eq!(reply[0].as_ref(), label::WELCOME);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_is_forgotten_but_one_awaiting_its_answer_is_not() {
    let options = ServerOptions {
        idle_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = serve_with(RecordingHandler::hanging("b"), options).await;
    let b = NodeId("b".into());
    let idle = Requester::new(trust("a"), PATIENCE);
    let reply = idle
        .call(server.endpoint(), &b, &Request::Capabilities)
        .await;
    assert!(matches!(reply, Ok(Reply::Capabilities { .. })), "{reply:?}");
    cluster::eventually("the idle session is forgotten", || {
        server.stats().closed_idle() == 1
    })
    .await;
    assert_eq!(server.stats().connections(), 0);

    // A deployment the handler never finishes: the client waits for it, not idles.
    let waiting = Requester::new(trust("a"), PATIENCE);
    let endpoint = server.endpoint().to_owned();
    let pending = tokio::spawn(async move {
        let deploy = Request::DeployImage(Box::new(deployment("svc-1")));
        waiting.call(&endpoint, &NodeId("b".into()), &deploy).await
    });
    cluster::eventually("the deployment is in progress", || {
        server.stats().handled() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.stats().closed_idle(), 1, "still kept");
    assert_eq!(server.stats().connections(), 1);
    pending.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_pooled_session_forgotten_for_idling_costs_the_client_nothing() {
    let options = ServerOptions {
        idle_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    };
    let server = serve_with(RecordingHandler::new("b"), options).await;
    let requester = Requester::new(trust("a"), PATIENCE);
    let b = NodeId("b".into());
    let reply = requester
        .call(server.endpoint(), &b, &Request::Capabilities)
        .await;
    assert!(matches!(reply, Ok(Reply::Capabilities { .. })), "{reply:?}");
    cluster::eventually("the pooled session is forgotten for idling", || {
        server.stats().closed_idle() == 1
    })
    .await;
    let reply = requester
        .call(server.endpoint(), &b, &Request::Capabilities)
        .await;
    assert!(matches!(reply, Ok(Reply::Capabilities { .. })), "{reply:?}");
    assert_eq!(server.stats().handled(), 2);
    server.shutdown().await;
}

/// Sends frames on a DEALER socket as a REQ client would frame them (after the empty
/// delimiter), without waiting for an answer.
async fn send_delimited(socket: &mut DealerSocket, frames: Vec<Bytes>) {
    let mut message = ZmqMessage::from(Bytes::new());
    for frame in frames {
        message.push_back(frame);
    }
    socket.send(message).await.unwrap();
}

async fn receive_delimited(socket: &mut DealerSocket) -> Vec<Bytes> {
    let mut frames = tokio::time::timeout(PATIENCE, socket.recv())
        .await
        .expect("the server answers")
        .unwrap()
        .into_vec();
    assert!(frames.remove(0).is_empty(), "the delimiter first");
    frames
}

fn deploy_message(service: &str) -> Vec<u8> {
    let deploy = Request::DeployImage(Box::new(deployment(service)));
    peer_message(
        deploy.kind(),
        &uuid::Uuid::new_v4().to_string(),
        "a",
        "b",
        &canonical_json(&deploy.payload()),
    )
}

#[tokio::test]
async fn a_session_pipelining_requests_is_answered_busy_beyond_its_share() {
    let options = ServerOptions {
        max_in_flight_per_connection: 2,
        ..ServerOptions::default()
    };
    let server = serve_with(RecordingHandler::hanging("b"), options).await;
    let client = trust("a");
    let mut socket = DealerSocket::new();
    socket.connect(server.endpoint()).await.unwrap();
    let (initiator, hello) = Initiator::start(client.as_ref()).unwrap();
    send_delimited(&mut socket, vec![label::HELLO.into(), hello.into()]).await;
    let welcome = receive_delimited(&mut socket).await;
    let (mut session, _, finish) = initiator.finish(client.as_ref(), &welcome[1]).unwrap();
    let mut first = vec![Bytes::from_static(label::FINISH), Bytes::from(finish)];
    first.extend(noise::seal(&mut session, &deploy_message("svc-1")));
    send_delimited(&mut socket, first).await;
    // Two more without waiting: the second is still within the share, the third is not.
    for service in ["svc-2", "svc-3"] {
        let mut frames = vec![Bytes::from_static(label::REQUEST)];
        frames.extend(noise::seal(&mut session, &deploy_message(service)));
        send_delimited(&mut socket, frames).await;
    }
    // The deployments hang: the only answer is the refusal, sealed in the session.
    let reply = receive_delimited(&mut socket).await;
    assert_eq!(reply[0].as_ref(), label::REPLY, "{reply:?}");
    let plaintext = noise::open(&mut session, &reply[1..], 1 << 21).unwrap();
    let envelope = motey::peer::Received::parse(&plaintext).unwrap();
    match Reply::from_parts(&envelope.kind, envelope.payload()).unwrap() {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::Busy);
            assert!(message.contains("this connection"), "{message}");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(server.stats().handled(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn many_requests_for_one_peer_stay_under_its_share_of_connections() {
    let server = serve_with(RecordingHandler::new("b"), ServerOptions::default()).await;
    let requester = Requester::new(trust("a"), PATIENCE);
    let b = NodeId("b".into());
    let requests: Vec<Request> = (0..40)
        .map(|n| Request::DeployImage(Box::new(deployment(&format!("svc-{n}")))))
        .collect();
    let answers = futures::future::join_all(
        requests
            .iter()
            .map(|r| requester.call(server.endpoint(), &b, r)),
    )
    .await;
    for answer in answers {
        assert!(matches!(answer, Ok(Reply::Deployed(_))), "{answer:?}");
    }
    assert!(
        server.stats().connections() <= 8,
        "{}",
        server.stats().connections()
    );
    assert_eq!(server.stats().connections_refused(), 0);
    assert_eq!(server.stats().handled(), 40);
    server.shutdown().await;
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    system_tests::bench::rss_kib(pid) / 1024
}

fn peer_endpoint(agent: &AgentProcess) -> String {
    format!("tcp://127.0.0.1:{}", agent.peer_port)
}

#[tokio::test]
async fn half_open_connections_leave_the_agent_small_and_answering() {
    let cluster_key = "a-cluster-key-for-the-limits-test";
    let agent = AgentProcess::start_without_images(
        "half-open",
        &[
            ("MOTEY_CLUSTER_KEY", cluster_key),
            // Room for all of them, so that what they hold is measured, not refused.
            ("MOTEY_ZEROMQ_MAX_CONNECTIONS", "512"),
        ],
    )
    .await;
    let pid = agent.pid().unwrap();
    let at = address(&peer_endpoint(&agent));
    let before = rss_mib(pid);

    // 300 connections from 20 addresses: silent, or sending the first 10 bytes of a
    // greeting and no more.
    let mut held = Vec::new();
    for n in 0..300 {
        let from = format!("127.0.0.{}", 2 + n % 20);
        let mut stream = connect_from(&from, at).await;
        if n % 2 == 1 {
            let _ = stream
                .write_all(&[0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f])
                .await;
        }
        held.push(stream);
    }
    for stream in &mut held {
        assert!(greeted(stream).await, "a connection was refused");
    }

    let health = support::client()
        .get(agent.url("/health"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let requester = Requester::new(
        cluster::trust_with_key("tester", motey::peer::ClusterKey::from_secret(cluster_key)),
        PATIENCE,
    );
    let reply = requester
        .call(
            &peer_endpoint(&agent),
            &NodeId(agent.node_id.clone()),
            &Request::Capabilities,
        )
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Capabilities { .. }), "{reply:?}");

    let during = rss_mib(pid);
    assert!(
        during.saturating_sub(before) < 32,
        "{during} MiB resident with 300 half-open connections ({before} MiB before)"
    );
    drop(held);
}

/// Whether the agent closes `stream` within a second (it was over a cap).
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The greeting of an admitted connection.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn connections_over_the_cap_of_one_address_are_closed_while_others_get_in() {
    let agent = AgentProcess::start_without_images(
        "per-address",
        &[("MOTEY_ZEROMQ_MAX_CONNECTIONS_PER_ADDRESS", "4")],
    )
    .await;
    let at = address(&peer_endpoint(&agent));
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.9", at).await);
    }
    for stream in &mut held {
        assert!(
            greeted(stream).await,
            "a connection under the cap was refused"
        );
    }
    let mut fifth = connect_from("127.0.0.9", at).await;
    assert!(
        closed_at_once(&mut fifth).await,
        "a fifth connection from one address got in"
    );
    let mut other = connect_from("127.0.0.10", at).await;
    assert!(greeted(&mut other).await, "another address was refused");
    // A place given back is taken again.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect_from("127.0.0.9", at).await;
    assert!(
        greeted(&mut again).await,
        "the freed place was not given again"
    );
    let log = agent.log();
    assert!(
        log.contains("peer port: connection over the caps closed"),
        "{log}"
    );
}

#[tokio::test]
async fn a_frame_declared_larger_than_memory_closes_its_connection_not_the_agent() {
    let agent = AgentProcess::start_without_images("huge-frame", &[]).await;
    let at = address(&peer_endpoint(&agent));
    let mut stream = connect_from("127.0.0.1", at).await;
    let mut claim = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    claim.resize(64, 0);
    claim.push(0x02); // a long frame of 32 TiB
    claim.extend_from_slice(&(1u64 << 45).to_be_bytes());
    claim.extend_from_slice(b"xxxxxxxxxx");
    let _ = stream.write_all(&claim).await;
    assert!(closed_at_once(&mut stream).await, "the connection was kept");
    let health = support::client()
        .get(agent.url("/health"))
        .send()
        .await
        .expect("the agent still answers");
    assert!(health.status().is_success());
    let mut other = connect_from("127.0.0.1", at).await;
    assert!(greeted(&mut other).await, "the peer port still serves");
}

#[tokio::test]
async fn a_thousand_garbage_messages_write_a_few_warnings() {
    let agent = AgentProcess::start_without_images("garbage", &[]).await;
    let mut socket = ReqSocket::new();
    socket.connect(&peer_endpoint(&agent)).await.unwrap();
    // Every one is answered (bad_request), so the last answer means all were refused.
    for n in 0..1000 {
        let garbage = Bytes::from(format!("not a frame of the protocol {n}"));
        let reply = exchange(&mut socket, vec![garbage]).await;
        assert_eq!(clear_code(&reply), ErrorCode::BadRequest);
    }
    let log = agent.log();
    let warnings = log
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("unknown framing"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for 1,000 malformed messages:\n{log}"
    );
}
