//! The JSON envelopes cluster messages travel in, and the checks a receiver makes before
//! it believes one. Discovery announcements over MQTT are version 1, signed with the
//! cluster key (HMAC-SHA256, [`Envelope`]); peer requests and replies are version 2
//! ([`Received`], [`peer_message`]), carried inside a Noise session that encrypts and
//! authenticates them, so they carry no MAC but name their recipient (`to`). Both carry a
//! timestamp close to the receiver's clock and a nonce it has not seen before. See
//! `PROTOCOL.md` beside this file.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};

mod replay;

pub use replay::{ReplayGuard, Stamped};

/// Version of the signed envelope of discovery announcements; a receiver refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the peer protocol's envelope (inside a Noise session); a receiver refuses
/// any other, version 1 with a message naming the upgrade.
pub const PEER_PROTOCOL_VERSION: u32 = 2;

/// Largest encoded envelope a node accepts.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// How far a message's timestamp may be from the receiver's clock (either way).
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(30);

// Bounds on the short string fields, so that a hostile message cannot make the receiver
// hash or remember megabytes before it is refused.
const MAX_KIND_LEN: usize = 64;
const MAX_ID_LEN: usize = 128;
const MAX_SENDER_LEN: usize = 256;
const MAX_NONCE_LEN: usize = 128;

/// The secret shared by the nodes of one cluster. It keys the HMAC of every message; its
/// value never appears in a log line or a `Debug` output (only its fingerprint does).
#[derive(Clone)]
pub struct ClusterKey {
    mac: Hmac<Sha256>,
    fingerprint: Arc<str>,
}

impl ClusterKey {
    /// A key from its secret text (as written in `[CLUSTER] key` or the key file).
    pub fn from_secret(secret: &str) -> ClusterKey {
        let secret = secret.trim();
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        let digest = Sha256::digest(secret.as_bytes());
        ClusterKey {
            mac,
            fingerprint: hex::encode(&digest[..6]).into(),
        }
    }

    /// A fresh random secret: 32 bytes as 64 hex digits.
    pub fn generate_secret() -> String {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// A short, non-secret name of the key, to tell in logs which key a node uses.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A secret for `purpose` that every holder of the key computes alike (such as the
    /// embedded broker's password), so that nothing more needs to be copied between nodes.
    pub fn derive_secret(&self, purpose: &str) -> String {
        hex::encode(self.tag(purpose.as_bytes()).finalize().into_bytes())
    }

    /// HMAC-SHA256 of `data` under the key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        self.tag(data).finalize().into_bytes().into()
    }

    fn tag(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint)
    }
}

/// Why a message was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not a valid envelope: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {got} (this node speaks {speaks})")]
    UnsupportedVersion { got: u32, speaks: u32 },
    #[error("message is not signed")]
    MissingMac,
    #[error("signature does not match (forged, altered or signed with another cluster key)")]
    Forged,
    #[error("timestamp is {skew_ms} ms away from this node's clock (allowed: {window_ms} ms); check the clocks")]
    Stale { skew_ms: i64, window_ms: i64 },
    #[error("message was already received once (replay)")]
    Replayed,
    #[error("too many messages to remember for replay protection; try again later")]
    Overloaded,
}

/// One message: a versioned envelope with a type, a request id, the sending node, a
/// timestamp, a nonce, a payload and the MAC over all of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: String,
    /// The request id; a reply carries the id of its request.
    pub id: String,
    /// Id of the sending node.
    pub sender: String,
    /// Unix time in milliseconds when the message was made.
    pub ts: i64,
    /// Random text, unique per message (replay protection).
    pub nonce: String,
    #[serde(default)]
    pub payload: Value,
    /// HMAC-SHA256 (hex) of the canonical form of the other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The current time as unix milliseconds.
