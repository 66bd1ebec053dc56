//! The real `data-api` binary as a child process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_data-api");

pub fn data_api(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run data-api")
}

/// A running `data-api serve`; killed with SIGKILL when dropped.
pub struct Served {
    child: Child,
    pub addr: String,
}

impl Served {
    /// Starts `serve --init-missing` on a free port; `db` is a sled directory or a
    /// `postgres://` connection string.
    pub fn start(db: impl AsRef<OsStr>, pki: &Path) -> Served {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--init-missing",
            ])
            .arg("--db")
            .arg(db.as_ref())
            .arg("--pki-dir")
            .arg(pki)
            .env("RUST_LOG", "info")
            .env_remove("DATA_API_RESEARCHER_TOKEN")
            .env_remove("DATA_API_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn data-api serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                    if entry["fields"]["message"] == "listening" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(
                                entry["fields"]["addr"]
                                    .as_str()
                                    .unwrap_or_default()
                                    .to_owned(),
                            );
                        }
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("data-api serve did not report its address");
        Served { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
