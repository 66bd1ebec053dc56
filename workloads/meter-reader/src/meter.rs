//! Meter models and their PIN entry through the probe's infrared transmitter.
//!
//! Locked meters only show energy totals on their push interface; entering the PIN by
//! light pulses enables the detailed readout (power). The pulse timing differs from model
//! to model, so every model implements [`MeterInterface`] with its own timing, and
//! [`meter_interface`] picks the implementation for the model named in the configuration.
//!
//! The entry procedure is the one meters with flash-light PIN entry share: a wake flash,
//! then per digit as many short flashes as the digit's value, and a pause in which the
//! meter accepts the digit after [`UnlockTiming::digit_accept`] of darkness.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Meter models the survey supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MeterModel {
    /// Iskra MT681.
    Mt681,
    /// Iskra MT175.
    Mt175,
    /// EMH eHZ.
    Ehz,
    /// eBZ DD3.
    Dd3,
    /// EasyMeter Q3A ("EASY").
    Easy,
}

impl MeterModel {
    /// All models.
    pub const ALL: [MeterModel; 5] = [
        MeterModel::Mt681,
        MeterModel::Mt175,
        MeterModel::Ehz,
        MeterModel::Dd3,
        MeterModel::Easy,
    ];

    /// The model's name as used in configuration and in the Data API.
    pub fn name(self) -> &'static str {
        match self {
            MeterModel::Mt681 => "MT681",
            MeterModel::Mt175 => "MT175",
            MeterModel::Ehz => "EHZ",
            MeterModel::Dd3 => "DD3",
            MeterModel::Easy => "EASY",
        }
    }
}

impl fmt::Display for MeterModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model name that is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown meter model {0:?}: expected one of MT681, MT175, EHZ, DD3, EASY")]
pub struct UnknownModel(pub String);

impl FromStr for MeterModel {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MeterModel::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownModel(s.to_string()))
    }
}

/// Pulse timing of a model's PIN entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlockTiming {
    /// The flash that wakes the display and opens PIN entry.
    pub wake_flash: Duration,
    /// One short flash, which counts the current digit up by one.
    pub flash: Duration,
    /// Darkness between two short flashes of the same digit.
    pub flash_gap: Duration,
    /// Darkness after which the meter accepts the current digit and moves on.
    pub digit_accept: Duration,
}

impl UnlockTiming {
    /// The same timing with every duration multiplied by `factor` (for simulated meters
    /// in tests; real meters need factor 1).
    pub fn scaled(self, factor: f64) -> Self {
        let f = |d: Duration| d.mul_f64(factor.clamp(0.01, 100.0));
        Self {
            wake_flash: f(self.wake_flash),
            flash: f(self.flash),
            flash_gap: f(self.flash_gap),
            digit_accept: f(self.digit_accept),
        }
    }

    /// How long the transmitter waits per digit, measured from the digit's anchor (its
    /// last flash, or the previous digit's anchor for a zero). A quarter longer than the
    /// meter's acceptance time, so that a digit is accepted before the next one starts
    /// even after three zeros in a row, with a quarter of `digit_accept` to spare for
    /// scheduling jitter.
    pub fn digit_step(&self) -> Duration {
        self.digit_accept.mul_f64(1.25)
    }
}

/// A meter PIN: four decimal digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(Vec<u8>);

impl Pin {
    /// The digits.
    pub fn digits(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The PIN is a secret of the household's energy supplier: never log it.
        f.write_str("Pin(****)")
    }
}

/// A PIN that is not four decimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a meter PIN has four decimal digits")]
pub struct InvalidPin;

impl FromStr for Pin {
    type Err = InvalidPin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidPin);
        }
        Ok(Pin(s.bytes().map(|b| b - b'0').collect()))
    }
}

/// The probe's infrared transmitter.
pub trait IrTransmitter {
    /// Lights the transmitter for `on`, returning when the flash is over.
    fn flash(&mut self, on: Duration) -> std::io::Result<()>;
    /// Stays dark for `d`.
    fn pause(&mut self, d: Duration);
}

/// Why enabling the detailed readout failed.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// The transmitter could not be driven.
    #[error("infrared transmitter: {0}")]
    Transmitter(#[from] std::io::Error),
}

