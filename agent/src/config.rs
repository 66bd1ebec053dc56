//! The agent's configuration: the defaults compiled in from the repository's `config.ini`,
//! overlaid by a `--config FILE`, overlaid by `MOTEY_<SECTION>_<KEY>` environment
//! variables, then parsed into typed settings. A value that does not parse stops start-up
//! with an error naming section, key and value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The repository's `config.ini`: the defaults, and the list of known keys.
pub const DEFAULT_CONFIG: &str = include_str!("../../config.ini");

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid INI: {message}")]
    Syntax { path: String, message: String },
    #[error("configuration file {path}: unknown key [{section}] {key}")]
    UnknownKey {
        path: String,
        section: String,
        key: String,
    },
    #[error("configuration [{section}] {key} = {value:?}: {expected}")]
    Invalid {
        section: String,
        key: String,
        value: String,
        expected: String,
    },
}

/// Output format of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct General {
    pub app_name: String,
    pub node_id: Option<String>,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub pid_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Logger {
    pub name: String,
    pub level: String,
    pub format: LogFormat,
    /// Directory of the log file; `None` logs to standard error.
    pub log_path: Option<PathBuf>,
    pub file_name: String,
}

#[derive(Debug, Clone)]
pub struct Webserver {
    pub ip: IpAddr,
    pub port: u16,
    /// `None`: a token is generated once and kept in the data directory.
    pub token: Option<String>,
    pub open_reads: bool,
    pub max_body_bytes: usize,
    /// Longest a request may take, from its first byte to its answer.
    pub request_timeout: Duration,
    pub tls: TlsMode,
    /// The admin's certificate chain and key; `None`: generated into the data directory.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// What the `motey` CLI trusts: this fingerprint, else a certificate from this CA,
    /// else the certificate in the agent's files.
    pub tls_fingerprint: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
}

/// Whether the REST server speaks HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS unless the server listens on a loopback address only.
    Auto,
    On,
    Off,
}

impl FromStr for TlsMode {
    type Err = ();

