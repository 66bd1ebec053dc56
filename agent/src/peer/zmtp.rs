//! ZMTP 3.0, the ZeroMQ wire protocol (RFC 23), as far as the peer protocol needs it: the
//! NULL security mechanism (messages are authenticated by their envelope's MAC, not by the
//! transport), REQ clients and a ROUTER server, over tokio TCP streams.
//!
//! The peer protocol used the `zeromq` crate for this. Measured (`agent/benches/peer.rs`),
//! its sockets cost about 12 µs per round trip more than plain TCP with the same sizes: a
//! ROUTER socket's receive goes through a fair queue over all its peers and every reply is
//! handed to a per-peer writer task through a channel, so each round trip wakes several
//! tasks. Speaking ZMTP on the connection's own task — read a request, answer it with one
//! write — leaves framing as the only cost (a few bytes of header per frame). The bytes
//! on the wire are those of any ZeroMQ REQ/ROUTER pair: libzmq, pyzmq and `zeromq`-crate
//! peers interoperate (the tests use the `zeromq` crate as the other side).

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Flags of a frame header.
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

const GREETING_LEN: usize = 64;

/// The ZeroMQ socket types the peer protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketType {
    Req,
    Router,
}

impl SocketType {
    fn name(self) -> &'static str {
        match self {
            SocketType::Req => "REQ",
            SocketType::Router => "ROUTER",
        }
    }

    /// Whether a peer of type `other` may talk to this socket (RFC 28: REQ talks to REP
    /// and ROUTER; ROUTER to REQ, DEALER and ROUTER).
    fn accepts(self, other: &[u8]) -> bool {
        match self {
            SocketType::Req => other == b"REP" || other == b"ROUTER",
            SocketType::Router => other == b"REQ" || other == b"DEALER" || other == b"ROUTER",
        }
    }
}

/// The greeting: signature, version 3.0, mechanism NULL, not as server, filler.
fn greeting() -> [u8; GREETING_LEN] {
    let mut greeting = [0u8; GREETING_LEN];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[11] = 0;
    greeting[12..16].copy_from_slice(b"NULL");
    greeting
}

fn check_greeting(greeting: &[u8; GREETING_LEN]) -> io::Result<()> {
    if greeting[0] != 0xff || greeting[9] & 0x01 != 0x01 {
        return Err(invalid(
            "the peer does not speak ZeroMQ (bad greeting signature)",
        ));
    }
    if greeting[10] < 3 {
        return Err(invalid(format!(
            "the peer speaks ZMTP {}.x; 3.0 or later is needed",
            greeting[10]
        )));
    }
    let mechanism = &greeting[12..32];
    let end = mechanism.iter().position(|&b| b == 0).unwrap_or(20);
    if &mechanism[..end] != b"NULL" {
        return Err(invalid(format!(
            "the peer wants security mechanism {:?}; the peer protocol uses NULL (its messages are signed)",
            String::from_utf8_lossy(&mechanism[..end])
        )));
    }
    Ok(())
}

/// The READY command announcing `socket_type` with an empty identity (as libzmq sends).
fn ready(socket_type: SocketType) -> Vec<u8> {
    let mut body = Vec::with_capacity(48);
    body.push(5);
    body.extend_from_slice(b"READY");
    for (name, value) in [
        (&b"Socket-Type"[..], socket_type.name().as_bytes()),
        (&b"Identity"[..], &b""[..]),
    ] {
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    }
    let mut frame = Vec::with_capacity(body.len() + 9);
    push_header(&mut frame, COMMAND, body.len());
    frame.extend_from_slice(&body);
    frame
}

/// The value of property `wanted` in a READY command's metadata.
fn property<'a>(mut metadata: &'a [u8], wanted: &str) -> io::Result<Option<&'a [u8]>> {
    while !metadata.is_empty() {
        let name_len = metadata[0] as usize;
        let rest = &metadata[1..];
        if rest.len() < name_len + 4 {
            return Err(invalid("truncated READY metadata"));
        }
        let (name, rest) = rest.split_at(name_len);
        let value_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let rest = &rest[4..];
        if rest.len() < value_len {
            return Err(invalid("truncated READY metadata"));
        }
        let (value, rest) = rest.split_at(value_len);
        if name.eq_ignore_ascii_case(wanted.as_bytes()) {
            return Ok(Some(value));
        }
        metadata = rest;
    }
    Ok(None)
}

