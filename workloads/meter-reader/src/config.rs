//! Reader configuration: everything comes from command-line flags or the matching
//! `METER_READER_*` environment variables, so that a blueprint can pass it all.

use std::path::PathBuf;
use std::time::Duration;

use crate::meter::{MeterModel, Pin};
use crate::obis::{Obis, SURVEY_CODES};

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is malformed; names the setting.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting (environment variable name).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A file named by the configuration cannot be read.
    #[error("{key}: cannot read {path}: {source}")]
    File {
        /// The setting.
        key: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Parity of a serial probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit (the D0 default, 8N1).
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Line settings of a serial probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    /// Baud rate (9600 for SML meters).
    pub baud: u32,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl Default for SerialSettings {
    fn default() -> Self {
        Self {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        }
    }
}

/// Where a probe's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAddr {
    /// A serial device such as `/dev/ttyUSB0`.
    Serial {
        /// Device path.
        path: String,
        /// Line settings.
        settings: SerialSettings,
    },
    /// A networked probe (`host:port`) that forwards the serial line over TCP.
    Tcp(String),
}

impl std::fmt::Display for ProbeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeAddr::Serial { path, .. } => write!(f, "serial://{path}"),
            ProbeAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// One meter read through one probe.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    /// The meter's uuid in the Data API.
    pub meter: uuid::Uuid,
    /// The probe.
    pub probe: ProbeAddr,
    /// The model, needed to unlock the meter by PIN.
    pub model: Option<MeterModel>,
    /// The meter's PIN, if it has to be unlocked.
    pub pin: Option<Pin>,
    /// Codes whose absence means the meter is locked.
    pub expect: Vec<Obis>,
}

/// Parses one meter: `<meter uuid>=<probe>[?key=value&...]`, the probe being
/// `serial:///dev/ttyUSB0`, `/dev/ttyUSB0` or `tcp://host:port`. Keys: `baud`,
/// `data_bits`, `parity` (none, even, odd), `stop_bits`, `model`, `pin`, `pin_file`,
/// `expect` (OBIS codes joined by `+`).
pub fn parse_meter(spec: &str, key: &str) -> Result<MeterConfig, ConfigError> {
    let (id, rest) = spec
        .split_once('=')
        .ok_or_else(|| invalid(key, format!("{spec:?}: expected <meter uuid>=<probe>")))?;
    let meter = uuid::Uuid::parse_str(id.trim())
        .map_err(|e| invalid(key, format!("{id:?} is not a meter uuid: {e}")))?;
    let (addr, query) = rest.trim().split_once('?').unwrap_or((rest.trim(), ""));
    let mut settings = SerialSettings::default();
    let mut model = None;
    let mut pin = None;
    let mut expect = vec![crate::obis::SUM_POWER];
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| invalid(key, format!("{pair:?}: expected key=value")))?;
        let bad = |what: &str| invalid(key, format!("{k}={v:?}: {what}"));
        match k {
            "baud" => settings.baud = v.parse().map_err(|_| bad("not a baud rate"))?,
            "data_bits" => {
                settings.data_bits = v
                    .parse()
                    .ok()
                    .filter(|b| (5..=8).contains(b))
                    .ok_or_else(|| bad("5 to 8"))?
            }
            "stop_bits" => {
                settings.stop_bits = v
                    .parse()
                    .ok()
                    .filter(|b| (1..=2).contains(b))
                    .ok_or_else(|| bad("1 or 2"))?
            }
            "parity" => {
                settings.parity = match v.to_ascii_lowercase().as_str() {
                    "none" | "n" => Parity::None,
                    "even" | "e" => Parity::Even,
                    "odd" | "o" => Parity::Odd,
                    _ => return Err(bad("none, even or odd")),
                }
            }
            "model" => model = Some(v.parse().map_err(|e| bad(&format!("{e}")))?),
            "pin" => pin = Some(v.parse().map_err(|e| bad(&format!("{e}")))?),
            "pin_file" => {
                let text = std::fs::read_to_string(v).map_err(|source| ConfigError::File {
                    key: key.to_string(),
                    path: v.into(),
                    source,
                })?;
                pin = Some(text.parse().map_err(|e| bad(&format!("{e}")))?);
            }
            "expect" => {
                expect = v
                    .split('+')
                    .filter(|c| !c.is_empty())
                    .map(|c| c.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(&format!("{e}")))?
            }
            _ => return Err(bad("unknown setting")),
        }
    }
    let probe = if let Some(a) = addr.strip_prefix("tcp://") {
        if a.is_empty() {
            return Err(invalid(key, "tcp:// needs host:port"));
        }
        ProbeAddr::Tcp(a.to_string())
    } else {
        let path = addr.strip_prefix("serial://").unwrap_or(addr);
        if !path.starts_with('/') {
            return Err(invalid(
                key,
                format!("{addr:?}: expected serial:///dev/..., /dev/... or tcp://host:port"),
            ));
        }
        ProbeAddr::Serial {
            path: path.to_string(),
            settings,
        }
    };
    if pin.is_some() && model.is_none() {
        return Err(invalid(
            key,
            format!("{meter}: a PIN needs the meter model"),
        ));
    }
    Ok(MeterConfig {
        meter,
        probe,
        model,
        pin,
        expect,
    })
}

