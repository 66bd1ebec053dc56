//! Cluster membership by node certificates: a cluster CA on one node, join tokens, the
//! certificate naming each node's id, the CA-signed revocation list, and the proofs a node
//! gives of being itself (signed discovery announcements, the peer session proof). Both
//! `discovery/` and `peer/` depend on this module, not on each other.
//!
//! | file in `<data_dir>/cluster/` | on | what |
//! |---|---|---|
//! | `ca.pem` | every node | the cluster CA's certificate (its SHA-256 is in every join token) |
//! | `ca-key.pem` | the CA node | the CA's key (0600) |
//! | `node.pem`, `node-key.pem` | every node | this node's certificate and key (0600); the key never leaves the node |
//! | `revocations.pem` | every node | the latest CA-signed revocation list (X.509 CRL) |
//! | `tokens.json` | the CA node | join tokens, their secrets only as SHA-256 (0600) |
//! | `ledger.json` | the CA node | the certificates issued per node id, and the revoked ids |
//! | `session-static.key` | every node | the X25519 static key of peer sessions (0600) |
//! | `ca-server` | joined nodes | `HOST:PORT` of the CA node's REST API, for renewal |
//!
//! Everything is standard X.509 made by `rcgen` and read by `x509-parser`, signatures are
//! ECDSA P-256 (`ring`); nothing here is a construction of its own.

mod authority;
mod files;
mod identity;
pub mod join;
mod membership;
pub mod peer_trust;
mod refusal;
pub mod renewal;
mod revocation;
pub mod signed;
pub mod token;

pub use authority::{ClusterAuthority, IssuedCertificate};
pub use files::ClusterFiles;
pub use identity::NodeIdentity;
pub use membership::{Member, Membership};
pub use refusal::TrustRefusal;
pub use revocation::RevocationList;

use std::path::PathBuf;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("this node holds no cluster CA ({0} is missing); run `motey cluster init` on the first node")]
    NotAnAuthority(PathBuf),
    #[error("this node already holds a cluster CA ({0}); see OPERATIONS.md to rotate it")]
    AlreadyInitialized(PathBuf),
    #[error("this node is no member of a cluster ({0} is missing); run `motey join` or `motey cluster init`")]
    NotJoined(PathBuf),
    #[error("node {0} is revoked; it cannot be given a certificate again under this CA")]
    NodeRevoked(String),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Refused(#[from] TrustRefusal),
}

/// Longest a node id may be, and its characters (as discovery accepts them).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Unix seconds now.
pub(crate) fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests;
