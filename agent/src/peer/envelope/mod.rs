//! The signed JSON envelope every cluster message travels in (peer requests and replies
//! over ZeroMQ, discovery announcements over MQTT), and the checks a receiver makes before
//! it believes one: a valid HMAC-SHA256 under the cluster key, a timestamp close to its own
//! clock and a nonce it has not seen before. See `PROTOCOL.md` beside this file.

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

mod as_written;
mod replay;

pub use replay::{ReplayGuard, Stamped};

/// Version of the envelope format; a receiver refuses any other.
pub const PROTOCOL_VERSION: u32 = 1;

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
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
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
    String::from_utf8(nonce_digits().to_vec()).expect("hex digits are ASCII")
}

/// The hex digits of a fresh random nonce, without a heap allocation (one per message).
fn nonce_digits() -> [u8; 32] {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut digits = [0u8; 32];
    for (pair, byte) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
    digits
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lowercase hex (the `hex` crate collects chars one by one; this is
/// on every message's path).
fn push_hex(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for byte in bytes {
        out.push(HEX_DIGITS[usize::from(byte >> 4)]);
        out.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
    }
}

/// Value of each byte as a hex digit (either case); `INVALID` for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut values = [INVALID; 256];
    let mut digit = 0;
    while digit < 10 {
        values[b'0' as usize + digit] = digit as u8;
        digit += 1;
    }
    let mut letter = 0;
    while letter < 6 {
        values[b'a' as usize + letter] = 10 + letter as u8;
        values[b'A' as usize + letter] = 10 + letter as u8;
        letter += 1;
    }
    values
};
const INVALID: u8 = 0x10;

/// A MAC written as 64 hex digits (either case), as bytes. Through a table, without a
/// branch per digit: the digits of a MAC are random, so per-digit branches were
/// mispredicted about every other time, and this runs twice per round trip.
fn decode_mac(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut tag = [0u8; 32];
    let mut invalid = 0u8;
    for (byte, pair) in tag.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (
            HEX_VALUES[usize::from(pair[0])],
            HEX_VALUES[usize::from(pair[1])],
        );
        invalid |= high | low;
        *byte = high << 4 | (low & 0x0f);
    }
    (invalid & INVALID == 0).then_some(tag)
}

/// How a signed message written by [`Envelope::signed_bytes`] ends: the MAC as the last
/// field, after the canonical form's fields.
const MAC_FIELD: &str = ",\"mac\":\"";
const SIGNED_TAIL_LEN: usize = MAC_FIELD.len() + 64 + 2;

/// Room left in a message's buffer for a transport to put its framing in front of it
/// without another buffer (ZMTP adds up to 11 bytes).
const TRANSPORT_ROOM: usize = 16;

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
        check_shape(self.v, &self.kind, &self.id, &self.sender, &self.nonce)
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
        let tag = key.tag(&self.canonical_bytes()).finalize().into_bytes();
        let mut hex = Vec::with_capacity(64);
        push_hex(&tag, &mut hex);
        self.mac = Some(String::from_utf8(hex).expect("hex digits are ASCII"));
    }

    /// The message signed, as the bytes to send: its canonical form with the MAC added as
    /// the last field. That is valid JSON of the envelope like any other layout, and it
    /// spares a second serialization here and, at a receiver of this project, writing the
    /// canonical form again (see [`Received::verify`]).
    pub fn signed_bytes(self, key: &ClusterKey) -> Vec<u8> {
        append_mac(self.canonical_bytes(), key)
    }

    /// A new message signed, as the bytes to send, with a payload already in canonical
    /// form (see [`canonical_json`]): a reply that stays the same for many requests (a
    /// node's capabilities) is not converted and sorted again for each of them.
    pub fn signed_bytes_with_payload(
        kind: &str,
        id: &str,
        sender: &str,
        canonical_payload: &[u8],
        key: &ClusterKey,
    ) -> Vec<u8> {
        let canonical = canonical_form(
            PROTOCOL_VERSION,
            kind,
            id,
            sender,
            now_ms(),
            std::str::from_utf8(&nonce_digits()).expect("hex digits are ASCII"),
            canonical_payload,
        );
        append_mac(canonical, key)
    }

    /// The message as JSON, as it is (signed or not).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope serializes to JSON")
    }

    /// Checks the MAC in constant time.
    pub fn verify(&self, key: &ClusterKey) -> Result<(), AuthError> {
        let mac = self.mac.as_deref().ok_or(AuthError::MissingMac)?;
        let tag = decode_mac(mac.as_bytes()).ok_or(AuthError::Forged)?;
        key.tag(&self.canonical_bytes())
            .verify_slice(&tag)
            .map_err(|_| AuthError::Forged)
    }
}