    fn from_str(text: &str) -> Result<TlsMode, ()> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(TlsMode::Auto),
            "on" | "true" => Ok(TlsMode::On),
            "off" | "false" => Ok(TlsMode::Off),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mqtt {
    pub ip: String,
    pub port: u16,
    pub keepalive: u64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Whether the agent runs the broker itself (on `ip:port`).
    pub embedded: bool,
    /// CA certificate of the broker; `None` connects without TLS.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_client_cert_file: Option<PathBuf>,
    pub tls_client_key_file: Option<PathBuf>,
    pub topic_prefix: String,
    pub heartbeat_interval_secs: u64,
    pub peer_suspect_after_secs: u64,
    pub peer_gone_after_secs: u64,
    /// Caps of the embedded broker's connections, in all and from one remote address.
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

/// How the nodes of a cluster trust each other and how long they wait for each other.
#[derive(Clone)]
pub struct Cluster {
    /// The shared secret; `None`: generated once and kept in the data directory.
    pub key: Option<String>,
    pub request_timeout_ms: u64,
    /// Seconds a gone peer keeps the images it runs for this node before they are placed
    /// elsewhere (0: at once).
    pub reschedule_grace_secs: u64,
    pub role: ClusterRole,
    /// Lifetime of the node certificates this node's CA issues.
    pub certificate_lifetime: std::time::Duration,
}

/// Whether a node makes the cluster CA itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// Makes the cluster CA at the first start.
    Init,
    /// Joins with `motey join`.
    Member,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key must never reach a log line.
        f.debug_struct("Cluster")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("reschedule_grace_secs", &self.reschedule_grace_secs)
            .field("role", &self.role)
            .field("certificate_lifetime", &self.certificate_lifetime)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Database {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ZeroMq {
    pub peer_port: u16,
    pub capability_events: String,
    /// Peer connections open at the same time, in all.
    pub max_connections: usize,
    /// Peer connections from one remote address open at the same time.
    pub max_connections_per_address: usize,
    /// Bytes all peer connections together may hold of unfinished messages.
    pub max_buffered_bytes: usize,
    /// Seconds a peer connection may stay idle before it is closed.
    pub idle_timeout_secs: u64,
    /// Requests of one peer connection handled at the same time.
    pub max_requests_per_connection: usize,
}

#[derive(Debug, Clone)]
pub struct Val {
    pub plugin: String,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Orchestrator {
    pub reconcile_interval_secs: u64,
    pub stop_grace_secs: u32,
    /// Seconds the new container of an updated image must keep running before the old
    /// one is stopped (the "check it runs" of a rollout).
    pub update_settle_secs: u64,
    /// Seconds the new container may take to run (pull included) before the update is
    /// rolled back.
    pub update_timeout_secs: u64,
}

/// Device access for administrators (FR-11): logs and diagnostic commands in workload
/// containers, behind a token of their own (`[SECURITY] admin_token`).
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: a token is generated once and kept in `<data_dir>/admin-token`.
    pub admin_token: Option<String>,
    /// Whether diagnostic commands may be run in workload containers at all.
    pub allow_exec: bool,
    /// Seconds a diagnostic command may run before its request ends.
    pub exec_timeout_secs: u64,
    /// Bytes of a diagnostic command's output kept (the rest is cut off).
    pub exec_max_output: usize,
}

/// What a node allows blueprints to ask of its host.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub allow_privileged: bool,
    pub allow_host_network: bool,
    pub allow_host_pid: bool,
    pub allowed_cap_add: Vec<String>,
    pub bind_paths: Vec<PathBuf>,
    /// Host devices containers may be given, each with the permissions allowed.
    pub allowed_devices: Vec<crate::policy::AllowedDevice>,
}

/// The complete, typed configuration of an agent.
#[derive(Debug, Clone)]
pub struct Config {
    pub general: General,
    pub logger: Logger,
    pub webserver: Webserver,
    pub mqtt: Mqtt,
    pub database: Database,
    pub zeromq: ZeroMq,
    pub cluster: Cluster,
    pub val: Val,
    pub orchestrator: Orchestrator,
    pub security: Security,
    pub access: Access,
}

/// Section and key → raw value, after all layers are applied.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    values: BTreeMap<(String, String), String>,
}

impl RawConfig {
    /// The compiled-in defaults.
    pub fn defaults() -> RawConfig {
        let mut raw = RawConfig::default();
        raw.overlay_str("<built-in config.ini>", DEFAULT_CONFIG, false)
            .expect("the built-in config.ini is valid");
        raw
    }

    /// Applies the keys of an INI file. Keys the defaults do not know are refused, so a
    /// typo does not silently leave a default in force.
    pub fn overlay_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.overlay_str(&path.display().to_string(), &text, true)
    }

    fn overlay_str(&mut self, origin: &str, text: &str, strict: bool) -> Result<(), ConfigError> {
        let ini = ini::Ini::load_from_str(text).map_err(|error| ConfigError::Syntax {
            path: origin.to_owned(),
            message: error.to_string(),
        })?;
        for (section, properties) in ini.iter() {
            let Some(section) = section else { continue };
            let section = section.trim().to_uppercase();
            for (key, value) in properties.iter() {
                let key = key.trim().to_lowercase();
                let slot = (section.clone(), key.clone());
                if strict && !self.values.contains_key(&slot) {
                    return Err(ConfigError::UnknownKey {
                        path: origin.to_owned(),
                        section,
                        key,
                    });
                }
                self.values.insert(slot, value.trim().to_owned());
            }
        }
        Ok(())
    }

