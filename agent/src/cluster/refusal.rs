//! Why a node's certificate or proof is not believed.

/// Why a presented certificate or proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustRefusal {
    #[error("malformed certificate or proof: {0}")]
    Malformed(String),
    #[error("certificate not issued by this cluster's CA")]
    UnknownIssuer,
    #[error("certificate of node {node} expired at unix time {not_after}")]
    Expired { node: String, not_after: i64 },
    #[error("certificate of node {node} is not valid before unix time {not_before}")]
    NotYetValid { node: String, not_before: i64 },
    #[error("node {node} is revoked")]
    Revoked { node: String },
    #[error("signature does not match the certificate's key")]
    BadSignature,
    /// A session proof made with another cluster key (or forged).
    #[error("handshake proof does not match the static key (another cluster, or forged)")]
    NotProven,
    #[error("certificate names no node (a CA or a server certificate)")]
    NotANode,
    #[error("node {claimed} speaks with the certificate of node {certified}")]
    WrongNode { claimed: String, certified: String },
}
