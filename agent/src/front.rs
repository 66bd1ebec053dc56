//! A front for a server whose own listener cannot defend itself on a household network:
//! it admits a connection under caps (in all and per remote address), completes a TLS
//! handshake within a deadline in the connection's own task if it has a certificate,
//! and relays bytes to the server on loopback. Used by the embedded MQTT broker (rumqttd
//! runs its TLS handshake inside its accept loop without a deadline and counts
//! connections only in all) and by the peer port (the `zeromq` crate's ROUTER neither
//! sees nor closes single connections).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::logging::RateLimit;

/// What a front listens on and how much it admits.
#[derive(Clone)]
pub struct Front {
    /// Named in its log lines ("embedded MQTT broker", "peer port").
    pub name: &'static str,
    /// Where to say the limits are set, e.g. "[MQTT] max_connections, max_connections_per_address".
    pub settings: &'static str,
    pub listen: SocketAddr,
    /// TLS the front terminates; `None` relays the bytes as they come.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// For a ZMTP server: the largest frame a client may declare. The `zeromq` crate
    /// reserves a frame's declared length before its bytes arrive (a declared 32 TiB
    /// aborted the agent), so the front closes a connection that declares more.
    pub zmtp_max_frame: Option<u64>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Binds the front and relays what it admits to `backend` (on loopback); returns the
    /// bound address.
    pub async fn start(self, backend: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(self.listen).await?;
        let bound = listener.local_addr()?;
        let caps = Arc::new(Caps::new(
            self.max_connections,
            self.max_connections_per_address,
        ));
        tokio::spawn(accept_loop(listener, self, caps, backend));
        Ok(bound)
    }
}

async fn accept_loop(listener: TcpListener, front: Front, caps: Arc<Caps>, backend: SocketAddr) {
    let refusals = RateLimit::new(Duration::from_secs(10));
    let acceptor = front.tls.clone().map(TlsAcceptor::from);
    let (name, settings) = (front.name, front.settings);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "{name}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admitted) = caps.admit(remote.ip()) else {
            if let Some(suppressed) = refusals.admit() {
                tracing::warn!(%remote, "{name}: connection over the caps closed ({settings}){suppressed}");
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let handshake_timeout = front.handshake_timeout;
        let frames = front.zmtp_max_frame.map(ZmtpFrames::new);
        tokio::spawn(async move {
            let _admitted = admitted;
            let relayed = match acceptor {
                Some(acceptor) => {
                    relay_tls(stream, &acceptor, handshake_timeout, backend, frames).await
                }
                None => relay(stream, backend, frames).await,
            };
            if let Err(reason) = relayed {
                tracing::debug!(%remote, reason, "{name}: connection ended");
            }
        });
    }
}

async fn relay_tls(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    handshake_timeout: Duration,
    backend: SocketAddr,
    frames: Option<ZmtpFrames>,
) -> Result<(), String> {
    let tls = tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
        .await
        .map_err(|_| "no TLS handshake in time".to_owned())?
        .map_err(|error| format!("TLS handshake: {error}"))?;
    relay(tls, backend, frames).await
}

async fn relay<S>(stream: S, backend: SocketAddr, frames: Option<ZmtpFrames>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut upstream = TcpStream::connect(backend)
        .await
        .map_err(|error| format!("server on loopback: {error}"))?;
    // Requests and replies are small and wait for each other: no Nagle delay.
    let _ = upstream.set_nodelay(true);
    let Some(mut frames) = frames else {
        let mut stream = stream;
        return tokio::io::copy_bidirectional(&mut stream, &mut upstream)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string());
    };
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let (mut from_server, mut to_server) = upstream.into_split();
    let inbound = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_client
                .read(&mut buffer)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            frames.feed(&buffer[..n]).map_err(|declared| {
                format!("a frame of {declared} bytes declared, over the limit")
            })?;
            to_server
                .write_all(&buffer[..n])
                .await
                .map_err(|e| e.to_string())?;
        }
    };
    let outbound = async {
        tokio::io::copy(&mut from_server, &mut to_client)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    };
    // Either side ending ends the connection.
    tokio::select! {
        ended = inbound => ended,
        ended = outbound => ended,
    }
}