/// An envelope as it arrived, borrowing its fields from the received bytes and keeping
/// the payload as raw JSON: a receiver checks it first and then decodes the payload
/// straight into the request or reply it carries, without building a JSON tree (which
/// was the larger part of reading a message).
#[derive(Debug, Deserialize)]
pub struct Received<'a> {
    pub v: u32,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub sender: Cow<'a, str>,
    pub ts: i64,
    #[serde(borrow)]
    pub nonce: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub mac: Option<Cow<'a, str>>,
}

impl<'a> Received<'a> {
    /// Parses received bytes, refusing anything oversized or out of shape, as
    /// [`Envelope::parse`] does. The MAC is not checked here: see [`Received::verify`].
    pub fn parse(bytes: &'a [u8]) -> Result<Received<'a>, AuthError> {
        let as_written = (bytes.len() <= MAX_MESSAGE_BYTES)
            .then(|| as_written::read(bytes))
            .flatten();
        let received = match as_written {
            Some(received) => received,
            None => decode(bytes)?,
        };
        check_shape(
            received.v,
            &received.kind,
            &received.id,
            &received.sender,
            &received.nonce,
        )?;
        Ok(received)
    }

    /// [`Envelope::verify`] for the message parsed from `bytes`, trying the received
    /// bytes first: when they end in the MAC field, as [`Envelope::signed_bytes`] writes
    /// them, the MAC is checked over the bytes before that field (closed with `}`), which
    /// spares writing the canonical form again. This is as strict: a matching MAC proves
    /// that a holder of the key signed exactly these bytes as a canonical form, and the
    /// message was parsed from exactly them (plus the MAC). Any other layout (another JSON
    /// library's key order, whitespace) falls back to the canonical form.
    pub fn verify(&self, bytes: &[u8], key: &ClusterKey) -> Result<(), AuthError> {
        let mac = self.mac.as_deref().ok_or(AuthError::MissingMac)?;
        let tag = decode_mac(mac.as_bytes()).ok_or(AuthError::Forged)?;
        if verifies_as_sent(bytes, mac, &tag, key) {
            return Ok(());
        }
        // Another layout than this project writes: check the canonical form.
        Envelope::parse(bytes)?.verify(key)
    }

    /// The payload, as raw JSON (`null` when the message has none).
    pub fn payload(&self) -> &'a RawValue {
        self.payload.unwrap_or(RawValue::NULL)
    }
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

fn check_shape(v: u32, kind: &str, id: &str, sender: &str, nonce: &str) -> Result<(), AuthError> {
    if v != PROTOCOL_VERSION {
        return Err(AuthError::UnsupportedVersion(v));
    }
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
    let mut out =
        Vec::with_capacity(128 + canonical_payload.len() + SIGNED_TAIL_LEN + TRANSPORT_ROOM);
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

/// A canonical form with the MAC added as the last field: the bytes to send.
fn append_mac(mut canonical: Vec<u8>, key: &ClusterKey) -> Vec<u8> {
    let tag = key.tag(&canonical).finalize().into_bytes();
    canonical.pop(); // the closing brace
    canonical.reserve(SIGNED_TAIL_LEN);
    canonical.extend_from_slice(MAC_FIELD.as_bytes());
    push_hex(&tag, &mut canonical);
    canonical.extend_from_slice(b"\"}");
    canonical
}

/// Whether `received` ends in the MAC field `mac`, as [`Envelope::signed_bytes`] writes
/// it, and the MAC matches the bytes before that field (closed with `}`). This is as
/// strict as checking the canonical form: a matching MAC proves that a holder of the key
/// signed exactly these bytes as a canonical form, and the message was parsed from
/// exactly them (plus the MAC).
fn verifies_as_sent(received: &[u8], mac: &str, tag: &[u8; 32], key: &ClusterKey) -> bool {
    let Some((signed, tail)) = received
        .len()
        .checked_sub(SIGNED_TAIL_LEN)
        .map(|end| received.split_at(end))
    else {
        return false;
    };
    if !(tail.starts_with(MAC_FIELD.as_bytes())
        && tail.ends_with(b"\"}")
        && tail[MAC_FIELD.len()..MAC_FIELD.len() + 64] == *mac.as_bytes())
    {
        return false;
    }
    let mut check = key.tag(signed);
    check.update(b"}");
    check.verify_slice(tag).is_ok()
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
            Err(AuthError::UnsupportedVersion(2))
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

    /// The example of PROTOCOL.md, computed independently (Python's hmac and json).
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
        // The reply's payload keys are not in canonical order: the received bytes cannot
        // be checked as they are, the canonical form is written again.
        let received = br#"{"v":1,"type":"capability_reply","id":"6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a","sender":"node-b","ts":1700000000004,"nonce":"0a1b2c3d4e5f60718293a4b5c6d7e8f9","payload":{"digest":"5d1f0c3e8b2a4f6d","capabilities":[{"capability_type":"hardware","capability":"optical-probe"}]},"mac":"c56dc8b23bd297a546b57de4242866ca0dc091e6a3b958054cc4d9138873def1"}"#;
        Received::parse(received)
            .unwrap()
            .verify(received, &key)
            .unwrap();
        // What this node sends is the document's request byte for byte.
        request.mac = None;
        assert_eq!(
            String::from_utf8(request.signed_bytes(&key)).unwrap(),
            r#"{"v":1,"type":"capability_request","id":"6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a","sender":"node-a","ts":1700000000000,"nonce":"9b2f4c1d7e8a6b5c4d3e2f1a0b9c8d7e","payload":{},"mac":"02fe7871e2341e03c2e4689bb8832a7016a4f7a15ec7eebbea1afd0b429dc298"}"#
        );
    }

    #[test]
    fn received_bytes_altered_anywhere_are_refused() {
        let bytes = Envelope::new(
            "image_status",
            "0f0e",
            "node-a",
            json!({"service_id": "s1", "image_id": "web"}),
        )
        .signed_bytes(&key());
        let text = String::from_utf8(bytes.clone()).unwrap();
        Envelope::parse(&bytes).unwrap().verify(&key()).unwrap();
        let parsed = Received::parse(&bytes).unwrap();
        parsed.verify(&bytes, &key()).unwrap();
        for altered in [
            text.replace("node-a", "node-b"),
            text.replace("\"web\"", "\"db\""),
            text.replace("\"s1\"", "\"s1\",\"x\":1"),
        ] {
            let received = Received::parse(altered.as_bytes()).unwrap();
            assert_eq!(
                received.verify(altered.as_bytes(), &key()),
                Err(AuthError::Forged),
                "{altered}"
            );
        }
        let other = ClusterKey::from_secret("another cluster's secret");
        assert_eq!(parsed.verify(&bytes, &other), Err(AuthError::Forged));
        // Whitespace or another key order on the wire: still authentic.
        let spaced = text.replace(",\"mac\"", ", \"mac\"");
        Received::parse(spaced.as_bytes())
            .unwrap()
            .verify(spaced.as_bytes(), &key())
            .unwrap();
    }

    #[test]
    fn key_debug_shows_only_the_fingerprint() {
        let shown = format!("{:?}", key());
        assert!(!shown.contains("horse"), "{shown}");
        assert_eq!(key().fingerprint().len(), 12);
        assert_eq!(ClusterKey::generate_secret().len(), 64);
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
                let _ = received.verify(&bytes, &key());
                let _ = ReplayGuard::default().check(&received, now_ms());
            }
        }

