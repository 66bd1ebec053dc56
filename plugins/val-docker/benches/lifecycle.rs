//! Bench binary: the life of one container (create + start, stop, remove) through the
//! plugin, against the same through the `docker` CLI (`run -d`, `stop`, `rm`), in one run.
//! Rounds alternate between the two so that drift of the machine hits both alike.
//!
//! `cargo bench -p motey-val-docker --bench lifecycle [-- ROUNDS]` prints the figures and
//! writes them into the `val-docker` section of BENCHMARKS.md at the repository root.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use motey_val::{labels, ContainerSpec, Privileges, RestartPolicy, VirtualizationEngine};
use motey_val_docker::DockerEngine;
use system_tests::bench::{machine, write_section, Figures};
use system_tests::docker::{docker, ensure_testbox, TESTBOX as IMAGE};

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(20);
    ensure_testbox();
    let engine = DockerEngine::connect(None).expect("connect to Docker");
    let engine_version = engine.ping().await.expect("Docker answers");
    let run_id = format!("valbench-{}", std::process::id());

    // One untimed round each, so connection set-up and caches do not count.
    plugin_round(&engine, &run_id, 0).await;
    cli_round(&run_id, 0);

    let mut plugin = Vec::with_capacity(rounds);
    let mut cli = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        plugin.push(plugin_round(&engine, &run_id, round).await);
        cli.push(cli_round(&run_id, round));
    }

    let plugin = Figures::of(plugin);
    let cli = Figures::of(cli);
    let ratio = plugin.median.as_secs_f64() / cli.median.as_secs_f64();
    let report = format!(
        "Life of one container (create + start, stop, remove) through `DockerEngine` vs the \
         `docker` CLI (`run -d`, `stop`, `rm`), {rounds} alternating rounds each, image `{IMAGE}` \
         (exits on SIGTERM at once).\n\n\
         - Machine: {machine}\n\
         - Docker Engine {engine_version}\n\
         - Command: `cargo bench -p motey-val-docker --bench lifecycle -- {rounds}`\n\n\
         | path | median | mean | min | max |\n|---|---|---|---|---|\n{}\n{}\n\n\
         Plugin / CLI (medians): **{ratio:.2}**\n",
        plugin.table_row("plugin"),
        cli.table_row("docker CLI"),
        machine = machine(),
    );
    println!("{report}");
    write_section("val-docker", &report);
}

async fn plugin_round(engine: &DockerEngine, run_id: &str, round: usize) -> Duration {
    let spec = ContainerSpec {
        name: format!("{run_id}-plugin-{round}"),
        image: IMAGE.into(),
        command: None,
        env: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        devices: Vec::new(),
        restart: RestartPolicy::No,
        labels: BTreeMap::from([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::NODE_ID.to_owned(), run_id.to_owned()),
        ]),
        privileges: Privileges::default(),
    };
    let started = Instant::now();
    let id = engine
        .create_and_start(&spec)
        .await
        .expect("create and start");
    engine.stop(&id, 10).await.expect("stop");
    engine.remove(&id).await.expect("remove");
    started.elapsed()
}

fn cli_round(run_id: &str, round: usize) -> Duration {
    let name = format!("{run_id}-cli-{round}");
    let label = format!("{}={run_id}", labels::NODE_ID);
    let started = Instant::now();
    docker(&["run", "-d", "--name", &name, "--label", &label, IMAGE]).expect("docker run");
    docker(&["stop", "-t", "10", &name]).expect("docker stop");
    docker(&["rm", &name]).expect("docker rm");
    started.elapsed()
}
