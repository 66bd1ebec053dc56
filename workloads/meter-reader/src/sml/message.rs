//! SML messages (DIN VDE 0418-63-9 / BSI TR-03109-1): the open, get-list and close
//! responses a meter sends on its push interface, read from and written to bytes.

use super::tl::{int_width, uint_width, Cursor, ParseError, Tl, Writer};
use super::transport::CRC_X25;
use crate::obis::{Obis, SERIAL_NUMBER, SUM_POWER};

/// Message body tag of SML_PublicOpen.Res.
pub const TAG_OPEN_RESPONSE: u32 = 0x0101;
/// Message body tag of SML_PublicClose.Res.
pub const TAG_CLOSE_RESPONSE: u32 = 0x0201;
/// Message body tag of SML_GetList.Res.
pub const TAG_GET_LIST_RESPONSE: u32 = 0x0701;

/// SML_Time: seconds since an arbitrary start, or a unix timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmlTime {
    /// Seconds since the meter's own epoch (typically power-on).
    SecIndex(u32),
    /// Seconds since 1970-01-01 UTC.
    Timestamp(u32),
    /// Unix timestamp with local and daylight-saving offsets in minutes.
    LocalTimestamp {
        /// Seconds since 1970-01-01 UTC.
        timestamp: u32,
        /// Offset of local time in minutes.
        local_offset: i16,
        /// Daylight-saving offset in minutes.
        season_offset: i16,
    },
}

/// The value of a list entry.
#[derive(Debug, Clone, PartialEq)]
pub enum SmlValue {
    /// A boolean.
    Bool(bool),
    /// An octet string (serial numbers, manufacturer ids, public keys).
    Bytes(Vec<u8>),
    /// A signed integer of any width.
    Int(i64),
    /// An unsigned integer of any width.
    UInt(u64),
    /// A structured value (SML_ListType); kept undecoded.
    List,
}

/// One SML_ListEntry of a get-list response.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    /// The object name; an OBIS code for all entries that carry measurements.
    pub obj_name: Vec<u8>,
    /// Status word, if sent.
    pub status: Option<u64>,
    /// Time of the value, if sent.
    pub val_time: Option<SmlTime>,
    /// DLMS unit code, if sent.
    pub unit: Option<u8>,
    /// Decimal scaler: the value is `value * 10^scaler`.
    pub scaler: Option<i8>,
    /// The raw value.
    pub value: SmlValue,
    /// Signature of the value, if sent.
    pub value_signature: Option<Vec<u8>>,
}

impl ListEntry {
    /// The OBIS code of this entry, if its name has six bytes.
    pub fn obis(&self) -> Option<Obis> {
        Obis::from_bytes(&self.obj_name)
    }

    /// The raw numeric value, if the value is a number.
    pub fn raw_number(&self) -> Option<f64> {
        match self.value {
            SmlValue::Int(v) => Some(v as f64),
            SmlValue::UInt(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The numeric value with the scaler applied, if the value is a number.
    /// 123456 with scaler -1 gives exactly the double nearest to 12345.6.
    pub fn scaled(&self) -> Option<f64> {
        Some(super::scale(
            self.raw_number()?,
            i32::from(self.scaler.unwrap_or(0)),
        ))
    }
}

/// SML_PublicOpen.Res.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenResponse {
    /// Code page, if sent.
    pub codepage: Option<Vec<u8>>,
    /// Client id, if sent.
    pub client_id: Option<Vec<u8>>,
    /// File id of this transmission.
    pub req_file_id: Vec<u8>,
    /// Server id (the meter's id).
    pub server_id: Vec<u8>,
    /// Reference time, if sent.
    pub ref_time: Option<SmlTime>,
    /// SML version, if sent.
    pub sml_version: Option<u64>,
}

/// SML_GetList.Res.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GetListResponse {
    /// Client id, if sent.
    pub client_id: Option<Vec<u8>>,
    /// Server id (the meter's id).
    pub server_id: Vec<u8>,
    /// List name, if sent.
    pub list_name: Option<Vec<u8>>,
    /// Sensor time, if sent.
    pub act_sensor_time: Option<SmlTime>,
    /// The values.
    pub entries: Vec<ListEntry>,
    /// List signature, if sent.
    pub list_signature: Option<Vec<u8>>,
    /// Gateway time, if sent.
    pub act_gateway_time: Option<SmlTime>,
}

/// SML_PublicClose.Res.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloseResponse {
    /// Global signature, if sent.
    pub global_signature: Option<Vec<u8>>,
}

