//! `data-api migrate-store`: copies a survey from a sled directory into PostgreSQL, and a
//! digest of a store's content so both sides can be compared after the copy.

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};

use crate::model::Measurement;
use crate::store::postgres::PgStore;
use crate::store::{encode_data, SledStore, Store, StoreError};

/// Measurements per copied batch (the upload limit, so one statement stays modest).
const COPY_BATCH: usize = 1000;

/// Counts and a SHA-256 over every household document and every measurement, in a
/// backend-independent order (households by id, measurements by meter, time and uuid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurveyDigest {
    pub households: usize,
    pub measurements: usize,
    pub sha256: String,
}

impl std::fmt::Display for SurveyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} households, {} measurements, sha256 {}",
            self.households, self.measurements, self.sha256
        )
    }
}

pub fn digest(store: &dyn Store) -> Result<SurveyDigest, StoreError> {
    let mut hasher = Sha256::new();
    let mut households = store.households()?;
    households.sort_by_key(|h| h.id);
    for h in &households {
        let document = serde_json::to_vec(h)?;
        hasher.update((document.len() as u64).to_be_bytes());
        hasher.update(&document);
    }
    let mut measurements = 0;
    store.scan_measurements(None, None, None, &mut |m| {
        hasher.update(m.meter.as_bytes());
        hasher.update(m.measured_at.timestamp_micros().to_be_bytes());
        hasher.update(m.uuid.as_bytes());
        let data = encode_data(&m.data);
        hasher.update((data.len() as u64).to_be_bytes());
        hasher.update(&data);
        measurements += 1;
        ControlFlow::Continue(())
    })?;
    Ok(SurveyDigest {
        households: households.len(),
        measurements,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target database already holds {0} households; copy into an empty one")]
    TargetNotEmpty(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub households: usize,
    pub certificate_bindings: usize,
    pub revoked_certificates: usize,
    pub device_statuses: usize,
    pub measurements: usize,
}

/// Copies households (with their indexes) as stored, that is sealed, certificate bindings,
/// the certificate deny-list, device status and every measurement, revoked households'
/// included. The target must hold no household yet. The key vault and the revocation
/// ledger stay files: the server on the target uses the source's.
pub fn copy_survey(from: &SledStore, to: &PgStore) -> Result<CopyReport, CopyError> {
    let existing = to.households()?.len();
    if existing > 0 {
        return Err(CopyError::TargetNotEmpty(existing));
    }
    let mut report = CopyReport::default();
    for household in from.households()? {
        to.create_household(&household)?;
        report.households += 1;
    }
    for (fingerprint, household) in from.certificate_bindings()? {
        to.bind_certificate(&fingerprint, household)?;
        report.certificate_bindings += 1;
    }
    for revoked in from.revoked_certificates()? {
        to.revoke_certificate(&revoked.fingerprint, revoked.revoked_at)?;
        report.revoked_certificates += 1;
    }
    for (device, status) in from.device_statuses()? {
        to.import_device_status(device, &status)?;
        report.device_statuses += 1;
    }
    let mut batch: Vec<Measurement> = Vec::with_capacity(COPY_BATCH);
    let mut failure = None;
    from.scan_measurements(None, None, None, &mut |m| {
        batch.push(m);
        if batch.len() == COPY_BATCH {
            match to.import_measurements(&batch) {
                Ok(n) => report.measurements += n,
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            batch.clear();
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if !batch.is_empty() {
        report.measurements += to.import_measurements(&batch)?;
    }
    Ok(report)
}
