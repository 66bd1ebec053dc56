//! Node certificates renew themselves before they expire: when a third of its lifetime
//! is left, a node sends a certificate request for a new key to the CA node
//! (`POST /v1/cluster/renew`), signed by its current key, and takes the new certificate
//! into use without a restart. `motey cluster renew` does the same at once.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

use super::identity::pem_to_der;
use super::join::JoinError;
use super::{ClusterAuthority, ClusterError, ClusterFiles, Membership, NodeIdentity};

const DOMAIN: &[u8] = b"motey certificate renewal v1\0";

/// Body of `POST /v1/cluster/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    /// The node's current certificate (PEM).
    pub certificate: String,
    /// Certificate request (PEM) for the node's new key.
    pub csr: String,
    /// The current key's signature (base64) over the request, domain-separated.
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub certificate: String,
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal.
pub fn is_due(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    now >= not_after.saturating_sub(lifetime / 3)
}

/// On the CA node: a new certificate for the node that proves its current one.
pub fn renew_for(
    authority: &ClusterAuthority,
    request: &RenewRequest,
    lifetime: Duration,
) -> Result<RenewResponse, ClusterError> {
    let membership = Membership::load(authority.files())?;
    let certificate = pem_to_der(&request.certificate, "CERTIFICATE")?;
    let signature = STANDARD
        .decode(&request.signature)
        .map_err(|_| ClusterError::Invalid("signature is not base64".into()))?;
    let member = membership.verify_signed(&certificate, &signed_bytes(&request.csr), &signature)?;
    let issued = authority.issue(&request.csr, member.node_id.as_str(), lifetime)?;
    tracing::info!(target: "motey::audit", node = %member.node_id, serial = %issued.serial_hex, "renewed a node certificate");
    Ok(RenewResponse {
        certificate: issued.pem,
    })
}

/// Renews this node's certificate now: at its own CA if it holds it, else at the CA node
/// it joined through. Writes the new key and certificate and returns the new identity.
pub async fn renew(membership: &Membership, lifetime: Duration) -> Result<NodeIdentity, JoinError> {
    let files = membership.files();
    let identity = membership.identity();
    let key = KeyPair::generate().map_err(ClusterError::from)?;
    let csr = NodeIdentity::request_for(&key, identity.node_id().as_str())?;
    let request = RenewRequest {
        certificate: identity.certificate_pem().to_owned(),
        signature: STANDARD.encode(identity.sign(&signed_bytes(&csr))),
        csr,
    };
    let certificate = if files.is_authority() {
        renew_for(&ClusterAuthority::load(files)?, &request, lifetime)?.certificate
    } else {
        let server = files.read(&files.ca_server())?.trim().to_owned();
        super::join::post_to_ca::<_, RenewResponse>(
            &server,
            &membership.ca_fingerprint(),
            "/v1/cluster/renew",
            &request,
        )
        .await?
        .certificate
    };
    let renewed = NodeIdentity::from_parts(certificate, key)?;
    membership
        .verify_certificate(renewed.certificate_der())
        .map_err(ClusterError::from)?;
    write_identity(files, &renewed)?;
    Ok(renewed)
}

fn write_identity(files: &ClusterFiles, identity: &NodeIdentity) -> Result<(), ClusterError> {
    // The key first: a certificate without its key would not load.
    let next_key = files.node_key().with_extension("next");
    files.write_private(&next_key, &identity.key_pem())?;
    files.write_private(
        &files.node_cert().with_extension("next"),
        identity.certificate_pem(),
    )?;
    std::fs::rename(&next_key, files.node_key()).map_err(super::files::file_error(&next_key))?;
    std::fs::rename(files.node_cert().with_extension("next"), files.node_cert())
        .map_err(super::files::file_error(&files.node_cert()))
}

/// Keeps this node's certificate renewed, and takes one renewed by `motey cluster renew`
/// into use, until `stop` is cancelled.
pub async fn keep_renewed(
    membership: Membership,
    lifetime: Duration,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(on_disk) = NodeIdentity::load(membership.files()) {
            if on_disk.certificate_der() != membership.identity().certificate_der() {
                tracing::info!(
                    not_after = on_disk.not_after(),
                    "took a renewed node certificate"
                );
                membership.replace_identity(on_disk);
                continue;
            }
        }
        let identity = membership.identity();
        if !is_due(
            identity.not_before(),
            identity.not_after(),
            super::now_secs(),
        ) {
            continue;
        }
        match renew(&membership, lifetime).await {
            Ok(renewed) => {
                tracing::info!(
                    not_after = renewed.not_after(),
                    "renewed this node's certificate"
                );
                membership.replace_identity(renewed);
            }
            Err(error) => {
                tracing::warn!(%error, not_after = identity.not_after(), "cannot renew this node's certificate yet; retrying")
            }
        }
    }
}

fn signed_bytes(csr: &str) -> Vec<u8> {
    [DOMAIN, csr.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_is_due_when_a_third_of_its_life_is_left() {
        assert!(!is_due(0, 900, 599));
        assert!(is_due(0, 900, 600));
        assert!(is_due(0, 900, 1000));
    }
}
