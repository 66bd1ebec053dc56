//! HTTPS for the REST API and the web client. Tokens cross the household's network, so
//! the server speaks TLS unless it listens on loopback only (or `[WEBSERVER] tls = off`).
//! Without a certificate from the admin (`tls_cert_file`, `tls_key_file`) the agent
//! makes a self-signed one on its first start and keeps it in the data directory; clients
//! pin its SHA-256 fingerprint, which the agent logs at start and `motey status` prints.
//!
//! The `motey` CLI verifies what it connects to ([`client_config`]): the fingerprint
//! pinned, or a CA file; it never accepts an unverified certificate.

use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{Config, Webserver};

/// File names of the generated certificate and key in the data directory.
pub const GENERATED_CERT: &str = "rest-cert.pem";
pub const GENERATED_KEY: &str = "rest-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}: no certificate found in the PEM file")]
    NoCertificate(PathBuf),
    #[error("{0}: no private key found in the PEM file")]
    NoKey(PathBuf),
    #[error("cannot generate the REST certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    Fingerprint(String),
}

fn file_error(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |reason| TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the certificate the REST server presents is: the admin's, else the generated one.
pub fn certificate_path(config: &Config) -> PathBuf {
    config
        .webserver
        .tls_cert_file
        .clone()
        .unwrap_or_else(|| config.general.data_dir.join(GENERATED_CERT))
}

/// The server's certificate chain and key: the configured files, else the generated ones
/// (made now if missing).
pub fn server_identity(config: &Config) -> Result<ServerIdentity, TlsError> {
    let webserver = &config.webserver;
    let (cert_path, key_path) = match (&webserver.tls_cert_file, &webserver.tls_key_file) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = &config.general.data_dir;
            let paths = (dir.join(GENERATED_CERT), dir.join(GENERATED_KEY));
            if !paths.0.exists() || !paths.1.exists() {
                generate(&paths.0, &paths.1, &subject_names(config))?;
            }
            paths
        }
    };
    let chain = load_certificates(&cert_path)?;
    let key = load_private_key(&key_path)?;
    Ok(ServerIdentity {
        fingerprint: fingerprint(&chain[0]),
        chain,
        key,
        cert_path,
    })
}

/// What the REST server presents.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

impl ServerIdentity {
    pub fn server_config(self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain, self.key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The names clients may reach the node by: its name, localhost, loopback and the
/// configured address if it is a specific one.
pub fn subject_names(config: &Config) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let node_name = &config.general.node_name;
    let is_host_name = !node_name.is_empty()
        && node_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if is_host_name && !names.contains(node_name) {
        names.push(node_name.clone());
    }
    let ip: IpAddr = config.webserver.ip;
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    names
}

/// A self-signed certificate for `names`; the key is written readable by its owner only.
fn generate(cert_path: &Path, key_path: &Path, names: &[String]) -> Result<(), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
    crate::app::write_private(key_path, &generated.signing_key.serialize_pem())
        .map_err(file_error(key_path))?;
    std::fs::write(cert_path, generated.cert.pem()).map_err(file_error(cert_path))?;
    tracing::info!(path = %cert_path.display(), names = ?names, "generated the REST API's certificate");
    Ok(())
}

/// Makes the generated REST certificate anew under the cluster CA, so that joining
/// nodes check it against the CA fingerprint in their token. An admin's own certificate
/// (`tls_cert_file`) is left alone: joining then needs it to chain to the cluster CA.
pub fn issue_under_cluster_ca(
    config: &Config,
    authority: &crate::cluster::ClusterAuthority,
) -> Result<Option<String>, crate::cluster::ClusterError> {
    if config.webserver.tls_cert_file.is_some() {
        return Ok(None);
    }
    let dir = &config.general.data_dir;
    let (chain, key) = authority.issue_server_certificate(&subject_names(config))?;
    crate::app::write_private(&dir.join(GENERATED_KEY), &key).map_err(|error| {
        crate::cluster::ClusterError::File {
            path: dir.join(GENERATED_KEY),
            reason: error.to_string(),
        }
    })?;
    std::fs::write(dir.join(GENERATED_CERT), &chain).map_err(|error| {
        crate::cluster::ClusterError::File {
            path: dir.join(GENERATED_CERT),
            reason: error.to_string(),
        }
    })?;
    Ok(Some(
        fingerprint_of_file(&dir.join(GENERATED_CERT)).unwrap_or_default(),
    ))
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(file_error(path))?;
    let chain = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error(path))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = std::fs::File::open(path).map_err(file_error(path))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(file_error(path))?
        .ok_or_else(|| TlsError::NoKey(path.to_owned()))
}

/// SHA-256 of a certificate, as `openssl x509 -fingerprint -sha256` writes it
/// (`AB:CD:...`).
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    Sha256::digest(certificate.as_ref())
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the first certificate in a PEM file.
pub fn fingerprint_of_file(path: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(&load_certificates(path)?[0]))
}

/// A fingerprint as an admin may paste it (colons or not, any case) in the form
/// [`fingerprint`] writes.
pub fn normalize_fingerprint(text: &str) -> Result<String, TlsError> {
    let digits: String = text
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("SHA256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(TlsError::Fingerprint(text.to_owned()));
    }
    Ok(digits
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":"))
}

/// Whether the REST server speaks TLS with these settings.
pub fn serves_tls(webserver: &Webserver) -> bool {
    use crate::config::TlsMode;
    match webserver.tls {
        TlsMode::On => true,
        TlsMode::Off => false,
        TlsMode::Auto => !webserver.ip.is_loopback(),
    }
}

/// How the CLI trusts the agent's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pinned(String),
    /// Certificates issued by this CA, for the host name connected to.
    Authority(PathBuf),
}

/// A client configuration that accepts only what `trust` allows.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::Pinned(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                expected: normalize_fingerprint(expected)?,
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::Authority(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in load_certificates(ca_file)? {
                roots.add(certificate)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// Accepts one certificate, known by its fingerprint: names and issuers do not matter,
/// the handshake's signatures are still checked against its key.
#[derive(Debug)]
struct PinnedCertificate {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the agent's certificate has the fingerprint {presented}, not the pinned {}",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalized() {
        let written = "ab".repeat(32);
        let expected = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&written).unwrap(), expected);
        assert_eq!(normalize_fingerprint(&expected).unwrap(), expected);
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", written)).unwrap(),
            expected
        );
        assert!(normalize_fingerprint("AB:CD").is_err());
        assert!(normalize_fingerprint(&"zz".repeat(32)).is_err());
    }
}