/// Parses the meter list: meters separated by `,`, `;` or whitespace.
pub fn parse_meters(list: &str, key: &str) -> Result<Vec<MeterConfig>, ConfigError> {
    let meters: Vec<MeterConfig> = list
        .split([',', ';', ' ', '\n', '\t'])
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_meter(s, key))
        .collect::<Result<_, _>>()?;
    if meters.is_empty() {
        return Err(invalid(key, "at least one meter is needed"));
    }
    Ok(meters)
}

/// Parses a comma-separated OBIS list.
pub fn parse_obis_list(list: &str, key: &str) -> Result<Vec<Obis>, ConfigError> {
    if list.trim().is_empty() {
        return Ok(SURVEY_CODES.to_vec());
    }
    list.split([',', ' ', '+'])
        .filter(|s| !s.is_empty())
        .map(|c| c.parse().map_err(|e| invalid(key, format!("{e}"))))
        .collect()
}

/// Parses a duration in seconds (fractions allowed, so tests can shorten cycles).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The complete configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The meters, one probe each.
    pub meters: Vec<MeterConfig>,
    /// Base URL of the Data API (`https://host:8443`).
    pub api_url: String,
    /// PEM file of the CA that signed the Data API's server certificate.
    pub ca_cert: PathBuf,
    /// PEM file of the device's client certificate.
    pub client_cert: PathBuf,
    /// PEM file of the device's private key.
    pub client_key: PathBuf,
    /// Where the store and the status file live.
    pub data_dir: PathBuf,
    /// Time between measurements (15 min in the survey).
    pub measurement_interval: Duration,
    /// Time between uploads (at most 60 min in the survey).
    pub report_interval: Duration,
    /// Longest wait between retries of a failed upload.
    pub retry_max: Duration,
    /// The codes recorded in measurements.
    pub obis: Vec<Obis>,
    /// Measurements per upload request (at most 1000).
    pub batch_size: usize,
    /// How long expected codes may be missing before the PIN is entered (and between
    /// attempts).
    pub unlock_after: Duration,
    /// A reading older than this is not used for a measurement (probe unplugged).
    pub reading_max_age: Duration,
    /// Factor on PIN entry timing (1 for real meters).
    pub timing_scale: f64,
    /// Where the device frontend listens; `None` switches it off.
    pub ui_listen: Option<std::net::SocketAddr>,
    /// Host names the device frontend answers to besides IP addresses and home-network
    /// names.
    pub ui_hosts: Vec<String>,
}

/// Parses the device frontend's address: `host:port`, or `off` (also `none`, empty).
pub fn parse_ui_listen(
    value: &str,
    key: &str,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("off") || value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        invalid(
            key,
            format!("{value:?}: expected ip:port (0.0.0.0:8080) or off"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f1c8a52-7a2e-4c7b-9a51-0d3f2b9e4c11";

    #[test]
    fn serial_and_tcp_probes() {
        let m = parse_meter(
            &format!("{ID}=serial:///dev/ttyUSB0?baud=2400&parity=even&data_bits=7&model=mt681&pin=0420&expect=0100100700ff+1-0:1.7.0*255"),
            "K",
        )
        .unwrap();
        assert_eq!(
            m.probe,
            ProbeAddr::Serial {
                path: "/dev/ttyUSB0".into(),
                settings: SerialSettings {
                    baud: 2400,
                    data_bits: 7,
                    parity: Parity::Even,
                    stop_bits: 1
                }
            }
        );
        assert_eq!(m.model, Some(MeterModel::Mt681));
        assert_eq!(m.pin, Some("0420".parse().unwrap()));
        assert_eq!(m.expect.len(), 2);
        let ms = parse_meters(&format!("{ID}=/dev/ttyAMA0, {ID}=tcp://probe:5000"), "K").unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].probe, ProbeAddr::Tcp("probe:5000".into()));
        assert_eq!(ms[0].expect, vec![crate::obis::SUM_POWER]);
    }

    #[test]
    fn errors_name_the_setting() {
        for bad in [
            "nouuid=/dev/ttyUSB0",
            ID,
            &format!("{ID}=ttyUSB0"),
            &format!("{ID}=/dev/ttyUSB0?baud=fast"),
            &format!("{ID}=/dev/ttyUSB0?pin=1234"),
            &format!("{ID}=/dev/ttyUSB0?model=X"),
            &format!("{ID}=/dev/ttyUSB0?color=red"),
            &format!("{ID}=tcp://"),
        ] {
            let e = parse_meter(bad, "METER_READER_METERS").unwrap_err();
            assert!(
                e.to_string().starts_with("METER_READER_METERS"),
                "{bad}: {e}"
            );
        }
        assert!(parse_meters(" , ", "K").is_err());
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_obis_list("", "K").unwrap(), SURVEY_CODES.to_vec());
        assert!(parse_obis_list("0100", "K").is_err());
        assert_eq!(
            parse_ui_listen("0.0.0.0:8080", "K").unwrap(),
            Some("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(parse_ui_listen("off", "K").unwrap(), None);
        assert_eq!(parse_ui_listen("", "K").unwrap(), None);
        assert!(parse_ui_listen("8080", "METER_READER_UI_LISTEN")
            .unwrap_err()
            .to_string()
            .starts_with("METER_READER_UI_LISTEN"));
    }

    #[test]
    fn pin_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        std::fs::write(&f, "9876\n").unwrap();
        let m = parse_meter(
            &format!("{ID}=/dev/x?model=EHZ&pin_file={}", f.display()),
            "K",
        )
        .unwrap();
        assert_eq!(m.pin, Some("9876".parse().unwrap()));
    }
}
