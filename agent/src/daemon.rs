//! The pid file that `motey start --daemon`, `stop` and `status` agree on. The agent
//! holds an exclusive lock on it for its whole life, so a pid file counts only while it
//! is locked: a file left behind by `kill -9` (whose pid the kernel may since have given
//! to an unrelated process) reads as "not running", never as somebody to signal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
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

/// The pid of the agent holding the lock on `path`, if one does. An unlocked file, a
/// missing one or one without a pid reads as not running.
pub fn running_pid(path: &Path) -> Option<i32> {
    let file = File::open(path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Nobody holds the agent's lock; ours ends as the file closes.
        Ok(_unheld) => None,
        Err((mut file, Errno::EWOULDBLOCK)) => read_pid(&mut file),
        Err(_) => None,
    }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Locks the pid file and records this process in it, refusing if another agent holds
/// the lock. The lock lasts as long as the returned [`PidFile`].
pub fn claim(path: &Path) -> Result<PidFile, PidFileError> {
    let io = |error: std::io::Error| PidFileError::Io {
        path: path.into(),
        reason: error.to_string(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(PidFileError::AlreadyRunning {
                    pid: read_pid(&mut file).unwrap_or_default(),
                    path: path.into(),
                })
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        // An agent ending removes its file before it unlocks; a lock taken on that
        // removed file in between would guard nothing, so open the path again.
        if !is_same_file(&locked, path) {
            continue;
        }
        locked.set_len(0).map_err(io)?;
        locked.rewind().map_err(io)?;
        writeln!(locked, "{}", std::process::id()).map_err(io)?;
        locked.sync_all().map_err(io)?;
        return Ok(PidFile {
            path: path.into(),
            _lock: locked,
        });
    }
}

fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// The agent's claim on its pid file: removes the file, then unlocks, when the agent ends.
pub struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends SIGTERM to the agent holding the pid file and waits until it has let go of it.
/// Returns the pid stopped, or `None` if none was running.
pub fn stop(path: &Path, timeout: Duration) -> Result<Option<i32>, PidFileError> {
    let Some(pid) = running_pid(path) else {
        return Ok(None);
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let started = Instant::now();
    while started.elapsed() < timeout {
        if running_pid(path) != Some(pid) {
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
    fn unlocked_pid_file_reads_as_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motey.pid");
        // A live process, but nobody holds the file's lock.
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running_pid(&path), None);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(running_pid(&path), None);
        assert_eq!(stop(&path, Duration::from_secs(1)).unwrap(), None);
    }

    #[test]
    fn a_held_claim_refuses_a_second_and_a_stale_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("motey.pid");
        std::fs::write(&path, "1\n").unwrap();
        let claimed = claim(&path).unwrap();
        let error = claim(&path).err().unwrap();
        assert!(
            matches!(error, PidFileError::AlreadyRunning { pid, .. } if pid == std::process::id() as i32),
            "{error}"
        );
        drop(claimed);
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
