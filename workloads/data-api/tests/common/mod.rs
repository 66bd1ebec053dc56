//! Shared test fixtures: a real Data API on a loopback port with its own CA, on sled or
//! on a real PostgreSQL server, and HTTPS clients with and without client certificates.
#![allow(dead_code)]

pub mod served;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use data_api::model::Scope;
use data_api::nuts::NutsIndex;
use data_api::pki::{self, CertificateAuthority, DeviceCertificate};
use data_api::tls::TlsSetup;
use data_api::{PostgresOptions, ServeOptions};
use serde_json::{json, Value};
use system_tests::postgres::Postgres;
use tokio::sync::oneshot;

pub const RESEARCHER_TOKEN: &str = "researcher-token-0123456789";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// The store a [`TestServer`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

tokio::task_local! {
    /// The backend of the servers a test starts: set by [`on_both_stores!`].
    pub static BACKEND: Backend;
}

/// Runs each named `async fn` test twice, on sled and on PostgreSQL: the functions are
/// plain `async fn name()` and start their servers with [`TestServer::start`].
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                $crate::common::BACKEND
                    .scope($crate::common::Backend::Sled, super::$name())
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $crate::common::BACKEND
                    .scope($crate::common::Backend::Postgres, super::$name())
                    .await
            }
        }
    )*};
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    /// The PostgreSQL server when the backend is PostgreSQL (stopped after the Data API).
    pub postgres: Option<Postgres>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Households registered by [`TestServer::register`].
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: String,
    pub email: String,
    pub device: String,
    pub meters: Vec<String>,
    pub body: Value,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with_nuts(NutsIndex::embedded().expect("embedded NUTS data")).await
    }

    pub async fn start_with_nuts(nuts: NutsIndex) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki_dir = dir.path().join("pki");
        pki::init(&pki_dir, 30).expect("pki init");
        pki::issue_server(
            &pki_dir,
            &["localhost".into(), "127.0.0.1".into()],
            30,
            false,
        )
        .expect("server certificate");
        let ca = CertificateAuthority::load(&pki_dir).expect("load CA");
        let tls = TlsSetup::from_files(
            &pki_dir.join(pki::CA_CERT),
            &pki_dir.join(pki::SERVER_CERT),
            &pki_dir.join(pki::SERVER_KEY),
        )
        .expect("TLS setup");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let backend = BACKEND.try_with(|b| *b).unwrap_or(Backend::Sled);
        let postgres = match backend {
            Backend::Sled => None,
            Backend::Postgres => Some(
                tokio::task::spawn_blocking(Postgres::start)
                    .await
                    .expect("PostgreSQL"),
            ),
        };
        let options = ServeOptions {
            db_path: dir.path().join("db"),
            // A database on a server has no directory to keep them beside.
            key_vault: postgres.as_ref().map(|_| dir.path().join("keys")),
            revocation_ledger: postgres.as_ref().map(|_| dir.path().join("revocations")),
            cache_capacity: 32 << 20,
            postgres: postgres.as_ref().map(|pg| PostgresOptions {
                url: pg.url(),
                pool_size: 8,
                ca: None,
            }),
            tls,
            researcher_token: Some(RESEARCHER_TOKEN.into()),
            admin_token: Some(ADMIN_TOKEN.into()),
            nuts,
            report_interval: data_api::DEFAULT_REPORT_INTERVAL,
            store_retry: data_api::health::DEFAULT_STORE_RETRY,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            data_api::run(listener, options, async {
                let _ = rx.await;
            })
            .await
            .expect("server run");
        });
        TestServer {
            addr,
            dir,
            ca,
            postgres,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{}", self.addr.port(), path)
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// A client that trusts the survey CA and presents no certificate.
    pub fn anonymous(&self) -> reqwest::Client {
        client_builder(&self.ca.cert_pem).build().expect("client")
    }

    /// A device client with a certificate for `email` carrying `scopes` (empty: none in
    /// the certificate, so the device record decides).
    pub fn device(&self, email: &str, scopes: &[Scope]) -> reqwest::Client {
        let issued = self
            .ca
            .issue_device(&DeviceCertificate::new(email, scopes.to_vec(), 30))
            .expect("device certificate");
        client_with_identity(&self.ca.cert_pem, &issued.cert_pem, &issued.key_pem)
    }

    pub fn device_all_scopes(&self, email: &str) -> reqwest::Client {
        self.device(email, &Scope::ALL)
    }

    /// Registers a household through the researcher endpoint (one device, one electricity
    /// and one PV generation meter, one PV system).
    pub async fn register(&self, email: &str) -> Registered {
        let response = self
            .anonymous()
            .post(self.url("/management/household"))
            .bearer_auth(RESEARCHER_TOKEN)
            .json(&registration(email))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 201, "registration of {email}");
        let body: Value = response.json().await.expect("registration json");
        Registered {
            id: body["id"].as_str().unwrap().to_owned(),
            email: email.to_owned(),
            device: body["measurement_device"].as_str().unwrap().to_owned(),
            meters: body["meters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["uuid"].as_str().unwrap().to_owned())
                .collect(),
            body,
        }
    }

    /// Stops the server and hands over its directory (database, key vault, ledger).
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        self.stop().await;
        dir
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn client_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA pem"))
        .timeout(Duration::from_secs(60))
}

pub fn client_with_identity(ca_pem: &str, cert_pem: &str, key_pem: &str) -> reqwest::Client {
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes())
        .expect("identity pem");
    client_builder(ca_pem)
        .identity(identity)
        .build()
        .expect("client")
}

/// Full registration details of section 3.1.2, in Leipzig.
pub fn registration(email: &str) -> Value {
    json!({
        "user": {"name": "Erika Mustermann", "email": email},
        "address": {
            "street": "Augustusplatz", "house_number": "10",
            "postal_code": "04109", "city": "Leipzig", "country": "DE"
        },
        "location": {"latitude": 51.3397, "longitude": 12.3731},
        "metadata": {
            "children": 2, "adults": 2, "employed_adults": 1,
            "ev_charger": true, "heat_pump": false, "home_battery": true
        },
        "measurement_devices": [{"name": "pi-1"}],
        "meters": [
            {"type": "ELECTRICITY", "model": "MT681"},
            {"type": "PV-GENERATION", "model": "EHZ"}
        ],
        "pv_systems": [{
            "nominal_power": 9.62, "azimuth": 180.0, "tilt": 30.0,
            "installation_date": "2019-05-17", "generation_meter": 1
        }]
    })
}

/// One measurement as the meter reader sends it.
pub fn measurement(meter: &str, minute: u32) -> Value {
    json!({
        "uuid": uuid::Uuid::new_v4().to_string(),
        "meter": meter,
        "measured_at": format!("2026-11-23T{:02}:{:02}:00Z", 10 + minute / 60, minute % 60),
        "data": [{"0100010800ff": 12345.6 + minute as f64}, {"0100100700ff": -230.0}]
    })
}

pub async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("JSON error body");
    assert!(
        body.get("error").and_then(Value::as_str).is_some(),
        "{body}"
    );
    assert!(
        body.get("message").and_then(Value::as_str).is_some(),
        "{body}"
    );
    assert!(body.get("field").is_some(), "field key present: {body}");
    (status, body)
}
