//! The real `data-api serve` process, with everything it writes to stdout and stderr kept
//! for the tests that read the log.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
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
    /// Starts on a free port; `db` is a sled directory or a `postgres://` connection
    /// string.
    pub fn start(db: impl AsRef<OsStr>, pki: &Path) -> Served {
        Served::start_with(db, pki, &[])
    }

    /// With further `serve` arguments. On PostgreSQL the key vault and the revocation
    /// ledger go beside `pki` (see [`privacy_paths`]) unless `extra` names them, so every
    /// replica started with one PKI directory shares them, as replicas of one database
    /// must.
    pub fn start_with(db: impl AsRef<OsStr>, pki: &Path, extra: &[&str]) -> Served {
        let db = db.as_ref();
        let mut command = Command::new(BIN);
        command
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
            .args(extra);
        if db.to_string_lossy().starts_with("postgres") && !extra.contains(&"--key-vault") {
            let (vault, ledger) = privacy_paths(pki);
            command
                .arg("--key-vault")
                .arg(vault)
                .arg("--revocation-ledger")
                .arg(ledger);
        }
        let mut child = command
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

/// The key vault and the revocation ledger of the PostgreSQL servers started with `pki`,
/// inside it so they go with the test's directory.
pub fn privacy_paths(pki: &Path) -> (PathBuf, PathBuf) {
    (pki.join("key-vault"), pki.join("revocations.ledger"))
}

pub fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
