//! The EnergieBroker Data API: the metering survey's single source of truth. It keeps each
//! household's registration details, consent, measurement devices, meters and measurements
//! (in sled), authenticates edge devices by mutual TLS against the survey's own CA and
//! researchers and administrators by bearer tokens, anonymizes a household when its
//! consent is revoked, and exports the collected measurements as the survey's data set.

pub mod anonymize;
pub mod api;
pub mod auth;
pub mod consent;
pub mod export;
pub mod health;
pub mod model;
pub mod nuts;
pub mod pki;
pub mod server;
pub mod store;
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
    pub db_path: PathBuf,
    /// sled page cache size in bytes.
    pub cache_capacity: u64,
    pub tls: tls::TlsSetup,
    pub researcher_token: Option<String>,
    pub admin_token: Option<String>,
    pub nuts: nuts::NutsIndex,
    /// How often devices are expected to report (section 3.1.1: hourly at minimum); a
    /// device silent for longer than two of these is flagged in the device health.
    pub report_interval: Duration,
    /// How long the store may fail before the process stops for its supervisor to
    /// restart it.
    pub store_retry: Duration,
}

/// The survey's report cycle (section 3.1.1): devices transfer measurements hourly.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store failed for longer than {retry:?}, stopping for a restart: {error}")]
    StoreUnavailable { retry: Duration, error: String },
}

/// Opens the store and serves on `listener` until `shutdown` resolves; the database is
/// flushed before returning.
pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let store = Arc::new(store::SledStore::open(
        &options.db_path,
        options.cache_capacity,
    )?);
    let state = AppState {
        store: store.clone(),
        tokens: Arc::new(auth::Tokens::new(
            options.researcher_token.as_deref(),
            options.admin_token.as_deref(),
        )),
        nuts: Arc::new(options.nuts),
        report_interval: options.report_interval,
        health: Arc::new(health::StoreHealth::default()),
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        db = %options.db_path.display(),
        districts = state.nuts.len(),
        report_interval_s = options.report_interval.as_secs_f64(),
        "listening"
    );
    let health = state.health.clone();
    let retry = options.store_retry;
    let gave_up = std::sync::OnceLock::new();
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            error = health.given_up(retry) => {
                let _ = gave_up.set(error);
            }
        }
    };
    server::serve(listener, options.tls, router(state), stop).await?;
    if let Some(error) = gave_up.into_inner() {
        return Err(ServeError::StoreUnavailable { retry, error });
    }
    use store::Store as _;
    store.flush()?;
    Ok(())
}
