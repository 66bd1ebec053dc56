//! Privacy that really forgets (section 3.1.4, FR-03): the personal part of a household
//! is stored only sealed under a key of its own kept in a [`vault`] apart from the
//! database, revocation destroys that key and is written to a [`ledger`] that re-applies
//! it after a backup is restored, exports carry pseudonyms and coarsened locations, and
//! device certificates can be revoked ([`deny_list`]).

pub mod crypto;
pub mod deny_list;
pub mod ledger;
pub mod sealed;
pub mod vault;

use std::sync::Arc;

use uuid::Uuid;

pub use crypto::ExportPseudonyms;
pub use deny_list::DenyList;
pub use sealed::SealedStore;
pub use vault::{FileKeyVault, KeyVault};

use crate::model::{Household, Location};

/// Exported locations are rounded to this many decimal places of a degree: 0.01° is
/// about 1.1 km north–south and 0.7 km east–west at the survey's latitudes.
pub const EXPORT_LOCATION_DECIMALS: i32 = 2;

/// A location as exports give it.
pub fn coarsen(location: Location) -> Location {
    let scale = 10f64.powi(EXPORT_LOCATION_DECIMALS);
    let round = |degrees: f64| (degrees * scale).round() / scale;
    Location {
        latitude: round(location.latitude),
        longitude: round(location.longitude),
    }
}

/// What the API layer needs beside the store: export pseudonyms from the vault, and the
/// certificate deny-list the TLS handshake checks.
pub struct Privacy {
    pub vault: Arc<dyn KeyVault>,
    pub deny_list: Arc<DenyList>,
}

impl Privacy {
    /// The pseudonyms `household`'s rows carry in exports (see [`ExportPseudonyms`]).
    pub fn export_pseudonyms(
        &self,
        household: &Household,
    ) -> Result<ExportPseudonyms, vault::VaultError> {
        let key = match household.anonymized_at {
            Some(_) => None,
            None => self.vault.household_key(household.id)?,
        };
        Ok(match key {
            Some(key) => ExportPseudonyms::of_participant(&key),
            None => ExportPseudonyms::of_anonymized(self.vault.server_secret(), household.id),
        })
    }

    /// Pseudonyms of every household, by household id.
    pub fn pseudonyms_of(
        &self,
        households: &[Household],
    ) -> Result<std::collections::HashMap<Uuid, ExportPseudonyms>, vault::VaultError> {
        households
            .iter()
            .map(|h| Ok((h.id, self.export_pseudonyms(h)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_locations_keep_two_decimals() {
        let c = coarsen(Location {
            latitude: 51.339_712,
            longitude: -12.376_145,
        });
        assert_eq!((c.latitude, c.longitude), (51.34, -12.38));
    }
}
