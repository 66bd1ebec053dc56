//! Decode throughput over the field capture corpus (this decoder and the sml-rs crate
//! side by side), and the memory of a running reader. Writes the meter-reader section
//! of BENCHMARKS.md.
//!
//! `cargo bench -p meter-reader --bench decode [-- SECONDS]`

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meter_reader::sml;

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libsml-testing");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

struct Throughput {
    transmissions_per_s: f64,
    mb_per_s: f64,
    transmissions: usize,
}

fn measure(seconds: f64, corpus: &[Vec<u8>], mut decode: impl FnMut(&[u8]) -> usize) -> Throughput {
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let per_round: usize = corpus.iter().map(|c| decode(c)).sum();
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for c in corpus {
            std::hint::black_box(decode(std::hint::black_box(c)));
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Throughput {
        transmissions_per_s: per_round as f64 * rounds as f64 / secs,
        mb_per_s: bytes as f64 * rounds as f64 / secs / 1e6,
        transmissions: per_round,
    }
}

fn ours(bytes: &[u8]) -> usize {
    sml::decode_all(bytes).iter().filter(|r| r.is_ok()).count()
}

fn sml_rs(bytes: &[u8]) -> usize {
    sml_rs::transport::decode(bytes)
        .into_iter()
        .flatten()
        .filter(|p| sml_rs::parser::complete::parse(p).is_ok())
        .count()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs sim → reader → mutual-TLS Data API stand-in, sampling the reader's RSS.
fn reader_rss(seconds: u64) -> (u64, u64, usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let pki = support::Pki::create(&tmp.path().join("pki"));
        let api = support::TestApi::start(&pki, "GRANTED").await;
        let (_sim, pty) = support::start_sim(&["--interval-ms", "1000", "--power-swing-w", "300"]);
        let setup = support::ReaderSetup {
            pki: &pki,
            api_url: api.url(),
            meters: format!("6f1c8a52-7a2e-4c7b-9a51-0d3f2b9e4c11=serial://{pty}"),
            data_dir: tmp.path().join("data"),
            log: tmp.path().join("reader.log"),
            extra: vec![
                ("METER_READER_MEASUREMENT_INTERVAL", "1".into()),
                ("METER_READER_REPORT_INTERVAL", "5".into()),
                // As deployed: with the device frontend listening.
                ("METER_READER_UI_LISTEN", "127.0.0.1:0".into()),
            ],
        };
        let reader = support::start_reader(&setup);
        let pid = reader.child.id();
        let mut samples = Vec::new();
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(r) = rss_kib(pid) {
                samples.push(r);
            }
        }
        let uploaded = api.measurements().len();
        drop(reader);
        samples.sort_unstable();
        let max = samples.last().copied().unwrap_or(0);
        let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
        (median, max, uploaded)
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|k| format!("{:.1} GiB memory", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}, {mem}")
}

fn write_section(path: &Path, body: &str) {
    let begin = "<!-- BEGIN meter-reader -->";
    let end = "<!-- END meter-reader -->";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{begin}\n{body}{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], section, &old[e + end.len()..]),
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(path, new).unwrap();
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3.0);
    let corpus = corpus();
    let bytes: usize = corpus.iter().map(Vec::len).sum();
    let a = measure(seconds, &corpus, ours);
    let b = measure(seconds, &corpus, sml_rs);
    println!(
        "meter-reader: {:.0} transmissions/s, {:.1} MB/s ({} transmissions)",
        a.transmissions_per_s, a.mb_per_s, a.transmissions
    );
    println!(
        "sml-rs:       {:.0} transmissions/s, {:.1} MB/s ({} transmissions)",
        b.transmissions_per_s, b.mb_per_s, b.transmissions
    );
    let rss_seconds = 20;
    let (median, max, uploaded) = reader_rss(rss_seconds);
    println!("reader RSS: median {median} KiB, max {max} KiB, {uploaded} measurements uploaded");

    let body = format!(
        "## meter-reader\n\n\
Decode throughput over the field capture corpus (`tests/data/libsml-testing`: {files} captures, \
{kib:.1} KiB, {n} decodable transmissions), each decoder framing, CRC-checking and parsing every \
transmission; sml-rs 0.4 side by side. Then the resident memory of `meter-reader run` (release \
build) reading `meter-sim` on a pty once a second, measuring every second and uploading every \
5 s to the mutual-TLS Data API stand-in, with the device frontend listening, sampled every 0.5 s for {rss_seconds} s.\n\n\
- Machine: {machine}\n\
- Command: `cargo bench -p meter-reader --bench decode -- {seconds}`\n\n\
| decoder | transmissions/s | MB/s |\n|---|---|---|\n\
| meter-reader `sml` | {a_tps:.0} | {a_mb:.1} |\n\
| sml-rs 0.4 | {b_tps:.0} | {b_mb:.1} |\n\n\
meter-reader / sml-rs (transmissions/s): **{ratio:.2}**\n\n\
| reader RSS | KiB |\n|---|---|\n| median | {median} |\n| max | {max} |\n\n\
Target ≤ 10 MB: **{verdict}** ({uploaded} measurements uploaded during the run).\n",
        files = corpus.len(),
        kib = bytes as f64 / 1024.0,
        n = a.transmissions,
        machine = machine(),
        a_tps = a.transmissions_per_s,
        a_mb = a.mb_per_s,
        b_tps = b.transmissions_per_s,
        b_mb = b.mb_per_s,
        ratio = a.transmissions_per_s / b.transmissions_per_s,
        verdict = if max <= 10 * 1024 { "met" } else { "not met" },
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    write_section(&path, &body);
    println!("wrote {}", path.display());
}
