//! A simulated meter: produces the SML transmissions of a real meter (the structure of an
//! Iskra MT681 or an EMH eHZ push telegram, valid CRC and escaping) from counters that
//! advance with a plausible power curve, optionally locked behind a PIN.

use std::time::Duration;

use crate::meter::MeterModel;
use crate::obis::{self, Obis};
use crate::sml::message::{
    CloseResponse, GetListResponse, ListEntry, Message, MessageBody, OpenResponse, SmlTime,
    SmlValue,
};
use crate::sml::transport::encode_transmission;
use crate::sml::units;

/// What the simulated meter starts from.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Model whose telegram structure and PIN timing are simulated.
    pub model: MeterModel,
    /// Import energy counter at start, Wh.
    pub import_wh: f64,
    /// Export energy counter at start, Wh.
    pub export_wh: f64,
    /// Mean power, W; negative means feeding into the grid.
    pub power_w: f64,
    /// Amplitude of the slow power swing around the mean, W (0 for constant power).
    pub power_swing_w: f64,
    /// Meter serial, part of the server id.
    pub serial: u32,
    /// Whether power is hidden until the PIN is entered.
    pub locked: bool,
    /// Seed of the power noise.
    pub seed: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            model: MeterModel::Mt681,
            import_wh: 12_345_678.9,
            export_wh: 0.0,
            power_w: 350.0,
            power_swing_w: 0.0,
            serial: 0x0004_325e,
            locked: false,
            seed: 1,
        }
    }
}

/// The simulated meter's state.
#[derive(Debug, Clone)]
pub struct SimMeter {
    settings: SimSettings,
    import_wh: f64,
    export_wh: f64,
    uptime: Duration,
    power_w: f64,
    transaction: u32,
    unlocked: bool,
    rng: u64,
}

impl SimMeter {
    /// A meter at its start counters.
    pub fn new(settings: SimSettings) -> Self {
        Self {
            import_wh: settings.import_wh,
            export_wh: settings.export_wh,
            uptime: Duration::ZERO,
            power_w: settings.power_w,
            transaction: 0x0138_8031,
            unlocked: !settings.locked,
            rng: settings.seed.max(1),
            settings,
        }
    }

    /// Whether power values are shown.
    pub fn unlocked(&self) -> bool {
        self.unlocked
    }

    /// The PIN was entered: show everything from now on.
    pub fn unlock(&mut self) {
        self.unlocked = true;
    }

    /// Import energy counter, Wh.
    pub fn import_wh(&self) -> f64 {
        self.import_wh
    }

    /// Export energy counter, Wh.
    pub fn export_wh(&self) -> f64 {
        self.export_wh
    }

    /// Current power, W (positive: import).
    pub fn power_w(&self) -> f64 {
        self.power_w
    }

