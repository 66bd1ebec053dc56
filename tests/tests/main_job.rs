//! The README's first command, end to end: `scripts/run-survey.sh` builds what it needs,
//! starts real agents with embedded defaults, deploys the Data API and meter reader
//! containers through the REST API, and the simulated meter's readings reach the Data API
//! through the whole chain (probe → reader container → Data API container). Ctrl-C
//! (SIGINT to the script) must leave no container and no agent behind.
//!
//! Cycles are shortened through the script's own settings; everything else is what a user
//! runs. One test per layout: one node, and the three-node field layout (`--cluster`) where
//! the reader, posted to an edge node without the probe, must land on the probe node.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use motey_val::labels;
use serde_json::Value;
use system_tests::{docker, free_port, wait_for};

/// The script builds release binaries and images first: on a busy 2-core machine that can
/// take many minutes, so the first milestone is generous and the later ones are not.
const BUILD_PATIENCE: Duration = Duration::from_secs(40 * 60);
const FLOW_PATIENCE: Duration = Duration::from_secs(4 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survey_runs_on_one_node_and_leaves_nothing_behind() {
    run_survey(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survey_runs_on_three_nodes_with_the_reader_on_the_probe_node() {
    run_survey(true).await;
}

async fn run_survey(cluster: bool) {
    let mut survey = SurveyRun::start(cluster);
    wait_for("the survey to run", BUILD_PATIENCE, || async {
        let out = survey.output();
        assert!(
            !out.contains("did not reach RUNNING") && !out.contains("refused:"),
            "the survey failed to start:\n{out}"
        );
        out.contains("The survey runs").then_some(())
    })
    .await;

    let nodes = survey.agent(0, "/v1/nodes").await;
    let nodes = nodes.as_array().expect("a node list").clone();
    assert_eq!(nodes.len(), if cluster { 3 } else { 1 }, "{nodes:?}");
    let node_ids: Vec<String> = nodes
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect();

    let reader_owner = if cluster { 2 } else { 0 };
    let services = survey.agent(reader_owner, "/v1/services").await;
    let reader = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "meter-reader")
        .expect("the meter reader service")
        .clone();
    assert_eq!(reader["state"], "RUNNING", "{reader}");
    let reader_node = reader["images"][0]["node"].as_str().unwrap();
    let node_name = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .map(|n| n["name"].as_str().unwrap().to_owned())
    };
    let expected = if cluster { "edge-probe" } else { "survey" };
    assert_eq!(
        node_name(reader_node).as_deref(),
        Some(expected),
        "{reader}"
    );
    if cluster {
        let api = survey.agent(0, "/v1/services").await;
        assert!(
            api.as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "data-api" && s["images"][0]["node"] == node_ids[0]),
            "the Data API runs on the cloud node: {api}"
        );
    }

    // The export names meters by pseudonym: the demo's one household has one
    // electricity meter.
    let measurements = wait_for("a measurement in the Data API", FLOW_PATIENCE, || async {
        let rows = survey.exported_measurements().await;
        let ours: Vec<Value> = rows
            .into_iter()
            .filter(|m| m["meter_type"] == "ELECTRICITY")
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .await;
    let power = &measurements[0].to_string();
    assert!(
        power.contains("0100010800ff"),
        "the meter's energy register arrives: {power}"
    );

    // Device access (FR-11) on the real workload, through the node that owns the reader
    // (in the cluster the reader runs on a peer and the owner proxies).
    let reader_id = reader["id"].as_str().unwrap();
    let exec = survey
        .admin_call(
            reader_owner,
            reqwest::Method::POST,
            &format!("/v1/services/{reader_id}/images/reader/exec"),
            Some(serde_json::json!({"command": ["meter-reader", "status"]})),
        )
        .await;
    assert_eq!(exec["exit_code"], 0, "{exec}");
    assert!(
        exec["output"]
            .as_str()
            .unwrap_or_default()
            .contains("pending_measurements"),
        "{exec}"
    );
    let logs = survey
        .admin_text(
            reader_owner,
            &format!("/v1/services/{reader_id}/images/reader/logs?tail=50"),
        )
        .await;
    assert!(logs.contains("meter_reader"), "the reader's log: {logs}");

    survey.interrupt_and_wait();
    for id in &node_ids {
        let left = docker::containers_with_label(labels::NODE_ID, id);
        assert!(left.is_empty(), "containers of {id} left behind: {left:?}");
    }
    for node in survey.node_dirs() {
        assert!(
            !node.join("motey.pid").exists(),
            "the agent in {} still runs",
            node.display()
        );
    }
}

/// One run of the script in its own survey directory and ports; whatever a failed test
/// leaves running is stopped when it is dropped.
struct SurveyRun {
    script: Option<Child>,
    dir: PathBuf,
    output: PathBuf,
    motey_port: u16,
    api_port: u16,
    _tmp: tempfile::TempDir,
}

impl SurveyRun {
    fn start(cluster: bool) -> SurveyRun {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("survey");
        let output = tmp.path().join("run-survey.out");
        let motey_port = consecutive_free_ports(3);
        let api_port = free_port();
        let mut command = Command::new("bash");
        command
            .arg(docker::repo_root().join("scripts/run-survey.sh"))
            .args(cluster.then_some("--cluster"))
            .env("SURVEY_DIR", &dir)
            .env("MOTEY_PORT", motey_port.to_string())
            .env("PEER_PORT", consecutive_free_ports(3).to_string())
            .env("MQTT_PORT", free_port().to_string())
            .env("DATA_API_PORT", api_port.to_string())
            .env("DEVICE_PORT", free_port().to_string())
            .env("PROBE_PORT", free_port().to_string())
            .env("MEASUREMENT_INTERVAL", "2")
            .env("REPORT_INTERVAL", "4")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(std::fs::File::create(tmp.path().join("run-survey.err")).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let script = command.spawn().expect("run scripts/run-survey.sh");
        SurveyRun {
            script: Some(script),
            dir,
            output,
            motey_port,
            api_port,
            _tmp: tmp,
        }
    }

    fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.output).unwrap_or_default();
        let err = std::fs::read_to_string(self.output.with_extension("err")).unwrap_or_default();
        format!("{out}\n--- stderr ---\n{err}")
    }

    fn node_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.join("nodes"))
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    async fn agent(&self, node: u16, path: &str) -> Value {
        let token = std::fs::read_to_string(self.dir.join("api-token")).unwrap();
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.motey_port + node))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The admin token the script gives every node (logs and exec need it).
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    async fn admin_call(
        &self,
        node: u16,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut request = reqwest::Client::new()
            .request(
                method,
                format!("http://127.0.0.1:{}{path}", self.motey_port + node),
            )
            .bearer_auth(self.admin_token());
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn admin_text(&self, node: u16, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.motey_port + node))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn exported_measurements(&self) -> Vec<Value> {
        let pki = self.dir.join("pki");
        let ca = std::fs::read(pki.join("ca.pem")).unwrap();
        let token = std::fs::read_to_string(pki.join("researcher.token")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let Ok(response) = client
            .get(format!(
                "https://127.0.0.1:{}/management/export/measurements?format=jsonl",
                self.api_port
            ))
            .bearer_auth(token.trim())
            .send()
            .await
        else {
            return Vec::new();
        };
        let body = response.text().await.unwrap_or_default();
        body.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Ctrl-C as a user gives it: SIGINT to the script, which terminates the services and
    /// stops the agents before it exits.
    fn interrupt_and_wait(&mut self) {
        let mut script = self.script.take().unwrap();
        signal(script.id(), "INT");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = script.try_wait().unwrap() {
                assert!(
                    status.code() == Some(130),
                    "the script ends as interrupted, got {status:?}:\n{}",
                    self.output()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the script did not stop within 3 minutes:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SurveyRun {
    fn drop(&mut self) {
        if let Some(mut script) = self.script.take() {
            signal(script.id(), "INT");
            let _ = wait_with_timeout(&mut script, Duration::from_secs(120));
            let _ = script.kill();
            let _ = script.wait();
        }
        // Agents run in their own sessions; if the script could not stop them, do it here.
        for node in self.node_dirs() {
            if let Ok(pid) = std::fs::read_to_string(node.join("motey.pid")) {
                signal(pid.trim().parse().unwrap_or(0), "KILL");
            }
            if let Ok(id) = std::fs::read_to_string(node.join("node-id")) {
                docker::remove_containers_with_label(labels::NODE_ID, id.trim());
            }
        }
        if std::thread::panicking() {
            eprintln!("run-survey.sh output:\n{}", self.output());
            for log in ["survey", "cloud", "edge-probe", "edge-plain"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(format!("{log}.log"))) {
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- {log}.log (last lines) ---");
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

fn signal(pid: u32, name: &str) {
    if pid > 1 {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status();
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// The first of `count` consecutive loopback ports that are free right now (the script
/// gives its nodes consecutive ports).
fn consecutive_free_ports(count: u16) -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let first = free_port();
        if first < u16::MAX - count && (1..count).all(|i| free(first + i)) {
            return first;
        }
    }
}
