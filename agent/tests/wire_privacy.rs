//! What the peer protocol shows on the wire: a capture (tcpdump on the loopback
//! interface, the edge's peer port only) while the owner deploys an image whose
//! environment holds a marker to the edge, and runs a diagnostic command in it, holds
//! neither the marker nor the command's output — and does hold the peer traffic (the
//! session's frame labels, travelling in the clear), so the capture could have shown them.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{client, send_json};

const ADMIN: &str = "wire-test-admin-token-0123456789";
const KEY: &str = "wire-test-cluster-key-0123456789";
const MARKER: &str = "meter-pin-4711-wire-marker";

/// tcpdump writing the loopback traffic of one TCP port to `file`, stopped when dropped.
struct Capture(Child);

impl Capture {
    fn start(port: u16, file: &Path) -> Capture {
        let child = Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-n", "-s", "0", "-w"])
            .arg(file)
            .arg(format!("tcp port {port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump runs (Debian package tcpdump; scripts/setup-deps.sh installs it)");
        Capture(child)
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let _ = self.0.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
async fn a_capture_of_a_deployment_and_an_exec_shows_neither_the_environment_nor_the_output() {
    let env = [
        ("MOTEY_CLUSTER_KEY", KEY),
        ("MOTEY_MQTT_HEARTBEAT_INTERVAL", "1"),
        ("MOTEY_SECURITY_ADMIN_TOKEN", ADMIN),
        ("MOTEY_SECURITY_EXEC_TIMEOUT", "2"),
    ];
    let (owner, edge) = support::owner_and_probe_edge("wire", &env, &[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peer.pcap");
    let capture = Capture::start(edge.peer_port, &file);
    wait_until_capturing(&file).await;

    let (status, created) = owner
        .post_blueprint(&format!("name: probe\nimages:\n  - name: reader\n    image: motey/testbox:latest\n    env: {{TESTBOX_BODY: {MARKER}}}\n    capabilities: [optical-probe]\n"))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let running = owner.wait_for_state(&id, "RUNNING").await;
    assert_eq!(running["images"][0]["node"], edge.node_id.as_str());

    // The diagnostic command prints the container's environment (the marker with it).
    let request = client()
        .post(owner.url(&format!("/v1/services/{id}/images/reader/exec")))
        .json(&serde_json::json!({ "command": ["/usr/local/bin/testbox"] }));
    let (status, ran): (u16, Value) = send_json(request, ADMIN).await;
    assert_eq!(status, 200, "{ran}");
    let output = ran["output"].as_str().unwrap().to_owned();
    assert!(output.contains(MARKER), "{ran}");
    capture.stop();

    let captured = std::fs::read(&file).unwrap();
    // The capture saw the peer traffic: ZeroMQ's greeting and the session's labels.
    for clear in [
        &b"NULL"[..],
        b"hello",
        b"welcome",
        b"finish",
        b"request",
        b"reply",
    ] {
        assert!(
            contains(&captured, clear),
            "the capture ({} bytes) lacks {:?}: it did not see the peer traffic",
            captured.len(),
            String::from_utf8_lossy(clear)
        );
    }
    assert!(
        !contains(&captured, MARKER.as_bytes()),
        "the marker was on the wire"
    );
    for line in output.lines().filter(|line| line.len() >= 12) {
        assert!(
            !contains(&captured, line.as_bytes()),
            "exec output on the wire: {line}"
        );
    }
    assert!(
        !contains(&captured, b"motey/testbox"),
        "the image name was on the wire"
    );
}

/// Waits until tcpdump has written its file header (the capture is open).
async fn wait_until_capturing(file: &Path) {
    for _ in 0..200 {
        if std::fs::metadata(file).is_ok_and(|meta| meta.len() >= 24) {
            // The header is written when the capture starts; give the filter a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tcpdump did not start capturing");
}
