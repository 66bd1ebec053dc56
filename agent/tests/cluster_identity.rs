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
