//! The host's policy is the last word: real `motey` agents over real HTTP and the signed
//! ZeroMQ peer protocol, real Docker. A peer cannot get past the hosting node's
//! `[SECURITY]`, nor act on images it did not place there; the API token cannot get past
//! it through links, devices or another service's volumes.

mod support;

use std::time::Duration;

use motey::domain::{ImageDeployment, NodeId, ServiceId};
use motey::peer::{CallError, ClusterKey, ClusterKeyTrust, ErrorCode, Reply, Request, Requester};
use serde_json::Value;
use support::AgentProcess;
use system_tests::free_port;

const KEY: &str = "host-policy-cluster-key-0123456789";

/// An owner that allows everything and an edge node with `optical-probe` on default
/// settings, peers of each other; the edge's peer endpoint and node id for crafted
/// requests.
async fn fog(test: &str) -> (AgentProcess, AgentProcess, (String, NodeId)) {
    let env = [
        ("MOTEY_CLUSTER_KEY", KEY),
        ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"),
    ];
    let owner_allows_everything = [
        ("MOTEY_SECURITY_ALLOW_PRIVILEGED", "true"),
        ("MOTEY_SECURITY_ALLOW_HOST_NETWORK", "true"),
        ("MOTEY_SECURITY_BIND_PATHS", "/"),
    ];
    let peer_port = free_port().to_string();
    let (owner, edge) = support::owner_and_probe_edge(
        test,
        &env,
        &owner_allows_everything,
        &[("MOTEY_ZEROMQ_PEER_PORT", peer_port.as_str())],
    )
    .await;
    let edge_node = NodeId(edge.node_id.clone());
    (
        owner,
        edge,
        (format!("tcp://127.0.0.1:{peer_port}"), edge_node),
    )
}

fn reader(options: &str) -> String {
    format!("name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n    capabilities: [optical-probe]\n{options}")
}

/// A request signed with the cluster key, as any holder of it could send, from `sender`.
async fn call_as(
    sender: &str,
    (endpoint, edge): &(String, NodeId),
    request: Request,
) -> Result<Reply, CallError> {
    let requester = Requester::new(
        std::sync::Arc::new(ClusterKeyTrust::new(
            NodeId(sender.into()),
            ClusterKey::from_secret(KEY),
            rand::random(),
        )),
        Duration::from_secs(20),
    );
    requester.call(endpoint, edge, &request).await
}

