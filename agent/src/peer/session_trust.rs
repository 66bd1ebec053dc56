//! Who this node is to its peers, and whom it believes. The peer layer knows identities
//! only through [`SessionTrust`]: the Noise handshake carries a proof that each side's
//! static key belongs to a node, and every request of a session is checked against
//! the node that proof named.

use super::messages::ErrorCode;
use crate::domain::NodeId;

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

/// Why a peer's handshake proof was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustRefusal {
    /// The proof is not one this node can read.
    #[error("handshake proof is malformed: {0}")]
    Malformed(String),
    /// The proof does not tie the static key to the node it names.
    #[error("handshake proof does not match the static key (another cluster, or forged)")]
    NotProven,
    /// The node is known but not trusted (any more).
    #[error("node {0} is not trusted by this node")]
    Untrusted(NodeId),
}

impl TrustRefusal {
    /// The code a refusal travels with.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthorized
    }
}
