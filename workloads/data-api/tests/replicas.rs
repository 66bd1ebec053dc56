//! Two real `data-api serve` processes on one PostgreSQL database: what one replica
//! registers the other serves, a revocation acknowledged by one stops ingest through the
//! other, one email registered through both at once ends in one 201 and one 409, and a
//! replica killed with `kill -9` mid-ingest loses no acknowledged measurement.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::served::{read, Served};
use common::{client_builder, client_with_identity, measurement, registration};
use data_api::model::Scope;
use data_api::pki::{CertificateAuthority, DeviceCertificate};
use serde_json::{json, Value};
use system_tests::postgres::Postgres;

/// Two replicas sharing one database and one PKI directory.
struct Replicas {
    a: Served,
    b: Served,
    ca: CertificateAuthority,
    researcher_token: String,
    _pki: tempfile::TempDir,
    _postgres: Postgres,
}

impl Replicas {
    fn start() -> Replicas {
        let postgres = Postgres::start();
        let pki = tempfile::tempdir().unwrap();
        // The first creates the PKI (--init-missing), the second finds it.
        let a = Served::start(postgres.url(), pki.path());
        let b = Served::start(postgres.url(), pki.path());
        Replicas {
            a,
            b,
            ca: CertificateAuthority::load(pki.path()).unwrap(),
            researcher_token: read(pki.path().join("researcher.token")).trim().to_owned(),
            _pki: pki,
            _postgres: postgres,
        }
    }

    fn anonymous(&self) -> reqwest::Client {
        client_builder(&self.ca.cert_pem).build().unwrap()
    }

    fn device(&self, email: &str) -> reqwest::Client {
        let issued = self
            .ca
            .issue_device(&DeviceCertificate::new(email, Scope::ALL.to_vec(), 30))
            .unwrap();
        client_with_identity(&self.ca.cert_pem, &issued.cert_pem, &issued.key_pem)
    }

    async fn register(&self, on: &Served, email: &str) -> reqwest::Response {
        self.anonymous()
            .post(on.url("/management/household"))
            .bearer_auth(&self.researcher_token)
            .json(&registration(email))
            .send()
            .await
            .unwrap()
    }

    /// Registers through `on` and grants consent; gives the first meter and the device.
    async fn consenting(&self, on: &Served, email: &str) -> (String, reqwest::Client) {
        let response = self.register(on, email).await;
        let status = response.status();
        let created: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{created}");
        let device = self.device(email);
        let granted = device
            .post(on.url("/household/consent"))
            .send()
            .await
            .unwrap();
        assert_eq!(granted.status(), 200);
        (
            created["meters"][0]["uuid"].as_str().unwrap().to_owned(),
            device,
        )
    }

