//! [`Repository`] on sled: one tree per collection, JSON values, flushed on every write.

use std::path::Path;

use super::{QuarantinedRecord, Record, Repository, StoreError};

/// One sled database holding every collection of an agent.
pub struct SledStore {
    db: sled::Db,
}

const META_TREE: &str = "meta";
/// Records that could not be decoded, keyed `<collection>/<key>`, kept for inspection.
const QUARANTINE_TREE: &str = "quarantine";

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        // sled's own message for an unwritable parent is a bare "Permission denied".
        crate::private_fs::private_dir(path)
            .map_err(|error| open_error(format!("cannot create the directory: {error}")))?;
        let probe = path.join(".motey-write-probe");
        std::fs::write(&probe, b"")
            .map_err(|error| open_error(format!("the directory is not writable: {error}")))?;
        let _ = std::fs::remove_file(&probe);
        let db = open_waiting_for_lock(path).map_err(|error| {
            open_error(match error {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    "the database is in use by another process (is another agent running with this data directory?)".into()
                }
                sled::Error::Corruption { .. } => format!(
                    "the database is corrupt ({error}); move it away to start with an empty one"
                ),
                sled::Error::Unsupported(message) => format!("not a usable database: {message}"),
                other => other.to_string(),
            })
        })?;
        // sled creates its files as the umask allows; they hold blueprint environments.
        match crate::private_fs::private_tree(path) {
            Ok(0) => {}
            Ok(count) => {
                tracing::warn!(path = %path.display(), count, "the database was readable by others; now 0700/0600")
            }
            Err(error) => {
                return Err(open_error(format!(
                    "cannot make the database private: {error}"
                )))
            }
        }
        Ok(SledStore { db })
    }

    pub fn temporary() -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(|error| StoreError::Open {
                path: "<temporary>".into(),
                reason: error.to_string(),
            })?;
        Ok(SledStore { db })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(io)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tree(META_TREE)?
            .get(key)
            .map_err(io)?
            .map(|value| String::from_utf8_lossy(&value).into_owned()))
    }

    /// The records set aside because they could not be decoded.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        self.tree(QUARANTINE_TREE)?
            .iter()
            .keys()
            .map(|key| {
                let key = key.map_err(io)?;
                let text = String::from_utf8_lossy(&key);
                let (collection, key) = text.split_once('/').unwrap_or(("", &text));
                Ok(QuarantinedRecord {
                    collection: collection.to_owned(),
                    key: key.to_owned(),
                })
            })
            .collect()
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.tree(META_TREE)?
            .insert(key, value.as_bytes())
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }
}

/// sled holds an exclusive file lock; a handle dropped a moment ago (its flusher thread
/// still ending) releases it shortly, so wait a little before calling the database busy.
fn open_waiting_for_lock(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

fn io(error: sled::Error) -> StoreError {
    StoreError::Io(error.to_string())
}

/// Decodes a record, or sets it aside in the quarantine tree when it cannot be decoded:
/// one bad record must not hide the others from the orchestrator.
fn decode_or_quarantine<T: Record>(
    store: &SledStore,
    key: &[u8],
    value: &[u8],
) -> Result<Option<T>, StoreError> {
    let error = match serde_json::from_slice(value) {
        Ok(record) => return Ok(Some(record)),
        Err(error) => error,
    };
    let key_text = String::from_utf8_lossy(key);
    // The record's content may hold secrets (blueprint environments): only where it broke.
    tracing::warn!(
        collection = T::COLLECTION,
        key = %key_text,
        category = ?error.classify(),
        line = error.line(),
        column = error.column(),
        "a stored record cannot be decoded; moved to quarantine"
    );
    let quarantine = store.tree(QUARANTINE_TREE)?;
    let mut quarantined_key = format!("{}/", T::COLLECTION).into_bytes();
    quarantined_key.extend_from_slice(key);
    quarantine.insert(quarantined_key, value).map_err(io)?;
    store.tree(T::COLLECTION)?.remove(key).map_err(io)?;
    store.db.flush().map_err(io)?;
    Ok(None)
}

impl<T: Record> Repository<T> for SledStore {
    fn get(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.tree(T::COLLECTION)?.get(key).map_err(io)? {
            Some(value) => decode_or_quarantine(self, key.as_bytes(), &value),
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<T>, StoreError> {
        let mut records = Vec::new();
        for entry in self.tree(T::COLLECTION)?.iter() {
            let (key, value) = entry.map_err(io)?;
            records.extend(decode_or_quarantine(self, &key, &value)?);
        }
        Ok(records)
    }

    fn put(&self, record: &T) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("records serialize to JSON");
        self.tree(T::COLLECTION)?
            .insert(record.key(), value)
            .map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.tree(T::COLLECTION)?.remove(key).map_err(io)?.is_some();
        self.db.flush().map_err(io)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Blueprint, Capability, NodeId, Service, ServiceId};
    use crate::store::Store;

    fn service(name: &str) -> Service {
        Service::new(
            ServiceId::generate(),
            Blueprint {
                service_name: name.into(),
                images: Vec::new(),
            },
            NodeId("n1".into()),
        )
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let stored = service("web");
        {
            let store = Store::open(dir.path()).unwrap();
            store.services.put(&stored).unwrap();
            store
                .capabilities
                .put(&Capability {
                    capability: "zigbee".into(),
                    capability_type: "hardware".into(),
                })
                .unwrap();
            store.set_meta("node_id", "n1").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.services.get(stored.id.as_str()).unwrap(),
            Some(stored)
        );
        assert_eq!(store.capabilities.list().unwrap().len(), 1);
        assert_eq!(store.meta("node_id").unwrap().as_deref(), Some("n1"));
    }

    #[test]
    fn put_replaces_and_remove_reports_existence() {
        let store = Store::temporary().unwrap();
        let mut stored = service("web");
        store.services.put(&stored).unwrap();
        stored.name = "renamed".into();
        store.services.put(&stored).unwrap();
        assert_eq!(store.services.list().unwrap(), vec![stored.clone()]);
        assert!(store.services.remove(stored.id.as_str()).unwrap());
        assert!(!store.services.remove(stored.id.as_str()).unwrap());
    }

    #[test]
    fn unwritable_path_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let error = Store::open(&file.join("db")).err().unwrap().to_string();
        assert!(error.contains("cannot be opened"), "{error}");
        assert!(error.contains("a-file/db"), "{error}");
    }

    #[test]
    fn corrupt_database_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("conf"), b"garbage, not a sled config").unwrap();
        std::fs::write(dir.path().join("db"), vec![0xffu8; 4096]).unwrap();
        let error = Store::open(dir.path()).err().unwrap().to_string();
        assert!(error.contains("cannot be opened"), "{error}");
    }

    #[test]
    fn an_undecodable_record_is_quarantined_and_the_others_still_listed() {
        let store = Store::temporary().unwrap();
        let good = service("web");
        store.services.put(&good).unwrap();
        store
            .meta
            .tree("services")
            .unwrap()
            .insert("s1", b"{not json")
            .unwrap();
        assert_eq!(store.services.list().unwrap(), vec![good.clone()]);
        assert_eq!(
            store.quarantined().unwrap(),
            vec![QuarantinedRecord {
                collection: "services".into(),
                key: "s1".into()
            }]
        );
        assert_eq!(store.services.get("s1").unwrap(), None);
        assert_eq!(store.services.list().unwrap(), vec![good]);
    }
}
