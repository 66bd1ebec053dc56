//! Storage behind a trait, with sled as the embedded default.
//!
//! Referential rules (unique email, meters and devices owned by exactly one household,
//! measurement uuids unique per meter) are enforced here in the application layer, inside
//! sled transactions so a crash never leaves an index half-written. Every write a client
//! is told about is flushed (fsync) before the method returns.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionResult, TransactionalTree,
};
use sled::Transactional;
use uuid::Uuid;

use crate::model::{ConsentError, DeviceStatus, Household, Measurement, MeasurementData};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("email {0} is already registered for another household")]
    EmailTaken(String),
    #[error("{kind} {uuid} already exists")]
    DuplicateId { kind: &'static str, uuid: Uuid },
    #[error("household {0} does not exist")]
    UnknownHousehold(Uuid),
    #[error("household {0} was changed concurrently")]
    HouseholdChanged(Uuid),
    #[error("{0}")]
    Consent(ConsentError),
    #[error("measurement {uuid} (batch index {index}) is already stored for another meter")]
    MeasurementOfOtherMeter { index: usize, uuid: Uuid },
    #[error("database: {0}")]
    Database(#[from] sled::Error),
    #[error("stored record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// Result of storing one batch of measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Position in a meter's measurement series, for paging: strictly after this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesCursor {
    pub measured_at: DateTime<Utc>,
    pub uuid: Uuid,
}

impl SeriesCursor {
    pub fn encode(&self) -> String {
        hex::encode(series_suffix(self.measured_at, self.uuid))
    }

    pub fn decode(s: &str) -> Option<SeriesCursor> {
        let bytes = hex::decode(s).ok()?;
        if bytes.len() != 24 {
            return None;
        }
        let measured_at = decode_time(bytes[..8].try_into().ok()?)?;
        let uuid = Uuid::from_slice(&bytes[8..]).ok()?;
        Some(SeriesCursor { measured_at, uuid })
    }
}

/// Time range and paging for reading a meter's measurements.
#[derive(Debug, Clone, Copy)]
pub struct SeriesQuery {
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub after: Option<SeriesCursor>,
    pub limit: usize,
}

pub struct SeriesPage {
    pub measurements: Vec<Measurement>,
    pub next: Option<SeriesCursor>,
}

/// The Data API's persistence. Implementations must make every successful mutating call
/// durable before returning.
pub trait Store: Send + Sync + 'static {
    /// Stores a new household with its email, device and meter indexes.
    fn create_household(&self, household: &Household) -> Result<(), StoreError>;
    fn household(&self, id: Uuid) -> Result<Option<Household>, StoreError>;
    fn households(&self) -> Result<Vec<Household>, StoreError>;
    fn household_by_email(&self, email: &str) -> Result<Option<Uuid>, StoreError>;
    /// Replaces `expected` by `new` in one transaction, keeping the email index in step
    /// (a removed user frees the email). Fails with `HouseholdChanged` if the stored
    /// household is no longer `expected`, so callers can re-read and retry.
    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError>;
    /// The household a client certificate (by SHA-256 fingerprint) was last seen for.
    fn certificate_binding(&self, fingerprint: &[u8; 32]) -> Result<Option<Uuid>, StoreError>;
    fn bind_certificate(&self, fingerprint: &[u8; 32], household: Uuid) -> Result<(), StoreError>;
    fn device_status(&self, device: Uuid) -> Result<DeviceStatus, StoreError>;
    /// Health bookkeeping; not flushed on its own (it rides on the next flush).
    fn record_device_activity(
        &self,
        device: Uuid,
        at: DateTime<Utc>,
        component_versions: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError>;
    /// Stores a batch atomically, provided the household's consent is granted at commit
    /// time. A uuid already stored for the same meter is a duplicate, not an error.
    fn ingest(&self, household: Uuid, batch: &[Measurement]) -> Result<IngestOutcome, StoreError>;
    fn series(&self, meter: Uuid, query: &SeriesQuery) -> Result<SeriesPage, StoreError>;
    fn last_measurement(&self, meter: Uuid) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Visits measurements in (meter, time) order; `meter = None` visits every meter.
    fn scan_measurements(
        &self,
        meter: Option<Uuid>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(Measurement) -> ControlFlow<()>,
    ) -> Result<(), StoreError>;
    fn flush(&self) -> Result<(), StoreError>;
}

/// sled-backed store. Trees:
/// - `households`: household uuid → household JSON
/// - `emails`: lowercase email → household uuid
/// - `meters`, `devices`: uuid → household uuid
/// - `device_status`: device uuid → status JSON
/// - `measurements`: meter ‖ time ‖ measurement uuid → data JSON
/// - `measurement_ids`: measurement uuid → meter ‖ time (idempotency index)
/// - `certificates`: SHA-256 of a device certificate → household uuid
pub struct SledStore {
    db: sled::Db,
    households: sled::Tree,
    emails: sled::Tree,
    meters: sled::Tree,
    devices: sled::Tree,
    device_status: sled::Tree,
    measurements: sled::Tree,
    measurement_ids: sled::Tree,
    certificates: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .open()?;
        Ok(SledStore {
            households: db.open_tree("households")?,
            emails: db.open_tree("emails")?,
            meters: db.open_tree("meters")?,
            devices: db.open_tree("devices")?,
            device_status: db.open_tree("device_status")?,
            measurements: db.open_tree("measurements")?,
            measurement_ids: db.open_tree("measurement_ids")?,
            certificates: db.open_tree("certificates")?,
            db,
        })
    }
}

