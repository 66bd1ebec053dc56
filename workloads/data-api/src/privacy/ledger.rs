//! The revocation ledger: which household revoked its consent, and when — nothing else.
//! Kept apart from the database, so that after a backup taken before a revocation is
//! restored the revocation is applied again before the server answers anyone.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("revocation ledger {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("revocation ledger {path}, line {line}: expected `<household uuid> <RFC 3339 time>`")]
    Malformed { path: PathBuf, line: usize },
}

impl LedgerError {
    /// Whether the ledger cannot be read or written (a full disk, a lost mount), as
    /// opposed to a line of unknown format: the process is then unhealthy.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Io { .. })
    }
}

/// One line per revocation, `<household uuid> <RFC 3339 time>`, appended and fsynced
/// before the revocation is acknowledged.
pub struct RevocationLedger {
    path: PathBuf,
    append: Mutex<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub household: Uuid,
    pub at: DateTime<Utc>,
}

impl RevocationLedger {
    /// Opens (creating if missing, 0600) the ledger at `path`.
    pub fn open(path: &Path) -> Result<RevocationLedger, LedgerError> {
        let ledger = RevocationLedger {
            path: path.to_owned(),
            append: Mutex::new(()),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| ledger.io(source))?;
        }
        ledger.open_for_append()?;
        Ok(ledger)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn open_for_append(&self) -> Result<fs::File, LedgerError> {
        let mut options = fs::OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(&self.path).map_err(|e| self.io(e))
    }

    /// Appends a revocation durably.
    pub fn record(&self, revocation: Revocation) -> Result<(), LedgerError> {
        let _append = self.append.lock().unwrap_or_else(PoisonError::into_inner);
        let mut file = self.open_for_append()?;
        let line = format!(
            "{} {}\n",
            revocation.household,
            revocation.at.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        file.write_all(line.as_bytes()).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))
    }

    /// Every revocation recorded, oldest first.
    pub fn revocations(&self) -> Result<Vec<Revocation>, LedgerError> {
        let text = fs::read_to_string(&self.path).map_err(|e| self.io(e))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                parse_line(line).ok_or(LedgerError::Malformed {
                    path: self.path.clone(),
                    line: index + 1,
                })
            })
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Revocation> {
    let (household, at) = line.trim().split_once(' ')?;
    Some(Revocation {
        household: household.parse().ok()?,
        at: DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_reopening_and_bad_lines_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.ledger");
        let ledger = RevocationLedger::open(&path).unwrap();
        let first = Revocation {
            household: Uuid::new_v4(),
            at: "2026-11-23T10:15:00.123456Z".parse().unwrap(),
        };
        ledger.record(first).unwrap();
        let reopened = RevocationLedger::open(&path).unwrap();
        assert_eq!(reopened.revocations().unwrap(), vec![first]);
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"not a revocation\n")
            .unwrap();
        assert!(matches!(
            reopened.revocations(),
            Err(LedgerError::Malformed { line: 2, .. })
        ));
    }
}