    /// Applies `MOTEY_<SECTION>_<KEY>` variables for every known key.
    pub fn overlay_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        for ((section, key), value) in self.values.iter_mut() {
            let name = format!("MOTEY_{section}_{}", key.to_uppercase());
            if let Some(overridden) = env(&name) {
                *value = overridden.trim().to_owned();
            }
        }
    }

    /// Sets one value (as a layer above everything else).
    pub fn set(&mut self, section: &str, key: &str, value: impl Into<String>) {
        self.values
            .insert((section.to_uppercase(), key.to_lowercase()), value.into());
    }

    fn raw(&self, section: &str, key: &str) -> &str {
        self.values
            .get(&(section.to_owned(), key.to_owned()))
            .map(String::as_str)
            .unwrap_or("")
    }

    fn invalid(&self, section: &str, key: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            section: section.to_owned(),
            key: key.to_owned(),
            value: self.raw(section, key).to_owned(),
            expected: expected.into(),
        }
    }

    fn string(&self, section: &str, key: &str) -> String {
        self.raw(section, key).to_owned()
    }

    fn optional(&self, section: &str, key: &str) -> Option<String> {
        Some(self.string(section, key)).filter(|value| !value.is_empty())
    }

    fn parse<T: FromStr>(
        &self,
        section: &str,
        key: &str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        self.raw(section, key)
            .parse()
            .map_err(|_| self.invalid(section, key, expected))
    }

    fn port(&self, section: &str, key: &str) -> Result<u16, ConfigError> {
        match self.raw(section, key).parse::<u16>() {
            Ok(port) => Ok(port),
            Err(_) => Err(self.invalid(section, key, "expected a port number (0-65535)")),
        }
    }

    fn flag(&self, section: &str, key: &str) -> Result<bool, ConfigError> {
        match self.raw(section, key).to_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.invalid(section, key, "expected true or false")),
        }
    }

    fn list(&self, section: &str, key: &str) -> Vec<String> {
        self.raw(section, key)
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Parses every section into typed settings.
    pub fn parse_config(&self) -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(self.string("GENERAL", "data_dir"));
        if data_dir.as_os_str().is_empty() {
            return Err(self.invalid("GENERAL", "data_dir", "expected a directory path"));
        }
        let general = General {
            app_name: self.string("GENERAL", "app_name"),
            node_id: self.optional("GENERAL", "node_id"),
            node_name: self
                .optional("GENERAL", "node_name")
                .unwrap_or_else(host_name),
            pid_file: self
                .optional("GENERAL", "pid")
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("motey.pid")),
            data_dir: data_dir.clone(),
        };
        if let Some(node_id) = &general.node_id {
            let valid = node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(self.invalid(
                    "GENERAL",
                    "node_id",
                    "expected letters, digits, '-', '_' or '.'",
                ));
            }
        }
        let level = self.string("LOGGER", "level");
        // A bare word is a level; a tracing filter would read `loud` as a target name.
        let is_level = ["trace", "debug", "info", "warn", "error", "off"]
            .contains(&level.to_ascii_lowercase().as_str());
        let is_filter = level.contains('=') || level.contains(',');
        if !(is_level || is_filter) || tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.invalid(
                "LOGGER",
                "level",
                "expected trace, debug, info, warn, error or a tracing filter",
            ));
        }
        let logger = Logger {
            name: self.string("LOGGER", "name"),
            level,
            format: self.parse("LOGGER", "format", "expected text or json")?,
            log_path: self.optional("LOGGER", "log_path").map(PathBuf::from),
            file_name: self.string("LOGGER", "file_name"),
        };
        let max_body_bytes: usize =
            self.parse("WEBSERVER", "max_body_bytes", "expected a number of bytes")?;
        if max_body_bytes == 0 {
            return Err(self.invalid("WEBSERVER", "max_body_bytes", "expected more than 0"));
        }
        let webserver = Webserver {
            ip: self.parse("WEBSERVER", "ip", "expected an IP address")?,
            port: self.port("WEBSERVER", "port")?,
            token: self.optional("WEBSERVER", "token"),
            open_reads: self.flag("WEBSERVER", "open_reads")?,
            max_body_bytes,
            request_timeout: self.request_timeout()?,
            tls: self.parse("WEBSERVER", "tls", "expected auto, on or off")?,
            tls_cert_file: self
                .optional("WEBSERVER", "tls_cert_file")
                .map(PathBuf::from),
            tls_key_file: self
                .optional("WEBSERVER", "tls_key_file")
                .map(PathBuf::from),
            tls_fingerprint: self.optional("WEBSERVER", "tls_fingerprint"),
            tls_ca_file: self.optional("WEBSERVER", "tls_ca_file").map(PathBuf::from),
        };
        if let Some(pin) = &webserver.tls_fingerprint {
            if crate::api::tls::normalize_fingerprint(pin).is_err() {
                return Err(self.invalid(
                    "WEBSERVER",
                    "tls_fingerprint",
                    "expected a SHA-256 fingerprint (64 hex digits, colons allowed)",
                ));
            }
        }
        if webserver.tls_cert_file.is_some() != webserver.tls_key_file.is_some() {
            let missing = if webserver.tls_cert_file.is_some() {
                "tls_key_file"
            } else {
                "tls_cert_file"
            };
            return Err(self.invalid(
                "WEBSERVER",
                missing,
                "expected a file: tls_cert_file and tls_key_file go together",
            ));
        }
        let mqtt = self.parse_mqtt()?;
        let cluster = self.parse_cluster()?;
        let database = Database {
            path: self
                .optional("DATABASE", "path")
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("db")),
        };
        let zeromq = self.parse_zeromq(&data_dir)?;
        let plugin = self.string("VAL", "plugin");
        if !crate::val::PLUGINS.contains(&plugin.as_str()) {
            return Err(self.invalid(
                "VAL",
                "plugin",
                format!("expected one of: {}", crate::val::PLUGINS.join(", ")),
            ));
        }
        let val = Val {
            plugin,
            endpoint: self.optional("VAL", "endpoint"),
        };
        let reconcile_interval_secs: u64 = self.parse(
            "ORCHESTRATOR",
            "reconcile_interval",
            "expected seconds (1 or more)",
        )?;
        if reconcile_interval_secs == 0 {
            return Err(self.invalid(
                "ORCHESTRATOR",
                "reconcile_interval",
                "expected seconds (1 or more)",
            ));
        }
        let orchestrator = Orchestrator {
            reconcile_interval_secs,
            stop_grace_secs: self.parse("ORCHESTRATOR", "stop_grace", "expected seconds")?,
            update_settle_secs: self.parse("ORCHESTRATOR", "update_settle", "expected seconds")?,
            update_timeout_secs: self.parse(
                "ORCHESTRATOR",
                "update_timeout",
                "expected seconds",
            )?,
        };
        let access = Access {
            admin_token: self.optional("SECURITY", "admin_token"),
            allow_exec: self.flag("SECURITY", "allow_exec")?,
            exec_timeout_secs: self.parse("SECURITY", "exec_timeout", "expected seconds")?,
            exec_max_output: self.parse("SECURITY", "exec_max_output", "expected bytes")?,
        };
        let bind_paths = self.list("SECURITY", "bind_paths");
        if bind_paths.iter().any(|path| !path.starts_with('/')) {
            return Err(self.invalid("SECURITY", "bind_paths", "expected absolute paths"));
        }
        let allowed_devices = self
            .list("SECURITY", "allowed_devices")
            .iter()
            .map(|text| crate::policy::AllowedDevice::parse(text))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                self.invalid(
                    "SECURITY",
                    "allowed_devices",
                    "expected device paths under /dev, each optionally with :r, :rw or :rwm",
                )
            })?;
        let security = Security {
            allow_privileged: self.flag("SECURITY", "allow_privileged")?,
            allow_host_network: self.flag("SECURITY", "allow_host_network")?,
            allow_host_pid: self.flag("SECURITY", "allow_host_pid")?,
            allowed_cap_add: self
                .list("SECURITY", "allowed_cap_add")
                .into_iter()
                .map(|cap| cap.to_uppercase())
                .collect(),
            bind_paths: bind_paths.into_iter().map(PathBuf::from).collect(),
            allowed_devices,
        };
        Ok(Config {
            general,
            logger,
            webserver,
            mqtt,
            database,
            zeromq,
            cluster,
            val,
            orchestrator,
            security,
            access,
        })
    }
}

