//! Ingest and export throughput of the real `data-api` binary over mutual TLS on loopback,
//! with each server's resident memory sampled under load, in three layouts of the same
//! run: sled, PostgreSQL with one replica, PostgreSQL with two replicas (the devices split
//! between them). PostgreSQL is a private server with its durable defaults (fsync,
//! synchronous commit). Writes its section of BENCHMARKS.md.
//!
//! `cargo bench -p data-api --bench ingest` (env: BENCH_MEASUREMENTS, default 200000;
//! BENCH_UPLOADERS, default 8: measurement devices of as many households, one connection
//! each, uploading concurrently; BENCH_LAYOUTS, default `sled,pg1,pg2`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use system_tests::postgres::{Durability, Postgres};

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

fn start(db: &std::ffi::OsStr, pki: &Path) -> Server {
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
        // Shared by the replicas of one database, as they must be.
        .arg("--key-vault")
        .arg(pki.with_file_name("keys"))
        .arg("--revocation-ledger")
        .arg(pki.with_file_name("revocations"))
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

/// Where the survey is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Sled,
    Postgres { replicas: usize },
}

impl Layout {
    fn title(self) -> String {
        match self {
            Layout::Sled => "sled".into(),
            Layout::Postgres { replicas: 1 } => "PostgreSQL, 1 replica".into(),
            Layout::Postgres { replicas } => format!("PostgreSQL, {replicas} replicas"),
        }
    }
}

/// One export of the whole data set.
struct Export {
    format: &'static str,
    rows: usize,
    bytes: usize,
    secs: f64,
}

/// Per `data-api` process.
struct Replica {
    rss_idle: u64,
    rss_ingest_peak: u64,
    rss_high_water: u64,
}

struct Figures {
    layout: Layout,
    ingest_rate: f64,
    server_cores: f64,
    database_cores: Option<f64>,
    latencies: Vec<f64>,
    exports: Vec<Export>,
    replicas: Vec<Replica>,
    db_bytes: u64,
    batch_bytes: usize,
}

