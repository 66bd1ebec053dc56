//! Consent transitions as durable operations (FR-01..FR-03): granting, and revoking with
//! anonymization in the same transaction, so there is no moment at which a revoked
//! household still carries its contact details or real location.

use chrono::{DateTime, Utc};
use rand::Rng;
use uuid::Uuid;

use crate::anonymize::{anonymize_household, AnonymizationReport};
use crate::model::{ConsentError, Household};
use crate::nuts::NutsIndex;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("{0}")]
    Consent(ConsentError),
    #[error("household {0} does not exist")]
    UnknownHousehold(Uuid),
    #[error("the household kept changing concurrently")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// FR-01: NOT_GRANTED → GRANTED.
pub fn grant(store: &dyn Store, household: Uuid) -> Result<Household, TransitionError> {
    apply(store, household, |h, now| {
        h.consent.grant(now)?;
        h.updated_at = now;
        Ok(())
    })
}

/// FR-02, FR-03: GRANTED → REVOKED, anonymizing with bounds from the household's district.
pub fn revoke<R: Rng + ?Sized>(
    store: &dyn Store,
    nuts: &NutsIndex,
    household: Uuid,
    rng: &mut R,
) -> Result<(Household, AnonymizationReport), TransitionError> {
    let mut report = None;
    let revoked = apply(store, household, |h, now| {
        h.consent.revoke(now)?;
        let found = nuts.bounds_for(h.location);
        anonymize_household(h, found.bounds, rng, now);
        report = Some(AnonymizationReport {
            bounds: found.bounds,
            district: found.district.map(|d| d.code.clone()),
        });
        Ok(())
    })?;
    let report = report.expect("set by the successful transition");
    tracing::info!(
        household = %household,
        district = report.district.as_deref().unwrap_or("none"),
        d_min = report.bounds.d_min,
        d_max = report.bounds.d_max,
        "consent revoked, household anonymized"
    );
    Ok((revoked, report))
}

/// Optimistic concurrency: the change is applied to the stored household and written only
/// if nobody changed it meanwhile; otherwise re-read and retry. Two racing grants (or
/// revocations) therefore cannot both succeed.
fn apply(
    store: &dyn Store,
    id: Uuid,
    mut change: impl FnMut(&mut Household, DateTime<Utc>) -> Result<(), ConsentError>,
) -> Result<Household, TransitionError> {
    for _ in 0..16 {
        let current = store
            .household(id)?
            .ok_or(TransitionError::UnknownHousehold(id))?;
        let mut next = current.clone();
        change(&mut next, Utc::now()).map_err(TransitionError::Consent)?;
        match store.replace_household(&current, &next) {
            Ok(()) => return Ok(next),
            Err(StoreError::HouseholdChanged(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TransitionError::Contended)
}