impl RawConfig {
    fn seconds(&self, section: &str, key: &str) -> Result<u64, ConfigError> {
        match self.raw(section, key).parse::<u64>() {
            Ok(seconds) if seconds > 0 => Ok(seconds),
            _ => Err(self.invalid(section, key, "expected seconds (1 or more)")),
        }
    }

    fn parse_mqtt(&self) -> Result<Mqtt, ConfigError> {
        let topic_prefix = self.string("MQTT", "topic_prefix");
        let prefix_valid = !topic_prefix.is_empty()
            && !topic_prefix.starts_with('/')
            && !topic_prefix.ends_with('/')
            && !topic_prefix.contains(['+', '#', '\0']);
        if !prefix_valid {
            return Err(self.invalid(
                "MQTT",
                "topic_prefix",
                "expected a topic prefix without wildcards (+, #) or leading/trailing '/'",
            ));
        }
        let heartbeat_interval_secs = self.seconds("MQTT", "heartbeat_interval")?;
        let peer_suspect_after_secs = self.seconds("MQTT", "peer_suspect_after")?;
        if peer_suspect_after_secs <= heartbeat_interval_secs {
            return Err(self.invalid(
                "MQTT",
                "peer_suspect_after",
                format!(
                    "expected more seconds than heartbeat_interval ({heartbeat_interval_secs})"
                ),
            ));
        }
        let peer_gone_after_secs = self.seconds("MQTT", "peer_gone_after")?;
        if peer_gone_after_secs <= peer_suspect_after_secs {
            return Err(self.invalid(
                "MQTT",
                "peer_gone_after",
                format!(
                    "expected more seconds than peer_suspect_after ({peer_suspect_after_secs})"
                ),
            ));
        }
        let tls_client_cert_file = self
            .optional("MQTT", "tls_client_cert_file")
            .map(PathBuf::from);
        let tls_client_key_file = self
            .optional("MQTT", "tls_client_key_file")
            .map(PathBuf::from);
        if tls_client_cert_file.is_some() != tls_client_key_file.is_some() {
            let missing = if tls_client_cert_file.is_some() {
                "tls_client_key_file"
            } else {
                "tls_client_cert_file"
            };
            return Err(self.invalid(
                "MQTT",
                missing,
                "expected a client certificate and its key together",
            ));
        }
        Ok(Mqtt {
            ip: self.string("MQTT", "ip"),
            port: self.port("MQTT", "port")?,
            keepalive: self.parse("MQTT", "keepalive", "expected seconds")?,
            username: self.optional("MQTT", "username"),
            password: self.optional("MQTT", "password"),
            embedded: self.flag("MQTT", "embedded")?,
            tls_ca_file: self.optional("MQTT", "tls_ca_file").map(PathBuf::from),
            tls_client_cert_file,
            tls_client_key_file,
            topic_prefix,
            heartbeat_interval_secs,
            peer_suspect_after_secs,
            peer_gone_after_secs,
            max_connections: self.count("MQTT", "max_connections")?,
            max_connections_per_address: self.count("MQTT", "max_connections_per_address")?,
        })
    }

