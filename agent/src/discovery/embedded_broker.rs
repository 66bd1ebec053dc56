//! An MQTT broker inside the agent (rumqttd), so that `motey start` works with nothing
//! else installed. It runs on its own threads for the rest of the process's life.
//!
//! It listens on loopback only and lets in only clients that log in: with the configured
//! `[MQTT] username`/`password`, else with an account derived from the cluster key (so
//! agents of the cluster on the same host still just connect). rumqttd 0.20 cannot be offered to a household network
//! safely: its TLS handshake runs inside the accept loop without a timeout (one silent
//! client stops every further connection), it has no per-address connection limit and no
//! topic permissions. A fog of several nodes uses mosquitto (see OPERATIONS.md).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
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
        "embedded MQTT broker: [MQTT] ip = {0} is beyond loopback, where it would serve \
         without TLS or topic permissions; use 127.0.0.1, or run mosquitto for a fog of \
         several nodes (OPERATIONS.md) with [MQTT] embedded = false"
    )]
    BeyondLoopback(IpAddr),
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
}

impl BrokerSettings {
    pub fn new(listen: SocketAddr) -> BrokerSettings {
        BrokerSettings {
            listen,
            credentials: generated_credentials(),
            max_connections: 1024,
        }
    }

    /// From the `[MQTT]` section: listen on `ip:port` (loopback only), require the
    /// configured credentials, else those derived from the cluster key.
    pub fn from_config(
        mqtt: &crate::config::Mqtt,
        key: &crate::peer::ClusterKey,
    ) -> Result<BrokerSettings, BrokerError> {
        let ip: IpAddr = mqtt
            .ip
            .parse()
            .map_err(|_| BrokerError::Address(mqtt.ip.clone()))?;
        if !ip.is_loopback() {
            return Err(BrokerError::BeyondLoopback(ip));
        }
        let mut settings = BrokerSettings::new(SocketAddr::new(ip, mqtt.port));
        settings.credentials = super::broker_credentials(mqtt, key);
        Ok(settings)
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
    addr: SocketAddr,
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
    /// The address it listens on (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The user name and password it requires (the agent's own client logs in with them).
    pub fn credentials(&self) -> &(String, String) {
        &self.credentials
    }

    /// The address clients on this host connect to.
    pub fn client_addr(&self) -> SocketAddr {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.addr.port())
    }
}

/// Starts the broker and returns once it accepts connections.
pub async fn start(settings: BrokerSettings) -> Result<EmbeddedBroker, BrokerError> {
    let listen_error = |addr, reason: String| BrokerError::Listen { addr, reason };
    // rumqttd only logs a failed bind from its own thread; probing first turns an
    // occupied port into a start-up error.
    let probe = TcpListener::bind(settings.listen)
        .map_err(|error| listen_error(settings.listen, error.to_string()))?;
    let addr = probe
        .local_addr()
        .map_err(|error| listen_error(settings.listen, error.to_string()))?;
    drop(probe);

    let config = broker_config(addr, &settings);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(|error| listen_error(addr, error.to_string()))?;

    let broker = EmbeddedBroker {
        addr,
        credentials: settings.credentials.clone(),
    };
    let target = broker.client_addr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(target).await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(listen_error(
                    addr,
                    format!("not accepting connections: {error}"),
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    tracing::info!(%addr, user = %settings.credentials.0, "embedded MQTT broker listening");
    Ok(broker)
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

    #[test]
    fn beyond_loopback_is_refused_and_a_login_is_always_required() {
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
        let error = BrokerSettings::from_config(&config.mqtt, &key()).unwrap_err();
        assert!(matches!(error, BrokerError::BeyondLoopback(_)), "{error}");
    }
}
