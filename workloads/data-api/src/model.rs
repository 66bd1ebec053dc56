//! The survey's entities (figures 4.2–4.7): everything is modelled around the household,
//! which owns its participant's contact details, registration details, devices, meters,
//! photovoltaic systems and consent. Measurements are kept apart because they are the
//! bulk of the data and outlive the contact details.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The participant: the contact details of section 3.1.2. Removed on revocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Unique across households: the client certificate's email selects the household.
    pub email: String,
}

/// A count written as a JSON number: `2` or `2.0` (JSON does not tell integers apart, and
/// some clients write every number with a fraction), but never `2.5` or `-1`.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let value = f64::deserialize(deserializer)?;
    if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 2f64.powi(53)) {
        return Err(de::Error::custom(format!("{value} is not a whole number")));
    }
    T::try_from(value as u64).map_err(|_| de::Error::custom(format!("{value} is too large")))
}

/// [`whole_number`] for an optional count.
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "whole_number")] u64);
    match Option::<Whole>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Whole(n)) => T::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{n} is too large"))),
    }
}

/// The household's answers to the metadata questions of the registration form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(deserialize_with = "whole_number")]
    pub children: u32,
    #[serde(deserialize_with = "whole_number")]
    pub adults: u32,
    #[serde(deserialize_with = "whole_number")]
    pub employed_adults: u32,
    pub ev_charger: bool,
    pub heat_pump: bool,
    pub home_battery: bool,
}

/// Postal address; dropped on revocation, only the displaced location survives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub street: String,
    pub house_number: String,
    pub postal_code: String,
    pub city: String,
    #[serde(default = "default_country")]
    pub country: String,
}

fn default_country() -> String {
    "DE".to_owned()
}

/// WGS 84 coordinates of the household (figure 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

/// Meter type constants of table 4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MeterType {
    #[serde(rename = "ELECTRICITY")]
    Electricity,
    #[serde(rename = "PV-GENERATION")]
    PvGeneration,
}

impl MeterType {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterType::Electricity => "ELECTRICITY",
            MeterType::PvGeneration => "PV-GENERATION",
        }
    }
}

/// Meter model numbers of table 4.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum MeterModel {
    MT681,
    MT175,
    EHZ,
    DD3,
    EASY,
}

impl MeterModel {
    pub fn as_str(self) -> &'static str {
        match self {
            MeterModel::MT681 => "MT681",
            MeterModel::MT175 => "MT175",
            MeterModel::EHZ => "EHZ",
            MeterModel::DD3 => "DD3",
            MeterModel::EASY => "EASY",
        }
    }
}

/// Permission scopes of table 4.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Account,
    Household,
    Consent,
    MeasurementRead,
    MeasurementWrite,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Account,
        Scope::Household,
        Scope::Consent,
        Scope::MeasurementRead,
        Scope::MeasurementWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Household => "household",
            Scope::Consent => "consent",
            Scope::MeasurementRead => "measurement-read",
            Scope::MeasurementWrite => "measurement-write",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown scope {0:?} (known: account, household, consent, measurement-read, measurement-write)"
)]
pub struct UnknownScope(pub String);

/// A headless measurement device in the household. Its health (component versions, last
/// activity) changes with every request and lives in [`DeviceStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasurementDevice {
    pub uuid: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    /// Scopes the device may use; a certificate can narrow them further, never widen.
    #[serde(default = "all_scopes")]
    pub scopes: Vec<Scope>,
}

pub fn all_scopes() -> Vec<Scope> {
    Scope::ALL.to_vec()
}

/// What a device last reported about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Per-component versions (e.g. `meter-reader` → `0.1.0`), as the edge components
    /// are deployed independently of each other.
    pub component_versions: BTreeMap<String, String>,
    pub last_activity: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    pub uuid: Uuid,
    #[serde(rename = "type")]
    pub meter_type: MeterType,
    pub model: MeterModel,
    pub measurement_device: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhotovoltaicSystem {
    pub uuid: Uuid,
    /// Nominal power in kWp.
    pub nominal_power: f64,
    /// Degrees clockwise from north.
    pub azimuth: f64,
    /// Degrees from horizontal.
    pub tilt: f64,
    /// `None` once anonymized: only the year is kept then.
    pub installation_date: Option<NaiveDate>,
    pub installation_year: i32,
    pub generation_meter: Option<Uuid>,
}