    /// A count of at least 1.
    fn count(&self, section: &str, key: &str) -> Result<usize, ConfigError> {
        match self.raw(section, key).parse::<usize>() {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(self.invalid(section, key, "expected a number (1 or more)")),
        }
    }

    fn parse_zeromq(&self, data_dir: &Path) -> Result<ZeroMq, ConfigError> {
        let max_connections = self.count("ZEROMQ", "max_connections")?;
        let max_connections_per_address = self.count("ZEROMQ", "max_connections_per_address")?;
        if max_connections_per_address > max_connections {
            return Err(self.invalid(
                "ZEROMQ",
                "max_connections_per_address",
                format!("expected at most max_connections ({max_connections})"),
            ));
        }
        Ok(ZeroMq {
            peer_port: self.port("ZEROMQ", "peer_port")?,
            capability_events: self
                .optional("ZEROMQ", "capability_events")
                .unwrap_or_else(|| {
                    format!("ipc://{}", data_dir.join("capabilities.ipc").display())
                }),
            max_connections,
            max_connections_per_address,
            max_buffered_bytes: self.count("ZEROMQ", "max_buffered_bytes")?,
            idle_timeout_secs: self.seconds("ZEROMQ", "idle_timeout")?,
            max_requests_per_connection: self.count("ZEROMQ", "max_requests_per_connection")?,
        })
    }

