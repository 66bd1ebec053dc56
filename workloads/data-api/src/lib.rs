//! The EnergieBroker Data API: the metering survey's single source of truth. It keeps each
//! household's registration details, consent, measurement devices, meters and measurements
//! (in sled, or PostgreSQL for several replicas), authenticates edge devices by mutual TLS
//! against the survey's own CA and researchers and administrators by bearer tokens,
//! anonymizes a household when its consent is revoked, and exports the collected
//! measurements as the survey's data set.

pub mod anonymize;
pub mod api;
pub mod auth;
pub mod consent;
pub mod export;
pub mod health;
pub mod model;
pub mod nuts;
pub mod pki;
pub mod privacy;
pub mod server;
pub mod store;
pub mod survey_copy;
pub mod tls;
pub mod ui;
pub mod validate;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use api::{router, AppState};

/// Everything `serve` needs, resolved from flags, environment and files.
pub struct ServeOptions {
    /// sled database directory; unused when `postgres` is set.
    pub db_path: PathBuf,
    /// The key vault directory [default: beside the database, see [`default_key_vault`]].
    pub key_vault: Option<PathBuf>,
    /// The revocation ledger [default: beside the database, see [`default_revocation_ledger`]].
    pub revocation_ledger: Option<PathBuf>,
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
    /// How long the store may fail before the process stops for its supervisor to
    /// restart it.
    pub store_retry: Duration,
}

pub struct PostgresOptions {
    pub url: String,
    pub pool_size: u32,
    /// CA bundle to verify the database server by; connections use TLS when set.
    pub ca: Option<PathBuf>,
}

/// The survey's report cycle (section 3.1.1): devices transfer measurements hourly.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(3600);

/// `<db>.keys` beside the database directory: never inside it, so copying the database
/// (a backup) never copies the keys.
pub fn default_key_vault(db_path: &Path) -> PathBuf {
    sibling(db_path, "keys")
}

/// `<db>.revocations` beside the database directory, and apart from the key vault, so
/// that restoring either from a backup leaves the ledger as it is.
pub fn default_revocation_ledger(db_path: &Path) -> PathBuf {
    sibling(db_path, "revocations")
}

fn sibling(db_path: &Path, suffix: &str) -> PathBuf {
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".to_owned());
    db_path.with_file_name(format!("{name}.{suffix}"))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the database: {0}")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Vault(#[from] privacy::vault::VaultError),
    #[error(transparent)]
    Ledger(#[from] privacy::ledger::LedgerError),
    #[error("{0} is inside the database directory {1}: a backup of the database would copy it")]
    InsideDatabase(PathBuf, PathBuf),
    #[error(
        "on PostgreSQL, --key-vault and --revocation-ledger must be given: a directory and a \
         file outside the database's backups, the same for every replica of the database"
    )]
    PrivacyPathsNeeded,
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store failed for longer than {retry:?}, stopping for a restart: {error}")]
    StoreUnavailable { retry: Duration, error: String },
}

/// Where the key vault and the revocation ledger are. Beside a sled directory by default;
/// a PostgreSQL database has no directory to put them beside, and its replicas must share
/// them (the vault's server secret keys the email index), so there they are named.
fn privacy_paths(options: &ServeOptions) -> Result<(PathBuf, PathBuf), ServeError> {
    if options.postgres.is_some() {
        return match (&options.key_vault, &options.revocation_ledger) {
            (Some(vault), Some(ledger)) => Ok((vault.clone(), ledger.clone())),
            _ => Err(ServeError::PrivacyPathsNeeded),
        };
    }
    let db = &options.db_path;
    let vault = options
        .key_vault
        .clone()
        .unwrap_or_else(|| default_key_vault(db));
    let ledger = options
        .revocation_ledger
        .clone()
        .unwrap_or_else(|| default_revocation_ledger(db));
    for apart in [&vault, &ledger] {
        if absolute(apart).starts_with(absolute(db)) {
            return Err(ServeError::InsideDatabase(apart.clone(), db.clone()));
        }
    }
    Ok((vault, ledger))
}