impl PhotovoltaicSystem {
    /// Measure (C) of section 3.1.4: the specification could be matched against the public
    /// registry (MaStR), so the nominal power is rounded and only the year of installation
    /// is kept. Azimuth and tilt are recorded only vaguely there and stay.
    pub fn anonymize(&mut self) {
        self.nominal_power = self.nominal_power.round();
        if let Some(date) = self.installation_date.take() {
            self.installation_year = date.year();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentState {
    NotGranted,
    Granted,
    Revoked,
}

impl ConsentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::NotGranted => "NOT_GRANTED",
            ConsentState::Granted => "GRANTED",
            ConsentState::Revoked => "REVOKED",
        }
    }
}

/// A household's participation status (figure 4.5). Granting and revoking are one-time
/// decisions: NOT_GRANTED → GRANTED → REVOKED, never back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    pub state: ConsentState,
    pub granted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("consent has already been granted")]
    AlreadyGranted,
    #[error("consent has been revoked, which cannot be undone")]
    Revoked,
    #[error("consent has not been granted, so there is nothing to revoke")]
    NotGranted,
}

impl ConsentError {
    pub fn code(self) -> &'static str {
        match self {
            ConsentError::AlreadyGranted => "consent_already_granted",
            ConsentError::Revoked => "consent_revoked",
            ConsentError::NotGranted => "consent_not_granted",
        }
    }
}

impl Default for Consent {
    fn default() -> Self {
        Consent {
            state: ConsentState::NotGranted,
            granted_at: None,
            revoked_at: None,
        }
    }
}

impl Consent {
    pub fn grant(&mut self, now: DateTime<Utc>) -> Result<(), ConsentError> {
        match self.state {
            ConsentState::NotGranted => {
                self.state = ConsentState::Granted;
                self.granted_at = Some(now);
                Ok(())
            }
            ConsentState::Granted => Err(ConsentError::AlreadyGranted),
            ConsentState::Revoked => Err(ConsentError::Revoked),
        }
    }

    pub fn revoke(&mut self, now: DateTime<Utc>) -> Result<(), ConsentError> {
        match self.state {
            ConsentState::Granted => {
                self.state = ConsentState::Revoked;
                self.revoked_at = Some(now);
                Ok(())
            }
            ConsentState::NotGranted => Err(ConsentError::NotGranted),
            ConsentState::Revoked => Err(ConsentError::Revoked),
        }
    }

    /// Whether devices may deliver measurements; the error names why not.
    pub fn accepts_measurements(&self) -> Result<(), ConsentError> {
        match self.state {
            ConsentState::Granted => Ok(()),
            ConsentState::NotGranted => Err(ConsentError::NotGranted),
            ConsentState::Revoked => Err(ConsentError::Revoked),
        }
    }
}

/// The aggregate stored per household. `user`, `address` are `None` after anonymization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Household {
    pub id: Uuid,
    pub user: Option<User>,
    pub metadata: Option<Metadata>,
    pub address: Option<Address>,
    pub location: Option<Location>,
    pub consent: Consent,
    pub measurement_devices: Vec<MeasurementDevice>,
    pub meters: Vec<Meter>,
    pub pv_systems: Vec<PhotovoltaicSystem>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub anonymized_at: Option<DateTime<Utc>>,
    /// The personal part (user, address, exact location) as the stores keep it: encrypted
    /// under the household's own key (see [`crate::privacy`]). `None` in every household
    /// the API works with, and in anonymized households, which have no personal part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedPersonal>,
}

/// The encrypted personal part of a stored household and the keyed digest of its email
/// that the uniqueness index holds instead of the email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedPersonal {
    pub email_index: Option<String>,
    /// Hex of nonce ‖ ciphertext ‖ tag.
    pub ciphertext: String,
}

/// The email index key of a participant's email (see [`Household::email_index_key`]).
pub fn email_index_key(email: &str) -> String {
    email.to_lowercase()
}

impl Household {
    pub fn email(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.email.as_str())
    }

    /// What the stores' unique email index holds for this household: the keyed digest of
    /// a sealed household, else [`email_index_key`] of its email. Stores compare it
    /// exactly and never interpret it.
    pub fn email_index_key(&self) -> Option<String> {
        match &self.sealed {
            Some(sealed) => sealed.email_index.clone(),
            None => self.email().map(email_index_key),
        }
    }

    pub fn meter(&self, uuid: Uuid) -> Option<&Meter> {
        self.meters.iter().find(|m| m.uuid == uuid)
    }

    pub fn device(&self, uuid: Uuid) -> Option<&MeasurementDevice> {
        self.measurement_devices.iter().find(|d| d.uuid == uuid)
    }
}

/// A 6-byte OBIS code, written as 12 lowercase hex digits (e.g. `0100010800ff` for 1.8.0);
/// the short code is ambiguous, so the hex form is the key (section 4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObisCode(pub [u8; 6]);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an OBIS code: expected 12 lowercase hex digits such as 0100010800ff")]
pub struct InvalidObisCode(pub String);

