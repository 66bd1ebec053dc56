//! Python virtual environments under `target/`, for the tests and benchmarks that run a
//! Python program against an agent (a reference client, a fuzzer, a comparison client).

use std::path::PathBuf;
use std::process::Command;

/// The interpreter of the virtual environment `target/<name>` holding `packages` (pip
/// requirement specifiers, installed from PyPI the first time; pip skips what is there).
pub fn venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = crate::docker::repo_root().join("target").join(name);
    let python = venv.join("bin").join("python");
    if !python.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages));
    python
}

fn run(command: &mut Command) {
    let status = command.status().unwrap_or_else(|error| {
        panic!("{command:?}: {error} (scripts/setup-deps.sh installs python3-venv)")
    });
    assert!(status.success(), "{command:?} failed: {status}");
}