/// Big-endian, sign-flipped microseconds so byte order is time order.
fn encode_time(at: DateTime<Utc>) -> [u8; 8] {
    ((at.timestamp_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode_time(bytes: [u8; 8]) -> Option<DateTime<Utc>> {
    let micros = (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64;
    Utc.timestamp_micros(micros).single()
}

fn series_suffix(at: DateTime<Utc>, uuid: Uuid) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&encode_time(at));
    out[8..].copy_from_slice(uuid.as_bytes());
    out
}

fn measurement_key(meter: Uuid, at: DateTime<Utc>, uuid: Uuid) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..16].copy_from_slice(meter.as_bytes());
    key[16..].copy_from_slice(&series_suffix(at, uuid));
    key
}

fn decode_measurement(key: &[u8], value: &[u8]) -> Result<Measurement, StoreError> {
    let corrupt = || {
        StoreError::Corrupt(serde::de::Error::custom(format!(
            "measurement key of {} bytes",
            key.len()
        )))
    };
    if key.len() != 40 {
        return Err(corrupt());
    }
    let meter = Uuid::from_slice(&key[..16]).map_err(|_| corrupt())?;
    let measured_at =
        decode_time(key[16..24].try_into().map_err(|_| corrupt())?).ok_or_else(corrupt)?;
    let uuid = Uuid::from_slice(&key[24..]).map_err(|_| corrupt())?;
    let data: MeasurementData = serde_json::from_slice(value)?;
    Ok(Measurement {
        uuid,
        meter,
        measured_at,
        data,
    })
}

fn time_bound(meter: Uuid, at: Option<DateTime<Utc>>, open_end: u8) -> Vec<u8> {
    let mut key = meter.as_bytes().to_vec();
    match at {
        Some(at) => key.extend_from_slice(&encode_time(at)),
        None => key.extend_from_slice(&[open_end; 8]),
    }
    key
}

fn uuid_value(value: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(value).map_err(|e| StoreError::Corrupt(serde::de::Error::custom(e)))
}

fn abort<T>(e: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(e))
}

fn json_abort(e: serde_json::Error) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Corrupt(e))
}

fn unwrap_tx<T>(result: TransactionResult<T, StoreError>) -> Result<T, StoreError> {
    result.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Database(e),
    })
}

fn email_key(email: &str) -> Vec<u8> {
    email.to_lowercase().into_bytes()
}

