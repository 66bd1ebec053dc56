//! The interim [`SessionTrust`]: a node proves its Noise static key with the cluster key
//! every node holds, so the peer protocol is encrypted and sessions are bound to one node
//! before node certificates exist. Whoever holds the cluster key can still claim any node
//! id; node certificates take that away by implementing [`SessionTrust`] themselves.
//!
//! Proof (the handshake payload): the JSON object `{"node": "<node id>", "mac": "<hex>"}`
//! with `mac` = HMAC-SHA256(cluster key, `motey-noise-static-v2` ‖ static public key (32
//! bytes) ‖ node id (UTF-8)).

use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::envelope::ClusterKey;
use super::session_trust::{SessionTrust, TrustRefusal};
use super::PeerError;
use crate::domain::NodeId;

/// Name of the static key file in the data directory.
pub const STATIC_KEY_FILE: &str = "peer-static-key";

const PROOF_CONTEXT: &[u8] = b"motey-noise-static-v2";

/// This node's identity as the cluster key vouches for it.
pub struct ClusterKeyTrust {
    node: NodeId,
    key: ClusterKey,
    static_private: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Proof {
    node: String,
    mac: String,
}

impl ClusterKeyTrust {
    pub fn new(node: NodeId, key: ClusterKey, static_private: [u8; 32]) -> ClusterKeyTrust {
        ClusterKeyTrust {
            node,
            key,
            static_private,
        }
    }

    /// With the static key kept in `<data_dir>/peer-static-key` (made on first use,
    /// readable by the owner only).
    pub fn load(
        node: NodeId,
        key: ClusterKey,
        data_dir: &Path,
    ) -> Result<ClusterKeyTrust, PeerError> {
        let static_private = load_or_generate_static_key(data_dir)?;
        Ok(ClusterKeyTrust::new(node, key, static_private))
    }

    fn mac(&self, static_public: &[u8; 32], node: &str) -> [u8; 32] {
        let mut data = Vec::with_capacity(PROOF_CONTEXT.len() + 32 + node.len());
        data.extend_from_slice(PROOF_CONTEXT);
        data.extend_from_slice(static_public);
        data.extend_from_slice(node.as_bytes());
        self.key.mac(&data)
    }
}

impl SessionTrust for ClusterKeyTrust {
    fn node_id(&self) -> NodeId {
        self.node.clone()
    }

    fn static_private_key(&self) -> [u8; 32] {
        self.static_private
    }

    fn handshake_proof(&self, local_static_public: &[u8; 32]) -> Vec<u8> {
        let proof = Proof {
            node: self.node.to_string(),
            mac: hex::encode(self.mac(local_static_public, &self.node.0)),
        };
        serde_json::to_vec(&proof).expect("a proof serializes to JSON")
    }

    fn verify_peer(
        &self,
        remote_static_public: &[u8; 32],
        proof: &[u8],
    ) -> Result<NodeId, TrustRefusal> {
        let proof: Proof = serde_json::from_slice(proof)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        let mac = hex::decode(&proof.mac)
            .map_err(|error| TrustRefusal::Malformed(format!("mac: {error}")))?;
        let expected = self.mac(remote_static_public, &proof.node);
        if mac.len() != 32 || !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &mac[..])) {
            return Err(TrustRefusal::NotProven);
        }
        Ok(NodeId(proof.node))
    }

    fn still_trusted(&self, _node: &NodeId) -> bool {
        // The cluster key cannot revoke one node.
        true
    }
}

fn load_or_generate_static_key(data_dir: &Path) -> Result<[u8; 32], PeerError> {
    let path = data_dir.join(STATIC_KEY_FILE);
    let key_error = |reason: String| PeerError::KeyFile {
        path: path.clone(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|error| {
                key_error(format!(
                    "not 64 hex digits ({error}); remove it to have a new key made"
                ))
            })?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| key_error("not 32 bytes; remove it to have a new key made".into()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut private = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut private);
            std::fs::create_dir_all(data_dir).map_err(|e| key_error(e.to_string()))?;
            crate::private_fs::write_new_secret(&path, &hex::encode(private))
                .map_err(|e| key_error(e.to_string()))?;
            tracing::info!(path = %path.display(), "generated this node's peer static key");
            Ok(private)
        }
        Err(error) => Err(key_error(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn trust(node: &str, secret: &str) -> ClusterKeyTrust {
        ClusterKeyTrust::new(
            NodeId(node.into()),
            ClusterKey::from_secret(secret),
            [7; 32],
        )
    }

    #[test]
    fn a_proof_names_its_node_and_binds_its_key() {
        let a = trust("a", "the cluster secret of the tests");
        let b = trust("b", "the cluster secret of the tests");
        let proof = a.handshake_proof(&[1; 32]);
        assert_eq!(b.verify_peer(&[1; 32], &proof), Ok(NodeId("a".into())));
        assert_eq!(
            b.verify_peer(&[2; 32], &proof),
            Err(TrustRefusal::NotProven)
        );
        let claimed = String::from_utf8(proof).unwrap().replace("\"a\"", "\"c\"");
        assert_eq!(
            b.verify_peer(&[1; 32], claimed.as_bytes()),
            Err(TrustRefusal::NotProven)
        );
        let other = trust("b", "another cluster's secret");
        assert_eq!(
            other.verify_peer(&[1; 32], &a.handshake_proof(&[1; 32])),
            Err(TrustRefusal::NotProven)
        );
        assert!(matches!(
            b.verify_peer(&[1; 32], b"garbage"),
            Err(TrustRefusal::Malformed(_))
        ));
    }

    #[test]
    fn the_static_key_is_made_once_readable_by_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = ClusterKey::from_secret("the cluster secret of the tests");
        let first = ClusterKeyTrust::load(NodeId("a".into()), key.clone(), dir.path()).unwrap();
        let second = ClusterKeyTrust::load(NodeId("a".into()), key, dir.path()).unwrap();
        assert_eq!(first.static_private_key(), second.static_private_key());
        let mode = std::fs::metadata(dir.path().join(STATIC_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
