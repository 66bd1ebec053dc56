//! Type-length fields of the SML encoding: the cursor that reads them and the writer
//! that produces them.
//!
//! A TL byte holds a continuation bit, three type bits and a four-bit length nibble;
//! continuation bytes add four more length bits each. For scalar types the length counts
//! the TL bytes too, for lists it is the number of elements. `0x01` is an omitted optional
//! value and `0x00` closes a message.

/// Why the bytes of a transmission could not be read as SML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The data ended in the middle of a field.
    #[error("unexpected end of data at offset {0}")]
    UnexpectedEnd(usize),
    /// A TL field names a type the standard does not define.
    #[error("invalid type {ty:#x} at offset {offset}")]
    InvalidType {
        /// The three type bits.
        ty: u8,
        /// Where the field starts.
        offset: usize,
    },
    /// A TL field is longer than four bytes or its length is smaller than itself.
    #[error("invalid length at offset {0}")]
    InvalidLength(usize),
    /// A field had another type than the structure requires.
    #[error("expected {expected} at offset {offset}")]
    Unexpected {
        /// What the structure requires at this point.
        expected: &'static str,
        /// Where the field starts.
        offset: usize,
    },
    /// Lists nested deeper than any real message does.
    #[error("nesting too deep at offset {0}")]
    TooDeep(usize),
}

/// The kind of value a TL field announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tl {
    /// An octet string of this many bytes.
    Octets(usize),
    /// A boolean of this many bytes (one, in practice).
    Bool(usize),
    /// A signed integer of this many bytes.
    Int(usize),
    /// An unsigned integer of this many bytes.
    UInt(usize),
    /// A list of this many elements.
    List(usize),
    /// The end-of-message marker `0x00`.
    EndOfMessage,
}

const TY_OCTETS: u8 = 0;
const TY_BOOL: u8 = 4;
const TY_INT: u8 = 5;
const TY_UINT: u8 = 6;
const TY_LIST: u8 = 7;

/// Nesting deeper than this is rejected; real messages nest five or six levels.
pub const MAX_DEPTH: usize = 32;

