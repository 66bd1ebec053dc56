//! Several real agents (processes) on one host, forming a fog over one agent's embedded
//! MQTT broker, with real Docker: discovery, capability negotiation over the signed peer
//! protocol, placement on the capable node, hardware events, node loss and rescheduling.

mod support;

use std::time::Duration;

use motey_val::labels;
use serde_json::Value;
use support::AgentProcess;
use system_tests::docker::containers_with_label;
use system_tests::wait_for;

const KEY: &str = "fog-test-cluster-key-0123456789";

fn cluster_env(broker_port: &str) -> Vec<(&str, &str)> {
    vec![
        ("MOTEY_CLUSTER_KEY", KEY),
        ("MOTEY_MQTT_PORT", broker_port),
        ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"),
        ("MOTEY_MQTT_PEER_SUSPECT_AFTER", "3"),
        ("MOTEY_MQTT_PEER_GONE_AFTER", "6"),
        ("MOTEY_CLUSTER_REQUEST_TIMEOUT_MS", "3000"),
    ]
}

async fn node_state(observer: &AgentProcess, node: &str) -> Option<String> {
    let (_, nodes) = observer.get("/v1/nodes").await;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

async fn wait_node_state(observer: &AgentProcess, node: &str, state: &str) {
    wait_for(
        &format!("node {node} to be {state}"),
        Duration::from_secs(90),
        || async { (node_state(observer, node).await.as_deref() == Some(state)).then_some(()) },
    )
    .await;
}

fn motey_capability(agent: &AgentProcess, action: &str, name: &str) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(["capability", action, name, "--type", "hardware"])
        .env("MOTEY_GENERAL_DATA_DIR", agent.data_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn image_lands_on_the_probe_node_and_moves_when_that_node_is_lost() {
    // The cloud node runs the broker; the edge nodes use it.
    let cloud = AgentProcess::start_with("fog-cloud", &cluster_env("0")[..1]).await;
    let broker = cloud.mqtt_port.to_string();
    let mut env = cluster_env(&broker);
    env.push(("MOTEY_MQTT_EMBEDDED", "false"));
    let edge_a = AgentProcess::start_with("fog-edge-a", &env).await;
    let mut edge_b = AgentProcess::start_with("fog-edge-b", &env).await;
    for node in [&edge_a.node_id, &edge_b.node_id] {
        wait_node_state(&cloud, node, "alive").await;
    }
    wait_node_state(&edge_a, &cloud.node_id, "alive").await;

    // A probe appears on edge B: a hardware event over IPC, as a udev rule would send.
    motey_capability(&edge_b, "add", "optical-probe");
    let (_, capabilities) = edge_b.get("/v1/capabilities").await;
    assert_eq!(
        capabilities,
        serde_json::json!([{"capability": "optical-probe", "capability_type": "hardware"}])
    );

    let (status, created) = cloud
        .post_blueprint("name: metering\nimages:\n  - {name: reader, image: busybox, capabilities: [optical-probe]}\n  - {name: api, image: nginx}\n")
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = cloud.wait_for_state(&id, "RUNNING").await;
    let image = |service: &Value, name: &str| {
        service["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(image(&running, "reader")["node"], edge_b.node_id.as_str());
    assert_eq!(image(&running, "api")["node"], cloud.node_id.as_str());
    assert_eq!(
        edge_b.containers().len(),
        1,
        "the reader runs on the probe node"
    );
    assert!(edge_a.containers().is_empty());

    // Edge B crashes. Its image is placed again once a capable node exists.
    edge_b.kill();
    wait_node_state(&cloud, &edge_b.node_id, "gone").await;
    motey_capability(&edge_a, "add", "optical-probe");
    let mut moved = Value::Null;
    for _ in 0..240 {
        moved = cloud.get(&format!("/v1/services/{id}")).await.1;
        if moved["state"] == "RUNNING" && image(&moved, "reader")["node"] == edge_a.node_id.as_str()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        image(&moved, "reader")["node"],
        edge_a.node_id.as_str(),
        "{moved:#}\ncloud log:\n{}",
        cloud
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(image(&moved, "reader")["state"], "RUNNING");
    assert_eq!(edge_a.containers().len(), 1);

    // Terminating from the owner removes the image on the peer too.
    cloud.delete(&format!("/v1/services/{id}")).await;
    cloud.wait_for_state(&id, "TERMINATED").await;
    wait_for(
        "edge A's container to be removed",
        Duration::from_secs(60),
        || async {
            containers_with_label(labels::NODE_ID, &edge_a.node_id)
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(
        containers_with_label(labels::SERVICE_ID, &id)
            .iter()
            .all(|c| edge_b.containers().contains(c)),
        "only the crashed node's container may remain"
    );
}

#[tokio::test]
async fn capability_nobody_offers_is_named_and_a_wrong_cluster_key_is_not_trusted() {
    let cloud = AgentProcess::start_with("fog-lonely", &cluster_env("0")[..1]).await;
    let broker = cloud.mqtt_port.to_string();
    let mut env = cluster_env(&broker);
    env.retain(|(k, _)| *k != "MOTEY_CLUSTER_KEY");
    env.push(("MOTEY_CLUSTER_KEY", "another-key-that-is-long-enough"));
    env.push(("MOTEY_MQTT_EMBEDDED", "false"));
    let stranger = AgentProcess::start_with("fog-stranger", &env).await;
    motey_capability(&stranger, "add", "zigbee");

    let (_, created) = cloud
        .post_blueprint(
            "name: needs-zigbee\nimages:\n  - {image: busybox, capabilities: [zigbee]}\n",
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = cloud.wait_for_state(&id, "ERROR").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("no node offers the capabilities zigbee"),
        "{failed:#}"
    );
    // The stranger's announcements are not signed with our key: it never becomes a peer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(node_state(&cloud, &stranger.node_id).await, None);
    assert!(stranger.containers().is_empty());
}
