//! The seam between peer sessions and cluster membership: what a Noise session asks of
//! the node's identity. Implemented by node certificates in `cluster::peer_trust`.

use crate::domain::NodeId;

pub use crate::cluster::TrustRefusal;

pub trait SessionTrust: Send + Sync + 'static {
    fn node_id(&self) -> NodeId;
    /// X25519 Noise static key.
    fn static_private_key(&self) -> [u8; 32];
    fn handshake_proof(&self, local_static_public: &[u8; 32]) -> Vec<u8>;
    fn verify_peer(
        &self,
        remote_static_public: &[u8; 32],
        proof: &[u8],
    ) -> Result<NodeId, TrustRefusal>;
    /// Revocation, checked per request.
    fn still_trusted(&self, node: &NodeId) -> bool;
}
