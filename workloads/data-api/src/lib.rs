//! The EnergieBroker Data API: the metering survey's single source of truth. It keeps each
//! household's registration details, consent, measurement devices, meters and measurements
//! (in sled, or PostgreSQL for several replicas), authenticates edge devices by mutual TLS against the survey's own CA and
//! researchers and administrators by bearer tokens, anonymizes a household when its
//! consent is revoked, and exports the collected measurements as the survey's data set.

pub mod anonymize;
pub mod api;
pub mod auth;
pub mod consent;
pub mod export;
pub mod model;
pub mod nuts;
pub mod pki;
pub mod server;
pub mod store;
pub mod survey_copy;
pub mod tls;
pub mod ui;
pub mod validate;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use api::{router, AppState};

/// Everything `serve` needs, resolved from flags, environment and files.
pub struct ServeOptions {
    /// sled database directory; unused when `postgres` is set.
    pub db_path: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity: u64,
    /// PostgreSQL instead of sled: a `postgres://` connection string and the size of the
    /// connection pool.
    pub postgres: Option<PostgresOptions>,
    pub tls: tls::TlsSetup,
    pub researcher_token: Option<String>,
    pub admin_token: Option<String>,
    pub nuts: nuts::NutsIndex,
    /// How often devices are expected to report (section 3.1.1: hourly at minimum); a
    /// device silent for longer than two of these is flagged in the device health.
    pub report_interval: Duration,
}

pub struct PostgresOptions {
    pub url: String,
    pub pool_size: u32,
    /// CA bundle to verify the database server by; connections use TLS when set.
    pub ca: Option<PathBuf>,
}

/// The survey's report cycle (section 3.1.1): devices transfer measurements hourly.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store and serves on `listener` until `shutdown` resolves; the database is
/// flushed before returning.
pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store: Arc<dyn store::Store> = match &options.postgres {
        Some(pg) => {
            let (url, pool, ca) = (pg.url.clone(), pg.pool_size, pg.ca.clone());
            // Connecting and migrating block on the network.
            let opened = tokio::task::spawn_blocking(move || {
                let transport = match &ca {
                    Some(ca) => store::postgres::Transport::tls_with_ca(ca)?,
                    None => store::postgres::Transport::Plain,
                };
                store::postgres::PgStore::open_with(&url, pool, &transport)
            })
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))??;
            Arc::new(opened)
        }
        None => Arc::new(store::SledStore::open(
            &options.db_path,
            options.cache_capacity,
        )?),
    };
    let backend = match &options.postgres {
        Some(_) => "postgres".to_owned(),
        None => options.db_path.display().to_string(),
    };
    let state = AppState {
        store: store.clone(),
        tokens: Arc::new(auth::Tokens::new(
            options.researcher_token.as_deref(),
            options.admin_token.as_deref(),
        )),
        nuts: Arc::new(options.nuts),
        report_interval: options.report_interval,
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        db = %backend,
        districts = state.nuts.len(),
        report_interval_s = options.report_interval.as_secs_f64(),
        "listening"
    );
    server::serve(listener, options.tls, router(state), shutdown).await?;
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))??;
    Ok(())
}
