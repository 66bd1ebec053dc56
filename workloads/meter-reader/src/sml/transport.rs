//! SML transport protocol version 1: framing, escaping, padding and the CRC-16 trailer.
//!
//! A transmission is `1b1b1b1b 01010101 <payload> 1b1b1b1b 1a <pad> <crc lo> <crc hi>`.
//! The payload is padded with zero bytes to a multiple of four, and every four-byte group
//! equal to the escape sequence is sent twice. Escape sequences are only recognised at
//! four-byte boundaries relative to the start sequence, as the standard lays them out.
//! The CRC is CRC-16/X-25 (the `crc` crate's `CRC_16_IBM_SDLC`) over everything from the
//! start sequence up to and including the padding count, sent least significant byte first.

use crc::{Crc, CRC_16_IBM_SDLC};

/// The CRC used by SML for transmissions and messages (CRC-16/X-25, also known as IBM-SDLC).
pub const CRC_X25: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);

/// The escape sequence that introduces every control sequence.
pub const ESCAPE: [u8; 4] = [0x1b; 4];
/// The group that follows an escape sequence at the start of a transmission (version 1).
pub const START_GROUP: [u8; 4] = [0x01; 4];
/// First byte of the group that follows an escape sequence at the end of a transmission.
pub const END_MARKER: u8 = 0x1a;

/// Transmissions longer than this are dropped: real meters send well under 4 KiB, and a
/// bound keeps a stream of garbage from growing the buffer without limit.
pub const MAX_TRANSMISSION_LEN: usize = 64 * 1024;

const START_SEQUENCE: u64 = 0x1b1b_1b1b_0101_0101;

/// One complete transmission as it arrived: the unescaped payload without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Payload (the SML messages), escapes removed, padding stripped.
    pub payload: Vec<u8>,
    /// Number of raw bytes of the transmission, start and end sequences included.
    pub raw_len: usize,
}

/// Why a transmission was rejected by the transport layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The CRC in the trailer does not match the bytes received.
    #[error("crc mismatch: transmitted {transmitted:04x}, computed {computed:04x}")]
    CrcMismatch {
        /// CRC value found in the trailer.
        transmitted: u16,
        /// CRC value computed over the received bytes.
        computed: u16,
    },
    /// An escape sequence was followed by a group the standard does not define.
    #[error("invalid escape sequence 1b1b1b1b {0:02x}{1:02x}{2:02x}{3:02x}", .group[0], .group[1], .group[2], .group[3])]
    InvalidEscape {
        /// The group that followed the escape sequence.
        group: [u8; 4],
    },
    /// A new start sequence arrived before the end of the current transmission
    /// (bytes were lost on the line, or the meter restarted its output).
    #[error("transmission truncated: new start sequence after {0} bytes")]
    Truncated(usize),
    /// The end sequence announces more padding than allowed or than there is payload.
    #[error("invalid padding count {0}")]
    InvalidPadding(u8),
    /// No end sequence within [`MAX_TRANSMISSION_LEN`] bytes.
    #[error("transmission longer than {MAX_TRANSMISSION_LEN} bytes")]
    TooLong,
}

/// What the framer found in the byte stream.
pub type FrameResult = Result<Frame, FrameError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Hunting,
    InFrame,
    AfterEscape,
}

/// Incremental transmission framer: feed it bytes as they arrive from a probe and it
/// yields every complete transmission or transmission error. Bytes outside transmissions
/// (garbage, partial transmissions at the start of a capture) are skipped silently.
#[derive(Debug)]
pub struct Framer {
    state: State,
    /// The last eight bytes seen, to find the start sequence at any offset.
    window: u64,
    /// Bytes seen in total, used to tell aligned from unaligned start sequences.
    seen: u64,
    /// Raw bytes of the current transmission, start sequence included (for the CRC).
    raw: Vec<u8>,
    payload: Vec<u8>,
    group: [u8; 4],
    group_len: usize,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    /// A framer waiting for the first start sequence.
    pub fn new() -> Self {
        Self {
            state: State::Hunting,
            window: 0,
            seen: 0,
            raw: Vec::with_capacity(1024),
            payload: Vec::with_capacity(1024),
            group: [0; 4],
            group_len: 0,
        }
    }

