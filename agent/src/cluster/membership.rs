//! What every member of a cluster knows: the CA certificate, its own identity and the
//! newest revocation list; and the check of another node's certificate against them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::{pem_to_der, CertificateFacts};
use super::{ClusterError, ClusterFiles, NodeIdentity, RevocationList, TrustRefusal};
use crate::domain::NodeId;

/// A node whose certificate was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: NodeId,
    pub serial: Vec<u8>,
    pub not_after: i64,
}

/// This node's membership of its cluster; cheap to clone, shared by discovery, the peer
/// sessions and the REST API.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    files: ClusterFiles,
    ca_der: Vec<u8>,
    identity: RwLock<Arc<NodeIdentity>>,
    revocations: RwLock<RevocationList>,
    /// The certificate serial each node last proved itself with.
    members: Mutex<HashMap<NodeId, Vec<u8>>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Membership({})", self.node_id())
    }
}

impl Membership {
    /// The membership kept in `<data_dir>/cluster/`.
    pub fn load(files: &ClusterFiles) -> Result<Membership, ClusterError> {
        if !files.is_member() {
            return Err(ClusterError::NotJoined(files.node_cert()));
        }
        let ca_der = pem_to_der(&files.read(&files.ca_cert())?, "CERTIFICATE")?;
        let identity = NodeIdentity::load(files)?;
        let revocations = match std::fs::read_to_string(files.revocations()) {
            Ok(pem) => RevocationList::verify(&pem, &ca_der)?,
            Err(_) => RevocationList::default(),
        };
        let membership = Membership {
            inner: Arc::new(Inner {
                files: files.clone(),
                ca_der,
                identity: RwLock::new(Arc::new(identity)),
                revocations: RwLock::new(revocations),
                members: Mutex::new(HashMap::new()),
            }),
        };
        // This node's own certificate must pass the checks it makes of others.
        membership.verify_certificate(membership.identity().certificate_der())?;
        Ok(membership)
    }

    pub fn files(&self) -> &ClusterFiles {
        &self.inner.files
    }

    pub fn identity(&self) -> Arc<NodeIdentity> {
        self.inner
            .identity
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.identity().node_id().clone()
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.inner.ca_der
    }

    /// SHA-256 of the CA certificate, lowercase hex.
    pub fn ca_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.inner.ca_der))
    }

    /// Takes a renewed certificate (and key) of this node into use.
    pub fn replace_identity(&self, identity: NodeIdentity) {
        *self
            .inner
            .identity
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(identity);
    }

    /// Checks a node certificate: issued by this cluster's CA, valid now, naming a node
    /// id, not revoked. Remembers which certificate the node proved itself with, for
    /// [`Membership::still_trusted`].
    pub fn verify_certificate(&self, der: &[u8]) -> Result<Member, TrustRefusal> {
        let facts = CertificateFacts::read(der)?;
        let node_id = facts.node_id()?;
        let (_, ca) = X509Certificate::from_der(&self.inner.ca_der)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        if facts.issuer_raw != ca.subject().as_raw() || facts.subject_raw == facts.issuer_raw {
            return Err(TrustRefusal::UnknownIssuer);
        }
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|error| TrustRefusal::Malformed(error.to_string()))?;
        certificate
            .verify_signature(Some(ca.public_key()))
            .map_err(|_| TrustRefusal::UnknownIssuer)?;
        let now = super::now_secs();
        if now < facts.not_before {
            return Err(TrustRefusal::NotYetValid {
                node: node_id.to_string(),
                not_before: facts.not_before,
            });
        }
        if now > facts.not_after {
            return Err(TrustRefusal::Expired {
                node: node_id.to_string(),
                not_after: facts.not_after,
            });
        }
        // Remembered before the revocation check, so that a revoked node is known as
        // revoked even to a node that never heard of it before.
        self.inner
            .members
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(node_id.clone(), facts.serial.clone());
        if self.revocations().is_revoked(&facts.serial) {
            return Err(TrustRefusal::Revoked {
                node: node_id.to_string(),
            });
        }
        Ok(Member {
            node_id,
            serial: facts.serial,
            not_after: facts.not_after,
        })
    }

    /// Checks `signature` of `message` by the node of `certificate_der`.
    pub fn verify_signed(
        &self,
        certificate_der: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<Member, TrustRefusal> {
        let member = self.verify_certificate(certificate_der)?;
        let facts = CertificateFacts::read(certificate_der)?;
        super::identity::verify_signature(&facts.public_key, message, signature)?;
        Ok(member)
    }

    /// Whether `node` proved itself with a certificate that is not revoked since.
    pub fn still_trusted(&self, node: &NodeId) -> bool {
        let serial = self
            .inner
            .members
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(node)
            .cloned();
        serial.is_some_and(|serial| !self.revocations().is_revoked(&serial))
    }

    /// Whether `node` proved itself with a certificate that is revoked now (a node never
    /// heard of is not).
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        let serial = self
            .inner
            .members
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(node)
            .cloned();
        serial.is_some_and(|serial| self.revocations().is_revoked(&serial))
    }

    pub fn revocations(&self) -> RevocationList {
        self.inner
            .revocations
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Takes a revocation list received from the cluster if the CA signed it and it is
    /// newer than the one held; keeps it in `revocations.pem`. Returns the known nodes it
    /// revokes (`None`: not newer, nothing changed).
    pub fn apply_revocations(&self, pem: &str) -> Result<Option<Vec<NodeId>>, ClusterError> {
        let list = RevocationList::verify(pem, &self.inner.ca_der)?;
        {
            let mut held = self
                .inner
                .revocations
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            if list.number() <= held.number() {
                return Ok(None);
            }
            *held = list.clone();
        }
        if !self.inner.files.is_authority() {
            self.inner
                .files
                .write_private(&self.inner.files.revocations(), pem)?;
        }
        let revoked = self
            .inner
            .members
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .filter(|(_, serial)| list.is_revoked(serial))
            .map(|(node, _)| node.clone())
            .collect();
        Ok(Some(revoked))
    }
}