/// Reads SML fields from a payload without copying it.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Offset of the next field.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The underlying payload.
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.remaining() < n {
            return Err(ParseError::UnexpectedEnd(self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a TL field and returns what it announces (data length without the TL bytes).
    pub fn read_tl(&mut self) -> Result<Tl, ParseError> {
        let offset = self.pos;
        let first = *self.take(1)?.first().unwrap_or(&0);
        if first == 0x00 {
            return Ok(Tl::EndOfMessage);
        }
        let ty = (first >> 4) & 0x07;
        let mut len = usize::from(first & 0x0f);
        let mut tl_bytes = 1usize;
        let mut more = first & 0x80 != 0;
        while more {
            if tl_bytes >= 4 {
                return Err(ParseError::InvalidLength(offset));
            }
            let next = self.take(1)?[0];
            // The type bits of continuation bytes should be zero; some meters set them,
            // and the CRC already vouches for the bytes, so they are ignored.
            len = (len << 4) | usize::from(next & 0x0f);
            tl_bytes += 1;
            more = next & 0x80 != 0;
        }
        let data_len = |len: usize| {
            len.checked_sub(tl_bytes)
                .ok_or(ParseError::InvalidLength(offset))
        };
        match ty {
            TY_OCTETS => Ok(Tl::Octets(data_len(len)?)),
            TY_BOOL => Ok(Tl::Bool(data_len(len)?)),
            TY_INT => Ok(Tl::Int(data_len(len)?)),
            TY_UINT => Ok(Tl::UInt(data_len(len)?)),
            TY_LIST => {
                // Every element takes at least one byte: a longer list cannot be real and
                // would only make a caller allocate for nothing.
                if len > self.remaining() {
                    return Err(ParseError::UnexpectedEnd(offset));
                }
                Ok(Tl::List(len))
            }
            _ => Err(ParseError::InvalidType { ty, offset }),
        }
    }

    /// Reads the data bytes announced by a scalar TL field.
    pub fn read_data(&mut self, len: usize) -> Result<&'a [u8], ParseError> {
        self.take(len)
    }

    /// Reads a list header and checks its length.
    pub fn list(&mut self, expected: usize, what: &'static str) -> Result<(), ParseError> {
        let offset = self.pos;
        match self.read_tl()? {
            Tl::List(n) if n == expected => Ok(()),
            _ => Err(ParseError::Unexpected {
                expected: what,
                offset,
            }),
        }
    }

    /// Reads a list header of any length.
    pub fn any_list(&mut self, what: &'static str) -> Result<usize, ParseError> {
        let offset = self.pos;
        match self.read_tl()? {
            Tl::List(n) => Ok(n),
            _ => Err(ParseError::Unexpected {
                expected: what,
                offset,
            }),
        }
    }

    /// True (and consumed) if the next field is an omitted optional value.
    pub fn skip_absent(&mut self) -> bool {
        if self.peek() == Some(0x01) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Reads an octet string.
    pub fn octets(&mut self) -> Result<&'a [u8], ParseError> {
        let offset = self.pos;
        match self.read_tl()? {
            Tl::Octets(n) => self.take(n),
            _ => Err(ParseError::Unexpected {
                expected: "octet string",
                offset,
            }),
        }
    }

    /// Reads an optional octet string.
    pub fn opt_octets(&mut self) -> Result<Option<&'a [u8]>, ParseError> {
        if self.skip_absent() {
            return Ok(None);
        }
        self.octets().map(Some)
    }

    /// Reads an unsigned integer of any width up to eight bytes.
    pub fn uint(&mut self) -> Result<u64, ParseError> {
        let offset = self.pos;
        match self.read_tl()? {
            Tl::UInt(n) if (1..=8).contains(&n) => Ok(be_unsigned(self.take(n)?)),
            _ => Err(ParseError::Unexpected {
                expected: "unsigned integer",
                offset,
            }),
        }
    }

    /// Reads an optional unsigned integer.
    pub fn opt_uint(&mut self) -> Result<Option<u64>, ParseError> {
        if self.skip_absent() {
            return Ok(None);
        }
        self.uint().map(Some)
    }

    /// Reads a signed integer of any width up to eight bytes.
    pub fn int(&mut self) -> Result<i64, ParseError> {
        let offset = self.pos;
        match self.read_tl()? {
            Tl::Int(n) if (1..=8).contains(&n) => Ok(be_signed(self.take(n)?)),
            _ => Err(ParseError::Unexpected {
                expected: "signed integer",
                offset,
            }),
        }
    }

    /// Reads an optional signed integer.
    pub fn opt_int(&mut self) -> Result<Option<i64>, ParseError> {
        if self.skip_absent() {
            return Ok(None);
        }
        self.int().map(Some)
    }

    /// Skips one complete field of any type, lists included.
    pub fn skip_value(&mut self) -> Result<(), ParseError> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep(self.pos));
        }
        match self.read_tl()? {
            Tl::Octets(n) | Tl::Bool(n) | Tl::Int(n) | Tl::UInt(n) => {
                self.take(n)?;
            }
            Tl::List(n) => {
                for _ in 0..n {
                    self.skip_nested(depth + 1)?;
                }
            }
            Tl::EndOfMessage => {
                return Err(ParseError::Unexpected {
                    expected: "value",
                    offset: self.pos - 1,
                })
            }
        }
        Ok(())
    }
}

