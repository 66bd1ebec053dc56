//! Join tokens, in the spirit of k3s's: `MOTEY1.<CA fingerprint>.<id>.<secret>`. The CA
//! fingerprint (SHA-256 of the CA certificate, hex) lets the joining node check whom it
//! talks to before it sends the secret; the CA node keeps only the secret's SHA-256,
//! with the token's expiry and how often it may still be used.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ClusterError, ClusterFiles};

const PREFIX: &str = "MOTEY1";

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a join token ({0}); expected MOTEY1.<CA fingerprint>.<id>.<secret> as `motey cluster token` prints it")]
    Malformed(&'static str),
    #[error(
        "join token {0} is unknown to this CA (never issued, or issued by another cluster's CA)"
    )]
    Unknown(String),
    #[error("join token {id} expired at unix time {expired_at}; ask for a new one (`motey cluster token`)")]
    Expired { id: String, expired_at: i64 },
    #[error("join token {0} was already used as often as it may; ask for a new one (`motey cluster token`)")]
    UsedUp(String),
}

/// A join token as the admin passes it to `motey join`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate (DER), 64 lowercase hex digits.
    pub ca_fingerprint: String,
    pub id: String,
    pub secret: String,
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({})", self.id)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<JoinToken, TokenError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, fingerprint, id, secret] = parts[..] else {
            return Err(TokenError::Malformed("it has not four parts"));
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed("it does not start with MOTEY1"));
        }
        let hex_of = |text: &str, len: usize| {
            text.len() == len && text.chars().all(|c| c.is_ascii_hexdigit())
        };
        if !hex_of(fingerprint, 64) {
            return Err(TokenError::Malformed(
                "the CA fingerprint is not 64 hex digits",
            ));
        }
        if !hex_of(id, 8) || !hex_of(secret, 32) {
            return Err(TokenError::Malformed("the id or the secret is cut"));
        }
        Ok(JoinToken {
            ca_fingerprint: fingerprint.to_ascii_lowercase(),
            id: id.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

/// A token as the CA node keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    secret_sha256: String,
    created_at: i64,
    expires_at: i64,
    uses_left: u32,
}

/// The join tokens of the CA node (`tokens.json`), changed under a file lock so that the
/// CLI issuing a token and the agent redeeming one do not lose each other's change.
pub struct TokenBook {
    files: ClusterFiles,
}

impl TokenBook {
    pub fn new(files: ClusterFiles) -> TokenBook {
        TokenBook { files }
    }

    /// A new token valid for `ttl` and `uses` joins.
    pub fn issue(
        &self,
        ca_fingerprint: &str,
        ttl: Duration,
        uses: u32,
    ) -> Result<JoinToken, ClusterError> {
        let random_hex = |len: usize| {
            let mut bytes = vec![0u8; len];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        };
        let token = JoinToken {
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            id: random_hex(4),
            secret: random_hex(16),
        };
        let now = super::now_secs();
        let stored = StoredToken {
            id: token.id.clone(),
            secret_sha256: digest(&token.secret),
            created_at: now,
            expires_at: now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            uses_left: uses.max(1),
        };
        self.change(|tokens| {
            // Expired tokens are of no use; the book keeps only live ones.
            tokens.retain(|t| t.expires_at > now && t.uses_left > 0);
            tokens.push(stored);
            Ok(())
        })?;
        Ok(token)
    }

    /// Uses a token once: checks its secret, expiry and uses left.
    pub fn redeem(&self, id: &str, secret: &str, now: i64) -> Result<(), ClusterError> {
        self.change(|tokens| {
            let Some(token) = tokens.iter_mut().find(|t| t.id == id) else {
                return Err(TokenError::Unknown(id.to_owned()).into());
            };
            let matches: bool = digest(secret)
                .as_bytes()
                .ct_eq(token.secret_sha256.as_bytes())
                .into();
            if !matches {
                return Err(TokenError::Unknown(id.to_owned()).into());
            }
            if token.expires_at <= now {
                return Err(TokenError::Expired {
                    id: id.to_owned(),
                    expired_at: token.expires_at,
                }
                .into());
            }
            if token.uses_left == 0 {
                return Err(TokenError::UsedUp(id.to_owned()).into());
            }
            // A used-up token is kept until it expires, so that a second use is told
            // "already used", not "unknown".
            token.uses_left -= 1;
            Ok(())
        })
    }

    fn change(
        &self,
        change: impl FnOnce(&mut Vec<StoredToken>) -> Result<(), ClusterError>,
    ) -> Result<(), ClusterError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::os::unix::fs::OpenOptionsExt;
        let lock_path = self.files.tokens_lock();
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(super::files::file_error(&lock_path))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            ClusterError::File {
                path: lock_path.clone(),
                reason: errno.to_string(),
            }
        })?;
        let path = self.files.tokens();
        let mut tokens: Vec<StoredToken> = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|error| ClusterError::Invalid(format!("{}: {error}", path.display())))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(super::files::file_error(&path)(error)),
        };
        let outcome = change(&mut tokens);
        let text = serde_json::to_string_pretty(&tokens).expect("tokens serialize");
        self.files.write_private(&path, &text)?;
        outcome
    }
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A duration as the CLI takes it: `90s`, `30m`, `24h`, `7d` (a bare number: seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 24h, 30m or 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unit {unit:?} is none of s, m, h, d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, TokenBook) {
        let dir = tempfile::tempdir().unwrap();
        let files = ClusterFiles::in_data_dir(dir.path());
        files.create_dir().unwrap();
        (dir, TokenBook::new(files))
    }

    const FINGERPRINT: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_token_reads_back_as_printed() {
        let (_dir, book) = book();
        let token = book.issue(FINGERPRINT, Duration::from_secs(60), 1).unwrap();
        let parsed: JoinToken = token.to_string().parse().unwrap();
        assert_eq!(parsed, token);
        assert!(matches!(
            "MOTEY1.abc.def".parse::<JoinToken>(),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn a_single_use_token_is_refused_the_second_time() {
        let (_dir, book) = book();
        let token = book.issue(FINGERPRINT, Duration::from_secs(60), 1).unwrap();
        let now = crate::cluster::now_secs();
        book.redeem(&token.id, &token.secret, now).unwrap();
        let again = book.redeem(&token.id, &token.secret, now).unwrap_err();
        assert!(
            matches!(again, ClusterError::Token(TokenError::UsedUp(_))),
            "{again}"
        );
    }

    #[test]
    fn an_expired_or_wrong_token_is_refused() {
        let (_dir, book) = book();
        let token = book.issue(FINGERPRINT, Duration::from_secs(60), 3).unwrap();
        let later = crate::cluster::now_secs() + 61;
        let expired = book.redeem(&token.id, &token.secret, later).unwrap_err();
        assert!(
            matches!(expired, ClusterError::Token(TokenError::Expired { .. })),
            "{expired}"
        );
        let wrong = book
            .redeem(&token.id, "00000000000000000000000000000000", later - 60)
            .unwrap_err();
        assert!(
            matches!(wrong, ClusterError::Token(TokenError::Unknown(_))),
            "{wrong}"
        );
    }

    #[test]
    fn the_book_keeps_no_secret_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, book) = book();
        let token = book.issue(FINGERPRINT, Duration::from_secs(60), 1).unwrap();
        let path = ClusterFiles::in_data_dir(dir.path()).tokens();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token.secret));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ttls_read_with_units() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("3w").is_err());
    }
}