/// What a meter model needs to be driven through its optical interface.
pub trait MeterInterface: Send + Sync {
    /// The model.
    fn model(&self) -> MeterModel;
    /// The model's PIN entry timing.
    fn timing(&self) -> UnlockTiming;
    /// Enters the PIN to enable the detailed readout (power values). Whether it worked
    /// shows in the data the meter sends afterwards.
    fn enable_detailed_readout(
        &self,
        tx: &mut dyn IrTransmitter,
        pin: &Pin,
    ) -> Result<(), MeterError> {
        enter_pin_by_flashes(self.timing(), tx, pin)
    }
}

/// The shared flash-count procedure, parameterised by timing.
pub fn enter_pin_by_flashes(
    t: UnlockTiming,
    tx: &mut dyn IrTransmitter,
    pin: &Pin,
) -> Result<(), MeterError> {
    tx.flash(t.wake_flash)?;
    tx.pause(t.flash_gap);
    // `since_anchor` is the time spent since the event the meter's acceptance timer
    // started at: its last flash, or its last digit change.
    let mut since_anchor = t.wake_flash + t.flash_gap;
    for &digit in pin.digits() {
        for i in 0..digit {
            if i > 0 {
                tx.pause(t.flash_gap);
            }
            tx.flash(t.flash)?;
            since_anchor = t.flash;
        }
        tx.pause(t.digit_step().saturating_sub(since_anchor));
        since_anchor = Duration::ZERO;
    }
    Ok(())
}

macro_rules! model {
    ($name:ident, $model:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name {
            timing: UnlockTiming,
        }

        impl MeterInterface for $name {
            fn model(&self) -> MeterModel {
                $model
            }
            fn timing(&self) -> UnlockTiming {
                self.timing
            }
        }
    };
}

model!(Mt681, MeterModel::Mt681, "Iskra MT681.");
model!(Mt175, MeterModel::Mt175, "Iskra MT175.");
model!(Ehz, MeterModel::Ehz, "EMH eHZ.");
model!(Dd3, MeterModel::Dd3, "eBZ DD3.");
model!(Easy, MeterModel::Easy, "EasyMeter Q3A.");

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Default PIN entry timing of a model: wake flash, short flash, gap, digit acceptance.
/// Meters accept a digit after about three seconds of darkness; the short flashes must
/// stay well under the one to two seconds after which most models treat light as a
/// long press.
pub fn default_timing(model: MeterModel) -> UnlockTiming {
    let (wake, flash, gap, accept) = match model {
        MeterModel::Mt681 => (ms(1_000), ms(200), ms(300), ms(3_000)),
        MeterModel::Mt175 => (ms(1_000), ms(250), ms(350), ms(3_000)),
        MeterModel::Ehz => (ms(600), ms(250), ms(250), ms(3_500)),
        MeterModel::Dd3 => (ms(1_500), ms(300), ms(400), ms(4_000)),
        MeterModel::Easy => (ms(800), ms(200), ms(400), ms(3_000)),
    };
    UnlockTiming {
        wake_flash: wake,
        flash,
        flash_gap: gap,
        digit_accept: accept,
    }
}

/// Factory: the interface of a model, its timing scaled by `timing_scale` (1 for real
/// meters).
pub fn meter_interface(model: MeterModel, timing_scale: f64) -> Box<dyn MeterInterface> {
    let timing = default_timing(model).scaled(timing_scale);
    match model {
        MeterModel::Mt681 => Box::new(Mt681 { timing }),
        MeterModel::Mt175 => Box::new(Mt175 { timing }),
        MeterModel::Ehz => Box::new(Ehz { timing }),
        MeterModel::Dd3 => Box::new(Dd3 { timing }),
        MeterModel::Easy => Box::new(Easy { timing }),
    }
}

/// The meter's side of PIN entry, as the simulator plays it: counts flashes per digit
/// and accepts a digit after [`UnlockTiming::digit_accept`] without light.
#[derive(Debug, Clone)]
pub struct PinEntry {
    timing: UnlockTiming,
    pin: Pin,
    entering: Option<(Vec<u8>, u8)>,
    anchor: Duration,
}