/// Big-endian unsigned integer of up to eight bytes.
pub fn be_unsigned(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Big-endian two's-complement integer of up to eight bytes, sign-extended from its width.
pub fn be_signed(bytes: &[u8]) -> i64 {
    if bytes.is_empty() {
        return 0;
    }
    let raw = be_unsigned(bytes);
    let bits = 8 * bytes.len() as u32;
    if bits >= 64 {
        raw as i64
    } else {
        let shift = 64 - bits;
        ((raw << shift) as i64) >> shift
    }
}

/// Writes SML fields; used by the simulator and by tests to produce real transmissions.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn tl(&mut self, ty: u8, len: usize, counts_itself: bool) {
        // Find how many TL bytes are needed; for scalars the length includes them.
        let mut tl_bytes = 1;
        loop {
            let total = if counts_itself { len + tl_bytes } else { len };
            if total < (1usize << (4 * tl_bytes)) {
                for i in (0..tl_bytes).rev() {
                    let nibble = ((total >> (4 * i)) & 0x0f) as u8;
                    let more = if i > 0 { 0x80 } else { 0 };
                    let ty_bits = if i == tl_bytes - 1 { ty << 4 } else { 0 };
                    self.buf.push(more | ty_bits | nibble);
                }
                return;
            }
            tl_bytes += 1;
        }
    }

    /// An omitted optional value.
    pub fn absent(&mut self) {
        self.buf.push(0x01);
    }

    /// The end-of-message marker.
    pub fn end_of_message(&mut self) {
        self.buf.push(0x00);
    }

    /// A list header for `n` elements.
    pub fn list(&mut self, n: usize) {
        self.tl(TY_LIST, n, false);
    }

    /// An octet string.
    pub fn octets(&mut self, bytes: &[u8]) {
        self.tl(TY_OCTETS, bytes.len(), true);
        self.buf.extend_from_slice(bytes);
    }

    /// A boolean.
    pub fn bool(&mut self, v: bool) {
        self.tl(TY_BOOL, 1, true);
        self.buf.push(u8::from(v));
    }

    /// An unsigned integer in exactly `width` bytes (1..=8).
    pub fn uint(&mut self, v: u64, width: usize) {
        let width = width.clamp(1, 8);
        self.tl(TY_UINT, width, true);
        self.buf.extend_from_slice(&v.to_be_bytes()[8 - width..]);
    }

    /// A signed integer in exactly `width` bytes (1..=8).
    pub fn int(&mut self, v: i64, width: usize) {
        let width = width.clamp(1, 8);
        self.tl(TY_INT, width, true);
        self.buf.extend_from_slice(&v.to_be_bytes()[8 - width..]);
    }

    /// Raw bytes, already encoded.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

/// The smallest width in bytes that holds `v` as an unsigned integer.
pub fn uint_width(v: u64) -> usize {
    (8 - (v.leading_zeros() as usize) / 8).max(1)
}

/// The smallest width in bytes that holds `v` as a two's-complement integer.
pub fn int_width(v: i64) -> usize {
    (1..=8)
        .find(|&w| {
            let bits = 8 * w as u32;
            bits == 64 || (v >= -(1i64 << (bits - 1)) && v < (1i64 << (bits - 1)))
        })
        .unwrap_or(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_extension_for_odd_widths() {
        assert_eq!(be_signed(&[0xff, 0xfe, 0x13, 0x93]), -126_061);
        assert_eq!(be_signed(&[0x8b, 0x28]), -29_912);
        assert_eq!(be_signed(&[0xff, 0xff, 0xff]), -1);
        assert_eq!(be_signed(&[0x00, 0x80, 0x25]), 32_805);
        assert_eq!(be_signed(&[0x80, 0, 0, 0, 0, 0, 0, 0]), i64::MIN);
    }

    #[test]
    fn multi_byte_tl_round_trip() {
        for len in [0usize, 1, 13, 14, 15, 16, 200, 300, 4000] {
            let data = vec![0xabu8; len];
            let mut w = Writer::new();
            w.octets(&data);
            let bytes = w.into_bytes();
            let mut c = Cursor::new(&bytes);
            assert_eq!(c.octets().unwrap(), &data[..], "len {len}");
            assert_eq!(c.remaining(), 0);
        }
        let mut w = Writer::new();
        w.list(20);
        let bytes = [w.into_bytes(), vec![0x01; 20]].concat();
        assert_eq!(Cursor::new(&bytes).any_list("list").unwrap(), 20);
    }

    #[test]
    fn widths() {
        assert_eq!(uint_width(0), 1);
        assert_eq!(uint_width(255), 1);
        assert_eq!(uint_width(256), 2);
        assert_eq!(int_width(-128), 1);
        assert_eq!(int_width(128), 2);
        assert_eq!(int_width(i64::MIN), 8);
    }
}