    /// `[WEBSERVER] request_timeout`: longer than a diagnostic command may run, which is
    /// answered within one request.
    fn request_timeout(&self) -> Result<Duration, ConfigError> {
        let secs: u64 = self.parse("WEBSERVER", "request_timeout", "expected seconds")?;
        let exec_secs: u64 = self.parse("SECURITY", "exec_timeout", "expected seconds")?;
        if secs <= exec_secs {
            return Err(self.invalid(
                "WEBSERVER",
                "request_timeout",
                format!("expected more seconds than [SECURITY] exec_timeout ({exec_secs})"),
            ));
        }
        Ok(Duration::from_secs(secs))
    }

    fn parse_cluster(&self) -> Result<Cluster, ConfigError> {
        let key = self.optional("CLUSTER", "key");
        if key.as_ref().is_some_and(|key| key.chars().count() < 16) {
            // The value itself is a secret: name the problem, not the value.
            return Err(ConfigError::Invalid {
                section: "CLUSTER".into(),
                key: "key".into(),
                value: "<redacted>".into(),
                expected: "expected at least 16 characters".into(),
            });
        }
        let request_timeout_ms: u64 = self.parse(
            "CLUSTER",
            "request_timeout_ms",
            "expected milliseconds (1 or more)",
        )?;
        if request_timeout_ms == 0 {
            return Err(self.invalid(
                "CLUSTER",
                "request_timeout_ms",
                "expected milliseconds (1 or more)",
            ));
        }
        let reschedule_grace_secs = self.parse(
            "CLUSTER",
            "reschedule_grace",
            "expected seconds (0 or more)",
        )?;
        let role = match self.optional("CLUSTER", "role").as_deref() {
            Some("init") => ClusterRole::Init,
            Some("member") | None => ClusterRole::Member,
            Some(_) => return Err(self.invalid("CLUSTER", "role", "expected init or member")),
        };
        let certificate_days: u64 =
            self.parse("CLUSTER", "certificate_days", "expected days (1 to 3650)")?;
        if !(1..=3650).contains(&certificate_days) {
            return Err(self.invalid("CLUSTER", "certificate_days", "expected days (1 to 3650)"));
        }
        Ok(Cluster {
            key,
            request_timeout_ms,
            reschedule_grace_secs,
            role,
            certificate_lifetime: std::time::Duration::from_secs(certificate_days * 86_400),
        })
    }
}

