//! Agents as real processes (the `motey` binary) with their own data directory, ports and
//! node id, and an HTTP client for their REST API.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use motey_val::labels;
use serde_json::Value;
use system_tests::{docker, free_port};

pub const TOKEN: &str = "test-token-0123456789";

/// One `motey start` process; killed (and its containers removed) when dropped.
pub struct AgentProcess {
    child: Option<Child>,
    pub node_id: String,
    pub port: u16,
    /// Port of this agent's embedded broker (unless the test points it elsewhere).
    pub mqtt_port: u16,
    /// Port of this agent's peer server.
    pub peer_port: u16,
    pub data_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl AgentProcess {
    /// Starts an agent in a fresh data directory.
    pub async fn start(test: &str) -> AgentProcess {
        AgentProcess::start_with(test, &[]).await
    }

    pub async fn start_with(test: &str, env: &[(&str, &str)]) -> AgentProcess {
        docker::ensure_testbox();
        AgentProcess::start_without_images(test, env).await
    }

    /// Starts an agent for a test that deploys no container (the REST server, the peer
    /// port), without building the test images first.
    pub async fn start_without_images(test: &str, env: &[(&str, &str)]) -> AgentProcess {
        AgentProcess::start_prepared(new_node_id(test), tempfile::tempdir().unwrap(), env).await
    }

    /// Starts an agent as `node_id` in a data directory already prepared (e.g. by
    /// `motey join`).
    pub async fn start_prepared(
        node_id: String,
        dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> AgentProcess {
        let mut agent = AgentProcess {
            child: None,
            node_id,
            port: free_port(),
            mqtt_port: free_port(),
            peer_port: free_port(),
            data_dir: dir.path().to_path_buf(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _dir: Some(dir),
        };
        agent.spawn().await;
        agent
    }

    /// Starts the agent and waits for its REST API. Ports come from `free_port`, which
    /// another test may take before this agent binds them: an agent that exits at its
    /// first start because an address is in use is started again on fresh ports, instead
    /// of the test waiting in vain. Any other early exit fails with the agent's log.
    async fn spawn(&mut self) {
        let first_start = self.child.is_none() && !self.data_dir.join("agent.log").exists();
        for _attempt in 0..3 {
            self.launch();
            match self.wait_until_serving().await {
                Ok(()) => return,
                Err(log) if first_start && log.contains("in use") => {
                    self.port = free_port();
                    self.mqtt_port = free_port();
                    self.peer_port = free_port();
                    let _ = std::fs::remove_file(self.data_dir.join("agent.log"));
                }
                Err(log) => panic!("the agent {} exited at start:\n{log}", self.node_id),
            }
        }
        panic!(
            "the agent {} found no free ports in 3 attempts",
            self.node_id
        );
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_motey"))
            .arg("start")
            .env("MOTEY_GENERAL_DATA_DIR", &self.data_dir)
            .env("MOTEY_GENERAL_NODE_ID", &self.node_id)
            .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
            .env("MOTEY_WEBSERVER_PORT", self.port.to_string())
            .env("MOTEY_WEBSERVER_TOKEN", TOKEN)
            .env("MOTEY_ORCHESTRATOR_RECONCILE_INTERVAL", "2")
            .env("MOTEY_ORCHESTRATOR_STOP_GRACE", "2")
            .env("MOTEY_ZEROMQ_PEER_PORT", self.peer_port.to_string())
            .env("MOTEY_MQTT_PORT", self.mqtt_port.to_string())
            .env("MOTEY_LOGGER_LEVEL", "motey=debug,info")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the motey binary");
        self.child = Some(child);
    }

    /// Ok once `/health` answers; the agent's log if the process ended first.
    async fn wait_until_serving(&mut self) -> Result<(), String> {
        let url = self.url("/health");
        let limit = Duration::from_secs(60);
        let started = std::time::Instant::now();
        loop {
            if let Ok(response) = self.http().get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("({status})\n{}", self.log()));
                }
            }
            assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for the REST API of {}:\n{}",
                self.node_id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme(), self.port)
    }

