//! This node's key pair and certificate, and reading what a node certificate says.

use rcgen::{KeyPair, SigningKey};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ClusterError, ClusterFiles, TrustRefusal};
use crate::domain::NodeId;

/// This node's certificate (issued by the cluster CA) and its private key.
pub struct NodeIdentity {
    node_id: NodeId,
    certificate_der: Vec<u8>,
    certificate_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        write!(f, "NodeIdentity({})", self.node_id)
    }
}

impl NodeIdentity {
    /// The identity kept in `node.pem` and `node-key.pem`.
    pub fn load(files: &ClusterFiles) -> Result<NodeIdentity, ClusterError> {
        if !files.node_cert().exists() {
            return Err(ClusterError::NotJoined(files.node_cert()));
        }
        let certificate_pem = files.read(&files.node_cert())?;
        let key_pem = files.read(&files.node_key())?;
        let key = KeyPair::from_pem(&key_pem)?;
        NodeIdentity::from_parts(certificate_pem, key)
    }

    pub fn from_parts(certificate_pem: String, key: KeyPair) -> Result<NodeIdentity, ClusterError> {
        let certificate_der = pem_to_der(&certificate_pem, "CERTIFICATE")?;
        let facts = CertificateFacts::read(&certificate_der)?;
        if facts.public_key != key.public_key_raw() {
            return Err(ClusterError::Invalid(
                "the node certificate is not of this node's key".into(),
            ));
        }
        Ok(NodeIdentity {
            node_id: facts.node_id()?,
            certificate_der,
            certificate_pem,
            key,
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The private key (PEM), to be written 0600 and nowhere else.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Unix time the certificate expires.
    pub fn not_after(&self) -> i64 {
        CertificateFacts::read(&self.certificate_der)
            .map(|facts| facts.not_after)
            .unwrap_or(0)
    }

    /// Unix time the certificate became valid.
    pub fn not_before(&self) -> i64 {
        CertificateFacts::read(&self.certificate_der)
            .map(|facts| facts.not_before)
            .unwrap_or(0)
    }

    /// An ECDSA P-256 signature (ASN.1) of `message` by this node's key.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key
            .sign(message)
            .expect("signing with an ECDSA P-256 key does not fail")
    }

    /// A certificate request for this node's key naming `node_id` (what `motey join`
    /// and renewal send to the CA).
    pub fn request_for(key: &KeyPair, node_id: &str) -> Result<String, ClusterError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_id);
        Ok(params.serialize_request(key)?.pem()?)
    }
}

/// What the checks of a node certificate need from it.
pub(crate) struct CertificateFacts {
    pub common_name: Option<String>,
    pub is_ca: bool,
    pub serial: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub public_key: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_raw: Vec<u8>,
}

impl CertificateFacts {
    pub fn read(der: &[u8]) -> Result<CertificateFacts, TrustRefusal> {
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        let common_name = certificate
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .map(str::to_owned);
        Ok(CertificateFacts {
            common_name,
            is_ca: certificate.is_ca(),
            serial: normalized_serial(certificate.raw_serial()),
            not_before: certificate.validity().not_before.timestamp(),
            not_after: certificate.validity().not_after.timestamp(),
            public_key: certificate.public_key().subject_public_key.data.to_vec(),
            issuer_raw: certificate.issuer().as_raw().to_vec(),
            subject_raw: certificate.subject().as_raw().to_vec(),
        })
    }

    /// The node id the certificate names (its common name).
    pub fn node_id(&self) -> Result<NodeId, TrustRefusal> {
        match &self.common_name {
            Some(name) if !self.is_ca && super::valid_node_id(name) => Ok(NodeId(name.clone())),
            _ => Err(TrustRefusal::NotANode),
        }
    }
}

/// A serial number without leading zero bytes (DER adds one when the high bit is set).
pub(crate) fn normalized_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|byte| *byte != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

/// The DER content of the first PEM block labelled `label`.
pub(crate) fn pem_to_der(pem: &str, label: &str) -> Result<Vec<u8>, ClusterError> {
    let invalid = || ClusterError::Invalid(format!("no PEM {label} found"));
    let mut reader = pem.as_bytes();
    for item in std::iter::from_fn(|| rustls_pemfile::read_one(&mut reader).transpose()) {
        match (item.map_err(|_| invalid())?, label) {
            (rustls_pemfile::Item::X509Certificate(der), "CERTIFICATE") => return Ok(der.to_vec()),
            (rustls_pemfile::Item::Crl(der), "X509 CRL") => return Ok(der.to_vec()),
            _ => continue,
        }
    }
    Err(invalid())
}

/// Verifies an ECDSA P-256 signature by the key of a certificate.
pub(crate) fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), TrustRefusal> {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key)
        .verify(message, signature)
        .map_err(|_| TrustRefusal::BadSignature)
}
