//! The agent end to end on one node: the real `motey` binary, real Docker, real HTTP.

mod support;

use std::time::Duration;

use motey_val::labels;
use support::{client, AgentProcess, TOKEN};
use system_tests::docker::{containers_with_label, docker};
use system_tests::registry::LocalRegistry;
use system_tests::{free_port, wait_for};

/// Motey's own example blueprint, unchanged except for the container name and host
/// ports, which must not collide with other tests running at the same time.
fn motey_example(name: &str, tcp: u16, udp: u16) -> String {
    format!(
        "service_name: first_service
node_type: master
images:
- name: alpine
  engine: docker
  parameters:
    ports:
      80/tcp: {tcp}
      7070/udp: {udp}
    name: {name}
  capabilities:
    - alpine
"
    )
}

#[tokio::test]
async fn motey_blueprint_deploys_runs_and_terminates() {
    let agent = AgentProcess::start("motey-example").await;
    // The blueprint needs the capability `alpine`; Motey's example node offered it.
    let added = client()
        .put(agent.url("/v1/capabilities"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!([{"capability": "alpine", "capability_type": "software"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status().as_u16(), 201);

    let name = format!(
        "alpine_from_motey_{}",
        &agent.node_id[agent.node_id.len() - 6..]
    );
    let (status, created) = agent
        .post_blueprint(&motey_example(&name, free_port(), free_port()))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], agent.node_id.as_str());
    assert_eq!(running["images"][0]["state"], "RUNNING");

    let inspected = docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{index .Config.Labels \"io.motey.service-id\"}}",
        &name,
    ])
    .unwrap();
    assert_eq!(inspected, format!("running {id}"));

    let (status, stopping) = agent.delete(&format!("/v1/services/{id}")).await;
    assert_eq!(status, 202);
    assert!(["STOPPING", "TERMINATED"].contains(&stopping["state"].as_str().unwrap()));
    agent.wait_for_state(&id, "TERMINATED").await;
    assert!(
        docker(&["inspect", &name]).is_err(),
        "container {name} should be gone"
    );
}

#[tokio::test]
async fn native_blueprint_serves_on_its_mapped_port() {
    let agent = AgentProcess::start("serving").await;
    let port = free_port();
    let (status, created) = agent
        .post_blueprint(&format!(
            "name: web\nimages:\n  - name: front\n    image: motey/testbox:latest\n    env: {{TESTBOX_LISTEN: 8080}}\n    ports: [\"127.0.0.1:{port}:8080\"]\n    restart: on-failure\n"
        ))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;
    let body = wait_for(
        "the workload to answer",
        Duration::from_secs(60),
        || async move {
            let response = reqwest::get(format!("http://127.0.0.1:{port}/"))
                .await
                .ok()?;
            response.text().await.ok()
        },
    )
    .await;
    assert!(body.contains("testbox"), "{body}");

    let (_, listed) = agent.get("/v1/services").await;
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id.as_str()));
    agent.delete(&format!("/v1/services/{id}")).await;
    agent.wait_for_state(&id, "TERMINATED").await;
    assert!(agent.containers().is_empty());
}

#[tokio::test]
async fn crashing_image_puts_the_service_in_error_with_the_exit_code() {
    let agent = AgentProcess::start("crash").await;
    let (_, created) = agent
        .post_blueprint("name: crashy\nimages:\n  - image: busybox\n    env: {TESTBOX_EXIT_AFTER_MS: 300, TESTBOX_EXIT_CODE: 3}\n")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = agent.wait_for_state(&id, "ERROR").await;
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("exited with code 3"),
        "{failed:#}"
    );
}

#[tokio::test]
async fn killed_agent_adopts_its_containers_after_restart() {
    let mut agent = AgentProcess::start("adopt").await;
    let (_, created) = agent
        .post_blueprint("name: steady\nimages:\n  - image: nginx\n")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    let container = running["images"][0]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();

    agent.kill();
    // The workload does not depend on the agent being up.
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &container]).unwrap(),
        "true"
    );
    agent.restart().await;
    let adopted = agent.wait_for_state(&id, "RUNNING").await;
    assert_eq!(adopted["images"][0]["container_id"], container.as_str());
    // Give the restarted loop a few passes: still exactly one container.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        containers_with_label(labels::SERVICE_ID, &id),
        vec![container]
    );
}

#[tokio::test]
async fn container_removed_behind_the_agents_back_is_recreated() {
    let agent = AgentProcess::start("heal").await;
    let (_, created) = agent
        .post_blueprint("name: healing\nimages:\n  - image: nginx\n")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    let first = running["images"][0]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();
    docker(&["rm", "-f", &first]).unwrap();
    let replacement = wait_for("a replacement container", Duration::from_secs(90), || {
        let agent = &agent;
        let (id, first) = (id.clone(), first.clone());
        async move {
            let (_, service) = agent.get(&format!("/v1/services/{id}")).await;
            let current = service["images"][0]["container_id"].as_str()?.to_owned();
            (service["state"] == "RUNNING" && current != first).then_some(current)
        }
    })
    .await;
    assert_eq!(
        containers_with_label(labels::SERVICE_ID, &id),
        vec![replacement]
    );
}

