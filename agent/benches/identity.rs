//! What signing by node certificate costs a discovery announcement, beside the shared
//! cluster key alone (a node that has not joined): bytes on the wire, and the time to make
//! one and to check one (for a joined node: the HMAC, the node's ECDSA signature, its
//! certificate's chain to the CA, validity and revocation). Each node checks every other
//! node's announcement once per heartbeat (5 s). Writes the `identity` section of
//! BENCHMARKS.md.
//!
//!     cargo bench -p motey --bench identity -- [ROUNDS] [MESSAGES]

use std::time::{Duration, Instant};

use motey::cluster::{signed, ClusterAuthority, ClusterFiles, Membership, NodeIdentity};
use motey::peer::{ClusterKey, Envelope};
use system_tests::bench::{machine, micros, write_section, Figures};

const SECTION: &str = "identity";

/// A CA node's membership (the receiver) and an edge's (the sender).
fn cluster(dir: &std::path::Path) -> (Membership, Membership) {
    let lifetime = Duration::from_secs(90 * 86_400);
    let ca_files = ClusterFiles::in_data_dir(&dir.join("ca"));
    let authority = ClusterAuthority::init(&ca_files, "cloud", lifetime).unwrap();
    let edge_files = ClusterFiles::in_data_dir(&dir.join("edge"));
    edge_files.create_dir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let request = NodeIdentity::request_for(&key, "edge-3-17").unwrap();
    let issued = authority.issue(&request, "edge-3-17", lifetime).unwrap();
    edge_files
        .write_private(&edge_files.node_key(), &key.serialize_pem())
        .unwrap();
    edge_files
        .write_private(&edge_files.node_cert(), &issued.pem)
        .unwrap();
    edge_files
        .write_private(&edge_files.ca_cert(), authority.ca_pem())
        .unwrap();
    (
        Membership::load(&ca_files).unwrap(),
        Membership::load(&edge_files).unwrap(),
    )
}

fn announcement() -> Envelope {
    let payload = serde_json::json!({
        "node": {
            "id": "edge-3-17", "name": "edge-3-17", "addresses": ["192.0.2.17"],
            "rest_port": 5023, "peer_port": 5091, "version": "0.1.0",
            "capabilities_digest": "3f2a9c0d1e4b5a67",
        },
        "epoch": 1_764_590_000_000u64,
        "instance": "5b1f0c9e2d7a4f13",
        "phase": {"phase": "OPERATING"},
    });
    Envelope::new(
        "node_meta",
        uuid::Uuid::new_v4().to_string(),
        "edge-3-17",
        payload,
    )
}

/// Seconds per message of `rounds` rounds of `messages` runs of `work`.
fn time(rounds: usize, messages: usize, mut work: impl FnMut()) -> Figures {
    work(); // warm-up
    let samples = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..messages {
                work();
            }
            started.elapsed() / messages as u32
        })
        .collect();
    Figures::of(samples)
}

fn row(label: &str, figures: &Figures) -> String {
    format!(
        "| {label} | {} | {} | {} | {} |",
        micros(figures.median),
        micros(figures.mean),
        micros(figures.min),
        micros(figures.max)
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(20);
    let messages = args.get(1).copied().unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (receiver, sender) = cluster(dir.path());
    let key = ClusterKey::from_secret("the cluster secret of the benchmark");

    let keyed = announcement().signed_bytes(&key);
    let sealed = signed::seal(&sender.identity(), &keyed);
    let keyed_make = time(rounds, messages, || {
        std::hint::black_box(announcement().signed_bytes(&key));
    });
    let keyed_check = time(rounds, messages, || {
        let envelope = Envelope::parse(&keyed).unwrap();
        envelope.verify(&key).unwrap();
    });
    let identity = sender.identity();
    let sealed_make = time(rounds, messages, || {
        std::hint::black_box(signed::seal(&identity, &announcement().signed_bytes(&key)));
    });
    let sealed_check = time(rounds, messages, || {
        let (_, message) = signed::open(&receiver, &sealed).unwrap();
        let envelope = Envelope::parse(&message).unwrap();
        envelope.verify(&key).unwrap();
    });

    let content = format!(
        "One `node_meta` announcement as a node makes and checks it: with the shared cluster key alone \
(HMAC-SHA256, a node that has not joined), and as a joined node (the same, signed by the node's ECDSA P-256 key \
and carrying its certificate; checking it verifies the HMAC, the signature, the certificate's chain to the CA, \
its validity and revocation). {rounds} rounds of {messages} messages after a warm-up, time per message.\n\n\
- Machine: {}\n\
- Command: `cargo bench -p motey --bench identity -- {rounds} {messages}`\n\
- Size on the wire: {} bytes with the cluster key alone, {} bytes signed by the node\n\n\
| per announcement | median | mean | min | max |\n|---|---|---|---|---|\n{}\n{}\n{}\n{}\n\n\
Each node checks every other node's announcement once per heartbeat (5 s): in a fog of 100 nodes a joined node \
spends about 100 × the check time above every 5 s on discovery.\n",
        machine(),
        keyed.len(),
        sealed.len(),
        row("make, cluster key alone", &keyed_make),
        row("check, cluster key alone", &keyed_check),
        row("make, joined node", &sealed_make),
        row("check, joined node", &sealed_check),
    );
    print!("{content}");
    write_section(SECTION, &content);
}
