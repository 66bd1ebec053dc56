//! Reading a message laid out exactly as this project writes it
//! ([`super::Envelope::signed_bytes`]): the canonical form's fields in their fixed order,
//! strings without escapes, the MAC as the last field. Every peer message of this project
//! arrives so, and reading it by its layout costs a fraction of a JSON parse; anything
//! else (another implementation's key order, whitespace, escapes, a missing MAC) is left
//! to the JSON parser. Whatever this reader accepts, the JSON parser reads the same way
//! (a property test holds them to it).

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{Received, MAC_FIELD, SIGNED_TAIL_LEN};

/// The message in `bytes` if it has the layout this project writes; `None` otherwise.
pub(super) fn read(bytes: &[u8]) -> Option<Received<'_>> {
    let mut rest = bytes.strip_prefix(b"{\"v\":")?;
    let v = u32::try_from(integer(&mut rest)?).ok()?;
    let kind = field(&mut rest, b",\"type\":")?;
    let id = field(&mut rest, b",\"id\":")?;
    let sender = field(&mut rest, b",\"sender\":")?;
    rest = rest.strip_prefix(b",\"ts\":")?;
    let ts = integer(&mut rest)?;
    let nonce = field(&mut rest, b",\"nonce\":")?;
    rest = rest.strip_prefix(b",\"payload\":")?;
    let (payload, tail) = rest.split_at(rest.len().checked_sub(SIGNED_TAIL_LEN)?);
    let (mac, end) = tail.strip_prefix(MAC_FIELD)?.split_at(64);
    if end != b"\"}" {
        return None;
    }
    let mac = plain(mac)?;
    // The payload must be one JSON value on its own: validated here (without building
    // it) and decoded by whoever knows its type.
    let payload: &RawValue = serde_json::from_str(std::str::from_utf8(payload).ok()?).ok()?;
    Some(Received {
        v,
        kind: Cow::Borrowed(kind),
        id: Cow::Borrowed(id),
        sender: Cow::Borrowed(sender),
        ts,
        nonce: Cow::Borrowed(nonce),
        payload: Some(payload),
        mac: Some(Cow::Borrowed(mac)),
    })
}

/// The string value after `key` (which includes the separator and the colon).
fn field<'a>(rest: &mut &'a [u8], key: &[u8]) -> Option<&'a str> {
    let body = rest.strip_prefix(key)?.strip_prefix(b"\"")?;
    let end = body.iter().position(|&byte| byte == b'"')?;
    let text = plain(&body[..end])?;
    *rest = &body[end + 1..];
    Some(text)
}

/// `bytes` as text if JSON writes them between quotes as they are: UTF-8 without
/// quotes, backslashes or control characters (anything else needs the JSON parser).
fn plain(bytes: &[u8]) -> Option<&str> {
    if super::needs_escape(bytes) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

/// A JSON integer (no fraction, no exponent, no leading zeros), ending before a comma.
fn integer(rest: &mut &[u8]) -> Option<i64> {
    let (negative, digits) = match rest.strip_prefix(b"-") {
        Some(after) => (true, after),
        None => (false, *rest),
    };
    let len = digits
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    if len == 0 || (digits[0] == b'0' && len > 1) || digits.get(len) != Some(&b',') {
        return None;
    }
    let mut value: i64 = 0;
    for &digit in &digits[..len] {
        let digit = i64::from(digit - b'0');
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
    }
    *rest = &digits[len..];
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_json_writes_them() {
        let read = |text: &str| {
            let mut rest = text.as_bytes();
            integer(&mut rest).map(|value| (value, rest.len()))
        };
        assert_eq!(read("0,"), Some((0, 1)));
        assert_eq!(read("1732880000123,x"), Some((1_732_880_000_123, 2)));
        assert_eq!(read("-5,"), Some((-5, 1)));
        assert_eq!(read(&format!("{},", i64::MIN)), Some((i64::MIN, 1)));
        for refused in [
            "01,",
            "-,",
            ",",
            "1.5,",
            "1e3,",
            "9223372036854775808,",
            "12",
        ] {
            assert_eq!(read(refused), None, "{refused}");
        }
    }

    #[test]
    fn strings_that_need_escapes_are_left_to_the_json_parser() {
        assert_eq!(plain(b"node-a"), Some("node-a"));
        assert_eq!(plain("z\u{e4}hler".as_bytes()), Some("z\u{e4}hler"));
        for refused in [&b"a\\u0041"[..], b"tab\there", b"\xff"] {
            assert_eq!(plain(refused), None);
        }
    }
}