/// Follows the frames of a ZMTP 3 stream (a 64-byte greeting, then frames of a flags
/// byte, a 1- or 8-byte length and a body) only far enough to read each declared length.
#[derive(Debug)]
struct ZmtpFrames {
    max: u64,
    state: FrameState,
}

#[derive(Debug)]
enum FrameState {
    Greeting {
        left: usize,
    },
    Flags,
    Length {
        long: bool,
        read: usize,
        bytes: [u8; 8],
    },
    Body {
        left: u64,
    },
}

const ZMTP_GREETING: usize = 64;
const ZMTP_LONG: u8 = 0x02;

impl ZmtpFrames {
    fn new(max: u64) -> ZmtpFrames {
        ZmtpFrames {
            max,
            state: FrameState::Greeting {
                left: ZMTP_GREETING,
            },
        }
    }

    /// Takes the next bytes the client sent; `Err(declared length)` for a frame over the
    /// limit.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            match &mut self.state {
                FrameState::Greeting { left } => {
                    let taken = (*left).min(data.len());
                    *left -= taken;
                    data = &data[taken..];
                    if *left == 0 {
                        self.state = FrameState::Flags;
                    }
                }
                FrameState::Flags => {
                    self.state = FrameState::Length {
                        long: data[0] & ZMTP_LONG != 0,
                        read: 0,
                        bytes: [0; 8],
                    };
                    data = &data[1..];
                }
                FrameState::Length { long, read, bytes } => {
                    let width = if *long { 8 } else { 1 };
                    let taken = (width - *read).min(data.len());
                    bytes[*read..*read + taken].copy_from_slice(&data[..taken]);
                    *read += taken;
                    data = &data[taken..];
                    if *read == width {
                        let declared = if *long {
                            u64::from_be_bytes(*bytes)
                        } else {
                            u64::from(bytes[0])
                        };
                        if declared > self.max {
                            return Err(declared);
                        }
                        self.state = if declared == 0 {
                            FrameState::Flags
                        } else {
                            FrameState::Body { left: declared }
                        };
                    }
                }
                FrameState::Body { left } => {
                    let taken = (*left).min(data.len() as u64);
                    *left -= taken;
                    data = &data[taken as usize..];
                    if *left == 0 {
                        self.state = FrameState::Flags;
                    }
                }
            }
        }
        Ok(())
    }
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

    fn greeting() -> Vec<u8> {
        let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
        greeting.resize(ZMTP_GREETING, 0);
        greeting
    }

    #[test]
    fn frames_under_the_limit_pass_in_any_split_and_a_larger_declared_one_does_not() {
        let mut stream = greeting();
        stream.extend_from_slice(&[0x04, 3, b'a', b'b', b'c']); // a short command
        stream.push(0x02); // a long frame of 300 bytes
        stream.extend_from_slice(&300u64.to_be_bytes());
        stream.resize(stream.len() + 300, b'x');
        stream.extend_from_slice(&[0x00, 0]); // an empty frame
        for split in [1, 7, 64, 1000] {
            let mut frames = ZmtpFrames::new(300);
            for piece in stream.chunks(split) {
                assert_eq!(frames.feed(piece), Ok(()), "split {split}");
            }
        }
        let mut frames = ZmtpFrames::new(299);
        assert_eq!(frames.feed(&stream), Err(300));
        let mut huge = greeting();
        huge.push(0x02);
        huge.extend_from_slice(&(1u64 << 45).to_be_bytes());
        assert_eq!(ZmtpFrames::new(1 << 20).feed(&huge), Err(1 << 45));
    }

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
