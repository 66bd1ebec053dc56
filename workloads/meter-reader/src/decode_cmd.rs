//! The `decode` command: turns a captured byte stream into one JSON line per transmission,
//! so an admin can see at once what a probe delivers.

use std::io::{Read, Write};

use crate::sml;

/// Input that is not hex text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hex input: {what} at character {offset}")]
pub struct HexError {
    /// What is wrong.
    pub what: &'static str,
    /// Character offset in the input.
    pub offset: usize,
}

/// Parses hex text, ignoring whitespace (and `0x` prefixes and `:`/`,` separators, which
/// dump tools like to add).
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() || c == b':' || c == b',' {
            i += 1;
            continue;
        }
        if c == b'0' && high.is_none() && matches!(bytes.get(i + 1), Some(b'x' | b'X')) {
            i += 2;
            continue;
        }
        let nibble = (c as char).to_digit(16).ok_or(HexError {
            what: "not a hex digit",
            offset: i,
        })? as u8;
        match high.take() {
            None => high = Some(nibble),
            Some(h) => out.push((h << 4) | nibble),
        }
        i += 1;
    }
    if high.is_some() {
        return Err(HexError {
            what: "odd number of hex digits",
            offset: bytes.len(),
        });
    }
    Ok(out)
}

/// Summary of a decode run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeSummary {
    /// Transmissions decoded with values.
    pub decoded: usize,
    /// Transmissions rejected.
    pub failed: usize,
}

/// Decodes `bytes` and writes one JSON object per line for each transmission found.
pub fn decode_to(bytes: &[u8], out: &mut impl Write) -> std::io::Result<DecodeSummary> {
    let mut summary = DecodeSummary::default();
    for result in sml::decode_all(bytes) {
        let line = match &result {
            Ok(t) => {
                summary.decoded += 1;
                t.to_json()
            }
            Err(e) => {
                summary.failed += 1;
                sml::error_json(e)
            }
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(summary)
}

/// Reads the whole input: a file, or stdin for `-` or no path.
pub fn read_input(path: Option<&str>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match path {
        None | Some("-") => {
            std::io::stdin().lock().read_to_end(&mut buf)?;
        }
        Some(p) => buf = std::fs::read(p)?,
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_with_whitespace_and_prefixes() {
        assert_eq!(
            parse_hex("1B 1b\n0x01:02,03").unwrap(),
            vec![0x1b, 0x1b, 1, 2, 3]
        );
        assert!(parse_hex("1g").is_err());
        assert!(parse_hex("123").is_err());
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
    }
}