    /// The uuids of every measurement of `meter` that the database holds, read through
    /// replica `on` by the household's device (exports carry pseudonyms, not uuids).
    async fn stored(&self, on: &Served, device: &reqwest::Client, meter: &str) -> Vec<String> {
        let mut uuids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = on.url(&format!("/household/meter/{meter}/measurement?limit=1000"));
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let response = device.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let page: Value = response.json().await.unwrap();
            uuids.extend(
                page["measurements"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["uuid"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return uuids,
            }
        }
    }
}

fn batch(meter: &str, size: u32, offset: u32) -> Value {
    json!({ "measurements": (0..size).map(|i| measurement(meter, (offset + i) % 600)).collect::<Vec<_>>() })
}

fn uuids(batch: &Value) -> Vec<String> {
    batch["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["uuid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_registers_the_other_ingests() {
    let replicas = Replicas::start();
    let (meter, device) = replicas.consenting(&replicas.a, "two@example.org").await;
    let body = batch(&meter, 20, 0);
    for (on, expected) in [
        (&replicas.b, json!({"accepted": 20, "duplicates": 0})),
        (&replicas.a, json!({"accepted": 0, "duplicates": 20})),
    ] {
        let response = device
            .post(on.url("/household/meter/measurement"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
    let mut stored = replicas.stored(&replicas.a, &device, &meter).await;
    let mut sent = uuids(&body);
    stored.sort();
    sent.sort();
    assert_eq!(stored, sent);
    let series: Value = device
        .get(
            replicas
                .a
                .url(&format!("/household/meter/{meter}/measurement?limit=1000")),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(series["measurements"].as_array().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_registered_through_both_replicas_at_once_is_taken_once() {
    let replicas = Replicas::start();
    for round in 0..10 {
        let email = format!("race{round}@example.org");
        let (first, second) = tokio::join!(
            replicas.register(&replicas.a, &email),
            replicas.register(&replicas.b, &email)
        );
        let mut statuses = [first.status().as_u16(), second.status().as_u16()];
        statuses.sort();
        if statuses != [201, 409] {
            let bodies = (first.text().await.unwrap(), second.text().await.unwrap());
            panic!("round {round}: {statuses:?} {bodies:?}");
        }
        let refused = if first.status() == 409 { first } else { second };
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "email_taken");
        assert_eq!(body["field"], "user.email");
    }
    let listed: Value = replicas
        .anonymous()
        .get(replicas.b.url("/management/household"))
        .bearer_auth(&replicas.researcher_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["households"].as_array().unwrap().len(), 10);
}

/// One upload and what became of it.
struct Upload {
    sent_at: Instant,
    status: u16,
    uuids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_stops_ingest_on_the_other() {
    let replicas = Replicas::start();
    let (meter, device) = replicas.consenting(&replicas.a, "revoke@example.org").await;
    let uploads = Arc::new(Mutex::new(Vec::<Upload>::new()));
    let revoked_at = Arc::new(Mutex::new(None::<Instant>));
    let mut uploaders = Vec::new();
    for worker in 0..4u32 {
        let (device, url, meter) = (
            device.clone(),
            replicas.b.url("/household/meter/measurement"),
            meter.clone(),
        );
        let (uploads, revoked_at) = (uploads.clone(), revoked_at.clone());
        uploaders.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut refused_after_revocation = 0;
            while Instant::now() < deadline && refused_after_revocation < 5 {
                let body = batch(&meter, 25, worker * 25);
                let sent_at = Instant::now();
                let response = device.post(&url).json(&body).send().await.unwrap();
                let status = response.status().as_u16();
                if status == 403 {
                    let refusal: Value = response.json().await.unwrap();
                    assert_eq!(refusal["error"], "consent_revoked");
                }
                let after_revocation = revoked_at.lock().unwrap().is_some_and(|r| sent_at > r);
                if after_revocation {
                    refused_after_revocation += 1;
                }
                uploads.lock().unwrap().push(Upload {
                    sent_at,
                    status,
                    uuids: uuids(&body),
                });
            }
        }));
    }
    let waited = Instant::now();
    while uploads
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.status == 200)
        .count()
        < 20
    {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "ingest made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revocation = device
        .delete(replicas.a.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(revocation.status(), 200);
    let acknowledged = Instant::now();
    *revoked_at.lock().unwrap() = Some(acknowledged);
    for u in uploaders {
        u.await.unwrap();
    }

    let uploads = std::mem::take(&mut *uploads.lock().unwrap());
    let late: Vec<&Upload> = uploads
        .iter()
        .filter(|u| u.sent_at > acknowledged)
        .collect();
    assert!(
        late.len() >= 4,
        "every uploader went on after the revocation"
    );
    assert!(
        late.iter().all(|u| u.status == 403),
        "a batch sent after the revocation was acknowledged was accepted"
    );
    assert!(uploads.iter().all(|u| u.status == 200 || u.status == 403));
    let accepted: HashSet<String> = uploads
        .iter()
        .filter(|u| u.status == 200)
        .flat_map(|u| u.uuids.iter().cloned())
        .collect();
    let stored = replicas.stored(&replicas.b, &device, &meter).await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "a measurement was stored twice"
    );
    assert_eq!(
        stored_set, accepted,
        "stored is exactly what was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_ingest_loses_no_acknowledged_measurement() {
    let mut replicas = Replicas::start();
    let (meter, device) = replicas.consenting(&replicas.b, "kill@example.org").await;
    let acknowledged = Arc::new(Mutex::new(HashSet::<String>::new()));
    let through_a = Arc::new(AtomicUsize::new(0));
    let mut uploaders = Vec::new();
    // Two uploaders on each replica; those on the killed one stop at the first failure.
    for worker in 0..4u32 {
        let on_a = worker % 2 == 0;
        let url = if on_a { &replicas.a } else { &replicas.b }.url("/household/meter/measurement");
        let (device, meter) = (device.clone(), meter.clone());
        let (acknowledged, through_a) = (acknowledged.clone(), through_a.clone());
        uploaders.push(tokio::spawn(async move {
            let mut batches = 0;
            while batches < 60 {
                let body = batch(&meter, 50, worker * 50);
                match device.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let outcome: Value = r.json().await.unwrap();
                        assert_eq!(outcome, json!({"accepted": 50, "duplicates": 0}));
                        acknowledged.lock().unwrap().extend(uuids(&body));
                        if on_a {
                            through_a.fetch_add(1, Ordering::SeqCst);
                        }
                        batches += 1;
                    }
                    Ok(r) => panic!("upload refused: {}", r.status()),
                    Err(_) if on_a => return batches,
                    Err(e) => panic!("the surviving replica failed: {e}"),
                }
            }
            batches
        }));
    }
    let waited = Instant::now();
    while through_a.load(Ordering::SeqCst) < 10 {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "ingest made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas.a.kill9();
    let mut done = Vec::new();
    for u in uploaders {
        done.push(u.await.unwrap());
    }
    // The uploaders of the surviving replica went on to the end.
    assert_eq!((done[1], done[3]), (60, 60));
    let acknowledged = acknowledged.lock().unwrap().clone();
    let stored = replicas.stored(&replicas.b, &device, &meter).await;
    let stored_set: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "a measurement was stored twice"
    );
    let missing = acknowledged.difference(&stored_set).count();
    assert_eq!(missing, 0, "{missing} acknowledged measurements lost");
}
