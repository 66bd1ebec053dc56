//! MQTT through a real mosquitto on loopback, as the seed measured it between two
//! Raspberry Pis (appendix A.1.2): one client publishes 10,000 messages, another
//! subscribed client receives them; the time runs from the first publish to the last
//! message received. QoS 0, 1 and 2, with rumqttc (what the agent's discovery uses) and
//! with paho-mqtt (Python, what Motey used) in the same run, rounds interleaved. Writes
//! the `mqtt` section of BENCHMARKS.md.
//!
//!     cargo bench -p motey --bench mqtt -- [MESSAGES] [ROUNDS]
//!
//! paho-mqtt is installed into `target/bench-venv` on first use (pip, from PyPI).

#[path = "../tests/support/cluster.rs"]
mod cluster;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use system_tests::bench::{
    machine, python_module_version, python_venv, tool_version, write_section, Figures,
};

const SECTION: &str = "mqtt";
/// Unacknowledged QoS 1/2 messages a publisher may have out: paho's default and
/// mosquitto's `max_inflight_messages`, set for rumqttc (default 100) too. With more,
/// mosquitto 2.0 silently drops the QoS 2 messages over its limit from an MQTT 3.1.1
/// client, and the publisher waits forever for their PUBREC.
const INFLIGHT: u16 = 20;

/// The seed's figures (appendix A.1.2), mean seconds for 10,000 messages over 10 runs:
/// broker on a laptop, publisher and subscriber on the two Raspberry Pis.
const SEED: [(&str, [f64; 3]); 2] = [
    ("laptop broker, NeoPi → BuffPi", [5.462, 9.251, 13.380]),
    ("laptop broker, BuffPi → NeoPi", [5.544, 9.066, 11.475]),
];

fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The payload: a signed discovery announcement's size, what the agent sends most.
fn payload_bytes() -> usize {
    let node = motey::domain::NodeInfo {
        id: motey::domain::NodeId("node-bench-0001".into()),
        name: "bench node".into(),
        addresses: vec!["192.0.2.10".into(), "fe80::1".into()],
        rest_port: 5023,
        peer_port: 5091,
        last_seen: None,
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities_digest: "0123456789abcdef".into(),
    };
    let meta = motey::discovery::MetaPayload {
        node,
        epoch: 1_700_000_000_000,
        instance: "0123456789abcdef".into(),
        phase: Some(motey::lifecycle::PhaseReport::new(
            motey::lifecycle::NodePhase::Operating,
            None,
        )),
    };
    motey::peer::Envelope::new(
        motey::discovery::kinds::NODE_META,
        uuid::Uuid::new_v4().to_string(),
        "node-bench-0001",
        serde_json::to_value(meta).unwrap(),
    )
    .signed_bytes(&motey::peer::ClusterKey::from_secret(
        "benchmark cluster key, not a secret",
    ))
    .len()
}

/// 10,000 (`count`) messages from one rumqttc client to another; seconds and received.
async fn rumqttc_run(port: u16, level: u8, count: usize, size: usize) -> (Duration, usize) {
    let qos = qos_of(level);
    let topic = format!("bench/rumqttc/{level}/{}", uuid::Uuid::new_v4().simple());
    let options = |role: &str| {
        let mut options = MqttOptions::new(format!("{topic}-{role}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(INFLIGHT);
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        options
    };
    let (subscriber, mut sub_loop) = AsyncClient::new(options("sub"), 1024);
    subscriber.subscribe(&topic, qos).await.unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let receiving = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let mut done_tx = Some(done_tx);
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    if counter.fetch_add(1, Ordering::Relaxed) + 1 == count {
                        if let Some(tx) = done_tx.take() {
                            let _ = tx.send(Instant::now());
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("subscriber: {error}"),
            }
        }
    });
    subscribed_rx.await.unwrap();
    let (publisher, mut pub_loop) = AsyncClient::new(options("pub"), 1024);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let publishing = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match pub_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(error) => panic!("publisher: {error}"),
            }
        }
    });
    connected_rx.await.unwrap();
    let payload = vec![b'm'; size];
    let started = Instant::now();
    for _ in 0..count {
        publisher
            .publish(&topic, qos, false, payload.clone())
            .await
            .unwrap();
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), done_rx).await;
    let elapsed = match finished {
        Ok(Ok(at)) => at - started,
        _ => started.elapsed(),
    };
    let received = received.load(Ordering::Relaxed);
    publishing.abort();
    receiving.abort();
    (elapsed, received)
}

