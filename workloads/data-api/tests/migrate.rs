//! The real binary's database commands: `data-api migrate` applies the schema once, and
//! `data-api migrate-store` copies a survey from sled into PostgreSQL that a server on
//! PostgreSQL then serves as it was.

mod common;

use common::served::{data_api, read, Served};
use common::{client_builder, client_with_identity, measurement, registration};
use data_api::model::Scope;
use data_api::pki::{CertificateAuthority, DeviceCertificate};
use data_api::store::postgres::MIGRATIONS;
use serde_json::{json, Value};
use system_tests::postgres::Postgres;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn migrate_applies_the_schema_once() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let versions: Vec<String> = MIGRATIONS.iter().map(|m| m.version.to_string()).collect();
    let latest = versions.last().unwrap();
    let first = stdout(&data_api(&["migrate", "--db", &url]));
    assert!(
        first.contains(&format!(
            "applied migrations {}; schema is at version {latest}",
            versions.join(", ")
        )),
        "{first}"
    );
    let again = stdout(&data_api(&["migrate", "--db", &url]));
    assert!(
        again.contains(&format!("schema is up to date at version {latest}")),
        "{again}"
    );
    let partitions: usize = postgres
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'measurements'::regclass",
        )
        .parse()
        .unwrap();
    assert!(partitions >= 4, "the current month and three ahead");

    // A schema newer than the program is refused, not written to.
    postgres.psql(
        "postgres",
        "INSERT INTO schema_migrations (version, description) VALUES (99, 'from the future')",
    );
    let refused = data_api(&["migrate", "--db", &url]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("version 99"));
    let not_a_url = data_api(&["migrate", "--db", "/data/db"]);
    assert!(!not_a_url.status.success());
}

async fn export(client: &reqwest::Client, on: &Served, token: &str, path: &str) -> String {
    let response = client
        .get(on.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_copies_a_sled_survey_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pki) = (dir.path().join("db"), dir.path().join("pki"));
    let sled = Served::start(&db, &pki);
    let token = read(pki.join("researcher.token")).trim().to_owned();
    let ca = CertificateAuthority::load(&pki).unwrap();
    let anonymous = client_builder(&ca.cert_pem).build().unwrap();
    // Two consenting households with measurements; the second then revokes.
    for (email, revoke) in [("stay@example.org", false), ("leave@example.org", true)] {
        let created: Value = anonymous
            .post(sled.url("/management/household"))
            .bearer_auth(&token)
            .json(&registration(email))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let meter = created["meters"][0]["uuid"].as_str().unwrap();
        let issued = ca
            .issue_device(&DeviceCertificate::new(email, Scope::ALL.to_vec(), 30))
            .unwrap();
        let device = client_with_identity(&ca.cert_pem, &issued.cert_pem, &issued.key_pem);
        let granted = device
            .post(sled.url("/household/consent"))
            .send()
            .await
            .unwrap();
        assert_eq!(granted.status(), 200);
        let body =
            json!({"measurements": (0..30).map(|i| measurement(meter, i)).collect::<Vec<_>>()});
        let uploaded = device
            .post(sled.url("/household/meter/measurement"))
            .header("X-Component-Versions", "meter-reader=0.1.0")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(uploaded.status(), 200);
        if revoke {
            let revoked = device
                .delete(sled.url("/household/consent"))
                .send()
                .await
                .unwrap();
            assert_eq!(revoked.status(), 200);
        }
    }
    let revoked = anonymous
        .post(sled.url("/management/certificate/revoked"))
        .bearer_auth(&token)
        .json(&json!({"fingerprint": "ab".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 201);
    let deny_list_before =
        export(&anonymous, &sled, &token, "/management/certificate/revoked").await;
    let households_before = export(&anonymous, &sled, &token, "/management/household").await;
    let measurements_before = export(
        &anonymous,
        &sled,
        &token,
        "/management/export/measurements?format=jsonl",
    )
    .await;
    drop(sled);

    let postgres = Postgres::start();
    let url = postgres.url();
    let copied = stdout(&data_api(&[
        "migrate-store",
        "--from",
        db.to_str().unwrap(),
        "--to",
        &url,
    ]));
    assert!(
        copied.contains(
            "copied 2 households, 2 certificate bindings, 1 revoked certificates, \
             2 device states, 60 measurements"
        ),
        "{copied}"
    );
    let digest_of = |side: &str| -> String {
        copied
            .lines()
            .find(|l| l.starts_with(side))
            .unwrap_or_else(|| panic!("no {side} line in {copied}"))
            .split_once(':')
            .unwrap()
            .1
            .trim()
            .to_owned()
    };
    assert_eq!(digest_of("sled"), digest_of("postgresql"));
    assert!(digest_of("sled").starts_with("2 households, 60 measurements, sha256 "));
    assert!(copied.contains("the copy matches the source"));
    // Copying into a database that already holds a survey is refused.
    let twice = data_api(&[
        "migrate-store",
        "--from",
        db.to_str().unwrap(),
        "--to",
        &url,
    ]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already holds 2 households"));

    // The households were copied sealed: the server on PostgreSQL takes over the
    // survey's key vault and revocation ledger.
    let (vault, ledger) = (
        dir.path().join("db.keys"),
        dir.path().join("db.revocations"),
    );
    assert!(copied.contains(&format!(
        "--key-vault {} --revocation-ledger {}",
        vault.display(),
        ledger.display()
    )));
    let served = Served::start_with(
        &url,
        &pki,
        &[
            "--key-vault",
            vault.to_str().unwrap(),
            "--revocation-ledger",
            ledger.to_str().unwrap(),
        ],
    );
    assert_eq!(
        export(
            &anonymous,
            &served,
            &token,
            "/management/certificate/revoked"
        )
        .await,
        deny_list_before
    );
    let households_after = export(&anonymous, &served, &token, "/management/household").await;
    let measurements_after = export(
        &anonymous,
        &served,
        &token,
        "/management/export/measurements?format=jsonl",
    )
    .await;
    // PostgreSQL keeps device activity to the microsecond, sled to the nanosecond.
    let without_clock = |text: &str| {
        let mut v: Value = serde_json::from_str(text).unwrap();
        v.as_object_mut().unwrap().remove("now");
        for household in v["households"].as_array_mut().unwrap() {
            for device in household["measurement_devices"].as_array_mut().unwrap() {
                let at: chrono::DateTime<chrono::Utc> =
                    device["last_activity"].as_str().unwrap().parse().unwrap();
                device["last_activity"] = json!(at.timestamp_micros());
            }
        }
        v
    };
    assert_eq!(
        without_clock(&households_after),
        without_clock(&households_before)
    );
    assert_eq!(measurements_after, measurements_before);
}
