//! Messages signed by the node that sends them, carrying its certificate: discovery
//! announcements, so that a node can announce only itself.
//!
//! ```json
//! {"signed": <the message, JSON>, "cert": "<node certificate, DER, base64>", "sig": "<ECDSA P-256 over DOMAIN || signed, base64>"}
//! ```
//!
//! The signature covers the exact bytes of `signed` after a domain-separation prefix, so
//! that no signature of another context (a peer session proof) passes for an
//! announcement.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Member, Membership, NodeIdentity, TrustRefusal};

const DOMAIN: &[u8] = b"motey discovery message v1\0";

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    signed: &'a RawValue,
    cert: String,
    sig: String,
}

/// `message` (JSON) signed by this node.
pub fn seal(identity: &NodeIdentity, message: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(message).expect("a message is JSON text");
    let signed: &RawValue = serde_json::from_str(text).expect("a message to seal is valid JSON");
    let wire = Wire {
        signed,
        cert: STANDARD.encode(identity.certificate_der()),
        sig: STANDARD.encode(identity.sign(&signed_bytes(message))),
    };
    serde_json::to_vec(&wire).expect("a sealed message serializes")
}

/// The message inside `bytes` and the member who signed it, if its certificate and
/// signature hold.
pub fn open(membership: &Membership, bytes: &[u8]) -> Result<(Member, Vec<u8>), TrustRefusal> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|_| {
        TrustRefusal::Malformed("not signed by a node (from a node that has not joined?)".into())
    })?;
    let decode = |field: &str, text: &str| {
        STANDARD
            .decode(text)
            .map_err(|_| TrustRefusal::Malformed(format!("{field} is not base64")))
    };
    let certificate = decode("cert", &wire.cert)?;
    let signature = decode("sig", &wire.sig)?;
    let message = wire.signed.get().as_bytes();
    let member = membership.verify_signed(&certificate, &signed_bytes(message), &signature)?;
    Ok((member, message.to_vec()))
}

fn signed_bytes(message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + message.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(message);
    bytes
}
