//! Every node its own identity, with real agent processes: joining with a token, tokens
//! used up or expired, revocation, and announcements only a node itself can make.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use motey::cluster::{ClusterFiles, Membership};
use support::{cluster_token, join_cluster, joined_cluster, motey_cli, new_node_id, AgentProcess};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn node_state(observer: &AgentProcess, node: &str) -> Option<String> {
    let (_, nodes) = observer.get("/v1/nodes").await;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_with_a_token_and_its_key_stays_private() {
    let cluster = joined_cluster("join", &[], 1).await;
    let edge = &cluster.edges[0];
    let files = ClusterFiles::in_data_dir(edge.data_dir());
    for key in [files.node_key(), edge.data_dir().join("cluster-key")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    let membership = Membership::load(&files).unwrap();
    assert_eq!(membership.node_id().as_str(), edge.node_id);
    assert!(edge
        .log()
        .contains("member of a cluster by node certificate"));
    // The CA node's key never left it.
    assert!(!ClusterFiles::in_data_dir(edge.data_dir()).ca_key().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_or_expired_token_is_refused_with_a_clear_error() {
    let mut env = support::CA_NODE.to_vec();
    env.push(("MOTEY_MQTT_EMBEDDED", "false"));
    let ca = AgentProcess::start_without_images("tokens-ca", &env).await;

    let token = cluster_token(&ca, "10m", 1);
    let first = tempfile::tempdir().unwrap();
    let joined = join_cluster(&ca, first.path(), &new_node_id("tokens-a"), &token);
    assert!(joined.status.success(), "{joined:?}");
    let second = tempfile::tempdir().unwrap();
    let again = join_cluster(&ca, second.path(), &new_node_id("tokens-b"), &token);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("join_token_used"),
        "{}",
        stderr(&again)
    );
    assert!(!ClusterFiles::in_data_dir(second.path()).is_member());

    let short = cluster_token(&ca, "1s", 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = join_cluster(&ca, second.path(), &new_node_id("tokens-c"), &short);
    assert!(!late.status.success());
    assert!(
        stderr(&late).contains("join_token_expired"),
        "{}",
        stderr(&late)
    );

    let forged = token.replace(&token[token.len() - 4..], "0000");
    let wrong = join_cluster(&ca, second.path(), &new_node_id("tokens-d"), &forged);
    assert!(
        stderr(&wrong).contains("join_token_unknown"),
        "{}",
        stderr(&wrong)
    );
    assert!(ca.log().contains("refused a node's join"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_of_another_cluster_ca_is_not_sent_to_this_server() {
    let mut env = support::CA_NODE.to_vec();
    env.push(("MOTEY_MQTT_EMBEDDED", "false"));
    let ca = AgentProcess::start_without_images("pin-ca", &env).await;
    let other = AgentProcess::start_without_images("pin-other", &env).await;
    let token = cluster_token(&other, "10m", 1);
    let dir = tempfile::tempdir().unwrap();
    let refused = join_cluster(&ca, dir.path(), &new_node_id("pin-edge"), &token);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("named in the token"),
        "{}",
        stderr(&refused)
    );
    // The token was never presented: it still admits a node at its own CA.
    let admitted = join_cluster(&other, dir.path(), &new_node_id("pin-edge"), &token);
    assert!(admitted.status.success(), "{admitted:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_node_is_refused_by_every_node() {
    let cluster = joined_cluster("revoke", &[], 2).await;
    let (revoked, other) = (&cluster.edges[0], &cluster.edges[1]);
    system_tests::wait_for(
        "the edges to know each other",
        Duration::from_secs(60),
        || async { (node_state(other, &revoked.node_id).await? == "alive").then_some(()) },
    )
    .await;
    let output = motey_cli(
        cluster.ca.data_dir(),
        &cluster.ca.node_id,
        &["cluster", "revoke", &revoked.node_id],
    );
    assert!(output.status.success(), "{output:?}");
    for observer in [&cluster.ca, other] {
        system_tests::wait_for(
            "the revoked node to be gone",
            Duration::from_secs(60),
            || async { (node_state(observer, &revoked.node_id).await? == "gone").then_some(()) },
        )
        .await;
    }
    // Its announcements go on, and stay refused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        node_state(other, &revoked.node_id).await.as_deref(),
        Some("gone")
    );
    assert!(other.log().contains("is revoked"), "{}", other.log());
    assert!(ClusterFiles::in_data_dir(other.data_dir())
        .revocations()
        .exists());
    // A node started after the revocation receives the (retained) list at once.
    let token = cluster_token(&cluster.ca, "10m", 1);
    let dir = tempfile::tempdir().unwrap();
    let output = join_cluster(&cluster.ca, dir.path(), &revoked.node_id, &token);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("node_revoked"),
        "{}",
        stderr(&output)
    );
}

/// What a process holding one edge node's files (its key, certificate and the cluster key)
/// can send on the broker.
struct StolenNode {
    membership: Membership,
    key: motey::peer::ClusterKey,
    client: rumqttc::AsyncClient,
    messages: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl StolenNode {
    async fn connect(edge: &AgentProcess, broker_port: u16) -> StolenNode {
        let membership = Membership::load(&ClusterFiles::in_data_dir(edge.data_dir())).unwrap();
        let key = motey::peer::load_or_generate_key(None, edge.data_dir()).unwrap();
        let config = motey::config::RawConfig::defaults().parse_config().unwrap();
        let (user, password) = motey::discovery::broker_credentials(&config.mqtt, &key);
        let mut options = rumqttc::MqttOptions::new("stolen-node", "127.0.0.1", broker_port);
        options.set_credentials(user, password);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        let (sender, messages) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) = event {
                    let _ = sender.send((publish.topic, publish.payload.to_vec()));
                }
            }
        });
        StolenNode {
            membership,
            key,
            client,
            messages,
        }
    }

    /// A discovery message as the stolen node can make it: HMAC under the cluster key and
    /// signed by the stolen node's certificate key.
    fn sealed(&self, kind: &str, sender: &str, payload: serde_json::Value) -> Vec<u8> {
        let envelope =
            motey::peer::Envelope::new(kind, uuid::Uuid::new_v4().to_string(), sender, payload);
        motey::cluster::signed::seal(
            &self.membership.identity(),
            &envelope.signed_bytes(&self.key),
        )
    }

    async fn publish(&self, topic: String, bytes: Vec<u8>) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
            .unwrap();
    }

    async fn next_on(&mut self, topic: &str) -> Vec<u8> {
        loop {
            let (on, payload) = tokio::time::timeout(Duration::from_secs(30), self.messages.recv())
                .await
                .expect("a message within 30 s")
                .unwrap();
            if on == topic {
                return payload;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_edge_cannot_announce_another_node_nor_replay_announcements() {
    let cluster = joined_cluster("forge", &[], 2).await;
    let (stolen_edge, victim) = (&cluster.edges[0], &cluster.edges[1]);
    let mut stolen = StolenNode::connect(stolen_edge, cluster.ca.mqtt_port).await;
    let victim_topic = format!("motey/nodes/meta/{}", victim.node_id);
    stolen
        .client
        .subscribe(&victim_topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let captured = stolen.next_on(&victim_topic).await;

    // The victim's id, with an address of the thief's choosing, signed with the stolen key.
    let forged = serde_json::json!({
        "node": {
            "id": victim.node_id,
            "name": "forged",
            "addresses": ["127.0.0.9"],
            "rest_port": 1,
            "peer_port": 1,
            "version": "0",
            "capabilities_digest": "forged",
        },
        "epoch": u64::MAX / 2,
        "instance": "forged",
    });
    let bytes = stolen.sealed("node_meta", &victim.node_id, forged);
    stolen.publish(victim_topic.clone(), bytes).await;
    // A genuine announcement of the victim, sent again as captured.
    stolen.publish(victim_topic.clone(), captured).await;
    // A request for everyone's metadata, sent twice.
    let request = stolen.sealed("node_request", &stolen_edge.node_id, serde_json::json!({}));
    stolen
        .publish("motey/nodes/request".into(), request.clone())
        .await;
    stolen.publish("motey/nodes/request".into(), request).await;

    system_tests::wait_for(
        "the CA node to refuse the forgery and the replays",
        Duration::from_secs(30),
        || async {
            let log = cluster.ca.log();
            (log.contains("a node may announce only itself")
                && log.matches("already received once (replay)").count() >= 2)
                .then_some(())
        },
    )
    .await;
    let (_, nodes) = cluster.ca.get("/v1/nodes").await;
    let known = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == victim.node_id.as_str())
        .unwrap()
        .clone();
    assert_ne!(known["name"], "forged", "{known}");
    assert_eq!(known["state"], "alive", "{known}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_images_of_a_revoked_node_are_placed_elsewhere() {
    system_tests::docker::ensure_testbox();
    let cluster = joined_cluster("replace", &[("MOTEY_CLUSTER_RESCHEDULE_GRACE", "0")], 2).await;
    for edge in &cluster.edges {
        let added = motey_cli(
            edge.data_dir(),
            &edge.node_id,
            &["capability", "add", "optical-probe"],
        );
        assert!(added.status.success(), "{added:?}");
    }
    let (status, created) = cluster
        .ca
        .post_blueprint("name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n    env: {TESTBOX_BODY: revoked}\n    capabilities: [optical-probe]\n")
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = cluster.ca.wait_for_state(&id, "RUNNING").await;
    let first = running["images"][0]["node"].as_str().unwrap().to_owned();
    let other = cluster
        .edges
        .iter()
        .find(|edge| edge.node_id != first)
        .unwrap();
    let revoked = motey_cli(
        cluster.ca.data_dir(),
        &cluster.ca.node_id,
        &["cluster", "revoke", &first],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    system_tests::wait_for(
        "the image to be placed on the other edge",
        Duration::from_secs(120),
        || async {
            let (_, service) = cluster.ca.get(&format!("/v1/services/{id}")).await;
            let image = &service["images"][0];
            (image["node"] == other.node_id.as_str() && image["state"] == "RUNNING").then_some(())
        },
    )
    .await;
    assert!(!other.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_taken_into_use_without_a_restart() {
    let cluster = joined_cluster("renew", &[], 1).await;
    let edge = &cluster.edges[0];
    let files = ClusterFiles::in_data_dir(edge.data_dir());
    let before = std::fs::read_to_string(files.node_cert()).unwrap();
    let renewed = motey_cli(edge.data_dir(), &edge.node_id, &["cluster", "renew"]);
    assert!(renewed.status.success(), "{renewed:?}");
    assert_ne!(std::fs::read_to_string(files.node_cert()).unwrap(), before);
    system_tests::wait_for(
        "the agent to take the renewed certificate",
        Duration::from_secs(30),
        || async {
            edge.log()
                .contains("took a renewed node certificate")
                .then_some(())
        },
    )
    .await;
    // Its announcements, now signed with the new key, are still believed: the CA node
    // hears of it after the change.
    let taken = chrono::Utc::now();
    system_tests::wait_for(
        "an announcement signed with the renewed key",
        Duration::from_secs(30),
        || async {
            let (_, nodes) = cluster.ca.get("/v1/nodes").await;
            let node = nodes
                .as_array()?
                .iter()
                .find(|n| n["id"] == edge.node_id.as_str())?
                .clone();
            let seen: chrono::DateTime<chrono::Utc> = node["last_seen"].as_str()?.parse().ok()?;
            (seen > taken + chrono::Duration::seconds(1) && node["state"] == "alive").then_some(())
        },
    )
    .await;
    assert!(cluster.ca.log().contains("renewed a node certificate"));
}
