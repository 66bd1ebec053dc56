//! Remote update (FR-10) and device access (FR-11) end to end: the real `motey` binary,
//! real Docker, real HTTP, and for peer-hosted images a second agent over the signed
//! ZeroMQ peer protocol.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use motey_val::labels;
use serde_json::Value;
use support::{client, send_json, AgentProcess, TOKEN};
use system_tests::docker::{containers_with_label, docker};
use system_tests::wait_for;

const ADMIN: &str = "test-admin-token-9876543210";
const KEY: &str = "update-test-cluster-key-0123456789";

fn update_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MOTEY_SECURITY_ADMIN_TOKEN", ADMIN),
        ("MOTEY_ORCHESTRATOR_UPDATE_SETTLE", "3"),
        ("MOTEY_ORCHESTRATOR_UPDATE_TIMEOUT", "60"),
        ("MOTEY_SECURITY_EXEC_TIMEOUT", "2"),
    ]
}

fn blueprint(body: &str, extra_env: &str) -> String {
    format!(
        "name: updatable\nimages:\n  - name: web\n    image: motey/testbox:latest\n    env: {{TESTBOX_BODY: {body}{extra_env}}}\n"
    )
}

/// The `TESTBOX_BODY` of every running container of a service, as Docker sees them.
fn running_bodies(service: &str) -> Vec<String> {
    containers_with_label(labels::SERVICE_ID, service)
        .iter()
        .filter_map(|id| {
            let out = docker(&[
                "inspect",
                "-f",
                "{{.State.Running}} {{range .Config.Env}}{{println .}}{{end}}",
                id,
            ])
            .ok()?;
            if !out.starts_with("true") {
                return None;
            }
            out.split_whitespace()
                .find_map(|word| word.strip_prefix("TESTBOX_BODY=").map(str::to_owned))
        })
        .collect()
}

async fn put_blueprint(agent: &AgentProcess, id: &str, yaml: &str, token: &str) -> (u16, Value) {
    let request = client()
        .put(agent.url(&format!("/v1/services/{id}")))
        .header("content-type", "application/x-yaml")
        .body(yaml.to_owned());
    send_json(request, token).await
}

async fn wait_for_phase(agent: &AgentProcess, id: &str, phase: &str) -> Value {
    let path = format!("/v1/services/{id}");
    let mut last = Value::Null;
    for _ in 0..300 {
        let (_, service) = agent.get(&path).await;
        if service["update"]["phase"] == phase {
            return service;
        }
        last = service;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!(
        "update of {id} did not reach {phase}; last seen {last:#}\nagent log:\n{}",
        agent.log()
    );
}

/// Samples Docker every 100 ms while an update runs and remembers whether there was ever
/// a moment with no running container of the service.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, Vec<Vec<String>>)>,
}

