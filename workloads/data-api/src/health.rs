//! Whether the process can still do its job. A store that fails (a full disk, an I/O
//! error) does not heal inside the process — sled keeps answering with the error once
//! its log could not be written — so the process reports itself unhealthy at `/health`
//! and, if no write succeeds within the retry window, stops with an error for its
//! supervisor (the Docker restart policy, the agent) to restart it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::StoreError;

/// How long the store may stay unavailable before the process gives up.
pub const DEFAULT_STORE_RETRY: Duration = Duration::from_secs(30);

/// How often the retry window is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The store's availability as the requests have found it.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Since when the store has failed without a successful write after it, and the
    /// first failure's message.
    failing: Mutex<Option<Failure>>,
}

#[derive(Debug, Clone)]
struct Failure {
    since: Instant,
    error: String,
}

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable { for_: Duration, error: String },
}

impl StoreHealth {
    /// Takes note of a failed store call; refusals (a taken email, consent) are no failures.
    pub fn observe(&self, error: &StoreError) {
        if error.is_unavailable() {
            self.failed(error.to_string());
        }
    }

    pub fn failed(&self, error: String) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failing.is_none() {
            tracing::error!(error = %error, "the store is unavailable");
            *failing = Some(Failure {
                since: Instant::now(),
                error,
            });
        }
    }

    /// A durable write went through: the store is back.
    pub fn wrote(&self) {
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(failure) = failing.take() {
            tracing::info!(
                unavailable_s = failure.since.elapsed().as_secs_f64(),
                "the store is available again"
            );
        }
    }

    pub fn availability(&self) -> Availability {
        let failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match &*failing {
            None => Availability::Available,
            Some(f) => Availability::Unavailable {
                for_: f.since.elapsed(),
                error: f.error.clone(),
            },
        }
    }

    /// Resolves once the store has been unavailable for longer than `retry`, with the
    /// error it first failed with.
    pub async fn given_up(&self, retry: Duration) -> String {
        loop {
            if let Availability::Unavailable { for_, error } = self.availability() {
                if for_ > retry {
                    return error;
                }
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_makes_the_store_unavailable_until_a_write_succeeds() {
        let health = StoreHealth::default();
        health.observe(&StoreError::EmailTaken);
        assert_eq!(health.availability(), Availability::Available);
        health.observe(&StoreError::Database(sled::Error::Io(
            std::io::Error::other("No space left on device"),
        )));
        assert!(matches!(
            health.availability(),
            Availability::Unavailable { error, .. } if error.contains("No space left")
        ));
        health.wrote();
        assert_eq!(health.availability(), Availability::Available);
    }

    #[test]
    fn a_key_vault_or_ledger_that_cannot_be_written_makes_the_store_unavailable() {
        use crate::privacy::{ledger::LedgerError, vault::VaultError};
        let full = || std::io::Error::other("No space left on device");
        let path = std::path::PathBuf::from("/keys/vault");
        let unavailable = [
            StoreError::Vault(VaultError::Io {
                path: path.clone(),
                source: full(),
            }),
            StoreError::Ledger(LedgerError::Io {
                path: path.clone(),
                source: full(),
            }),
        ];
        assert!(unavailable.iter().all(StoreError::is_unavailable));
        // A file of unknown format does not heal by restarting.
        let broken = [
            StoreError::Vault(VaultError::Malformed(path.clone())),
            StoreError::Ledger(LedgerError::Malformed { path, line: 3 }),
        ];
        assert!(!broken.iter().any(StoreError::is_unavailable));
    }

    #[tokio::test]
    async fn the_process_gives_up_only_after_the_retry_window() {
        let health = StoreHealth::default();
        health.failed("disk full".into());
        let retry = Duration::from_millis(800);
        // Slowness can only delay giving up, never bring it forward.
        let early = tokio::time::timeout(Duration::from_millis(300), health.given_up(retry)).await;
        assert!(early.is_err(), "gave up within the retry window");
        let late = tokio::time::timeout(Duration::from_secs(60), health.given_up(retry)).await;
        assert_eq!(late.as_deref(), Ok("disk full"));
    }
}