/// What the meter did with a flash or with the passing of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinEvent {
    /// Nothing to report.
    None,
    /// PIN entry opened.
    Opened,
    /// A digit was accepted.
    Digit(u8),
    /// The right PIN was entered.
    Unlocked,
    /// A wrong PIN was entered.
    Rejected,
}

impl PinEntry {
    /// A meter with this timing and PIN, PIN entry closed.
    pub fn new(timing: UnlockTiming, pin: Pin) -> Self {
        Self {
            timing,
            pin,
            entering: None,
            anchor: Duration::ZERO,
        }
    }

    /// Time passes until `now` (a monotonic clock reading); returns what happened.
    pub fn tick(&mut self, now: Duration) -> PinEvent {
        let Some((digits, current)) = &mut self.entering else {
            return PinEvent::None;
        };
        if now.saturating_sub(self.anchor) < self.timing.digit_accept {
            return PinEvent::None;
        }
        let digit = *current;
        digits.push(digit);
        *current = 0;
        self.anchor += self.timing.digit_accept;
        if digits.len() == self.pin.digits().len() {
            let ok = digits.as_slice() == self.pin.digits();
            self.entering = None;
            return if ok {
                PinEvent::Unlocked
            } else {
                PinEvent::Rejected
            };
        }
        PinEvent::Digit(digit)
    }

    /// A flash began at `now`.
    pub fn flash(&mut self, now: Duration) -> PinEvent {
        match &mut self.entering {
            None => {
                self.entering = Some((Vec::new(), 0));
                self.anchor = now;
                PinEvent::Opened
            }
            Some((_, current)) => {
                *current = current.saturating_add(1) % 10;
                self.anchor = now;
                PinEvent::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the transmitter's flashes into the meter's PIN entry on a virtual clock.
    struct Virtual<'a> {
        now: Duration,
        meter: &'a mut PinEntry,
        events: Vec<PinEvent>,
    }

    impl Virtual<'_> {
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now = (self.now + ms(10)).min(end);
                let e = self.meter.tick(self.now);
                if e != PinEvent::None {
                    self.events.push(e);
                }
            }
        }
    }

    impl IrTransmitter for Virtual<'_> {
        fn flash(&mut self, on: Duration) -> std::io::Result<()> {
            let e = self.meter.flash(self.now);
            if e != PinEvent::None {
                self.events.push(e);
            }
            self.advance(on);
            Ok(())
        }
        fn pause(&mut self, d: Duration) {
            self.advance(d);
        }
    }

    #[test]
    fn every_model_unlocks_its_simulated_meter() {
        for model in MeterModel::ALL {
            for pin in ["1234", "0000", "9090", "0007", "5000"] {
                let iface = meter_interface(model, 1.0);
                let mut meter = PinEntry::new(iface.timing(), pin.parse().unwrap());
                let mut v = Virtual {
                    now: Duration::ZERO,
                    meter: &mut meter,
                    events: vec![],
                };
                iface
                    .enable_detailed_readout(&mut v, &pin.parse().unwrap())
                    .unwrap();
                v.advance(iface.timing().digit_accept * 2);
                assert_eq!(v.events.last(), Some(&PinEvent::Unlocked), "{model} {pin}");
            }
        }
    }

    #[test]
    fn wrong_pin_is_rejected() {
        let iface = meter_interface(MeterModel::Ehz, 0.5);
        let mut meter = PinEntry::new(iface.timing(), "1234".parse().unwrap());
        let mut v = Virtual {
            now: Duration::ZERO,
            meter: &mut meter,
            events: vec![],
        };
        iface
            .enable_detailed_readout(&mut v, &"1235".parse().unwrap())
            .unwrap();
        v.advance(iface.timing().digit_accept * 2);
        assert_eq!(v.events.last(), Some(&PinEvent::Rejected));
    }

    #[test]
    fn pins_and_models_parse() {
        assert!("12a4".parse::<Pin>().is_err());
        assert!("12345".parse::<Pin>().is_err());
        assert_eq!(format!("{:?}", "1234".parse::<Pin>().unwrap()), "Pin(****)");
        assert_eq!("mt681".parse::<MeterModel>().unwrap(), MeterModel::Mt681);
        assert!("xyz".parse::<MeterModel>().is_err());
    }
}
