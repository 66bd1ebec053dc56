//! `data-api`: serve the Data API, migrate its database, run the survey's PKI, or import
//! NUTS-3 district data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use data_api::model::{Location, Scope};
use data_api::nuts::NutsIndex;
use data_api::pki::{self, DeviceCertificate, InitOutcome};
use data_api::store::postgres::{is_postgres_url, PgStore, Transport};
use data_api::store::SledStore;
use data_api::tls::TlsSetup;
use data_api::{survey_copy, PostgresOptions, ServeOptions};
use rand::RngCore;
use tracing_subscriber::EnvFilter;

// sled allocates and frees a node copy on every write; glibc's allocator makes that a
// fifth of the server's CPU time under ingest load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "data-api", version, about = "EnergieBroker Data API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API over HTTPS with mutual TLS for devices.
    Serve(Box<ServeArgs>),
    /// Manage the survey's certificate authority and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// NUTS-3 district data for anonymization.
    #[command(subcommand)]
    Nuts(NutsCommand),
    /// Apply the PostgreSQL schema migrations (serve applies them at start too).
    Migrate {
        /// PostgreSQL connection string.
        #[arg(long, env = "DATA_API_DB")]
        db: String,
        /// CA bundle (PEM) to verify the database server by: connect with TLS.
        #[arg(long, env = "DATA_API_DB_CA")]
        db_ca: Option<PathBuf>,
    },
    /// Copy a survey from a sled directory into an empty PostgreSQL database, printing
    /// counts and a checksum of both sides.
    MigrateStore {
        /// sled database directory (the server using it must be stopped).
        #[arg(long)]
        from: PathBuf,
        /// PostgreSQL connection string.
        #[arg(long)]
        to: String,
        /// CA bundle (PEM) to verify the database server by: connect with TLS.
        #[arg(long, env = "DATA_API_DB_CA")]
        db_ca: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DATA_API_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// sled database directory, or a `postgres://` connection string.
    #[arg(long, env = "DATA_API_DB", default_value = "/data/db")]
    db: String,
    /// PostgreSQL connections per process.
    #[arg(long, env = "DATA_API_DB_POOL", default_value_t = 16)]
    db_pool: u32,
    /// CA bundle (PEM) to verify the PostgreSQL server by: connect with TLS.
    #[arg(long, env = "DATA_API_DB_CA")]
    db_ca: Option<PathBuf>,
    /// Key vault directory: the households' keys and the server secret; never inside
    /// the database, never in its backups [default for sled: <db>.keys beside the
    /// database; required for PostgreSQL, the same for every replica].
    #[arg(long, env = "DATA_API_KEY_VAULT")]
    key_vault: Option<PathBuf>,
    /// Revocation ledger file, kept apart from the database and the key vault and
    /// re-applied at start [default for sled: <db>.revocations beside the database;
    /// required for PostgreSQL, the same for every replica].
    #[arg(long, env = "DATA_API_REVOCATION_LEDGER")]
    revocation_ledger: Option<PathBuf>,
    /// Directory with ca.pem, server.pem, server-key.pem and the token files.
    #[arg(long, env = "DATA_API_PKI_DIR", default_value = "/data/pki")]
    pki_dir: PathBuf,
    /// CA certificate that device certificates must chain to [default: <pki-dir>/ca.pem].
    #[arg(long, env = "DATA_API_CA")]
    ca: Option<PathBuf>,
    /// Server certificate chain [default: <pki-dir>/server.pem].
    #[arg(long, env = "DATA_API_CERT")]
    cert: Option<PathBuf>,
    /// Server private key [default: <pki-dir>/server-key.pem].
    #[arg(long, env = "DATA_API_KEY")]
    key: Option<PathBuf>,
    /// Researcher bearer token.
    #[arg(long, env = "DATA_API_RESEARCHER_TOKEN", hide_env_values = true)]
    researcher_token: Option<String>,
    /// File holding the researcher token [default: <pki-dir>/researcher.token if present].
    #[arg(long, env = "DATA_API_RESEARCHER_TOKEN_FILE")]
    researcher_token_file: Option<PathBuf>,
    /// Admin bearer token.
    #[arg(long, env = "DATA_API_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token [default: <pki-dir>/admin.token if present].
    #[arg(long, env = "DATA_API_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// NUTS-3 GeoJSON (from `data-api nuts import`) [default: the embedded German districts].
    #[arg(long, env = "DATA_API_NUTS")]
    nuts: Option<PathBuf>,
    /// The devices' report cycle in seconds (hourly in the survey); the device health
    /// flags devices silent for longer than two cycles.
    #[arg(long, env = "DATA_API_REPORT_INTERVAL", default_value_t = 3600.0)]
    report_interval: f64,
    /// Seconds the store may fail (a full disk, an I/O error) before the process stops
    /// with an error for its supervisor to restart it; `/health` answers 503 meanwhile.
    #[arg(long, env = "DATA_API_STORE_RETRY", default_value_t = 30.0)]
    store_retry: f64,
    /// sled page cache in MiB.
    #[arg(long, env = "DATA_API_CACHE_MB", default_value_t = 256)]
    cache_mb: u64,
    /// Create what is missing in the PKI directory (CA, server certificate for
    /// --server-host, random token files) before serving. The CA key goes to --ca-key,
    /// else to <pki-dir>/ca-key.pem; serving itself never needs it.
    #[arg(long, env = "DATA_API_INIT_MISSING")]
    init_missing: bool,
    /// Where --init-missing keeps (or finds) the CA private key, e.g. outside the
    /// server's volume [default: <pki-dir>/ca-key.pem].
    #[arg(long, env = "DATA_API_CA_KEY")]
    ca_key: Option<PathBuf>,
    /// Host names / IPs for a server certificate created by --init-missing.
    #[arg(
        long = "server-host",
        env = "DATA_API_SERVER_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    server_hosts: Vec<String>,
    #[arg(long, env = "DATA_API_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA (ca.pem, ca-key.pem); an existing CA is kept.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Where the CA private key goes, e.g. a removable medium outside the server's
        /// volume [default: <dir>/ca-key.pem].
        #[arg(long)]
        ca_key: Option<PathBuf>,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue the server certificate (server.pem, server-key.pem).
    IssueServer {
        #[arg(long)]
        dir: PathBuf,
        /// The CA private key [default: <dir>/ca-key.pem].
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// DNS name or IP address; repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 825)]
        days: i64,
        #[arg(long)]
        force: bool,
    },
    /// Issue a measurement device's client certificate (<out>.pem, <out>-key.pem).
    IssueDevice {
        #[arg(long)]
        dir: PathBuf,
        /// The CA private key [default: <dir>/ca-key.pem].
        #[arg(long)]
        ca_key: Option<PathBuf>,
        /// The participant's email; it selects the household.
        #[arg(long)]
        email: String,
        /// Comma-separated scopes [default: all five].
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// File name stem [default: device].
        #[arg(long)]
        out: Option<String>,
        /// Measurement device uuid to name in the certificate (households with several devices).
        #[arg(long)]
        device: Option<uuid::Uuid>,
        #[arg(long)]
        force: bool,
    },
    /// Print a certificate's SHA-256 fingerprint, as the deny-list of revoked device
    /// certificates takes it.
    Fingerprint {
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
enum NutsCommand {
    /// Convert official boundary and density files into the GeoJSON `serve --nuts` loads.
    Import {
        /// BKG VG250/NUTS250 shapefile (.shp, geographic coordinates) or GeoJSON.
        #[arg(long)]
        boundaries: PathBuf,
        /// Destatis 04-kreise.xlsx or a CSV with nuts3,density columns.
        #[arg(long)]
        densities: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Provenance note stored in the file.
        #[arg(long, default_value = "")]
        source: String,
    },
    /// Show the district and anonymization bounds for a coordinate.
    Lookup {
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
        #[arg(long)]
        nuts: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Pki(command) => pki_command(command),
        Command::Nuts(command) => nuts_command(command),
        Command::Migrate { db, db_ca } => migrate(&db, db_ca.as_deref()),
        Command::MigrateStore { from, to, db_ca } => migrate_store(&from, &to, db_ca.as_deref()),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    if args.init_missing {
        init_missing(&args)?;
    }
    let ca = args
        .ca
        .clone()
        .unwrap_or_else(|| args.pki_dir.join(pki::CA_CERT));
    let cert = args
        .cert
        .clone()
        .unwrap_or_else(|| args.pki_dir.join(pki::SERVER_CERT));
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| args.pki_dir.join(pki::SERVER_KEY));
    let tls = TlsSetup::from_files(&ca, &cert, &key).context("loading TLS material")?;
    let researcher_token = token(
        args.researcher_token.as_deref(),
        args.researcher_token_file.as_deref(),
        &args.pki_dir.join("researcher.token"),
        "researcher",
    )?;
    let admin_token = token(
        args.admin_token.as_deref(),
        args.admin_token_file.as_deref(),
        &args.pki_dir.join("admin.token"),
        "admin",
    )?;
    if researcher_token.is_some() && researcher_token == admin_token {
        bail!("the researcher and admin tokens must differ: they are separate roles");
    }
    let nuts = match &args.nuts {
        Some(path) => {
            NutsIndex::load(path).with_context(|| format!("loading {}", path.display()))?
        }
        None => NutsIndex::embedded().context("loading the embedded NUTS-3 districts")?,
    };
    tracing::info!(
        districts = nuts.len(),
        source = nuts.source.as_deref().unwrap_or(""),
        "NUTS-3 districts loaded"
    );
    if !(args.report_interval.is_finite() && args.report_interval >= 1.0) {
        bail!("--report-interval must be at least 1 second");
    }
    let postgres = if is_postgres_url(&args.db) {
        Some(PostgresOptions {
            url: args.db.clone(),
            pool_size: args.db_pool,
            ca: args.db_ca.clone(),
        })
    } else {
        std::fs::create_dir_all(&args.db).with_context(|| format!("creating {}", args.db))?;
        None
    };
    if !(args.store_retry.is_finite() && args.store_retry >= 0.0) {
        bail!("--store-retry must be a number of seconds");
    }
    let options = ServeOptions {
        db_path: PathBuf::from(&args.db),
        key_vault: args.key_vault.clone(),
        revocation_ledger: args.revocation_ledger.clone(),
        cache_capacity: args.cache_mb * 1024 * 1024,
        postgres,
        tls,
        researcher_token,
        admin_token,
        nuts,
        report_interval: std::time::Duration::from_secs_f64(args.report_interval),
        store_retry: std::time::Duration::from_secs_f64(args.store_retry),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        data_api::run(listener, options, shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Token from flag/env, else from a file (explicit, or the default one if present).
fn token(
    value: Option<&str>,
    file: Option<&Path>,
    default_file: &Path,
    role: &str,
) -> Result<Option<String>> {
    if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
        return checked_token(v.to_owned(), role).map(Some);
    }
    let path = match file {
        Some(p) => p,
        None if default_file.exists() => default_file,
        None => {
            tracing::warn!(
                role,
                "no token configured: the role's endpoints refuse every request"
            );
            return Ok(None);
        }
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    checked_token(text.trim().to_owned(), role).map(Some)
}

fn checked_token(token: String, role: &str) -> Result<String> {
    if token.len() < 16 {
        bail!("the {role} token must have at least 16 characters");
    }
    Ok(token)
}

fn init_missing(args: &ServeArgs) -> Result<()> {
    let dir = &args.pki_dir;
    let ca_key = ca_key_path(dir, args.ca_key.as_deref());
    if dir.join(pki::CA_CERT).exists() && dir.join(pki::SERVER_CERT).exists() {
        // Nothing to issue: the CA key (perhaps kept offline) is not needed.
    } else if pki::init_with_key(dir, &ca_key, 3650)? == InitOutcome::Created {
        tracing::info!(dir = %dir.display(), ca_key = %ca_key.display(), "survey CA created");
    }
    if !dir.join(pki::SERVER_CERT).exists() {
        pki::issue_server_with_key(dir, &ca_key, &args.server_hosts, 825, false)?;
        tracing::info!(hosts = ?args.server_hosts, "server certificate issued");
    }
    for role in ["researcher", "admin"] {
        let path = dir.join(format!("{role}.token"));
        if !path.exists() {
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            pki::write_file(&path, &format!("{}\n", hex::encode(secret)), true, false)?;
            tracing::info!(path = %path.display(), role, "token file created");
        }
    }
    Ok(())
}

fn postgres_url(db: &str) -> Result<&str> {
    if !is_postgres_url(db) {
        bail!("expected a postgres:// or postgresql:// connection string");
    }
    Ok(db)
}

fn transport(ca: Option<&Path>) -> Result<Transport> {
    Ok(match ca {
        Some(ca) => Transport::tls_with_ca(ca)?,
        None => Transport::Plain,
    })
}

fn migrate(db: &str, ca: Option<&Path>) -> Result<()> {
    let transport = transport(ca)?;
    let config: postgres::Config = postgres_url(db)?.parse()?;
    let mut client = transport.connect(&config).context("connecting")?;
    let report = data_api::store::postgres::migrate(&mut client)?;
    if report.applied.is_empty() {
        println!("schema is up to date at version {}", report.version);
    } else {
        let applied: Vec<String> = report.applied.iter().map(i32::to_string).collect();
        println!(
            "applied migrations {}; schema is at version {}",
            applied.join(", "),
            report.version
        );
    }
    // Opening creates the measurement partitions ahead.
    PgStore::open_with(db, 1, &transport)?;
    Ok(())
}

fn migrate_store(from: &Path, to: &str, ca: Option<&Path>) -> Result<()> {
    if !from.join("conf").exists() {
        bail!("{} is not a sled database directory", from.display());
    }
    let source =
        SledStore::open(from, 64 << 20).with_context(|| format!("opening {}", from.display()))?;
    let target = PgStore::open_with(postgres_url(to)?, 4, &transport(ca)?)
        .context("opening the PostgreSQL database")?;
    let copied = survey_copy::copy_survey(&source, &target)?;
    println!(
        "copied {} households, {} certificate bindings, {} revoked certificates, \
         {} device states, {} measurements",
        copied.households,
        copied.certificate_bindings,
        copied.revoked_certificates,
        copied.device_statuses,
        copied.measurements
    );
    let before = survey_copy::digest(&source)?;
    let after = survey_copy::digest(&target)?;
    println!("sled:       {before}");
    println!("postgresql: {after}");
    if before != after {
        bail!("the copy differs from the source");
    }
    println!("the copy matches the source");
    // The households are copied sealed: only the source's key vault opens them.
    println!(
        "serve it with --key-vault {} --revocation-ledger {} (or copies of them)",
        data_api::default_key_vault(from).display(),
        data_api::default_revocation_ledger(from).display()
    );
    Ok(())
}

fn ca_key_path(dir: &Path, ca_key: Option<&Path>) -> PathBuf {
    ca_key.map_or_else(|| dir.join(pki::CA_KEY), Path::to_owned)
}

fn pki_command(command: PkiCommand) -> Result<()> {
    match command {
        PkiCommand::Fingerprint { cert } => println!("{}", pki::fingerprint(&cert)?),
        PkiCommand::Init { dir, ca_key, days } => {
            match pki::init_with_key(&dir, &ca_key_path(&dir, ca_key.as_deref()), days)? {
                InitOutcome::Created => println!("created CA in {}", dir.display()),
                InitOutcome::Kept => println!("kept the existing CA in {}", dir.display()),
            }
        }
        PkiCommand::IssueServer {
            dir,
            ca_key,
            hosts,
            days,
            force,
        } => {
            let ca_key = ca_key_path(&dir, ca_key.as_deref());
            let (cert, key) = pki::issue_server_with_key(&dir, &ca_key, &hosts, days, force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        PkiCommand::IssueDevice {
            dir,
            ca_key,
            email,
            scopes,
            days,
            out,
            device,
            force,
        } => {
            let scopes = match scopes {
                Some(list) => list
                    .iter()
                    .map(|s| s.trim().parse::<Scope>())
                    .collect::<Result<Vec<_>, _>>()?,
                None => Scope::ALL.to_vec(),
            };
            if scopes.is_empty() {
                bail!("--scopes needs at least one scope");
            }
            if days <= 0 {
                bail!("--days must be positive");
            }
            let mut spec = DeviceCertificate::new(&email, scopes, days);
            spec.device = device;
            let old_cert = dir.join(format!("{}.pem", out.as_deref().unwrap_or("device")));
            let replaced = match force && old_cert.exists() {
                true => pki::fingerprint(&old_cert).ok(),
                false => None,
            };
            let ca_key = ca_key_path(&dir, ca_key.as_deref());
            let (cert, key) =
                pki::issue_device_with_key(&dir, &ca_key, &spec, out.as_deref(), force)?;
            println!("wrote {} and {}", cert.display(), key.display());
            println!("fingerprint {}", pki::fingerprint(&cert)?);
            if let Some(old) = replaced {
                println!(
                    "replaced certificate {old}: revoke it with \
                     POST /management/certificate/revoked {{\"fingerprint\": \"{old}\"}}"
                );
            }
        }
    }
    Ok(())
}

fn nuts_command(command: NutsCommand) -> Result<()> {
    match command {
        NutsCommand::Import {
            boundaries,
            densities,
            out,
            source,
        } => {
            let report = data_api::nuts::import(&boundaries, &densities, &source, &out)?;
            println!("wrote {} districts to {}", report.districts, out.display());
            if !report.without_density.is_empty() {
                println!(
                    "left out (no density): {}",
                    report.without_density.join(" ")
                );
            }
            if !report.without_boundary.is_empty() {
                println!(
                    "left out (no boundary): {}",
                    report.without_boundary.join(" ")
                );
            }
        }
        NutsCommand::Lookup { lat, lon, nuts } => {
            let index = match nuts {
                Some(path) => NutsIndex::load(&path)?,
                None => NutsIndex::embedded()?,
            };
            let found = index.bounds_for(Some(Location {
                latitude: lat,
                longitude: lon,
            }));
            match found.district {
                Some(d) => println!("{} {} density {}/km²", d.code, d.name, d.density),
                None => println!("outside every district: most conservative bounds"),
            }
            println!(
                "d_min {} m, d_max {} m",
                found.bounds.d_min, found.bounds.d_max
            );
        }
    }
    Ok(())
}
