//! The Docker CLI as tests use it to check what really runs, and the test images.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

/// The image every agent test runs; also tagged `alpine`, `busybox` and `nginx`.
pub const TESTBOX: &str = "motey/testbox:latest";

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `docker ARGS`; stdout on success, stderr as the error.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .map_err(|error| format!("run docker: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Builds the named images with `scripts/build-images.sh` unless they exist (CI builds
/// them before the tests; a developer running one test gets them built once).
pub fn ensure_images(names: &[&str]) {
    ensure_images_tagged(names, "latest", &[]);
}

/// The version the workspace's packages carry, which tags their images.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the named images for `linux/<arch>` (`amd64` or `arm64`, tagged
/// `motey/<name>:<version>-<arch>`) unless they exist.
pub fn ensure_platform_images(names: &[&str], arch: &str) {
    ensure_images_tagged(
        names,
        &format!("{VERSION}-{arch}"),
        &["--platform", &format!("linux/{arch}")],
    );
}

fn ensure_images_tagged(names: &[&str], tag: &str, options: &[&str]) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| docker(&["image", "inspect", &format!("motey/{name}:{tag}")]).is_err())
        .collect();
    if missing.is_empty() {
        return;
    }
    let status = Command::new(repo_root().join("scripts/build-images.sh"))
        .args(options)
        .args(&missing)
        .current_dir(repo_root())
        .status()
        .expect("run scripts/build-images.sh");
    assert!(
        status.success(),
        "scripts/build-images.sh {options:?} {missing:?} failed"
    );
}

/// `ensure_images(&["testbox"])`, once per test binary.
pub fn ensure_testbox() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| ensure_images(&["testbox"]));
}

/// Ids of the containers (running or not) carrying `label=value`.
pub fn containers_with_label(label: &str, value: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}={value}"),
    ])
    .map(|out| out.lines().map(str::to_owned).collect())
    .unwrap_or_default()
}

/// Force-removes every container carrying `label=value` (test clean-up).
pub fn remove_containers_with_label(label: &str, value: &str) {
    for id in containers_with_label(label, value) {
        let _ = docker(&["rm", "-f", "-v", &id]);
    }
}
