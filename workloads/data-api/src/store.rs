//! Storage behind a trait, with sled as the embedded default and PostgreSQL
//! ([`postgres::PgStore`]) for a survey served by several replicas.
//!
//! Referential rules (unique email, meters and devices owned by exactly one household,
//! measurement uuids unique per meter) are enforced here in the application layer, with
//! writes that are atomic (sled transactions for households, one batch per measurement
//! upload) so a crash never leaves an index half-written. Every write a client is told
//! about is flushed (fsync) before the method returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use chrono::{DateTime, TimeZone, Utc};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionResult, TransactionalTree,
};
use sled::Transactional;
use uuid::Uuid;

use crate::model::{ConsentError, DeviceStatus, Household, Measurement, MeasurementData, ObisCode};

pub mod postgres;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Carries no email: the error reaches logs, and the stores only know the index key.
    #[error("the email is already registered for another household")]
    EmailTaken,
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
    #[error("PostgreSQL: {0}")]
    Postgres(::postgres::Error),
    #[error("no PostgreSQL connection: {0}")]
    NoConnection(String),
    #[error("database TLS: {0}")]
    TlsSetup(String),
    #[error(
        "the database schema is version {database}, newer than the {known} this program knows"
    )]
    SchemaTooNew { database: i32, known: i32 },
    #[error(transparent)]
    Vault(#[from] crate::privacy::vault::VaultError),
    #[error(transparent)]
    Sealing(#[from] crate::privacy::crypto::SealError),
    #[error(transparent)]
    Ledger(#[from] crate::privacy::ledger::LedgerError),
}

impl StoreError {
    /// Whether the backend cannot serve right now (I/O error, lost connection, full disk,
    /// a key vault or revocation ledger that cannot be read or written), as opposed to a
    /// refused or malformed request: the process is then unhealthy.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(_) | StoreError::NoConnection(_) => true,
            StoreError::Postgres(e) => postgres::is_unavailable(e),
            StoreError::Vault(e) => e.is_unavailable(),
            StoreError::Ledger(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// Result of storing one batch of measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

/// An entry of the device certificate deny-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// SHA-256 of the certificate's DER encoding.
    pub fingerprint: [u8; 32],
    pub revoked_at: DateTime<Utc>,
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
    /// The household whose [`Household::email_index_key`] is exactly `key`. Under
    /// [`crate::privacy::SealedStore`] callers pass the key of the email itself and the
    /// sealed store looks up its keyed digest.
    fn household_by_email(&self, key: &str) -> Result<Option<Uuid>, StoreError>;
    /// Replaces `expected` by `new` in one transaction, keeping the indexes in step: a
    /// removed user frees the email; added meters and devices are indexed (`DuplicateId`
    /// if another household has the uuid), removed ones stay reserved to this household so
    /// their measurements can never be attributed to another one. Fails with
    /// `HouseholdChanged` if the stored household is no longer `expected`, so callers can
    /// re-read and retry.
    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError>;
    /// The household a client certificate (by SHA-256 fingerprint) was last seen for.
    fn certificate_binding(&self, fingerprint: &[u8; 32]) -> Result<Option<Uuid>, StoreError>;
    fn bind_certificate(&self, fingerprint: &[u8; 32], household: Uuid) -> Result<(), StoreError>;
    /// Adds a device certificate (by SHA-256 fingerprint) to the deny-list every replica
    /// checks at the TLS handshake; revoking twice keeps the first time.
    fn revoke_certificate(
        &self,
        fingerprint: &[u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The deny-list: every revoked certificate with the time it was revoked.
    fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError>;
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
/// - `emails`: [`Household::email_index_key`] (the keyed email digest under sealing) →
///   household uuid
/// - `meters`, `devices`: uuid → household uuid
/// - `device_status`: device uuid → status JSON
/// - `measurements`: `m` ‖ meter ‖ time ‖ measurement uuid → data points, and beside it
///   `u` ‖ measurement uuid → meter ‖ time (idempotency index); one tree so a batch and
///   its index entries are written by one atomic `apply_batch`
/// - `certificates`: SHA-256 of a device certificate → household uuid
/// - `revoked_certificates`: SHA-256 of a revoked device certificate → time (RFC 3339)
///
/// Measurement batches do not use sled transactions (which serialize every operation of
/// the database). Instead batches hold a shared write gate that household updates hold
/// exclusively, so a batch's consent check and its write cannot interleave with a
/// revocation, and batches of the same meter exclude each other (lock stripes by meter)
/// so a uuid is checked and stored as one step. Batches of different meters are stored
/// in parallel. Durability is a group commit: one fsync acknowledges every write applied
/// before it started.
pub struct SledStore {
    db: sled::Db,
    households: sled::Tree,
    emails: sled::Tree,
    meters: sled::Tree,
    devices: sled::Tree,
    device_status: sled::Tree,
    measurements: sled::Tree,
    certificates: sled::Tree,
    revoked_certificates: sled::Tree,
    write_gate: RwLock<()>,
    meter_stripes: Vec<Mutex<()>>,
    /// Writes applied so far, and how many of them a completed flush covers.
    applied: AtomicU64,
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
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
            certificates: db.open_tree("certificates")?,
            revoked_certificates: db.open_tree("revoked_certificates")?,
            db,
            write_gate: RwLock::new(()),
            meter_stripes: (0..METER_STRIPES).map(|_| Mutex::new(())).collect(),
            applied: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
        })
    }

    // The locks guard no data of their own, so a panic elsewhere leaves nothing broken.
    fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.write_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.write_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the stripes of every meter in the batch, in index order so that two batches
    /// never wait for each other crosswise.
    fn lock_meters(&self, batch: &[Measurement]) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let stripes: BTreeSet<usize> = batch
            .iter()
            .map(|m| (m.meter.as_u128() % METER_STRIPES as u128) as usize)
            .collect();
        stripes
            .into_iter()
            .map(|i| {
                self.meter_stripes[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect()
    }

    /// Makes every write applied so far durable, sharing one fsync among concurrent callers.
    fn commit(&self) -> Result<(), StoreError> {
        let target = self.applied.load(Ordering::SeqCst);
        if self.flushed.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        let _flushing = self
            .flush_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.flushed.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        let covered = self.applied.load(Ordering::SeqCst);
        self.db.flush()?;
        self.flushed.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }
}

impl SledStore {
    /// Every certificate binding (for copying a survey to another store).
    pub fn certificate_bindings(&self) -> Result<Vec<([u8; 32], Uuid)>, StoreError> {
        self.certificates
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let fingerprint: [u8; 32] = key.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt(serde::de::Error::custom("certificate key length"))
                })?;
                Ok((fingerprint, uuid_value(&value)?))
            })
            .collect()
    }

    /// Every device's status (for copying a survey to another store).
    pub fn device_statuses(&self) -> Result<Vec<(Uuid, DeviceStatus)>, StoreError> {
        self.device_status
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((uuid_value(&key)?, serde_json::from_slice(&value)?))
            })
            .collect()
    }
}

