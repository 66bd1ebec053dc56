//! Peer sessions trusted by node certificates ([`crate::peer::SessionTrust`]).
//!
//! The handshake proof binds the session's X25519 static key to the node certificate, as
//! libp2p's Noise handshake does: the certificate, and the node key's signature over a
//! domain-separated copy of the static public key.
//!
//! ```text
//! proof = u16 (big endian) length of cert || cert (DER) || ECDSA P-256 signature (ASN.1)
//!         over "motey peer session static key v1\0" || static public key (32 bytes)
//! ```

use std::sync::Arc;

use rand::RngCore;

use super::{ClusterError, ClusterFiles, Membership, TrustRefusal};
use crate::domain::NodeId;
use crate::peer::SessionTrust;

const DOMAIN: &[u8] = b"motey peer session static key v1\0";

/// Node-certificate trust for peer sessions.
#[derive(Clone)]
pub struct CertifiedSessions {
    membership: Membership,
    static_key: Arc<[u8; 32]>,
}

impl CertifiedSessions {
    /// The membership and this node's session key (made on first use, kept 0600).
    pub fn new(membership: Membership) -> Result<CertifiedSessions, ClusterError> {
        let static_key = load_or_make_static_key(membership.files())?;
        Ok(CertifiedSessions {
            membership,
            static_key: Arc::new(static_key),
        })
    }
}

impl SessionTrust for CertifiedSessions {
    fn node_id(&self) -> NodeId {
        self.membership.node_id()
    }

    fn static_private_key(&self) -> [u8; 32] {
        *self.static_key
    }

    fn handshake_proof(&self, local_static_public: &[u8; 32]) -> Vec<u8> {
        let identity = self.membership.identity();
        let certificate = identity.certificate_der();
        let length = u16::try_from(certificate.len()).expect("a node certificate is small");
        let mut proof = Vec::with_capacity(2 + certificate.len() + 80);
        proof.extend_from_slice(&length.to_be_bytes());
        proof.extend_from_slice(certificate);
        proof.extend_from_slice(&identity.sign(&signed_bytes(local_static_public)));
        proof
    }

    fn verify_peer(
        &self,
        remote_static_public: &[u8; 32],
        proof: &[u8],
    ) -> Result<NodeId, TrustRefusal> {
        let malformed = || TrustRefusal::Malformed("handshake proof is cut".into());
        let (length, rest) = proof.split_at_checked(2).ok_or_else(malformed)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        let (certificate, signature) = rest.split_at_checked(length).ok_or_else(malformed)?;
        let member = self.membership.verify_signed(
            certificate,
            &signed_bytes(remote_static_public),
            signature,
        )?;
        Ok(member.node_id)
    }

    fn still_trusted(&self, node: &NodeId) -> bool {
        self.membership.still_trusted(node)
    }
}

fn signed_bytes(static_public: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, static_public.as_slice()].concat()
}

fn load_or_make_static_key(files: &ClusterFiles) -> Result<[u8; 32], ClusterError> {
    let path = files.session_static_key();
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| ClusterError::Invalid(format!("{}: not 64 hex digits", path.display())))?;
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut key);
    files.write_private(&path, &format!("{}\n", hex::encode(key)))?;
    Ok(key)
}
