//! Authentication and authorization (section 4.3.1, NFR-01).
//!
//! Devices are participants: their verified client certificate names an email, which
//! selects the household; every participant endpoint then works on that household only,
//! so no endpoint ever takes another household's id. A certificate is bound to the
//! household it was first used for, which keeps a returned device answerable ("consent
//! revoked") after anonymization removed the email. Researchers and administrators are
//! separate roles, each identified by a shared bearer token compared in constant time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::api::{ApiError, AppState};
use crate::health::StoreHealth;
use crate::model::{Household, Scope};
use crate::store::{Store, StoreError};
use crate::tls::{DeviceIdentity, PeerIdentity};

/// Header in which edge devices report their component versions.
pub const COMPONENT_VERSIONS_HEADER: &str = "x-component-versions";

/// The configured shared secrets, kept only as SHA-256 digests so the comparison takes
/// the same time whatever the presented token's length.
#[derive(Default)]
pub struct Tokens {
    researcher: Option<[u8; 32]>,
    admin: Option<[u8; 32]>,
}

impl Tokens {
    pub fn new(researcher: Option<&str>, admin: Option<&str>) -> Tokens {
        let digest = |t: &str| -> [u8; 32] { Sha256::digest(t.as_bytes()).into() };
        Tokens {
            researcher: researcher.filter(|t| !t.is_empty()).map(digest),
            admin: admin.filter(|t| !t.is_empty()).map(digest),
        }
    }

    fn role_of(&self, presented: &str) -> Option<Role> {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let matches = |configured: &Option<[u8; 32]>| {
            configured.is_some_and(|c| bool::from(c.ct_eq(&presented)))
        };
        // Evaluate both so timing does not reveal which role a token belongs to.
        let (researcher, admin) = (matches(&self.researcher), matches(&self.admin));
        if researcher {
            Some(Role::Researcher)
        } else if admin {
            Some(Role::Admin)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Researcher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Admin => "admin",
        }
    }
}

fn bearer_role(parts: &Parts, state: &AppState) -> Result<Role, ApiError> {
    let Some(value) = parts.headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing_token",
            "this endpoint needs an Authorization: Bearer token",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid_token",
                "the Authorization header is not a Bearer token",
            )
        })?;
    state
        .tokens
        .role_of(token)
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the bearer token is not valid"))
}

/// A caller holding the researcher token (FR-06, FR-07, FR-08, data set export).
pub struct Researcher;

impl FromRequestParts<AppState> for Researcher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer_role(parts, state)? {
            Role::Researcher => Ok(Researcher),
            Role::Admin => Err(ApiError::forbidden(
                "insufficient_role",
                "this endpoint is for researchers",
            )),
        }
    }
}

/// A caller holding the researcher or the admin token (household overview: consent for
/// researchers, FR-08; device health for administrators, FR-09).
pub struct Staff(pub Role);

impl FromRequestParts<AppState> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        bearer_role(parts, state).map(Staff)
    }
}

/// An authenticated edge device acting for its household.
pub struct Participant {
    pub household: Household,
    /// The device making the request, when it can be told apart.
    pub device: Option<Uuid>,
    pub scopes: Vec<Scope>,
    pub identity: Arc<DeviceIdentity>,
}

impl Participant {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "insufficient_scope",
                format!("this endpoint needs the {scope} scope"),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Participant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let identity = match parts.extensions.get::<PeerIdentity>() {
            Some(PeerIdentity::Device(identity)) => identity.clone(),
            Some(PeerIdentity::Rejected(reason)) => {
                return Err(ApiError::unauthorized(
                    "certificate_rejected",
                    reason.clone(),
                ))
            }
            Some(PeerIdentity::Anonymous) | None => {
                return Err(ApiError::unauthorized(
                    "certificate_required",
                    "participant endpoints need a client certificate issued by the survey CA",
                ))
            }
        };
        let now = Utc::now();
        // A connection opened before the revocation is refused from its next request on.
        if state.privacy.deny_list.contains(&identity.fingerprint) {
            return Err(ApiError::unauthorized(
                "certificate_rejected",
                crate::tls::REVOKED,
            ));
        }
        if now > identity.not_after {
            return Err(ApiError::unauthorized(
                "certificate_rejected",
                "the client certificate has expired",
            ));
        }
        let household = {
            let (identity, health) = (identity.clone(), state.health.clone());
            state
                .blocking(move |store| household_of(store, &identity, &health))
                .await?
        };

