//! Privacy that really forgets, shown on the real `data-api serve`: after a revocation no
//! byte of the database files, the key vault, the ledger, the logs, any export or a
//! backup taken before (and restored after) the revocation holds the participant's name,
//! email, street or exact coordinates; exports taken before the revocation share no id
//! with the anonymized record; a revoked device certificate cannot complete a handshake;
//! the CA key can live outside the server's volume.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::served::{data_api, privacy_paths, Served};
use common::{client_builder, client_with_identity, measurement, registration, TestServer};
use common::{ADMIN_TOKEN, RESEARCHER_TOKEN};
use data_api::privacy::ledger::RevocationLedger;
use data_api::privacy::{FileKeyVault, KeyVault, SealedStore};
use data_api::store::postgres::PgStore;
use data_api::store::{SledStore, Store};
use serde_json::{json, Value};
use system_tests::postgres::Postgres;

const NAME: &str = "Wilhelmina Quaxelbrot";
const EMAIL: &str = "wilhelmina.quaxelbrot@example.org";
const STREET: &str = "Zwetschgenallee";
const LATITUDE: f64 = 51.337_913;
const LONGITUDE: f64 = 12.371_486;

/// What must not survive a revocation, as text and as the coordinates' binary forms.
fn needles() -> Vec<(&'static str, Vec<u8>)> {
    let mut needles = vec![
        ("name", NAME.as_bytes().to_vec()),
        ("surname", b"Quaxelbrot".to_vec()),
        ("email", EMAIL.as_bytes().to_vec()),
        ("email local part", b"wilhelmina.quaxelbrot".to_vec()),
        ("street", STREET.as_bytes().to_vec()),
        ("latitude", LATITUDE.to_string().into_bytes()),
        ("longitude", LONGITUDE.to_string().into_bytes()),
    ];
    for (what, value) in [("latitude", LATITUDE), ("longitude", LONGITUDE)] {
        needles.push((what, value.to_le_bytes().to_vec()));
        needles.push((what, value.to_be_bytes().to_vec()));
    }
    needles
}

fn found_in(haystack: &[u8]) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = needles()
        .into_iter()
        .filter(|(_, needle)| {
            haystack
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
        })
        .map(|(what, _)| what)
        .collect();
    found.dedup();
    found
}

/// The regular files under `path` (a PostgreSQL directory also holds its socket).
fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    if !path.is_dir() {
        return vec![];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
        files.extend(files_under(&entry.unwrap().path()));
    }
    files
}