/// The store `serve` works with: the backend under [`privacy::SealedStore`], households
/// from before sealing sealed and the ledger's revocations applied again, and the deny-list
/// loaded. Blocks (files, fsync, the network).
fn open_store(options: &ServeOptions, nuts: &nuts::NutsIndex) -> Result<Opened, ServeError> {
    let (key_vault, ledger) = privacy_paths(options)?;
    let vault: Arc<dyn privacy::KeyVault> = Arc::new(privacy::FileKeyVault::open(&key_vault)?);
    let ledger = privacy::ledger::RevocationLedger::open(&ledger)?;
    let store: Arc<dyn store::Store> = match &options.postgres {
        Some(pg) => {
            let transport = match &pg.ca {
                Some(ca) => store::postgres::Transport::tls_with_ca(ca)?,
                None => store::postgres::Transport::Plain,
            };
            let backend = store::postgres::PgStore::open_with(&pg.url, pg.pool_size, &transport)?;
            Arc::new(sealed(backend, vault.clone(), ledger, nuts)?)
        }
        None => {
            let backend = store::SledStore::open(&options.db_path, options.cache_capacity)?;
            Arc::new(sealed(backend, vault.clone(), ledger, nuts)?)
        }
    };
    options.tls.deny_list.refresh(store.as_ref())?;
    Ok(Opened { store, vault })
}

/// The sealed store and the vault whose keys it seals with.
struct Opened {
    store: Arc<dyn store::Store>,
    vault: Arc<dyn privacy::KeyVault>,
}

fn sealed<S: store::Store>(
    backend: S,
    vault: Arc<dyn privacy::KeyVault>,
    ledger: privacy::ledger::RevocationLedger,
    nuts: &nuts::NutsIndex,
) -> Result<privacy::SealedStore<S>, store::StoreError> {
    let sealed = privacy::SealedStore::new(backend, vault, ledger);
    let in_clear = sealed.seal_households_in_clear()?;
    if in_clear > 0 {
        tracing::warn!(
            households = in_clear,
            "households stored in clear sealed; the database files may keep old versions \
             of them until the database rewrites them (sled segments, PostgreSQL VACUUM)"
        );
    }
    let again = sealed.reapply_revocations(nuts, &mut rand::thread_rng())?;
    if again > 0 {
        tracing::warn!(households = again, "revocations re-applied from the ledger");
    }
    Ok(sealed)
}

/// Opens the store and serves on `listener` until `shutdown` resolves; the database is
/// flushed before returning.
pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    // Opening blocks on files and, for PostgreSQL, the network, whose synchronous client
    // must not run on an async worker.
    let (options, opened) = tokio::task::spawn_blocking(move || {
        let opened = open_store(&options, &options.nuts);
        (options, opened)
    })
    .await
    .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    let Opened { store, vault } = opened?;
    let backend = match &options.postgres {
        Some(_) => "postgres".to_owned(),
        None => options.db_path.display().to_string(),
    };
    let deny_list = options.tls.deny_list.clone();
    let refresher = tokio::spawn(refresh_deny_list(store.clone(), deny_list.clone()));
    let state = AppState {
        store: store.clone(),
        privacy: Arc::new(privacy::Privacy { vault, deny_list }),
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
        db = %backend,
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
    let served = server::serve(listener, options.tls, router(state), stop).await;
    refresher.abort();
    // Its copy of the store must be gone before the last one is dropped, off the async
    // workers: PostgreSQL's synchronous client blocks when its connections close.
    let _ = refresher.await;
    served?;
    let flushed = tokio::task::spawn_blocking(move || store.flush())
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    if let Some(error) = gave_up.into_inner() {
        return Err(ServeError::StoreUnavailable { retry, error });
    }
    flushed?;
    Ok(())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Takes up certificates other replicas revoked.
async fn refresh_deny_list(store: Arc<dyn store::Store>, deny_list: Arc<privacy::DenyList>) {
    let mut interval = tokio::time::interval(privacy::deny_list::REFRESH_INTERVAL);
    loop {
        interval.tick().await;
        let (store, deny_list) = (store.clone(), deny_list.clone());
        match tokio::task::spawn_blocking(move || deny_list.refresh(store.as_ref())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "certificate deny-list not refreshed"),
            Err(e) => tracing::error!(error = %e, "certificate deny-list refresh failed"),
        }
    }
}