pub fn now_ms() -> i64 {
    // Straight from the system clock: this runs four times per round trip, and a calendar
    // date is not needed for it.
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// A fresh random nonce (16 bytes, hex).
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Envelope {
    /// A new, unsigned message stamped with the current time and a fresh nonce.
    pub fn new(
        kind: impl Into<String>,
        id: impl Into<String>,
        sender: impl Into<String>,
        payload: Value,
    ) -> Envelope {
        Envelope {
            v: PROTOCOL_VERSION,
            kind: kind.into(),
            id: id.into(),
            sender: sender.into(),
            ts: now_ms(),
            nonce: new_nonce(),
            payload,
            mac: None,
        }
    }

    /// Parses bytes into an envelope, refusing anything oversized or out of shape. The
    /// MAC is not checked here: see [`Envelope::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Envelope, AuthError> {
        let envelope: Envelope = decode(bytes)?;
        envelope.check_shape()?;
        Ok(envelope)
    }

    fn check_shape(&self) -> Result<(), AuthError> {
        check_version(self.v, PROTOCOL_VERSION)?;
        check_shape(&self.kind, &self.id, &self.sender, &self.nonce)
    }

    /// The bytes the MAC covers: the envelope without `mac`, keys in the fixed order
    /// v, type, id, sender, ts, nonce, payload; object keys inside the payload sorted;
    /// no whitespace.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(64);
        write_canonical(&self.payload, &mut payload);
        canonical_form(
            self.v,
            &self.kind,
            &self.id,
            &self.sender,
            self.ts,
            &self.nonce,
            &payload,
        )
    }

    /// Signs the message with the cluster key (replacing any earlier MAC).
    pub fn sign(&mut self, key: &ClusterKey) {
        self.mac = Some(hex::encode(key.mac(&self.canonical_bytes())));
    }

    /// The message signed, as the bytes to send.
    pub fn signed_bytes(mut self, key: &ClusterKey) -> Vec<u8> {
        self.sign(key);
        self.to_bytes()
    }

    /// The message as JSON, as it is (signed or not).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes to JSON")
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, key: &ClusterKey) -> Result<(), AuthError> {
        let mac = self.mac.as_deref().ok_or(AuthError::MissingMac)?;
        let tag = hex::decode(mac).map_err(|_| AuthError::Forged)?;
        key.tag(&self.canonical_bytes())
            .verify_slice(&tag)
            .map_err(|_| AuthError::Forged)
    }
}

/// A peer message (version 2) as it arrived out of its Noise session, borrowing its
/// fields from the decrypted bytes and keeping the payload as raw JSON: a receiver checks
/// it first and then decodes the payload straight into the request or reply it carries.
#[derive(Debug, Deserialize)]
pub struct Received<'a> {
    pub v: u32,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The sending node; a receiver believes it only if it is the session's node.
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    /// The node the message is for; any other node refuses it. Read as optional so that
    /// a message of another version is refused for its version, not for lacking it.
    #[serde(borrow, default)]
    pub to: Cow<'a, str>,
    pub ts: i64,
    #[serde(borrow)]
    pub nonce: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

impl<'a> Received<'a> {
    /// Parses a decrypted peer message, refusing anything oversized, out of shape or of
    /// another version.
    pub fn parse(bytes: &'a [u8]) -> Result<Received<'a>, AuthError> {
        let received: Received = decode(bytes)?;
        check_version(received.v, PEER_PROTOCOL_VERSION)?;
        check_shape(
            &received.kind,
            &received.id,
            &received.sender,
            &received.nonce,
        )?;
        if received.to.is_empty() {
            return Err(AuthError::Malformed("field to is missing".into()));
        }
        if received.to.len() > MAX_SENDER_LEN {
            return Err(AuthError::Malformed(format!(
                "field to is longer than {MAX_SENDER_LEN} bytes"
            )));
        }
        Ok(received)
    }

    /// The payload, as raw JSON (`null` when the message has none).
    pub fn payload(&self) -> &'a RawValue {
        self.payload.unwrap_or(RawValue::NULL)
    }
}

/// The version of a message that did not parse, if it names one, so that a refusal can
/// tell an older node what to upgrade.
pub fn version_of(bytes: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u64,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .ok()
        .map(|versioned| versioned.v)
}

