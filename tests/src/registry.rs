//! A real image registry (Debian's `docker-registry`) on a loopback port, so that tests
//! exercise pulling an image the node lacks. Docker talks plain HTTP to registries in
//! 127.0.0.0/8, so no TLS set-up is needed.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A registry process with its own storage; killed when dropped.
pub struct LocalRegistry {
    process: Child,
    /// `127.0.0.1:PORT`, the prefix of image references in this registry.
    pub address: String,
    _storage: tempfile::TempDir,
}

impl LocalRegistry {
    pub fn start() -> LocalRegistry {
        let storage = tempfile::tempdir().expect("temporary directory");
        let address = format!("127.0.0.1:{}", crate::free_port());
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n  secret: motey-test\n",
                storage.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let process = Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY_BINARY} (package docker-registry): {e}"));
        let registry = LocalRegistry {
            process,
            address,
            _storage: storage,
        };
        let started = Instant::now();
        while !registry.answers() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        registry
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect(&self.address) else {
            return false;
        };
        let mut response = String::new();
        stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.split_whitespace().nth(1) == Some("200")
    }

    /// Pushes a local image under `name` into this registry and removes the local tag, so
    /// the engine must pull it. Returns the full reference.
    pub fn publish(&self, local_image: &str, name: &str) -> String {
        let reference = format!("{}/{name}", self.address);
        crate::docker::docker(&["tag", local_image, &reference]).expect("docker tag");
        crate::docker::docker(&["push", &reference]).expect("docker push");
        crate::docker::docker(&["rmi", &reference]).expect("docker rmi");
        reference
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