const METER_STRIPES: usize = 64;
const MEASUREMENT: u8 = b'm';
const MEASUREMENT_ID: u8 = b'u';

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

fn measurement_key(meter: Uuid, at: DateTime<Utc>, uuid: Uuid) -> [u8; 41] {
    let mut key = [0u8; 41];
    key[0] = MEASUREMENT;
    key[1..17].copy_from_slice(meter.as_bytes());
    key[17..].copy_from_slice(&series_suffix(at, uuid));
    key
}

fn measurement_id_key(uuid: Uuid) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = MEASUREMENT_ID;
    key[1..].copy_from_slice(uuid.as_bytes());
    key
}

fn meter_prefix(meter: Uuid) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = MEASUREMENT;
    key[1..].copy_from_slice(meter.as_bytes());
    key
}

fn decode_measurement(key: &[u8], value: &[u8]) -> Result<Measurement, StoreError> {
    let corrupt = || {
        StoreError::Corrupt(serde::de::Error::custom(format!(
            "measurement key of {} bytes",
            key.len()
        )))
    };
    if key.len() != 41 || key[0] != MEASUREMENT {
        return Err(corrupt());
    }
    let key = &key[1..];
    let meter = Uuid::from_slice(&key[..16]).map_err(|_| corrupt())?;
    let measured_at =
        decode_time(key[16..24].try_into().map_err(|_| corrupt())?).ok_or_else(corrupt)?;
    let uuid = Uuid::from_slice(&key[24..]).map_err(|_| corrupt())?;
    let data = decode_data(value).ok_or_else(|| {
        StoreError::Corrupt(serde::de::Error::custom(
            "measurement data of unknown format",
        ))
    })?;
    Ok(Measurement {
        uuid,
        meter,
        measured_at,
        data,
    })
}

