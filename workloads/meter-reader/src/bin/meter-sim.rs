//! `meter-sim`: a simulated smart meter on a pseudo-terminal or a TCP port.
//!
//! Emits one real SML transmission per interval, as an Iskra MT681 or EMH eHZ would over
//! its optical interface, and listens for infrared PIN flashes (bytes written by the
//! reader) when locked. Prints the pty path or the listening address on the first line
//! of standard output; logs go to standard error.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meter_reader::meter::{default_timing, MeterModel, Pin, PinEntry, PinEvent};
use meter_reader::sim::{SimMeter, SimSettings};

#[derive(Debug, Parser)]
#[command(name = "meter-sim", version, about = "Simulated SML smart meter")]
struct Args {
    /// Listen on this TCP address (e.g. 127.0.0.1:0) instead of a pseudo-terminal.
    #[arg(long)]
    tcp: Option<String>,
    /// Meter model: telegram structure and PIN timing (MT681, MT175, EHZ, DD3, EASY).
    #[arg(long, default_value = "MT681")]
    model: MeterModel,
    /// Milliseconds between transmissions.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Import energy counter at start, Wh.
    #[arg(long, default_value_t = 12_345_678.9)]
    import_wh: f64,
    /// Export energy counter at start, Wh.
    #[arg(long, default_value_t = 0.0)]
    export_wh: f64,
    /// Mean power in W (negative: feeding in).
    #[arg(long, default_value_t = 350.0, allow_hyphen_values = true)]
    power_w: f64,
    /// Amplitude of the slow power swing, W (0: constant power).
    #[arg(long, default_value_t = 0.0)]
    power_swing_w: f64,
    /// Meter serial number (part of the server id).
    #[arg(long, default_value_t = 0x0004_325e)]
    serial: u32,
    /// Lock the meter: power is only sent after this PIN was flashed in.
    #[arg(long)]
    pin: Option<Pin>,
    /// Multiply the model's PIN timing by this factor (tests use less than 1).
    #[arg(long, default_value_t = 1.0)]
    timing_scale: f64,
    /// Damage every Nth transmission (flip a payload byte, so its CRC fails); 0: never.
    #[arg(long, default_value_t = 0)]
    corrupt_every: u64,
    /// Stop after this many transmissions.
    #[arg(long)]
    count: Option<u64>,
    /// Seed of the power noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Where the meter's light goes and where the probe's light comes from.
trait Port {
    /// Sends a transmission; dropped if nobody reads (a meter does not wait either).
    fn send(&mut self, bytes: &[u8]);
    /// Bytes received since the last call (infrared from the probe).
    fn receive(&mut self) -> usize;
}

struct Pty {
    master: std::fs::File,
    // Held open so that the reader can come and go (and reopen after a restart)
    // without the master side seeing a hang-up.
    _slave: OwnedFd,
}

impl Pty {
    fn open() -> anyhow::Result<(Self, String)> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let pty = nix::pty::openpty(None, None).context("openpty")?;
        let mut t = tcgetattr(&pty.slave).context("tcgetattr")?;
        // Raw: no echo of our own output back to us, no line editing of binary data.
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).context("tcsetattr")?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))
            .context("pty path")?
            .to_string_lossy()
            .into_owned();
        let master = std::fs::File::from(pty.master);
        set_nonblocking(&master)?;
        Ok((
            Self {
                master,
                _slave: pty.slave,
            },
            path,
        ))
    }
}

fn set_nonblocking(f: &impl AsRawFd) -> anyhow::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = f.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL")?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .context("F_SETFL")?;
    Ok(())
}

fn write_some(w: &mut impl Write, bytes: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut rest = bytes;
    while !rest.is_empty() {
        match w.write(rest) {
            Ok(0) => return false,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if rest.len() == bytes.len() || Instant::now() > deadline {
                    return rest.len() != bytes.len();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return false,
        }
    }
    true
}

impl Port for Pty {
    fn send(&mut self, bytes: &[u8]) {
        write_some(&mut self.master, bytes);
    }

    fn receive(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(n) = self.master.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }
}

struct Tcp {
    listener: TcpListener,
    clients: Vec<TcpStream>,
}

impl Tcp {
    fn accept(&mut self) {
        while let Ok((s, peer)) = self.listener.accept() {
            if s.set_nonblocking(true).is_ok() {
                eprintln!("meter-sim: probe connected from {peer}");
                self.clients.push(s);
            }
        }
    }
}

impl Port for Tcp {
    fn send(&mut self, bytes: &[u8]) {
        self.accept();
        self.clients.retain_mut(|c| write_some(c, bytes));
    }

    fn receive(&mut self) -> usize {
        self.accept();
        let mut buf = [0u8; 4096];
        let mut total = 0;
        self.clients.retain_mut(|c| loop {
            match c.read(&mut buf) {
                Ok(0) => break false,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        });
        total
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut port, name): (Box<dyn Port>, String) = match &args.tcp {
        Some(addr) => {
            let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
            listener.set_nonblocking(true)?;
            let name = listener.local_addr()?.to_string();
            (
                Box::new(Tcp {
                    listener,
                    clients: Vec::new(),
                }),
                name,
            )
        }
        None => {
            let (pty, path) = Pty::open()?;
            (Box::new(pty), path)
        }
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{name}")?;
        out.flush()?;
    }
    let mut meter = SimMeter::new(SimSettings {
        model: args.model,
        import_wh: args.import_wh,
        export_wh: args.export_wh,
        power_w: args.power_w,
        power_swing_w: args.power_swing_w,
        serial: args.serial,
        locked: args.pin.is_some(),
        seed: args.seed,
    });
    let timing = default_timing(args.model).scaled(args.timing_scale);
    let mut pin_entry = args.pin.clone().map(|pin| PinEntry::new(timing, pin));
    // Bytes closer together than this belong to the same flash.
    let merge = (timing.flash_gap / 2).min(Duration::from_millis(50));
    let interval = Duration::from_millis(args.interval_ms.max(10));
    let start = Instant::now();
    let mut last_emit = start;
    let mut next_emit = start;
    let mut last_light: Option<Instant> = None;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if port.receive() > 0 {
            let new_flash = last_light.is_none_or(|t| now.duration_since(t) > merge);
            last_light = Some(now);
            if new_flash {
                if let Some(p) = pin_entry.as_mut() {
                    if p.flash(now - start) == PinEvent::Opened {
                        eprintln!("meter-sim: PIN entry opened");
                    }
                }
            }
        }
        if let Some(p) = pin_entry.as_mut() {
            match p.tick(now - start) {
                PinEvent::Unlocked => {
                    eprintln!("meter-sim: PIN accepted, detailed readout enabled");
                    meter.unlock();
                    pin_entry = None;
                }
                PinEvent::Rejected => eprintln!("meter-sim: wrong PIN"),
                PinEvent::Digit(d) => eprintln!("meter-sim: digit accepted ({d} flashes)"),
                _ => {}
            }
        }
        if now >= next_emit {
            meter.advance(now - last_emit);
            last_emit = now;
            let mut bytes = meter.transmission();
            sent += 1;
            if args.corrupt_every > 0 && sent % args.corrupt_every == 0 {
                let i = bytes.len() / 2;
                bytes[i] ^= 0x5a;
            }
            port.send(&bytes);
            next_emit += interval;
            if next_emit < now {
                next_emit = now + interval;
            }
            if args.count.is_some_and(|c| sent >= c) {
                // Let the last transmission drain before the pty goes away.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