impl Config {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::defaults();
        if let Some(file) = file {
            raw.overlay_file(file)?;
        }
        raw.overlay_env(|name| std::env::var(name).ok());
        raw.parse_config()
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "motey".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_parse() {
        let config = RawConfig::defaults().parse_config().unwrap();
        assert_eq!(config.webserver.port, 5023);
        assert_eq!(config.zeromq.peer_port, 5091);
        assert_eq!(config.mqtt.port, 1883);
        assert_eq!(config.database.path, PathBuf::from(".motey/db"));
        assert_eq!(config.general.pid_file, PathBuf::from(".motey/motey.pid"));
        assert_eq!(
            config.zeromq.capability_events,
            "ipc://.motey/capabilities.ipc"
        );
        assert!(!config.security.allow_privileged);
        assert!(config.webserver.token.is_none());
    }

    #[test]
    fn environment_overrides_any_key() {
        let mut raw = RawConfig::defaults();
        raw.overlay_env(|name| match name {
            "MOTEY_WEBSERVER_PORT" => Some("8080".into()),
            "MOTEY_SECURITY_BIND_PATHS" => Some("/srv/a, /srv/b".into()),
            _ => None,
        });
        let config = raw.parse_config().unwrap();
        assert_eq!(config.webserver.port, 8080);
        assert_eq!(
            config.security.bind_paths,
            vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]
        );
    }

    #[test]
    fn allowed_devices_are_empty_by_default_typed_and_validated() {
        let config = RawConfig::defaults().parse_config().unwrap();
        assert!(config.security.allowed_devices.is_empty());
        let mut raw = RawConfig::defaults();
        raw.overlay_env(|name| {
            (name == "MOTEY_SECURITY_ALLOWED_DEVICES")
                .then(|| "/dev/ttyUSB0, /dev/ttyACM0:r".into())
        });
        let devices = raw.parse_config().unwrap().security.allowed_devices;
        assert_eq!(
            devices
                .iter()
                .map(|d| (d.path.as_str(), d.permissions.as_str()))
                .collect::<Vec<_>>(),
            [("/dev/ttyUSB0", "rwm"), ("/dev/ttyACM0", "r")]
        );
        let mut raw = RawConfig::defaults();
        raw.set("SECURITY", "allowed_devices", "/etc/shadow");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[SECURITY] allowed_devices"), "{error}");
    }

    #[test]
    fn wrong_value_names_section_key_and_value() {
        let mut raw = RawConfig::defaults();
        raw.set("WEBSERVER", "port", "abc");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[WEBSERVER] port = \"abc\""), "{error}");
        assert!(error.contains("port number"), "{error}");

        let mut raw = RawConfig::defaults();
        raw.set("SECURITY", "allow_privileged", "maybe");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(
            error.contains("[SECURITY] allow_privileged = \"maybe\""),
            "{error}"
        );
    }

    #[test]
    fn file_overlays_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("motey.ini");
        std::fs::write(&file, "[webserver]\nport = 6000\n[GENERAL]\nnode_id = n1\n").unwrap();
        let mut raw = RawConfig::defaults();
        raw.overlay_file(&file).unwrap();
        let config = raw.parse_config().unwrap();
        assert_eq!(config.webserver.port, 6000);
        assert_eq!(config.general.node_id.as_deref(), Some("n1"));

        std::fs::write(&file, "[WEBSERVER]\nprot = 6000\n").unwrap();
        let error = RawConfig::defaults().overlay_file(&file).unwrap_err();
        assert!(
            error.to_string().contains("unknown key [WEBSERVER] prot"),
            "{error}"
        );
    }

    #[test]
    fn webserver_is_closed_and_encrypted_by_default() {
        let config = RawConfig::defaults().parse_config().unwrap();
        assert!(!config.webserver.open_reads);
        assert_eq!(config.webserver.tls, TlsMode::Auto);
        assert!(crate::api::tls::serves_tls(&config.webserver), "0.0.0.0");
        assert_eq!(config.webserver.request_timeout, Duration::from_secs(60));
        let mut raw = RawConfig::defaults();
        raw.overlay_env(|name| match name {
            "MOTEY_WEBSERVER_IP" => Some("127.0.0.1".into()),
            _ => None,
        });
        let loopback = raw.parse_config().unwrap();
        assert!(!crate::api::tls::serves_tls(&loopback.webserver));

        for (key, value, expected) in [
            ("tls", "sometimes", "auto, on or off"),
            (
                "request_timeout",
                "30",
                "more seconds than [SECURITY] exec_timeout",
            ),
            ("tls_cert_file", "/etc/motey/cert.pem", "go together"),
            ("tls_fingerprint", "AB:CD", "SHA-256 fingerprint"),
        ] {
            let mut raw = RawConfig::defaults();
            raw.set("WEBSERVER", key, value);
            let error = raw.parse_config().unwrap_err().to_string();
            assert!(error.contains(expected), "{key}: {error}");
        }
    }

    #[test]
    fn cluster_settings_parse_and_validate() {
        let config = RawConfig::defaults().parse_config().unwrap();
        assert!(config.mqtt.embedded);
        assert_eq!(config.mqtt.topic_prefix, "motey");
        assert!(config.mqtt.heartbeat_interval_secs < config.mqtt.peer_suspect_after_secs);
        assert!(config.mqtt.peer_suspect_after_secs < config.mqtt.peer_gone_after_secs);
        assert!(config.cluster.key.is_none());
        assert_eq!(config.cluster.request_timeout_ms, 5000);
        assert_eq!(config.cluster.reschedule_grace_secs, 30);

        let mut raw = RawConfig::defaults();
        raw.set("MQTT", "topic_prefix", "fog/#");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[MQTT] topic_prefix = \"fog/#\""), "{error}");

        let mut raw = RawConfig::defaults();
        raw.set("MQTT", "peer_gone_after", "10");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[MQTT] peer_gone_after = \"10\""), "{error}");

        let mut raw = RawConfig::defaults();
        raw.set("MQTT", "tls_client_cert_file", "/etc/motey/client.pem");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[MQTT] tls_client_key_file"), "{error}");

        let mut raw = RawConfig::defaults();
        raw.set("CLUSTER", "key", "short-secret");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[CLUSTER] key"), "{error}");
        assert!(!error.contains("short-secret"), "{error}");

        let mut raw = RawConfig::defaults();
        raw.set("CLUSTER", "key", "a-long-enough-cluster-secret");
        let config = raw.parse_config().unwrap();
        assert!(!format!("{:?}", config.cluster).contains("a-long-enough"));
    }

    #[test]
    fn peer_limits_parse_and_validate() {
        let config = RawConfig::defaults().parse_config().unwrap();
        assert_eq!(config.zeromq.max_connections, 256);
        assert_eq!(config.zeromq.max_connections_per_address, 16);
        assert_eq!(config.zeromq.idle_timeout_secs, 60);
        assert_eq!(config.zeromq.max_buffered_bytes, 8 << 20);
        assert_eq!(config.zeromq.max_requests_per_connection, 8);

        let mut raw = RawConfig::defaults();
        raw.overlay_env(|name| (name == "MOTEY_ZEROMQ_IDLE_TIMEOUT").then(|| "5".to_owned()));
        assert_eq!(raw.parse_config().unwrap().zeromq.idle_timeout_secs, 5);

        for (key, value) in [
            ("max_connections", "0"),
            ("max_connections_per_address", "300"),
            ("idle_timeout", "0"),
            ("max_requests_per_connection", "many"),
        ] {
            let mut raw = RawConfig::defaults();
            raw.set("ZEROMQ", key, value);
            let error = raw.parse_config().unwrap_err().to_string();
            assert!(
                error.contains(&format!("[ZEROMQ] {key} = \"{value}\"")),
                "{error}"
            );
        }
    }

    #[test]
    fn unknown_plugin_is_refused() {
        let mut raw = RawConfig::defaults();
        raw.set("VAL", "plugin", "xen");
        let error = raw.parse_config().unwrap_err().to_string();
        assert!(error.contains("[VAL] plugin = \"xen\""), "{error}");
    }
}
