//! The local append-only measurement store (sled). Measurements are flushed to disk
//! before they count as taken, and deleted only after the Data API acknowledged them, so
//! neither an outage nor a `kill -9` loses or duplicates one.

use std::collections::BTreeMap;
use std::path::Path;

/// One measurement as the Data API receives it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// Random id; the Data API stores each id once, which makes retries harmless.
    pub uuid: uuid::Uuid,
    /// The meter's uuid.
    pub meter: uuid::Uuid,
    /// When the reading was taken, RFC 3339 in UTC with seconds (`2026-11-23T10:15:00Z`).
    pub measured_at: String,
    /// Single-key objects: OBIS hex code to value (kWh, kW, or the meter's unit).
    pub data: Vec<BTreeMap<String, f64>>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be encoded.
    #[error("store record: {0}")]
    Encoding(#[from] serde_json::Error),
}

/// The store: pending measurements in append order, plus small persisted state.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    measurements: sled::Tree,
    state: sled::Tree,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("store"))
            // Small cache: the reader must stay within a few MB of memory.
            .cache_capacity(1 << 20)
            .open()?;
        Ok(Self {
            measurements: db.open_tree("measurements")?,
            state: db.open_tree("state")?,
            db,
        })
    }

    /// Appends a measurement and flushes it to disk.
    pub fn append(&self, m: &Measurement) -> Result<u64, StoreError> {
        // sled ids increase across restarts, so keys keep the order of measurements.
        let id = self.db.generate_id()?;
        self.measurements
            .insert(id.to_be_bytes(), serde_json::to_vec(m)?)?;
        self.db.flush()?;
        Ok(id)
    }

    /// Number of measurements not yet acknowledged by the Data API.
    pub fn pending(&self) -> usize {
        self.measurements.len()
    }

    /// The oldest `limit` measurements with their keys. Records that cannot be read
    /// (which only a damaged disk produces) are dropped with an error log, not retried.
    pub fn oldest(&self, limit: usize) -> Result<Vec<(u64, Measurement)>, StoreError> {
        self.oldest_matching(limit, |_| true)
    }

    /// The oldest `limit` measurements that `wanted` accepts, with their keys.
    pub fn oldest_matching(
        &self,
        limit: usize,
        wanted: impl Fn(&Measurement) -> bool,
    ) -> Result<Vec<(u64, Measurement)>, StoreError> {
        let mut out = Vec::with_capacity(limit.min(1000));
        for item in self.measurements.iter() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let key = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            match serde_json::from_slice::<Measurement>(&v) {
                Ok(m) if wanted(&m) => out.push((key, m)),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable measurement record dropped");
                    self.measurements.remove(k)?;
                }
            }
        }
        Ok(out)
    }

    /// Deletes acknowledged measurements and flushes.
    pub fn remove(&self, keys: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(&k.to_be_bytes());
        }
        self.measurements.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Reads a persisted state value.
    pub fn get_state<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.state.get(key)? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Persists a state value and flushes.
    pub fn set_state<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.state.insert(key, serde_json::to_vec(value)?)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: u8) -> Measurement {
        Measurement {
            uuid: uuid::Uuid::new_v4(),
            meter: uuid::Uuid::nil(),
            measured_at: format!("2026-11-23T10:15:{n:02}Z"),
            data: vec![BTreeMap::from([("0100010800ff".to_string(), f64::from(n))])],
        }
    }

    #[test]
    fn append_order_survives_reopen_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<_> = (0..5).map(m).collect();
        {
            let s = Store::open(dir.path()).unwrap();
            for x in &all {
                s.append(x).unwrap();
            }
            let first = s.oldest(2).unwrap();
            assert_eq!(
                first.iter().map(|(_, x)| x.clone()).collect::<Vec<_>>(),
                all[..2]
            );
            s.remove(&first.iter().map(|(k, _)| *k).collect::<Vec<_>>())
                .unwrap();
            s.set_state("consent", &"GRANTED").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.pending(), 3);
        let rest: Vec<_> = s.oldest(10).unwrap().into_iter().map(|(_, x)| x).collect();
        assert_eq!(rest, all[2..]);
        s.append(&m(9)).unwrap();
        assert_eq!(
            s.oldest(10).unwrap().last().unwrap().1.measured_at,
            "2026-11-23T10:15:09Z"
        );
        assert_eq!(
            s.get_state::<String>("consent").unwrap().unwrap(),
            "GRANTED"
        );
    }
}
