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

/// Incremental hex text parser: whitespace (and `0x` prefixes and `:`/`,` separators,
/// which dump tools like to add) is ignored, so a dump can be fed in any chunks.
#[derive(Debug, Default)]
pub struct HexStream {
    high: Option<u8>,
    /// A `0` seen that may start an `0x` prefix.
    zero: bool,
    offset: usize,
}

impl HexStream {
    /// Parses a chunk, appending the bytes to `out`.
    pub fn push(&mut self, text: &[u8], out: &mut Vec<u8>) -> Result<(), HexError> {
        for &c in text {
            let at = self.offset;
            self.offset += 1;
            if self.zero {
                self.zero = false;
                if c == b'x' || c == b'X' {
                    continue;
                }
                self.nibble(0, out);
            }
            if c.is_ascii_whitespace() || c == b':' || c == b',' {
                continue;
            }
            if c == b'0' && self.high.is_none() {
                self.zero = true;
                continue;
            }
            let n = (c as char).to_digit(16).ok_or(HexError {
                what: "not a hex digit",
                offset: at,
            })? as u8;
            self.nibble(n, out);
        }
        Ok(())
    }

    fn nibble(&mut self, n: u8, out: &mut Vec<u8>) {
        match self.high.take() {
            None => self.high = Some(n),
            Some(h) => out.push((h << 4) | n),
        }
    }

    /// Ends the input; an odd number of digits is an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), HexError> {
        if std::mem::take(&mut self.zero) {
            self.nibble(0, out);
        }
        if self.high.is_some() {
            return Err(HexError {
                what: "odd number of hex digits",
                offset: self.offset,
            });
        }
        Ok(())
    }
}

/// Parses hex text as a whole.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut p = HexStream::default();
    p.push(text.as_bytes(), &mut out)?;
    p.finish(&mut out)?;
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

/// Why the decode command stopped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeCmdError {
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The input is not hex text (with `--hex`).
    #[error(transparent)]
    Hex(#[from] HexError),
}

fn write_line(
    result: &Result<sml::Transmission, sml::DecodeError>,
    summary: &mut DecodeSummary,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let line = match result {
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
    // A probe never ends its output: show each transmission as it completes.
    out.flush()
}

/// Decodes a byte stream as it arrives (a capture file, or a live probe on stdin) and
/// writes one JSON object per line for each transmission found.
pub fn decode_stream(
    mut input: impl Read,
    hex: bool,
    out: &mut impl Write,
) -> Result<DecodeSummary, DecodeCmdError> {
    let mut summary = DecodeSummary::default();
    let mut decoder = sml::StreamDecoder::new();
    let mut hex_parser = HexStream::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = Vec::with_capacity(32 * 1024);
    let mut io_result = Ok(());
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        bytes.clear();
        let chunk = if hex {
            hex_parser.push(&buf[..n], &mut bytes)?;
            &bytes[..]
        } else {
            &buf[..n]
        };
        decoder.push(chunk, |r| {
            if io_result.is_ok() {
                io_result = write_line(&r, &mut summary, out);
            }
        });
        io_result
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    }
    if hex {
        bytes.clear();
        hex_parser.finish(&mut bytes)?;
    }
    Ok(summary)
}

/// Decodes a complete byte stream; one JSON line per transmission.
pub fn decode_to(bytes: &[u8], out: &mut impl Write) -> std::io::Result<DecodeSummary> {
    let mut summary = DecodeSummary::default();
    for result in sml::decode_all(bytes) {
        write_line(&result, &mut summary, out)?;
    }
    Ok(summary)
}

/// Opens the input: a file, or stdin for `-` or no path.
pub fn open_input(path: Option<&str>) -> std::io::Result<Box<dyn Read>> {
    Ok(match path {
        None | Some("-") => Box::new(std::io::stdin()),
        Some(p) => Box::new(std::fs::File::open(p)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_in_any_chunks() {
        let text = b"1B 1b\n0x01:02,03 00 0a";
        for chunk in 1..text.len() {
            let mut p = HexStream::default();
            let mut out = Vec::new();
            for c in text.chunks(chunk) {
                p.push(c, &mut out).unwrap();
            }
            p.finish(&mut out).unwrap();
            assert_eq!(out, vec![0x1b, 0x1b, 1, 2, 3, 0, 0x0a], "chunk {chunk}");
        }
    }

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
