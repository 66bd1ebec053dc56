//! The real `data-api serve` process, with everything it writes to stdout and stderr kept
//! for the tests that read the log.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_data-api");

/// Runs a `data-api` command to its end.
pub fn data_api(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run data-api")
}

/// A running `data-api serve --init-missing`; killed with SIGKILL when dropped.
pub struct Served {
    child: Child,
    pub addr: String,
    /// stdout and stderr, as written so far.
    pub log: Arc<Mutex<Vec<u8>>>,
}

impl Served {
    pub fn start(db: &Path, pki: &Path) -> Served {
        Served::start_with(db, pki, &[])
    }

    /// With further `serve` arguments.
    pub fn start_with(db: &Path, pki: &Path, extra: &[&str]) -> Served {
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
            .arg(db)
            .arg("--pki-dir")
            .arg(pki)
            .args(extra)
            .env("RUST_LOG", "info,data_api=debug")
            .env_remove("DATA_API_RESEARCHER_TOKEN")
            .env_remove("DATA_API_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn data-api serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("stdout");
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                kept.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        // Keeps draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                {
                    let mut kept = kept.lock().unwrap();
                    kept.extend_from_slice(&line);
                    kept.push(b'\n');
                }
                if let Ok(entry) = serde_json::from_slice::<Value>(&line) {
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
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => panic!(
                "data-api serve did not report its address:\n{}",
                String::from_utf8_lossy(&log.lock().unwrap())
            ),
        };
        Served { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as a supervisor stops it: the server drains and flushes, then exits.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill9();
    }
}