/// A peer message (version 2) as the bytes to encrypt and send, stamped with the current
/// time and a fresh nonce, with a payload already in canonical form (see
/// [`canonical_json`]): a reply that stays the same for many requests (a node's
/// capabilities) is not converted again for each of them.
pub fn peer_message(kind: &str, id: &str, sender: &str, to: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + payload.len());
    out.extend_from_slice(b"{\"v\":");
    write_integer(i64::from(PEER_PROTOCOL_VERSION), &mut out);
    out.extend_from_slice(b",\"type\":");
    write_json_string(kind, &mut out);
    out.extend_from_slice(b",\"id\":");
    write_json_string(id, &mut out);
    out.extend_from_slice(b",\"sender\":");
    write_json_string(sender, &mut out);
    out.extend_from_slice(b",\"to\":");
    write_json_string(to, &mut out);
    out.extend_from_slice(b",\"ts\":");
    write_integer(now_ms(), &mut out);
    out.extend_from_slice(b",\"nonce\":");
    write_json_string(&new_nonce(), &mut out);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

/// The JSON of a message, refusing oversized ones before reading them.
fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, AuthError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(AuthError::Malformed(format!(
            "{} bytes, more than the {MAX_MESSAGE_BYTES} allowed",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes).map_err(|error| AuthError::Malformed(error.to_string()))
}

fn check_version(got: u32, speaks: u32) -> Result<(), AuthError> {
    if got == speaks {
        Ok(())
    } else {
        Err(AuthError::UnsupportedVersion { got, speaks })
    }
}

fn check_shape(kind: &str, id: &str, sender: &str, nonce: &str) -> Result<(), AuthError> {
    let fields = [
        ("type", kind, MAX_KIND_LEN),
        ("id", id, MAX_ID_LEN),
        ("sender", sender, MAX_SENDER_LEN),
        ("nonce", nonce, MAX_NONCE_LEN),
    ];
    for (name, value, max) in fields {
        if value.len() > max {
            return Err(AuthError::Malformed(format!(
                "field {name} is longer than {max} bytes"
            )));
        }
    }
    if kind.is_empty() {
        return Err(AuthError::Malformed("field type is empty".into()));
    }
    if nonce.is_empty() {
        return Err(AuthError::Malformed("field nonce is empty".into()));
    }
    Ok(())
}

/// The canonical form of an envelope's fields (see [`Envelope::canonical_bytes`]), with
/// the payload given in canonical form.
fn canonical_form(
    v: u32,
    kind: &str,
    id: &str,
    sender: &str,
    ts: i64,
    nonce: &str,
    canonical_payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + canonical_payload.len());
    out.extend_from_slice(b"{\"v\":");
    write_integer(i64::from(v), &mut out);
    out.extend_from_slice(b",\"type\":");
    write_json_string(kind, &mut out);
    out.extend_from_slice(b",\"id\":");
    write_json_string(id, &mut out);
    out.extend_from_slice(b",\"sender\":");
    write_json_string(sender, &mut out);
    out.extend_from_slice(b",\"ts\":");
    write_integer(ts, &mut out);
    out.extend_from_slice(b",\"nonce\":");
    write_json_string(nonce, &mut out);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(canonical_payload);
    out.push(b'}');
    out
}

/// Whether JSON writes `bytes` other than as they are (between quotes): a quote, a
/// backslash or a control character among them. Without a branch per byte, so that it
/// runs several bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &byte| {
        found | (byte == b'"') | (byte == b'\\') | (byte < 0x20)
    })
}

fn write_integer(value: i64, out: &mut Vec<u8>) {
    use std::io::Write;
    write!(out, "{value}").expect("writing to a Vec cannot fail");
}

/// A JSON value in canonical form: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    out
}

fn write_json_string(text: &str, out: &mut Vec<u8>) {
    // Most strings here (kinds, ids, nonces) need no escapes: JSON writes them as they
    // are, and going through the serializer for them was a visible cost per message.
    let plain = !needs_escape(text.as_bytes());
    if plain {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    }
}

