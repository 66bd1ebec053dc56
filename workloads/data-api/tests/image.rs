//! The `motey/data-api:latest` image (built by `scripts/build-images.sh data-api`) in real
//! Docker: a `FROM scratch` container creates its PKI and tokens in a volume, issues a
//! device certificate, and serves a device and a researcher over mutual TLS.
//! Without the image the test says so and passes, except under CI (`CI` set), where the
//! image is always built first.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const IMAGE: &str = "motey/data-api:latest";

struct Container {
    name: String,
    volume: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
    }
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect("docker")
}

fn try_copy_out(container: &str, path: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("file");
    let out = docker(&[
        "cp",
        &format!("{container}:{path}"),
        target.to_str().unwrap(),
    ]);
    out.status
        .success()
        .then(|| std::fs::read_to_string(target).unwrap())
}

fn copy_out(container: &str, path: &str) -> String {
    try_copy_out(container, path).unwrap_or_else(|| panic!("docker cp {container}:{path} failed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_image_serves_devices_and_researchers() {
    let available = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "{IMAGE} is missing: scripts/build-images.sh data-api"
        );
        eprintln!("{IMAGE} not built; run scripts/build-images.sh data-api to include this test");
        return;
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let c = Container {
        name: format!("data-api-test-{id}"),
        volume: format!("data-api-test-pki-{id}"),
    };
    let pki_mount = format!("{}:/pki", c.volume);
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &c.name,
        "-p",
        "127.0.0.1::8443",
        "-v",
        &pki_mount,
        IMAGE,
        "serve",
        "--listen",
        "0.0.0.0:8443",
        "--db",
        "/data/db",
        "--pki-dir",
        "/pki",
        "--init-missing",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The server writes its PKI before it listens; wait for the port and /health.
    let port = String::from_utf8(docker(&["port", &c.name, "8443"]).stdout).unwrap();
    let port = port
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ca = loop {
        // The token files are written last, after the CA and the server certificate.
        if try_copy_out(&c.name, "/pki/admin.token").is_some() {
            break copy_out(&c.name, "/pki/ca.pem");
        }
        assert!(
            Instant::now() < deadline,
            "container never created its PKI: {}",
            String::from_utf8_lossy(&docker(&["logs", &c.name]).stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let token = copy_out(&c.name, "/pki/researcher.token").trim().to_owned();
    let url = |p: &str| format!("https://127.0.0.1:{port}{p}");
    let anonymous = common::client_builder(&ca).build().unwrap();
    loop {
        if anonymous
            .get(url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the container does not answer");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let created: Value = anonymous
        .post(url("/management/household"))
        .bearer_auth(&token)
        .json(&common::registration("docker@example.org"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let meter = created["meters"][0]["uuid"].as_str().unwrap().to_owned();

    // The operator's way to issue a device certificate into the volume.
    let issue = docker(&[
        "run",
        "--rm",
        "-v",
        &pki_mount,
        IMAGE,
        "pki",
        "issue-device",
        "--dir",
        "/pki",
        "--email",
        "docker@example.org",
        "--out",
        "docker",
    ]);
    assert!(
        issue.status.success(),
        "{}",
        String::from_utf8_lossy(&issue.stderr)
    );
    let device = common::client_with_identity(
        &ca,
        &copy_out(&c.name, "/pki/docker.pem"),
        &copy_out(&c.name, "/pki/docker-key.pem"),
    );
    assert_eq!(
        device
            .post(url("/household/consent"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let outcome: Value = device
        .post(url("/household/meter/measurement"))
        .json(&json!({"measurements": [common::measurement(&meter, 0)]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(outcome, json!({"accepted": 1, "duplicates": 0}));
}
