//! Deploying a three-image blueprint through the agent vs. starting the same three
//! containers one after another with the `docker` CLI, in the same run with alternating
//! rounds; plus the agent's idle memory. Writes the `agent-deploy` section of BENCHMARKS.md.
//!
//! `cargo bench -p motey --bench deploy [-- ROUNDS]`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::bench::{machine, rss_kib, write_section, Figures};
use system_tests::docker::{docker, ensure_testbox, remove_containers_with_label, TESTBOX};
use system_tests::{free_port, wait_for};

const TOKEN: &str = "bench-token";
const IMAGES: [&str; 3] = ["one", "two", "three"];

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10);
    ensure_testbox();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let node = format!("bench-{}", std::process::id());
    let mut agent = Command::new(env!("CARGO_BIN_EXE_motey"))
        .arg("start")
        .env("MOTEY_GENERAL_DATA_DIR", dir.path())
        .env("MOTEY_GENERAL_NODE_ID", &node)
        .env("MOTEY_WEBSERVER_IP", "127.0.0.1")
        .env("MOTEY_WEBSERVER_PORT", port.to_string())
        .env("MOTEY_WEBSERVER_TOKEN", TOKEN)
        .env("MOTEY_ORCHESTRATOR_STOP_GRACE", "1")
        .env("MOTEY_LOGGER_LEVEL", "warn")
        .stderr(Stdio::null())
        .spawn()
        .expect("start motey");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_for("the agent", Duration::from_secs(60), || {
        let url = format!("{base}/health");
        async move { reqwest::get(url).await.ok() }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = rss_kib(agent.id());

    let mut through_agent = Vec::new();
    let mut through_cli = Vec::new();
    for round in 0..rounds {
        through_agent.push(agent_round(&client, &base).await);
        through_cli.push(cli_round(round));
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let busy_rss = rss_kib(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    remove_containers_with_label("io.motey.node-id", &node);

    let agent_figures = Figures::of(through_agent);
    let cli_figures = Figures::of(through_cli);
    let ratio = agent_figures.median.as_secs_f64() / cli_figures.median.as_secs_f64();
    let engine = docker(&["version", "-f", "{{.Server.Version}}"]).unwrap_or_default();
    write_section(
        "agent-deploy",
        &format!(
            "A three-image blueprint (`{TESTBOX}` ×3) from `POST /v1/services` until the service is RUNNING, \
             vs. `docker run -d` of the same three containers one after another; {rounds} alternating rounds, \
             each followed by removal (not timed).\n\n\
             - Machine: {machine}\n- Docker Engine {engine}\n\
             - Command: `cargo bench -p motey --bench deploy -- {rounds}`\n\n\
             | path | median | mean | min | max |\n|---|---|---|---|---|\n{}\n{}\n\n\
             Agent / sequential CLI (medians): **{ratio:.2}** (target ≤ 1.0)\n\n\
             Agent resident memory: **{:.1} MB** idle after start-up (target ≤ 15 MB), {:.1} MB after the rounds.\n",
            agent_figures.table_row("agent (3 images, concurrent)"),
            cli_figures.table_row("docker CLI (3 × run -d)"),
            idle_rss as f64 / 1024.0,
            busy_rss as f64 / 1024.0,
            machine = machine(),
        ),
    );
}

async fn agent_round(client: &reqwest::Client, base: &str) -> Duration {
    let blueprint = format!(
        "name: bench\nimages:\n{}",
        IMAGES
            .iter()
            .map(|name| format!("  - {{name: {name}, image: \"{TESTBOX}\"}}\n"))
            .collect::<String>()
    );
    let started = Instant::now();
    let created: serde_json::Value = client
        .post(format!("{base}/v1/services"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-yaml")
        .body(blueprint)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    loop {
        let service: serde_json::Value = client
            .get(format!("{base}/v1/services/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match service["state"].as_str() {
            Some("RUNNING") => break,
            Some("ERROR") => panic!("deploy failed: {service}"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let elapsed = started.elapsed();
    client
        .delete(format!("{base}/v1/services/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    loop {
        let service: serde_json::Value = client
            .get(format!("{base}/v1/services/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if service["state"] == "TERMINATED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    elapsed
}

fn cli_round(round: usize) -> Duration {
    let label = format!("motey-bench-cli={}", std::process::id());
    let started = Instant::now();
    for name in IMAGES {
        docker(&[
            "run",
            "-d",
            "--label",
            &label,
            "--name",
            &format!("bench-cli-{name}-{round}-{}", std::process::id()),
            TESTBOX,
        ])
        .expect("docker run");
    }
    let elapsed = started.elapsed();
    remove_containers_with_label("motey-bench-cli", &std::process::id().to_string());
    elapsed
}