/// Data points as stored: a format byte, then per point the 6-byte OBIS code and the value
/// as a big-endian f64 (14 bytes; JSON would take about twice that, and every byte of a
/// sled leaf is copied on each write to it).
const DATA_FORMAT: u8 = 1;

pub(crate) fn encode_data(data: &MeasurementData) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 14 * data.0.len());
    out.push(DATA_FORMAT);
    for (code, value) in &data.0 {
        out.extend_from_slice(&code.0);
        out.extend_from_slice(&value.to_be_bytes());
    }
    out
}

fn decode_data(bytes: &[u8]) -> Option<MeasurementData> {
    let (&format, points) = bytes.split_first()?;
    if format != DATA_FORMAT || points.len() % 14 != 0 {
        return None;
    }
    Some(MeasurementData(
        points
            .chunks_exact(14)
            .map(|p| {
                let code = ObisCode(p[..6].try_into().expect("6 bytes"));
                let value = f64::from_be_bytes(p[6..].try_into().expect("8 bytes"));
                (code, value)
            })
            .collect(),
    ))
}

fn time_bound(meter: Uuid, at: Option<DateTime<Utc>>, open_end: u8) -> Vec<u8> {
    let mut key = meter_prefix(meter).to_vec();
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

/// The uuids in `new` that are not in `old`.
fn added_ids(old: impl Iterator<Item = Uuid>, new: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let old: BTreeSet<Uuid> = old.collect();
    new.filter(|id| !old.contains(id)).collect()
}

/// Indexes `ids` for `household`; a uuid that another household holds is a `DuplicateId`.
/// One the household held before (a meter removed and added again) is its own.
fn reserve_ids(
    index: &TransactionalTree,
    ids: &[Uuid],
    household: Uuid,
    kind: &'static str,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for uuid in ids {
        if let Some(owner) = index.insert(uuid.as_bytes(), household.as_bytes())? {
            if owner.as_ref() != household.as_bytes() {
                return abort(StoreError::DuplicateId { kind, uuid: *uuid });
            }
        }
    }
    Ok(())
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
        let gate = self.exclusive();
        unwrap_tx(
            (&self.households, &self.emails, &self.meters, &self.devices).transaction(
                |(households, emails, meters, devices)| {
                    if households.get(id.as_bytes())?.is_some() {
                        return abort(StoreError::DuplicateId {
                            kind: "household",
                            uuid: id,
                        });
                    }
                    if let Some(key) = household.email_index_key() {
                        if emails.insert(key.as_bytes(), id.as_bytes())?.is_some() {
                            return abort(StoreError::EmailTaken);
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
        self.applied.fetch_add(1, Ordering::SeqCst);
        drop(gate);
        self.commit()
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

    fn household_by_email(&self, key: &str) -> Result<Option<Uuid>, StoreError> {
        self.emails
            .get(key.as_bytes())?
            .map(|v| uuid_value(&v))
            .transpose()
    }

    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError> {
        let id = expected.id;
        let value = serde_json::to_vec(new)?;
        let gate = self.exclusive();
        let added_devices = added_ids(
            expected.measurement_devices.iter().map(|d| d.uuid),
            new.measurement_devices.iter().map(|d| d.uuid),
        );
        let added_meters = added_ids(
            expected.meters.iter().map(|m| m.uuid),
            new.meters.iter().map(|m| m.uuid),
        );
        unwrap_tx(
            (&self.households, &self.emails, &self.meters, &self.devices).transaction(
                |(households, emails, meters, devices)| {
                    let current = tx_household(households, id)?;
                    if &current != expected {
                        return abort(StoreError::HouseholdChanged(id));
                    }
                    let old_email = expected.email_index_key();
                    let new_email = new.email_index_key();
                    if old_email != new_email {
                        if let Some(old) = &old_email {
                            emails.remove(old.as_bytes())?;
                        }
                        if let Some(new_key) = &new_email {
                            if emails.insert(new_key.as_bytes(), id.as_bytes())?.is_some() {
                                return abort(StoreError::EmailTaken);
                            }
                        }
                    }
                    reserve_ids(devices, &added_devices, id, "measurement device")?;
                    reserve_ids(meters, &added_meters, id, "meter")?;
                    households.insert(id.as_bytes(), value.as_slice())?;
                    Ok(())
                },
            ),
        )?;
        self.applied.fetch_add(1, Ordering::SeqCst);
        drop(gate);
        self.commit()
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

    fn revoke_certificate(
        &self,
        fingerprint: &[u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _ = self.revoked_certificates.compare_and_swap(
            fingerprint,
            None as Option<&[u8]>,
            Some(at.to_rfc3339().as_bytes()),
        )?;
        self.applied.fetch_add(1, Ordering::SeqCst);
        self.commit()
    }

    fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        self.revoked_certificates
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let corrupt = || {
                    StoreError::Corrupt(serde::de::Error::custom(
                        "revoked certificate entry of unknown format",
                    ))
                };
                let fingerprint: [u8; 32] = key.as_ref().try_into().map_err(|_| corrupt())?;
                let at = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .ok_or_else(corrupt)?;
                Ok(RevokedCertificate {
                    fingerprint,
                    revoked_at: at.with_timezone(&Utc),
                })
            })
            .collect()
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
        let encoded: Vec<([u8; 41], Vec<u8>)> = batch
            .iter()
            .map(|m| {
                (
                    measurement_key(m.meter, m.measured_at, m.uuid),
                    encode_data(&m.data),
                )
            })
            .collect();
        let gate = self.shared();
        let meters = self.lock_meters(batch);
        // Under the gate, a concurrent revocation either precedes this batch (and refuses
        // it) or follows it.
        let current = self
            .household(household)?
            .ok_or(StoreError::UnknownHousehold(household))?;
        current
            .consent
            .accepts_measurements()
            .map_err(StoreError::Consent)?;
        let mut outcome = IngestOutcome::default();
        let mut writes = sled::Batch::default();
        let mut in_batch: HashMap<Uuid, Uuid> = HashMap::with_capacity(batch.len());
        for (index, (m, (key, value))) in batch.iter().zip(&encoded).enumerate() {
            let stored_meter = match in_batch.get(&m.uuid) {
                Some(meter) => Some(*meter),
                None => match self.measurements.get(measurement_id_key(m.uuid))? {
                    Some(v) => Some(uuid_value(v.get(..16).unwrap_or_default())?),
                    None => None,
                },
            };
            match stored_meter {
                Some(meter) if meter == m.meter => outcome.duplicates += 1,
                Some(_) => {
                    return Err(StoreError::MeasurementOfOtherMeter {
                        index,
                        uuid: m.uuid,
                    })
                }
                None => {
                    writes.insert(&measurement_id_key(m.uuid)[..], &key[1..25]);
                    writes.insert(&key[..], value.as_slice());
                    in_batch.insert(m.uuid, m.meter);
                    outcome.accepted += 1;
                }
            }
        }
        if outcome.accepted > 0 {
            self.measurements.apply_batch(writes)?;
            self.applied.fetch_add(1, Ordering::SeqCst);
        }
        drop(meters);
        drop(gate);
        // Duplicates wait too: their original may be in a flush that has not finished.
        self.commit()?;
        Ok(outcome)
    }

    fn series(&self, meter: Uuid, query: &SeriesQuery) -> Result<SeriesPage, StoreError> {
        let mut start = time_bound(meter, query.from, 0x00);
        if let Some(after) = query.after {
            let mut after_key = meter_prefix(meter).to_vec();
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
        match self
            .measurements
            .scan_prefix(meter_prefix(meter))
            .next_back()
        {
            Some(entry) => {
                let (key, _) = entry?;
                Ok(key
                    .get(17..25)
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
            None => self.measurements.scan_prefix([MEASUREMENT]),
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
            sealed: None,
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
            Err(StoreError::EmailTaken)
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
