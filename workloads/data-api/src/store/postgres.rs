//! PostgreSQL store, for a survey that outgrows one machine and for several Data API
//! replicas on one database.
//!
//! A household is one JSONB document (new fields of `Household` need no migration) beside
//! relational index tables that carry the referential rules as constraints: a unique email
//! index key, every meter and measurement device owned by exactly one household,
//! measurements referencing their meter. Measurements live in a table partitioned by month
//! of `measured_at`; partitions are created ahead at start and on demand for an older or
//! later month.
//!
//! Driver: the synchronous `postgres` client with an `r2d2` pool. The `Store` trait is
//! synchronous and runs on tokio's blocking threads; the synchronous client drives its
//! connection on the calling thread, so a query costs no hand-off to another task and no
//! async worker can ever wait on a network round trip. (Its internal per-connection
//! runtime must not be entered from an async worker: every caller goes through
//! `AppState::blocking`.) The statements of every request are sent with `query_typed`,
//! which parses, binds and executes in one round trip instead of preparing first.
//!
//! Replicas are correct together because every rule is decided inside the database:
//! - consent transitions and anonymization lock the household row (`SELECT … FOR UPDATE`)
//!   while an ingest holds it shared (`FOR SHARE`) for its whole transaction, so a
//!   revocation acknowledged by one replica precedes every batch any replica stores later;
//! - the unique email key and the ownership of meters and devices are unique constraints,
//!   so of two concurrent registrations with one email exactly one commits;
//! - a measurement uuid is claimed in `measurement_ids` with `ON CONFLICT DO NOTHING`, so
//!   a retried batch is counted as duplicates by whichever replica receives it.
//!
//! Every acknowledgement follows the commit (`synchronous_commit` as the server sets it);
//! device activity alone is committed asynchronously, as it is bookkeeping.

mod connection;
mod migrations;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, Utc};
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Transaction};
use uuid::Uuid;

use super::{
    decode_data, encode_data, IngestOutcome, RevokedCertificate, SeriesCursor, SeriesPage,
    SeriesQuery, Store, StoreError,
};
use crate::model::{Consent, DeviceStatus, Household, Measurement};

pub use connection::Transport;
pub use migrations::{migrate, MigrationReport, MIGRATIONS};

/// How many months of measurement partitions exist ahead of the current one.
const MONTHS_AHEAD: u32 = 3;
/// Advisory lock keys (one namespace for this schema): migrations and partition creation
/// are serialized across replicas.
pub(crate) const MIGRATION_LOCK: i64 = 0x6562_6d69_6772_0001;
const PARTITION_LOCK: i64 = 0x6562_6d69_6772_0002;

/// Whether `db` names a PostgreSQL database rather than a sled directory.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

pub struct PgStore {
    pool: connection::Pool,
    /// First days of the months whose measurement partition is known to exist.
    partitions: Mutex<HashSet<(i32, u32)>>,
}

impl PgStore {
    /// Connects without TLS (loopback, a private network), applies pending migrations
    /// and creates the partitions ahead.
    pub fn open(url: &str, pool_size: u32) -> Result<PgStore, StoreError> {
        PgStore::open_with(url, pool_size, &Transport::Plain)
    }

    pub fn open_with(
        url: &str,
        pool_size: u32,
        transport: &Transport,
    ) -> Result<PgStore, StoreError> {
        let config: postgres::Config = url.parse()?;
        let mut client = transport.connect(&config)?;
        migrate(&mut client)?;
        let store = PgStore {
            pool: transport.pool(&config, pool_size)?,
            partitions: Mutex::new(existing_partitions(&mut client)?),
        };
        let now = Utc::now();
        let mut month = month_of(now);
        for _ in 0..=MONTHS_AHEAD {
            store.ensure_partition(&mut client, month)?;
            month = next_month(month);
        }
        Ok(store)
    }

    fn client(&self) -> Result<connection::Connection, StoreError> {
        self.pool.get()
    }

    fn ensure_partitions(&self, batch: &[Measurement]) -> Result<(), StoreError> {
        let months: BTreeSet<(i32, u32)> = batch.iter().map(|m| month_of(m.measured_at)).collect();
        let missing: Vec<_> = {
            let known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
            months.into_iter().filter(|m| !known.contains(m)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client()?;
        for month in missing {
            self.ensure_partition(&mut *client, month)?;
        }
        Ok(())
    }

    /// Creates the month's partition unless it exists; replicas take turns (a concurrent
    /// `CREATE TABLE IF NOT EXISTS` of one name can fail on the catalog's unique index).
    fn ensure_partition(
        &self,
        client: &mut impl GenericClient,
        (year, month): (i32, u32),
    ) -> Result<(), StoreError> {
        let (next_year, next) = next_month((year, month));
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS \"measurements_{year:04}_{month:02}\" \
             PARTITION OF measurements \
             FOR VALUES FROM ('{}') TO ('{}')",
            month_literal((year, month)),
            month_literal((next_year, next)),
        ))?;
        tx.commit()?;
        self.partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((year, month));
        Ok(())
    }