impl Watch {
    fn start(service: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let service = service.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut gaps = 0;
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let bodies = running_bodies(&service);
                if bodies.is_empty() {
                    gaps += 1;
                }
                if seen.last() != Some(&bodies) {
                    seen.push(bodies);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (gaps, seen)
        });
        Watch { stop, thread }
    }

    fn finish(self) -> (usize, Vec<Vec<String>>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn motey_cli(agent: &AgentProcess, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(args)
        .env("MOTEY_GENERAL_DATA_DIR", agent.data_dir())
        .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
        .env("MOTEY_WEBSERVER_PORT", agent.port.to_string())
        .env("MOTEY_WEBSERVER_TOKEN", TOKEN)
        .env("MOTEY_SECURITY_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap()
}

#[tokio::test]
async fn good_update_replaces_the_image_with_no_moment_where_neither_runs() {
    let agent = AgentProcess::start_with("update-good", &update_env()).await;
    let (status, created) = agent.post_blueprint(&blueprint("v1", "")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running_bodies(&id), ["v1"]);

    // The update goes through the command line, which follows it to its end.
    let file = agent.data_dir().join("v2.yaml");
    std::fs::write(&file, blueprint("v2", "")).unwrap();
    let watch = Watch::start(&id);
    let output = motey_cli(&agent, &["update", &id, file.to_str().unwrap(), "--wait"]);
    let (gaps, seen) = watch.finish();
    assert!(
        output.status.success(),
        "{}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    assert_eq!(gaps, 0, "a moment without a running container: {seen:?}");
    assert!(
        seen.iter().any(|bodies| bodies.len() == 2),
        "both versions ran side by side for a while: {seen:?}"
    );
    assert_eq!(running_bodies(&id), ["v2"]);
    assert_eq!(containers_with_label(labels::SERVICE_ID, &id).len(), 1);

    let service = agent.wait_for_state(&id, "RUNNING").await;
    assert_eq!(service["version"], 2);
    assert_eq!(service["update"]["phase"], "COMPLETED");
    let (_, history) = agent.get(&format!("/v1/services/{id}/history")).await;
    let events: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["deployed", "update_started", "updated"]);
    let output = motey_cli(&agent, &["history", &id]);
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("updated") && printed.contains("web=motey/testbox:latest"),
        "{printed}"
    );

    // The same blueprint again is not an update.
    let (status, refused) = put_blueprint(&agent, &id, &blueprint("v2", ""), TOKEN).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "no_change");
    // An update must keep the service's images: the field is named.
    let (status, refused) = put_blueprint(
        &agent,
        &id,
        "name: updatable\nimages:\n  - {name: other, image: motey/testbox:latest}\n",
        TOKEN,
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["field"], "images[0].name");
    // And the API token is needed.
    let (status, _) = put_blueprint(&agent, &id, &blueprint("v3", ""), "wrong").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn broken_update_rolls_back_to_the_previous_version_automatically() {
    let agent = AgentProcess::start_with("update-broken", &update_env()).await;
    let (_, created) = agent.post_blueprint(&blueprint("v1", "")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;

    // Version 2 exits a second after it starts: it never passes the 3 s check.
    let watch = Watch::start(&id);
    let (status, updating) = put_blueprint(
        &agent,
        &id,
        &blueprint("v2", ", TESTBOX_EXIT_AFTER_MS: 1000, TESTBOX_EXIT_CODE: 3"),
        TOKEN,
    )
    .await;
    assert_eq!(status, 202, "{updating}");
    assert_eq!(updating["state"], "UPDATING");
    let rolled_back = wait_for_phase(&agent, &id, "ROLLED_BACK").await;
    let (gaps, seen) = watch.finish();
    assert_eq!(gaps, 0, "version 1 kept running throughout: {seen:?}");

    let service = agent.wait_for_state(&id, "ROLLED_BACK").await;
    let reason = service["reason"].as_str().unwrap();
    assert!(
        reason.contains("rolled back") && reason.contains("exited with code 3"),
        "{reason}"
    );
    assert_eq!(service["version"], 1);
    assert!(rolled_back["update"]["reason"]
        .as_str()
        .unwrap()
        .contains("image web version 2"));
    assert_eq!(running_bodies(&id), ["v1"]);
    // The failed container is gone; only version 1 is left.
    assert_eq!(containers_with_label(labels::SERVICE_ID, &id).len(), 1);
    let (_, history) = agent.get(&format!("/v1/services/{id}/history")).await;
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "rolled_back");
    assert_eq!(last["version"], 2);
}

#[tokio::test]
async fn agent_killed_mid_update_converges_to_one_version() {
    let mut agent = AgentProcess::start_with(
        "update-restart",
        &[
            ("MOTEY_SECURITY_ADMIN_TOKEN", ADMIN),
            ("MOTEY_ORCHESTRATOR_UPDATE_SETTLE", "8"),
        ],
    )
    .await;
    let (_, created) = agent.post_blueprint(&blueprint("v1", "")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    agent.wait_for_state(&id, "RUNNING").await;
    put_blueprint(&agent, &id, &blueprint("v2", ""), TOKEN).await;
    wait_for("both versions to run", Duration::from_secs(60), || {
        let id = id.clone();
        async move { (running_bodies(&id).len() == 2).then_some(()) }
    })
    .await;
    agent.restart().await;
    wait_for_phase(&agent, &id, "COMPLETED").await;
    assert_eq!(running_bodies(&id), ["v2"]);
    assert_eq!(containers_with_label(labels::SERVICE_ID, &id).len(), 1);
}

async fn logs(
    agent: &AgentProcess,
    id: &str,
    image: &str,
    query: &str,
    token: &str,
) -> (u16, String) {
    let response = client()
        .get(agent.url(&format!("/v1/services/{id}/images/{image}/logs{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn exec(
    agent: &AgentProcess,
    id: &str,
    image: &str,
    command: &[&str],
    token: &str,
) -> (u16, Value) {
    let request = client()
        .post(agent.url(&format!("/v1/services/{id}/images/{image}/exec")))
        .json(&serde_json::json!({ "command": command }));
    send_json(request, token).await
}

/// Follows a log until `needle` shows up in it after `trigger` ran.
async fn follow_until(
    agent: &AgentProcess,
    path: &str,
    trigger: impl FnOnce(),
    needle: &str,
) -> String {
    let response = client()
        .get(agent.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut stream = response.bytes_stream();
    use futures::StreamExt;
    let mut text = String::new();
    // The tail comes first...
    while !text.contains("testbox started") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the tail of the log")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    // ...then what the container writes from now on.
    trigger();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !text.contains(needle) {
            match stream.next().await {
                Some(Ok(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{needle:?} never came; followed so far:\n{text}"));
    text
}

/// Checks logs and exec of one image through `agent`'s API, the image running in
/// `container` with `TESTBOX_BODY=body`.
async fn check_access(agent: &AgentProcess, id: &str, image: &str, body: &str, container: &str) {
    // Without a token: 401; with the API token only: 403; with the admin token: the log.
    let (status, _) = logs(agent, id, image, "", "").await;
    assert_eq!(status, 401);
    let (status, refused) = logs(agent, id, image, "", TOKEN).await;
    assert_eq!(status, 403, "{refused}");
    assert!(refused.contains("admin_token_required"), "{refused}");
    let (status, _) = exec(agent, id, image, &["/usr/local/bin/testbox"], TOKEN).await;
    assert_eq!(status, 403);
    let (status, _) = exec(agent, id, image, &["/usr/local/bin/testbox"], "").await;
    assert_eq!(status, 401);

    let (status, text) = logs(agent, id, image, "?tail=50", ADMIN).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("testbox started"), "{text}");
    assert!(text.contains(&format!("env TESTBOX_BODY={body}")), "{text}");
    let (_, last) = logs(agent, id, image, "?tail=1&timestamps=true", ADMIN).await;
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.starts_with("20"), "a timestamp first: {last}");
    let (status, refused) = logs(agent, id, image, "?tail=lots", ADMIN).await;
    assert_eq!(status, 400);
    assert!(refused.contains("\"field\":\"tail\""), "{refused}");

    // The diagnostic command is a second testbox in the container: it inherits the
    // container's environment, prints it, and idles, so it also meets the time limit.
    let (status, ran) = exec(agent, id, image, &["/usr/local/bin/testbox"], ADMIN).await;
    assert_eq!(status, 200, "{ran}");
    let output = ran["output"].as_str().unwrap();
    assert!(
        output.contains(&format!("env TESTBOX_BODY={body}")),
        "{ran}"
    );
    assert_eq!(ran["timed_out"], true, "{ran}");
    let (status, missing) = exec(agent, id, image, &["/bin/sh", "-c", "true"], ADMIN).await;
    assert_eq!(status, 200, "{missing}");
    assert_ne!(missing["exit_code"], 0, "{missing}");
    let (status, refused) = exec(agent, id, image, &[], ADMIN).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["field"], "command");

    // Following: the tail, then the line the container writes when it is stopped.
    let path = format!("/v1/services/{id}/images/{image}/logs?follow=true&tail=10");
    let container = container.to_owned();
    let followed = follow_until(
        agent,
        &path,
        move || {
            docker(&["stop", "-t", "5", &container]).unwrap();
        },
        "testbox got SIGTERM",
    )
    .await;
    assert!(followed.contains("testbox started"), "{followed}");
}

#[tokio::test]
async fn logs_and_exec_for_a_local_image_need_the_admin_token() {
    let agent = AgentProcess::start_with("access-local", &update_env()).await;
    let (_, created) = agent.post_blueprint(&blueprint("local", "")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = agent.wait_for_state(&id, "RUNNING").await;
    let container = running["images"][0]["container_id"].as_str().unwrap();

    // The command line reads the admin token like the agent does.
    let output = motey_cli(&agent, &["logs", &id, "web", "--tail", "20"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("env TESTBOX_BODY=local"));
    let output = motey_cli(
        &agent,
        &["exec", &id, "web", "--", "/usr/local/bin/testbox"],
    );
    assert_eq!(output.status.code(), Some(124), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("testbox started"));
    assert!(agent.log().contains("diagnostic command run"));

    check_access(&agent, &id, "web", "local", container).await;
    let (status, _) = logs(&agent, &id, "nope", "", ADMIN).await;
    assert_eq!(status, 404);
    // The OpenAPI document names the new endpoints.
    let (_, openapi) = agent.get("/v1/openapi.json").await;
    for path in [
        "/v1/services/{id}/history",
        "/v1/services/{id}/images/{image}/logs",
        "/v1/services/{id}/images/{image}/exec",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path}");
    }
    assert!(openapi["paths"]["/v1/services/{id}"]["put"].is_object());
}

/// An owner running the broker and an edge node with the `optical-probe` capability,
/// peers of each other.
async fn fog(test: &str) -> (AgentProcess, AgentProcess) {
    let mut env = update_env();
    env.push(("MOTEY_CLUSTER_KEY", KEY));
    env.push(("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"));
    support::owner_and_probe_edge(test, &env, &[], &[]).await
}

fn reader(body: &str, extra_env: &str) -> String {
    format!("name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n    env: {{TESTBOX_BODY: {body}{extra_env}}}\n    capabilities: [optical-probe]\n")
}

#[tokio::test]
async fn peer_hosted_image_is_updated_on_its_peer_and_rolled_back_there() {
    let (owner, edge) = fog("update-peer").await;
    let (_, created) = owner.post_blueprint(&reader("edge-v1", "")).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = owner.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], edge.node_id.as_str());
    assert_eq!(running_bodies(&id), ["edge-v1"]);

    // The edge starts the new version beside the old one, as the owner would.
    let watch = Watch::start(&id);
    let (status, _) = put_blueprint(&owner, &id, &reader("edge-v2", ""), TOKEN).await;
    assert_eq!(status, 202);
    wait_for_phase(&owner, &id, "COMPLETED").await;
    let (gaps, seen) = watch.finish();
    assert_eq!(gaps, 0, "a moment without a running container: {seen:?}");
    assert_eq!(running_bodies(&id), ["edge-v2"]);
    assert!(
        owner.containers().is_empty(),
        "the image stayed on the edge"
    );

    let (status, _) = put_blueprint(
        &owner,
        &id,
        &reader(
            "edge-v3",
            ", TESTBOX_EXIT_AFTER_MS: 1000, TESTBOX_EXIT_CODE: 3",
        ),
        TOKEN,
    )
    .await;
    assert_eq!(status, 202);
    wait_for_phase(&owner, &id, "ROLLED_BACK").await;
    let service = owner.wait_for_state(&id, "ROLLED_BACK").await;
    assert!(
        service["reason"]
            .as_str()
            .unwrap()
            .contains("image reader version 3"),
        "{service:#}"
    );
    wait_for(
        "version 2 to run on the edge again",
        Duration::from_secs(60),
        || {
            let id = id.clone();
            async move { (running_bodies(&id) == ["edge-v2"]).then_some(()) }
        },
    )
    .await;
    assert_eq!(edge.containers().len(), 1);
}

#[tokio::test]
async fn logs_and_exec_for_a_peer_hosted_image_go_through_the_owner() {
    let (owner, edge) = fog("access").await;
    let (_, created) = owner
        .post_blueprint("name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n    env: {TESTBOX_BODY: on-edge}\n    capabilities: [optical-probe]\n")
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let running = owner.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], edge.node_id.as_str());
    assert!(owner.containers().is_empty());
    let container = edge.containers().pop().expect("the edge runs the reader");

    check_access(&owner, &id, "reader", "on-edge", &container).await;
    // The edge logged the command as run for its owner.
    assert!(edge
        .log()
        .contains("diagnostic command run for the owner node"));
}
