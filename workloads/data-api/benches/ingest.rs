//! Ingest and export throughput of the real `data-api` binary over mutual TLS on loopback,
//! with the server's resident memory sampled under load. Writes its section of
//! BENCHMARKS.md.
//!
//! `cargo bench -p data-api --bench ingest` (env: BENCH_MEASUREMENTS, default 200000;
//! BENCH_UPLOADERS, default 8 concurrent device connections).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_data-api");
const BATCH: usize = 100;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &Path, pki: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--init-missing",
        ])
        .arg("--db")
        .arg(db)
        .arg("--pki-dir")
        .arg(pki)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn data-api");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["fields"]["message"] == "listening" {
                    if let Some(tx) = tx.take() {
                        let _ =
                            tx.send(v["fields"]["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server address");
    Server { child, addr }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(120));
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, {memory} memory")
}

fn write_section(section: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (begin, end) = ("<!-- BEGIN data-api -->", "<!-- END data-api -->");
    let block = format!("{begin}\n{section}{end}");
    let updated = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &text[..b], block, &text[e + end.len()..]),
        _ => format!("{}\n{}\n", text.trim_end(), block),
    };
    std::fs::write(&path, updated).unwrap();
    println!("updated {}", path.display());
}

fn main() {
    let total = env_usize("BENCH_MEASUREMENTS", 200_000) / BATCH * BATCH;
    let uploaders = env_usize("BENCH_UPLOADERS", 8).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(total, uploaders));
}

