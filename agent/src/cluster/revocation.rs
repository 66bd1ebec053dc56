//! The CA-signed list of revoked node certificates: a standard X.509 CRL, numbered so
//! that a node keeps the newest one it has seen (an old list replayed on the MQTT topic
//! cannot un-revoke anyone).

use std::collections::HashSet;

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::identity::{normalized_serial, pem_to_der};
use super::{ClusterError, TrustRefusal};

/// A verified revocation list.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    pem: String,
    number: u64,
    serials: HashSet<Vec<u8>>,
}

impl RevocationList {
    /// Reads a list (PEM) and checks that the CA signed it.
    pub fn verify(pem: &str, ca_der: &[u8]) -> Result<RevocationList, ClusterError> {
        let der = pem_to_der(pem, "X509 CRL")?;
        let (_, list) = CertificateRevocationList::from_der(&der)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        let (_, ca) = X509Certificate::from_der(ca_der)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        if list.issuer().as_raw() != ca.subject().as_raw() {
            return Err(TrustRefusal::UnknownIssuer.into());
        }
        list.verify_signature(ca.public_key())
            .map_err(|_| TrustRefusal::BadSignature)?;
        let number = list
            .crl_number()
            .and_then(|number| number.to_u64_digits().first().copied())
            .unwrap_or(0);
        let serials = list
            .iter_revoked_certificates()
            .map(|revoked| normalized_serial(revoked.raw_serial()))
            .collect();
        Ok(RevocationList {
            pem: pem.to_owned(),
            number,
            serials,
        })
    }

    /// The CRL number: higher is newer.
    pub fn number(&self) -> u64 {
        self.number
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.serials.contains(&normalized_serial(serial))
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}
