//! Replay protection: a receiver believes a message only once, and only while its
//! timestamp is close to the receiver's clock.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use super::{AuthError, Envelope, Received, DEFAULT_REPLAY_WINDOW};

/// What the replay checks need of a message.
pub trait Stamped {
    fn sender(&self) -> &str;
    fn nonce(&self) -> &str;
    /// Unix time in milliseconds when the message was made.
    fn ts(&self) -> i64;
}

impl Stamped for Envelope {
    fn sender(&self) -> &str {
        &self.sender
    }
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

impl Stamped for Received<'_> {
    fn sender(&self) -> &str {
        &self.sender
    }
    fn nonce(&self) -> &str {
        &self.nonce
    }
    fn ts(&self) -> i64 {
        self.ts
    }
}

/// Remembers recently seen nonces so that a captured message cannot be played again, and
/// refuses messages whose timestamp is outside the window (those could otherwise be
/// replayed once the nonce is forgotten).
pub struct ReplayGuard {
    window_ms: i64,
    max_entries: usize,
    /// Keys of the 128-bit fingerprints of `(sender, nonce)`: remembering a fingerprint
    /// instead of the text spares two allocations per message, and with keys drawn at
    /// random no sender can make two messages collide on purpose (by chance: below 2^-90
    /// for a full cache).
    fingerprint_keys: (RandomState, RandomState),
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Fingerprints are keyed hashes already: the set uses them as they are instead of
    /// hashing them again.
    fingerprints: HashSet<u128, BuildHasherDefault<AlreadyHashed>>,
    /// Expiry of each fingerprint, in the order the messages arrived. Timestamps arrive
    /// nearly in order, so the oldest entry is at the front; one that arrived early with
    /// a later expiry holds those behind it a little longer, which costs memory (bounded
    /// by `max_entries`) but never forgets a nonce too early. A priority queue was exact
    /// but walked its whole depth, through cold memory, for every expiry.
    expiries: VecDeque<(i64, u128)>,
}

/// A [`Hasher`] for values that are random already (keyed fingerprints).
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

impl ReplayGuard {
    /// A guard accepting timestamps up to `window` away from the local clock.
    pub fn new(window: Duration) -> ReplayGuard {
        ReplayGuard {
            window_ms: window.as_millis().min(i64::MAX as u128) as i64,
            max_entries: 200_000,
            fingerprint_keys: (RandomState::new(), RandomState::new()),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Checks a (verified) message against the clock and the nonces seen so far, and
    /// remembers its nonce.
    pub fn check(&self, envelope: &impl Stamped, now_ms: i64) -> Result<(), AuthError> {
        self.check_freshness(envelope, now_ms)?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while let Some(&(expiry, fingerprint)) = seen.expiries.front() {
            if expiry >= now_ms {
                break;
            }
            seen.expiries.pop_front();
            seen.fingerprints.remove(&fingerprint);
        }
        let fingerprint = self.fingerprint(envelope.sender(), envelope.nonce());
        if seen.fingerprints.contains(&fingerprint) {
            return Err(AuthError::Replayed);
        }
        if seen.fingerprints.len() >= self.max_entries {
            return Err(AuthError::Overloaded);
        }
        // Past this instant the timestamp check refuses the message anyway.
        let expiry = envelope.ts().saturating_add(self.window_ms);
        seen.fingerprints.insert(fingerprint);
        seen.expiries.push_back((expiry, fingerprint));
        Ok(())
    }

    fn fingerprint(&self, sender: &str, nonce: &str) -> u128 {
        let half = |state: &RandomState| {
            let mut hasher = state.build_hasher();
            hasher.write(sender.as_bytes());
            hasher.write_u8(0);
            hasher.write(nonce.as_bytes());
            hasher.finish()
        };
        let (high, low) = &self.fingerprint_keys;
        u128::from(half(high)) << 64 | u128::from(half(low))
    }

    /// Only the timestamp check (for messages whose nonce need not be remembered).
    pub fn check_freshness(&self, envelope: &impl Stamped, now_ms: i64) -> Result<(), AuthError> {
        let skew_ms = now_ms.saturating_sub(envelope.ts());
        if skew_ms.saturating_abs() > self.window_ms {
            return Err(AuthError::Stale {
                skew_ms,
                window_ms: self.window_ms,
            });
        }
        Ok(())
    }
}

impl Default for ReplayGuard {
    fn default() -> ReplayGuard {
        ReplayGuard::new(DEFAULT_REPLAY_WINDOW)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::envelope::now_ms;

    fn signed() -> Envelope {
        Envelope::new("image_status", "0f0e", "node-a", serde_json::json!({}))
    }

    #[test]
    fn replay_guard_refuses_repeats_and_stale_messages() {
        let guard = ReplayGuard::new(Duration::from_secs(30));
        let envelope = signed();
        let now = envelope.ts;
        guard.check(&envelope, now).unwrap();
        assert_eq!(guard.check(&envelope, now + 5), Err(AuthError::Replayed));
        assert!(matches!(
            guard.check(&envelope, now + 31_000),
            Err(AuthError::Stale { .. })
        ));
        let mut future = signed();
        future.ts = now + 60_000;
        assert!(matches!(
            guard.check(&future, now),
            Err(AuthError::Stale { .. })
        ));
        // Nonces are forgotten once their timestamps are out of the window anyway.
        let mut later = signed();
        later.ts = now + 31_000;
        guard.check(&later, now + 31_000).unwrap();
        assert_eq!(guard.seen.lock().unwrap().fingerprints.len(), 1);
    }
    #[test]
    fn a_message_stamped_ahead_keeps_those_after_it_no_shorter() {
        let guard = ReplayGuard::new(Duration::from_secs(30));
        let now = now_ms();
        let mut ahead = signed();
        ahead.ts = now + 20_000;
        guard.check(&ahead, now).unwrap();
        let on_time = signed();
        guard.check(&on_time, now).unwrap();
        // Past the window of the second message but not of the first: the second is
        // refused as stale, and its nonce, behind the first, is still remembered.
        let later = now + 31_000;
        assert!(matches!(
            guard.check(&on_time, later),
            Err(AuthError::Stale { .. })
        ));
        guard.check(&signed_at(later), later).unwrap();
        assert_eq!(guard.seen.lock().unwrap().fingerprints.len(), 3);
        // Once the first expires, both are forgotten (the third is within its window).
        guard.check(&signed_at(now + 51_000), now + 51_000).unwrap();
        assert_eq!(guard.seen.lock().unwrap().fingerprints.len(), 2);
    }

    fn signed_at(ts: i64) -> Envelope {
        let mut envelope = signed();
        envelope.ts = ts;
        envelope
    }
}