/// The body of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageBody {
    /// SML_PublicOpen.Res.
    OpenResponse(OpenResponse),
    /// SML_GetList.Res.
    GetListResponse(GetListResponse),
    /// SML_PublicClose.Res.
    CloseResponse(CloseResponse),
    /// Any other message, skipped.
    Other {
        /// The body's tag.
        tag: u32,
    },
}

/// One SML message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Transaction id.
    pub transaction_id: Vec<u8>,
    /// Group number.
    pub group_no: u64,
    /// Abort-on-error flag.
    pub abort_on_error: u64,
    /// The body.
    pub body: MessageBody,
    /// Whether the message's own CRC matched. Informational: the transmission CRC already
    /// covers these bytes, and some meters get the message CRC wrong.
    pub crc_ok: bool,
}

/// Per-transmission state of meter firmware bugs worked around while parsing.
#[derive(Debug, Default, Clone, Copy)]
struct Quirks {
    /// DZG DVS74 meters of certain serial ranges send positive 16.7.0 power that does not
    /// fit their chosen width as a signed integer of one to three bytes (e.g. `53 8b 28`
    /// for 356.24 W); see [`is_buggy_dzg_dvs74`].
    dzg_unsigned_power: bool,
}

/// Whether a 96.1.0 serial number names a DZG DVS74 from the serial ranges whose firmware
/// encodes positive power as too-short signed integers (meters from 60000000 on are fixed).
pub fn is_buggy_dzg_dvs74(serial: &[u8]) -> bool {
    const DZG: [u8; 5] = [0x0a, 0x01, b'D', b'Z', b'G'];
    if serial.len() != 10 || serial[..5] != DZG {
        return false;
    }
    let n = super::tl::be_unsigned(&serial[5..]);
    (42_000_000..=48_999_999).contains(&n) || (55_000_000..=58_999_999).contains(&n)
}

fn opt_time(c: &mut Cursor<'_>) -> Result<Option<SmlTime>, ParseError> {
    if c.skip_absent() {
        return Ok(None);
    }
    let offset = c.pos();
    match c.read_tl()? {
        Tl::List(2) => {
            let tag = c.uint()?;
            match tag {
                1 => Ok(Some(SmlTime::SecIndex(c.uint()? as u32))),
                2 => Ok(Some(SmlTime::Timestamp(c.uint()? as u32))),
                3 => {
                    c.list(3, "local timestamp")?;
                    let timestamp = c.uint()? as u32;
                    let local_offset = c.int()? as i16;
                    let season_offset = c.int()? as i16;
                    Ok(Some(SmlTime::LocalTimestamp {
                        timestamp,
                        local_offset,
                        season_offset,
                    }))
                }
                _ => Err(ParseError::Unexpected {
                    expected: "time tag 1, 2 or 3",
                    offset,
                }),
            }
        }
        // Some older meters send the seconds index directly instead of the choice.
        Tl::UInt(n) if (1..=8).contains(&n) => Ok(Some(SmlTime::SecIndex(super::tl::be_unsigned(
            c.read_data(n)?,
        ) as u32))),
        _ => Err(ParseError::Unexpected {
            expected: "time",
            offset,
        }),
    }
}

fn value(c: &mut Cursor<'_>) -> Result<(SmlValue, usize), ParseError> {
    let offset = c.pos();
    let tl = c.read_tl()?;
    let v = match tl {
        Tl::Bool(n) if n >= 1 => (SmlValue::Bool(c.read_data(n)?.iter().any(|&b| b != 0)), n),
        Tl::Octets(n) => (SmlValue::Bytes(c.read_data(n)?.to_vec()), n),
        Tl::Int(n) if (1..=8).contains(&n) => {
            (SmlValue::Int(super::tl::be_signed(c.read_data(n)?)), n)
        }
        Tl::UInt(n) if (1..=8).contains(&n) => {
            (SmlValue::UInt(super::tl::be_unsigned(c.read_data(n)?)), n)
        }
        Tl::List(n) => {
            for _ in 0..n {
                c.skip_value()?;
            }
            (SmlValue::List, n)
        }
        _ => {
            return Err(ParseError::Unexpected {
                expected: "value",
                offset,
            })
        }
    };
    Ok(v)
}