    fn noise(&mut self) -> f64 {
        // xorshift64: deterministic per seed, which keeps runs reproducible
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 2001) as f64 / 1000.0 - 1.0
    }

    /// Lets `dt` pass: the counters integrate the power of the elapsed interval.
    pub fn advance(&mut self, dt: Duration) {
        let energy = self.power_w * dt.as_secs_f64() / 3600.0;
        if energy >= 0.0 {
            self.import_wh += energy;
        } else {
            self.export_wh -= energy;
        }
        self.uptime += dt;
        let s = &self.settings;
        if s.power_swing_w != 0.0 {
            let phase = self.uptime.as_secs_f64() / 600.0 * std::f64::consts::TAU;
            let (mean, swing) = (s.power_w, s.power_swing_w);
            self.power_w = mean + swing * phase.sin() + swing * 0.1 * self.noise();
        }
    }

    fn manufacturer(&self) -> &'static [u8; 3] {
        match self.settings.model {
            MeterModel::Mt681 | MeterModel::Mt175 => b"ISK",
            MeterModel::Ehz => b"EMH",
            MeterModel::Dd3 => b"EBZ",
            MeterModel::Easy => b"ESY",
        }
    }

    /// The meter's server id: `0a 01`, manufacturer, `00`, serial.
    pub fn server_id(&self) -> Vec<u8> {
        let mut id = vec![0x0a, 0x01];
        id.extend_from_slice(self.manufacturer());
        id.push(0x00);
        id.extend_from_slice(&self.settings.serial.to_be_bytes());
        id
    }

    fn entry(obis: Obis, unit: Option<u8>, scaler: Option<i8>, value: SmlValue) -> ListEntry {
        ListEntry {
            obj_name: obis.0.to_vec(),
            status: None,
            val_time: None,
            unit,
            scaler,
            value,
            value_signature: None,
        }
    }

    fn entries(&self) -> Vec<ListEntry> {
        let iskra = matches!(self.settings.model, MeterModel::Mt681 | MeterModel::Mt175);
        let server_id = self.server_id();
        let energy = |obis: Obis, wh: f64, status: Option<u64>| ListEntry {
            status,
            ..Self::entry(
                obis,
                Some(units::WATT_HOUR),
                Some(-1),
                if iskra {
                    SmlValue::UInt((wh * 10.0).round() as u64)
                } else {
                    SmlValue::Int((wh * 10.0).round() as i64)
                },
            )
        };
        let mut entries = Vec::with_capacity(6);
        if iskra {
            entries.push(Self::entry(
                Obis([1, 0, 96, 50, 1, 1]),
                None,
                None,
                SmlValue::Bytes(self.manufacturer().to_vec()),
            ));
            entries.push(Self::entry(
                obis::SERIAL_NUMBER,
                None,
                None,
                SmlValue::Bytes(server_id),
            ));
            entries.push(energy(
                obis::IMPORT_ENERGY,
                self.import_wh,
                Some(0x001c_8104),
            ));
            entries.push(energy(obis::EXPORT_ENERGY, self.export_wh, None));
            if self.unlocked {
                entries.push(Self::entry(
                    obis::SUM_POWER,
                    Some(units::WATT),
                    Some(0),
                    SmlValue::Int(self.power_w.round() as i64),
                ));
            }
        } else {
            entries.push(Self::entry(
                Obis([0x81, 0x81, 0xc7, 0x82, 0x03, 0xff]),
                None,
                None,
                SmlValue::Bytes(self.manufacturer().to_vec()),
            ));
            entries.push(Self::entry(
                Obis([1, 0, 0, 0, 9, 255]),
                None,
                None,
                SmlValue::Bytes(server_id),
            ));
            entries.push(energy(obis::IMPORT_ENERGY, self.import_wh, Some(0x0182)));
            entries.push(energy(obis::EXPORT_ENERGY, self.export_wh, Some(0x0182)));
            if self.unlocked {
                entries.push(Self::entry(
                    obis::SUM_POWER,
                    Some(units::WATT),
                    Some(-1),
                    SmlValue::Int((self.power_w * 10.0).round() as i64),
                ));
            }
        }
        entries
    }

    /// The SML messages of the next transmission.
    pub fn messages(&mut self) -> Vec<Message> {
        let secs = SmlTime::SecIndex(self.uptime.as_secs() as u32);
        let server_id = self.server_id();
        let entries = self.entries();
        let mut msg = |body| {
            self.transaction = self.transaction.wrapping_add(1);
            Message {
                transaction_id: self.transaction.to_be_bytes().to_vec(),
                group_no: 0,
                abort_on_error: 0,
                body,
                crc_ok: true,
            }
        };
        let open = msg(MessageBody::OpenResponse(OpenResponse {
            req_file_id: (self.uptime.as_secs() as u32).to_be_bytes().to_vec(),
            server_id: server_id.clone(),
            ref_time: Some(secs),
            sml_version: Some(1),
            ..Default::default()
        }));
        let list = msg(MessageBody::GetListResponse(GetListResponse {
            server_id,
            list_name: Some(vec![1, 0, 0x62, 0x0a, 0xff, 0xff]),
            act_sensor_time: Some(secs),
            entries,
            ..Default::default()
        }));
        let close = msg(MessageBody::CloseResponse(CloseResponse::default()));
        vec![open, list, close]
    }

    /// The bytes of the next transmission, as they go over the optical interface.
    pub fn transmission(&mut self) -> Vec<u8> {
        let payload: Vec<u8> = self.messages().iter().flat_map(Message::encode).collect();
        encode_transmission(&payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sml;

    #[test]
    fn transmissions_decode_to_the_counters() {
        for model in MeterModel::ALL {
            let mut m = SimMeter::new(SimSettings {
                model,
                power_w: 3600.0,
                ..SimSettings::default()
            });
            m.advance(Duration::from_secs(10));
            let decoded = sml::decode_all(&m.transmission());
            let t = decoded[0].as_ref().unwrap();
            let r = t.readings();
            assert_eq!(r[&obis::IMPORT_ENERGY].value, 12_345_688.9, "{model}");
            assert_eq!(r[&obis::SUM_POWER].value, 3600.0, "{model}");
            assert_eq!(r[&obis::SUM_POWER].unit_symbol(), Some("W"));
        }
    }

    #[test]
    fn locked_meter_hides_power_until_unlocked() {
        let mut m = SimMeter::new(SimSettings {
            locked: true,
            ..SimSettings::default()
        });
        let r = sml::decode_all(&m.transmission())[0]
            .as_ref()
            .unwrap()
            .readings();
        assert!(!r.contains_key(&obis::SUM_POWER));
        assert!(r.contains_key(&obis::IMPORT_ENERGY));
        m.unlock();
        let r = sml::decode_all(&m.transmission())[0]
            .as_ref()
            .unwrap()
            .readings();
        assert!(r.contains_key(&obis::SUM_POWER));
    }

    #[test]
    fn feeding_in_counts_export() {
        let mut m = SimMeter::new(SimSettings {
            power_w: -1800.0,
            power_swing_w: 0.0,
            ..SimSettings::default()
        });
        m.advance(Duration::from_secs(3600));
        assert_eq!(m.export_wh(), 1800.0);
        assert_eq!(m.import_wh(), 12_345_678.9);
    }
}
