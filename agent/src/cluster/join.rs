//! Joining a cluster: the new node makes its key pair, sends a certificate request with
//! the join token to the CA node's REST API (`POST /v1/cluster/join`, HTTPS) and receives
//! its node certificate. Before the token's secret is sent, the CA node's HTTPS
//! certificate must chain to the CA whose SHA-256 the token carries; the key never leaves
//! the node.

use std::sync::Arc;
use std::time::Duration;

use rcgen::KeyPair;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::identity::pem_to_der;
use super::token::JoinToken;
use super::{ClusterAuthority, ClusterError, ClusterFiles, NodeIdentity, RevocationList};

/// Body of `POST /v1/cluster/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// `<id>.<secret>` of the join token (the CA fingerprint stays with the joining node).
    pub token: String,
    pub node_id: String,
    /// PKCS#10 certificate request (PEM) for the node's key.
    pub csr: String,
}

/// Answer to a successful join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub certificate: String,
    pub ca_certificate: String,
    pub revocations: String,
    /// The cluster key, for the broker login and the peer protocol v1 while nodes still
    /// speak it (see SECURITY.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key: Option<String>,
}

/// Admits a node on the CA node: redeems the token, then issues the certificate.
pub fn admit(
    authority: &ClusterAuthority,
    request: &JoinRequest,
    lifetime: Duration,
    cluster_key: Option<String>,
) -> Result<JoinResponse, ClusterError> {
    let (id, secret) = request
        .token
        .split_once('.')
        .ok_or(super::token::TokenError::Malformed(
            "no `.` between id and secret",
        ))?;
    super::token::TokenBook::new(authority.files().clone()).redeem(
        id,
        secret,
        super::now_secs(),
    )?;
    let issued = authority.issue(&request.csr, &request.node_id, lifetime)?;
    tracing::info!(target: "motey::audit", node = %request.node_id, token = id, "a node joined with a token");
    Ok(JoinResponse {
        node_id: request.node_id.clone(),
        certificate: issued.pem,
        ca_certificate: authority.ca_pem().to_owned(),
        revocations: authority.revocations()?.pem().to_owned(),
        cluster_key,
    })
}

/// Why `motey join` failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the CA node refused to admit this node ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the CA node at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "this node already is a member of a cluster ({0}); remove that directory to join another"
    )]
    AlreadyMember(std::path::PathBuf),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What a node that joined knows.
#[derive(Debug)]
pub struct Joined {
    pub node_id: String,
    pub not_after: i64,
    pub cluster_key: bool,
}

/// Joins the cluster of `token` through its CA node at `server` (`HOST:PORT`), and keeps
/// the node's identity in `files`; the cluster key (if handed over) goes to `key_file`.
pub async fn join(
    files: &ClusterFiles,
    key_file: &std::path::Path,
    token: &JoinToken,
    server: &str,
    node_id: &str,
) -> Result<Joined, JoinError> {
    if files.is_member() {
        return Err(JoinError::AlreadyMember(files.dir().to_owned()));
    }
    let key = KeyPair::generate().map_err(ClusterError::from)?;
    let request = JoinRequest {
        token: format!("{}.{}", token.id, token.secret),
        node_id: node_id.to_owned(),
        csr: NodeIdentity::request_for(&key, node_id)?,
    };
    let answer: JoinResponse =
        post_to_ca(server, &token.ca_fingerprint, "/v1/cluster/join", &request).await?;
    let ca_der = pem_to_der(&answer.ca_certificate, "CERTIFICATE")?;
    if hex::encode(Sha256::digest(&ca_der)) != token.ca_fingerprint {
        return Err(ClusterError::Invalid(
            "the CA node answered with another CA than the token names".into(),
        )
        .into());
    }
    RevocationList::verify(&answer.revocations, &ca_der)?;
    let identity = NodeIdentity::from_parts(answer.certificate.clone(), key)?;
    files.create_dir()?;
    files.write_private(&files.node_key(), &identity.key_pem())?;
    files.write_private(&files.node_cert(), &answer.certificate)?;
    files.write_private(&files.ca_cert(), &answer.ca_certificate)?;
    files.write_private(&files.revocations(), &answer.revocations)?;
    // The certificate must pass the checks every member makes.
    super::Membership::load(files)?;
    files.write_private(&files.ca_server(), &format!("{server}\n"))?;
    if let Some(cluster_key) = &answer.cluster_key {
        files.write_private(key_file, &format!("{cluster_key}\n"))?;
    }
    Ok(Joined {
        node_id: identity.node_id().to_string(),
        not_after: identity.not_after(),
        cluster_key: answer.cluster_key.is_some(),
    })
}

/// Posts `body` to the CA node's REST API at `server` over HTTPS pinned to the CA.
pub(crate) async fn post_to_ca<B: Serialize, R: serde::de::DeserializeOwned>(
    server: &str,
    ca_fingerprint: &str,
    path: &str,
    body: &B,
) -> Result<R, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        server: server.to_owned(),
        reason,
    };
    let tls = pinned_to_ca(ca_fingerprint).map_err(|e| unreachable(e.to_string()))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let response = http
        .post(format!("https://{server}{path}"))
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(error_chain(&e)))?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if status != 200 {
        return Err(JoinError::Refused {
            status,
            code: body["error"].as_str().unwrap_or("unknown").to_owned(),
            message: body["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    serde_json::from_value(body).map_err(|e| unreachable(format!("unexpected answer: {e}")))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A TLS client that accepts a server certificate only if it chains (for the name
/// connected to, for server authentication) to the CA the server presents in its chain
/// and whose SHA-256 is `ca_fingerprint`.
pub fn pinned_to_ca(ca_fingerprint: &str) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crate::api::tls::provider();
    let verifier = PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex::encode(Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server presents no certificate of the CA {} named in the token \
                     (is it the CA node, and does it serve the certificate `motey cluster init` made?)",
                    self.fingerprint
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
