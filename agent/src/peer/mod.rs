//! The peer protocol: what one node asks of another over ZeroMQ request-reply on TCP
//! (Motey, section 5.4.4) — its capabilities, deploying an image, an image's status,
//! terminating an image, device access. Version 2: each connection is a Noise session
//! (`noise`) whose handshake proves both nodes through [`SessionTrust`]; every request and
//! reply is a JSON envelope naming sender and recipient, sealed in that session. See
//! `PROTOCOL.md` beside this file for the construction and the framing.
//!
//! Wiring:
//!
//! ```no_run
//! # async fn wire(config: motey::config::Config, directory: motey::discovery::PeerDirectory, handler: std::sync::Arc<dyn motey::peer::PeerHandler>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use std::sync::Arc;
//! use motey::peer::{load_or_generate_key, ClusterKeyTrust, PeerClient, PeerServer, SessionTrust};
//! let key = load_or_generate_key(config.cluster.key.as_deref(), &config.general.data_dir)?;
//! let this_node = directory.this_node().id;
//! let trust: Arc<dyn SessionTrust> =
//!     Arc::new(ClusterKeyTrust::load(this_node, key, &config.general.data_dir)?);
//! let endpoint = format!("tcp://0.0.0.0:{}", config.zeromq.peer_port);
//! let server = PeerServer::bind(&endpoint, trust.clone(), handler).await?;
//! let remote = PeerClient::new(directory, trust, Duration::from_millis(config.cluster.request_timeout_ms));
//! // `remote` is the orchestrator's `RemoteNodes`.
//! # Ok(()) }
//! ```

mod client;
mod cluster_key_trust;
pub mod envelope;
pub mod messages;
pub mod noise;
mod server;
mod session_trust;

use std::path::{Path, PathBuf};

pub use client::{endpoints_of, CallError, PeerClient, Requester};
pub use cluster_key_trust::{ClusterKeyTrust, STATIC_KEY_FILE};
pub use envelope::{canonical_json, AuthError, ClusterKey, Envelope, Received, ReplayGuard};
pub use messages::{ErrorCode, PeerRefusal, Reply, Request};
pub use server::{PeerHandler, PeerServer, ServerOptions, ServerStats};
pub use session_trust::{SessionTrust, TrustRefusal};

/// Name of the generated key file in the data directory.
pub const KEY_FILE: &str = "cluster-key";

/// Why the peer layer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer server cannot listen on {endpoint}: {reason}")]
    Bind { endpoint: String, reason: String },
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
}

/// The cluster key: the configured one, else the one kept in `<data_dir>/cluster-key`,
/// else a new random key written there (readable by the owner only). The key itself is
/// never logged, only its fingerprint.
pub fn load_or_generate_key(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<ClusterKey, PeerError> {
    if let Some(secret) = configured.filter(|secret| !secret.trim().is_empty()) {
        let key = ClusterKey::from_secret(secret);
        tracing::info!(
            fingerprint = key.fingerprint(),
            "cluster key from the configuration"
        );
        return Ok(key);
    }
    let path = data_dir.join(KEY_FILE);
    let key_error = |reason: String| PeerError::KeyFile {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) => {
            if secret.trim().chars().count() < 16 {
                return Err(key_error(
                    "holds fewer than 16 characters; remove it to have a new key generated".into(),
                ));
            }
            let key = ClusterKey::from_secret(&secret);
            tracing::info!(path = %path.display(), fingerprint = key.fingerprint(), "cluster key from the key file");
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret = ClusterKey::generate_secret();
            std::fs::create_dir_all(data_dir).map_err(|e| key_error(e.to_string()))?;
            crate::private_fs::write_new_secret(&path, &secret)
                .map_err(|e| key_error(e.to_string()))?;
            let key = ClusterKey::from_secret(&secret);
            tracing::warn!(
                path = %path.display(),
                fingerprint = key.fingerprint(),
                "generated a new cluster key; other nodes join this cluster only with the same key: \
                 copy the content of this file into their [CLUSTER] key (or MOTEY_CLUSTER_KEY)"
            );
            Ok(key)
        }
        Err(error) => Err(key_error(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate_key(None, dir.path()).unwrap();
        let second = load_or_generate_key(Some(""), dir.path()).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let configured =
            load_or_generate_key(Some("a configured cluster secret"), dir.path()).unwrap();
        assert_ne!(configured.fingerprint(), first.fingerprint());
    }

    #[test]
    fn short_key_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "short\n").unwrap();
        let error = load_or_generate_key(None, dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster-key"), "{error}");
    }
}
