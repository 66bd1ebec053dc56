//! [`Repository`] on sled: one tree per collection, JSON values, flushed on every write.

use std::path::Path;

use super::{Record, Repository, StoreError};

/// One sled database holding every collection of an agent.
pub struct SledStore {
    db: sled::Db,
}

const META_TREE: &str = "meta";

impl SledStore {
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        // sled's own message for an unwritable parent is a bare "Permission denied".
        std::fs::create_dir_all(path)
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

fn decode<T: Record>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|error| StoreError::Corrupt {
        collection: T::COLLECTION,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: error.to_string(),
    })
}

impl<T: Record> Repository<T> for SledStore {
    fn get(&self, key: &str) -> Result<Option<T>, StoreError> {
        self.tree(T::COLLECTION)?
            .get(key)
            .map_err(io)?
            .map(|value| decode(key.as_bytes(), &value))
            .transpose()
    }

    fn list(&self) -> Result<Vec<T>, StoreError> {
        self.tree(T::COLLECTION)?
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(io)?;
                decode(&key, &value)
            })
            .collect()
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
    fn corrupt_record_names_collection_and_key() {
        let store = SledStore::temporary().unwrap();
        store
            .tree("services")
            .unwrap()
            .insert("s1", b"{not json")
            .unwrap();
        let error = Repository::<Service>::list(&store).unwrap_err().to_string();
        assert!(
            error.contains("record s1 in services is corrupt"),
            "{error}"
        );
    }
}