/// Every (file, needle) found under `paths`.
fn search(paths: &[&Path]) -> Vec<(PathBuf, &'static str)> {
    paths
        .iter()
        .flat_map(|p| files_under(p))
        .flat_map(|file| {
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                // A running PostgreSQL removes temporary files of its own.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
                Err(e) => panic!("{}: {e}", file.display()),
            };
            found_in(&bytes)
                .into_iter()
                .map(move |what| (file.clone(), what))
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn distinctive_registration() -> Value {
    let mut body = registration(EMAIL);
    body["user"]["name"] = json!(NAME);
    body["address"]["street"] = json!(STREET);
    body["location"] = json!({"latitude": LATITUDE, "longitude": LONGITUDE});
    body
}

fn issue_device(pki: &Path, out: &str, extra: &[&str]) -> (String, String) {
    let pki_dir = pki.to_str().unwrap();
    let issued = data_api(
        &[
            &[
                "pki",
                "issue-device",
                "--dir",
                pki_dir,
                "--email",
                EMAIL,
                "--out",
                out,
            ][..],
            extra,
        ]
        .concat(),
    );
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    (
        read(&pki.join(format!("{out}.pem"))),
        read(&pki.join(format!("{out}-key.pem"))),
    )
}

async fn get_bytes(client: &reqwest::Client, url: String, token: &str) -> Vec<u8> {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.unwrap().to_vec()
}

/// Every export format, as a researcher downloads them.
async fn exports(server: &Served, client: &reqwest::Client, token: &str) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for path in [
        "/management/export/households?format=jsonl",
        "/management/export/households?format=csv",
        "/management/export/measurements?format=jsonl",
        "/management/export/measurements?format=csv",
    ] {
        all.push(get_bytes(client, server.url(path), token).await);
    }
    all
}

/// The households of a store as a reader holding `vault` sees them.
fn households_opened_with<S: Store>(store: S, vault: &Path, scratch: &Path) -> Vec<u8> {
    let vault: std::sync::Arc<dyn KeyVault> =
        std::sync::Arc::new(FileKeyVault::open(vault).unwrap());
    let store = SealedStore::new(
        store,
        vault,
        RevocationLedger::open(&scratch.join("ledger")).unwrap(),
    );
    serde_json::to_vec(&store.households().unwrap()).unwrap()
}

/// Where the survey's database lives, and how its operator backs it up and restores it:
/// a sled directory copied as it is, or a PostgreSQL database dumped with `pg_dump`.
enum Database {
    Sled(PathBuf),
    Postgres(Postgres),
}

/// The PostgreSQL database the survey runs on; `pg_restore` checks go to `BACKUP_READ`.
const SURVEY: &str = "survey";
const BACKUP_READ: &str = "backup_read";

impl Database {
    fn sled(dir: &Path) -> Database {
        Database::Sled(dir.join("db"))
    }

    fn postgres() -> Database {
        let server = Postgres::start();
        server.create_database(SURVEY);
        Database::Postgres(server)
    }

    fn serve(&self, pki: &Path) -> Served {
        match self {
            Database::Sled(db) => Served::start(db, pki),
            Database::Postgres(server) => Served::start(server.url_of(SURVEY), pki),
        }
    }

    /// The key vault and the revocation ledger `serve` uses: beside the sled directory,
    /// or named for PostgreSQL.
    fn vault_and_ledger(&self, pki: &Path) -> (PathBuf, PathBuf) {
        match self {
            Database::Sled(db) => (
                db.with_file_name("db.keys"),
                db.with_file_name("db.revocations"),
            ),
            Database::Postgres(_) => privacy_paths(pki),
        }
    }

    fn back_up(&self, to: &Path) {
        match self {
            Database::Sled(db) => copy_dir(db, to),
            Database::Postgres(server) => server.dump(SURVEY, to),
        }
    }

    /// Replaces the database by the backup; no server may be using it.
    fn restore(&self, from: &Path) {
        match self {
            Database::Sled(db) => {
                std::fs::remove_dir_all(db).unwrap();
                copy_dir(from, db);
            }
            Database::Postgres(server) => {
                server.psql("postgres", &format!("DROP DATABASE {SURVEY}"));
                server.create_database(SURVEY);
                server.restore(SURVEY, from);
            }
        }
    }

    /// Every file the database consists of, written out: for PostgreSQL its whole data
    /// directory (tables, WAL) and log after a checkpoint.
    fn files(&self) -> PathBuf {
        match self {
            Database::Sled(db) => db.clone(),
            Database::Postgres(server) => {
                server.psql("postgres", "CHECKPOINT");
                server.dir().to_owned()
            }
        }
    }

    /// The households of the database (`backup = None`) or of a backup, read with `vault`.
    fn households(&self, backup: Option<&Path>, vault: &Path, scratch: &Path) -> Vec<u8> {
        match (self, backup) {
            (Database::Sled(db), None) => {
                households_opened_with(SledStore::open(db, 8 << 20).unwrap(), vault, scratch)
            }
            (Database::Sled(_), Some(backup)) => {
                households_opened_with(SledStore::open(backup, 8 << 20).unwrap(), vault, scratch)
            }
            (Database::Postgres(server), backup) => {
                let database = match backup {
                    None => SURVEY,
                    Some(dump) => {
                        server.psql(
                            "postgres",
                            &format!("DROP DATABASE IF EXISTS {BACKUP_READ}"),
                        );
                        server.create_database(BACKUP_READ);
                        server.restore(BACKUP_READ, dump);
                        BACKUP_READ
                    }
                };
                // The synchronous client must not run on an async worker.
                tokio::task::block_in_place(|| {
                    let store = PgStore::open(&server.url_of(database), 1).unwrap();
                    households_opened_with(store, vault, scratch)
                })
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_leaves_no_personal_data_in_any_file_log_export_or_restored_backup() {
    let dir = tempfile::tempdir().unwrap();
    revocation_forgets_everywhere(&dir, Database::sled(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_revocation_leaves_no_personal_data_in_the_database_files_logs_exports_or_a_restored_dump(
) {
    let dir = tempfile::tempdir().unwrap();
    let database = tokio::task::spawn_blocking(Database::postgres)
        .await
        .unwrap();
    revocation_forgets_everywhere(&dir, database).await;
}

async fn revocation_forgets_everywhere(dir: &tempfile::TempDir, database: Database) {
    let pki = dir.path().join("pki");
    let (vault, ledger) = database.vault_and_ledger(&pki);
    let (backup, exports_dir) = (dir.path().join("backup"), dir.path().join("exports"));
    std::fs::create_dir_all(&exports_dir).unwrap();
    let mut logs = Vec::new();

    let mut server = database.serve(&pki);
    let token = read(&pki.join("researcher.token")).trim().to_owned();
    let ca = read(&pki.join("ca.pem"));
    let anonymous = client_builder(&ca).build().unwrap();
    let (cert, key) = issue_device(&pki, "household", &[]);
    let device = client_with_identity(&ca, &cert, &key);

    let created = anonymous
        .post(server.url("/management/household"))
        .bearer_auth(&token)
        .json(&distinctive_registration())
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let meter = created["meters"][0]["uuid"].as_str().unwrap().to_owned();
    // A second registration with the email in other letters: refused, and logged.
    let mut again = distinctive_registration();
    again["user"]["email"] = json!(EMAIL.to_uppercase());
    let taken = anonymous
        .post(server.url("/management/household"))
        .bearer_auth(&token)
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 409);
    let consent = device
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 200);
    let batch: Vec<Value> = (0..5).map(|i| measurement(&meter, i)).collect();
    let ingested = device
        .post(server.url("/household/meter/measurement"))
        .json(&json!({ "measurements": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(ingested.status(), 200);
    let before_exports = exports(&server, &anonymous, &token).await;
    server.stop();
    logs.push(server.log_text());

    // The backup, as an operator takes it; and for the control only, the vault as it was
    // at that moment.
    database.back_up(&backup);
    let vault_then = dir.path().join("vault-then");
    copy_dir(&vault, &vault_then);

    // Control: the same search does find everything where it is readable, so finding
    // nothing below means something.
    let registration_file = dir.path().join("registration.json");
    std::fs::write(&registration_file, distinctive_registration().to_string()).unwrap();
    let control: HashSet<&str> = search(&[&registration_file])
        .into_iter()
        .map(|(_, w)| w)
        .collect();
    assert_eq!(
        control,
        [
            "name",
            "surname",
            "email",
            "email local part",
            "street",
            "latitude",
            "longitude"
        ]
        .into_iter()
        .collect()
    );
    let scratch = tempfile::tempdir().unwrap();
    let opened = database.households(Some(&backup), &vault_then, scratch.path());
    let readable: HashSet<&str> = found_in(&opened).into_iter().collect();
    for what in ["name", "email", "street", "latitude", "longitude"] {
        assert!(
            readable.contains(what),
            "the backup with its key holds the {what}"
        );
    }

    let mut server = database.serve(&pki);
    let revoked = device
        .delete(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    // A certificate for the email issued after the revocation matches nothing: its
    // refusal is logged, every report cycle, without the email.
    let (late_cert, late_key) = issue_device(&pki, "late", &[]);
    let late = client_with_identity(&ca, &late_cert, &late_key);
    for _ in 0..2 {
        let refused = late.get(server.url("/household")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"], "unknown_participant");
        assert!(found_in(body.to_string().as_bytes()).is_empty(), "{body}");
    }
    let after_exports = exports(&server, &anonymous, &token).await;
    server.stop();
    logs.push(server.log_text());

    // The backup from before the revocation is restored; the ledger revokes again.
    database.restore(&backup);
    let mut server = database.serve(&pki);
    let view: Value = anonymous
        .get(server.url(&format!("/management/household/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["anonymized"], true, "{view}");
    assert_eq!(view["consent"]["state"], "REVOKED", "{view}");
    assert!(
        view["user"].is_null() && view["address"].is_null(),
        "{view}"
    );
    let restored_exports = exports(&server, &anonymous, &token).await;
    server.stop();
    let restored_log = server.log_text();
    assert!(restored_log.contains("anonymized again"), "{restored_log}");
    logs.push(restored_log);

    for (i, export) in before_exports
        .iter()
        .chain(&after_exports)
        .chain(&restored_exports)
        .enumerate()
    {
        std::fs::write(exports_dir.join(format!("export-{i}")), export).unwrap();
    }
    let logs_file = dir.path().join("serve.log");
    std::fs::write(&logs_file, logs.concat()).unwrap();
    assert!(logs
        .concat()
        .contains("consent revoked, household anonymized"));
    let db = database.files();
    // Control: the files searched are those that hold the household (its meter is stored
    // in clear), written out.
    let holding_the_meter = files_under(&db)
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .is_ok_and(|bytes| bytes.windows(meter.len()).any(|w| w == meter.as_bytes()))
        })
        .count();
    assert!(
        holding_the_meter > 0,
        "no file of {} holds the household",
        db.display()
    );
    let found = search(&[&db, &backup, &vault, &ledger, &logs_file, &exports_dir]);
    assert!(found.is_empty(), "personal data left behind: {found:?}");
    // Nor does the database or the backup from before the revocation, read with the
    // vault as it is now: the household's key is gone.
    assert!(found_in(&database.households(None, &vault, scratch.path())).is_empty());
    let backup_now = database.households(Some(&backup), &vault, scratch.path());
    assert!(found_in(&backup_now).is_empty(), "the backup still opens");
    let ledger_text = read(&ledger);
    assert_eq!(ledger_text.lines().count(), 1, "{ledger_text}");
    assert!(ledger_text.starts_with(&id));
}

/// Every id a JSON-lines export carries.
fn ids_of(jsonl: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for line in jsonl.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for key in ["id", "household", "meter", "uuid"] {
            if let Some(id) = v[key].as_str() {
                ids.insert(id.to_owned());
            }
        }
        for list in ["meters", "pv_systems"] {
            for item in v[list].as_array().into_iter().flatten() {
                for key in ["uuid", "measurement_device", "generation_meter"] {
                    if let Some(id) = item[key].as_str() {
                        ids.insert(id.to_owned());
                    }
                }
            }
        }
    }
    ids
}

async fn export_text(server: &TestServer, path: &str) -> String {
    let bytes = get_bytes(&server.anonymous(), server.url(path), RESEARCHER_TOKEN).await;
    String::from_utf8(bytes).unwrap()
}

on_both_stores!(an_export_taken_before_revocation_shares_no_id_with_the_anonymized_record);

async fn an_export_taken_before_revocation_shares_no_id_with_the_anonymized_record() {
    let server = TestServer::start().await;
    let h = server.register("linkable@example.org").await;
    let device = server.device_all_scopes(&h.email);
    device
        .post(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    let batch: Vec<Value> = (0..6)
        .map(|i| measurement(&h.meters[i % 2], i as u32))
        .collect();
    let r = device
        .post(server.url("/household/meter/measurement"))
        .json(&json!({ "measurements": batch }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let households_before =
        export_text(&server, "/management/export/households?format=jsonl").await;
    let measurements_before =
        export_text(&server, "/management/export/measurements?format=jsonl").await;
    // Within one state the exports join: the same household pseudonym in both.
    let before: Value = serde_json::from_str(households_before.lines().next().unwrap()).unwrap();
    let pseudonym = before["id"].as_str().unwrap().to_owned();
    assert!(measurements_before.lines().all(|l| l.contains(&pseudonym)));
    let located = before["location"].clone();
    assert_eq!(located, json!({"latitude": 51.34, "longitude": 12.37}));
    let before_ids: HashSet<String> = ids_of(&households_before)
        .union(&ids_of(&measurements_before))
        .cloned()
        .collect();
    let real_ids: HashSet<String> = std::iter::once(h.id.clone())
        .chain(h.meters.iter().cloned())
        .chain(std::iter::once(h.device.clone()))
        .chain(batch.iter().map(|m| m["uuid"].as_str().unwrap().to_owned()))
        .collect();
    assert!(
        before_ids.is_disjoint(&real_ids),
        "exports carry no database id"
    );
    assert_eq!(
        before_ids.len(),
        1 + 2 + 1 + 1 + 6,
        "household, meters, device, PV system, measurements"
    );

    let revoked = device
        .delete(server.url("/household/consent"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let households_after = export_text(&server, "/management/export/households?format=jsonl").await;
    let measurements_after =
        export_text(&server, "/management/export/measurements?format=jsonl").await;
    assert_eq!(
        measurements_after.lines().count(),
        6,
        "the measurements stay in the data set"
    );
    let after_ids: HashSet<String> = ids_of(&households_after)
        .union(&ids_of(&measurements_after))
        .cloned()
        .collect();
    assert_eq!(after_ids.len(), before_ids.len());
    assert!(
        after_ids.is_disjoint(&before_ids),
        "pseudonyms rotated at revocation"
    );
    let after: Value = serde_json::from_str(households_after.lines().next().unwrap()).unwrap();
    assert_eq!(after["anonymized"], true);
    assert_ne!(
        after["location"], located,
        "the displaced location, not the old one"
    );

    // Nor does anything the server still holds or shows name an earlier pseudonym.
    let mut shown = String::new();
    for path in [
        "/management/household".to_owned(),
        format!("/management/household/{}", h.id),
    ] {
        shown.push_str(&export_text(&server, &path).await);
    }
    let files = server.stop_keeping_files().await;
    let mut haystacks: Vec<Vec<u8>> = files_under(files.path())
        .into_iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    haystacks.push(shown.into_bytes());
    haystacks.push(households_after.into_bytes());
    haystacks.push(measurements_after.into_bytes());
    for id in &before_ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        for haystack in &haystacks {
            let text = String::from_utf8_lossy(haystack);
            assert!(!text.contains(id.as_str()), "{id} is still linkable");
            assert!(
                !haystack.windows(16).any(|w| w == uuid.as_bytes()),
                "{id} is stored in binary"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_certificate_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (db, pki, offline) = (
        dir.path().join("db"),
        dir.path().join("pki"),
        dir.path().join("offline"),
    );
    // The CA key lives outside the server's volume from the start.
    let ca_key = offline.join("ca-key.pem");
    let ca_key_arg = ca_key.to_str().unwrap();
    let pki_dir = pki.to_str().unwrap();
    assert!(
        data_api(&["pki", "init", "--dir", pki_dir, "--ca-key", ca_key_arg])
            .status
            .success()
    );
    let server_cert = data_api(&[
        "pki",
        "issue-server",
        "--dir",
        pki_dir,
        "--ca-key",
        ca_key_arg,
        "--host",
        "127.0.0.1",
    ]);
    assert!(server_cert.status.success());
    assert!(ca_key.exists() && !pki.join("ca-key.pem").exists());
    let without_key = data_api(&["pki", "issue-device", "--dir", pki_dir, "--email", EMAIL]);
    assert!(
        !without_key.status.success(),
        "no CA key in the server's volume"
    );

    let mut server = Served::start(&db, &pki);
    assert!(!pki.join("ca-key.pem").exists(), "serving needs no CA key");
    let ca = read(&pki.join("ca.pem"));
    let token = read(&pki.join("admin.token")).trim().to_owned();
    let researcher = read(&pki.join("researcher.token")).trim().to_owned();
    let anonymous = client_builder(&ca).build().unwrap();
    let created = anonymous
        .post(server.url("/management/household"))
        .bearer_auth(&researcher)
        .json(&registration(EMAIL))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (old_cert, old_key) = issue_device(&pki, "device", &["--ca-key", ca_key_arg]);
    let old = client_with_identity(&ca, &old_cert, &old_key);
    assert_eq!(
        old.get(server.url("/household"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Rotation: a new certificate replaces the old one, whose fingerprint is revoked.
    let rotated = data_api(&[
        "pki",
        "issue-device",
        "--dir",
        pki_dir,
        "--ca-key",
        ca_key_arg,
        "--email",
        EMAIL,
        "--out",
        "device",
        "--force",
    ]);
    let printed = String::from_utf8_lossy(&rotated.stdout).into_owned();
    let old_fingerprint = printed
        .lines()
        .find_map(|l| l.strip_prefix("replaced certificate "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("{printed}"))
        .to_owned();
    let new = client_with_identity(
        &ca,
        &read(&pki.join("device.pem")),
        &read(&pki.join("device-key.pem")),
    );
    let revoke = anonymous
        .post(server.url("/management/certificate/revoked"))
        .bearer_auth(&token)
        .json(&json!({ "fingerprint": old_fingerprint }))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 201);
    let listed: Value = anonymous
        .get(server.url("/management/certificate/revoked"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["fingerprint"], old_fingerprint.as_str());

    // The connection opened before the revocation is refused from its next request on.
    let (status, body) =
        common::error_of(old.get(server.url("/household")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("certificate_rejected"))
    );
    // A new connection with the revoked certificate does not get through the handshake,
    // before and after a restart; the rotated certificate does.
    for restart in [false, true] {
        if restart {
            server.stop();
            server = Served::start(&db, &pki);
        }
        let fresh = client_with_identity(&ca, &old_cert, &old_key);
        let refused = fresh.get(server.url("/health")).send().await;
        assert!(
            refused.is_err(),
            "a revoked certificate completed a request: {refused:?}"
        );
        assert_eq!(
            new.get(server.url("/household"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // The admin token is what revokes; a device cannot revoke anything.
    let by_device = new
        .post(server.url("/management/certificate/revoked"))
        .json(&json!({ "fingerprint": old_fingerprint }))
        .send()
        .await
        .unwrap();
    assert_eq!(by_device.status(), 401);
    let bad = anonymous
        .post(server.url("/management/certificate/revoked"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "fingerprint": "abc" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401, "the fixture token is not this server's");
    let bad = anonymous
        .post(server.url("/management/certificate/revoked"))
        .bearer_auth(&token)
        .json(&json!({ "fingerprint": "abc" }))
        .send()
        .await
        .unwrap();
    let (status, body) = common::error_of(bad).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("fingerprint")));
    assert!(server.log_text().contains("TLS handshake failed"));
}

#[test]
fn a_key_vault_inside_the_database_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (db_arg, pki) = (db.to_str().unwrap(), dir.path().join("pki"));
    let inside = db.join("keys");
    let refused = data_api(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--init-missing",
        "--pki-dir",
        pki.to_str().unwrap(),
        "--db",
        db_arg,
        "--key-vault",
        inside.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("inside the database directory"), "{stderr}");
    assert!(!inside.exists(), "no key was written there");
}

#[test]
fn on_postgres_the_key_vault_and_the_ledger_must_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    // Refused before any connection: no server listens on port 1.
    let refused = data_api(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--init-missing",
        "--pki-dir",
        pki.to_str().unwrap(),
        "--db",
        "postgres://postgres@127.0.0.1:1/survey",
        "--key-vault",
        dir.path().join("keys").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--key-vault and --revocation-ledger must be given"),
        "{stderr}"
    );
    assert!(!dir.path().join("keys").exists(), "nothing was written");
}
