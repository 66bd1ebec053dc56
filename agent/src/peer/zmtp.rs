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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Flags of a frame header.
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

const GREETING_LEN: usize = 64;

/// Length of a frame header with an eight-byte length (the longest).
const LONG_HEADER: usize = 9;

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
    let (header, header_len) = header(flags, len);
    out.extend_from_slice(&header[..header_len]);
}

/// A frame header (flags, then the length in one byte or eight) and its length.
fn header(flags: u8, len: usize) -> ([u8; LONG_HEADER], usize) {
    let mut header = [0u8; LONG_HEADER];
    if len > 255 {
        header[0] = flags | LONG;
        header[1..].copy_from_slice(&(len as u64).to_be_bytes());
        (header, LONG_HEADER)
    } else {
        header[0] = flags;
        header[1] = len as u8;
        (header, 2)
    }
}

/// A REQ-style message as one buffer, ready for a single write: the empty delimiter
/// frame, then `body`. ROUTER replies to a REQ peer look the same on the wire. The
/// headers (at most 11 bytes) are put in front of `body` in its own buffer: moving it
/// costs less than a second buffer when it has the room.
pub fn delimited(mut body: Vec<u8>) -> Vec<u8> {
    let (header, header_len) = header(0, body.len());
    let delimiter = [MORE, 0];
    let prefix = delimiter.iter().chain(&header[..header_len]).copied();
    body.splice(0..0, prefix);
    body
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Exchanges greetings and READY commands on a fresh connection, as `socket_type`,
/// reading through `reader` (which keeps whatever the peer sent after its READY).
pub async fn handshake<S>(
    stream: &mut S,
    reader: &mut FrameReader,
    socket_type: SocketType,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Greeting and READY at once: with the NULL mechanism nothing in ours depends on the
    // peer's, so the handshake costs one round trip.
    let mut hello = greeting().to_vec();
    hello.extend_from_slice(&ready(socket_type));
    stream.write_all(&hello).await?;
    let theirs = reader.greeting(stream).await?;
    check_greeting(&theirs)?;
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

/// Where a frame lies at the start of a buffer: its flags, the length of its header and
/// of its body (which may not have arrived yet).
struct FrameAt {
    flags: u8,
    header: usize,
    len: usize,
}

impl FrameAt {
    /// The frame at the start of `bytes`, once its header has arrived; a body longer
    /// than `limit` is an error.
    fn parse(bytes: &[u8], limit: usize) -> io::Result<Option<FrameAt>> {
        let Some(&flags) = bytes.first() else {
            return Ok(None);
        };
        let (header, len) = if flags & LONG != 0 {
            let Some(size) = bytes.get(1..LONG_HEADER) else {
                return Ok(None);
            };
            (
                LONG_HEADER,
                u64::from_be_bytes(size.try_into().expect("eight bytes")),
            )
        } else {
            let Some(&size) = bytes.get(1) else {
                return Ok(None);
            };
            (2, u64::from(size))
        };
        if len > limit as u64 {
            return Err(invalid(format!(
                "frame of {len} bytes, more than the {limit} allowed"
            )));
        }
        Ok(Some(FrameAt {
            flags,
            header,
            len: len as usize,
        }))
    }

    fn end(&self) -> usize {
        self.header + self.len
    }
}

/// What the buffer holds so far.
enum Buffered {
    Complete(Incoming),
    /// Not a whole message yet: this many bytes in all are needed at least.
    Needs(usize),
}

/// Bytes a read asks the kernel for at least.
const MIN_READ: usize = 4 * 1024;

/// The free room to read into when `buffered` bytes have arrived and `needed` are wanted.
/// A frame's declared length is only a claim: the room grows with the bytes that actually
/// came (at most doubling the buffer per read), so a peer that declares a large frame and
/// sends nothing more holds a small buffer, while a large message still arrives in a few
/// reads.
fn room_for(buffered: usize, needed: usize) -> usize {
    needed
        .saturating_sub(buffered)
        .min(buffered.max(MIN_READ))
        .max(MIN_READ)
}

/// Bytes of a message in progress that a reader holds without drawing on its budget:
/// every ordinary peer message fits.
const FREE_BYTES: usize = 4 * MIN_READ;

/// Bytes that the readers sharing it may hold, in all, beyond [`FREE_BYTES`] each, for
/// messages that have not arrived whole: many connections each sending part of a large
/// message then cost a bounded amount of memory, not one message each.
#[derive(Debug)]
pub struct ReadBudget {
    limit: usize,
    held: AtomicUsize,
}

impl ReadBudget {
    pub fn new(limit: usize) -> Arc<ReadBudget> {
        Arc::new(ReadBudget {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// Bytes drawn now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn draw(&self, bytes: usize) -> bool {
        let before = self.held.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.limit {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Reads frames off a stream through a buffer of its own, bounding what one message may
/// hold. The frames of a message are handed out as parts of that buffer, without copies;
/// a message is taken from the buffer only once all its frames have arrived, so a read
/// cut off by a cancellation loses nothing.
pub struct FrameReader {
    buffer: BytesMut,
    max_message: usize,
    budget: Option<Arc<ReadBudget>>,
    /// What this reader has drawn from its budget.
    drawn: usize,
}

impl FrameReader {
    /// A reader refusing (with an error, which closes the connection) messages larger
    /// than `max_message` bytes in all.
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader {
            buffer: BytesMut::with_capacity(4 * MIN_READ),
            max_message,
            budget: None,
            drawn: 0,
        }
    }

    /// As [`FrameReader::new`], holding more than [`FREE_BYTES`] of a message in progress
    /// only while `budget` allows (else an error of kind `OutOfMemory`).
    pub fn with_budget(max_message: usize, budget: Arc<ReadBudget>) -> FrameReader {
        let mut reader = FrameReader::new(max_message);
        reader.budget = Some(budget);
        reader
    }

    /// Draws on the budget (or gives back to it) for the bytes the buffer holds now.
    fn account(&mut self) -> io::Result<()> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let wanted = self.buffer.len().saturating_sub(FREE_BYTES);
        if wanted > self.drawn {
            if !budget.draw(wanted - self.drawn) {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "{} bytes of an unfinished message, more than the server's read budget leaves",
                        self.buffer.len()
                    ),
                ));
            }
        } else if wanted < self.drawn {
            budget.give_back(self.drawn - wanted);
        }
        self.drawn = wanted;
        Ok(())
    }

    /// Reads more of the stream, towards `needed` bytes in all.
    async fn read_more<R>(&mut self, stream: &mut R, needed: usize) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
    {
        // Once the frames handed out are dropped, this reuses the buffer's memory.
        self.buffer.reserve(room_for(self.buffer.len(), needed));
        if stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.account()
    }

    async fn greeting<R>(&mut self, stream: &mut R) -> io::Result<[u8; GREETING_LEN]>
    where
        R: AsyncRead + Unpin,
    {
        while self.buffer.len() < GREETING_LEN {
            self.read_more(stream, GREETING_LEN).await?;
        }
        let mut greeting = [0u8; GREETING_LEN];
        greeting.copy_from_slice(&self.buffer.split_to(GREETING_LEN));
        Ok(greeting)
    }

    /// The next frame, whatever it is.
    async fn frame<R>(&mut self, stream: &mut R, limit: usize) -> io::Result<(u8, Bytes)>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            match FrameAt::parse(&self.buffer, limit)? {
                Some(frame) if self.buffer.len() >= frame.end() => {
                    return Ok((frame.flags, self.take(&frame)));
                }
                Some(frame) => self.read_more(stream, frame.end()).await?,
                None => self.read_more(stream, LONG_HEADER).await?,
            }
        }
    }

    /// The next message (all its frames), or a PING to answer. Other commands are
    /// skipped. Cancel-safe.
    pub async fn message<R>(&mut self, stream: &mut R) -> io::Result<Incoming>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            match self.buffered()? {
                Buffered::Complete(incoming) => {
                    if self.drawn > 0 {
                        self.account()?;
                    }
                    return Ok(incoming);
                }
                Buffered::Needs(needed) => self.read_more(stream, needed).await?,
            }
        }
    }

    /// Takes the next message (or PING) off the buffer if all of it has arrived.
    fn buffered(&mut self) -> io::Result<Buffered> {
        let (mut at, mut total, mut frames) = (0, 0, 0);
        loop {
            let Some(frame) = FrameAt::parse(&self.buffer[at..], self.max_message - total)? else {
                return Ok(Buffered::Needs(at + LONG_HEADER));
            };
            let end = at + frame.end();
            if self.buffer.len() < end {
                return Ok(Buffered::Needs(end));
            }
            if frame.flags & COMMAND != 0 {
                if frames > 0 {
                    return Err(invalid("command inside a multipart message"));
                }
                let pong = pong_for(&self.buffer[at + frame.header..end])?;
                self.buffer.advance(end);
                match pong {
                    Some(pong) => return Ok(Buffered::Complete(Incoming::Pong(pong))),
                    None => continue,
                }
            }
            total += frame.len;
            frames += 1;
            at = end;
            if frame.flags & MORE == 0 {
                break;
            }
            if frames > 64 {
                return Err(invalid("more than 64 frames in one message"));
            }
        }
        let mut message = Vec::with_capacity(frames);
        for _ in 0..frames {
            let frame = FrameAt::parse(&self.buffer, usize::MAX)?.expect("checked above");
            message.push(self.take(&frame));
        }
        Ok(Buffered::Complete(Incoming::Message(message)))
    }

    /// Takes `frame`, which has arrived whole at the start of the buffer, off it: its
    /// body as a part of the buffer.
    fn take(&mut self, frame: &FrameAt) -> Bytes {
        self.buffer.advance(frame.header);
        self.buffer.split_to(frame.len).freeze()
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give_back(self.drawn);
        }
    }
}