/// Writes a JSON value with object keys sorted, so that the bytes do not depend on how
/// the sender's JSON library orders keys.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json_string(key, out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key() -> ClusterKey {
        ClusterKey::from_secret("correct horse battery staple")
    }

    fn signed() -> Envelope {
        let mut envelope = Envelope::new(
            "image_status",
            "0f0e",
            "node-a",
            json!({"service_id": "s1", "image_id": "web", "z": [1, {"b": 2, "a": 1}]}),
        );
        envelope.sign(&key());
        envelope
    }

    #[test]
    fn signed_message_verifies_after_a_round_trip() {
        let envelope = signed();
        let parsed = Envelope::parse(&envelope.to_bytes()).unwrap();
        assert_eq!(parsed, envelope);
        parsed.verify(&key()).unwrap();
    }

    #[test]
    fn mac_does_not_depend_on_key_order_on_the_wire() {
        let envelope = signed();
        let mut text = String::from_utf8(envelope.to_bytes()).unwrap();
        // Reorder the payload keys as another JSON library might.
        text = text.replace(
            r#"{"image_id":"web","service_id":"s1","z":[1,{"a":1,"b":2}]}"#,
            r#"{"z":[1,{"b":2,"a":1}],"service_id":"s1","image_id":"web"}"#,
        );
        assert!(text.contains(r#""z":[1,{"b":2"#), "{text}");
        Envelope::parse(text.as_bytes())
            .unwrap()
            .verify(&key())
            .unwrap();
    }

    #[test]
    fn altered_wrong_key_and_missing_mac_are_refused() {
        let mut altered = signed();
        altered.payload["image_id"] = json!("db");
        assert_eq!(altered.verify(&key()), Err(AuthError::Forged));

        let other = ClusterKey::from_secret("another cluster's secret");
        assert_eq!(signed().verify(&other), Err(AuthError::Forged));

        let mut unsigned = signed();
        unsigned.mac = None;
        assert_eq!(unsigned.verify(&key()), Err(AuthError::MissingMac));

        let mut garbage = signed();
        garbage.mac = Some("not hex".into());
        assert_eq!(garbage.verify(&key()), Err(AuthError::Forged));
    }

    #[test]
    fn other_versions_and_oversized_fields_are_refused() {
        let mut envelope = signed();
        envelope.v = 2;
        assert_eq!(
            Envelope::parse(&envelope.to_bytes()),
            Err(AuthError::UnsupportedVersion { got: 2, speaks: 1 })
        );
        let mut envelope = signed();
        envelope.nonce = "n".repeat(1000);
        assert!(matches!(
            Envelope::parse(&envelope.to_bytes()),
            Err(AuthError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Envelope::parse(&huge),
            Err(AuthError::Malformed(_))
        ));
    }

    /// The discovery example of PROTOCOL.md, computed independently (Python's hmac and json).
    #[test]
    fn known_answer_of_the_protocol_document() {
        let key = ClusterKey::from_secret("example cluster key, 32 chars ok");
        let mut request = Envelope {
            v: 1,
            kind: "capability_request".into(),
            id: "6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a".into(),
            sender: "node-a".into(),
            ts: 1_700_000_000_000,
            nonce: "9b2f4c1d7e8a6b5c4d3e2f1a0b9c8d7e".into(),
            payload: json!({}),
            mac: None,
        };
        request.sign(&key);
        assert_eq!(
            request.mac.as_deref(),
            Some("02fe7871e2341e03c2e4689bb8832a7016a4f7a15ec7eebbea1afd0b429dc298")
        );
        let reply = Envelope::parse(
            br#"{"v":1,"type":"capability_reply","id":"6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a","sender":"node-b","ts":1700000000004,"nonce":"0a1b2c3d4e5f60718293a4b5c6d7e8f9","payload":{"digest":"5d1f0c3e8b2a4f6d","capabilities":[{"capability_type":"hardware","capability":"optical-probe"}]},"mac":"c56dc8b23bd297a546b57de4242866ca0dc091e6a3b958054cc4d9138873def1"}"#,
        )
        .unwrap();
        reply.verify(&key).unwrap();
        request.mac = None;
        assert_eq!(
            String::from_utf8(request.signed_bytes(&key)).unwrap(),
            r#"{"v":1,"type":"capability_request","id":"6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a","sender":"node-a","ts":1700000000000,"nonce":"9b2f4c1d7e8a6b5c4d3e2f1a0b9c8d7e","payload":{},"mac":"02fe7871e2341e03c2e4689bb8832a7016a4f7a15ec7eebbea1afd0b429dc298"}"#
        );
    }

    #[test]
    fn a_peer_message_reads_back_with_its_recipient() {
        let bytes = peer_message(
            "image_status",
            "0f0e",
            "node \"a\"",
            "node-b",
            &canonical_json(&json!({"service_id": "s1", "image_id": "web"})),
        );
        let received = Received::parse(&bytes).unwrap();
        assert_eq!(received.v, PEER_PROTOCOL_VERSION);
        assert_eq!(received.sender, "node \"a\"");
        assert_eq!(received.to, "node-b");
        assert_eq!(
            received.payload().get(),
            r#"{"image_id":"web","service_id":"s1"}"#
        );
        assert!((received.ts - now_ms()).abs() < 60_000);
    }

    #[test]
    fn a_version_1_message_is_not_a_peer_message() {
        let bytes = signed().to_bytes();
        assert_eq!(
            Received::parse(&bytes).unwrap_err(),
            AuthError::UnsupportedVersion { got: 1, speaks: 2 }
        );
        assert_eq!(version_of(&bytes), Some(1));
        assert_eq!(version_of(b"garbage"), None);
    }

    #[test]
    fn key_debug_shows_only_the_fingerprint() {
        let shown = format!("{:?}", key());
        assert!(!shown.contains("horse"), "{shown}");
        assert_eq!(key().fingerprint().len(), 12);
        assert_eq!(ClusterKey::generate_secret().len(), 64);
        assert_eq!(new_nonce().len(), 32);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(envelope) = Envelope::parse(&bytes) {
                let _ = envelope.verify(&key());
                let _ = ReplayGuard::default().check(&envelope, now_ms());
            }
            if let Ok(received) = Received::parse(&bytes) {
                let _ = ReplayGuard::default().check(&received, now_ms());
            }
        }

        #[test]
        fn parsing_json_like_text_never_panics(text in r#"\{("[a-z]{1,7}":("[ -~]{0,12}"|-?[0-9]{1,20}|\[\]|\{\}|null|true),?){0,9}\}"#) {
            if let Ok(envelope) = Envelope::parse(text.as_bytes()) {
                prop_assert!(envelope.verify(&key()).is_err());
            }
            let _ = Received::parse(text.as_bytes());
        }

        #[test]
        fn any_signed_payload_verifies(value in arbitrary_json()) {
            let envelope = Envelope::new("capability_request", "id", "node", value.clone());
            let sent = envelope.signed_bytes(&key());
            let parsed = Envelope::parse(&sent).unwrap();
            prop_assert_eq!(parsed.verify(&key()), Ok(()));
            prop_assert_eq!(&parsed.payload, &value);
        }

        #[test]
        fn any_peer_message_reads_back(kind in "[a-z_]{1,12}", sender in ".{0,16}", to in ".{1,16}", value in arbitrary_json()) {
            let bytes = peer_message(&kind, "id", &sender, &to, &canonical_json(&value));
            let received = Received::parse(&bytes).unwrap();
            prop_assert_eq!(received.kind.as_ref(), kind.as_str());
            prop_assert_eq!(received.sender.as_ref(), sender.as_str());
            prop_assert_eq!(received.to.as_ref(), to.as_str());
            let payload: Value = serde_json::from_str(received.payload().get()).unwrap();
            prop_assert_eq!(payload, value);
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,16}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
