//! Reading a meter through its probe: a serial device or a TCP-forwarded probe, read on
//! a dedicated thread that reconnects on unplug, decodes every transmission, counts and
//! logs bad ones, keeps the latest complete reading, and enters the meter's PIN when the
//! expected codes stay missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{MeterConfig, Parity, ProbeAddr};
use crate::meter::{meter_interface, IrTransmitter};
use crate::obis::Obis;
use crate::sml::{self, Reading};

/// The latest complete reading of a meter.
#[derive(Debug, Clone)]
pub struct LatestReading {
    /// When it arrived (wall clock).
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When it arrived (monotonic, for its age).
    pub received: Instant,
    /// The meter's server id.
    pub server_id: Vec<u8>,
    /// Numeric values by OBIS code.
    pub readings: BTreeMap<Obis, Reading>,
}

/// What the probe thread reports about its meter.
#[derive(Debug, Clone, Default)]
pub struct MeterStatus {
    /// The latest complete reading.
    pub latest: Option<LatestReading>,
    /// Transmissions decoded.
    pub good_frames: u64,
    /// Transmissions rejected (CRC, truncation, invalid content).
    pub bad_frames: u64,
    /// Whether the probe is connected.
    pub connected: bool,
    /// PIN entries attempted.
    pub unlock_attempts: u64,
}

/// Status shared between the probe thread and the measurement cycle.
pub type SharedStatus = Arc<Mutex<MeterStatus>>;

/// Locks a status, recovering it if a thread panicked while holding it.
pub fn lock(s: &SharedStatus) -> std::sync::MutexGuard<'_, MeterStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connected probe.
enum Connection {
    Serial(Box<dyn serialport::SerialPort>),
    Tcp(TcpStream),
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Serial(p) => p.read(buf),
            Connection::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Serial(p) => p.write(buf),
            Connection::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Serial(p) => p.flush(),
            Connection::Tcp(s) => s.flush(),
        }
    }
}

const READ_TIMEOUT: Duration = Duration::from_millis(200);

fn connect(addr: &ProbeAddr) -> std::io::Result<Connection> {
    match addr {
        ProbeAddr::Serial { path, settings } => {
            let mut port = serialport::new(path, settings.baud)
                .data_bits(match settings.data_bits {
                    5 => serialport::DataBits::Five,
                    6 => serialport::DataBits::Six,
                    7 => serialport::DataBits::Seven,
                    _ => serialport::DataBits::Eight,
                })
                .parity(match settings.parity {
                    Parity::None => serialport::Parity::None,
                    Parity::Even => serialport::Parity::Even,
                    Parity::Odd => serialport::Parity::Odd,
                })
                .stop_bits(if settings.stop_bits == 2 {
                    serialport::StopBits::Two
                } else {
                    serialport::StopBits::One
                })
                .flow_control(serialport::FlowControl::None)
                .timeout(READ_TIMEOUT)
                .open_native()
                .map_err(std::io::Error::from)?;
            // Exclusive mode would outlive a killed reader on a tty someone else keeps
            // open, and lock the restarted reader out of its own probe.
            port.set_exclusive(false).map_err(std::io::Error::from)?;
            Ok(Connection::Serial(Box::new(port)))
        }
        ProbeAddr::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_read_timeout(Some(READ_TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(Connection::Tcp(s))
        }
    }
}

/// The probe's infrared LED, driven through the serial transmit line: zero bytes keep
/// the line (and so the LED) active for the flash's duration.
struct LineTransmitter<'a> {
    conn: &'a mut Connection,
    baud: u32,
}

impl IrTransmitter for LineTransmitter<'_> {
    fn flash(&mut self, on: Duration) -> std::io::Result<()> {
        let start = Instant::now();
        // ten bit times per byte on an 8N1 line
        let n = ((on.as_secs_f64() * f64::from(self.baud) / 10.0) as usize).clamp(1, 1 << 16);
        self.conn.write_all(&vec![0u8; n])?;
        self.conn.flush()?;
        self.pause(on.saturating_sub(start.elapsed()));
        Ok(())
    }

    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Settings of a probe thread beyond its meter.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// How long expected codes may be missing before (and between) PIN entries.
    pub unlock_after: Duration,
    /// Factor on the PIN timing.
    pub timing_scale: f64,
}

