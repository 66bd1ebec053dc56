//! A full disk under a real `data-api serve`: the database lives on a tmpfs of a few MiB
//! (mounted in a private user and mount namespace, `unshare -rm`, so no privileges are
//! needed), a device uploads until the disk is full. The store failure is a 503, not a
//! 500; `/health` answers 503; reads still work although the device-activity bookkeeping
//! cannot be written; after the retry window the process exits with an error. A shell
//! plays the supervisor: it frees space (the tmpfs grows) and starts the server again,
//! which then has every acknowledged measurement.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::{json, Value};
use system_tests::survey::{
    log_lines, registration, Participant, Process, Survey, ADMIN_TOKEN, PATIENCE, RESEARCHER_TOKEN,
};
use system_tests::{free_port, wait_for};

/// The supervisor: mounts the small tmpfs, runs the server, notes its exit code, grows
/// the tmpfs (the operator freed space) and runs the server again.
const SUPERVISOR: &str = r#"
set -e
mnt=$1; exit_file=$2; bin=$3; shift 3
mount -t tmpfs -o size=4m tmpfs "$mnt"
set +e
"$bin" serve --db "$mnt/db" "$@"
echo $? > "$exit_file"
mount -o remount,size=256m "$mnt"
exec "$bin" serve --db "$mnt/db" "$@"
"#;

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn listening(log: &Path) -> usize {
    log_lines(log)
        .iter()
        .filter(|l| l["fields"]["message"] == "listening")
        .count()
}

async fn wait_listening(log: &Path, starts: usize) {
    wait_for("data-api to listen", PATIENCE, || {
        let n = listening(log);
        async move { (n >= starts).then_some(()) }
    })
    .await;
}

fn batch(meter: &str, first: usize) -> Vec<Value> {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
    (first..first + 1000)
        .map(|i| {
            json!({
                "uuid": uuid::Uuid::new_v4().to_string(),
                "meter": meter,
                "measured_at": (start + chrono::Duration::seconds(i as i64)).to_rfc3339(),
                "data": [{"0100010800ff": i as f64}, {"0100020800ff": 0.5}, {"0100100700ff": -230.0}]
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_data_api_unhealthy_and_it_exits_for_a_restart() {
    if !unshare_works() {
        // CI runs as root or with user namespaces; a developer box may have neither.
        assert!(
            std::env::var_os("CI").is_none(),
            "unshare -rm is needed to mount the small filesystem"
        );
        eprintln!("skipped: unshare -rm does not work here");
        return;
    }
    let survey = Survey::new();
    let mnt = survey.dir.path().join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let exit_file = survey.dir.path().join("first-exit");
    let log = survey.log_file("data-api.log");
    let port = free_port();
    let mut command = Command::new("unshare");
    command
        .args(["-rm", "sh", "-c", SUPERVISOR, "sh"])
        .arg(&mnt)
        .arg(&exit_file)
        .arg(&survey.binaries.data_api)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--pki-dir")
        .arg(survey.pki_dir())
        .args([
            "--log-format",
            "json",
            "--cache-mb",
            "4",
            "--store-retry",
            "3",
        ])
        .env("DATA_API_RESEARCHER_TOKEN", RESEARCHER_TOKEN)
        .env("DATA_API_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap(),
        ));
    let _supervisor = Process::spawn_group("unshare data-api", &mut command);
    wait_listening(&log, 1).await;
    let base = format!("https://127.0.0.1:{port}");
    let client = survey.client();
    let created: Value = client
        .post(format!("{base}/management/household"))
        .bearer_auth(RESEARCHER_TOKEN)
        .json(&registration("full-disk@example.org"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let meter = created["meters"][0]["uuid"].as_str().unwrap().to_owned();
    let device = survey.issue_device("full-disk@example.org", "full-disk");
    let participant = Participant {
        client: survey.device_client(&device),
        base: base.clone(),
    };
    assert_eq!(
        participant.call(Method::POST, "/household/consent").await.0,
        200
    );

    // Uploads until the disk is full; 4 MiB hold some thousands of measurements.
    let mut acknowledged = HashSet::new();
    let mut refusal = None;
    for round in 0..200 {
        let measurements = batch(&meter, round * 1000);
        let response = participant
            .client
            .post(format!("{base}/household/meter/measurement"))
            .json(&json!({ "measurements": measurements }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        if status != 200 {
            refusal = Some((status, body));
            break;
        }
        acknowledged.extend(
            measurements
                .iter()
                .map(|m| m["uuid"].as_str().unwrap().to_owned()),
        );
    }
    let (status, body) = refusal.expect("the 4 MiB disk never filled up");
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert!(
        !acknowledged.is_empty(),
        "the disk was full before any upload"
    );

    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "store_unavailable", "{health}");
    // Reads go on: the device's activity cannot be recorded, its consent is still read.
    let (status, consent) = participant.call(Method::GET, "/household/consent").await;
    assert_eq!((status, consent["state"].as_str()), (200, Some("GRANTED")));
    let overview = client
        .get(format!("{base}/management/household"))
        .bearer_auth(RESEARCHER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200);

    let code = wait_for("data-api to give up and exit", PATIENCE, || {
        let code = std::fs::read_to_string(&exit_file).ok();
        async move { code.map(|c| c.trim().to_owned()) }
    })
    .await;
    assert_ne!(
        code, "0",
        "the server exited successfully with a failed store"
    );
    assert!(
        log_lines(&log)
            .iter()
            .any(|l| l["fields"]["message"] == "the store is unavailable"),
        "no log line names the failure"
    );

    // Restarted by the supervisor with space freed: healthy, nothing acknowledged lost.
    wait_listening(&log, 2).await;
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let mut stored = HashSet::new();
    for m in participant.measurements(&meter).await {
        stored.insert(m["uuid"].as_str().unwrap().to_owned());
    }
    let lost = acknowledged.difference(&stored).count();
    assert_eq!(lost, 0, "{lost} acknowledged measurements lost");
}
