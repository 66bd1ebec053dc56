//! The real `data-api` binary: the PKI and NUTS commands, `serve --init-missing`, and
//! durability — `kill -9` in the middle of an ingest loop loses no acknowledged
//! measurement and stores none twice.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::served::{data_api, read, Served, BIN};
use common::{client_with_identity, measurement, registration};
use serde_json::{json, Value};

#[test]
fn pki_commands_are_idempotent_and_refuse_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(data_api(&["pki", "init", "--dir", d]).status.success());
    let ca = read(dir.path().join("ca.pem"));
    let again = data_api(&["pki", "init", "--dir", d]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept"));
    assert_eq!(read(dir.path().join("ca.pem")), ca);

    let server = [
        "pki",
        "issue-server",
        "--dir",
        d,
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
    ];
    assert!(data_api(&server).status.success());
    let refused = data_api(&server);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    assert!(data_api(&[&server[..], &["--force"]].concat())
        .status
        .success());

    let device = [
        "pki",
        "issue-device",
        "--dir",
        d,
        "--email",
        "erika@example.org",
        "--scopes",
        "consent,measurement-write",
        "--out",
        "erika",
    ];
    assert!(data_api(&device).status.success());
    assert!(dir.path().join("erika.pem").exists() && dir.path().join("erika-key.pem").exists());
    assert!(!data_api(&device).status.success());
    let default_name = data_api(&[
        "pki",
        "issue-device",
        "--dir",
        d,
        "--email",
        "max@example.org",
    ]);
    assert!(default_name.status.success());
    assert!(dir.path().join("device.pem").exists());
    let bad_scope = data_api(&[
        "pki",
        "issue-device",
        "--dir",
        d,
        "--email",
        "a@example.org",
        "--scopes",
        "root",
        "--out",
        "x",
    ]);
    assert!(!bad_scope.status.success());
    let no_ca = data_api(&[
        "pki",
        "issue-device",
        "--dir",
        dir.path().join("empty").to_str().unwrap(),
        "--email",
        "a@example.org",
    ]);
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("pki init"));
}

#[test]
fn nuts_import_reproduces_the_shipped_districts() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nuts3.geojson");
    let imported = Command::new(BIN)
        .args(["nuts", "import", "--boundaries"])
        .arg(data.join("source/vg250-krs/VG250_KRS.shp"))
        .arg("--densities")
        .arg(data.join("source/04-kreise.xlsx"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert!(String::from_utf8_lossy(&imported.stdout).contains("wrote 401 districts"));
    let fresh = data_api::nuts::NutsIndex::load(&out).unwrap();
    let shipped = data_api::nuts::NutsIndex::embedded().unwrap();
    assert_eq!(fresh.len(), 401);
    assert_eq!(shipped.len(), 401);
    for (lat, lon, code) in [
        (52.5200, 13.4050, "DE300"), // Berlin
        (48.1372, 11.5756, "DE212"), // München
        (51.3397, 12.3731, "DED51"), // Leipzig
        (53.5000, 11.8000, "DE80O"), // Ludwigslust-Parchim
        (54.7836, 9.4321, "DEF01"),  // Flensburg
    ] {
        let location = data_api::model::Location {
            latitude: lat,
            longitude: lon,
        };
        assert_eq!(fresh.lookup(location).map(|d| d.code.as_str()), Some(code));
        assert_eq!(
            shipped.lookup(location).map(|d| d.code.as_str()),
            Some(code)
        );
    }
    let lookup = data_api(&["nuts", "lookup", "--lat", "47.0", "--lon", "8.0"]);
    assert!(String::from_utf8_lossy(&lookup.stdout).contains("outside every district"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_measurements_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pki) = (dir.path().join("db"), dir.path().join("pki"));
    let mut server = Served::start(&db, &pki);
    let researcher_token = read(pki.join("researcher.token")).trim().to_owned();
    assert!(read(pki.join("admin.token")).trim().len() >= 32);
    let pki_dir = pki.to_str().unwrap();
    let issued = data_api(&[
        "pki",
        "issue-device",
        "--dir",
        pki_dir,
        "--email",
        "durable@example.org",
        "--out",
        "durable",
    ]);
    assert!(issued.status.success());
    let ca = read(pki.join("ca.pem"));
    let device = client_with_identity(
        &ca,
        &read(pki.join("durable.pem")),
        &read(pki.join("durable-key.pem")),
    );
    let anonymous = common::client_builder(&ca).build().unwrap();

    let created: Value = anonymous
        .post(server.url("/management/household"))
        .bearer_auth(&researcher_token)
        .json(&registration("durable@example.org"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let meter = created["meters"][0]["uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        device
            .post(server.url("/household/consent"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Several uploaders post batches until the server dies under them.
    let acknowledged = Arc::new(Mutex::new(HashSet::<String>::new()));
    let unacknowledged = Arc::new(Mutex::new(Vec::<Value>::new()));
    let batches_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut uploaders = Vec::new();
    for worker in 0..4u32 {
        let (device, url, meter) = (
            device.clone(),
            server.url("/household/meter/measurement"),
            meter.clone(),
        );
        let (acknowledged, unacknowledged, batches_done) = (
            acknowledged.clone(),
            unacknowledged.clone(),
            batches_done.clone(),
        );
        uploaders.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                let batch: Vec<Value> = (0..50)
                    .map(|i| measurement(&meter, (worker * 50 + i) % 600))
                    .collect();
                let body = json!({ "measurements": batch });
                match device.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => {
                        let outcome: Value = r.json().await.unwrap();
                        assert_eq!(outcome, json!({"accepted": 50, "duplicates": 0}));
                        let mut acked = acknowledged.lock().unwrap();
                        acked.extend(batch.iter().map(|m| m["uuid"].as_str().unwrap().to_owned()));
                        batches_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => {
                        // Connection refused or cut: the server is gone.
                        unacknowledged.lock().unwrap().push(body);
                        return;
                    }
                }
            }
        }));
    }
    let waited = Instant::now();
    while batches_done.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "ingest made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    for u in uploaders {
        u.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 40 * 50);

    let server = Served::start(&db, &pki);
    let stored = stored_measurements(&server, &device, &meter).await;
    let unique: HashSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a measurement was stored twice");
    let missing: Vec<&String> = acknowledged.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged measurements lost",
        missing.len()
    );

    // The uploaders cut off mid-request retry: what had reached the store is a duplicate.
    let retries = unacknowledged.lock().unwrap().clone();
    for body in &retries {
        let outcome: Value = device
            .post(server.url("/household/meter/measurement"))
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let total = outcome["accepted"].as_u64().unwrap() + outcome["duplicates"].as_u64().unwrap();
        assert_eq!(total, 50, "{outcome}");
    }
    let after = stored_measurements(&server, &device, &meter).await;
    let lines = after.len();
    let unique_after: HashSet<&String> = after.iter().collect();
    assert_eq!(lines, unique_after.len());
    assert_eq!(
        lines,
        unique.len()
            + retries
                .iter()
                .map(|b| {
                    b["measurements"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| !unique.contains(m["uuid"].as_str().unwrap()))
                        .count()
                })
                .sum::<usize>()
    );
}

/// The uuids of a meter's stored measurements as its device reads them (exports carry
/// pseudonyms instead), page by page.
async fn stored_measurements(
    server: &Served,
    device: &reqwest::Client,
    meter: &str,
) -> Vec<String> {
    let mut uuids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = server.url(&format!("/household/meter/{meter}/measurement?limit=1000"));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = device.get(url).send().await.unwrap().json().await.unwrap();
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