    /// Bytes buffered for a transmission still in progress.
    pub fn pending(&self) -> usize {
        if self.state == State::Hunting {
            0
        } else {
            self.raw.len()
        }
    }

    /// Feeds bytes and calls `out` for every transmission (or error) completed by them.
    pub fn push(&mut self, bytes: &[u8], mut out: impl FnMut(FrameResult)) {
        let mut i = 0;
        while i < bytes.len() {
            // Fast path for the bulk of a transmission: a whole group without any 0x1b,
            // after eight bytes without any, can neither be an escape nor complete a
            // start sequence, so it is plain payload.
            if self.state == State::InFrame && self.group_len == 0 && i + 4 <= bytes.len() {
                let group = [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
                if !has_escape_byte(u64::from(u32::from_be_bytes(group)) | 0xffff_ffff_0000_0000)
                    && !has_escape_byte(self.window)
                    && self.raw.len() + 4 <= MAX_TRANSMISSION_LEN
                {
                    self.window = (self.window << 32) | u64::from(u32::from_be_bytes(group));
                    self.seen += 4;
                    self.raw.extend_from_slice(&group);
                    self.payload.extend_from_slice(&group);
                    i += 4;
                    continue;
                }
            }
            self.push_byte(bytes[i], &mut out);
            i += 1;
        }
    }

    /// Feeds bytes and collects what they completed.
    pub fn push_collect(&mut self, bytes: &[u8]) -> Vec<FrameResult> {
        let mut found = Vec::new();
        self.push(bytes, |r| found.push(r));
        found
    }

    fn begin(&mut self) {
        self.state = State::InFrame;
        self.raw.clear();
        self.raw.extend_from_slice(&START_SEQUENCE.to_be_bytes());
        self.payload.clear();
        self.group_len = 0;
    }

    fn push_byte(&mut self, b: u8, out: &mut impl FnMut(FrameResult)) {
        self.window = (self.window << 8) | u64::from(b);
        self.seen += 1;
        let start_here = self.seen >= 8 && self.window == START_SEQUENCE;
        match self.state {
            State::Hunting => {
                if start_here {
                    self.begin();
                }
            }
            State::InFrame | State::AfterEscape => {
                self.raw.push(b);
                // A start sequence that does not sit on a group boundary means bytes were
                // lost: give up on this transmission and follow the new one. An aligned one
                // is handled by the group logic, which knows whether it is escaped data.
                if start_here && (self.raw.len() - 8) & 3 != 0 {
                    out(Err(FrameError::Truncated(self.raw.len() - 8)));
                    self.begin();
                    return;
                }
                self.group[self.group_len] = b;
                self.group_len += 1;
                if self.group_len == 4 {
                    self.group_len = 0;
                    let group = self.group;
                    self.on_group(group, out);
                } else if self.raw.len() > MAX_TRANSMISSION_LEN {
                    self.state = State::Hunting;
                    out(Err(FrameError::TooLong));
                }
            }
        }
    }

    fn on_group(&mut self, group: [u8; 4], out: &mut impl FnMut(FrameResult)) {
        match self.state {
            State::InFrame => {
                if group == ESCAPE {
                    self.state = State::AfterEscape;
                } else {
                    self.payload.extend_from_slice(&group);
                    if self.raw.len() > MAX_TRANSMISSION_LEN {
                        self.state = State::Hunting;
                        out(Err(FrameError::TooLong));
                    }
                }
            }
            State::AfterEscape => {
                if group == ESCAPE {
                    self.payload.extend_from_slice(&ESCAPE);
                    self.state = State::InFrame;
                } else if group == START_GROUP {
                    out(Err(FrameError::Truncated(self.raw.len() - 8)));
                    self.begin();
                } else if group[0] == END_MARKER {
                    self.state = State::Hunting;
                    out(self.finish(group));
                } else {
                    self.state = State::Hunting;
                    out(Err(FrameError::InvalidEscape { group }));
                }
            }
            State::Hunting => {}
        }
    }

    fn finish(&mut self, end: [u8; 4]) -> FrameResult {
        let raw_len = self.raw.len();
        let computed = CRC_X25.checksum(&self.raw[..raw_len - 2]);
        let transmitted = u16::from_le_bytes([end[2], end[3]]);
        if computed != transmitted {
            return Err(FrameError::CrcMismatch {
                transmitted,
                computed,
            });
        }
        let padding = end[1];
        if padding > 3 || usize::from(padding) > self.payload.len() {
            return Err(FrameError::InvalidPadding(padding));
        }
        let len = self.payload.len() - usize::from(padding);
        // Copy out rather than hand over the buffer, which keeps its capacity for the
        // next transmission instead of growing again from nothing.
        Ok(Frame {
            payload: self.payload[..len].to_vec(),
            raw_len,
        })
    }
}

/// Whether any byte of `v` is 0x1b (the classic "has zero byte" test on `v ^ 1b..1b`).
fn has_escape_byte(v: u64) -> bool {
    let x = v ^ 0x1b1b_1b1b_1b1b_1b1b;
    x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080 != 0
}

/// Splits a complete byte stream into transmissions (and transmission errors).
pub fn split_transmissions(bytes: &[u8]) -> Vec<FrameResult> {
    Framer::new().push_collect(bytes)
}

/// Wraps SML messages into a transmission: padding, escaping, end sequence and CRC.
pub fn encode_transmission(payload: &[u8]) -> Vec<u8> {
    let padding = (4 - payload.len() % 4) % 4;
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.extend_from_slice(&ESCAPE);
    out.extend_from_slice(&START_GROUP);
    let mut padded = payload.to_vec();
    padded.resize(payload.len() + padding, 0);
    for group in padded.chunks_exact(4) {
        if group == ESCAPE {
            out.extend_from_slice(&ESCAPE);
        }
        out.extend_from_slice(group);
    }
    out.extend_from_slice(&ESCAPE);
    out.push(END_MARKER);
    out.push(padding as u8);
    let crc = CRC_X25.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_escape_and_padding() {
        let payload = [0x76, 0x1b, 0x1b, 0x1b, 0x1b, 0x01, 0x02];
        let mut aligned = vec![0x11, 0x22, 0x33, 0x44];
        aligned.extend_from_slice(&ESCAPE);
        aligned.push(0x99);
        for p in [&payload[..], &aligned[..], &[][..]] {
            let tx = encode_transmission(p);
            assert_eq!(tx.len() % 4, 0);
            let frames = split_transmissions(&tx);
            assert_eq!(
                frames,
                vec![Ok(Frame {
                    payload: p.to_vec(),
                    raw_len: tx.len()
                })]
            );
        }
    }

    #[test]
    fn garbage_between_transmissions_is_skipped() {
        let a = encode_transmission(&[1, 2, 3, 4, 5]);
        let b = encode_transmission(&[6, 7]);
        let mut stream = vec![0xff, 0x1b, 0x1b, 0x00];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&[0x1b, 0x1b, 0x1b, 0x1b, 0x1a, 0x00]);
        stream.extend_from_slice(&b);
        let frames = split_transmissions(&stream);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].as_ref().unwrap().payload, vec![1, 2, 3, 4, 5]);
        assert_eq!(frames[1].as_ref().unwrap().payload, vec![6, 7]);
    }

    #[test]
    fn bad_crc_is_reported() {
        let mut tx = encode_transmission(&[1, 2, 3, 4]);
        tx[9] ^= 0x40;
        let frames = split_transmissions(&tx);
        assert!(matches!(frames[..], [Err(FrameError::CrcMismatch { .. })]));
    }

    #[test]
    fn lost_bytes_do_not_swallow_the_next_transmission() {
        let a = encode_transmission(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let b = encode_transmission(&[10, 11, 12]);
        let mut stream = a[..a.len() - 5].to_vec();
        stream.extend_from_slice(&b);
        let frames = split_transmissions(&stream);
        assert!(frames[0].is_err());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].as_ref().unwrap().payload, vec![10, 11, 12]);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let a = encode_transmission(&[0x1b; 9]);
        let mut framer = Framer::new();
        let mut found = Vec::new();
        for b in &a {
            found.extend(framer.push_collect(std::slice::from_ref(b)));
        }
        assert_eq!(found, split_transmissions(&a));
        assert_eq!(found.len(), 1);
    }
}