fn list_entry(c: &mut Cursor<'_>, quirks: &mut Quirks) -> Result<ListEntry, ParseError> {
    c.list(7, "list entry")?;
    let obj_name = c.octets()?.to_vec();
    let status = if c.skip_absent() {
        None
    } else {
        let offset = c.pos();
        match c.read_tl()? {
            Tl::UInt(n) | Tl::Int(n) if (1..=8).contains(&n) => {
                Some(super::tl::be_unsigned(c.read_data(n)?))
            }
            _ => {
                return Err(ParseError::Unexpected {
                    expected: "status",
                    offset,
                })
            }
        }
    };
    let val_time = opt_time(c)?;
    let unit = c.opt_uint()?.map(|u| u as u8);
    let scaler = c.opt_int()?.map(|s| s as i8);
    let (mut value, width) = value(c)?;
    let value_signature = c.opt_octets()?.map(<[u8]>::to_vec);
    if obj_name == SERIAL_NUMBER.0 {
        if let SmlValue::Bytes(serial) = &value {
            if is_buggy_dzg_dvs74(serial) {
                quirks.dzg_unsigned_power = true;
            }
        }
    } else if quirks.dzg_unsigned_power && obj_name == SUM_POWER.0 && width <= 3 {
        if let SmlValue::Int(v) = value {
            let bits = 8 * width as u32;
            value = SmlValue::UInt((v as u64) & ((1u64 << bits) - 1));
        }
    }
    Ok(ListEntry {
        obj_name,
        status,
        val_time,
        unit,
        scaler,
        value,
        value_signature,
    })
}

fn get_list_response(c: &mut Cursor<'_>) -> Result<GetListResponse, ParseError> {
    c.list(7, "get-list response")?;
    let client_id = c.opt_octets()?.map(<[u8]>::to_vec);
    let server_id = c.octets()?.to_vec();
    let list_name = c.opt_octets()?.map(<[u8]>::to_vec);
    let act_sensor_time = opt_time(c)?;
    let n = c.any_list("value list")?;
    let mut quirks = Quirks::default();
    let mut entries = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        entries.push(list_entry(c, &mut quirks)?);
    }
    let list_signature = c.opt_octets()?.map(<[u8]>::to_vec);
    let act_gateway_time = opt_time(c)?;
    Ok(GetListResponse {
        client_id,
        server_id,
        list_name,
        act_sensor_time,
        entries,
        list_signature,
        act_gateway_time,
    })
}

fn open_response(c: &mut Cursor<'_>) -> Result<OpenResponse, ParseError> {
    c.list(6, "open response")?;
    Ok(OpenResponse {
        codepage: c.opt_octets()?.map(<[u8]>::to_vec),
        client_id: c.opt_octets()?.map(<[u8]>::to_vec),
        req_file_id: c.octets()?.to_vec(),
        server_id: c.octets()?.to_vec(),
        ref_time: opt_time(c)?,
        sml_version: c.opt_uint()?,
    })
}

fn close_response(c: &mut Cursor<'_>) -> Result<CloseResponse, ParseError> {
    c.list(1, "close response")?;
    Ok(CloseResponse {
        global_signature: c.opt_octets()?.map(<[u8]>::to_vec),
    })
}

/// Reads one message at the cursor, end-of-message marker included.
pub fn parse_message(c: &mut Cursor<'_>) -> Result<Message, ParseError> {
    let start = c.pos();
    c.list(6, "message")?;
    let transaction_id = c.octets()?.to_vec();
    let group_no = c.uint()?;
    let abort_on_error = c.uint()?;
    c.list(2, "message body")?;
    let tag = c.uint()? as u32;
    let body = match tag {
        TAG_OPEN_RESPONSE => MessageBody::OpenResponse(open_response(c)?),
        TAG_GET_LIST_RESPONSE => MessageBody::GetListResponse(get_list_response(c)?),
        TAG_CLOSE_RESPONSE => MessageBody::CloseResponse(close_response(c)?),
        _ => {
            c.skip_value()?;
            MessageBody::Other { tag }
        }
    };
    let crc_end = c.pos();
    let crc = c.uint()?;
    let computed = CRC_X25.checksum(&c.buffer()[start..crc_end]);
    let offset = c.pos();
    if c.read_tl()? != Tl::EndOfMessage {
        return Err(ParseError::Unexpected {
            expected: "end of message",
            offset,
        });
    }
    Ok(Message {
        transaction_id,
        group_no,
        abort_on_error,
        body,
        // Like the transmission CRC, the message CRC goes least significant byte first,
        // so read as the big-endian SML integer it is the byte-swapped checksum.
        crc_ok: u64::from(computed.swap_bytes()) == crc,
    })
}