async fn run(total: usize, uploaders: usize) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (db, pki) = (dir.path().join("db"), dir.path().join("pki"));
    let server = start(&db, &pki);
    let pid = server.child.id();
    let researcher = read(pki.join("researcher.token")).trim().to_owned();
    let pki_dir = pki.to_str().unwrap();
    let out = Command::new(BIN)
        .args([
            "pki",
            "issue-device",
            "--dir",
            pki_dir,
            "--email",
            "bench@example.org",
            "--out",
            "bench",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ca = read(pki.join("ca.pem"));
    let (cert, key) = (read(pki.join("bench.pem")), read(pki.join("bench-key.pem")));
    let anonymous = client(&ca, None);
    let url = |p: &str| format!("https://{}{}", server.addr, p);

    let registration = json!({
        "user": {"name": "Bench Household", "email": "bench@example.org"},
        "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig"},
        "location": {"latitude": 51.3397, "longitude": 12.3731},
        "metadata": {"children": 0, "adults": 2, "employed_adults": 2, "ev_charger": false, "heat_pump": true, "home_battery": false},
        "meters": [{"type": "ELECTRICITY", "model": "MT681"}, {"type": "PV-GENERATION", "model": "EHZ"}]
    });
    let created: Value = anonymous
        .post(url("/management/household"))
        .bearer_auth(&researcher)
        .json(&registration)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let meters: Vec<String> = created["meters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uuid"].as_str().unwrap().to_owned())
        .collect();
    let device = client(&ca, Some((&cert, &key)));
    assert_eq!(
        device
            .post(url("/household/consent"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Bodies are prepared up front so the clock measures the server, not the client's JSON.
    let start_time = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let batches: Vec<bytes::Bytes> = (0..total / BATCH)
        .map(|b| {
            let measurements: Vec<Value> = (0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    let at = start_time + chrono::Duration::seconds(900 * (n / 2) as i64);
                    json!({
                        "uuid": uuid::Uuid::new_v4(),
                        "meter": meters[n % 2],
                        "measured_at": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "data": [
                            {"0100010800ff": 12345.6 + n as f64 * 0.25},
                            {"0100020800ff": 432.1 + n as f64 * 0.1},
                            {"0100100700ff": -230.0 + (n % 97) as f64}
                        ]
                    })
                })
                .collect();
            bytes::Bytes::from(
                serde_json::to_vec(&json!({ "measurements": measurements })).unwrap(),
            )
        })
        .collect();
    let batch_bytes = batches.iter().map(|b| b.len()).sum::<usize>() / batches.len();

    let sampling = Arc::new(AtomicBool::new(true));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak_rss) = (sampling.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak_rss.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let rss_before = rss_kib(pid, "VmRSS:");

    let queue = Arc::new(std::sync::Mutex::new(batches.into_iter()));
    let began = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..uploaders {
        let queue = queue.clone();
        // One client per uploader: one TLS connection each, like separate devices.
        let device = client(&ca, Some((&cert, &key)));
        let target = url("/household/meter/measurement");
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = queue.lock().unwrap().next() else {
                    break;
                };
                let sent = Instant::now();
                let response = device
                    .post(&target)
                    .header("content-type", "application/json")
                    .header("X-Component-Versions", "meter-reader=0.1.0,sml=1.04")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let outcome: Value = response.json().await.unwrap();
                assert_eq!(outcome["accepted"], BATCH);
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let ingest_secs = began.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let ingest_rate = total as f64 / ingest_secs;
    let rss_ingest_peak = peak_rss.load(Ordering::Relaxed);

    // Export everything, both formats, reading the stream to the end.
    let mut exports = Vec::new();
    for format in ["csv", "jsonl"] {
        peak_rss.store(0, Ordering::Relaxed);
        let began = Instant::now();
        let mut response = anonymous
            .get(url(&format!(
                "/management/export/measurements?format={format}"
            )))
            .bearer_auth(&researcher)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (mut bytes, mut lines) = (0usize, 0usize);
        while let Some(chunk) = response.chunk().await.unwrap() {
            bytes += chunk.len();
            lines += chunk.iter().filter(|b| **b == b'\n').count();
        }
        let secs = began.elapsed().as_secs_f64();
        let rows = if format == "csv" { lines - 1 } else { lines };
        exports.push((format, rows, bytes, secs, peak_rss.load(Ordering::Relaxed)));
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let rss_high_water = rss_kib(pid, "VmHWM:");
    let db_size: u64 = walk_size(&db);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut section = String::new();
    section.push_str("## data-api\n\n");
    section.push_str(&format!(
        "Ingest of {total} measurements (3 OBIS values each) in batches of {BATCH} by {uploaders} concurrent device \
         connections over mutual TLS (TLS 1.3, ECDSA P-256 client certificates) to the real `data-api` binary on \
         loopback; every batch is validated, committed in one sled transaction and flushed (fsync) before its 200. \
         Then the whole data set is exported, streamed, in both formats. Client and server share the machine.\n\n"
    ));
    section.push_str(&format!("- Machine: {}\n", machine()));
    section.push_str("- Command: `cargo bench -p data-api --bench ingest` (BENCH_MEASUREMENTS, BENCH_UPLOADERS to vary)\n");
    section.push_str(&format!(
        "- Request body: {batch_bytes} bytes per batch on average\n\n"
    ));
    section.push_str("| figure | value |\n|---|---|\n");
    section.push_str(&format!(
        "| ingest throughput (durable) | **{ingest_rate:.0} measurements/s** ({:.0} batches/s) |\n",
        ingest_rate / BATCH as f64
    ));
    section.push_str(&format!(
        "| batch latency p50 / p99 / max | {:.1} ms / {:.1} ms / {:.1} ms |\n",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    ));
    for (format, rows, bytes, secs, _) in &exports {
        let unit = if *format == "csv" {
            "rows (one per data point)"
        } else {
            "lines (one per measurement)"
        };
        section.push_str(&format!(
            "| export {format} | **{:.0} {unit}/s**, {rows} rows, {:.1} MiB in {secs:.2} s |\n",
            *rows as f64 / secs,
            *bytes as f64 / 1024.0 / 1024.0
        ));
    }
    section.push_str(&format!(
        "| server RSS idle → peak during ingest | {:.0} MiB → {:.0} MiB |\n",
        mib(rss_before),
        mib(rss_ingest_peak)
    ));
    for (format, _, _, _, peak) in &exports {
        section.push_str(&format!(
            "| server RSS peak during {format} export | {:.0} MiB |\n",
            mib(*peak)
        ));
    }
    section.push_str(&format!(
        "| server RSS high-water mark (VmHWM) | {:.0} MiB |\n",
        mib(rss_high_water)
    ));
    section.push_str(&format!(
        "| database size on disk | {:.0} MiB |\n",
        db_size as f64 / 1024.0 / 1024.0
    ));
    section.push_str(&format!(
        "\nTarget ≥ 20,000 measurements/s: **{}**.\n",
        if ingest_rate >= 20_000.0 {
            "met"
        } else {
            "not met"
        }
    ));
    print!("{section}");
    write_section(&section);
}

fn walk_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if meta.is_dir() {
                walk_size(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}