/// A running probe thread.
pub struct Probe {
    /// The meter's status.
    pub status: SharedStatus,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    /// Starts reading `meter`.
    pub fn start(meter: MeterConfig, options: ProbeOptions) -> std::io::Result<Self> {
        let status = SharedStatus::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("probe-{}", meter.meter))
            .stack_size(256 * 1024)
            .spawn({
                let status = status.clone();
                let stop = stop.clone();
                move || probe_loop(&meter, options, &status, &stop)
            })?;
        Ok(Self {
            status,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn probe_loop(
    meter: &MeterConfig,
    options: ProbeOptions,
    status: &SharedStatus,
    stop: &AtomicBool,
) {
    let id = meter.meter;
    let mut backoff = Duration::from_millis(500);
    // Since when the expected codes have been missing, and when the PIN was last tried.
    let mut missing_since: Option<Instant> = None;
    let mut last_unlock: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match connect(&meter.probe) {
            Ok(c) => {
                tracing::info!(meter = %id, probe = %meter.probe, "probe connected");
                backoff = Duration::from_millis(500);
                lock(status).connected = true;
                c
            }
            Err(e) => {
                tracing::warn!(meter = %id, probe = %meter.probe, error = %e, retry_in_ms = backoff.as_millis() as u64, "probe not available");
                sleep_unless_stopped(stop, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let mut decoder = sml::StreamDecoder::new();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match conn.read(&mut buf) {
                Ok(0) => {
                    tracing::warn!(meter = %id, "probe closed the connection");
                    break;
                }
                Ok(n) => decoder.push(&buf[..n], |r| {
                    on_transmission(meter, status, &mut missing_since, r)
                }),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!(meter = %id, error = %e, "probe read failed (unplugged?)");
                    break;
                }
            }
            let due = missing_since.is_some_and(|t| t.elapsed() >= options.unlock_after)
                && last_unlock.is_none_or(|t| t.elapsed() >= options.unlock_after);
            if due {
                if let (Some(model), Some(pin)) = (meter.model, meter.pin.as_ref()) {
                    last_unlock = Some(Instant::now());
                    lock(status).unlock_attempts += 1;
                    tracing::info!(meter = %id, %model, "expected codes missing: entering PIN");
                    let iface = meter_interface(model, options.timing_scale);
                    let baud = match &meter.probe {
                        ProbeAddr::Serial { settings, .. } => settings.baud,
                        ProbeAddr::Tcp(_) => 9600,
                    };
                    let mut tx = LineTransmitter {
                        conn: &mut conn,
                        baud,
                    };
                    match iface.enable_detailed_readout(&mut tx, pin) {
                        Ok(()) => tracing::info!(meter = %id, "PIN entered"),
                        Err(e) => {
                            tracing::warn!(meter = %id, error = %e, "PIN entry failed");
                            break;
                        }
                    }
                }
            }
        }
        lock(status).connected = false;
        if !stop.load(Ordering::Relaxed) {
            sleep_unless_stopped(stop, backoff);
        }
    }
}

fn on_transmission(
    meter: &MeterConfig,
    status: &SharedStatus,
    missing_since: &mut Option<Instant>,
    result: Result<sml::Transmission, sml::DecodeError>,
) {
    match result {
        Ok(t) => {
            let readings = t.readings();
            if readings.is_empty() {
                lock(status).good_frames += 1;
                return;
            }
            let complete = meter.expect.iter().all(|c| readings.contains_key(c));
            if complete {
                *missing_since = None;
            } else if missing_since.is_none() {
                *missing_since = Some(Instant::now());
                tracing::info!(meter = %meter.meter, "expected codes missing (meter locked?)");
            }
            let mut s = lock(status);
            s.good_frames += 1;
            s.latest = Some(LatestReading {
                received_at: chrono::Utc::now(),
                received: Instant::now(),
                server_id: t.server_id().map(<[u8]>::to_vec).unwrap_or_default(),
                readings,
            });
        }
        Err(e) => {
            let bad = {
                let mut s = lock(status);
                s.bad_frames += 1;
                s.bad_frames
            };
            // A poor optical contact damages many transmissions: warn on the first and
            // then every hundredth, the rest at debug level.
            if bad == 1 || bad % 100 == 0 {
                tracing::warn!(meter = %meter.meter, bad_frames = bad, error = %e, "bad SML transmission skipped");
            } else {
                tracing::debug!(meter = %meter.meter, bad_frames = bad, error = %e, "bad SML transmission skipped");
            }
        }
    }
}
