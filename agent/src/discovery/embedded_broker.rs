//! An MQTT broker inside the agent (rumqttd), so that `motey start` works with nothing
//! else installed. It runs on its own threads for the rest of the process's life.
//!
//! It lets in only clients that log in: with the configured `[MQTT] username`/`password`,
//! else with an account derived from the cluster key (so agents of the cluster just
//! connect). rumqttd itself listens on loopback only; an address beyond loopback is
//! served by a TLS front ([`Front`](crate::front::Front)) with handshake deadlines and
//! per-address caps, which rumqttd 0.20 lacks. rumqttd has no topic permissions: a fog
//! whose nodes must not impersonate each other on the broker uses mosquitto with an ACL
//! (OPERATIONS.md).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Why the embedded broker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded MQTT broker: [MQTT] ip = {0:?} is not an IP address to listen on")]
    Address(String),
    #[error("embedded MQTT broker cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error(
        "embedded MQTT broker: [MQTT] ip = {0} is beyond loopback, where it serves only \
         TLS, and no certificate was given to it"
    )]
    NoCertificate(IpAddr),
}

/// How long a connection may take to send its MQTT CONNECT: clients that open a socket
/// and say nothing are dropped this soon instead of holding a slot.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the broker listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Port 0 picks a free port (see [`EmbeddedBroker::local_addr`]).
    pub listen: SocketAddr,
    /// The user name and password every client must log in with.
    pub credentials: (String, String),
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Beyond loopback: the certificate the TLS front presents (see [`from_config`]).
    ///
    /// [`from_config`]: BrokerSettings::from_config
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl BrokerSettings {
    pub fn new(listen: SocketAddr) -> BrokerSettings {
        BrokerSettings {
            listen,
            credentials: generated_credentials(),
            max_connections: 1024,
            max_connections_per_address: 16,
            tls: None,
        }
    }

    /// From the `[MQTT]` section: listen on `ip:port`, require the configured
    /// credentials, else those derived from the cluster key. Beyond loopback the caller
    /// must set [`tls`](BrokerSettings::tls) (the agent gives its REST certificate).
    pub fn from_config(
        mqtt: &crate::config::Mqtt,
        key: &crate::peer::ClusterKey,
    ) -> Result<BrokerSettings, BrokerError> {
        let ip: IpAddr = mqtt
            .ip
            .parse()
            .map_err(|_| BrokerError::Address(mqtt.ip.clone()))?;
        let mut settings = BrokerSettings::new(SocketAddr::new(ip, mqtt.port));
        settings.credentials = super::broker_credentials(mqtt, key);
        settings.max_connections = mqtt.max_connections;
        settings.max_connections_per_address = mqtt.max_connections_per_address;
        Ok(settings)
    }

    /// Whether clients reach the broker only through the TLS front.
    pub fn needs_tls(&self) -> bool {
        !self.listen.ip().is_loopback()
    }
}

/// A user name and a random password for this process's life (a broker started without
/// a configuration).
fn generated_credentials() -> (String, String) {
    let password = crate::peer::ClusterKey::generate_secret();
    ("motey-agent".into(), password)
}

/// A running embedded broker.
#[derive(Clone)]
pub struct EmbeddedBroker {
    /// Where other nodes connect (the TLS front's address beyond loopback).
    addr: SocketAddr,
    /// Where this host's clients connect: rumqttd itself, on loopback.
    loopback: SocketAddr,
    credentials: (String, String),
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// The address it listens on for other nodes (with the port chosen when 0 was
    /// asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether other nodes must speak TLS to it.
    pub fn serves_tls(&self) -> bool {
        self.addr != self.loopback
    }

    /// The user name and password it requires (the agent's own client logs in with them).
    pub fn credentials(&self) -> &(String, String) {
        &self.credentials
    }

    /// The address clients on this host connect to, without TLS.
    pub fn client_addr(&self) -> SocketAddr {
        self.loopback
    }
}

