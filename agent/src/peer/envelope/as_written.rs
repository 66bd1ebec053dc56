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
    // Checked as UTF-8 once, as a whole: the fields are slices of it, cut at ASCII
    // delimiters.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut rest = text.strip_prefix("{\"v\":")?;
    let v = u32::try_from(integer(&mut rest)?).ok()?;
    let kind = field(&mut rest, ",\"type\":")?;
    let id = field(&mut rest, ",\"id\":")?;
    let sender = field(&mut rest, ",\"sender\":")?;
    rest = rest.strip_prefix(",\"ts\":")?;
    let ts = integer(&mut rest)?;
    let nonce = field(&mut rest, ",\"nonce\":")?;
    rest = rest.strip_prefix(",\"payload\":")?;
    let (payload, tail) = rest.split_at_checked(rest.len().checked_sub(SIGNED_TAIL_LEN)?)?;
    let tail = tail.strip_prefix(MAC_FIELD)?;
    let (mac, end) = tail.split_at_checked(64)?;
    if end != "\"}" || super::needs_escape(mac.as_bytes()) {
        return None;
    }
    // The payload must be one JSON value on its own: validated here (without building
    // it) and decoded by whoever knows its type.
    let payload: &RawValue = serde_json::from_str(payload).ok()?;
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

/// The string value after `key` (which includes the separator and the colon), if JSON
/// writes it as it is: without quotes, backslashes or control characters (anything else
/// needs the JSON parser).
fn field<'a>(rest: &mut &'a str, key: &str) -> Option<&'a str> {
    let body = rest.strip_prefix(key)?.strip_prefix('"')?;
    let end = body.bytes().position(|byte| byte == b'"')?;
    let (text, after) = body.split_at(end);
    if super::needs_escape(text.as_bytes()) {
        return None;
    }
    *rest = &after[1..];
    Some(text)
}

/// A JSON integer (no fraction, no exponent, no leading zeros), ending before a comma.
fn integer(rest: &mut &str) -> Option<i64> {
    let (negative, digits) = match rest.strip_prefix('-') {
        Some(after) => (true, after.as_bytes()),
        None => (false, rest.as_bytes()),
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
    *rest = &rest[rest.len() - (digits.len() - len)..];
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_json_writes_them() {
        let read = |text: &str| {
            let mut rest = text;
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
        let read = |text: &'static str| {
            let mut rest = text;
            field(&mut rest, ",\"id\":").map(|value| (value, rest))
        };
        assert_eq!(read(",\"id\":\"node-a\",x"), Some(("node-a", ",x")));
        assert_eq!(read(",\"id\":\"z\u{e4}hler\"}"), Some(("z\u{e4}hler", "}")));
        for refused in [
            ",\"id\":\"a\\u0041\"",
            ",\"id\":\"tab\there\"",
            ",\"id\":\"open",
            ",\"ID\":\"a\"",
        ] {
            assert_eq!(read(refused), None, "{refused}");
        }
    }
}
