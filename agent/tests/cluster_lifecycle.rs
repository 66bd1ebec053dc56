//! The lifecycle of nodes in a real fog: three `motey` processes over a real mosquitto
//! broker on loopback, real Docker, the signed ZeroMQ peer protocol between them.
//!
//! - a probe plugged in (hardware event) lets a waiting image deploy; unplugged, the
//!   image moves to another capable node, or waits in ERROR naming the capability;
//! - a node cut off for less than the grace period (SIGSTOP/SIGCONT) is re-adopted, not
//!   recreated elsewhere; a killed node's image is rescheduled after it, and the killed
//!   node, restarted, removes its orphaned container;
//! - a node whose engine is unreachable is recovering and refuses deployments (REST and
//!   peer protocol), as is one that lost its broker; `motey decommission --wipe` drains
//!   a node and wipes its store.

mod support;

use std::time::Duration;

use motey_val::labels;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use support::AgentProcess;
use system_tests::docker::{containers_with_label, TESTBOX};
use system_tests::wait_for;

#[path = "support/cluster.rs"]
mod cluster;

const KEY: &str = "lifecycle-test-cluster-key-0123";
/// Seconds a gone node keeps its images: longer than the cut-off below, short enough for
/// the test.
const GRACE: &str = "20";

fn fog_env(broker_port: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MOTEY_CLUSTER_KEY", KEY.into()),
        ("MOTEY_MQTT_EMBEDDED", "false".into()),
        ("MOTEY_MQTT_PORT", broker_port.into()),
        ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1".into()),
        ("MOTEY_MQTT_PEER_SUSPECT_AFTER", "3".into()),
        ("MOTEY_MQTT_PEER_GONE_AFTER", "6".into()),
        ("MOTEY_CLUSTER_REQUEST_TIMEOUT_MS", "3000".into()),
        ("MOTEY_CLUSTER_RESCHEDULE_GRACE", GRACE.into()),
    ]
}

