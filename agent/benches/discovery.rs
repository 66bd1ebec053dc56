//! Discovery convergence: 10 nodes, each the agent's discovery (signed announcements,
//! peer directory with its store) in a process of its own, join one mosquitto on loopback
//! at the same time. Each process records when it connected to the broker and when it
//! saw the 9 others alive; convergence is the time from the last connection to the last
//! node seeing everyone (target: under 1 s). Production timing (heartbeat every 5 s), so
//! convergence comes from the join requests, not from heartbeats. Writes the `discovery`
//! section of BENCHMARKS.md.
//!
//!     cargo bench -p motey --bench discovery -- [NODES] [ROUNDS]

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::Mosquitto;
use motey::discovery::{BrokerStatus, Discovery, DiscoverySettings, Liveness, PeerDirectory};
use motey::store::Store;
use system_tests::bench::{machine, tool_version, write_section, Figures};
use tokio_util::sync::CancellationToken;

const SECTION: &str = "discovery";
const ROLE: &str = "MOTEY_DISCOVERY_BENCH_NODE";

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One node: `ROLE=<id> <port> <prefix> <peers>`. Prints `connected <µs>` and
/// `converged <µs>` (unix time), then runs until its standard input closes.
async fn node(id: String, port: u16, prefix: String, peers: usize) {
    let store = Store::temporary().unwrap();
    let directory = PeerDirectory::open(
        cluster::node_info(&id),
        store.nodes.clone(),
        Liveness::default(),
    )
    .unwrap();
    let mut settings = DiscoverySettings::new("127.0.0.1", port);
    settings.topic_prefix = prefix;
    let shutdown = CancellationToken::new();
    let discovery = Discovery::start(
        settings,
        directory.clone(),
        cluster::key(),
        shutdown.clone(),
    )
    .unwrap();
    let mut status = discovery.status();
    status
        .wait_for(|status| matches!(status, BrokerStatus::Connected { .. }))
        .await
        .unwrap();
    println!("connected {}", unix_micros());
    let mut events = directory.subscribe();
    while directory.alive().len() < peers {
        let _ = tokio::time::timeout(Duration::from_millis(5), events.recv()).await;
    }
    println!("converged {}", unix_micros());
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    discovery.leave().await;
}

struct Round {
    /// Last connection to the broker → last node seeing all others.
    convergence: Duration,
    /// First process started → last node seeing all others (includes process start-up).
    from_start: Duration,
}

fn round(port: u16, nodes: usize, number: usize) -> Round {
    let prefix = format!("motey-bench-{number}-{}", std::process::id());
    let started = unix_micros();
    let mut children: Vec<Child> = (0..nodes)
        .map(|index| {
            Command::new(std::env::current_exe().unwrap())
                .env(ROLE, format!("node-{index:02}"))
                .args([port.to_string(), prefix.clone(), (nodes - 1).to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut connected = Vec::new();
    let mut converged = Vec::new();
    for child in &mut children {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..2 {
            let line = lines.next().expect("a node reports").unwrap();
            let (what, at) = line.split_once(' ').unwrap();
            let at: u64 = at.parse().unwrap();
            match what {
                "connected" => connected.push(at),
                _ => converged.push(at),
            }
        }
    }
    for child in &mut children {
        drop(child.stdin.take());
    }
    for mut child in children {
        let _ = child.wait();
    }
    let last_connected = connected.into_iter().max().unwrap();
    let last_converged = converged.into_iter().max().unwrap();
    Round {
        convergence: Duration::from_micros(last_converged.saturating_sub(last_connected)),
        from_start: Duration::from_micros(last_converged - started),
    }
}

fn main() {
    if let Ok(id) = std::env::var(ROLE) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(node(
            id,
            args[0].parse().unwrap(),
            args[1].clone(),
            args[2].parse().unwrap(),
        ));
        return;
    }
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse::<usize>().ok());
    let nodes = args.next().unwrap_or(10);
    let rounds = args.next().unwrap_or(10);
    let broker = Mosquitto::start();
    round(broker.port(), nodes, 0); // warm-up: page cache, broker
    let results: Vec<Round> = (1..=rounds)
        .map(|number| round(broker.port(), nodes, number))
        .collect();
    let convergence = Figures::of(results.iter().map(|r| r.convergence).collect());
    let from_start = Figures::of(results.iter().map(|r| r.from_start).collect());
    let mut out = format!(
        "{nodes} nodes join one broker at the same time, each the agent's discovery (signed \
         announcements, replay checks, peer directory with its sled store) in a process of its \
         own, with production timing (heartbeat 5 s). Convergence: from the moment the last \
         node connected to the broker until the last node sees all {} others alive. {rounds} \
         rounds after a warm-up round, each on fresh topics.\n\n",
        nodes - 1
    );
    out.push_str(&format!("- Machine: {}\n", machine()));
    out.push_str(&format!(
        "- Broker: {} on loopback\n",
        tool_version("mosquitto", &["-h"])
    ));
    out.push_str(&format!(
        "- Command: `cargo bench -p motey --bench discovery -- {nodes} {rounds}`\n\n"
    ));
    out.push_str("| figure | median | mean | min | max |\n|---|---|---|---|---|\n");
    out.push_str(&convergence.table_row("convergence after the last connection"));
    out.push('\n');
    out.push_str(&from_start.table_row("first process started → converged"));
    out.push('\n');
    out.push_str(&format!(
        "\nTarget < 1 s after the last node connects: **{}** (worst round {:.1} ms).\n",
        if convergence.max < Duration::from_secs(1) {
            "met"
        } else {
            "not met"
        },
        convergence.max.as_secs_f64() * 1000.0
    ));
    out.push_str(
        "\nHow: a node that connects publishes `node_request` and its own `node_meta`; every \
         node answers a request with its `node_meta`, so the last node to connect learns \
         everyone within one broker round trip and everyone learns it from its announcement. \
         The seed measured no convergence figure.\n",
    );
    print!("{out}");
    write_section(SECTION, &out);
}