/// The PONG answering a command if it is a PING (which PONG echoes the context of, after
/// its 2-byte TTL).
fn pong_for(body: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let (name, data) = command(body)?;
    if name != b"PING" || data.len() < 2 {
        return Ok(None);
    }
    let context = &data[2..data.len().min(18)];
    let mut pong_body = vec![4];
    pong_body.extend_from_slice(b"PONG");
    pong_body.extend_from_slice(context);
    let mut pong = Vec::with_capacity(pong_body.len() + 2);
    push_header(&mut pong, COMMAND, pong_body.len());
    pong.extend_from_slice(&pong_body);
    Ok(Some(pong))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_ends_handshake_and_exchange_a_message() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (mut client_reader, mut server_reader) =
            (FrameReader::new(1024), FrameReader::new(1024));
        let (a, b) = tokio::join!(
            handshake(&mut client, &mut client_reader, SocketType::Req),
            handshake(&mut server, &mut server_reader, SocketType::Router)
        );
        a.unwrap();
        b.unwrap();
        client
            .write_all(&delimited(b"hello".to_vec()))
            .await
            .unwrap();
        let Incoming::Message(frames) = server_reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames, vec![Bytes::new(), Bytes::from_static(b"hello")]);
    }

    #[tokio::test]
    async fn a_message_sent_with_the_greeting_is_kept() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut hello = greeting().to_vec();
        hello.extend_from_slice(&ready(SocketType::Req));
        hello.extend_from_slice(&delimited(b"first".to_vec()));
        client.write_all(&hello).await.unwrap();
        let mut reader = FrameReader::new(1024);
        handshake(&mut server, &mut reader, SocketType::Router)
            .await
            .unwrap();
        let Incoming::Message(frames) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames[1], Bytes::from_static(b"first"));
    }

    #[tokio::test]
    async fn messages_split_or_joined_in_any_way_are_read_whole_even_across_cancellations() {
        let mut wire = Vec::new();
        for body in [&b"one"[..], &[b'x'; 300][..], b"three"] {
            wire.extend_from_slice(&delimited(body.to_vec()));
        }
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut reader = FrameReader::new(1024);
        let mut read = Vec::new();
        for chunk in wire.chunks(7) {
            client.write_all(chunk).await.unwrap();
            // Reads as far as the bytes go, then gives up (a cancellation).
            while let Ok(Ok(Incoming::Message(frames))) = tokio::time::timeout(
                std::time::Duration::from_millis(1),
                reader.message(&mut server),
            )
            .await
            {
                read.push(frames[1].clone());
            }
        }
        assert_eq!(read.len(), 3);
        assert_eq!(read[1].len(), 300);
        assert_eq!(read[2], Bytes::from_static(b"three"));
    }

    #[tokio::test]
    async fn two_req_sockets_refuse_each_other() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let (mut client_reader, mut server_reader) =
            (FrameReader::new(1024), FrameReader::new(1024));
        let (a, _) = tokio::join!(
            handshake(&mut client, &mut client_reader, SocketType::Req),
            handshake(&mut server, &mut server_reader, SocketType::Req)
        );
        assert!(a.unwrap_err().to_string().contains("cannot talk"));
    }

    #[tokio::test]
    async fn long_frames_and_limits() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let body = vec![b'x'; 1000];
        client.write_all(&delimited(body.clone())).await.unwrap();
        let mut reader = FrameReader::new(2000);
        let Incoming::Message(frames) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames[1].len(), 1000);
        client.write_all(&delimited(body.clone())).await.unwrap();
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

    #[tokio::test]
    async fn a_declared_frame_is_not_reserved_before_its_bytes_arrive() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut reader = FrameReader::new(4 << 20);
        let mut claim = vec![MORE, 0];
        push_header(&mut claim, 0, 2 << 20);
        claim.extend_from_slice(b"0123456789");
        client.write_all(&claim).await.unwrap();
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.message(&mut server),
        )
        .await;
        assert!(read.is_err(), "the frame is not complete");
        assert!(
            reader.buffer.capacity() <= 4 * MIN_READ,
            "a 2 MiB claim with 10 bytes received holds {} bytes",
            reader.buffer.capacity()
        );
    }

    #[tokio::test]
    async fn unfinished_messages_share_a_budget_and_give_it_back() {
        let budget = ReadBudget::new(150_000);
        let mut part = delimited(vec![b'x'; 150_000]);
        part.truncate(FREE_BYTES + 80_000);
        let (mut first, mut first_end) = tokio::io::duplex(1 << 20);
        let (mut second, mut second_end) = tokio::io::duplex(1 << 20);
        let mut first_reader = FrameReader::with_budget(1 << 20, budget.clone());
        let mut second_reader = FrameReader::with_budget(1 << 20, budget.clone());
        first.write_all(&part).await.unwrap();
        second.write_all(&part).await.unwrap();
        let wait = std::time::Duration::from_millis(200);
        let read = tokio::time::timeout(wait, first_reader.message(&mut first_end)).await;
        assert!(read.is_err(), "not whole yet");
        assert_eq!(budget.held(), 80_000);
        let refused = second_reader.message(&mut second_end).await.err().unwrap();
        assert_eq!(refused.kind(), io::ErrorKind::OutOfMemory);
        assert!(budget.held() <= 150_000);
        // Its connection closes: the reader gives back what it had drawn.
        drop(second_reader);
        assert_eq!(budget.held(), 80_000);

        // The first message arrives whole: its reader gives back what it drew.
        let whole = delimited(vec![b'x'; 150_000]);
        first.write_all(&whole[part.len()..]).await.unwrap();
        let Incoming::Message(frames) = first_reader.message(&mut first_end).await.unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(frames[1].len(), 150_000);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn the_read_room_grows_with_what_arrived() {
        assert_eq!(room_for(0, 2 << 20), MIN_READ);
        assert_eq!(room_for(10, 2 << 20), MIN_READ);
        assert_eq!(room_for(64 << 10, 2 << 20), 64 << 10);
        assert_eq!(room_for(1 << 20, (1 << 20) + 100), MIN_READ);
        assert_eq!(room_for(100, 50), MIN_READ);
    }

    #[tokio::test]
    async fn a_large_message_still_arrives_whole() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let body = vec![b'x'; 1_500_000];
        let sent = delimited(body.clone());
        let writer = tokio::spawn(async move { client.write_all(&sent).await.unwrap() });
        let mut reader = FrameReader::new(2 << 20);
        let Incoming::Message(frames) = reader.message(&mut server).await.unwrap() else {
            panic!("expected a message");
        };
        writer.await.unwrap();
        assert_eq!(frames[1].len(), body.len());
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
                let mut reader = FrameReader::new(256);
                let shook = handshake(&mut ours, &mut reader, SocketType::Router).await;
                assert_eq!(shook.is_ok(), after_greeting, "{shook:?}");
                if shook.is_ok() {
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
