//! The key vault: one random key per household, and the server secret the email index
//! and the pseudonyms of anonymized households are keyed with. Kept apart from the
//! database and its backups, so destroying a household's key makes every copy of its
//! sealed personal part unreadable, wherever that copy went.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

pub const KEY_BYTES: usize = 32;

/// A household's own key; the sealing key and the export pseudonym key derive from it.
#[derive(Clone, PartialEq, Eq)]
pub struct HouseholdKey(pub [u8; KEY_BYTES]);

impl std::fmt::Debug for HouseholdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HouseholdKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("key vault {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key vault {0}: a key file of unknown format")]
    Malformed(PathBuf),
    #[error("the system random number generator failed")]
    Random,
}

impl VaultError {
    /// Whether the vault cannot be read or written (a full disk, a lost mount), as
    /// opposed to a key file of unknown format: the process is then unhealthy.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, VaultError::Io { .. })
    }
}

/// Where household keys live. A store for the keys must not keep old versions of what it
/// deletes (no log-structured store): destroying a key has to destroy it.
pub trait KeyVault: Send + Sync + 'static {
    /// A fresh random key for a new household; an existing key is replaced.
    fn create_household_key(&self, household: Uuid) -> Result<HouseholdKey, VaultError>;
    /// `None` once destroyed (or never created).
    fn household_key(&self, household: Uuid) -> Result<Option<HouseholdKey>, VaultError>;
    /// Destroys the key durably; destroying a missing key is not an error.
    fn destroy_household_key(&self, household: Uuid) -> Result<(), VaultError>;
    /// The server's secret for the email index and the anonymized households' pseudonyms.
    fn server_secret(&self) -> &[u8; KEY_BYTES];
}

/// A directory with one 0600 file per household key (`households/<uuid>.key`) and the
/// server secret (`server.secret`). Destroying a key overwrites its file, removes it and
/// fsyncs the directory.
pub struct FileKeyVault {
    households: PathBuf,
    server_secret: [u8; KEY_BYTES],
    rng: SystemRandom,
    /// Keys read once are kept: every request of a device reads its household.
    cache: Mutex<HashMap<Uuid, HouseholdKey>>,
}

const SERVER_SECRET: &str = "server.secret";
const HOUSEHOLDS: &str = "households";

impl FileKeyVault {
    /// Opens the vault at `dir`, creating it (0700) and the server secret if missing.
    pub fn open(dir: &Path) -> Result<FileKeyVault, VaultError> {
        let rng = SystemRandom::new();
        let households = dir.join(HOUSEHOLDS);
        create_private_dir(dir)?;
        create_private_dir(&households)?;
        let secret_path = dir.join(SERVER_SECRET);
        let server_secret = match read_key(&secret_path)? {
            Some(secret) => secret,
            None => create_server_secret(&secret_path, &rng)?,
        };
        Ok(FileKeyVault {
            households,
            server_secret,
            rng,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn key_path(&self, household: Uuid) -> PathBuf {
        self.households.join(format!("{household}.key"))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, HouseholdKey>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyVault for FileKeyVault {
    fn create_household_key(&self, household: Uuid) -> Result<HouseholdKey, VaultError> {
        let key = HouseholdKey(random_key(&self.rng)?);
        write_key(&self.key_path(household), &key.0)?;
        sync_dir(&self.households)?;
        self.cache().insert(household, key.clone());
        Ok(key)
    }

    fn household_key(&self, household: Uuid) -> Result<Option<HouseholdKey>, VaultError> {
        if let Some(key) = self.cache().get(&household) {
            return Ok(Some(key.clone()));
        }
        let key = read_key(&self.key_path(household))?.map(HouseholdKey);
        if let Some(key) = &key {
            self.cache().insert(household, key.clone());
        }
        Ok(key)
    }

    fn destroy_household_key(&self, household: Uuid) -> Result<(), VaultError> {
        self.cache().remove(&household);
        let path = self.key_path(household);
        let io = |source| VaultError::Io {
            path: path.clone(),
            source,
        };
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(mut file) => {
                // Overwritten first, so the key is not left in the freed blocks of an
                // in-place file system.
                file.write_all(&[0u8; 2 * KEY_BYTES + 1]).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        }
        fs::remove_file(&path).map_err(io)?;
        sync_dir(&self.households)
    }

    fn server_secret(&self) -> &[u8; KEY_BYTES] {
        &self.server_secret
    }
}

/// Creates the server secret unless another process sharing the vault (a replica starting
/// at the same moment) did first, and gives the one that stays: every replica must key
/// the email index alike.
fn create_server_secret(path: &Path, rng: &SystemRandom) -> Result<[u8; KEY_BYTES], VaultError> {
    let io = |source| VaultError::Io {
        path: path.to_owned(),
        source,
    };
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix).map_err(|_| VaultError::Random)?;
    let candidate = path.with_extension(format!("{}.new", hex::encode(suffix)));
    write_key(&candidate, &random_key(rng)?)?;
    // A link, unlike a rename, never replaces a secret another process put in place.
    let linked = fs::hard_link(&candidate, path);
    fs::remove_file(&candidate).map_err(io)?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    read_key(path)?.ok_or_else(|| VaultError::Malformed(path.to_owned()))
}

fn random_key(rng: &SystemRandom) -> Result<[u8; KEY_BYTES], VaultError> {
    let mut key = [0u8; KEY_BYTES];
    rng.fill(&mut key).map_err(|_| VaultError::Random)?;
    Ok(key)
}

fn read_key(path: &Path) -> Result<Option<[u8; KEY_BYTES]>, VaultError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VaultError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut key = [0u8; KEY_BYTES];
    hex::decode_to_slice(text.trim(), &mut key)
        .map_err(|_| VaultError::Malformed(path.to_owned()))?;
    Ok(Some(key))
}

/// Writes through a temporary file renamed into place, so a crash leaves the old key or
/// the new one, never half of one.
fn write_key(path: &Path, key: &[u8; KEY_BYTES]) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary).map_err(io)?;
    file.write_all(format!("{}\n", hex::encode(key)).as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}

fn create_private_dir(dir: &Path) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io)
}

fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    let io = |source| VaultError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_private_files_that_destruction_removes() {
        let dir = tempfile::tempdir().unwrap();
        let vault = FileKeyVault::open(dir.path()).unwrap();
        let id = Uuid::new_v4();
        let key = vault.create_household_key(id).unwrap();
        let path = dir.path().join(HOUSEHOLDS).join(format!("{id}.key"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let reopened = FileKeyVault::open(dir.path()).unwrap();
        assert_eq!(reopened.household_key(id).unwrap(), Some(key));
        assert_eq!(reopened.server_secret(), vault.server_secret());
        vault.destroy_household_key(id).unwrap();
        assert!(!path.exists());
        assert_eq!(vault.household_key(id).unwrap(), None);
        assert_eq!(
            FileKeyVault::open(dir.path())
                .unwrap()
                .household_key(id)
                .unwrap(),
            None
        );
        vault.destroy_household_key(id).unwrap();
    }

    #[test]
    fn vaults_opened_at_once_share_one_server_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secrets: Vec<[u8; KEY_BYTES]> = std::thread::scope(|scope| {
            let opening: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| *FileKeyVault::open(dir.path()).unwrap().server_secret()))
                .collect();
            opening.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| s == &secrets[0]));
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "the secret and the households: {left:?}");
    }
}
