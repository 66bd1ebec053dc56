//! The device certificate deny-list as the TLS handshake consults it: a copy in memory of
//! what the store holds, so the handshake never waits for storage. A revocation on this
//! replica is in the copy at once; other replicas take it up at their next refresh.

use std::collections::HashSet;
use std::sync::{PoisonError, RwLock};

use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// How often every replica re-reads the deny-list from the store.
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct DenyList {
    revoked: RwLock<HashSet<[u8; 32]>>,
}

impl DenyList {
    /// Whether the certificate with this DER encoding was revoked.
    pub fn denies(&self, certificate_der: &[u8]) -> bool {
        self.contains(&Sha256::digest(certificate_der).into())
    }

    pub fn contains(&self, fingerprint: &[u8; 32]) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fingerprint)
    }

    pub fn insert(&self, fingerprint: [u8; 32]) {
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fingerprint);
    }

    /// Adds what the store holds now. Revocations are never undone, so the copy only
    /// grows, and a revocation made here while the store was read is not lost.
    pub fn refresh(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let stored = store.revoked_certificates()?;
        let mut revoked = self.revoked.write().unwrap_or_else(PoisonError::into_inner);
        revoked.extend(stored.into_iter().map(|r| r.fingerprint));
        Ok(revoked.len())
    }
}
