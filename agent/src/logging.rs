//! Log output through `tracing`: human-readable on a terminal, JSON lines for log
//! collectors, to standard error or to the file `[LOGGER]` names.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Logger};

/// Installs the global subscriber. `to_file` forces the file (a daemon has no terminal).
pub fn init(settings: &Logger, data_dir: &std::path::Path, to_file: bool) -> std::io::Result<()> {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let directory = settings
        .log_path
        .clone()
        .or_else(|| to_file.then(|| data_dir.to_path_buf()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match directory {
        Some(directory) => {
            std::fs::create_dir_all(&directory)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(directory.join(&settings.file_name))?;
            let builder = builder.with_writer(Mutex::new(file)).with_ansi(false);
            match settings.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
        }
        None => {
            let builder = builder
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal());
            match settings.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
        }
    }
    Ok(())
}

/// At most one warning per interval for one kind of event that anyone on the network can
/// cause at will (a refused peer message, a malformed hardware event): the first of an
/// interval is logged, the others only counted, and their number is reported with the
/// next one logged. A flood then costs a counter, not a log line (and disk) each.
#[derive(Debug)]
pub struct RateLimit {
    interval_ms: u64,
    epoch: std::time::Instant,
    /// Milliseconds after `epoch` from which the next event is logged.
    next_at: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    pub fn new(interval: std::time::Duration) -> RateLimit {
        RateLimit {
            interval_ms: interval.as_millis() as u64,
            epoch: std::time::Instant::now(),
            next_at: 0.into(),
            suppressed: 0.into(),
        }
    }

    /// Whether this event is to be logged: `Some` with the number of events suppressed
    /// since the last one logged, or `None` when it was only counted.
    pub fn admit(&self) -> Option<Suppressed> {
        self.admit_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<Suppressed> {
        use std::sync::atomic::Ordering::Relaxed;
        let next_at = self.next_at.load(Relaxed);
        let logs = now_ms >= next_at
            && self
                .next_at
                .compare_exchange(next_at, now_ms + self.interval_ms, Relaxed, Relaxed)
                .is_ok();
        if logs {
            Some(Suppressed(self.suppressed.swap(0, Relaxed)))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Events of one kind that were not logged since the last one that was; shown at the
/// end of a log message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more since the last warning, not logged)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_once_per_interval_with_its_count() {
        let limit = RateLimit::new(std::time::Duration::from_secs(10));
        assert_eq!(limit.admit_at(0), Some(Suppressed(0)));
        let logged = (1..1000)
            .filter(|_| limit.admit_at(5_000).is_some())
            .count();
        assert_eq!(logged, 0);
        assert_eq!(limit.admit_at(10_000), Some(Suppressed(999)));
        assert_eq!(limit.admit_at(10_001), None);
        assert_eq!(limit.admit_at(20_000), Some(Suppressed(1)));
        assert_eq!(
            Suppressed(998).to_string(),
            " (998 more since the last warning, not logged)"
        );
        assert_eq!(Suppressed(0).to_string(), "");
    }
}