async fn start(name: &str, env: &[(&'static str, String)]) -> AgentProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    AgentProcess::start_with(name, &env).await
}

async fn node_view(observer: &AgentProcess, node: &str) -> Option<Value> {
    let (_, nodes) = observer.get("/v1/nodes").await;
    nodes.as_array()?.iter().find(|n| n["id"] == node).cloned()
}

async fn wait_node(observer: &AgentProcess, node: &str, field: &str, value: &str) {
    wait_for(
        &format!("node {node} to have {field} {value}"),
        Duration::from_secs(90),
        || async {
            node_view(observer, node)
                .await
                .filter(|view| view[field] == value)
                .map(|_| ())
        },
    )
    .await;
}

fn capability(agent: &AgentProcess, action: &str) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(["capability", action, "optical-probe", "--type", "hardware"])
        .env("MOTEY_GENERAL_DATA_DIR", agent.data_dir())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

fn reader_of(service: &Value) -> Value {
    service["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|image| image["name"] == "reader")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the service's reader runs on `node`.
async fn wait_reader_on(owner: &AgentProcess, id: &str, node: &str) -> Value {
    let path = format!("/v1/services/{id}");
    let mut last = Value::Null;
    for _ in 0..240 {
        last = owner.get(&path).await.1;
        let reader = reader_of(&last);
        if reader["node"] == node && reader["state"] == "RUNNING" {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "reader did not run on {node}; last seen {last:#}\nowner log:\n{}",
        tail(owner)
    );
}

fn tail(agent: &AgentProcess) -> String {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().rev().take(60).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn reader_blueprint() -> String {
    format!(
        "name: metering\nimages:\n  - {{name: reader, image: \"{TESTBOX}\", capabilities: [optical-probe]}}\n"
    )
}

#[tokio::test]
async fn probes_come_and_go_nodes_are_cut_off_killed_and_restarted() {
    let broker = cluster::Mosquitto::start();
    let env = fog_env(&broker.port().to_string());
    let hub = start("lc-hub", &env).await;
    let edge_b = start("lc-b", &env).await;
    let mut edge_c = start("lc-c", &env).await;
    for edge in [&edge_b, &edge_c] {
        wait_node(&hub, &edge.node_id, "state", "alive").await;
        wait_node(&hub, &edge.node_id, "phase", "operating").await;
    }
    wait_node(&hub, &hub.node_id, "phase", "operating").await;

    // Nobody has a probe yet: the image waits in ERROR naming the capability.
    let (status, created) = hub.post_blueprint(&reader_blueprint()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let waiting = hub.wait_for_state(&id, "ERROR").await;
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap()
            .contains("no node offers the capabilities optical-probe"),
        "{waiting:#}"
    );

    // A probe is plugged into B: the retried deployment lands there.
    capability(&edge_b, "add");
    wait_reader_on(&hub, &id, &edge_b.node_id).await;
    let on_b = edge_b.containers();
    assert_eq!(on_b.len(), 1);
    capability(&edge_c, "add");

    // B is cut off (frozen) longer than the gone time but shorter than the grace period.
    let pid = Pid::from_raw(edge_b.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    wait_node(&hub, &edge_b.node_id, "state", "gone").await;
    let during = wait_for(
        "the hub to wait for B within the grace period",
        Duration::from_secs(20),
        || async {
            let (_, service) = hub.get(&format!("/v1/services/{id}")).await;
            let reason = reader_of(&service)["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            reason.contains("is gone").then_some(service)
        },
    )
    .await;
    assert_eq!(reader_of(&during)["node"], edge_b.node_id.as_str());
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(pid, Signal::SIGCONT).unwrap();
    wait_node(&hub, &edge_b.node_id, "state", "alive").await;
    let back = wait_for(
        "the hub to hear from B again",
        Duration::from_secs(30),
        || async {
            let (_, service) = hub.get(&format!("/v1/services/{id}")).await;
            reader_of(&service)["reason"].is_null().then_some(service)
        },
    )
    .await;
    assert_eq!(reader_of(&back)["node"], edge_b.node_id.as_str());
    assert_eq!(reader_of(&back)["state"], "RUNNING");
    assert_eq!(edge_b.containers(), on_b, "re-adopted, not recreated");
    assert!(edge_c.containers().is_empty(), "nothing was started on C");

    // B's probe is unplugged: the image moves to C, the other capable node.
    capability(&edge_b, "remove");
    wait_reader_on(&hub, &id, &edge_c.node_id).await;
    wait_for(
        "B's container to be removed",
        Duration::from_secs(60),
        || async { edge_b.containers().is_empty().then_some(()) },
    )
    .await;
    capability(&edge_b, "add");

    // C is killed: after the grace period its image is rescheduled onto B.
    let on_c = edge_c.containers();
    assert_eq!(on_c.len(), 1);
    edge_c.kill();
    wait_node(&hub, &edge_c.node_id, "state", "gone").await;
    wait_reader_on(&hub, &id, &edge_b.node_id).await;
    assert_eq!(
        edge_c.containers(),
        on_c,
        "a dead agent cannot stop its container"
    );

    // C comes back: it learns from the hub that the image moved and removes its copy.
    edge_c.restart().await;
    wait_for(
        "C's orphaned container to be removed",
        Duration::from_secs(90),
        || async { edge_c.containers().is_empty().then_some(()) },
    )
    .await;
    let everywhere = containers_with_label(labels::SERVICE_ID, &id);
    assert_eq!(
        everywhere,
        edge_b.containers(),
        "exactly one container remains"
    );

    // No probe anywhere any more: the image is taken down and waits in ERROR naming it.
    capability(&edge_c, "remove");
    capability(&edge_b, "remove");
    let failed = hub.wait_for_state(&id, "ERROR").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("no node offers the capabilities optical-probe"),
        "{failed:#}"
    );
    wait_for(
        "B's container to be removed",
        Duration::from_secs(60),
        || async { edge_b.containers().is_empty().then_some(()) },
    )
    .await;
    hub.delete(&format!("/v1/services/{id}")).await;
}

#[tokio::test]
async fn a_recovering_node_refuses_deployments_and_decommissioning_drains() {
    let mut broker = cluster::Mosquitto::start();
    let env = fog_env(&broker.port().to_string());
    let hub = start("lc-hub2", &env).await;
    // A socket nobody listens on any more: the engine is there, but dead.
    let dead = tempfile::tempdir().unwrap();
    let socket = dead.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut sick_env = env.clone();
    sick_env.push(("MOTEY_VAL_ENDPOINT", format!("unix://{}", socket.display())));
    let sick = start("lc-sick", &sick_env).await;
    let edge = start("lc-edge", &env).await;
    wait_node(&hub, &edge.node_id, "phase", "operating").await;

    // The node with a dead engine is recovering, says why, and refuses deployments.
    wait_node(&hub, &sick.node_id, "phase", "recovering").await;
    let (_, own) = sick.get("/v1/nodestatus").await;
    assert_eq!(own["phase"], "recovering", "{own:#}");
    assert!(
        own["phase_reason"]
            .as_str()
            .unwrap()
            .contains("container engine unreachable"),
        "{own:#}"
    );
    let (status, refused) = sick
        .post_blueprint("name: web\nimages:\n  - {name: web, image: nginx}\n")
        .await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"], "node_not_operating");
    assert!(
        refused["message"].as_str().unwrap().contains("recovering"),
        "{refused}"
    );

    // Over the peer protocol too: the only node with a probe is the recovering one.
    capability(&sick, "add");
    let (_, created) = hub.post_blueprint(&reader_blueprint()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = hub.wait_for_state(&id, "ERROR").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("recovering"),
        "{failed:#}"
    );

    // The edge gets a probe: the image runs there. The edge also owns a service.
    capability(&edge, "add");
    wait_reader_on(&hub, &id, &edge.node_id).await;
    let (status, local) = edge
        .post_blueprint(&format!(
            "name: local\nimages:\n  - {{name: web, image: \"{TESTBOX}\"}}\n"
        ))
        .await;
    assert_eq!(status, 201, "{local}");
    let local_id = local["id"].as_str().unwrap().to_owned();
    edge.wait_for_state(&local_id, "RUNNING").await;
    assert_eq!(edge.containers().len(), 2);

    // The edge is decommissioned: the hub (with a probe now) takes its image back, the
    // edge's own service is terminated, it leaves the fog and wipes its store.
    capability(&hub, "add");
    let output = tokio::task::spawn_blocking({
        let data_dir = edge.data_dir().to_path_buf();
        let port = edge.port.to_string();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_motey"))
                .args(["decommission", "--wipe", "--timeout", "60"])
                .env("MOTEY_GENERAL_DATA_DIR", &data_dir)
                .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
                .env("MOTEY_WEBSERVER_PORT", port)
                .env("MOTEY_WEBSERVER_TOKEN", support::TOKEN)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{output:?}\nedge log:\n{}",
        tail(&edge)
    );
    assert!(said.contains("drained and left the fog"), "{said}");
    wait_reader_on(&hub, &id, &hub.node_id).await;
    assert!(edge.containers().is_empty(), "nothing is left on the edge");
    assert!(!edge.data_dir().join("db").exists(), "the store is wiped");
    assert!(
        !edge.data_dir().join("admin-token").exists(),
        "the generated admin token is wiped"
    );
    wait_for(
        "the hub to forget the edge",
        Duration::from_secs(30),
        || async { node_view(&hub, &edge.node_id).await.is_none().then_some(()) },
    )
    .await;
    let log = edge.log();
    assert!(log.contains("node phase changed"), "{}", tail(&edge));
    hub.delete(&format!("/v1/services/{id}")).await;
    hub.wait_for_state(&id, "TERMINATED").await;

    // The broker is lost: the hub is recovering and refuses deployments until it is back.
    broker.stop();
    let phase_of = |agent: &AgentProcess| {
        let url = agent.url("/v1/nodestatus");
        async move {
            let status: Value = support::client()
                .get(url)
                .bearer_auth(support::TOKEN)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(status)
        }
    };
    let recovering = wait_for(
        "the hub to lose the broker",
        Duration::from_secs(60),
        || async { phase_of(&hub).await.filter(|s| s["phase"] == "recovering") },
    )
    .await;
    assert!(
        recovering["phase_reason"]
            .as_str()
            .unwrap()
            .contains("MQTT broker lost"),
        "{recovering:#}"
    );
    let (status, refused) = hub
        .post_blueprint("name: web\nimages:\n  - {name: web, image: nginx}\n")
        .await;
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("MQTT broker lost"),
        "{refused}"
    );
    broker.restart();
    wait_for(
        "the hub to operate again",
        Duration::from_secs(60),
        || async { phase_of(&hub).await.filter(|s| s["phase"] == "operating") },
    )
    .await;
}
