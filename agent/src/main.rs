//! The `motey` command: start, stop, restart and inspect the agent of this node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod cluster_cli;
mod rest_client;

use clap::{Parser, Subcommand};
use motey::config::{Config, LogFormat};
use motey::{app, daemon, logging};
use tokio_util::sync::CancellationToken;

/// Exit code of `status` when no agent runs (as LSB init scripts expect).
const NOT_RUNNING: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "motey", version, about = "Fog service orchestration agent", long_about = None)]
struct Cli {
    /// Configuration file (INI); every key can also be set as MOTEY_<SECTION>_<KEY>.
    #[arg(long, short, global = true, env = "MOTEY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format; overrides [LOGGER] format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// SHA-256 fingerprint of the agent's certificate to trust; overrides
    /// [WEBSERVER] tls_fingerprint.
    #[arg(long, global = true)]
    fingerprint: Option<String>,
    /// CA certificate (PEM) to trust for the agent's certificate; overrides
    /// [WEBSERVER] tls_ca_file.
    #[arg(long, global = true)]
    cacert: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the agent (in the foreground unless --daemon).
    Start {
        /// Detach from the terminal and write the pid file.
        #[arg(long)]
        daemon: bool,
    },
    /// Stop the agent started with --daemon (its containers keep running).
    Stop,
    /// Stop, then start again.
    Restart {
        #[arg(long)]
        daemon: bool,
    },
    /// Tell whether the agent runs (exit code 0) or not (3).
    Status,
    /// Take this node out of the fog for good: it refuses deployments, terminates the
    /// services it owns, waits until its peers moved the images it runs for them to other
    /// capable nodes, announces its removal and stops.
    Decommission {
        /// Then delete the node's sensitive data: cluster key, API token and store.
        #[arg(long)]
        wipe: bool,
        /// Seconds to wait for the peers to take their images back before removing them.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Tell the running agent that a capability appeared or vanished (a hardware event,
    /// as a udev rule would send when a probe is plugged in or out).
    Capability {
        #[command(subcommand)]
        action: CapabilityCommand,
    },
    /// The cluster CA: make it, print join tokens, revoke nodes.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Join a cluster: make this node's key pair and receive its node certificate from
    /// the CA node (before the agent's first start).
    Join {
        /// The token `motey cluster token` printed on the CA node.
        #[arg(long)]
        token: String,
        /// The CA node's REST API, HOST:PORT.
        #[arg(long)]
        server: String,
    },
    /// Update a service to a new version of its blueprint (images are replaced one at a
    /// time; a version that does not run is rolled back).
    Update {
        service_id: String,
        /// The new blueprint (YAML).
        file: PathBuf,
        /// Follow the update to its end: exit 0 when updated, 1 when rolled back.
        #[arg(long)]
        wait: bool,
    },
    /// Show the versions of a service: deployed, updates started, updated, rolled back.
    History { service_id: String },
    /// Print the log of an image of a service, wherever it runs (needs the admin token).
    Logs {
        service_id: String,
        image: String,
        /// Keep printing new lines until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Number of lines from the end to start with.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Run a diagnostic command in an image's container (needs the admin token).
    Exec {
        service_id: String,
        image: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Make the cluster CA on this (first) node, and this node's certificate.
    Init,
    /// Print a join token for `motey join` (on the CA node).
    Token {
        /// How long the token may be used: 90s, 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// Revoke a node: every node refuses it within one heartbeat interval, and its
    /// images are placed elsewhere (on the CA node).
    Revoke { node: String },
    /// Renew this node's certificate now (the agent also does it by itself when a third
    /// of its lifetime is left); a running agent takes it within a heartbeat interval.
    Renew,
}

#[derive(Debug, Subcommand)]
enum CapabilityCommand {
    /// This node now offers NAME.
    Add {
        name: String,
        #[arg(long = "type", default_value = "hardware")]
        capability_type: String,
    },
    /// This node no longer offers NAME.
    Remove {
        name: String,
        #[arg(long = "type", default_value = "hardware")]
        capability_type: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("motey: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(format) = cli.log_format {
        config.logger.format = format;
    }
    if let Some(pin) = cli.fingerprint {
        if let Err(error) = motey::api::tls::normalize_fingerprint(&pin) {
            eprintln!("motey: --fingerprint: {error}");
            return ExitCode::from(2);
        }
        config.webserver.tls_fingerprint = Some(pin);
    }
    if let Some(ca_file) = cli.cacert {
        config.webserver.tls_ca_file = Some(ca_file);
    }
    match cli.command {
        Command::Start { daemon } => start(config, daemon),
        Command::Stop => stop(&config),
        Command::Restart { daemon } => match stop(&config) {
            code if code == ExitCode::SUCCESS => start(config, daemon),
            code => code,
        },
        Command::Status => status(&config),
        Command::Capability { action } => capability_event(&config, action),
        Command::Decommission { wipe, timeout } => decommission(&config, wipe, timeout),
        Command::Cluster { action } => match action {
            ClusterCommand::Init => cluster_cli::init(&config),
            ClusterCommand::Token { ttl, uses } => cluster_cli::token(&config, &ttl, uses),
            ClusterCommand::Revoke { node } => cluster_cli::revoke(&config, &node),
            ClusterCommand::Renew => cluster_cli::renew(&config),
        },
        Command::Join { token, server } => cluster_cli::join(&config, &token, &server),
        Command::Update {
            service_id,
            file,
            wait,
        } => rest_client::run(rest_client::update(config, service_id, file, wait)),
        Command::History { service_id } => {
            rest_client::run(rest_client::history(config, service_id))
        }
        Command::Logs {
            service_id,
            image,
            follow,
            tail,
        } => rest_client::run(rest_client::logs(config, service_id, image, follow, tail)),
        Command::Exec {
            service_id,
            image,
            command,
        } => rest_client::run(rest_client::exec(config, service_id, image, command)),
    }
}

/// Asks the running agent to drain and leave, waits until it has stopped, then wipes.
fn decommission(config: &Config, wipe: bool, timeout_secs: u64) -> ExitCode {
    let Some(pid) = daemon::running_pid(&config.general.pid_file) else {
        eprintln!(
            "motey: no agent runs (pid file {}); it must run to hand its images over",
            config.general.pid_file.display()
        );
        return ExitCode::FAILURE;
    };
    let asked = rest_client::run(rest_client::decommission(config, timeout_secs));
    if asked != ExitCode::SUCCESS {
        return asked;
    }
    // The agent stops by itself once drained (or at the timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs + 60);
    while daemon::running_pid(&config.general.pid_file) == Some(pid) {
        if std::time::Instant::now() > deadline {
            eprintln!("motey: the agent (pid {pid}) did not stop; nothing was wiped");
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("motey (pid {pid}) drained and left the fog");
    if wipe {
        let data_dir = &config.general.data_dir;
        let sensitive = [
            config.database.path.clone(),
            data_dir.join(motey::peer::KEY_FILE),
            data_dir.join("cluster"),
            data_dir.join("api-token"),
            data_dir.join("admin-token"),
        ];
        for path in sensitive {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => println!("wiped {}", path.display()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    eprintln!("motey: cannot wipe {}: {error}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn capability_event(config: &Config, action: CapabilityCommand) -> ExitCode {
    use motey::capabilities::events::{publish_capability_event, CapabilityAction};
    let (name, capability_type, action) = match action {
        CapabilityCommand::Add {
            name,
            capability_type,
        } => (name, capability_type, CapabilityAction::Add),
        CapabilityCommand::Remove {
            name,
            capability_type,
        } => (name, capability_type, CapabilityAction::Remove),
    };
    let endpoint = config.zeromq.capability_events.clone();
    let sent = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(publish_capability_event(
                    &endpoint,
                    &name,
                    &capability_type,
                    action,
                ))
                .map_err(|error| error.to_string())
        });
    match sent {
        Ok(()) => {
            println!("capability {name} ({capability_type}): {action:?} sent to {endpoint}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("motey: {error}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: Config, daemonize: bool) -> ExitCode {
    let pid_path = config.general.pid_file.clone();
    if let Some(pid) = daemon::running_pid(&pid_path) {
        eprintln!(
            "motey: already running with pid {pid} (pid file {})",
            pid_path.display()
        );
        return ExitCode::FAILURE;
    }
    if daemonize {
        // Before any thread exists: fork(2) keeps only the calling thread.
        if let Err(error) = nix::unistd::daemon(true, false) {
            eprintln!("motey: cannot daemonize: {error}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(error) = logging::init(&config.logger, &config.general.data_dir, daemonize) {
        eprintln!("motey: cannot open the log: {error}");
        return ExitCode::FAILURE;
    }
    let _pid_file = match daemon::claim(&pid_path) {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("motey: {error}");
            return ExitCode::FAILURE;
        }
    };
    raise_open_file_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("motey: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let agent = app::Agent::bind(config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        agent.run(shutdown).await.map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "agent failed");
            eprintln!("motey: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Lifts the soft limit on open files to the hard one. Service managers often start
/// processes at a soft limit of 1024, which a thousand idle sockets on the broker or
/// peer port would use up, locking out every node that reconnects.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the limit on open files");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the limit on open files"),
    }
}

/// SIGINT (Ctrl-C) and SIGTERM both stop the agent gracefully.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; stop the agent by killing it");
        return;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "stopping");
    shutdown.cancel();
}

fn stop(config: &Config) -> ExitCode {
    match daemon::stop(&config.general.pid_file, Duration::from_secs(30)) {
        Ok(Some(pid)) => {
            println!("motey (pid {pid}) stopped");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            println!("motey is not running");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("motey: {error}");
            ExitCode::FAILURE
        }
    }
}

fn status(config: &Config) -> ExitCode {
    match daemon::running_pid(&config.general.pid_file) {
        Some(pid) => {
            println!(
                "motey is running (pid {pid}); REST API on {}",
                rest_address(config)
            );
            if motey::api::tls::serves_tls(&config.webserver) {
                let path = motey::api::tls::certificate_path(config);
                match motey::api::tls::fingerprint_of_file(&path) {
                    Ok(fingerprint) => println!("certificate SHA-256 {fingerprint}"),
                    Err(error) => println!("certificate: {error}"),
                }
            }
            ExitCode::SUCCESS
        }
        None => {
            println!("motey is not running");
            ExitCode::from(NOT_RUNNING)
        }
    }
}

/// `https://ip:port`, or `http://` when the REST API is plain HTTP.
fn rest_address(config: &Config) -> String {
    let scheme = if motey::api::tls::serves_tls(&config.webserver) {
        "https"
    } else {
        "http"
    };
    let ip = config.webserver.ip;
    let host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("{scheme}://{host}:{}", config.webserver.port)
}