fn refusal(reply: Result<Reply, CallError>) -> String {
    match reply {
        Err(CallError::Refused {
            code: ErrorCode::Refused,
            message,
        }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn deployment(service: &str, name: &str, owner: &str) -> Request {
    Request::DeployImage(Box::new(ImageDeployment {
        service_id: ServiceId(service.into()),
        service_name: name.into(),
        owner: NodeId(owner.into()),
        image: motey::blueprint::parse(&reader(""), &Default::default())
            .unwrap()
            .images
            .remove(0),
        version: 1,
    }))
}

#[tokio::test]
async fn a_peer_deployment_the_host_does_not_allow_is_refused_there_and_shown_by_the_owner() {
    let (owner, edge, _) = fog("policy-refused").await;
    let options = "    privileged: true\n    network_mode: host\n    volumes: [\"/:/host\"]\n";
    let (status, created) = owner.post_blueprint(&reader(options)).await;
    assert_eq!(status, 201, "the owner's own policy allows it: {created:#}");
    let id = created["id"].as_str().unwrap().to_owned();
    let service = owner.wait_for_state(&id, "ERROR").await;
    let reason = service["images"][0]["reason"].as_str().unwrap_or_default();
    for refused in ["privileged", "host network", "bind mount of /"] {
        assert!(reason.contains(refused), "{refused} not in {service:#}");
    }
    assert!(reason.contains(&edge.node_id), "{service:#}");
    assert!(edge.containers().is_empty(), "the edge started a container");
    assert!(owner.containers().is_empty());
}

#[tokio::test]
async fn only_the_recorded_owner_may_deploy_observe_or_terminate_a_hosted_image() {
    let (owner, edge, endpoint) = fog("forged-owner").await;
    let (_, created) = owner.post_blueprint(&reader("")).await;
    let hosted = created["id"].as_str().unwrap().to_owned();
    let running = owner.wait_for_state(&hosted, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], edge.node_id.as_str());
    let (status, own) = edge
        .post_blueprint("name: own\nimages:\n  - name: web\n    image: motey/testbox:latest\n")
        .await;
    assert_eq!(status, 201, "{own:#}");
    let own = own["id"].as_str().unwrap().to_owned();
    edge.wait_for_state(&own, "RUNNING").await;
    let containers = edge.containers();
    assert_eq!(containers.len(), 2);

    // A service the edge owns itself: no peer may replace or remove its images.
    let message =
        refusal(call_as("intruder", &endpoint, deployment(&own, "own", "intruder")).await);
    assert!(message.contains("belongs to node"), "{message}");
    let forged_sender = &edge.node_id;
    let message = refusal(
        call_as(
            forged_sender,
            &endpoint,
            deployment(&own, "own", forged_sender),
        )
        .await,
    );
    assert!(message.contains("belongs to node"), "{message}");
    let terminate = |service: &str| Request::TerminateImage {
        service_id: ServiceId(service.into()),
        image_id: "web".into(),
    };
    refusal(call_as("intruder", &endpoint, terminate(&own)).await);

    // A hosted service: only the node that placed it.
    let message = refusal(
        call_as(
            "intruder",
            &endpoint,
            deployment(&hosted, "probe", "intruder"),
        )
        .await,
    );
    assert!(message.contains(&owner.node_id), "{message}");
    let message = refusal(
        call_as(
            "intruder",
            &endpoint,
            deployment(&hosted, "probe", &owner.node_id),
        )
        .await,
    );
    assert!(message.contains("sent by node intruder"), "{message}");
    let terminate_hosted = Request::TerminateImage {
        service_id: ServiceId(hosted.clone()),
        image_id: "reader".into(),
    };
    refusal(call_as("intruder", &endpoint, terminate_hosted).await);
    let status = Request::ImageStatus {
        service_id: ServiceId(hosted.clone()),
        image_id: "reader".into(),
    };
    refusal(call_as("intruder", &endpoint, status).await);

    tokio::time::sleep(Duration::from_secs(5)).await; // a few reconcile passes
    assert_eq!(
        edge.containers(),
        containers,
        "a refused request changed what runs"
    );
    let (_, own_now) = edge.get(&format!("/v1/services/{own}")).await;
    assert_eq!(own_now["state"], "RUNNING");
    let (_, hosted_now) = owner.get(&format!("/v1/services/{hosted}")).await;
    assert_eq!(hosted_now["state"], "RUNNING");
}

async fn refused_field(agent: &AgentProcess, yaml: &str) -> (String, Value) {
    let (status, body) = agent.post_blueprint(yaml).await;
    assert_eq!(status, 403, "{body:#}");
    (body["field"].as_str().unwrap_or_default().to_owned(), body)
}

#[tokio::test]
async fn links_unlisted_devices_and_another_services_volume_are_refused_with_the_field() {
    let allowed = tempfile::tempdir().unwrap();
    let root = allowed.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("data")).unwrap();
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    let bind_paths = root.display().to_string();
    let agent = AgentProcess::start_with(
        "policy-fields",
        &[
            ("MOTEY_SECURITY_BIND_PATHS", bind_paths.as_str()),
            ("MOTEY_SECURITY_ALLOWED_DEVICES", "/dev/null:rw"),
        ],
    )
    .await;
    let service = |options: &str| {
        format!(
            "name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n{options}"
        )
    };

    let escape = format!("    volumes: [\"{bind_paths}/escape:/host\"]\n");
    let (field, body) = refused_field(&agent, &service(&escape)).await;
    assert_eq!(field, "images[0].volumes[0]");
    assert!(
        body["message"].as_str().unwrap().contains("symbolic link"),
        "{body:#}"
    );

    let (field, _) = refused_field(
        &agent,
        &service("    devices: [\"/dev/vda:/dev/vda:rwm\"]\n"),
    )
    .await;
    assert_eq!(field, "images[0].devices[0]");
    let (field, _) = refused_field(
        &agent,
        &service("    devices: [\"/dev/null:/dev/null:rwm\"]\n"),
    )
    .await;
    assert_eq!(field, "images[0].devices[0]");

    let (field, body) =
        refused_field(&agent, &service("    volumes: [\"data-api-pki:/pki\"]\n")).await;
    assert_eq!(field, "images[0].volumes[0]");
    assert!(
        body["message"].as_str().unwrap().contains("named after it"),
        "{body:#}"
    );

    // What the policy allows still runs.
    let allowed_options = format!(
        "    volumes: [\"{bind_paths}/data:/data\", \"probe-cache:/cache\"]\n    devices: [\"/dev/null:/dev/probe:rw\"]\n"
    );
    let (status, created) = agent.post_blueprint(&service(&allowed_options)).await;
    assert_eq!(status, 201, "{created:#}");
    agent
        .wait_for_state(created["id"].as_str().unwrap(), "RUNNING")
        .await;

    // One service of a name per node: a second would share the first one's volumes.
    let (status, body) = agent.post_blueprint(&service("")).await;
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["field"], "name");
}
