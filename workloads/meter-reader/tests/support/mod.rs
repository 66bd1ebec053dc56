//! Test doubles with real parts: a PKI made with rcgen, a mutual-TLS server implementing
//! the reader's side of the Data API contract (CONTRACT-survey.md), and helpers that run
//! the real `meter-sim` and `meter-reader` binaries. The server stands in for the Data
//! API until that lands; it keeps every measurement by uuid, so tests can count.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{json, Value};

/// File names as `data-api pki` writes them.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "EnergieBroker survey CA (test)");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "data-api");
        let server_cert = server.signed_by(&server_key, &issuer).unwrap();

        let device_key = KeyPair::generate().unwrap();
        let mut device = CertificateParams::new(Vec::<String>::new()).unwrap();
        device.subject_alt_names = vec![SanType::Rfc822Name(
            "participant@example.org".try_into().unwrap(),
        )];
        device
            .distinguished_name
            .push(DnType::CommonName, "measurement device");
        let device_cert = device.signed_by(&device_key, &issuer).unwrap();

        std::fs::create_dir_all(dir).unwrap();
        let w = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        w("ca.pem", ca_cert.pem());
        w("server.pem", server_cert.pem());
        w("server-key.pem", server_key.serialize_pem());
        w("device.pem", device_cert.pem());
        w("device-key.pem", device_key.serialize_pem());
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What the fake Data API has seen.
#[derive(Default)]
pub struct ApiState {
    pub consent: String,
    /// Stored measurements by uuid.
    pub measurements: HashMap<String, Value>,
    pub posts: u64,
    pub duplicates: u64,
    pub consent_requests: u64,
    /// Uploads whose answer is still being held back.
    pub in_flight: u64,
    /// Hold every answer to an upload this long after committing it.
    pub answer_delay: Duration,
    pub component_versions: Option<String>,
}

pub type Shared = Arc<Mutex<ApiState>>;

fn error(status: StatusCode, code: &str, field: Option<&str>) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "error": code, "message": code.replace('_', " "), "field": field })),
    )
}

async fn consent(State(s): State<Shared>) -> Json<Value> {
    let mut s = s.lock().unwrap();
    s.consent_requests += 1;
    Json(json!({ "state": s.consent, "granted_at": null, "revoked_at": null }))
}

async fn household(State(s): State<Shared>) -> Json<Value> {
    let s = s.lock().unwrap();
    Json(json!({ "consent": { "state": s.consent, "granted_at": null, "revoked_at": null } }))
}

async fn upload(
    State(s): State<Shared>,
    headers: axum::http::HeaderMap,
    body: Json<Value>,
) -> (StatusCode, Json<Value>) {
    let delay = {
        let mut st = s.lock().unwrap();
        st.posts += 1;
        st.component_versions = headers
            .get("x-component-versions")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match st.consent.as_str() {
            "GRANTED" => {}
            "REVOKED" => return error(StatusCode::FORBIDDEN, "consent_revoked", None),
            _ => return error(StatusCode::FORBIDDEN, "consent_not_granted", None),
        }
        let Some(list) = body.get("measurements").and_then(Value::as_array) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                Some("measurements"),
            );
        };
        if list.len() > 1000 {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many",
                Some("measurements"),
            );
        }
        for (i, m) in list.iter().enumerate() {
            let ok = m["uuid"].is_string()
                && m["meter"].is_string()
                && m["measured_at"].as_str().is_some_and(|t| t.ends_with('Z'))
                && m["data"].as_array().is_some_and(|d| {
                    d.iter().all(|e| {
                        e.as_object().is_some_and(|o| {
                            o.len() == 1 && o.iter().all(|(k, v)| k.len() == 12 && v.is_number())
                        })
                    })
                });
            if !ok {
                let field = format!("measurements[{i}]");
                return error(StatusCode::BAD_REQUEST, "invalid_field", Some(&field));
            }
        }
        let mut accepted = 0;
        let mut duplicates = 0;
        for m in list {
            let id = m["uuid"].as_str().unwrap().to_string();
            match st.measurements.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(m.clone());
                    accepted += 1;
                }
            }
        }
        st.duplicates += duplicates;
        st.in_flight += 1;
        (st.answer_delay, accepted, duplicates)
    };
    let (d, accepted, duplicates) = delay;
    tokio::time::sleep(d).await;
    s.lock().unwrap().in_flight -= 1;
    (
        StatusCode::OK,
        Json(json!({ "accepted": accepted, "duplicates": duplicates })),
    )
}