#[tokio::test]
async fn image_the_node_lacks_is_pulled_from_a_registry() {
    let registry = LocalRegistry::start();
    let reference = registry.publish(
        "motey/testbox:latest",
        &format!("pulled/testbox:{}", free_port()),
    );
    let agent = AgentProcess::start("pull").await;
    let (status, created) = agent
        .post_blueprint(&format!("name: pulled\nimages:\n  - image: {reference}\n"))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;
    agent.delete(&format!("/v1/services/{id}")).await;
    agent.wait_for_state(&id, "TERMINATED").await;
    let _ = docker(&["rmi", &reference]);
}

#[tokio::test]
async fn image_nobody_has_is_an_error_naming_it() {
    let agent = AgentProcess::start("nopull").await;
    let reference = format!("127.0.0.1:{}/missing/image:1", free_port());
    let (_, created) = agent
        .post_blueprint(&format!("name: missing\nimages:\n  - image: {reference}\n"))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let failed = agent.wait_for_state(&id, "ERROR").await;
    assert!(
        failed["reason"].as_str().unwrap().contains("missing/image"),
        "{failed:#}"
    );
}

#[tokio::test]
async fn two_image_blueprint_runs_both_with_labels_env_and_ports() {
    let agent = AgentProcess::start("two-images").await;
    let (web_port, api_port) = (free_port(), free_port());
    let (status, created) = agent
        .post_blueprint(&format!(
            "name: pair
images:
  - name: web
    image: nginx
    env: {{TESTBOX_LISTEN: 80, GREETING: hello}}
    ports: [\"127.0.0.1:{web_port}:80\"]
  - name: api
    image: busybox
    env: {{TESTBOX_LISTEN: 9000}}
    ports: [\"127.0.0.1:{api_port}:9000\"]
"
        ))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    let containers = containers_with_label(labels::SERVICE_ID, &id);
    assert_eq!(containers.len(), 2);
    for image in running["images"].as_array().unwrap() {
        let container = image["container_id"].as_str().unwrap();
        let name = image["name"].as_str().unwrap();
        let labels_seen = docker(&["inspect", "-f", "{{json .Config.Labels}}", container]).unwrap();
        let labels_seen: serde_json::Value = serde_json::from_str(&labels_seen).unwrap();
        assert_eq!(labels_seen[labels::IMAGE_ID], name);
        assert_eq!(labels_seen[labels::NODE_ID], agent.node_id.as_str());
        assert_eq!(labels_seen[labels::MANAGED], "true");
    }
    let web = running["images"][0]["container_id"].as_str().unwrap();
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", web]).unwrap();
    assert!(env.contains("GREETING=hello"), "{env}");
    for port in [web_port, api_port] {
        wait_for(
            "the mapped port to answer",
            Duration::from_secs(60),
            || async move { reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok() },
        )
        .await;
    }
    agent.delete(&format!("/v1/services/{id}")).await;
    agent.wait_for_state(&id, "TERMINATED").await;
    assert!(containers_with_label(labels::SERVICE_ID, &id).is_empty());
}

#[tokio::test]
async fn an_undecodable_record_is_quarantined_and_reconciliation_goes_on() {
    let mut agent = AgentProcess::start("quarantine").await;
    let (_, created) = agent
        .post_blueprint("name: survivor\nimages:\n  - image: nginx\n")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    let first = running["images"][0]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();

    agent.kill();
    {
        let db = sled::open(agent.data_dir().join("db")).unwrap();
        let services = db.open_tree("services").unwrap();
        services
            .insert("broken-record", &b"\xff{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    agent.restart().await;

    let (status, node) = agent.get("/v1/nodestatus").await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["quarantined_count"], 1, "{node}");
    assert_eq!(
        node["quarantined_records"][0],
        serde_json::json!({ "collection": "services", "key": "broken-record" })
    );
    assert!(agent.log().contains("broken-record"));
    assert!(!agent.log().contains("not json"), "the content was logged");

    // The reconcile loop still heals the good service and deploys new ones.
    docker(&["rm", "-f", &first]).unwrap();
    wait_for("a replacement container", Duration::from_secs(90), || {
        let agent = &agent;
        let (id, first) = (id.clone(), first.clone());
        async move {
            let (_, service) = agent.get(&format!("/v1/services/{id}")).await;
            let current = service["images"][0]["container_id"].as_str()?.to_owned();
            (service["state"] == "RUNNING" && current != first).then_some(current)
        }
    })
    .await;
    let (status, created) = agent
        .post_blueprint("name: newcomer\nimages:\n  - image: nginx\n")
        .await;
    assert_eq!(status, 201, "{created}");
    agent
        .wait_for_state(created["id"].as_str().unwrap(), "RUNNING")
        .await;
}
