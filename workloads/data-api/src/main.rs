//! `data-api`: serve the Data API, run the survey's PKI, or import NUTS-3 district data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use data_api::model::{Location, Scope};
use data_api::nuts::NutsIndex;
use data_api::pki::{self, DeviceCertificate, InitOutcome};
use data_api::tls::TlsSetup;
use data_api::ServeOptions;
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
    /// sled database directory.
    #[arg(long, env = "DATA_API_DB", default_value = "/data/db")]
    db: PathBuf,
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
    /// --server-host, random token files) before serving.
    #[arg(long, env = "DATA_API_INIT_MISSING")]
    init_missing: bool,
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
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue the server certificate (server.pem, server-key.pem).
    IssueServer {
        #[arg(long)]
        dir: PathBuf,
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
    if !(args.store_retry.is_finite() && args.store_retry >= 0.0) {
        bail!("--store-retry must be a number of seconds");
    }
    std::fs::create_dir_all(&args.db).with_context(|| format!("creating {}", args.db.display()))?;
    let options = ServeOptions {
        db_path: args.db.clone(),
        cache_capacity: args.cache_mb * 1024 * 1024,
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
    if pki::init(dir, 3650)? == InitOutcome::Created {
        tracing::info!(dir = %dir.display(), "survey CA created");
    }
    if !dir.join(pki::SERVER_CERT).exists() {
        pki::issue_server(dir, &args.server_hosts, 825, false)?;
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

fn pki_command(command: PkiCommand) -> Result<()> {
    match command {
        PkiCommand::Init { dir, days } => match pki::init(&dir, days)? {
            InitOutcome::Created => println!("created CA in {}", dir.display()),
            InitOutcome::Kept => println!("kept the existing CA in {}", dir.display()),
        },
        PkiCommand::IssueServer {
            dir,
            hosts,
            days,
            force,
        } => {
            let (cert, key) = pki::issue_server(&dir, &hosts, days, force)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        PkiCommand::IssueDevice {
            dir,
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
            let (cert, key) = pki::issue_device(&dir, &spec, out.as_deref(), force)?;
            println!("wrote {} and {}", cert.display(), key.display());
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
