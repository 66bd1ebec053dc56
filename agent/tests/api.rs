//! The REST API's contract over real HTTP: authentication, validation errors that name
//! the field, media types, limits. The agent runs in-process with the in-memory engine;
//! the Docker suites cover the engine.

use std::sync::Arc;

use motey::app::Agent;
use motey::config::RawConfig;
use motey_val::fake::FakeEngine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "api-test-token";

struct TestAgent {
    base: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn agent(settings: &[(&str, &str, &str)]) -> TestAgent {
    agent_in(tempfile::tempdir().unwrap(), settings).await
}

/// An agent on a data directory the test has prepared.
async fn agent_in(dir: tempfile::TempDir, settings: &[(&str, &str, &str)]) -> TestAgent {
    let mut raw = RawConfig::defaults();
    raw.set("GENERAL", "data_dir", dir.path().display().to_string());
    raw.set("GENERAL", "node_id", "api-node");
    raw.set("WEBSERVER", "ip", "127.0.0.1");
    raw.set("WEBSERVER", "port", "0");
    raw.set("WEBSERVER", "token", TOKEN);
    raw.set("WEBSERVER", "max_body_bytes", "4096");
    raw.set("MQTT", "embedded", "true");
    raw.set("MQTT", "port", "0");
    raw.set("ZEROMQ", "peer_port", "0");
    for (section, key, value) in settings {
        raw.set(section, key, *value);
    }
    let config = raw.parse_config().unwrap();
    let agent = Agent::bind_with_engine(config, Arc::new(FakeEngine::new()))
        .await
        .unwrap();
    let base = format!("http://{}", agent.rest_address());
    let shutdown = CancellationToken::new();
    tokio::spawn(agent.run(shutdown.clone()));
    TestAgent {
        base,
        shutdown,
        _dir: dir,
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn yaml(agent: &TestAgent, body: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/services", agent.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-yaml")
        .body(body.to_owned())
}

#[tokio::test]
async fn mutations_and_reads_need_the_token_by_default() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let (status, body) = send(
        client
            .post(format!("{}/v1/services", agent.base))
            .header("content-type", "application/x-yaml")
            .body("name: a\nimages: [{image: x}]\n"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = send(
        client
            .put(format!("{}/v1/capabilities", agent.base))
            .bearer_auth("wrong")
            .json(&json!([])),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = send(client.get(format!("{}/v1/services", agent.base))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[tokio::test]
async fn open_reads_serve_reads_without_the_token() {
    let agent = agent(&[("WEBSERVER", "open_reads", "true")]).await;
    let client = reqwest::Client::new();
    let (status, _) = send(client.get(format!("{}/v1/services", agent.base))).await;
    assert_eq!(status, 200);
    let (status, _) = send(
        client
            .get(format!("{}/v1/services", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    // Liveness stays open for probes.
    let (status, health) = send(client.get(format!("{}/health", agent.base))).await;
    assert_eq!(
        (status, health["node_id"].as_str()),
        (200, Some("api-node"))
    );
}

#[tokio::test]
async fn blueprint_errors_name_the_field() {
    let agent = agent(&[]).await;
    let (status, body) = send(yaml(
        &agent,
        "name: s\nimages:\n  - image: a\n  - image: b\n    ports: [\"80:abc\"]\n",
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_blueprint");
    assert_eq!(body["field"], "images[1].ports[0]");
    assert_eq!(
        body["message"],
        r#"images[1].ports[0]: "80:abc" is not a port mapping"#
    );

    let (status, body) = send(yaml(&agent, "name: [unclosed")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_yaml"))
    );

    let (status, body) = send(yaml(
        &agent,
        "name: s\nimages:\n  - image: a\n    privileged: true\n",
    ))
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "option_not_allowed");
    assert_eq!(body["field"], "images[0].privileged");
}

#[tokio::test]
async fn media_type_and_size_are_checked() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let (status, body) = send(
        client
            .post(format!("{}/v1/services", agent.base))
            .bearer_auth(TOKEN)
            .header("content-type", "text/plain")
            .body("name: a"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let huge = format!(
        "name: a\ndescription: {}\nimages: [{{image: x}}]\n",
        "x".repeat(10_000)
    );
    let (status, body) = send(yaml(&agent, &huge)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("body_too_large"))
    );
}

#[tokio::test]
async fn services_are_created_shown_listed_and_terminated() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let response = yaml(
        &agent,
        "name: shop\nimages:\n  - {name: web, image: nginx}\n",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/services/{}", created["id"].as_str().unwrap())
    );
    assert_eq!(created["images"][0]["name"], "web");

    let (status, shown) = send(
        client
            .get(format!("{}{location}", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["name"], "shop");
    let (_, listed) = send(
        client
            .get(format!("{}/v1/services", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let (status, stopping) = send(
        client
            .delete(format!("{}{location}", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(stopping["desired"], "TERMINATED");

    let (status, body) = send(
        client
            .get(format!("{}/v1/services/nope", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = send(
        client
            .get(format!("{}/v1/nothing-here", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn capabilities_are_added_validated_and_removed() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/capabilities", agent.base);
    let zigbee = json!([{"capability": "zigbee", "capability_type": "hardware"}]);
    let (status, body) = send(client.put(&url).bearer_auth(TOKEN).json(&zigbee)).await;
    assert_eq!(status, 201);
    assert_eq!(body, zigbee);
    let (status, body) = send(
        client
            .put(&url)
            .bearer_auth(TOKEN)
            .json(&json!([{"capability": "x"}])),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["field"], "[0].capability_type");
    let (status, body) = send(client.put(&url).bearer_auth(TOKEN).body("not json")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, body) = send(client.delete(&url).bearer_auth(TOKEN).json(&zigbee)).await;
    assert_eq!((status, body), (200, json!([])));
}

#[tokio::test]
async fn nodes_and_node_status_describe_this_node() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let (status, nodes) = send(
        client
            .get(format!("{}/v1/nodes", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(nodes[0]["id"], "api-node");
    assert_eq!(nodes[0]["this_node"], true);
    let (status, node_status) = send(
        client
            .get(format!("{}/v1/nodestatus", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert!(node_status["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(node_status["cpu_count"].as_u64().unwrap() > 0);
    assert_eq!(node_status["engine"], "fake");
}

#[tokio::test]
async fn every_mutating_endpoint_refuses_a_missing_or_wrong_token() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", agent.base);
    for token in [None, Some("wrong-token")] {
        let requests = [
            client
                .post(url("/v1/services"))
                .header("content-type", "application/x-yaml")
                .body("name: a\nimages: [{image: x}]"),
            client.delete(url("/v1/services/some-id")),
            client.put(url("/v1/capabilities")).json(&json!([])),
            client.delete(url("/v1/capabilities")).json(&json!([])),
            client
                .post(url("/v1/service"))
                .header("content-type", "application/x-yaml")
                .body("service_name: a\nimages: [{name: x}]"),
            client.delete(url("/v1/service")).body("service_name: a"),
        ];
        for request in requests {
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let built = request.build().unwrap();
            let description = format!("{} {}", built.method(), built.url().path());
            let response = client.execute(built).await.unwrap();
            assert_eq!(
                response.status().as_u16(),
                401,
                "{description} with {token:?}"
            );
        }
    }
}

#[tokio::test]
async fn motey_paths_heartbeat_openapi_and_links() {
    let agent = agent(&[]).await;
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/v1/heartbeat", agent.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, openapi) = send(
        client
            .get(format!("{}/v1/openapi.json", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/v1/services"]["post"].is_object());

    let motey = "service_name: first_service\nimages:\n- name: alpine\n  engine: docker\n";
    let (status, created) = send(
        client
            .post(format!("{}/v1/service", agent.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-yaml")
            .body(motey),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["links"]["self"], format!("/v1/services/{id}"));
    assert_eq!(created["links"]["nodes"], "/v1/nodes");
    let (_, listed) = send(
        client
            .get(format!("{}/v1/service", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(listed[0]["id"], id);

    let (status, stopped) = send(
        client
            .delete(format!("{}/v1/service", agent.base))
            .bearer_auth(TOKEN)
            .body(motey),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(stopped[0]["desired"], "TERMINATED");
    let (status, _) = send(
        client
            .delete(format!("{}/v1/service", agent.base))
            .bearer_auth(TOKEN)
            .body(motey),
    )
    .await;
    assert_eq!(status, 404, "nothing left running under that name");
}

#[tokio::test]
async fn an_undecodable_record_is_quarantined_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path().join("db")).unwrap();
        let services = db.open_tree("services").unwrap();
        services
            .insert("broken-record", &b"\xff{not json"[..])
            .unwrap();
        db.flush().unwrap();
    }
    let agent = agent_in(dir, &[]).await;
    let client = reqwest::Client::new();
    let (status, node) = send(
        client
            .get(format!("{}/v1/nodestatus", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["quarantined_count"], 1, "{node}");
    assert_eq!(
        node["quarantined_records"][0],
        json!({ "collection": "services", "key": "broken-record" })
    );

    let (status, created) = send(yaml(&agent, "name: after\nimages: [{image: nginx}]\n")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let (_, service) = send(
                client
                    .get(format!("{}/v1/services/{id}", agent.base))
                    .bearer_auth(TOKEN),
            )
            .await;
            if service["state"] == "RUNNING" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        running.is_ok(),
        "the service deployed after the bad record never ran"
    );
    let (status, listed) = send(
        client
            .get(format!("{}/v1/services", agent.base))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{listed}");
}