    /// Copies measurements as they are, without the consent check of `ingest` (a revoked
    /// household's measurements stay in the data set): for `migrate-store`.
    pub fn import_measurements(&self, batch: &[Measurement]) -> Result<usize, StoreError> {
        self.ensure_partitions(batch)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let inserted = insert_measurements(&mut tx, batch)?;
        tx.commit()?;
        Ok(inserted.len())
    }

    /// Stores a device's status as it is (for `migrate-store`).
    pub fn import_device_status(
        &self,
        device: Uuid,
        status: &DeviceStatus,
    ) -> Result<(), StoreError> {
        let versions = serde_json::to_value(&status.component_versions)?;
        self.client()?.execute(
            "INSERT INTO device_status (device, last_activity, component_versions) \
             VALUES ($1, $2, $3) ON CONFLICT (device) DO UPDATE \
             SET last_activity = EXCLUDED.last_activity, \
                 component_versions = EXCLUDED.component_versions",
            &[&device, &status.last_activity, &versions],
        )?;
        Ok(())
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        StoreError::Postgres(e)
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> StoreError {
        StoreError::NoConnection(e.to_string())
    }
}

/// Whether a PostgreSQL error means the database cannot serve right now (connection
/// lost, server shutting down, out of disk or memory, I/O) rather than a refused request.
pub(super) fn is_unavailable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: the error came from the connection, not from the server.
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            // 08 connection exception, 53 insufficient resources (disk full, out of
            // memory, too many connections), 57 operator intervention (shutdown), 58
            // system error (I/O), XX internal error.
            matches!(class, "08" | "53" | "57" | "58" | "XX")
        }
    }
}

fn month_of(at: DateTime<Utc>) -> (i32, u32) {
    (at.year(), at.month())
}

/// The first instant of a month as a PostgreSQL literal (which has no year 0: 1 BC).
fn month_literal((year, month): (i32, u32)) -> String {
    if year >= 1 {
        format!("{year:04}-{month:02}-01 00:00:00+00")
    } else {
        format!("{:04}-{month:02}-01 00:00:00+00 BC", 1 - year)
    }
}

fn next_month((year, month): (i32, u32)) -> (i32, u32) {
    if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    }
}

fn existing_partitions(client: &mut postgres::Client) -> Result<HashSet<(i32, u32)>, StoreError> {
    let rows = client.query(
        "SELECT c.relname FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'measurements' \
           AND p.relnamespace = current_schema()::regnamespace",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: &str = row.get(0);
            let rest = name.strip_prefix("measurements_")?;
            let (year, month) = rest.rsplit_once('_')?;
            Some((year.parse().ok()?, month.parse().ok()?))
        })
        .collect())
}

fn decode_household(document: serde_json::Value) -> Result<Household, StoreError> {
    Ok(serde_json::from_value(document)?)
}

