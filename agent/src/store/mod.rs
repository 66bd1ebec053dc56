//! The data layer: repositories for services, nodes and capabilities. The orchestrator
//! and the API see only [`Repository`]; [`SledStore`] keeps them on disk so that the
//! desired state survives a crash or a reboot.

mod sled_store;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::domain::{Capability, NodeInfo, Service};

pub use sled_store::SledStore;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database at {path} cannot be opened: {reason}")]
    Open { path: String, reason: String },
    #[error("database I/O failed: {0}")]
    Io(String),
}

/// A record set aside because it could not be decoded (see [`Store::quarantined`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedRecord {
    pub collection: String,
    pub key: String,
}

/// A record with a key unique in its collection.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Name of the collection (a sled tree).
    const COLLECTION: &'static str;
    fn key(&self) -> String;
}

impl Record for Service {
    const COLLECTION: &'static str = "services";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for NodeInfo {
    const COLLECTION: &'static str = "nodes";
    fn key(&self) -> String {
        self.id.to_string()
    }
}

impl Record for Capability {
    const COLLECTION: &'static str = "capabilities";
    fn key(&self) -> String {
        format!("{}/{}", self.capability_type, self.capability)
    }
}

/// A collection of records of one kind. Writes are durable when they return.
pub trait Repository<T: Record>: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<T>, StoreError>;
    /// Every record that can be decoded; one that cannot is logged and moved to
    /// quarantine instead of failing the whole list.
    fn list(&self) -> Result<Vec<T>, StoreError>;
    /// Inserts or replaces the record with the same key.
    fn put(&self, record: &T) -> Result<(), StoreError>;
    /// Removes a record; returns whether it existed.
    fn remove(&self, key: &str) -> Result<bool, StoreError>;
}

/// The three repositories of an agent, plus small facts about the node itself.
#[derive(Clone)]
pub struct Store {
    pub services: Arc<dyn Repository<Service>>,
    pub nodes: Arc<dyn Repository<NodeInfo>>,
    pub capabilities: Arc<dyn Repository<Capability>>,
    meta: Arc<SledStore>,
}

impl Store {
    /// Opens (or creates) the database directory at `path`.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Ok(Store::from_sled(SledStore::open(path)?))
    }

    /// A store that lives in memory only (tests).
    pub fn temporary() -> Result<Store, StoreError> {
        Ok(Store::from_sled(SledStore::temporary()?))
    }

    fn from_sled(sled: SledStore) -> Store {
        let sled = Arc::new(sled);
        Store {
            services: sled.clone(),
            nodes: sled.clone(),
            capabilities: sled.clone(),
            meta: sled,
        }
    }

    /// A small value about the node itself (such as its generated id).
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.meta.meta(key)
    }

    /// Records set aside because they could not be decoded.
    pub fn quarantined(&self) -> Result<Vec<QuarantinedRecord>, StoreError> {
        self.meta.quarantined()
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.meta.set_meta(key, value)
    }
}