        #[test]
        fn parsing_json_like_text_never_panics(text in r#"\{("[a-z]{1,7}":("[ -~]{0,12}"|-?[0-9]{1,20}|\[\]|\{\}|null|true),?){0,9}\}"#) {
            if let Ok(envelope) = Envelope::parse(text.as_bytes()) {
                prop_assert!(envelope.verify(&key()).is_err());
            }
        }

        #[test]
        fn any_signed_payload_verifies(value in arbitrary_json()) {
            let mut envelope = Envelope::new("capability_request", "id", "node", value);
            envelope.sign(&key());
            let parsed = Envelope::parse(&envelope.to_bytes()).unwrap();
            prop_assert_eq!(parsed.verify(&key()), Ok(()));
            // The bytes sent check as the canonical form (and as they are: below).
            envelope.mac = None;
            let sent = envelope.clone().signed_bytes(&key());
            let parsed = Envelope::parse(&sent).unwrap();
            prop_assert_eq!(parsed.verify(&key()), Ok(()));
            envelope.sign(&key());
            prop_assert_eq!(parsed, envelope.clone());
            // As received: the same fields, the payload kept as raw JSON, the same verdict
            // on the bytes as sent and on another layout of them.
            let received = Received::parse(&sent).unwrap();
            prop_assert_eq!(received.verify(&sent, &key()), Ok(()));
            let payload: Value = serde_json::from_str(received.payload().get()).unwrap();
            prop_assert_eq!(&payload, &envelope.payload);
            let relaid = envelope.to_bytes();
            prop_assert_eq!(Received::parse(&relaid).unwrap().verify(&relaid, &key()), Ok(()));
        }

