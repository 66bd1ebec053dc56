//! The survey's own certificate authority (section 4.4.1): a CA, the Data API's server
//! certificate and one client certificate per measurement device, all PEM files in one
//! directory. Device certificates carry the participant's email (rfc822Name SAN and
//! subject emailAddress) and their scopes (subject OU, space separated).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::model::Scope;

/// OID of the PKCS #9 emailAddress attribute.
pub const EMAIL_ADDRESS_OID: [u64; 7] = [1, 2, 840, 113549, 1, 9, 1];

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    #[error("no CA in {0} (or not its key where --ca-key says): run `data-api pki init --dir {0}` first")]
    NoCa(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The CA loaded from its directory, able to sign server and device certificates.
pub struct CertificateAuthority {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A fresh CA valid for `days` (used by `pki init` and by tests).
    pub fn generate(common_name: &str, days: i64) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "EnergieBroker survey");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn load(dir: &Path) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::load_with_key(dir, &dir.join(CA_KEY))
    }

    /// The CA of `dir` whose private key is kept at `key_path`, e.g. on a medium
    /// outside the server's volume.
    pub fn load_with_key(dir: &Path, key_path: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_path = dir.join(CA_CERT);
        if !cert_path.exists() || !key_path.exists() {
            return Err(PkiError::NoCa(dir.to_owned()));
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(CertificateAuthority { cert_pem, issuer })
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, hosts: &[String], days: i64) -> Result<IssuedCertificate, PkiError> {
        if hosts.is_empty() {
            return Err(PkiError::Invalid {
                field: "host",
                message: "at least one --host is needed".into(),
            });
        }
        let mut params = CertificateParams::new(hosts.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "EnergieBroker survey");
        dn.push(DnType::CommonName, hosts[0].as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        self.sign(params)
    }

    /// A device (client) certificate; `validity` lets tests issue expired ones.
    pub fn issue_device(&self, device: &DeviceCertificate) -> Result<IssuedCertificate, PkiError> {
        let email = device.email.trim();
        if !crate::validate::is_email(email) {
            return Err(PkiError::Invalid {
                field: "email",
                message: format!("{email:?} is not an email address"),
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "EnergieBroker survey");
        if !device.scopes.is_empty() {
            let scopes: Vec<&str> = device.scopes.iter().map(|s| s.as_str()).collect();
            dn.push(DnType::OrganizationalUnitName, scopes.join(" "));
        }
        dn.push(DnType::CommonName, email);
        dn.push(
            DnType::CustomDnType(EMAIL_ADDRESS_OID.to_vec()),
            DnValue::Ia5String(email.try_into()?),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into()?)];
        if let Some(uuid) = device.device {
            params
                .subject_alt_names
                .push(SanType::URI(format!("urn:uuid:{uuid}").try_into()?));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = device.not_before;
        params.not_after = device.not_after;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What goes into a device certificate.
pub struct DeviceCertificate {
    pub email: String,
    /// Empty: no scopes in the certificate, the device record decides.
    pub scopes: Vec<Scope>,
    pub device: Option<Uuid>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl DeviceCertificate {
    pub fn new(email: &str, scopes: Vec<Scope>, days: i64) -> DeviceCertificate {
        let now = OffsetDateTime::now_utc();
        DeviceCertificate {
            email: email.to_owned(),
            scopes,
            device: None,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whether `pki init` made a new CA or kept the one it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    Kept,
}

/// `pki init`: idempotent, an existing CA is kept so a demo can run twice.
pub fn init(dir: &Path, days: i64) -> Result<InitOutcome, PkiError> {
    init_with_key(dir, &dir.join(CA_KEY), days)
}

/// `pki init --ca-key PATH`: the CA certificate in `dir`, its key at `key_path`.
pub fn init_with_key(dir: &Path, key_path: &Path, days: i64) -> Result<InitOutcome, PkiError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = key_path.to_owned();
    if cert_path.exists() && key_path.exists() {
        CertificateAuthority::load_with_key(dir, &key_path)?;
        return Ok(InitOutcome::Kept);
    }
    if cert_path.exists() || key_path.exists() {
        // Half a CA is unusable and replacing the other half would orphan its certificates.
        let present = if cert_path.exists() {
            &cert_path
        } else {
            &key_path
        };
        return Err(PkiError::Exists(present.clone()));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let ca = CertificateAuthority::generate("EnergieBroker survey CA", days)?;
    write_pair(&cert_path, &ca.cert_pem, &key_path, &ca.key_pem(), false)?;
    Ok(InitOutcome::Created)
}

/// `pki issue-server`: writes `server.pem` and `server-key.pem`.
pub fn issue_server(
    dir: &Path,
    hosts: &[String],
    days: i64,
    force: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    issue_server_with_key(dir, &dir.join(CA_KEY), hosts, days, force)
}

/// `pki issue-server --ca-key PATH`.
pub fn issue_server_with_key(
    dir: &Path,
    ca_key: &Path,
    hosts: &[String],
    days: i64,
    force: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let ca = CertificateAuthority::load_with_key(dir, ca_key)?;
    let (cert_path, key_path) = (dir.join(SERVER_CERT), dir.join(SERVER_KEY));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let issued = ca.issue_server(hosts, days)?;
    write_pair(
        &cert_path,
        &issued.cert_pem,
        &key_path,
        &issued.key_pem,
        force,
    )?;
    Ok((cert_path, key_path))
}

/// `pki issue-device`: writes `<name>.pem` and `<name>-key.pem` (name defaults to `device`).
pub fn issue_device(
    dir: &Path,
    device: &DeviceCertificate,
    name: Option<&str>,
    force: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    issue_device_with_key(dir, &dir.join(CA_KEY), device, name, force)
}

/// `pki issue-device --ca-key PATH`.
pub fn issue_device_with_key(
    dir: &Path,
    ca_key: &Path,
    device: &DeviceCertificate,
    name: Option<&str>,
    force: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let name = name.unwrap_or("device");
    let safe = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !name.starts_with('.');
    if !safe {
        return Err(PkiError::Invalid {
            field: "out",
            message: format!("{name:?}: use letters, digits, '-', '_', '.', '@' only"),
        });
    }
    let ca = CertificateAuthority::load_with_key(dir, ca_key)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let issued = ca.issue_device(device)?;
    write_pair(
        &cert_path,
        &issued.cert_pem,
        &key_path,
        &issued.key_pem,
        force,
    )?;
    Ok((cert_path, key_path))
}

/// SHA-256 fingerprint (hex) of the first certificate in a PEM file: what the deny-list
/// of revoked device certificates holds.
pub fn fingerprint(cert_path: &Path) -> Result<String, PkiError> {
    let pem = fs::read(cert_path).map_err(io_err(cert_path))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .ok_or_else(|| PkiError::Invalid {
            field: "cert",
            message: format!("{}: no certificate in the file", cert_path.display()),
        })?
        .map_err(io_err(cert_path))?;
    use sha2::Digest;
    Ok(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(PkiError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn write_pair(
    cert_path: &Path,
    cert: &str,
    key_path: &Path,
    key: &str,
    force: bool,
) -> Result<(), PkiError> {
    write_file(key_path, key, true, force)?;
    write_file(cert_path, cert, false, force)
}

/// Writes a file, private keys with mode 0600; `create_new` unless forced so two
/// concurrent runs never silently replace each other's keys.
pub fn write_file(path: &Path, contents: &str, private: bool, force: bool) -> Result<(), PkiError> {
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_owned())
        } else {
            PkiError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_issue_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(init(dir.path(), 365).unwrap(), InitOutcome::Created);
        let ca_before = fs::read_to_string(dir.path().join(CA_CERT)).unwrap();
        assert_eq!(init(dir.path(), 365).unwrap(), InitOutcome::Kept);
        assert_eq!(
            fs::read_to_string(dir.path().join(CA_CERT)).unwrap(),
            ca_before
        );

        issue_server(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
            30,
            false,
        )
        .unwrap();
        assert!(matches!(
            issue_server(dir.path(), &["localhost".into()], 30, false),
            Err(PkiError::Exists(_))
        ));
        issue_server(dir.path(), &["localhost".into()], 30, true).unwrap();

        let device = DeviceCertificate::new("erika@example.org", Scope::ALL.to_vec(), 30);
        let (cert, key) = issue_device(dir.path(), &device, Some("erika"), false).unwrap();
        assert!(cert.ends_with("erika.pem") && key.ends_with("erika-key.pem"));
        assert!(matches!(
            issue_device(dir.path(), &device, Some("erika"), false),
            Err(PkiError::Exists(_))
        ));
        assert!(matches!(
            issue_device(dir.path(), &device, Some("../evil"), false),
            Err(PkiError::Invalid { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