/// The fake Data API, over mutual TLS.
pub struct TestApi {
    pub addr: SocketAddr,
    pub state: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
    pki_dir: PathBuf,
}

fn tls_config(pki: &Path) -> Arc<rustls::ServerConfig> {
    use rustls_pemfile::{certs, private_key};
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let chain: Vec<_> = certs(&mut &read("server.pem")[..])
        .collect::<Result<_, _>>()
        .unwrap();
    let key = private_key(&mut &read("server-key.pem")[..])
        .unwrap()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&mut &read("ca.pem")[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

impl TestApi {
    /// Starts on a free port.
    pub async fn start(pki: &Pki, consent: &str) -> TestApi {
        let state = Shared::default();
        state.lock().unwrap().consent = consent.to_string();
        let mut api = TestApi {
            addr: "127.0.0.1:0".parse().unwrap(),
            state,
            task: None,
            pki_dir: pki.dir.clone(),
        };
        api.listen().await;
        api
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&self.pki_dir));
        let app = Router::new()
            .route("/household", get(household))
            .route("/household/consent", get(consent))
            .route("/household/meter/measurement", post(upload))
            .with_state(self.state.clone());
        self.task = Some(tokio::spawn(async move {
            // Connection tasks live in this set: stopping the server drops it, which
            // closes kept-alive connections too, as a real outage would.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    /// Goes down: no listener, open connections closed.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Comes back on the same port.
    pub async fn restart(&mut self) {
        self.listen().await;
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn set_consent(&self, c: &str) {
        self.state.lock().unwrap().consent = c.to_string();
    }

    pub fn measurements(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .measurements
            .values()
            .cloned()
            .collect()
    }

    pub fn with<T>(&self, f: impl FnOnce(&ApiState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }
}

/// Polls `cond` every 100 ms for up to `secs`; panics with `what` if it never holds.
pub async fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meter-sim` and returns it with the pty path or address it printed.
pub fn start_sim(args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meter-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Proc { child }, line.trim().to_string())
}

/// A reader process's settings.
pub struct ReaderSetup<'a> {
    pub pki: &'a Pki,
    pub api_url: String,
    pub meters: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<(&'a str, String)>,
}

/// Starts `meter-reader run` with JSON logs appended to `setup.log`.
pub fn start_reader(setup: &ReaderSetup<'_>) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&setup.log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meter-reader"));
    cmd.arg("run")
        .env_clear()
        .env("METER_READER_METERS", &setup.meters)
        .env("METER_READER_API_URL", &setup.api_url)
        .env("METER_READER_CA_CERT", setup.pki.path("ca.pem"))
        .env("METER_READER_CLIENT_CERT", setup.pki.path("device.pem"))
        .env("METER_READER_CLIENT_KEY", setup.pki.path("device-key.pem"))
        .env("METER_READER_DATA_DIR", &setup.data_dir)
        .env("METER_READER_MEASUREMENT_INTERVAL", "0.5")
        .env("METER_READER_REPORT_INTERVAL", "1")
        .env("METER_READER_RETRY_MAX", "1")
        .env("METER_READER_UI_LISTEN", "off")
        .env("METER_READER_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (k, v) in &setup.extra {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
    }
}

/// The JSON log lines of the reader with this message.
pub fn log_events(log: &Path, message: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// The status file the reader writes.
pub fn status(data_dir: &Path) -> Value {
    std::fs::read_to_string(data_dir.join("status.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}