    fn setting(&self, name: &str) -> Option<&str> {
        self.extra_env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `https` when the agent's settings make it serve TLS (`[WEBSERVER] tls`: on, or
    /// auto on an address that is not loopback).
    pub fn scheme(&self) -> &'static str {
        let beyond_loopback = self
            .setting("MOTEY_WEBSERVER_IP")
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| !ip.is_loopback());
        match self.setting("MOTEY_WEBSERVER_TLS") {
            Some("on") => "https",
            Some("off") => "http",
            _ if beyond_loopback => "https",
            _ => "http",
        }
    }

    /// The certificate an HTTPS agent generated on its first start.
    pub fn certificate_file(&self) -> PathBuf {
        self.data_dir.join("rest-cert.pem")
    }

    /// A client for this agent's REST API; over HTTPS it trusts exactly the certificate
    /// the agent generated (and checks that it names 127.0.0.1).
    pub fn http(&self) -> reqwest::Client {
        if self.scheme() == "http" {
            return client();
        }
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_built_in_root_certs(false);
        if let Ok(pem) = std::fs::read(self.certificate_file()) {
            // Every certificate of the file: a node with a cluster CA serves its chain.
            for certificate in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder.build().unwrap()
    }

    /// `kill -9`: no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process id of the running agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the agent again on the same data directory, port and node id.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Containers this agent's node manages, as Docker sees them.
    pub fn containers(&self) -> Vec<String> {
        docker::containers_with_label(labels::NODE_ID, &self.node_id)
    }

    pub async fn post_blueprint(&self, yaml: &str) -> (u16, Value) {
        let request = self
            .http()
            .post(self.url("/v1/services"))
            .header("content-type", "application/x-yaml")
            .body(yaml.to_owned());
        send_json(request, TOKEN).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send_json(self.http().get(self.url(path)), TOKEN).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send_json(self.http().delete(self.url(path)), TOKEN).await
    }

    /// Waits until the service reaches `state`; returns the service.
    /// Waits until `peer` is alive in this agent's `GET /v1/nodes`.
    pub async fn wait_sees_alive(&self, peer: &AgentProcess) {
        system_tests::wait_for(
            &format!("{} to see {} alive", self.node_id, peer.node_id),
            Duration::from_secs(60),
            || async {
                let (_, nodes) = self.get("/v1/nodes").await;
                nodes
                    .as_array()?
                    .iter()
                    .any(|n| n["id"] == peer.node_id.as_str() && n["state"] == "alive")
                    .then_some(())
            },
        )
        .await;
    }

    pub async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let path = format!("/v1/services/{id}");
        let mut last = Value::Null;
        let found = tokio::time::timeout(Duration::from_secs(90), async {
            loop {
                let (_, service) = self.get(&path).await;
                if service["state"] == state {
                    return service;
                }
                last = service;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "service {id} did not reach {state}; last seen {last:#}\nagent log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        docker::remove_containers_with_label(labels::NODE_ID, &self.node_id);
    }
}

/// A fresh node id for a test.
pub fn new_node_id(test: &str) -> String {
    format!(
        "agent-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// Runs the `motey` CLI for the node of `data_dir`.
pub fn motey_cli(data_dir: &Path, node_id: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(args)
        .env("MOTEY_GENERAL_DATA_DIR", data_dir)
        .env("MOTEY_GENERAL_NODE_ID", node_id)
        .output()
        .expect("run the motey binary")
}

/// A join token from the CA node `ca` (`motey cluster token`).
pub fn cluster_token(ca: &AgentProcess, ttl: &str, uses: u32) -> String {
    let uses = uses.to_string();
    let output = motey_cli(
        ca.data_dir(),
        &ca.node_id,
        &["cluster", "token", "--ttl", ttl, "--uses", &uses],
    );
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `motey join` of a node in `data_dir` through the CA node `ca`.
pub fn join_cluster(
    ca: &AgentProcess,
    data_dir: &Path,
    node_id: &str,
    token: &str,
) -> std::process::Output {
    let server = format!("127.0.0.1:{}", ca.port);
    motey_cli(
        data_dir,
        node_id,
        &["join", "--token", token, "--server", &server],
    )
}

/// Settings of a CA node: it makes the cluster CA at its first start and serves HTTPS,
/// as joining needs.
pub const CA_NODE: &[(&str, &str)] = &[
    ("MOTEY_CLUSTER_ROLE", "init"),
    ("MOTEY_WEBSERVER_TLS", "on"),
];

/// A fog whose nodes are members by certificate: a CA node running the broker, and
/// `edges` nodes that joined it with a token each and use its broker.
pub struct JoinedCluster {
    pub ca: AgentProcess,
    pub edges: Vec<AgentProcess>,
}

/// Starts a [`JoinedCluster`]; every node gets `env`, and waits until the CA node knows
/// every edge as alive.
pub async fn joined_cluster(test: &str, env: &[(&str, &str)], edges: usize) -> JoinedCluster {
    let mut ca_env = env.to_vec();
    ca_env.extend_from_slice(CA_NODE);
    let ca = AgentProcess::start_without_images(&format!("{test}-ca"), &ca_env).await;
    let broker = ca.mqtt_port.to_string();
    let mut edge_env = env.to_vec();
    edge_env.extend([
        ("MOTEY_MQTT_EMBEDDED", "false"),
        ("MOTEY_MQTT_PORT", broker.as_str()),
    ]);
    let mut joined = Vec::new();
    for index in 0..edges {
        let node_id = new_node_id(&format!("{test}-edge{index}"));
        let dir = tempfile::tempdir().unwrap();
        let token = cluster_token(&ca, "10m", 1);
        let output = join_cluster(&ca, dir.path(), &node_id, &token);
        assert!(
            output.status.success(),
            "join: {output:?}\nCA log:\n{}",
            ca.log()
        );
        joined.push(AgentProcess::start_prepared(node_id, dir, &edge_env).await);
    }
    for edge in &joined {
        ca.wait_sees_alive(edge).await;
    }
    JoinedCluster { ca, edges: joined }
}

/// Sends `request` with `token` and gives the status and the JSON body (null if none).
pub async fn send_json(request: reqwest::RequestBuilder, token: &str) -> (u16, Value) {
    let response = request.bearer_auth(token).send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An owner running the broker and an edge node with the `optical-probe` capability on
/// the owner's broker, peers of each other: the smallest fog where an image runs on a
/// peer. Both get `env`; each also its own extra settings.
pub async fn owner_and_probe_edge(
    test: &str,
    env: &[(&str, &str)],
    owner_extra: &[(&str, &str)],
    edge_extra: &[(&str, &str)],
) -> (AgentProcess, AgentProcess) {
    let mut owner_env = env.to_vec();
    owner_env.extend_from_slice(owner_extra);
    let owner = AgentProcess::start_with(&format!("{test}-owner"), &owner_env).await;
    let broker = owner.mqtt_port.to_string();
    let mut edge_env = env.to_vec();
    edge_env.extend([
        ("MOTEY_MQTT_EMBEDDED", "false"),
        ("MOTEY_MQTT_PORT", broker.as_str()),
    ]);
    edge_env.extend_from_slice(edge_extra);
    let edge = AgentProcess::start_with(&format!("{test}-edge"), &edge_env).await;
    let added = Command::new(env!("CARGO_BIN_EXE_motey"))
        .args(["capability", "add", "optical-probe"])
        .env("MOTEY_GENERAL_DATA_DIR", edge.data_dir())
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    owner.wait_sees_alive(&edge).await;
    (owner, edge)
}