        #[test]
        fn a_received_message_altered_anywhere_is_refused_or_unchanged(value in arbitrary_json(), at in any::<usize>()) {
            let sent = Envelope::new("image_status", "id", "node", value).signed_bytes(&key());
            let mut altered = sent.clone();
            let at = at % altered.len();
            altered[at] ^= 0x01;
            // Believed only if it still says the same (a float's last digit beyond its
            // precision, say): what a receiver acts on is never altered.
            if let Ok(received) = Received::parse(&altered) {
                if received.verify(&altered, &key()).is_ok() {
                    prop_assert_eq!(Envelope::parse(&altered), Envelope::parse(&sent));
                }
            }
        }
    }

    /// What a receiver reads of a message, comparable.
    fn fields(
        received: &Received,
    ) -> (
        u32,
        String,
        String,
        String,
        i64,
        String,
        String,
        Option<String>,
    ) {
        (
            received.v,
            received.kind.to_string(),
            received.id.to_string(),
            received.sender.to_string(),
            received.ts,
            received.nonce.to_string(),
            received.payload().get().to_owned(),
            received.mac.as_deref().map(str::to_owned),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The reader of this project's layout and the JSON parser read every message
        /// alike: signed messages with any fields, and the same with any byte changed
        /// or cut off (the layout reader may pass a message on to the JSON parser, never
        /// read it otherwise).
        #[test]
        fn the_layout_reader_reads_as_the_json_parser(
            kind in "[a-z_]{1,12}|.{0,12}",
            id in "[0-9a-f-]{0,36}|.{0,12}",
            sender in ".{0,16}",
            ts in any::<i64>(),
            value in arbitrary_json(),
            at in any::<usize>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let plain = [&kind, &id, &sender]
                .iter()
                .all(|text| !text.chars().any(|c| c == '"' || c == '\\' || c < ' '));
            let mut envelope = Envelope::new(kind, id, sender, value);
            envelope.ts = ts;
            let sent = envelope.signed_bytes(&key());
            let mut altered = sent.clone();
            let at = at % altered.len();
            if cut {
                altered.truncate(at);
            } else {
                altered[at] = byte;
            }
            for bytes in [&sent, &altered] {
                if let Some(read) = as_written::read(bytes) {
                    let parsed: Received = decode(bytes).expect("the JSON parser reads it too");
                    prop_assert_eq!(fields(&read), fields(&parsed));
                }
            }
            // Messages this project writes take the short way whenever they can.
            prop_assert_eq!(as_written::read(&sent).is_some(), plain);
        }

        #[test]
        fn macs_decode_as_hex_does(bytes in proptest::collection::vec(any::<u8>(), 32), at in 0usize..64, byte in any::<u8>()) {
            let mut hex = hex::encode(&bytes).into_bytes();
            prop_assert_eq!(decode_mac(&hex).map(|tag| tag.to_vec()), Some(bytes.clone()));
            prop_assert_eq!(decode_mac(&hex.to_ascii_uppercase()).map(|tag| tag.to_vec()), Some(bytes));
            hex[at] = byte;
            prop_assert_eq!(decode_mac(&hex).map(|tag| tag.to_vec()), hex::decode(&hex).ok());
        }
    }

    #[test]
    fn a_received_message_without_payload_has_a_null_one() {
        let mut envelope = Envelope::new("capability_request", "1", "node-a", Value::Null);
        envelope.sign(&key());
        let mut text = String::from_utf8(envelope.to_bytes()).unwrap();
        text = text.replace(",\"payload\":null", "");
        let received = Received::parse(text.as_bytes()).unwrap();
        assert_eq!(received.payload().get(), "null");
        received.verify(text.as_bytes(), &key()).unwrap();
        assert_eq!(received.sender, "node-a");
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1.0e6f64..1.0e6).prop_map(|n| json!(n)),
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
