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
pub mod model;
pub mod nuts;
pub mod pki;
pub mod privacy;
pub mod server;
pub mod store;
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
    pub db_path: PathBuf,
    /// The key vault directory [default: beside the database, see [`default_key_vault`]].
    pub key_vault: Option<PathBuf>,
    /// The revocation ledger [default: beside the database, see [`default_revocation_ledger`]].
    pub revocation_ledger: Option<PathBuf>,
    /// sled page cache size in bytes.
    pub cache_capacity: u64,
    pub tls: tls::TlsSetup,
    pub researcher_token: Option<String>,
    pub admin_token: Option<String>,
    pub nuts: nuts::NutsIndex,
    /// How often devices are expected to report (section 3.1.1: hourly at minimum); a
    /// device silent for longer than two of these is flagged in the device health.
    pub report_interval: Duration,
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
    let key_vault = options
        .key_vault
        .clone()
        .unwrap_or_else(|| default_key_vault(&options.db_path));
    let ledger = options
        .revocation_ledger
        .clone()
        .unwrap_or_else(|| default_revocation_ledger(&options.db_path));
    for apart in [&key_vault, &ledger] {
        if absolute(apart).starts_with(absolute(&options.db_path)) {
            return Err(ServeError::InsideDatabase(
                apart.clone(),
                options.db_path.clone(),
            ));
        }
    }
    let vault: Arc<dyn privacy::KeyVault> = Arc::new(privacy::FileKeyVault::open(&key_vault)?);
    let sealed = privacy::SealedStore::new(
        store::SledStore::open(&options.db_path, options.cache_capacity)?,
        vault.clone(),
        privacy::ledger::RevocationLedger::open(&ledger)?,
    );
    let in_clear = sealed.seal_households_in_clear()?;
    if in_clear > 0 {
        tracing::warn!(
            households = in_clear,
            "households stored in clear sealed; the database files may keep old versions \
             of them until sled rewrites its segments"
        );
    }
    let again = sealed.reapply_revocations(&options.nuts, &mut rand::thread_rng())?;
    if again > 0 {
        tracing::warn!(households = again, "revocations re-applied from the ledger");
    }
    let store: Arc<dyn store::Store> = Arc::new(sealed);
    let deny_list = options.tls.deny_list.clone();
    deny_list.refresh(store.as_ref())?;
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
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        db = %options.db_path.display(),
        districts = state.nuts.len(),
        report_interval_s = options.report_interval.as_secs_f64(),
        "listening"
    );
    let served = server::serve(listener, options.tls, router(state), shutdown).await;
    refresher.abort();
    served?;
    store.flush()?;
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
