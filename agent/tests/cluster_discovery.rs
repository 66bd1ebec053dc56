//! Node discovery against real brokers: a mosquitto process on a free loopback port and
//! the embedded rumqttd broker. Agents run in-process, each with its own temporary store.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{
    eventually, eventually_async, fast_liveness, fast_settings, key, Mosquitto, TestNode,
};
use motey::discovery::embedded_broker::{self, BrokerSettings};
use motey::discovery::{kinds, BrokerStatus, Liveness, MetaPayload, PeerEvent, PeerState};
use motey::domain::Capability;
use motey::peer::{ClusterKey, Envelope};
use rumqttc::{AsyncClient, MqttOptions, QoS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_and_a_graceful_leave_is_seen() {
    let broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let mut b = TestNode::start("b", settings.clone(), fast_liveness());
    let c = TestNode::start("c", settings, fast_liveness());

    eventually("every node sees the two others", || {
        a.sees_alive(&["b", "c"]) && b.sees_alive(&["a", "c"]) && c.sees_alive(&["a", "b"])
    })
    .await;
    // Listed with this node first, and kept in the store.
    let listed = a.directory.list();
    assert!(listed[0].this_node && listed[0].info.id.as_str() == "a");
    assert_eq!(listed.len(), 3);
    assert!(listed[1..].iter().all(|peer| peer.last_seen.is_some()));
    let stored: Vec<String> = a
        .store
        .nodes
        .list()
        .unwrap()
        .into_iter()
        .map(|info| info.id.0)
        .collect();
    assert_eq!(stored.len(), 3, "{stored:?}");

    let mut events = a.directory.subscribe();
    b.leave().await;
    eventually("the others forget the node that left", || {
        a.peer("b").is_none() && c.peer("b").is_none()
    })
    .await;
    assert!(a.store.nodes.get("b").unwrap().is_none());
    let mut left = false;
    while let Ok(event) = events.try_recv() {
        left |= event == PeerEvent::Left(b.id.clone());
    }
    assert!(left, "a Left event was sent");
    assert!(a.sees_alive(&["c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_marked_gone_by_its_last_will() {
    let broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    // Expiry far away: only the last will can mark the node gone within the test.
    let slow_expiry = Liveness {
        suspect_after: Duration::from_secs(600),
        gone_after: Duration::from_secs(1200),
    };
    let a = TestNode::start("a", settings.clone(), slow_expiry);
    let mut b = TestNode::start("b", settings, slow_expiry);
    eventually("a and b see each other", || {
        a.sees_alive(&["b"]) && b.sees_alive(&["a"])
    })
    .await;

    b.crash();
    eventually("a marks b gone", || {
        a.state_of("b") == Some(PeerState::Gone)
    })
    .await;
    let reason = a.peer("b").unwrap().reason.unwrap();
    assert!(reason.contains("last will"), "{reason}");
    // Gone, not forgotten: the orchestrator still needs to know what ran there.
    assert_eq!(
        a.store.nodes.get("b").unwrap().map(|info| info.id.0),
        Some("b".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_becomes_suspect_then_gone_and_returns() {
    let broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let mut events = a.directory.subscribe();

    // A node that announces itself once and then says nothing while staying connected.
    let mut options = MqttOptions::new("silent-node", "127.0.0.1", broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let polling = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let announce = || {
        let meta = MetaPayload {
            node: cluster::node_info("silent"),
            epoch: 1,
            instance: "silent".into(),
            phase: None,
        };
        Envelope::new(
            kinds::NODE_META,
            uuid::Uuid::new_v4().to_string(),
            "silent",
            serde_json::to_value(meta).unwrap(),
        )
        .signed_bytes(&key())
    };
    let topic = format!("{}/nodes/meta/silent", settings.topic_prefix);
    eventually("a is connected", || a.is_connected()).await;
    client
        .publish(&topic, QoS::AtLeastOnce, false, announce())
        .await
        .unwrap();
    eventually("a sees the silent node", || a.sees_alive(&["silent"])).await;
    eventually("the silent node becomes suspect", || {
        a.state_of("silent") == Some(PeerState::Suspect)
    })
    .await;
    eventually("then gone", || {
        a.state_of("silent") == Some(PeerState::Gone)
    })
    .await;
    let reason = a.peer("silent").unwrap().reason.unwrap();
    assert!(reason.contains("not heard of"), "{reason}");

    client
        .publish(&topic, QoS::AtLeastOnce, false, announce())
        .await
        .unwrap();
    eventually("it is alive again when it speaks", || {
        a.sees_alive(&["silent"])
    })
    .await;
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(match event {
            PeerEvent::Alive { previous, .. } => format!("alive after {previous:?}"),
            PeerEvent::Suspect(_) => "suspect".into(),
            PeerEvent::Gone { .. } => "gone".into(),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen,
        vec![
            "alive after None",
            "suspect",
            "gone",
            "alive after Some(Gone)"
        ]
    );
    polling.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_re_converges_after_the_broker_restarts() {
    let mut broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let b = TestNode::start("b", settings.clone(), fast_liveness());
    eventually("a and b see each other", || {
        a.sees_alive(&["b"]) && b.sees_alive(&["a"])
    })
    .await;

    broker.stop();
    eventually("both notice the broker is gone", || {
        !a.is_connected() && !b.is_connected()
    })
    .await;
    let status = a.discovery.as_ref().unwrap().status().borrow().clone();
    assert!(
        matches!(status, BrokerStatus::Disconnected { .. }),
        "{status:?}"
    );
    // Longer than the gone time without a broker: a node that cannot hear the others
    // does not declare them gone.
    tokio::time::sleep(fast_liveness().gone_after + Duration::from_secs(1)).await;
    assert_eq!(a.state_of("b"), Some(PeerState::Alive));

    broker.restart();
    eventually("both reconnect", || a.is_connected() && b.is_connected()).await;
    let c = TestNode::start("c", settings, fast_liveness());
    eventually("the cluster, with a newcomer, converges again", || {
        a.sees_alive(&["b", "c"]) && b.sees_alive(&["a", "c"]) && c.sees_alive(&["a", "b"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_key_is_not_admitted() {
    let broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let b = TestNode::start("b", settings.clone(), fast_liveness());
    let mut intruder = TestNode::start_with_key(
        "intruder",
        settings,
        fast_liveness(),
        ClusterKey::from_secret("another cluster's secret key"),
    );
    eventually("a and b see each other", || {
        a.sees_alive(&["b"]) && b.sees_alive(&["a"])
    })
    .await;
    eventually("the intruder is connected", || intruder.is_connected()).await;
    // The intruder's leave (and its last will) must not make anyone forget b either.
    intruder.crash();
    eventually("a and b still see only each other", || {
        a.directory.list().len() == 2 && b.directory.list().len() == 2
    })
    .await;
    assert!(a.peer("intruder").is_none());
    assert!(intruder.sees_alive(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_changes_are_announced_to_the_others() {
    let broker = Mosquitto::start();
    let settings = fast_settings(broker.port());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let b = TestNode::start("b", settings, fast_liveness());
    eventually("a and b see each other", || a.sees_alive(&["b"])).await;

    let probe = Capability {
        capability: "optical-probe".into(),
        capability_type: "hardware".into(),
    };
    let digest = motey::discovery::capabilities_digest(std::slice::from_ref(&probe));
    b.discovery
        .as_ref()
        .unwrap()
        .set_capabilities(std::slice::from_ref(&probe));
    eventually("a learns b's new capabilities digest", || {
        a.peer("b")
            .is_some_and(|peer| peer.info.capabilities_digest == digest)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_discover_each_other_through_the_embedded_broker() {
    let broker = embedded_broker::start(BrokerSettings::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let port = broker.client_addr().port();
    let mut settings = fast_settings(port);
    settings.credentials = Some(broker.credentials().clone());
    let a = TestNode::start("a", settings.clone(), fast_liveness());
    let mut b = TestNode::start("b", settings.clone(), fast_liveness());
    let mut c = TestNode::start("c", settings, fast_liveness());
    eventually("every node sees the two others", || {
        a.sees_alive(&["b", "c"]) && b.sees_alive(&["a", "c"]) && c.sees_alive(&["a", "b"])
    })
    .await;

    b.leave().await;
    eventually("a forgets b, which left", || a.peer("b").is_none()).await;
    c.crash();
    eventually("a marks c gone", || {
        a.state_of("c") == Some(PeerState::Gone)
    })
    .await;
    let reason = a.peer("c").unwrap().reason.unwrap();
    assert!(reason.contains("last will"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_refuses_anonymous_and_wrong_password_clients() {
    let mut settings = BrokerSettings::new("127.0.0.1:0".parse().unwrap());
    settings.credentials = ("motey".into(), "s3cret".into());
    let broker = embedded_broker::start(settings).await.unwrap();
    let port = broker.client_addr().port();

    let mut wrong = fast_settings(port);
    wrong.credentials = Some(("motey".into(), "wrong".into()));
    let refused = TestNode::start("refused", wrong, fast_liveness());
    let anonymous = TestNode::start("anonymous", fast_settings(port), fast_liveness());
    let mut right = fast_settings(port);
    right.credentials = Some(("motey".into(), "s3cret".into()));
    let admitted = TestNode::start("admitted", right, fast_liveness());

    eventually("the node with the right password connects", || {
        admitted.is_connected()
    })
    .await;
    for node in [&refused, &anonymous] {
        let mut status = node.discovery.as_ref().unwrap().status();
        eventually("the others are refused", || {
            matches!(
                &*status.borrow_and_update(),
                BrokerStatus::Disconnected { .. }
            )
        })
        .await;
        assert!(!node.is_connected());
    }
    assert!(admitted
        .alive_ids()
        .iter()
        .all(|id| id != "refused" && id != "anonymous"));
}

/// A `motey start` process, killed when dropped.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_on_the_embedded_broker_do_not_lock_out_a_reconnecting_node() {
    let dir = tempfile::tempdir().unwrap();
    let (api_port, mqtt_port) = (cluster::free_port(), cluster::free_port());
    let settings = {
        let mut settings = fast_settings(mqtt_port);
        // The login every holder of the cluster key derives; nothing is configured.
        settings.credentials = Some((
            motey::discovery::DERIVED_BROKER_USER.into(),
            key().derive_secret("motey mqtt broker password"),
        ));
        settings
    };
    // Started as a service manager would, at a soft limit of 1024 open files.
    let _agent = Agent(
        std::process::Command::new("sh")
            .args(["-c", "ulimit -Sn 1024 && exec \"$0\" start"])
            .arg(env!("CARGO_BIN_EXE_motey"))
            .env("MOTEY_GENERAL_DATA_DIR", dir.path())
            .env("MOTEY_GENERAL_NODE_ID", "broker-host")
            .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
            .env("MOTEY_WEBSERVER_PORT", api_port.to_string())
            .env("MOTEY_WEBSERVER_TOKEN", "test-token-0123456789")
            .env("MOTEY_ZEROMQ_PEER_PORT", cluster::free_port().to_string())
            .env("MOTEY_MQTT_PORT", mqtt_port.to_string())
            .env("MOTEY_MQTT_TOPIC_PREFIX", &settings.topic_prefix)
            .env("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1")
            .env("MOTEY_CLUSTER_KEY", "the cluster secret of the tests")
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let nodes = format!("http://127.0.0.1:{api_port}/v1/nodes");
    let http = reqwest::Client::new();
    let node_ids = || async {
        let Ok(response) = http
            .get(&nodes)
            .bearer_auth("test-token-0123456789")
            .send()
            .await
        else {
            return Vec::new();
        };
        let listed: serde_json::Value = response.json().await.unwrap_or_default();
        listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|node| node["state"] == "alive")
            .filter_map(|node| node["id"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    eventually_async("the agent serves", || async {
        !node_ids().await.is_empty()
    })
    .await;

    // Raw sockets that never send CONNECT.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(socket) = tokio::net::TcpStream::connect(("127.0.0.1", mqtt_port)).await {
            idle.push(socket);
        }
    }
    let node = TestNode::start("returning", settings, fast_liveness());
    // Well within the minute the old broker held each silent socket for.
    let rejoined = tokio::time::timeout(Duration::from_secs(30), async {
        while !(node.sees_alive(&["broker-host"])
            && node_ids().await.iter().any(|id| id == "returning"))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        rejoined.is_ok(),
        "the returning node was locked out:\n{}",
        std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
    );
    drop(idle);
}

/// A self-signed certificate for localhost and 127.0.0.1, as a server configuration and
/// as the PEM file clients trust.
fn broker_certificate(
    dir: &std::path::Path,
) -> (std::sync::Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let path = dir.join("broker-cert.pem");
    std::fs::write(&path, generated.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![generated.cert.der().clone()], key)
    .unwrap();
    (std::sync::Arc::new(config), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_embedded_broker_speaks_only_tls_under_per_address_caps() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, certificate) = broker_certificate(dir.path());
    let mut settings = BrokerSettings::new("0.0.0.0:0".parse().unwrap());
    settings.credentials = ("motey".into(), "s3cret".into());
    settings.max_connections_per_address = 4;
    settings.tls = Some(tls);
    let broker = embedded_broker::start(settings).await.unwrap();
    assert!(broker.serves_tls());
    let port = broker.local_addr().port();
    let node_settings = |tls: bool| {
        let mut settings = fast_settings(port);
        settings.credentials = Some(("motey".into(), "s3cret".into()));
        settings.tls = tls.then(|| motey::discovery::MqttTls {
            ca_file: certificate.clone(),
            client_cert_file: None,
            client_key_file: None,
        });
        settings
    };

    let a = TestNode::start("a", node_settings(true), fast_liveness());
    let b = TestNode::start("b", node_settings(true), fast_liveness());
    eventually("two nodes meet over TLS", || {
        a.sees_alive(&["b"]) && b.sees_alive(&["a"])
    })
    .await;
    let plain = TestNode::start("plain", node_settings(false), fast_liveness());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!plain.is_connected(), "a client without TLS got in");
    assert!(!a.sees_alive(&["plain"]));
    drop(plain);

    // Two silent sockets fill this address's four places beside a and b: a third node is
    // closed at once, until the handshake deadline gives the places back.
    let mut silent = Vec::new();
    while silent.len() < 2 {
        silent.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = TestNode::start("late", node_settings(true), fast_liveness());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !late.is_connected(),
        "a connection over the per-address cap got in"
    );
    eventually(
        "the late node gets in once the silent sockets are dropped",
        || late.sees_alive(&["a", "b"]),
    )
    .await;
    assert!(a.sees_alive(&["b", "late"]), "the others stayed connected");
}
