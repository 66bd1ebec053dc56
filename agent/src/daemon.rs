//! The pid file that `motey start --daemon`, `stop` and `status` agree on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Why a pid-file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("motey is already running with pid {pid} (pid file {path})")]
    AlreadyRunning { pid: i32, path: PathBuf },
    #[error("cannot use the pid file {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("motey (pid {pid}) did not stop within {secs} s")]
    StopTimeout { pid: i32, secs: u64 },
}

/// The pid of a running agent according to `path`, if that process is alive. A stale
/// file (the process died) reads as not running.
pub fn running_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// Records this process in the pid file, refusing if another agent holds it.
pub fn claim(path: &Path) -> Result<PidFile, PidFileError> {
    if let Some(pid) = running_pid(path) {
        if pid != std::process::id() as i32 {
            return Err(PidFileError::AlreadyRunning {
                pid,
                path: path.into(),
            });
        }
    }
    let io = |error: std::io::Error| PidFileError::Io {
        path: path.into(),
        reason: error.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id())).map_err(io)?;
    Ok(PidFile { path: path.into() })
}

/// Removes the pid file when the agent ends.
pub struct PidFile {
    path: PathBuf,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if running_pid(&self.path) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends SIGTERM to the agent in the pid file and waits for it to end. Returns the pid
/// stopped, or `None` if none was running.
pub fn stop(path: &Path, timeout: Duration) -> Result<Option<i32>, PidFileError> {
    let Some(pid) = running_pid(path) else {
        return Ok(None);
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < timeout {
        if kill(Pid::from_raw(pid), None).is_err() {
            let _ = std::fs::remove_file(path);
            return Ok(Some(pid));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(PidFileError::StopTimeout {
        pid,
        secs: timeout.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_pid_file_reads_as_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motey.pid");
        std::fs::write(&path, "999999999\n").unwrap();
        assert_eq!(running_pid(&path), None);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(running_pid(&path), None);
    }

    #[test]
    fn claim_writes_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/motey.pid");
        let claimed = claim(&path).unwrap();
        assert_eq!(running_pid(&path), Some(std::process::id() as i32));
        drop(claimed);
        assert!(!path.exists());
        assert_eq!(stop(&path, Duration::from_secs(1)).unwrap(), None);
    }
}