        let device = match identity.device {
            Some(uuid) if household.device(uuid).is_some() => Some(uuid),
            Some(uuid) => {
                return Err(ApiError::forbidden(
                    "foreign_device",
                    format!("measurement device {uuid} does not belong to this household"),
                ))
            }
            None => match household.measurement_devices.as_slice() {
                [only] => Some(only.uuid),
                _ => None,
            },
        };
        let record_scopes: Vec<Scope> = match device.and_then(|d| household.device(d)) {
            Some(d) => d.scopes.clone(),
            None => Scope::ALL.to_vec(),
        };
        let scopes = match &identity.scopes {
            Some(certified) => record_scopes
                .into_iter()
                .filter(|s| certified.contains(s))
                .collect(),
            None => record_scopes,
        };

        let versions = match parts.headers.get(COMPONENT_VERSIONS_HEADER) {
            Some(value) => Some(parse_component_versions(value.to_str().unwrap_or("\u{0}"))?),
            None => None,
        };
        if let Some(device) = device {
            let health = state.health.clone();
            state
                .blocking(move |store| {
                    // Health bookkeeping must not fail the request it is about.
                    if let Err(e) = store.record_device_activity(device, now, versions.as_ref()) {
                        bookkeeping_failed(&health, &e, "recording device activity");
                    }
                    Ok(())
                })
                .await?;
        }
        tracing::debug!(household = %household.id, device = ?device, "participant authenticated");
        Ok(Participant {
            household,
            device,
            scopes,
            identity,
        })
    }
}

/// The household a device certificate acts for: the one it was first used for, else the
/// one registered with its email (and the certificate is bound to it).
fn household_of(
    store: &dyn Store,
    identity: &DeviceIdentity,
    health: &StoreHealth,
) -> Result<Household, ApiError> {
    let household_id = match store.certificate_binding(&identity.fingerprint)? {
        Some(id) => id,
        None => {
            let key = crate::model::email_index_key(&identity.email);
            let id = store.household_by_email(&key)?.ok_or_else(|| {
                ApiError::unauthorized(
                    "unknown_participant",
                    // Never the email: this answer is logged, and a device whose
                    // household was anonymized asks again every report cycle.
                    "no participant is registered with the email of this certificate",
                )
            })?;
            // The binding is written again on the next request if the store cannot
            // take it now; the email selected the household either way.
            if let Err(e) = store.bind_certificate(&identity.fingerprint, id) {
                bookkeeping_failed(health, &e, "binding the certificate");
            }
            id
        }
    };
    store.household(household_id)?.ok_or_else(|| {
        ApiError::unauthorized("unknown_participant", "the participant's household is gone")
    })
}

fn bookkeeping_failed(health: &StoreHealth, error: &StoreError, what: &'static str) {
    health.observe(error);
    tracing::warn!(error = %error, what, "store bookkeeping failed; the request goes on");
}

/// Parses `meter-reader=0.1.0,sml-decoder=0.1.0`.
pub fn parse_component_versions(value: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let invalid = |message: String| ApiError::invalid_field("X-Component-Versions", message);
    let mut versions = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, version) = entry
            .split_once('=')
            .ok_or_else(|| invalid(format!("{entry:?} is not name=version")))?;
        let (name, version) = (name.trim(), version.trim());
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let version_ok = !version.is_empty()
            && version.len() <= 64
            && version.chars().all(|c| c.is_ascii_graphic() && c != '=');
        if !name_ok || !version_ok {
            return Err(invalid(format!("{entry:?} is not name=version")));
        }
        versions.insert(name.to_owned(), version.to_owned());
    }
    if versions.len() > 32 {
        return Err(invalid("more than 32 components".into()));
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_versions() {
        let v = parse_component_versions("meter-reader=0.1.0, sml=1.04").unwrap();
        assert_eq!(v["meter-reader"], "0.1.0");
        assert_eq!(v["sml"], "1.04");
        assert!(parse_component_versions("meter-reader").is_err());
        assert!(parse_component_versions("a=b=c").is_err());
        assert!(parse_component_versions("a b=1").is_err());
    }

    #[test]
    fn tokens_select_roles() {
        let tokens = Tokens::new(Some("research-secret"), Some("admin-secret"));
        assert_eq!(tokens.role_of("research-secret"), Some(Role::Researcher));
        assert_eq!(tokens.role_of("admin-secret"), Some(Role::Admin));
        assert_eq!(tokens.role_of("research-secreT"), None);
        assert_eq!(tokens.role_of(""), None);
        let none = Tokens::new(Some(""), None);
        assert_eq!(none.role_of(""), None);
    }
}
