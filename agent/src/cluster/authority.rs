//! The cluster CA, on the node where `motey cluster init` ran: it issues node
//! certificates from certificate requests (the node id it names is the CA's decision, not
//! the request's), keeps a ledger of what it issued, and signs the revocation list.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::identity::{normalized_serial, pem_to_der, CertificateFacts};
use super::{ClusterError, ClusterFiles, NodeIdentity, RevocationList};

/// How long the CA certificate is valid; OPERATIONS.md says how to rotate it.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a revocation list is good for; a new one is signed at every revocation and
/// whenever the CA node starts.
const REVOCATIONS_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    pub serial_hex: String,
    pub not_after: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    #[serde(default)]
    nodes: BTreeMap<String, LedgerEntry>,
    #[serde(default)]
    revocations_number: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerEntry {
    serials: Vec<String>,
    #[serde(default)]
    revoked_at: Option<i64>,
}

/// The cluster CA of this node.
pub struct ClusterAuthority {
    files: ClusterFiles,
    ca_pem: String,
    ca_der: Vec<u8>,
    key: KeyPair,
}

impl ClusterAuthority {
    /// Makes the cluster CA and this node's own certificate (`motey cluster init`).
    pub fn init(
        files: &ClusterFiles,
        node_id: &str,
        node_lifetime: Duration,
    ) -> Result<ClusterAuthority, ClusterError> {
        if files.ca_key().exists() {
            return Err(ClusterError::AlreadyInitialized(files.ca_key()));
        }
        if files.is_member() {
            // A CA made here would replace the identity this node joined with.
            return Err(ClusterError::Invalid(format!(
                "this node already joined a cluster ({}); a cluster CA is made on its first node",
                files.dir().display()
            )));
        }
        if !super::valid_node_id(node_id) {
            return Err(ClusterError::Invalid(format!(
                "node id {node_id:?} cannot be named in a certificate"
            )));
        }
        files.create_dir()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut name);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Motey cluster CA {}", hex::encode(name)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = OffsetDateTime::now_utc() + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let certificate = params.self_signed(&key)?;
        files.write_private(&files.ca_key(), &key.serialize_pem())?;
        files.write_private(&files.ca_cert(), &certificate.pem())?;
        let authority = ClusterAuthority::load(files)?;
        authority.sign_revocations(&mut Ledger::default())?;
        let node_key = KeyPair::generate()?;
        let request = NodeIdentity::request_for(&node_key, node_id)?;
        let issued = authority.issue(&request, node_id, node_lifetime)?;
        files.write_private(&files.node_key(), &node_key.serialize_pem())?;
        files.write_private(&files.node_cert(), &issued.pem)?;
        Ok(authority)
    }

    /// The CA kept in `ca.pem` and `ca-key.pem`.
    pub fn load(files: &ClusterFiles) -> Result<ClusterAuthority, ClusterError> {
        if !files.ca_key().exists() {
            return Err(ClusterError::NotAnAuthority(files.ca_key()));
        }
        let ca_pem = files.read(&files.ca_cert())?;
        let key = KeyPair::from_pem(&files.read(&files.ca_key())?)?;
        let ca_der = pem_to_der(&ca_pem, "CERTIFICATE")?;
        Ok(ClusterAuthority {
            files: files.clone(),
            ca_pem,
            ca_der,
            key,
        })
    }

    pub fn files(&self) -> &ClusterFiles {
        &self.files
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate, lowercase hex: what join tokens carry.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.ca_der))
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, ClusterError> {
        Ok(Issuer::from_ca_cert_pem(&self.ca_pem, &self.key)?)
    }

    /// A node certificate for the key of `request_pem` (whose signature proves that the
    /// requester holds it), naming `node_id`.
    pub fn issue(
        &self,
        request_pem: &str,
        node_id: &str,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, ClusterError> {
        if !super::valid_node_id(node_id) {
            return Err(ClusterError::Invalid(format!(
                "node id {node_id:?} cannot be named in a certificate"
            )));
        }
        let mut ledger = self.ledger()?;
        if ledger
            .nodes
            .get(node_id)
            .is_some_and(|entry| entry.revoked_at.is_some())
        {
            return Err(ClusterError::NodeRevoked(node_id.to_owned()));
        }
        let mut request = CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|error| ClusterError::Invalid(format!("certificate request: {error}")))?;
        let serial = random_serial();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:motey:node:{node_id}")
                .try_into()
                .map_err(|_| ClusterError::Invalid("node id is not ASCII".into()))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A node certificate is good for client authentication only, so that it cannot
        // pass for the CA node's HTTPS server when another node joins.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = OffsetDateTime::now_utc() + lifetime;
        params.serial_number = Some(serial.clone());
        params.use_authority_key_identifier_extension = true;
        request.params = params;
        let certificate = request.signed_by(&self.issuer()?)?;
        let serial_hex = hex::encode(normalized_serial(&serial.to_bytes()));
        ledger
            .nodes
            .entry(node_id.to_owned())
            .or_default()
            .serials
            .push(serial_hex.clone());
        self.save_ledger(&ledger)?;
        tracing::info!(target: "motey::audit", node = node_id, serial = %serial_hex, "issued a node certificate");
        Ok(IssuedCertificate {
            not_after: CertificateFacts::read(certificate.der())?.not_after,
            pem: certificate.pem(),
            serial_hex,
        })
    }

    /// A certificate for this node's HTTPS server, under the CA (so that a joining node
    /// checks it against the CA fingerprint in its token): the chain (leaf, CA) and key.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
    ) -> Result<(String, String), ClusterError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "motey REST API");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_after = OffsetDateTime::now_utc() + CA_LIFETIME;
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(&key, &self.issuer()?)?;
        Ok((
            format!("{}{}", certificate.pem(), self.ca_pem),
            key.serialize_pem(),
        ))
    }

    /// Revokes every certificate issued to `node_id` and signs the new revocation list.
    /// Returns how many certificates it revoked.
    pub fn revoke(&self, node_id: &str) -> Result<usize, ClusterError> {
        let mut ledger = self.ledger()?;
        let Some(entry) = ledger.nodes.get_mut(node_id) else {
            return Err(ClusterError::Invalid(format!(
                "this CA never issued a certificate to node {node_id:?}"
            )));
        };
        entry.revoked_at.get_or_insert_with(super::now_secs);
        let count = entry.serials.len();
        self.sign_revocations(&mut ledger)?;
        tracing::info!(target: "motey::audit", node = node_id, certificates = count, "revoked a node");
        Ok(count)
    }

    /// The current revocation list.
    pub fn revocations(&self) -> Result<RevocationList, ClusterError> {
        RevocationList::verify(&self.files.read(&self.files.revocations())?, &self.ca_der)
    }

    /// Signs a new revocation list (a higher number) from the ledger and writes it.
    fn sign_revocations(&self, ledger: &mut Ledger) -> Result<(), ClusterError> {
        ledger.revocations_number += 1;
        let mut revoked = Vec::new();
        for entry in ledger.nodes.values() {
            let Some(at) = entry.revoked_at else { continue };
            let at = OffsetDateTime::from_unix_timestamp(at)
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            for serial in &entry.serials {
                let bytes = hex::decode(serial)
                    .map_err(|_| ClusterError::Invalid(format!("ledger serial {serial}")))?;
                revoked.push(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: at,
                    reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                });
            }
        }
        let now = OffsetDateTime::now_utc();
        let list = CertificateRevocationListParams {
            this_update: now,
            next_update: now + REVOCATIONS_LIFETIME,
            crl_number: SerialNumber::from(ledger.revocations_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer()?)?;
        self.save_ledger(ledger)?;
        self.files
            .write_private(&self.files.revocations(), &list.pem()?)
    }

    fn ledger(&self) -> Result<Ledger, ClusterError> {
        let path = self.files.ledger();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|error| ClusterError::Invalid(format!("{}: {error}", path.display()))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(error) => Err(super::files::file_error(&path)(error)),
        }
    }

    fn save_ledger(&self, ledger: &Ledger) -> Result<(), ClusterError> {
        let text = serde_json::to_string_pretty(ledger).expect("the ledger serializes");
        self.files.write_private(&self.files.ledger(), &text)
    }
}

/// 16 random bytes, positive as DER reads them.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}