/// Where rumqttd itself listens: the configured address on loopback, else a free port on
/// loopback behind the TLS front.
fn loopback_listen(settings: &BrokerSettings) -> SocketAddr {
    if !settings.needs_tls() {
        return settings.listen;
    }
    let ip = match settings.listen.ip() {
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    SocketAddr::new(ip, 0)
}

/// Starts the broker (and its TLS front beyond loopback) and returns once it accepts
/// connections.
pub async fn start(settings: BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
    let front = if settings.needs_tls() {
        let tls = settings
            .tls
            .clone()
            .ok_or(BrokerError::NoCertificate(settings.listen.ip()))?;
        Some(crate::front::Front {
            name: "embedded MQTT broker",
            settings: "[MQTT] max_connections, max_connections_per_address",
            listen: settings.listen,
            tls: Some(tls),
            handshake_timeout: CONNECT_TIMEOUT,
            max_connections: settings.max_connections,
            max_connections_per_address: settings.max_connections_per_address,
            zmtp_max_frame: None,
        })
    } else {
        None
    };
    let loopback = start_rumqttd(loopback_listen(&settings), &settings).await?;
    let addr = match front {
        Some(front) => {
            let listen = front.listen;
            front
                .start(loopback)
                .await
                .map_err(|error| BrokerError::Listen {
                    addr: listen,
                    reason: error.to_string(),
                })?
        }
        None => loopback,
    };
    tracing::info!(%addr, tls = addr != loopback, user = %settings.credentials.0, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        addr,
        loopback,
        credentials: settings.credentials.clone(),
    })
}

/// Starts rumqttd on `listen` (loopback) and returns its address once it accepts.
async fn start_rumqttd(
    listen: SocketAddr,
    settings: &BrokerSettings,
) -> Result<SocketAddr, BrokerError> {
    let listen_error = |addr, reason: String| BrokerError::Listen { addr, reason };
    // rumqttd only logs a failed bind from its own thread; probing first turns an
    // occupied port into a start-up error.
    let probe =
        TcpListener::bind(listen).map_err(|error| listen_error(listen, error.to_string()))?;
    let addr = probe
        .local_addr()
        .map_err(|error| listen_error(listen, error.to_string()))?;
    drop(probe);

    let config = broker_config(addr, settings);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(|error| listen_error(addr, error.to_string()))?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => return Ok(addr),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(listen_error(
                    addr,
                    format!("not accepting connections: {error}"),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn broker_config(addr: SocketAddr, settings: &BrokerSettings) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT.as_millis() as u16,
        max_payload_size: 256 * 1024,
        max_inflight_count: 256,
        auth: Some(HashMap::from([settings.credentials.clone()])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "motey".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: settings.max_connections,
            max_outgoing_packet_count: 200,
            // Discovery messages are small; modest segments keep the agent's memory low.
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("motey".to_owned(), server)])),
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> crate::peer::ClusterKey {
        crate::peer::ClusterKey::from_secret("the cluster secret of the tests")
    }

    #[tokio::test]
    async fn occupied_port_is_a_start_up_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = start(BrokerSettings::new(taken.local_addr().unwrap()))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("cannot listen"), "{error}");
    }

    #[test]
    fn configured_address_must_be_an_ip() {
        let mut config = crate::config::RawConfig::defaults().parse_config().unwrap();
        config.mqtt.ip = "broker.local".into();
        let error = BrokerSettings::from_config(&config.mqtt, &key()).unwrap_err();
        assert!(error.to_string().contains("broker.local"), "{error}");
    }

    #[tokio::test]
    async fn beyond_loopback_needs_a_certificate_and_a_login_is_always_required() {
        let mut config = crate::config::RawConfig::defaults().parse_config().unwrap();
        let derived = BrokerSettings::from_config(&config.mqtt, &key())
            .unwrap()
            .credentials;
        assert_eq!(derived.0, crate::discovery::DERIVED_BROKER_USER);
        assert_eq!(derived.1.len(), 64);
        assert_eq!(
            derived,
            crate::discovery::broker_credentials(&config.mqtt, &key())
        );
        let other = crate::peer::ClusterKey::from_secret("another cluster");
        assert_ne!(
            derived,
            crate::discovery::broker_credentials(&config.mqtt, &other)
        );
        config.mqtt.ip = "0.0.0.0".into();
        config.mqtt.port = 0;
        let settings = BrokerSettings::from_config(&config.mqtt, &key()).unwrap();
        assert!(settings.needs_tls());
        let error = start(settings).await.unwrap_err();
        assert!(matches!(error, BrokerError::NoCertificate(_)), "{error}");
    }
}
