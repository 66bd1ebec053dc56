//! Crypto-shredding above the stores: [`SealedStore`] wraps any [`Store`] and hands it
//! households whose personal part (user, address, exact location) is sealed under the
//! household's own key, with a keyed digest in place of the email for the uniqueness
//! index. Revocation destroys the key, so every copy of the old personal part — old
//! versions inside the database files, backups, replicas — becomes unreadable at once.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::crypto;
use super::ledger::{Revocation, RevocationLedger};
use super::vault::KeyVault;
use crate::anonymize::anonymize_household;
use crate::model::{
    Address, ConsentState, DeviceStatus, Household, Location, Measurement, SealedPersonal, User,
};
use crate::nuts::NutsIndex;
use crate::store::{IngestOutcome, RevokedCertificate, SeriesPage, SeriesQuery, Store, StoreError};

/// What sealing hides.
#[derive(Serialize, Deserialize)]
struct PersonalPart {
    user: Option<User>,
    address: Option<Address>,
    location: Option<Location>,
}

pub struct SealedStore<S> {
    inner: S,
    vault: Arc<dyn KeyVault>,
    ledger: RevocationLedger,
}

impl<S: Store> SealedStore<S> {
    pub fn new(inner: S, vault: Arc<dyn KeyVault>, ledger: RevocationLedger) -> SealedStore<S> {
        SealedStore {
            inner,
            vault,
            ledger,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The stored form: anonymized households have no personal part and pass unchanged.
    fn seal(&self, household: &Household) -> Result<Household, StoreError> {
        if household.anonymized_at.is_some() {
            return Ok(Household {
                sealed: None,
                ..household.clone()
            });
        }
        let key = match self.vault.household_key(household.id)? {
            Some(key) => key,
            None => self.vault.create_household_key(household.id)?,
        };
        let personal = PersonalPart {
            user: household.user.clone(),
            address: household.address.clone(),
            location: household.location,
        };
        let ciphertext = crypto::seal(&key, household.id, &serde_json::to_vec(&personal)?)?;
        Ok(Household {
            user: None,
            address: None,
            location: None,
            sealed: Some(SealedPersonal {
                email_index: household
                    .email()
                    .map(|email| crypto::email_index(self.vault.server_secret(), email)),
                ciphertext,
            }),
            ..household.clone()
        })
    }

    /// The household as the API works with it. A sealed part whose key was destroyed
    /// (a restored backup not yet re-anonymized) opens as no personal part at all.
    fn open(&self, stored: Household) -> Result<Household, StoreError> {
        let Some(sealed) = &stored.sealed else {
            return Ok(stored);
        };
        let personal = match self.vault.household_key(stored.id)? {
            Some(key) => {
                let plaintext = crypto::open(&key, stored.id, &sealed.ciphertext)?;
                serde_json::from_slice(&plaintext)?
            }
            None => PersonalPart {
                user: None,
                address: None,
                location: None,
            },
        };
        Ok(Household {
            user: personal.user,
            address: personal.address,
            location: personal.location,
            sealed: None,
            ..stored
        })
    }

    /// Writes `next` over the stored `current` and, when that anonymizes the household,
    /// records the revocation in the ledger and destroys the household's key.
    fn write_over(&self, current: &Household, next: &Household) -> Result<(), StoreError> {
        let sealed = self.seal(next)?;
        self.inner.replace_household(current, &sealed)?;
        if current.anonymized_at.is_none() {
            if let Some(at) = next.anonymized_at {
                let at = next.consent.revoked_at.unwrap_or(at);
                self.ledger.record(Revocation {
                    household: next.id,
                    at,
                })?;
                self.vault.destroy_household_key(next.id)?;
            }
        }
        Ok(())
    }

    /// Seals the households a database from before sealing holds in clear, moving their
    /// email index entries to the digest; returns how many. Runs before the server
    /// answers, so every lookup by email finds them.
    pub fn seal_households_in_clear(&self) -> Result<usize, StoreError> {
        let mut sealed = 0;
        for stored in self.inner.households()? {
            if stored.sealed.is_none() && stored.anonymized_at.is_none() {
                self.inner
                    .replace_household(&stored, &self.seal(&stored)?)?;
                sealed += 1;
            }
        }
        Ok(sealed)
    }

    /// Applies every revocation of the ledger again: a household the ledger names that
    /// the database holds unanonymized (a backup from before the revocation was
    /// restored) is anonymized once more, and no anonymized household keeps a key. Runs
    /// before the server answers; returns how many households were anonymized again.
    pub fn reapply_revocations<R: Rng + ?Sized>(
        &self,
        nuts: &NutsIndex,
        rng: &mut R,
    ) -> Result<usize, StoreError> {
        let mut again = 0;
        for revocation in self.ledger.revocations()? {
            let Some(stored) = self.inner.household(revocation.household)? else {
                continue;
            };
            if stored.anonymized_at.is_none() {
                let mut household = self.open(stored.clone())?;
                household.consent.state = ConsentState::Revoked;
                household.consent.revoked_at = Some(revocation.at);
                let bounds = nuts.bounds_for(household.location).bounds;
                anonymize_household(&mut household, bounds, rng, revocation.at);
                self.inner
                    .replace_household(&stored, &self.seal(&household)?)?;
                tracing::warn!(
                    household = %revocation.household,
                    revoked_at = %revocation.at,
                    "revoked household found unanonymized (restored backup?): anonymized again"
                );
                again += 1;
            }
            self.vault.destroy_household_key(revocation.household)?;
        }
        for stored in self.inner.households()? {
            if stored.anonymized_at.is_some() {
                self.vault.destroy_household_key(stored.id)?;
            }
        }
        Ok(again)
    }
}

impl<S: Store> Store for SealedStore<S> {
    fn create_household(&self, household: &Household) -> Result<(), StoreError> {
        let sealed = self.seal(household)?;
        let created = self.inner.create_household(&sealed);
        if created.is_err() && household.anonymized_at.is_none() {
            // A refused household keeps no key; a duplicate id must not lose the other's.
            if !matches!(
                created,
                Err(StoreError::DuplicateId {
                    kind: "household",
                    ..
                })
            ) {
                self.vault.destroy_household_key(household.id)?;
            }
        }
        created
    }

    fn household(&self, id: Uuid) -> Result<Option<Household>, StoreError> {
        self.inner
            .household(id)?
            .map(|stored| self.open(stored))
            .transpose()
    }

    fn households(&self) -> Result<Vec<Household>, StoreError> {
        self.inner
            .households()?
            .into_iter()
            .map(|stored| self.open(stored))
            .collect()
    }

    fn household_by_email(&self, email: &str) -> Result<Option<Uuid>, StoreError> {
        self.inner
            .household_by_email(&crypto::email_index(self.vault.server_secret(), email))
    }

    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError> {
        let current = self
            .inner
            .household(expected.id)?
            .ok_or(StoreError::UnknownHousehold(expected.id))?;
        // Sealing is randomized, so the comparison is of the opened form; the inner store
        // then compares the stored form, which keeps the update optimistic end to end.
        if &self.open(current.clone())? != expected {
            return Err(StoreError::HouseholdChanged(expected.id));
        }
        self.write_over(&current, new)
    }

    fn certificate_binding(&self, fingerprint: &[u8; 32]) -> Result<Option<Uuid>, StoreError> {
        self.inner.certificate_binding(fingerprint)
    }

    fn bind_certificate(&self, fingerprint: &[u8; 32], household: Uuid) -> Result<(), StoreError> {
        self.inner.bind_certificate(fingerprint, household)
    }

    fn revoke_certificate(
        &self,
        fingerprint: &[u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.revoke_certificate(fingerprint, at)
    }

    fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        self.inner.revoked_certificates()
    }

    fn device_status(&self, device: Uuid) -> Result<DeviceStatus, StoreError> {
        self.inner.device_status(device)
    }

    fn record_device_activity(
        &self,
        device: Uuid,
        at: DateTime<Utc>,
        component_versions: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        self.inner
            .record_device_activity(device, at, component_versions)
    }

    fn ingest(&self, household: Uuid, batch: &[Measurement]) -> Result<IngestOutcome, StoreError> {
        self.inner.ingest(household, batch)
    }

    fn series(&self, meter: Uuid, query: &SeriesQuery) -> Result<SeriesPage, StoreError> {
        self.inner.series(meter, query)
    }

    fn last_measurement(&self, meter: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.inner.last_measurement(meter)
    }

    fn scan_measurements(
        &self,
        meter: Option<Uuid>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(Measurement) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.inner.scan_measurements(meter, from, to, visit)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{all_scopes, Consent, MeasurementDevice};
    use crate::privacy::FileKeyVault;
    use crate::store::SledStore;

    fn household(email: &str) -> Household {
        Household {
            id: Uuid::new_v4(),
            user: Some(User {
                name: "Erika Mustermann".into(),
                email: email.into(),
            }),
            metadata: None,
            address: None,
            location: Some(Location {
                latitude: 51.3397,
                longitude: 12.3731,
            }),
            consent: Consent::default(),
            measurement_devices: vec![MeasurementDevice {
                uuid: Uuid::new_v4(),
                name: None,
                scopes: all_scopes(),
            }],
            meters: vec![],
            pv_systems: vec![],
            created_at: Utc::now(),
            updated_at: Utc::now(),
            anonymized_at: None,
            sealed: None,
        }
    }

    fn sealed_store(dir: &std::path::Path) -> SealedStore<SledStore> {
        SealedStore::new(
            SledStore::open(&dir.join("db"), 8 << 20).unwrap(),
            Arc::new(FileKeyVault::open(&dir.join("keys")).unwrap()),
            RevocationLedger::open(&dir.join("ledger")).unwrap(),
        )
    }

    #[test]
    fn the_inner_store_sees_only_ciphertext_and_a_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(dir.path());
        let h = household("Erika@Example.org");
        store.create_household(&h).unwrap();
        assert_eq!(store.household(h.id).unwrap().unwrap(), h);
        assert_eq!(
            store.household_by_email("erika@example.org").unwrap(),
            Some(h.id)
        );
        let stored = store.inner().household(h.id).unwrap().unwrap();
        assert!(stored.user.is_none() && stored.location.is_none());
        let raw = serde_json::to_string(&stored).unwrap();
        assert!(!raw.contains("Mustermann") && !raw.to_lowercase().contains("erika"));
        assert!(store
            .inner()
            .household_by_email("erika@example.org")
            .unwrap()
            .is_none());
        assert!(matches!(
            store.create_household(&household("ERIKA@example.org")),
            Err(StoreError::EmailTaken)
        ));
        // Optimistic updates compare what the caller read, not the randomized sealing.
        let mut changed = h.clone();
        changed.user.as_mut().unwrap().name = "Erika Musterfrau".into();
        store.replace_household(&h, &changed).unwrap();
        assert!(matches!(
            store.replace_household(&h, &changed),
            Err(StoreError::HouseholdChanged(_))
        ));
    }

    #[test]
    fn households_stored_in_clear_are_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(dir.path());
        let h = household("old@example.org");
        store.inner().create_household(&h).unwrap();
        assert_eq!(store.household_by_email("old@example.org").unwrap(), None);
        assert_eq!(store.seal_households_in_clear().unwrap(), 1);
        assert_eq!(store.seal_households_in_clear().unwrap(), 0);
        assert_eq!(
            store.household_by_email("old@example.org").unwrap(),
            Some(h.id)
        );
        assert!(store
            .inner()
            .household(h.id)
            .unwrap()
            .unwrap()
            .user
            .is_none());
        assert_eq!(store.household(h.id).unwrap().unwrap(), h);
    }
}
