//! SML (Smart Message Language) decoder and encoder, written for the quirks of meters in
//! the field: transport framing with escapes and CRC ([`transport`]), type-length fields
//! ([`tl`]), the push messages a meter sends ([`message`]) and DLMS units ([`units`]).
//!
//! No input panics the decoder; every problem is an error value.

pub mod message;
pub mod tl;
pub mod transport;
pub mod units;

use std::collections::BTreeMap;

pub use message::{ListEntry, Message, MessageBody, SmlTime, SmlValue};
pub use tl::ParseError;
pub use transport::{Frame, FrameError, Framer};

use crate::obis::Obis;

/// Why a transmission could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Transport layer: CRC, escape, truncation.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The payload is not valid SML.
    #[error("invalid SML: {0}")]
    Parse(#[from] ParseError),
}

impl DecodeError {
    /// Whether the transmission CRC checked out (the error is in the content).
    pub fn crc_ok(&self) -> bool {
        match self {
            DecodeError::Parse(_) => true,
            DecodeError::Frame(FrameError::CrcMismatch { .. }) => false,
            // Without an end sequence there is no CRC to check.
            DecodeError::Frame(_) => false,
        }
    }
}

/// A numeric reading: value with scaler applied, and its DLMS unit code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The value, scaler applied.
    pub value: f64,
    /// DLMS unit code, if the meter sent one.
    pub unit: Option<u8>,
    /// The integer the meter sent (exact as a double for all real counters).
    pub raw: f64,
    /// The decimal scaler the meter sent.
    pub scaler: i8,
}

impl Reading {
    /// The value in a unit `10^exponent` times larger (3: Wh to kWh), rounded once,
    /// so `224624136` with scaler -1 becomes exactly `22462.4136` kWh.
    pub fn in_unit_of(&self, exponent: i32) -> f64 {
        scale(self.raw, i32::from(self.scaler) - exponent)
    }

    /// The unit's symbol (`Wh`, `W`, ...), if known.
    pub fn unit_symbol(&self) -> Option<&'static str> {
        self.unit.and_then(units::unit_symbol)
    }
}

/// One decoded transmission.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmission {
    /// The messages, in order.
    pub messages: Vec<Message>,
    /// Number of raw bytes on the line.
    pub raw_len: usize,
}

impl Transmission {
    /// Parses the payload of a frame.
    pub fn from_frame(frame: &Frame) -> Result<Self, ParseError> {
        Ok(Self {
            messages: message::parse_messages(&frame.payload)?,
            raw_len: frame.raw_len,
        })
    }

    /// The meter's server id: from the get-list response, else from the open response.
    pub fn server_id(&self) -> Option<&[u8]> {
        let from_list = self.messages.iter().find_map(|m| match &m.body {
            MessageBody::GetListResponse(g) => Some(g.server_id.as_slice()),
            _ => None,
        });
        from_list.or_else(|| {
            self.messages.iter().find_map(|m| match &m.body {
                MessageBody::OpenResponse(o) => Some(o.server_id.as_slice()),
                _ => None,
            })
        })
    }

    /// All list entries of all get-list responses.
    pub fn entries(&self) -> impl Iterator<Item = &ListEntry> {
        self.messages.iter().flat_map(|m| match &m.body {
            MessageBody::GetListResponse(g) => g.entries.as_slice(),
            _ => &[],
        })
    }

    /// Numeric readings by OBIS code (the last one wins if a code repeats).
    pub fn readings(&self) -> BTreeMap<Obis, Reading> {
        self.entries()
            .filter_map(|e| {
                Some((
                    e.obis()?,
                    Reading {
                        value: e.scaled()?,
                        unit: e.unit,
                        raw: e.raw_number()?,
                        scaler: e.scaler.unwrap_or(0),
                    },
                ))
            })
            .collect()
    }

    /// The transmission as one line of the `decode` command's JSON output.
    pub fn to_json(&self) -> serde_json::Value {
        let mut values = serde_json::Map::new();
        for e in self.entries() {
            let key = hex::encode(&e.obj_name);
            let unit = e.unit.and_then(units::unit_symbol);
            let v = match (&e.value, e.scaled()) {
                (_, Some(n)) => serde_json::json!({ "value": n, "unit": unit }),
                (SmlValue::Bytes(b), _) => {
                    serde_json::json!({ "octets": hex::encode(b), "unit": unit })
                }
                (SmlValue::Bool(b), _) => serde_json::json!({ "value": b, "unit": unit }),
                _ => serde_json::json!({ "value": null, "unit": unit }),
            };
            values.insert(key, v);
        }
        serde_json::json!({
            "crc_ok": true,
            "server_id": self.server_id().map(hex::encode),
            "values": values,
        })
    }
}

/// `raw * 10^exponent`, dividing by an exact power of ten for negative exponents so
/// that the result is the double nearest to the decimal value.
pub fn scale(raw: f64, exponent: i32) -> f64 {
    if exponent < 0 {
        raw / 10f64.powi(-exponent)
    } else {
        raw * 10f64.powi(exponent)
    }
}

/// The JSON line the `decode` command prints for a transmission that failed.
pub fn error_json(err: &DecodeError) -> serde_json::Value {
    serde_json::json!({ "crc_ok": err.crc_ok(), "error": err.to_string() })
}

/// Decodes a framed transmission.
pub fn decode_frame(frame: Result<Frame, FrameError>) -> Result<Transmission, DecodeError> {
    Ok(Transmission::from_frame(&frame?)?)
}

/// Finds and decodes every transmission in a byte stream, in order.
pub fn decode_all(bytes: &[u8]) -> Vec<Result<Transmission, DecodeError>> {
    transport::split_transmissions(bytes)
        .into_iter()
        .map(decode_frame)
        .collect()
}

/// Incremental decoder for a live byte stream: framing and parsing in one.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    framer: Framer,
}

impl StreamDecoder {
    /// A decoder waiting for the first transmission.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; calls `out` for every transmission they complete.
    pub fn push(&mut self, bytes: &[u8], mut out: impl FnMut(Result<Transmission, DecodeError>)) {
        self.framer.push(bytes, |f| out(decode_frame(f)));
    }
}