/// Reads all messages of a transmission payload. Trailing zero bytes (padding some
/// meters add on their own) are accepted.
pub fn parse_messages(payload: &[u8]) -> Result<Vec<Message>, ParseError> {
    let mut c = Cursor::new(payload);
    let mut messages = Vec::with_capacity(4);
    while c.remaining() > 0 {
        if c.peek() == Some(0x00) {
            c.read_tl()?;
            continue;
        }
        messages.push(parse_message(&mut c)?);
    }
    Ok(messages)
}

fn write_opt_octets(w: &mut Writer, v: &Option<Vec<u8>>) {
    match v {
        Some(b) => w.octets(b),
        None => w.absent(),
    }
}

fn write_time(w: &mut Writer, t: &Option<SmlTime>) {
    match t {
        None => w.absent(),
        Some(SmlTime::SecIndex(s)) => {
            w.list(2);
            w.uint(1, 1);
            w.uint(u64::from(*s), 4);
        }
        Some(SmlTime::Timestamp(s)) => {
            w.list(2);
            w.uint(2, 1);
            w.uint(u64::from(*s), 4);
        }
        Some(SmlTime::LocalTimestamp {
            timestamp,
            local_offset,
            season_offset,
        }) => {
            w.list(2);
            w.uint(3, 1);
            w.list(3);
            w.uint(u64::from(*timestamp), 4);
            w.int(i64::from(*local_offset), 2);
            w.int(i64::from(*season_offset), 2);
        }
    }
}

fn write_entry(w: &mut Writer, e: &ListEntry) {
    w.list(7);
    w.octets(&e.obj_name);
    match e.status {
        Some(s) => w.uint(s, uint_width(s)),
        None => w.absent(),
    }
    write_time(w, &e.val_time);
    match e.unit {
        Some(u) => w.uint(u64::from(u), 1),
        None => w.absent(),
    }
    match e.scaler {
        Some(s) => w.int(i64::from(s), 1),
        None => w.absent(),
    }
    match &e.value {
        SmlValue::Bool(b) => w.bool(*b),
        SmlValue::Bytes(b) => w.octets(b),
        SmlValue::Int(v) => w.int(*v, int_width(*v)),
        SmlValue::UInt(v) => w.uint(*v, uint_width(*v)),
        SmlValue::List => w.list(0),
    }
    write_opt_octets(w, &e.value_signature);
}

impl Message {
    /// Encodes the message, its CRC and end-of-message marker included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.list(6);
        w.octets(&self.transaction_id);
        w.uint(self.group_no, 1);
        w.uint(self.abort_on_error, 1);
        w.list(2);
        match &self.body {
            MessageBody::OpenResponse(o) => {
                w.uint(u64::from(TAG_OPEN_RESPONSE), 4);
                w.list(6);
                write_opt_octets(&mut w, &o.codepage);
                write_opt_octets(&mut w, &o.client_id);
                w.octets(&o.req_file_id);
                w.octets(&o.server_id);
                write_time(&mut w, &o.ref_time);
                match o.sml_version {
                    Some(v) => w.uint(v, 1),
                    None => w.absent(),
                }
            }
            MessageBody::GetListResponse(g) => {
                w.uint(u64::from(TAG_GET_LIST_RESPONSE), 4);
                w.list(7);
                write_opt_octets(&mut w, &g.client_id);
                w.octets(&g.server_id);
                write_opt_octets(&mut w, &g.list_name);
                write_time(&mut w, &g.act_sensor_time);
                w.list(g.entries.len());
                for e in &g.entries {
                    write_entry(&mut w, e);
                }
                write_opt_octets(&mut w, &g.list_signature);
                write_time(&mut w, &g.act_gateway_time);
            }
            MessageBody::CloseResponse(c) => {
                w.uint(u64::from(TAG_CLOSE_RESPONSE), 4);
                w.list(1);
                write_opt_octets(&mut w, &c.global_signature);
            }
            MessageBody::Other { tag } => {
                w.uint(u64::from(*tag), 4);
                w.absent();
            }
        }
        let crc = CRC_X25.checksum(w.as_bytes());
        w.uint(u64::from(crc.swap_bytes()), 2);
        w.end_of_message();
        w.into_bytes()
    }
}