impl FromStr for ObisCode {
    type Err = InvalidObisCode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed =
            s.len() == 12 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(InvalidObisCode(s.to_owned()));
        }
        let mut bytes = [0u8; 6];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidObisCode(s.to_owned()))?;
        Ok(ObisCode(bytes))
    }
}

impl fmt::Display for ObisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The data points of one measurement: a list of single-key objects
/// `[{"0100010800ff": 12345.6}, ...]`, kept in the order the device sent them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MeasurementData(pub Vec<(ObisCode, f64)>);

impl Serialize for MeasurementData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Point<'a>(&'a ObisCode, f64);
        impl Serialize for Point<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(&self.0.to_string(), &self.1)?;
                map.end()
            }
        }
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for (code, value) in &self.0 {
            seq.serialize_element(&Point(code, *value))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for MeasurementData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = MeasurementData;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of {\"<obis hex code>\": number} objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut points = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(point) = seq.next_element::<DataPoint>()? {
                    points.push((point.0, point.1));
                }
                Ok(MeasurementData(points))
            }
        }
        deserializer.deserialize_seq(DataVisitor)
    }
}

struct DataPoint(ObisCode, f64);

impl<'de> Deserialize<'de> for DataPoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PointVisitor;
        impl<'de> Visitor<'de> for PointVisitor {
            type Value = DataPoint;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single-key object {\"<obis hex code>\": number}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (key, value): (String, f64) = map
                    .next_entry()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(2, &self));
                }
                let code = key.parse().map_err(de::Error::custom)?;
                Ok(DataPoint(code, value))
            }
        }
        deserializer.deserialize_map(PointVisitor)
    }
}

/// One reading of one meter at one point in time (figure 4.6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub uuid: Uuid,
    pub meter: Uuid,
    pub measured_at: DateTime<Utc>,
    pub data: MeasurementData,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn consent_is_one_way() {
        let mut consent = Consent::default();
        assert_eq!(
            consent.revoke(t("2026-01-01T00:00:00Z")),
            Err(ConsentError::NotGranted)
        );
        consent.grant(t("2026-01-02T00:00:00Z")).unwrap();
        assert_eq!(consent.state, ConsentState::Granted);
        assert_eq!(
            consent.grant(t("2026-01-03T00:00:00Z")),
            Err(ConsentError::AlreadyGranted)
        );
        consent.revoke(t("2026-01-04T00:00:00Z")).unwrap();
        assert_eq!(consent.state, ConsentState::Revoked);
        assert_eq!(
            consent.grant(t("2026-01-05T00:00:00Z")),
            Err(ConsentError::Revoked)
        );
        assert_eq!(
            consent.revoke(t("2026-01-05T00:00:00Z")),
            Err(ConsentError::Revoked)
        );
        assert_eq!(consent.granted_at, Some(t("2026-01-02T00:00:00Z")));
        assert_eq!(consent.revoked_at, Some(t("2026-01-04T00:00:00Z")));
    }

    #[test]
    fn obis_codes_are_strict_lowercase_hex() {
        assert_eq!(
            "0100010800ff".parse::<ObisCode>().unwrap().0,
            [1, 0, 1, 8, 0, 255]
        );
        for bad in [
            "0100010800FF",
            "0100010800f",
            "0100010800fff",
            "01000108 0ff",
            "",
            "zz0001080ff0",
        ] {
            assert!(bad.parse::<ObisCode>().is_err(), "{bad}");
        }
    }

    #[test]
    fn measurement_data_round_trips_as_single_key_objects() {
        let json = r#"[{"0100010800ff":12345.6},{"0100100700ff":-230.0}]"#;
        let data: MeasurementData = serde_json::from_str(json).unwrap();
        assert_eq!(data.0.len(), 2);
        assert_eq!(serde_json::to_string(&data).unwrap(), json);
        assert!(serde_json::from_str::<MeasurementData>(r#"[{"a":1,"b":2}]"#).is_err());
        assert!(serde_json::from_str::<MeasurementData>(r#"[{}]"#).is_err());
    }

    #[test]
    fn pv_anonymization_keeps_year_and_rounds_power() {
        let mut pv = PhotovoltaicSystem {
            uuid: Uuid::nil(),
            nominal_power: 9.5,
            azimuth: 181.5,
            tilt: 32.0,
            installation_date: Some(NaiveDate::from_ymd_opt(2019, 5, 17).unwrap()),
            installation_year: 2019,
            generation_meter: None,
        };
        pv.anonymize();
        assert_eq!(pv.nominal_power, 10.0);
        assert_eq!(pv.installation_date, None);
        assert_eq!(pv.installation_year, 2019);
        assert_eq!(pv.azimuth, 181.5);
    }
}
