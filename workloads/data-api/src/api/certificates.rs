//! Revoking device certificates: a lost, stolen or rotated device's certificate goes on
//! the deny-list by its SHA-256 fingerprint (`data-api pki fingerprint --cert FILE`), and
//! from then on the TLS handshake refuses it on every replica.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::{parse_json, ApiError, AppState};
use crate::auth::Staff;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    fingerprint: String,
}

#[derive(Serialize)]
pub struct RevokedCertificate {
    fingerprint: String,
    revoked_at: DateTime<Utc>,
}

fn parse_fingerprint(text: &str) -> Result<[u8; 32], ApiError> {
    // Colons as `openssl x509 -fingerprint` prints them; nothing else around the digits.
    let cleaned: String = text.replace(':', "").to_lowercase();
    let mut fingerprint = [0u8; 32];
    hex::decode_to_slice(&cleaned, &mut fingerprint).map_err(|_| {
        ApiError::invalid_field(
            "fingerprint",
            "expected the certificate's SHA-256 fingerprint: 64 hex digits",
        )
    })?;
    Ok(fingerprint)
}

/// `POST /management/certificate/revoked` (researcher or admin).
pub async fn revoke(
    State(state): State<AppState>,
    Staff(role): Staff,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RevokedCertificate>), ApiError> {
    let request: RevokeRequest = parse_json(&body)?;
    let fingerprint = parse_fingerprint(&request.fingerprint)?;
    // To the microsecond, which every store keeps.
    let now = Utc::now().trunc_subsecs(6);
    let revoked_at = state
        .blocking(move |store| {
            store.revoke_certificate(&fingerprint, now)?;
            Ok(store
                .revoked_certificates()?
                .into_iter()
                .find(|revoked| revoked.fingerprint == fingerprint)
                .map_or(now, |revoked| revoked.revoked_at))
        })
        .await?;
    state.privacy.deny_list.insert(fingerprint);
    tracing::info!(
        certificate = %hex::encode(fingerprint),
        by = role.as_str(),
        "device certificate revoked"
    );
    Ok((
        StatusCode::CREATED,
        Json(RevokedCertificate {
            fingerprint: hex::encode(fingerprint),
            revoked_at,
        }),
    ))
}

/// `GET /management/certificate/revoked` (researcher or admin): the deny-list.
pub async fn list(
    State(state): State<AppState>,
    _: Staff,
) -> Result<Json<Vec<RevokedCertificate>>, ApiError> {
    let revoked = state
        .blocking(|store| Ok(store.revoked_certificates()?))
        .await?;
    Ok(Json(
        revoked
            .into_iter()
            .map(|revoked| RevokedCertificate {
                fingerprint: hex::encode(revoked.fingerprint),
                revoked_at: revoked.revoked_at,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_64_hex_digits_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        let short = parse_fingerprint("abcd").unwrap_err();
        assert_eq!(short.field.as_deref(), Some("fingerprint"));
        assert!(parse_fingerprint(&format!(" {hex64}")).is_err());
    }
}
