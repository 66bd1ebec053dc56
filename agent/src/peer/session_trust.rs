//! Who this node is to its peers, and whom it believes. The peer layer knows identities
//! only through [`SessionTrust`]: the Noise handshake carries a proof that each side's
//! static key belongs to a node, and every request of a session is checked against
//! the node that proof named. Implemented by node certificates in `cluster::peer_trust`,
//! and, for a fog whose nodes have not joined by certificate, by the cluster key
//! (`cluster_key_trust`).

use crate::domain::NodeId;

pub use crate::cluster::TrustRefusal;

/// Who this node is to its peers, and whom it believes: the peer layer's only view of identity.
pub trait SessionTrust: Send + Sync + 'static {
    /// This node's id (what peers see as the authenticated sender).
    fn node_id(&self) -> NodeId;
    /// This node's Noise static private key (X25519).
    fn static_private_key(&self) -> [u8; 32];
    /// Handshake payload proving that `local_static_public` belongs to this node.
    fn handshake_proof(&self, local_static_public: &[u8; 32]) -> Vec<u8>;
    /// Checks a remote handshake payload: Ok(node id) if it proves that
    /// `remote_static_public` belongs to that node and the node is trusted now.
    fn verify_peer(
        &self,
        remote_static_public: &[u8; 32],
        proof: &[u8],
    ) -> Result<NodeId, TrustRefusal>;
    /// Whether a node authenticated earlier is still trusted (revocation): checked per request.
    fn still_trusted(&self, node: &NodeId) -> bool;
}
