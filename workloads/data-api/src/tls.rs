//! TLS for the Data API (section 4.4.1): rustls with optional client authentication.
//!
//! Client certificates are requested from every client but only their possession is
//! checked during the handshake (the CertificateVerify signature). Whether the chain leads
//! to the survey CA and is within its validity is decided right after the handshake with
//! the standard WebPKI verifier, so a device with a foreign or expired certificate gets a
//! 401 JSON answer naming the reason instead of a bare TLS alert, while researcher and
//! admin frontends can connect without any certificate and use their bearer token.

use std::fs;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::Scope;
use crate::privacy::DenyList;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no certificate found in PEM file")]
    NoCertificate(String),
    #[error("{0}: no private key found in PEM file")]
    NoKey(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = path.display().to_string();
    let file = fs::File::open(path).map_err(|source| TlsError::Io {
        path: name.clone(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Io {
            path: name.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(name));
    }
    Ok(certs)
}

pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let name = path.display().to_string();
    let file = fs::File::open(path).map_err(|source| TlsError::Io {
        path: name.clone(),
        source,
    })?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|source| TlsError::Io {
            path: name.clone(),
            source,
        })?
        .ok_or(TlsError::NoKey(name))
}

/// Server-side TLS material: the rustls config for the acceptor and the verifier that
/// judges client certificates after the handshake.
#[derive(Clone)]
pub struct TlsSetup {
    pub server_config: Arc<rustls::ServerConfig>,
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// Revoked device certificates, refused at the handshake.
    pub deny_list: Arc<DenyList>,
}

impl TlsSetup {
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsSetup, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca_cert in load_certificates(ca)? {
            roots.add(ca_cert)?;
        }
        TlsSetup::new(roots, load_certificates(cert)?, load_private_key(key)?)
    }

    pub fn new(
        roots: RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsSetup, TlsError> {
        let provider = provider();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let deny_list = Arc::new(DenyList::default());
        let deferred = Arc::new(DeferredClientVerifier {
            inner: client_verifier.clone(),
            deny_list: deny_list.clone(),
        });
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(deferred)
            .with_single_cert(chain, key)?;
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // A resumed session would skip the client certificate check, and with it the
        // deny-list; devices connect once per report cycle, so resumption saves nothing.
        server_config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_config.send_tls13_tickets = 0;
        Ok(TlsSetup {
            server_config: Arc::new(server_config),
            client_verifier,
            deny_list,
        })
    }

    /// Judges the certificates a client presented and extracts its identity.
    pub fn identify(&self, peer_certificates: Option<&[CertificateDer<'_>]>) -> PeerIdentity {
        let Some((end_entity, intermediates)) = peer_certificates.and_then(|c| c.split_first())
        else {
            return PeerIdentity::Anonymous;
        };
        // Again here, in case a deny-list entry arrived between handshake and judgement.
        if self.deny_list.denies(end_entity.as_ref()) {
            return PeerIdentity::Rejected(REVOKED.into());
        }
        if let Err(e) =
            self.client_verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
        {
            return PeerIdentity::Rejected(describe_rejection(&e));
        }
        match DeviceIdentity::from_der(end_entity) {
            Ok(identity) => PeerIdentity::Device(Arc::new(identity)),
            Err(reason) => PeerIdentity::Rejected(reason),
        }
    }
}

/// Why a revoked certificate is refused.
pub const REVOKED: &str = "the client certificate has been revoked";

fn describe_rejection(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the client certificate has expired".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the client certificate is not valid yet".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the client certificate was not issued by the survey CA".into()
        }
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "the client certificate's signature does not verify against the survey CA".into()
        }
        other => format!("the client certificate was rejected: {other}"),
    }
}

/// Refuses revoked certificates during the handshake, so a revoked device cannot complete
/// a single request; accepts any other certificate (the client still has to prove it
/// holds the key) and leaves the chain decision to [`TlsSetup::identify`].
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    deny_list: Arc<DenyList>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.deny_list.denies(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Who is at the other end of a connection, as far as TLS can tell.
#[derive(Debug, Clone)]
pub enum PeerIdentity {
    /// No client certificate (frontends with bearer tokens).
    Anonymous,
    /// A certificate was presented but is not acceptable; the reason is for the client.
    Rejected(String),
    Device(Arc<DeviceIdentity>),
}

/// What a valid device certificate says.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceIdentity {
    /// Lowercased participant email.
    pub email: String,
    /// Scopes named in the certificate (subject OU); `None` leaves it to the device record.
    pub scopes: Option<Vec<Scope>>,
    /// Device named by a `urn:uuid:` URI SAN, if any.
    pub device: Option<Uuid>,
    pub not_after: DateTime<Utc>,
    /// SHA-256 of the certificate's DER encoding.
    pub fingerprint: [u8; 32],
}

impl DeviceIdentity {
    pub fn from_der(der: &CertificateDer<'_>) -> Result<DeviceIdentity, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
        let mut email = None;
        let mut device = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::RFC822Name(e) if email.is_none() => email = Some(e.to_string()),
                    GeneralName::URI(uri) => {
                        if let Some(id) = uri.strip_prefix("urn:uuid:") {
                            device = Uuid::parse_str(id).ok();
                        }
                    }
                    _ => {}
                }
            }
        }
        if email.is_none() {
            email = cert
                .subject()
                .iter_email()
                .find_map(|attr| attr.as_str().ok().map(str::to_owned));
        }
        let email = email
            .map(|e| e.trim().to_lowercase())
            .filter(|e| crate::validate::is_email(e))
            .ok_or_else(|| {
                "the client certificate carries no participant email (rfc822Name SAN or subject emailAddress)"
                    .to_owned()
            })?;
        let scopes = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|attr| attr.as_str().ok())
            .find_map(parse_scope_list);
        let not_after = Utc
            .timestamp_opt(cert.validity().not_after.timestamp(), 0)
            .single()
            .ok_or_else(|| "the client certificate has an unusable expiry date".to_owned())?;
        Ok(DeviceIdentity {
            email,
            scopes,
            device,
            not_after,
            fingerprint: Sha256::digest(der.as_ref()).into(),
        })
    }
}

/// A space (or comma) separated list of scope names; anything else is not a scope list.
fn parse_scope_list(text: &str) -> Option<Vec<Scope>> {
    let scopes: Vec<Scope> = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (!scopes.is_empty()).then_some(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, DeviceCertificate};

    #[test]
    fn device_identity_is_read_from_issued_certificate() {
        let ca = CertificateAuthority::generate("test CA", 1).unwrap();
        let device_uuid = Uuid::new_v4();
        let mut spec = DeviceCertificate::new(
            "Erika@Example.org",
            vec![Scope::Consent, Scope::MeasurementWrite],
            1,
        );
        spec.device = Some(device_uuid);
        let issued = ca.issue_device(&spec).unwrap();
        let der = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let identity = DeviceIdentity::from_der(&der).unwrap();
        assert_eq!(identity.email, "erika@example.org");
        assert_eq!(
            identity.scopes,
            Some(vec![Scope::Consent, Scope::MeasurementWrite])
        );
        assert_eq!(identity.device, Some(device_uuid));
    }

    #[test]
    fn scope_lists_are_strict() {
        assert_eq!(
            parse_scope_list("account household"),
            Some(vec![Scope::Account, Scope::Household])
        );
        assert_eq!(parse_scope_list("Survey devices"), None);
        assert_eq!(parse_scope_list(""), None);
    }
}