fn main() {
    let total = env_usize("BENCH_MEASUREMENTS", 200_000) / BATCH * BATCH;
    let uploaders = env_usize("BENCH_UPLOADERS", 8).max(1);
    let layouts: Vec<Layout> = std::env::var("BENCH_LAYOUTS")
        .unwrap_or_else(|_| "sled,pg1,pg2".into())
        .split(',')
        .map(|l| match l.trim() {
            "sled" => Layout::Sled,
            "pg1" => Layout::Postgres { replicas: 1 },
            "pg2" => Layout::Postgres { replicas: 2 },
            other => panic!("BENCH_LAYOUTS: unknown layout {other:?} (sled, pg1, pg2)"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load_before = load_average();
    let figures: Vec<Figures> = layouts
        .iter()
        .map(|layout| runtime.block_on(run(*layout, total, uploaders)))
        .collect();
    let section = render(&figures, total, uploaders, &load_before);
    print!("{section}");
    write_section(&section);
}

async fn run(layout: Layout, total: usize, uploaders: usize) -> Figures {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (sled_dir, pki) = (dir.path().join("db"), dir.path().join("pki"));
    let postgres = match layout {
        Layout::Sled => None,
        Layout::Postgres { .. } => Some(Postgres::start_with(Durability::Durable)),
    };
    let db: std::ffi::OsString = match &postgres {
        Some(pg) => pg.url().into(),
        None => sled_dir.clone().into(),
    };
    let count = match layout {
        Layout::Sled => 1,
        Layout::Postgres { replicas } => replicas,
    };
    // The first creates the PKI, the others find it.
    let servers: Vec<Server> = (0..count).map(|_| start(&db, &pki)).collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let researcher = read(pki.join("researcher.token")).trim().to_owned();
    let pki_dir = pki.to_str().unwrap();
    let ca = read(pki.join("ca.pem"));
    let anonymous = client(&ca, None);
    let url = |server: usize, p: &str| format!("https://{}{}", servers[server].addr, p);

    // Bodies are prepared up front so the clock measures the server, not the client's JSON.
    let start_time = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let batches_each = total / BATCH / uploaders;
    let total = batches_each * uploaders * BATCH;
    let mut devices = Vec::new();
    for u in 0..uploaders {
        // Devices are spread over the replicas.
        let server = u % servers.len();
        let email = format!("bench{u}@example.org");
        let registration = json!({
            "user": {"name": "Bench Household", "email": email},
            "address": {"street": "Augustusplatz", "house_number": "10", "postal_code": "04109", "city": "Leipzig"},
            "location": {"latitude": 51.3397, "longitude": 12.3731},
            "metadata": {"children": 0, "adults": 2, "employed_adults": 2, "ev_charger": false, "heat_pump": true, "home_battery": false},
            "meters": [{"type": "ELECTRICITY", "model": "MT681"}, {"type": "PV-GENERATION", "model": "EHZ"}]
        });
        let created: Value = anonymous
            .post(url(0, "/management/household"))
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
        let name = format!("bench{u}");
        let out = Command::new(BIN)
            .args([
                "pki",
                "issue-device",
                "--dir",
                pki_dir,
                "--email",
                &email,
                "--out",
                &name,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        let (cert, key) = (
            read(pki.join(format!("{name}.pem"))),
            read(pki.join(format!("{name}-key.pem"))),
        );
        // One client per device: one TLS connection each.
        let device = client(&ca, Some((&cert, &key)));
        assert_eq!(
            device
                .post(url(server, "/household/consent"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let batches: Vec<bytes::Bytes> = (0..batches_each)
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
        devices.push((device, url(server, "/household/meter/measurement"), batches));
    }
    let batch_bytes = devices[0].2.iter().map(|b| b.len()).sum::<usize>() / batches_each.max(1);

    let sampling = Arc::new(AtomicBool::new(true));
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler = {
        let (sampling, peaks, pids) = (sampling.clone(), peaks.clone(), pids.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(peaks.iter()) {
                    peak.fetch_max(rss_kib(*pid, "VmRSS:"), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let rss_idle: Vec<u64> = pids.iter().map(|pid| rss_kib(*pid, "VmRSS:")).collect();

    let server_cpu = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let database_cpu = || postgres.as_ref().map(|pg| tree_cpu_seconds(pg.pid()));
    let (cpu_before, db_cpu_before) = (server_cpu(), database_cpu());
    let began = Instant::now();
    let mut workers = Vec::new();
    for (device, target, batches) in devices {
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for body in batches {
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
    let server_cores = (server_cpu() - cpu_before) / ingest_secs;
    let database_cores = database_cpu()
        .zip(db_cpu_before)
        .map(|(after, before)| (after - before) / ingest_secs);
    latencies.sort_by(f64::total_cmp);
    let ingest_rate = total as f64 / ingest_secs;
    let rss_ingest_peak: Vec<u64> = peaks.iter().map(|p| p.load(Ordering::Relaxed)).collect();

    // Export everything from the first replica, both formats, reading the stream to the end.
    let mut exports = Vec::new();
    for format in ["csv", "jsonl"] {
        let began = Instant::now();
        let mut response = anonymous
            .get(url(
                0,
                &format!("/management/export/measurements?format={format}"),
            ))
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
        exports.push(Export {
            format,
            rows,
            bytes,
            secs,
        });
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let replicas = pids
        .iter()
        .enumerate()
        .map(|(i, pid)| Replica {
            rss_idle: rss_idle[i],
            rss_ingest_peak: rss_ingest_peak[i],
            rss_high_water: rss_kib(*pid, "VmHWM:"),
        })
        .collect();
    let db_bytes = match &postgres {
        Some(pg) => pg
            .psql("postgres", "SELECT pg_database_size('postgres')")
            .parse()
            .unwrap_or(0),
        None => walk_size(&sled_dir),
    };
    drop(servers);
    Figures {
        layout,
        ingest_rate,
        server_cores,
        database_cores,
        latencies,
        exports,
        replicas,
        db_bytes,
        batch_bytes,
    }
}

fn render(figures: &[Figures], total: usize, uploaders: usize, load_before: &str) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut section = String::new();
    section.push_str("## data-api\n\n");
    section.push_str(&format!(
        "Ingest of {total} measurements (3 OBIS values each) in batches of {BATCH} by {uploaders} measurement devices \
         of as many households, uploading concurrently over mutual TLS (TLS 1.3, ECDSA P-256 client certificates) to the real `data-api` binary on \
         loopback; every batch is validated and durable before its 200 (sled: one atomic batch and an fsync shared by concurrent batches; \
         PostgreSQL: one `INSERT … SELECT FROM unnest(…)` statement and a committed transaction, the server's defaults `fsync=on`, \
         `synchronous_commit=on`). With two replicas the devices are split between them, one database behind both. Then the whole data set \
         is exported, streamed, in both formats, from the first replica. The layouts run one after the other in the same run; client, \
         servers and PostgreSQL (a private server started by the benchmark, `shared_buffers=128MB`) share the machine.\n\n"
    ));
    section.push_str(&format!("- Machine: {}\n", machine()));
    section.push_str(&format!(
        "- Load average (1 min) before the run / after it: {load_before} / {} (the cores are shared with other builds)\n",
        load_average()
    ));
    section.push_str("- Command: `cargo bench -p data-api --bench ingest` (BENCH_MEASUREMENTS, BENCH_UPLOADERS, BENCH_LAYOUTS to vary)\n");
    section.push_str(&format!(
        "- Request body: {} bytes per batch on average\n\n",
        figures.first().map_or(0, |f| f.batch_bytes)
    ));
    let mut row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        section.push_str(&format!("| {name} |"));
        for f in figures {
            section.push_str(&format!(" {} |", cell(f)));
        }
        section.push('\n');
    };
    row("figure", &|f| f.layout.title());
    row("---", &|_| "---".into());
    row("ingest throughput (durable)", &|f| {
        format!(
            "**{:.0} measurements/s** ({:.0} batches/s)",
            f.ingest_rate,
            f.ingest_rate / BATCH as f64
        )
    });
    row("`data-api` CPU during ingest (all replicas)", &|f| {
        format!("{:.2} cores", f.server_cores)
    });
    row(
        "PostgreSQL CPU during ingest",
        &|f| match f.database_cores {
            Some(c) => format!("{c:.2} cores"),
            None => "–".into(),
        },
    );
    row("batch latency p50 / p99 / max", &|f| {
        format!(
            "{:.1} / {:.1} / {:.1} ms",
            percentile(&f.latencies, 0.5),
            percentile(&f.latencies, 0.99),
            f.latencies.last().copied().unwrap_or_default()
        )
    });
    for (i, (format, unit)) in [("csv", "rows/s"), ("jsonl", "lines/s")].iter().enumerate() {
        row(
            &format!("export {format} (rows: one per data point / lines: one per measurement)"),
            &|f| {
                let e = &f.exports[i];
                debug_assert_eq!(e.format, *format);
                format!(
                    "**{:.0} {unit}**, {} in {:.2} s ({:.1} MiB)",
                    e.rows as f64 / e.secs,
                    e.rows,
                    e.secs,
                    e.bytes as f64 / 1024.0 / 1024.0
                )
            },
        );
    }
    row("RSS per replica: idle → peak during ingest", &|f| {
        f.replicas
            .iter()
            .map(|r| format!("{:.0} → {:.0} MiB", mib(r.rss_idle), mib(r.rss_ingest_peak)))
            .collect::<Vec<_>>()
            .join("; ")
    });
    row(
        "RSS high-water mark per replica (VmHWM, after export)",
        &|f| {
            f.replicas
                .iter()
                .map(|r| format!("{:.0} MiB", mib(r.rss_high_water)))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    row("database size", &|f| {
        format!("{:.0} MiB", f.db_bytes as f64 / 1024.0 / 1024.0)
    });
    section.push('\n');
    for f in figures {
        section.push_str(&format!(
            "Target ≥ 20,000 measurements/s, {}: **{}**.\n",
            f.layout.title(),
            if f.ingest_rate >= 20_000.0 {
                "met"
            } else {
                "not met"
            }
        ));
    }
    section
}

/// CPU time of a process and all its descendants alive now (PostgreSQL's postmaster
/// and its backends).
fn tree_cpu_seconds(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(tree_cpu_seconds)
            .sum::<f64>()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// User plus system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(
                (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
                    / ticks_per_second,
            )
        })
        .unwrap_or(0.0)
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