/// Claims the batch's measurement uuids and stores the measurements whose uuid was new,
/// as one statement; returns the uuids stored. Within the batch the first occurrence of a
/// uuid wins.
fn insert_measurements(
    tx: &mut Transaction<'_>,
    batch: &[Measurement],
) -> Result<HashSet<Uuid>, StoreError> {
    let uuids: Vec<Uuid> = batch.iter().map(|m| m.uuid).collect();
    let meters: Vec<Uuid> = batch.iter().map(|m| m.meter).collect();
    let times: Vec<DateTime<Utc>> = batch.iter().map(|m| m.measured_at).collect();
    let data: Vec<Vec<u8>> = batch.iter().map(|m| encode_data(&m.data)).collect();
    let rows = tx.query_typed(
        "WITH batch AS ( \
             SELECT DISTINCT ON (uuid) uuid, meter, measured_at, data \
             FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bytea[]) \
                  WITH ORDINALITY AS b(uuid, meter, measured_at, data, position) \
             ORDER BY uuid, position), \
         claimed AS ( \
             INSERT INTO measurement_ids (uuid, meter) \
             SELECT uuid, meter FROM batch \
             ON CONFLICT (uuid) DO NOTHING \
             RETURNING uuid) \
         INSERT INTO measurements (meter, measured_at, uuid, data) \
         SELECT b.meter, b.measured_at, b.uuid, b.data FROM batch b JOIN claimed USING (uuid) \
         RETURNING uuid",
        &[
            (&uuids, Type::UUID_ARRAY),
            (&meters, Type::UUID_ARRAY),
            (&times, Type::TIMESTAMPTZ_ARRAY),
            (&data, Type::BYTEA_ARRAY),
        ],
    )?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Index rows of a household's meters and devices; a uuid owned by another household is a
/// `DuplicateId`. Rows are only ever added: a removed meter keeps its measurements and its
/// uuid stays with the household.
fn index_parts(tx: &mut Transaction<'_>, household: &Household) -> Result<(), StoreError> {
    let parts: [(&'static str, &str, Vec<Uuid>); 2] = [
        (
            "measurement device",
            "measurement_devices",
            household
                .measurement_devices
                .iter()
                .map(|d| d.uuid)
                .collect(),
        ),
        (
            "meter",
            "meters",
            household.meters.iter().map(|m| m.uuid).collect(),
        ),
    ];
    for (kind, table, uuids) in parts {
        if uuids.is_empty() {
            continue;
        }
        tx.execute(
            &format!(
                "INSERT INTO {table} (uuid, household) SELECT u, $2 FROM unnest($1::uuid[]) u \
                 ON CONFLICT (uuid) DO NOTHING"
            ),
            &[&uuids, &household.id],
        )?;
        let foreign = tx.query_opt(
            &format!("SELECT uuid FROM {table} WHERE uuid = ANY($1) AND household <> $2 LIMIT 1"),
            &[&uuids, &household.id],
        )?;
        if let Some(row) = foreign {
            return Err(StoreError::DuplicateId {
                kind,
                uuid: row.get(0),
            });
        }
    }
    Ok(())
}

/// Points the email index at `household`, or frees its key when it has none.
fn index_email(
    tx: &mut Transaction<'_>,
    old: Option<&Household>,
    new: &Household,
) -> Result<(), StoreError> {
    let old_key = old.and_then(Household::email_index_key);
    let new_key = new.email_index_key();
    if old.is_some() && old_key == new_key {
        return Ok(());
    }
    if let Some(old_key) = &old_key {
        tx.execute(
            "DELETE FROM household_emails WHERE email_key = $1 AND household = $2",
            &[old_key, &new.id],
        )?;
    }
    if let Some(new_key) = &new_key {
        let inserted = tx.execute(
            "INSERT INTO household_emails (email_key, household) VALUES ($1, $2) \
             ON CONFLICT (email_key) DO NOTHING",
            &[new_key, &new.id],
        )?;
        if inserted == 0 {
            return Err(StoreError::EmailTaken);
        }
    }
    Ok(())
}

impl Store for PgStore {
    fn create_household(&self, household: &Household) -> Result<(), StoreError> {
        let document = serde_json::to_value(household)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO households (id, document) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&household.id, &document],
        )?;
        if inserted == 0 {
            return Err(StoreError::DuplicateId {
                kind: "household",
                uuid: household.id,
            });
        }
        index_email(&mut tx, None, household)?;
        index_parts(&mut tx, household)?;
        tx.commit()?;
        Ok(())
    }

    fn household(&self, id: Uuid) -> Result<Option<Household>, StoreError> {
        let row = self.client()?.query_typed_opt(
            "SELECT document FROM households WHERE id = $1",
            &[(&id, Type::UUID)],
        )?;
        row.map(|row| decode_household(row.get(0))).transpose()
    }

    fn households(&self) -> Result<Vec<Household>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT document FROM households ORDER BY id", &[])?;
        rows.into_iter()
            .map(|row| decode_household(row.get(0)))
            .collect()
    }

    fn household_by_email(&self, key: &str) -> Result<Option<Uuid>, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT household FROM household_emails WHERE email_key = $1",
            &[&key],
        )?;
        Ok(row.map(|row| row.get(0)))
    }

    fn replace_household(&self, expected: &Household, new: &Household) -> Result<(), StoreError> {
        let id = expected.id;
        let document = serde_json::to_value(new)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // The row lock serializes every change of this household across replicas, and
        // waits for the ingests in flight (which hold it shared).
        let current = match tx.query_opt(
            "SELECT document FROM households WHERE id = $1 FOR UPDATE",
            &[&id],
        )? {
            Some(row) => decode_household(row.get(0))?,
            None => return Err(StoreError::UnknownHousehold(id)),
        };
        if &current != expected {
            return Err(StoreError::HouseholdChanged(id));
        }
        index_email(&mut tx, Some(expected), new)?;
        index_parts(&mut tx, new)?;
        tx.execute(
            "UPDATE households SET document = $2 WHERE id = $1",
            &[&id, &document],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn certificate_binding(&self, fingerprint: &[u8; 32]) -> Result<Option<Uuid>, StoreError> {
        let row = self.client()?.query_typed_opt(
            "SELECT household FROM certificate_bindings WHERE fingerprint = $1",
            &[(&fingerprint.as_slice(), Type::BYTEA)],
        )?;
        Ok(row.map(|row| row.get(0)))
    }

    fn bind_certificate(&self, fingerprint: &[u8; 32], household: Uuid) -> Result<(), StoreError> {
        // First binding wins: a certificate stays with the household it was first used for.
        self.client()?.execute(
            "INSERT INTO certificate_bindings (fingerprint, household) VALUES ($1, $2) \
             ON CONFLICT (fingerprint) DO NOTHING",
            &[&fingerprint.as_slice(), &household],
        )?;
        Ok(())
    }

    fn revoke_certificate(
        &self,
        fingerprint: &[u8; 32],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO revoked_certificates (fingerprint, revoked_at) VALUES ($1, $2) \
             ON CONFLICT (fingerprint) DO NOTHING",
            &[&fingerprint.as_slice(), &at],
        )?;
        Ok(())
    }

    fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>, StoreError> {
        let rows = self.client()?.query(
            "SELECT fingerprint, revoked_at FROM revoked_certificates ORDER BY fingerprint",
            &[],
        )?;
        rows.iter()
            .map(|row| {
                let fingerprint: &[u8] = row.get(0);
                Ok(RevokedCertificate {
                    // The table's CHECK keeps every fingerprint at 32 bytes.
                    fingerprint: fingerprint.try_into().map_err(|_| {
                        StoreError::Corrupt(serde::de::Error::custom(
                            "revoked certificate fingerprint of unknown length",
                        ))
                    })?,
                    revoked_at: row.get(1),
                })
            })
            .collect()
    }

    fn device_status(&self, device: Uuid) -> Result<DeviceStatus, StoreError> {
        let row = self.client()?.query_typed_opt(
            "SELECT last_activity, component_versions FROM device_status WHERE device = $1",
            &[(&device, Type::UUID)],
        )?;
        match row {
            None => Ok(DeviceStatus::default()),
            Some(row) => Ok(DeviceStatus {
                last_activity: row.get(0),
                component_versions: serde_json::from_value(row.get(1))?,
            }),
        }
    }

    fn record_device_activity(
        &self,
        device: Uuid,
        at: DateTime<Utc>,
        component_versions: Option<&BTreeMap<String, String>>,
    ) -> Result<(), StoreError> {
        let versions = component_versions.map(serde_json::to_value).transpose()?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Bookkeeping: it need not wait for the disk, a crash loses at most the last moments.
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        tx.execute_typed(
            "INSERT INTO device_status (device, last_activity, component_versions) \
             VALUES ($1, $2, COALESCE($3, '{}'::jsonb)) \
             ON CONFLICT (device) DO UPDATE SET \
                 last_activity = GREATEST(device_status.last_activity, EXCLUDED.last_activity), \
                 component_versions = COALESCE($3, device_status.component_versions)",
            &[
                (&device, Type::UUID),
                (&at, Type::TIMESTAMPTZ),
                (&versions, Type::JSONB),
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn ingest(&self, household: Uuid, batch: &[Measurement]) -> Result<IngestOutcome, StoreError> {
        self.ensure_partitions(batch)?;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Held shared until commit: a revocation (FOR UPDATE) either committed before this
        // read, and is seen, or waits until this batch is committed.
        let consent: Consent = match tx.query_typed_opt(
            "SELECT document->'consent' FROM households WHERE id = $1 FOR SHARE",
            &[(&household, Type::UUID)],
        )? {
            Some(row) => serde_json::from_value(row.get(0))?,
            None => return Err(StoreError::UnknownHousehold(household)),
        };
        consent
            .accepts_measurements()
            .map_err(StoreError::Consent)?;
        let stored = insert_measurements(&mut tx, batch)?;
        let outcome = count_outcome(&mut tx, batch, &stored)?;
        tx.commit()?;
        Ok(outcome)
    }

    fn series(&self, meter: Uuid, query: &SeriesQuery) -> Result<SeriesPage, StoreError> {
        let (after_time, after_uuid) = match query.after {
            Some(c) => (Some(c.measured_at), Some(c.uuid)),
            None => (None, None),
        };
        let limit = query.limit as i64 + 1;
        let rows = self.client()?.query(
            "SELECT uuid, measured_at, data FROM measurements \
             WHERE meter = $1 \
               AND ($2::timestamptz IS NULL OR measured_at >= $2) \
               AND ($3::timestamptz IS NULL OR measured_at < $3) \
               AND ($4::timestamptz IS NULL OR (measured_at, uuid) > ($4, $5::uuid)) \
             ORDER BY measured_at, uuid LIMIT $6",
            &[
                &meter,
                &query.from,
                &query.to,
                &after_time,
                &after_uuid,
                &limit,
            ],
        )?;
        let mut measurements = rows
            .iter()
            .map(|row| measurement_of(meter, row))
            .collect::<Result<Vec<_>, _>>()?;
        let next = if measurements.len() > query.limit {
            measurements.truncate(query.limit);
            measurements.last().map(|m| SeriesCursor {
                measured_at: m.measured_at,
                uuid: m.uuid,
            })
        } else {
            None
        };
        Ok(SeriesPage { measurements, next })
    }

    fn last_measurement(&self, meter: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self.client()?.query_typed_opt(
            "SELECT measured_at FROM measurements WHERE meter = $1 \
             ORDER BY measured_at DESC LIMIT 1",
            &[(&meter, Type::UUID)],
        )?;
        Ok(row.map(|row| row.get(0)))
    }

    fn scan_measurements(
        &self,
        meter: Option<Uuid>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(Measurement) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut client = self.client()?;
        let params: [&(dyn ToSql + Sync); 3] = [&meter, &from, &to];
        // Rows stream from the server as the visitor consumes them.
        let mut rows = client.query_raw(
            "SELECT meter, uuid, measured_at, data FROM measurements \
             WHERE ($1::uuid IS NULL OR meter = $1) \
               AND ($2::timestamptz IS NULL OR measured_at >= $2) \
               AND ($3::timestamptz IS NULL OR measured_at < $3) \
             ORDER BY meter, measured_at, uuid",
            params,
        )?;
        while let Some(row) = rows.next()? {
            let m = scanned_measurement(&row)?;
            if visit(m).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every acknowledged write is already committed.
        Ok(())
    }
}

/// Accepted and duplicate counts as the sled store gives them: a uuid stored before (or
/// earlier in the batch) for the same meter is a duplicate, for another meter an error.
fn count_outcome(
    tx: &mut Transaction<'_>,
    batch: &[Measurement],
    stored: &HashSet<Uuid>,
) -> Result<IngestOutcome, StoreError> {
    let mut outcome = IngestOutcome::default();
    if stored.len() == batch.len() {
        outcome.accepted = batch.len();
        return Ok(outcome);
    }
    let others: Vec<Uuid> = batch
        .iter()
        .map(|m| m.uuid)
        .filter(|u| !stored.contains(u))
        .collect();
    let owners: HashMap<Uuid, Uuid> = tx
        .query(
            "SELECT uuid, meter FROM measurement_ids WHERE uuid = ANY($1)",
            &[&others],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut in_batch: HashMap<Uuid, Uuid> = HashMap::with_capacity(batch.len());
    for (index, m) in batch.iter().enumerate() {
        let owner = match in_batch.get(&m.uuid) {
            Some(meter) => Some(*meter),
            None if stored.contains(&m.uuid) => None,
            None => owners.get(&m.uuid).copied(),
        };
        match owner {
            None => {
                in_batch.insert(m.uuid, m.meter);
                outcome.accepted += 1;
            }
            Some(meter) if meter == m.meter => outcome.duplicates += 1,
            Some(_) => {
                return Err(StoreError::MeasurementOfOtherMeter {
                    index,
                    uuid: m.uuid,
                })
            }
        }
    }
    Ok(outcome)
}

fn measurement_of(meter: Uuid, row: &postgres::Row) -> Result<Measurement, StoreError> {
    let data: &[u8] = row.get(2);
    Ok(Measurement {
        uuid: row.get(0),
        meter,
        measured_at: row.get(1),
        data: decode_data(data).ok_or_else(unknown_data)?,
    })
}

fn scanned_measurement(row: &postgres::Row) -> Result<Measurement, StoreError> {
    let data: &[u8] = row.get(3);
    Ok(Measurement {
        meter: row.get(0),
        uuid: row.get(1),
        measured_at: row.get(2),
        data: decode_data(data).ok_or_else(unknown_data)?,
    })
}

fn unknown_data() -> StoreError {
    StoreError::Corrupt(serde::de::Error::custom(
        "measurement data of unknown format",
    ))
}