fn paho_run(python: &Path, port: u16, level: u8, count: usize, size: usize) -> (Duration, usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/mqtt_paho.py");
    let output = Command::new(python)
        .arg(script)
        .args([
            port.to_string(),
            level.to_string(),
            count.to_string(),
            size.to_string(),
            INFLIGHT.to_string(),
        ])
        .output()
        .expect("run the paho-mqtt client");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let seconds: f64 = fields.next().unwrap().parse().unwrap();
    let received: usize = fields.next().unwrap().parse().unwrap();
    (Duration::from_secs_f64(seconds), received)
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse::<usize>().ok());
    let count = args.next().unwrap_or(10_000);
    let rounds = args.next().unwrap_or(5);
    let python = python_venv(&["paho-mqtt>=2,<3"]);
    // Unbounded queues: by default mosquitto drops QoS 1 and 2 messages for a subscriber
    // once 1000 wait for it, and a publisher on loopback outruns any subscriber.
    let broker = Mosquitto::start_with(|port, _| {
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    });
    let size = payload_bytes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // [client][qos] → samples
    let mut samples: [[Vec<Duration>; 3]; 2] = Default::default();
    let mut lost = [[0usize; 3]; 2];
    // Warm-up: one small run of each, not counted.
    for level in 0..3u8 {
        runtime.block_on(rumqttc_run(broker.port(), level, count / 10, size));
        paho_run(&python, broker.port(), level, count / 10, size);
    }
    for round in 0..rounds {
        for level in 0..3u8 {
            let (elapsed, received) =
                runtime.block_on(rumqttc_run(broker.port(), level, count, size));
            samples[0][level as usize].push(elapsed);
            lost[0][level as usize] += count - received;
            let (elapsed, received) = paho_run(&python, broker.port(), level, count, size);
            samples[1][level as usize].push(elapsed);
            lost[1][level as usize] += count - received;
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let report = report(&samples, &lost, count, rounds, size, &python);
    print!("{report}");
    write_section(SECTION, &report);
}

fn report(
    samples: &[[Vec<Duration>; 3]; 2],
    lost: &[[usize; 3]; 2],
    count: usize,
    rounds: usize,
    size: usize,
    python: &Path,
) -> String {
    let mut out = format!(
        "{count} messages of {size} bytes (a signed discovery announcement's size) per run, \
         published as fast as the client allows ({INFLIGHT} unacknowledged at most at QoS 1 and 2) \
         by one client and received by another subscribed client, through mosquitto on loopback; \
         time from the first publish to the last message received. {rounds} rounds, clients and \
         QoS levels interleaved, after one warm-up run of each. Publisher, subscriber and broker \
         share the machine. The broker queues without limit (`max_queued_messages 0`; its \
         default drops QoS 1 and 2 messages beyond 1000 waiting for a slower subscriber).\n\n"
    );
    out.push_str(&format!("- Machine: {}\n", machine()));
    out.push_str(&format!(
        "- Broker: {}; rumqttc 0.25 (Rust, tokio); paho-mqtt {} ({})\n",
        tool_version("mosquitto", &["-h"]),
        python_module_version(python, "paho-mqtt"),
        tool_version(&python.display().to_string(), &["--version"]),
    ));
    out.push_str(&format!(
        "- Command: `cargo bench -p motey --bench mqtt -- {count} {rounds}`\n\n"
    ));
    out.push_str("| client | QoS | median | mean | min | max | messages/s (median) | lost |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let mut medians = [[Duration::ZERO; 3]; 2];
    for (client, name) in ["rumqttc", "paho-mqtt"].iter().enumerate() {
        for level in 0..3 {
            let figures = Figures::of(samples[client][level].clone());
            medians[client][level] = figures.median;
            let row = figures.table_row(&format!("{name} | {level}"));
            out.push_str(&format!(
                "{row} {:.0} | {} |\n",
                count as f64 / figures.median.as_secs_f64(),
                lost[client][level]
            ));
        }
    }
    out.push_str("\nrumqttc / paho-mqtt (medians): ");
    let ratios: Vec<String> = (0..3)
        .map(|level| {
            format!(
                "QoS {level} **{:.2}**",
                medians[0][level].as_secs_f64() / medians[1][level].as_secs_f64()
            )
        })
        .collect();
    out.push_str(&ratios.join(", "));
    out.push_str(".\n\nFor context, the seed's Raspberry Pi figures (appendix A.1.2, 10,000 messages, mean of 10 runs, over Ethernet between two Pis with the broker on a laptop; other hardware, network and clients, so not comparable one to one):\n\n");
    out.push_str("| seed setup | QoS 0 | QoS 1 | QoS 2 |\n|---|---|---|---|\n");
    for (setup, seconds) in SEED {
        out.push_str(&format!(
            "| {setup} | {:.2} s | {:.2} s | {:.2} s |\n",
            seconds[0], seconds[1], seconds[2]
        ));
    }
    out.push_str(&format!(
        "| this machine, rumqttc, loopback | {:.2} s | {:.2} s | {:.2} s |\n",
        medians[0][0].as_secs_f64(),
        medians[0][1].as_secs_f64(),
        medians[0][2].as_secs_f64()
    ));
    out
}