fn tx_household(
    households: &TransactionalTree,
    id: Uuid,
) -> Result<Household, ConflictableTransactionError<StoreError>> {
    match households.get(id.as_bytes())? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(json_abort),
        None => abort(StoreError::UnknownHousehold(id)),
    }
}

impl Store for SledStore {
    fn create_household(&self, household: &Household) -> Result<(), StoreError> {
        let value = serde_json::to_vec(household)?;
        let id = household.id;
        unwrap_tx(
            (&self.households, &self.emails, &self.meters, &self.devices).transaction(
                |(households, emails, meters, devices)| {
                    if households.get(id.as_bytes())?.is_some() {
                        return abort(StoreError::DuplicateId {
                            kind: "household",
                            uuid: id,
                        });
                    }
                    if let Some(email) = household.email() {
                        if emails.insert(email_key(email), id.as_bytes())?.is_some() {
                            return abort(StoreError::EmailTaken(email.to_owned()));
                        }
                    }
                    for device in &household.measurement_devices {
                        if devices
                            .insert(device.uuid.as_bytes(), id.as_bytes())?
                            .is_some()
                        {
                            return abort(StoreError::DuplicateId {
                                kind: "measurement device",
                                uuid: device.uuid,
                            });
                        }
                    }
                    for meter in &household.meters {
                        if meters
                            .insert(meter.uuid.as_bytes(), id.as_bytes())?
                            .is_some()
                        {
                            return abort(StoreError::DuplicateId {
                                kind: "meter",
                                uuid: meter.uuid,
                            });
                        }
                    }
                    households.insert(id.as_bytes(), value.as_slice())?;
                    Ok(())
                },
            ),
        )?;
        self.flush()
    }

