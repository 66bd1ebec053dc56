//! Bench binary: the life of one container (create + start, stop, remove) through the
//! plugin, against the same through the `docker` CLI (`run -d`, `stop`, `rm`), in one run.
//! Rounds alternate between the two so that drift of the machine hits both alike.
//!
//! `cargo bench -p motey-val-docker --bench lifecycle [-- ROUNDS]` prints the figures and
//! writes them into the `val-docker` section of BENCHMARKS.md at the repository root.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use motey_val::{labels, ContainerSpec, Privileges, RestartPolicy, VirtualizationEngine};
use motey_val_docker::DockerEngine;

const IMAGE: &str = "motey/testbox:latest";
const SECTION: &str = "val-docker";

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(20);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root");
    if docker(&["image", "inspect", IMAGE]).is_err() {
        let built = Command::new(root.join("scripts/build-images.sh"))
            .arg("testbox")
            .current_dir(&root)
            .status()
            .expect("run scripts/build-images.sh");
        assert!(built.success(), "building {IMAGE} failed");
    }
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
         | path | median | mean | min | max |\n|---|---|---|---|---|\n\
         | plugin | {} | {} | {} | {} |\n| docker CLI | {} | {} | {} | {} |\n\n\
         Plugin / CLI (medians): **{ratio:.2}**\n",
        ms(plugin.median),
        ms(plugin.mean),
        ms(plugin.min),
        ms(plugin.max),
        ms(cli.median),
        ms(cli.mean),
        ms(cli.min),
        ms(cli.max),
        machine = machine(),
    );
    println!("{report}");
    write_section(&root.join("BENCHMARKS.md"), &report);
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

fn docker(args: &[&str]) -> Result<(), String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

struct Figures {
    median: Duration,
    mean: Duration,
    min: Duration,
    max: Duration,
}

impl Figures {
    fn of(mut samples: Vec<Duration>) -> Figures {
        samples.sort();
        let total: Duration = samples.iter().sum();
        Figures {
            median: samples[samples.len() / 2],
            mean: total / samples.len() as u32,
            min: samples[0],
            max: samples[samples.len() - 1],
        }
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |model| model.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores (nproc), {cpu}, {:.1} GiB memory",
        memory_kib as f64 / (1024.0 * 1024.0)
    )
}

/// Replaces the content between this section's markers, appending the section if missing.
fn write_section(path: &PathBuf, content: &str) {
    let begin = format!("<!-- BEGIN {SECTION} -->");
    let end = format!("<!-- END {SECTION} -->");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let block = format!("{begin}\n## {SECTION}\n\n{content}{end}");
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!(
                "{}{block}{}",
                &existing[..start],
                &existing[stop + end.len()..]
            )
        }
        _ => format!("{}\n{block}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
    println!("wrote section {SECTION} of {}", path.display());
}
