//! The household's consent as this device knows it: fetched from the Data API, cached
//! and persisted, so that the last known state holds through outages and restarts.
//! REVOKED is final: once seen it is never replaced.

use std::sync::Mutex;

use crate::store::{Store, StoreError};

/// Consent states (one-way: NOT_GRANTED → GRANTED → REVOKED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentState {
    /// Signed up, not participating yet: measure nothing.
    NotGranted,
    /// Participating: measure and upload.
    Granted,
    /// Left the survey: stop for good; the device is to be returned.
    Revoked,
}

impl std::fmt::Display for ConsentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsentState::NotGranted => "NOT_GRANTED",
            ConsentState::Granted => "GRANTED",
            ConsentState::Revoked => "REVOKED",
        })
    }
}

const KEY: &str = "consent";

/// The cached, persisted consent.
pub struct Consent {
    store: Store,
    state: Mutex<Option<ConsentState>>,
}

impl Consent {
    /// Loads the persisted state.
    pub fn load(store: Store) -> Result<Self, StoreError> {
        let state = store.get_state(KEY)?;
        Ok(Self {
            store,
            state: Mutex::new(state),
        })
    }

    /// The last known state; NOT_GRANTED if the Data API was never reached.
    pub fn current(&self) -> ConsentState {
        self.state
            .lock()
            .map(|s| s.unwrap_or(ConsentState::NotGranted))
            .unwrap_or(ConsentState::NotGranted)
    }

    /// Records a state from the Data API; persisted when it changes. Returns the state
    /// in force afterwards (REVOKED stays REVOKED whatever arrives).
    pub fn update(&self, new: ConsentState) -> Result<ConsentState, StoreError> {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if *guard == Some(ConsentState::Revoked) || *guard == Some(new) {
            return Ok(guard.unwrap_or(new));
        }
        self.store.set_state(KEY, &new)?;
        tracing::info!(consent = %new, "consent changed");
        *guard = Some(new);
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_is_final_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Consent::load(Store::open(dir.path()).unwrap()).unwrap();
            assert_eq!(c.current(), ConsentState::NotGranted);
            c.update(ConsentState::Granted).unwrap();
            c.update(ConsentState::Revoked).unwrap();
            assert_eq!(
                c.update(ConsentState::Granted).unwrap(),
                ConsentState::Revoked
            );
        }
        let c = Consent::load(Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(c.current(), ConsentState::Revoked);
    }
}