    fn household(&self, id: Uuid) -> Result<Option<Household>, StoreError> {
        match self.households.get(id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn households(&self) -> Result<Vec<Household>, StoreError> {
        self.households
            .iter()
            .map(|entry| {
                let (_, value) = entry?;
                Ok(serde_json::from_slice(&value)?)
            })
            .collect()
    }

    fn household_by_email(&self, email: &str) -> Result<Option<Uuid>, StoreError> {
        self.emails
            .get(email_key(email))?
            .map(|v| uuid_value(&v))
            .transpose()
    }

    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError> {
        let id = expected.id;
        let value = serde_json::to_vec(new)?;
        unwrap_tx(
            (&self.households, &self.emails).transaction(|(households, emails)| {
                let current = tx_household(households, id)?;
                if &current != expected {
                    return abort(StoreError::HouseholdChanged(id));
                }
                let old_email = expected.email().map(email_key);
                let new_email = new.email().map(email_key);
                if old_email != new_email {
                    if let Some(old) = &old_email {
                        emails.remove(old.as_slice())?;
                    }
                    if let Some(new_key) = &new_email {
                        if emails.insert(new_key.as_slice(), id.as_bytes())?.is_some() {
                            return abort(StoreError::EmailTaken(
                                new.email().unwrap_or_default().to_owned(),
                            ));
                        }
                    }
                }
                households.insert(id.as_bytes(), value.as_slice())?;
                Ok(())
            }),
        )?;
        self.flush()
    }

    fn certificate_binding(&self, fingerprint: &[u8; 32]) -> Result<Option<Uuid>, StoreError> {
        self.certificates
            .get(fingerprint)?
            .map(|v| uuid_value(&v))
            .transpose()
    }

    fn bind_certificate(&self, fingerprint: &[u8; 32], household: Uuid) -> Result<(), StoreError> {
        // First binding wins: a certificate stays with the household it was first used for.
        let _ = self.certificates.compare_and_swap(
            fingerprint,
            None as Option<&[u8]>,
            Some(household.as_bytes()),
        )?;
        Ok(())
    }

    fn device_status(&self, device: Uuid) -> Result<DeviceStatus, StoreError> {
        match self.device_status.get(device.as_bytes())? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
            None => Ok(DeviceStatus::default()),
        }
    }

    fn record_device_activity(
        &self,
        device: Uuid,
        at: DateTime<Utc>,
        component_versions: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        let mut failure = None;
        self.device_status
            .fetch_and_update(device.as_bytes(), |old| {
                let mut status: DeviceStatus = old
                    .and_then(|bytes| serde_json::from_slice(bytes).ok())
                    .unwrap_or_default();
                if status.last_activity.is_none_or(|last| last < at) {
                    status.last_activity = Some(at);
                }
                if let Some(versions) = component_versions {
                    status.component_versions = versions.clone();
                }
                match serde_json::to_vec(&status) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        failure = Some(e);
                        old.map(|o| o.to_vec())
                    }
                }
            })?;
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn ingest(&self, household: Uuid, batch: &[Measurement]) -> Result<IngestOutcome, StoreError> {
        let encoded: Vec<([u8; 40], Vec<u8>)> = batch
            .iter()
            .map(|m| {
                Ok((
                    measurement_key(m.meter, m.measured_at, m.uuid),
                    serde_json::to_vec(&m.data)?,
                ))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        let outcome = unwrap_tx(
            (&self.households, &self.measurements, &self.measurement_ids).transaction(
                |(households, measurements, ids)| {
                    // Read inside the transaction so a concurrent revocation either
                    // precedes this batch (and refuses it) or follows it.
                    let current = tx_household(households, household)?;
                    if let Err(e) = current.consent.accepts_measurements() {
                        return abort(StoreError::Consent(e));
                    }
                    let mut outcome = IngestOutcome::default();
                    for (index, (m, (key, value))) in batch.iter().zip(&encoded).enumerate() {
                        if let Some(existing) = ids.get(m.uuid.as_bytes())? {
                            if existing.get(..16) == Some(m.meter.as_bytes().as_slice()) {
                                outcome.duplicates += 1;
                                continue;
                            }
                            return abort(StoreError::MeasurementOfOtherMeter {
                                index,
                                uuid: m.uuid,
                            });
                        }
                        ids.insert(m.uuid.as_bytes(), &key[..24])?;
                        measurements.insert(key.as_slice(), value.as_slice())?;
                        outcome.accepted += 1;
                    }
                    Ok(outcome)
                },
            ),
        )?;
        if outcome.accepted > 0 {
            self.flush()?;
        }
        Ok(outcome)
    }

    fn series(&self, meter: Uuid, query: &SeriesQuery) -> Result<SeriesPage, StoreError> {
        let mut start = time_bound(meter, query.from, 0x00);
        if let Some(after) = query.after {
            let mut after_key = meter.as_bytes().to_vec();
            after_key.extend_from_slice(&series_suffix(after.measured_at, after.uuid));
            // The smallest key strictly greater than the cursor's key.
            after_key.push(0);
            if after_key > start {
                start = after_key;
            }
        }
        let end = time_bound(meter, query.to, 0xff);
        let mut measurements = Vec::with_capacity(query.limit.min(1024));
        let mut next = None;
        if start < end {
            for entry in self.measurements.range(start..end) {
                let (key, value) = entry?;
                let m = decode_measurement(&key, &value)?;
                if measurements.len() == query.limit {
                    let last: &Measurement = measurements.last().expect("limit is positive");
                    next = Some(SeriesCursor {
                        measured_at: last.measured_at,
                        uuid: last.uuid,
                    });
                    break;
                }
                measurements.push(m);
            }
        }
        Ok(SeriesPage { measurements, next })
    }

    fn last_measurement(&self, meter: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.measurements.scan_prefix(meter.as_bytes()).next_back() {
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key
                    .get(16..24)
                    .and_then(|b| b.try_into().ok())
                    .and_then(decode_time))
            }
            None => Ok(None),
        }
    }

