//! OBIS codes (IEC 62056-6-1): the six-byte identifiers of metering data items.
//!
//! The survey keys measurement data by the lowercase hex form (`0100010800ff`) because
//! the short form (`1.8.0`) drops medium and channel and is therefore ambiguous.

use std::fmt;
use std::str::FromStr;

/// A six-byte OBIS code `A-B:C.D.E*F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Obis(pub [u8; 6]);

/// Positive active energy total, 1.8.0 (kWh in measurements).
pub const IMPORT_ENERGY: Obis = Obis([1, 0, 1, 8, 0, 255]);
/// Negative active energy total, 2.8.0 (kWh in measurements).
pub const EXPORT_ENERGY: Obis = Obis([1, 0, 2, 8, 0, 255]);
/// Positive active instantaneous power, 1.7.0 (kW in measurements).
pub const IMPORT_POWER: Obis = Obis([1, 0, 1, 7, 0, 255]);
/// Negative active instantaneous power, 2.7.0 (kW in measurements).
pub const EXPORT_POWER: Obis = Obis([1, 0, 2, 7, 0, 255]);
/// Sum active instantaneous power, 16.7.0 (kW in measurements).
pub const SUM_POWER: Obis = Obis([1, 0, 16, 7, 0, 255]);
/// Device serial number, 96.1.0.
pub const SERIAL_NUMBER: Obis = Obis([1, 0, 96, 1, 0, 255]);

/// The codes of table 4.5 that the survey records by default.
pub const SURVEY_CODES: [Obis; 5] = [
    IMPORT_ENERGY,
    EXPORT_ENERGY,
    IMPORT_POWER,
    EXPORT_POWER,
    SUM_POWER,
];

/// A string that is not an OBIS code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid OBIS code {0:?}: expected 12 hex digits (0100010800ff) or A-B:C.D.E*F")]
pub struct InvalidObis(pub String);

impl Obis {
    /// The code from an SML object name, if it has the six bytes of an OBIS code.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Obis)
    }

    /// Lowercase hex, as used for measurement keys.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether the value group C.D names active energy (x.8.x), which the survey stores in kWh.
    pub fn is_energy(&self) -> bool {
        self.0[3] == 8
    }

    /// Whether the value group C.D names instantaneous power (x.7.x), stored in kW.
    pub fn is_power(&self) -> bool {
        self.0[3] == 7
    }
}

impl fmt::Display for Obis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a}-{b}:{c}.{d}.{e}*{g}")
    }
}

impl FromStr for Obis {
    type Err = InvalidObis;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidObis(s.to_string());
        let t = s.trim();
        if t.len() == 12 && t.chars().all(|c| c.is_ascii_hexdigit()) {
            let bytes = hex::decode(t).map_err(|_| bad())?;
            return Obis::from_bytes(&bytes).ok_or_else(bad);
        }
        let parts: Vec<&str> = t.split(['-', ':', '.', '*']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(parts) {
            *slot = part.parse().map_err(|_| bad())?;
        }
        Ok(Obis(out))
    }
}

impl serde::Serialize for Obis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Obis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        assert_eq!("0100010800ff".parse::<Obis>().unwrap(), IMPORT_ENERGY);
        assert_eq!("1-0:16.7.0*255".parse::<Obis>().unwrap(), SUM_POWER);
        assert_eq!(SUM_POWER.hex(), "0100100700ff");
        assert_eq!(SUM_POWER.to_string(), "1-0:16.7.0*255");
        assert!("0100".parse::<Obis>().is_err());
        assert!("1-0:1.8.0*256".parse::<Obis>().is_err());
        assert!(IMPORT_ENERGY.is_energy() && SUM_POWER.is_power());
    }
}
