//! The embedded broker beyond loopback. rumqttd runs its TLS handshake inside its accept
//! loop without a deadline (one silent client would stop every further connection) and
//! counts connections only in all, so it keeps listening on loopback and this front
//! faces the network: it admits a connection under the caps (in all and per remote
//! address), completes the TLS handshake within [`CONNECT_TIMEOUT`] in the connection's
//! own task, and then relays bytes to the broker, which still requires the login.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::embedded_broker::{BrokerError, CONNECT_TIMEOUT};
use crate::logging::RateLimit;

/// What the front listens on and how much it admits.
#[derive(Clone)]
pub struct TlsFront {
    pub listen: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("listen", &self.listen)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .finish_non_exhaustive()
    }
}

impl TlsFront {
    /// Binds the front and relays what it admits to `broker` (on loopback); returns the
    /// bound address.
    pub(super) async fn start(self, broker: SocketAddr) -> Result<SocketAddr, BrokerError> {
        let listen_error = |reason: String| BrokerError::Listen {
            addr: self.listen,
            reason,
        };
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|error| listen_error(error.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(|error| listen_error(error.to_string()))?;
        let caps = Arc::new(Caps::new(
            self.max_connections,
            self.max_connections_per_address,
        ));
        let acceptor = TlsAcceptor::from(self.tls);
        tokio::spawn(accept_loop(listener, acceptor, caps, broker));
        Ok(bound)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    caps: Arc<Caps>,
    broker: SocketAddr,
) {
    let refusals = RateLimit::new(std::time::Duration::from_secs(10));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "embedded MQTT broker: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = caps.admit(remote.ip()) else {
            if let Some(suppressed) = refusals.admit() {
                tracing::warn!(
                    %remote,
                    "embedded MQTT broker: connection over the caps closed \
                     ([MQTT] max_connections, max_connections_per_address){suppressed}"
                );
            }
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            if let Err(reason) = relay(stream, &acceptor, broker).await {
                tracing::debug!(%remote, reason, "embedded MQTT broker: connection ended");
            }
        });
    }
}

async fn relay(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    broker: SocketAddr,
) -> Result<(), String> {
    let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| "no TLS handshake in time".to_owned())?
        .map_err(|error| format!("TLS handshake: {error}"))?;
    let mut upstream = TcpStream::connect(broker)
        .await
        .map_err(|error| format!("broker on loopback: {error}"))?;
    tokio::io::copy_bidirectional(&mut tls, &mut upstream)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// Connections open, in all and per remote address.
struct Caps {
    total: usize,
    per_address: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Caps {
    fn new(total: usize, per_address: usize) -> Caps {
        Caps {
            total,
            per_address,
            open: Mutex::default(),
        }
    }

    fn admit(self: &Arc<Caps>, address: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_address = open.per_address.get(&address).copied().unwrap_or(0);
        if open.total >= self.total || from_address >= self.per_address {
            return None;
        }
        open.total += 1;
        open.per_address.insert(address, from_address + 1);
        Some(Admitted {
            caps: self.clone(),
            address,
        })
    }
}

/// One connection's place under the caps, given back when its task ends.
struct Admitted {
    caps: Arc<Caps>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(count) = open.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_in_all_and_per_address_and_come_back_when_dropped() {
        let caps = Arc::new(Caps::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = caps.admit(a).unwrap();
        let _second = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_none(), "a third from one address");
        let _third = caps.admit(b).unwrap();
        assert!(caps.admit(b).is_none(), "a fourth in all");
        drop(first);
        assert!(caps.admit(a).is_some(), "a place given back is taken again");
    }
}