fn push_header(out: &mut Vec<u8>, flags: u8, len: usize) {
    if len > 255 {
        out.push(flags | LONG);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(len as u8);
    }
}

/// A REQ-style message as one buffer, ready for a single write: the empty delimiter
/// frame, then `body`. ROUTER replies to a REQ peer look the same on the wire.
pub fn delimited(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 11);
    out.extend_from_slice(&[MORE, 0]);
    push_header(&mut out, 0, body.len());
    out.extend_from_slice(body);
    out
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Exchanges greetings and READY commands on a fresh connection, as `socket_type`.
pub async fn handshake<S>(stream: &mut S, socket_type: SocketType) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Greeting and READY at once: with the NULL mechanism nothing in ours depends on the
    // peer's, so the handshake costs one round trip.
    let mut hello = greeting().to_vec();
    hello.extend_from_slice(&ready(socket_type));
    stream.write_all(&hello).await?;
    let mut theirs = [0u8; GREETING_LEN];
    stream.read_exact(&mut theirs).await?;
    check_greeting(&theirs)?;
    let mut reader = FrameReader::new(usize::MAX >> 1);
    let (flags, body) = reader.frame(stream, 4096).await?;
    if flags & COMMAND == 0 {
        return Err(invalid("the peer sent a message before READY"));
    }
    let (name, data) = command(&body)?;
    match name {
        b"READY" => {}
        b"ERROR" => {
            let reason = data.get(1..).unwrap_or_default();
            return Err(invalid(format!(
                "the peer refused the connection: {}",
                String::from_utf8_lossy(reason)
            )));
        }
        other => {
            return Err(invalid(format!(
                "expected READY, got command {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    }
    let peer_type = property(data, "Socket-Type")?.unwrap_or_default();
    if !socket_type.accepts(peer_type) {
        return Err(invalid(format!(
            "a {} socket cannot talk to a {} socket",
            socket_type.name(),
            String::from_utf8_lossy(peer_type)
        )));
    }
    Ok(())
}

/// Splits a command frame into its name and data.
fn command(body: &[u8]) -> io::Result<(&[u8], &[u8])> {
    let name_len = *body.first().ok_or_else(|| invalid("empty command"))? as usize;
    if body.len() < 1 + name_len {
        return Err(invalid("truncated command"));
    }
    Ok((&body[1..1 + name_len], &body[1 + name_len..]))
}

/// What [`FrameReader::message`] found.
pub enum Incoming {
    /// The frames of one message.
    Message(Vec<Bytes>),
    /// A PING the caller should answer with these bytes (a PONG), then read on.
    Pong(Vec<u8>),
}

/// Reads frames off a stream, bounding what one message may hold.
pub struct FrameReader {
    max_message: usize,
}

impl FrameReader {
    /// A reader refusing (with an error, which closes the connection) messages larger
    /// than `max_message` bytes in all.
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader { max_message }
    }

    async fn frame<R>(&mut self, stream: &mut R, limit: usize) -> io::Result<(u8, Bytes)>
    where
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await?;
        let flags = header[0];
        let len = if flags & LONG != 0 {
            let mut rest = [0u8; 8];
            rest[0] = header[1];
            stream.read_exact(&mut rest[1..]).await?;
            u64::from_be_bytes(rest)
        } else {
            u64::from(header[1])
        };
        if len > limit as u64 {
            return Err(invalid(format!(
                "frame of {len} bytes, more than the {limit} allowed"
            )));
        }
        let mut body = BytesMut::zeroed(len as usize);
        stream.read_exact(&mut body).await?;
        Ok((flags, body.freeze()))
    }

    /// The next message (all its frames), or a PING to answer. Other commands are
    /// skipped. Not cancel-safe: a message cut off by a cancellation is lost.
    pub async fn message<R>(&mut self, stream: &mut R) -> io::Result<Incoming>
    where
        R: AsyncRead + Unpin,
    {
        let mut frames = Vec::with_capacity(3);
        let mut total = 0usize;
        loop {
            let (flags, body) = self.frame(stream, self.max_message - total).await?;
            if flags & COMMAND != 0 {
                if !frames.is_empty() {
                    return Err(invalid("command inside a multipart message"));
                }
                let (name, data) = command(&body)?;
                if name == b"PING" && data.len() >= 2 {
                    // PONG echoes the ping's context (after its 2-byte TTL).
                    let context = &data[2..data.len().min(18)];
                    let mut pong_body = vec![4];
                    pong_body.extend_from_slice(b"PONG");
                    pong_body.extend_from_slice(context);
                    let mut pong = Vec::with_capacity(pong_body.len() + 2);
                    push_header(&mut pong, COMMAND, pong_body.len());
                    pong.extend_from_slice(&pong_body);
                    return Ok(Incoming::Pong(pong));
                }
                continue;
            }
            total += body.len();
            frames.push(body);
            if flags & MORE == 0 {
                return Ok(Incoming::Message(frames));
            }
            if frames.len() > 64 {
                return Err(invalid("more than 64 frames in one message"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_ends_handshake_and_exchange_a_message() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (a, b) = tokio::join!(
            handshake(&mut client, SocketType::Req),
            handshake(&mut server, SocketType::Router)
        );
        a.unwrap();
        b.unwrap();
        client.write_all(&delimited(b"hello")).await.unwrap();
        let mut reader = FrameReader::new(1024);
        let Incoming::Message(frames) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames, vec![Bytes::new(), Bytes::from_static(b"hello")]);
    }

    #[tokio::test]
    async fn two_req_sockets_refuse_each_other() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (a, _) = tokio::join!(
            handshake(&mut client, SocketType::Req),
            handshake(&mut server, SocketType::Req)
        );
        assert!(a.unwrap_err().to_string().contains("cannot talk"));
    }

    #[tokio::test]
    async fn long_frames_and_limits() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let body = vec![b'x'; 1000];
        client.write_all(&delimited(&body)).await.unwrap();
        let mut reader = FrameReader::new(2000);
        let Incoming::Message(frames) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames[1].len(), 1000);
        client.write_all(&delimited(&body)).await.unwrap();
        let mut small = FrameReader::new(999);
        assert!(small.message(&mut server).await.is_err());
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_its_context() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut ping = vec![COMMAND, 11, 4];
        ping.extend_from_slice(b"PING");
        ping.extend_from_slice(&[0, 10]);
        ping.extend_from_slice(b"abcd");
        client.write_all(&ping).await.unwrap();
        let mut reader = FrameReader::new(1024);
        let Incoming::Pong(pong) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a pong");
        };
        assert_eq!(pong, [&[COMMAND, 9, 4][..], b"PONG", b"abcd"].concat());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a peer sends — garbage, a truncated greeting, frames of any length
        /// and flags — the handshake and the frame reader answer with a result, never a
        /// panic, and never read a message beyond the limit.
        #[test]
        fn arbitrary_bytes_never_panic_the_transport(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            after_greeting in proptest::prelude::any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut input = if after_greeting { greeting().to_vec() } else { Vec::new() };
                input.extend_from_slice(&ready(SocketType::Req));
                input.extend_from_slice(&bytes);
                // The peer's bytes to read; what we answer goes nowhere.
                let mut ours = tokio::io::join(&input[..], tokio::io::sink());
                let shook = handshake(&mut ours, SocketType::Router).await;
                assert_eq!(shook.is_ok(), after_greeting, "{shook:?}");
                if shook.is_ok() {
                    let mut reader = FrameReader::new(256);
                    while let Ok(incoming) = reader.message(&mut ours).await {
                        if let Incoming::Message(frames) = incoming {
                            let total: usize = frames.iter().map(|f| f.len()).sum();
                            assert!(total <= 256, "a message over the limit: {total}");
                        }
                    }
                }
            });
        }
    }
}
