//! Versioned schema migrations, applied in order at start (or by `data-api migrate`), each
//! in the transaction that records it in `schema_migrations`. Replicas starting together
//! take turns on an advisory lock, so each migration runs once. A migration, once
//! released, is never edited: a change is a new migration.

use super::MIGRATION_LOCK;
use crate::store::StoreError;

pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "households as documents with index tables, measurements partitioned by month",
        sql: r#"
CREATE TABLE households (
    id       uuid PRIMARY KEY,
    document jsonb NOT NULL
);
-- The key is whatever Household::email_index_key gives; the store does not interpret it.
CREATE TABLE household_emails (
    email_key text PRIMARY KEY,
    household uuid NOT NULL UNIQUE REFERENCES households (id)
);
CREATE TABLE measurement_devices (
    uuid      uuid PRIMARY KEY,
    household uuid NOT NULL REFERENCES households (id)
);
CREATE INDEX measurement_devices_household ON measurement_devices (household);
CREATE TABLE meters (
    uuid      uuid PRIMARY KEY,
    household uuid NOT NULL REFERENCES households (id)
);
CREATE INDEX meters_household ON meters (household);
CREATE TABLE device_status (
    device             uuid PRIMARY KEY REFERENCES measurement_devices (uuid),
    last_activity      timestamptz,
    component_versions jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE certificate_bindings (
    fingerprint bytea PRIMARY KEY CHECK (length(fingerprint) = 32),
    household   uuid NOT NULL REFERENCES households (id)
);
-- A measurement uuid is unique across all partitions; a unique index of the partitioned
-- table would have to include the partition key, so the claim lives here.
CREATE TABLE measurement_ids (
    uuid  uuid PRIMARY KEY,
    meter uuid NOT NULL
);
-- data: a format byte (1), then per point the 6-byte OBIS code and the value as a
-- big-endian float8 (the sled store's encoding).
CREATE TABLE measurements (
    meter       uuid NOT NULL REFERENCES meters (uuid),
    measured_at timestamptz NOT NULL,
    uuid        uuid NOT NULL,
    data        bytea NOT NULL,
    PRIMARY KEY (meter, measured_at, uuid)
) PARTITION BY RANGE (measured_at);
"#,
    },
    Migration {
        version: 2,
        description: "the deny-list of revoked device certificates",
        sql: r#"
-- Every replica reads this at start and every few seconds into the copy its TLS
-- handshake checks. A fingerprint is revoked once; the first time stays.
CREATE TABLE revoked_certificates (
    fingerprint bytea PRIMARY KEY CHECK (length(fingerprint) = 32),
    revoked_at  timestamptz NOT NULL
);
"#,
    },
];

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied now, in order.
    pub applied: Vec<i32>,
    /// The schema version after the run.
    pub version: i32,
}

/// Applies every migration the database lacks. Refuses a database whose schema is newer
/// than this program knows, rather than writing to it.
pub fn migrate(client: &mut postgres::Client) -> Result<MigrationReport, StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     integer PRIMARY KEY,
             description text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            database: current,
            known,
        });
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
            &[&migration.version, &migration.description],
        )?;
        applied.push(migration.version);
    }
    tx.commit()?;
    Ok(MigrationReport {
        applied,
        version: current.max(known),
    })
}