    fn scan_measurements(
        &self,
        meter: Option<Uuid>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(Measurement) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let iter = match meter {
            Some(meter) => {
                let (start, end) = (time_bound(meter, from, 0x00), time_bound(meter, to, 0xff));
                if start >= end {
                    return Ok(());
                }
                self.measurements.range(start..end)
            }
            None => self.measurements.iter(),
        };
        for entry in iter {
            let (key, value) = entry?;
            let m = decode_measurement(&key, &value)?;
            if meter.is_none()
                && (from.is_some_and(|from| m.measured_at < from)
                    || to.is_some_and(|to| m.measured_at >= to))
            {
                continue;
            }
            if visit(m).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn household(email: &str) -> Household {
        let device = Uuid::new_v4();
        Household {
            id: Uuid::new_v4(),
            user: Some(User {
                name: "Erika Mustermann".into(),
                email: email.into(),
            }),
            metadata: None,
            address: None,
            location: None,
            consent: Consent::default(),
            measurement_devices: vec![MeasurementDevice {
                uuid: device,
                name: None,
                scopes: all_scopes(),
            }],
            meters: vec![Meter {
                uuid: Uuid::new_v4(),
                meter_type: MeterType::Electricity,
                model: MeterModel::MT681,
                measurement_device: device,
            }],
            pv_systems: vec![],
            created_at: Utc::now(),
            updated_at: Utc::now(),
            anonymized_at: None,
        }
    }

    fn measurement(meter: Uuid, at: &str) -> Measurement {
        Measurement {
            uuid: Uuid::new_v4(),
            meter,
            measured_at: at.parse().unwrap(),
            data: MeasurementData(vec![("0100010800ff".parse().unwrap(), 1.5)]),
        }
    }

    #[test]
    fn time_keys_sort_like_time() {
        let times = [
            "1960-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            "2026-11-23T10:15:00Z",
        ];
        let keys: Vec<_> = times
            .iter()
            .map(|t| encode_time(t.parse().unwrap()))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (t, k) in times.iter().zip(keys) {
            assert_eq!(decode_time(k).unwrap(), t.parse::<DateTime<Utc>>().unwrap());
        }
    }

    #[test]
    fn ingest_is_idempotent_and_needs_consent() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let mut h = household("a@example.org");
        store.create_household(&h).unwrap();
        let meter = h.meters[0].uuid;
        let batch = vec![
            measurement(meter, "2026-11-23T10:15:00Z"),
            measurement(meter, "2026-11-23T10:30:00Z"),
        ];
        assert!(matches!(
            store.ingest(h.id, &batch),
            Err(StoreError::Consent(ConsentError::NotGranted))
        ));
        let old = h.clone();
        h.consent.grant(Utc::now()).unwrap();
        store.replace_household(&old, &h).unwrap();
        assert_eq!(
            store.ingest(h.id, &batch).unwrap(),
            IngestOutcome {
                accepted: 2,
                duplicates: 0
            }
        );
        assert_eq!(
            store.ingest(h.id, &batch).unwrap(),
            IngestOutcome {
                accepted: 0,
                duplicates: 2
            }
        );
        let page = store
            .series(
                meter,
                &SeriesQuery {
                    from: None,
                    to: None,
                    after: None,
                    limit: 1,
                },
            )
            .unwrap();
        assert_eq!(page.measurements, batch[..1]);
        let page = store
            .series(
                meter,
                &SeriesQuery {
                    from: None,
                    to: None,
                    after: page.next,
                    limit: 10,
                },
            )
            .unwrap();
        assert_eq!(page.measurements, batch[1..]);
        assert!(page.next.is_none());
        assert_eq!(
            store.last_measurement(meter).unwrap(),
            Some(batch[1].measured_at)
        );
    }

    #[test]
    fn email_is_unique_and_freed_on_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 16 << 20).unwrap();
        let h = household("a@example.org");
        store.create_household(&h).unwrap();
        assert!(matches!(
            store.create_household(&household("A@example.org")),
            Err(StoreError::EmailTaken(_))
        ));
        let mut anonymized = h.clone();
        anonymized.user = None;
        store.replace_household(&h, &anonymized).unwrap();
        assert_eq!(store.household_by_email("a@example.org").unwrap(), None);
        assert!(matches!(
            store.replace_household(&h, &anonymized),
            Err(StoreError::HouseholdChanged(_))
        ));
        store.create_household(&household("a@example.org")).unwrap();
    }
}
