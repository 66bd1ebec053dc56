//! Peer protocol round trips between two processes on loopback: version 2 capability
//! requests (a pooled Noise session, the envelope checks, as the agent runs them) next to
//! version 1's signed envelopes (HMAC-SHA256, timestamp and nonce checks, rebuilt here
//! from the public envelope API over the same `zeromq` crate REQ/ROUTER sockets), pyzmq
//! REQ/REP of the same sizes (libzmq from Python, what Motey used) and a plain TCP
//! ping-pong of the same sizes (the floor). Every path has its server in a second
//! process. Writes the `peer` section of BENCHMARKS.md.
//!
//!     cargo bench -p motey --bench peer -- [ROUND_TRIPS]
//!
//! pyzmq is installed into `target/bench-venv` on first use (pip, from PyPI).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use motey::discovery::capabilities_digest;
use motey::domain::{Capability, ImageDeployment, ImageStatus, NodeId, ServiceId};
use motey::peer::envelope::peer_message;
use motey::peer::noise::{self, Initiator, Responder};
use motey::peer::{
    canonical_json, ClusterKey, ClusterKeyTrust, Envelope, PeerHandler, PeerRefusal, PeerServer,
    Received, Reply, Request, Requester, SessionTrust,
};
use system_tests::bench::{
    machine, micros, percentile, python_module_version, python_venv, write_section,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeromq::{ReqSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

const SECTION: &str = "peer";
const ROLE: &str = "MOTEY_PEER_BENCH_ROLE";

fn key() -> ClusterKey {
    ClusterKey::from_secret("benchmark cluster key, not a secret")
}

fn trust(node: &str) -> Arc<dyn SessionTrust> {
    Arc::new(ClusterKeyTrust::new(
        NodeId(node.into()),
        key(),
        rand::random(),
    ))
}

fn capabilities() -> Vec<Capability> {
    vec![Capability {
        capability: "optical-probe".into(),
        capability_type: "hardware".into(),
    }]
}

struct Handler;

#[async_trait::async_trait]
impl PeerHandler for Handler {
    async fn capabilities(&self) -> Vec<Capability> {
        capabilities()
    }
    async fn deploy_image(
        &self,
        _: &NodeId,
        _: ImageDeployment,
    ) -> Result<ImageStatus, PeerRefusal> {
        Err("not in this benchmark".into())
    }
    async fn image_status(
        &self,
        _: &NodeId,
        _: &ServiceId,
        _: &str,
    ) -> Result<ImageStatus, PeerRefusal> {
        Err("not in this benchmark".into())
    }
    async fn terminate_image(&self, _: &NodeId, _: &ServiceId, _: &str) -> Result<(), PeerRefusal> {
        Err("not in this benchmark".into())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("server") {
        runtime().block_on(serve());
        return;
    }
    let round_trips: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let python = python_venv(&["pyzmq"]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut placed = Vec::new();
    for placement in [
        Placement::OneCore { core: cores - 1 },
        Placement::Free { cores },
    ] {
        placement.apply_to_this_process();
        let mut server = Server::spawn(placement);
        let mut pyzmq = Pyzmq::spawn(&python, placement);
        let results = runtime().block_on(measure(&server.ports, &mut pyzmq, round_trips));
        server.stop();
        drop(pyzmq);
        placed.push((placement, results));
    }
    // The CPU work alone, on the quiet core.
    Placement::OneCore { core: cores - 1 }.apply_to_this_process();
    let steps = cpu_steps(round_trips);
    Placement::Free { cores }.apply_to_this_process();
    let report = report(&placed, &steps, round_trips, &python);
    print!("{report}");
    write_section(SECTION, &report);
}

/// Where the processes of a measurement run. On a virtual machine a process woken on
/// another core waits for the hypervisor to run that core (tens of microseconds, and
/// whether it happens depends on how long each side computes), so the same paths are
/// measured twice: all processes on one core, which shows what each protocol itself
/// costs, and placed by the scheduler, as a deployment would run them. The one core is
/// the last: device interrupts are served by the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    OneCore { core: usize },
    Free { cores: usize },
}

impl Placement {
    fn describe(self) -> String {
        match self {
            Placement::OneCore { core } => format!("all processes on core {core} (`taskset`)"),
            Placement::Free { .. } => "processes placed by the scheduler".into(),
        }
    }

    /// The command that starts `program` with this placement.
    fn command(self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self {
            Placement::OneCore { core } => {
                let mut command = Command::new("taskset");
                command.args(["-c", &core.to_string()]).arg(program);
                command
            }
            Placement::Free { .. } => Command::new(program),
        }
    }

    /// Moves the measuring process (its one thread runs the client) to this placement.
    fn apply_to_this_process(self) {
        let cpus = match self {
            Placement::OneCore { core } => core.to_string(),
            Placement::Free { cores } => format!("0-{}", cores - 1),
        };
        let status = Command::new("taskset")
            .args(["-p", "-c", &cpus, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("taskset (util-linux)");
        assert!(status.success(), "taskset failed");
    }
}

/// A pyzmq REP server and a pyzmq REQ client, each a Python process; the client makes as
/// many round trips as it is told and reports their latencies.
struct Pyzmq {
    server: Child,
    client: Child,
    commands: ChildStdin,
    latencies: BufReader<ChildStdout>,
}

impl Pyzmq {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/zmq_reqrep.py")
    }

    fn spawn(python: &Path, placement: Placement) -> Pyzmq {
        let (request_bytes, reply_bytes) = envelope_sizes();
        let mut server = placement
            .command(python)
            .arg(Pyzmq::script())
            .args(["serve", &reply_bytes.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pyzmq server");
        let mut port = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let mut client = placement
            .command(python)
            .arg(Pyzmq::script())
            .args(["client", port.trim(), &request_bytes.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the pyzmq client");
        Pyzmq {
            commands: client.stdin.take().unwrap(),
            latencies: BufReader::new(client.stdout.take().unwrap()),
            server,
            client,
        }
    }

    fn run(&mut self, measured: &mut Measured, round_trips: usize) {
        let started = Instant::now();
        writeln!(self.commands, "{round_trips}").unwrap();
        self.commands.flush().unwrap();
        let mut line = String::new();
        self.latencies.read_line(&mut line).unwrap();
        measured.total += started.elapsed();
        measured.latencies.extend(
            line.split_whitespace()
                .map(|ns| Duration::from_nanos(ns.parse().unwrap())),
        );
    }
}

impl Drop for Pyzmq {
    fn drop(&mut self) {
        for child in [&mut self.client, &mut self.server] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sizes of a version 2 capability request and of its reply on the wire: the label
/// frame and the sealed envelope (its 16-byte tag included).
fn envelope_sizes() -> (usize, usize) {
    let id = uuid::Uuid::new_v4().to_string();
    let request = peer_message(
        Request::Capabilities.kind(),
        &id,
        "bench-client",
        "bench-server",
        &canonical_json(&Request::Capabilities.payload()),
    );
    let reply = Reply::Capabilities {
        digest: capabilities_digest(&capabilities()),
        capabilities: capabilities(),
    };
    let reply = peer_message(
        reply.kind(),
        &id,
        "bench-server",
        "bench-client",
        &canonical_json(&reply.payload()),
    );
    (
        b"request".len() + request.len() + 16,
        b"reply".len() + reply.len() + 16,
    )
}

/// The answering process: a peer server of version 2, one of version 1's signed envelopes
/// and a TCP echo.
async fn serve() {
    let signed = PeerServer::bind(
        "tcp://127.0.0.1:0",
        trust("bench-server"),
        Arc::new(Handler),
    )
    .await
    .unwrap();
    let mut router = RouterSocket::new();
    let unsigned_endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let unsigned_port: u16 = unsigned_endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!(
        "{} {} {}",
        signed.port(),
        unsigned_port,
        tcp.local_addr().unwrap().port()
    );
    std::io::stdout().flush().unwrap();
    tokio::spawn(serve_previous(router));
    tokio::spawn(async move {
        while let Ok((stream, _)) = tcp.accept().await {
            tokio::spawn(echo(stream));
        }
    });
    // Runs until the measuring process closes our standard input.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    drop(signed);
}

/// Version 1's checks on a `zeromq` crate ROUTER socket: the MAC checked over the
/// canonical form, the replay checks, the digest computed per request, the reply signed.
async fn serve_previous(mut router: RouterSocket) {
    let guard = motey::peer::ReplayGuard::default();
    while let Ok(message) = router.recv().await {
        let mut frames = message.into_vec();
        let Some(body) = frames.pop() else { continue };
        let Ok(request) = Envelope::parse(&body) else {
            continue;
        };
        request.verify(&key()).unwrap();
        guard
            .check(&request, motey::peer::envelope::now_ms())
            .unwrap();
        let reply = match Request::from_parts(&request.kind, request.payload) {
            Ok(Request::Capabilities) => Reply::Capabilities {
                digest: capabilities_digest(&capabilities()),
                capabilities: capabilities(),
            },
            _ => continue,
        };
        let mut reply = Envelope::new(reply.kind(), request.id, "bench-server", reply.payload());
        reply.sign(&key());
        let body = reply.to_bytes();
        let mut out = ZmqMessage::from(body);
        for frame in frames.into_iter().rev() {
            out.push_front(frame);
        }
        let _ = router.send(out).await;
    }
}

async fn echo(mut stream: TcpStream) {
    stream.set_nodelay(true).unwrap();
    let mut buffer = Vec::new();
    loop {
        let Ok(length) = stream.read_u32().await else {
            return;
        };
        let Ok(reply_length) = stream.read_u32().await else {
            return;
        };
        buffer.resize(length as usize, 0);
        if stream.read_exact(&mut buffer).await.is_err() {
            return;
        }
        // One write per message, as ZeroMQ does.
        let mut reply = Vec::with_capacity(4 + reply_length as usize);
        reply.extend_from_slice(&reply_length.to_be_bytes());
        reply.resize(4 + reply_length as usize, b'r');
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

struct Ports {
    signed: u16,
    unsigned: u16,
    tcp: u16,
}

struct Server {
    child: Child,
    ports: Ports,
}

impl Server {
    fn spawn(placement: Placement) -> Server {
        let mut child = placement
            .command(std::env::current_exe().unwrap())
            .env(ROLE, "server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|port| port.parse().unwrap())
            .collect();
        Server {
            child,
            ports: Ports {
                signed: ports[0],
                unsigned: ports[1],
                tcp: ports[2],
            },
        }
    }

    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Measured {
    name: &'static str,
    latencies: Vec<Duration>,
    total: Duration,
    request_bytes: usize,
    reply_bytes: usize,
}

async fn measure(ports: &Ports, pyzmq: &mut Pyzmq, round_trips: usize) -> Vec<Measured> {
    let (request_bytes, reply_bytes) = envelope_sizes();

    // Version 2: exactly what PeerClient does.
    let requester = Requester::new(trust("bench-client"), Duration::from_secs(10));
    let server = NodeId("bench-server".into());
    let endpoint = format!("tcp://127.0.0.1:{}", ports.signed);
    let (requester, endpoint, server) = (&requester, endpoint.as_str(), &server);
    let signed = move || async move {
        let reply = requester
            .call(endpoint, server, &Request::Capabilities)
            .await
            .unwrap();
        assert!(matches!(reply, Reply::Capabilities { .. }));
    };

    // Version 1's signed envelopes on a `zeromq` crate REQ socket, the reply's MAC checked
    // over the canonical form.
    let mut socket = ReqSocket::new();
    socket
        .connect(&format!("tcp://127.0.0.1:{}", ports.unsigned))
        .await
        .unwrap();
    let socket = tokio::sync::Mutex::new(socket);
    let socket = &socket;
    let freshness = motey::peer::ReplayGuard::default();
    let freshness = &freshness;
    let unsigned = move || async move {
        let mut request = Envelope::new(
            Request::Capabilities.kind(),
            uuid::Uuid::new_v4().to_string(),
            "bench-client",
            Request::Capabilities.payload(),
        );
        request.sign(&key());
        let mut socket = socket.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        tokio::time::timeout_at(deadline, socket.send(ZmqMessage::from(request.to_bytes())))
            .await
            .unwrap()
            .unwrap();
        let reply = tokio::time::timeout_at(deadline, socket.recv())
            .await
            .unwrap()
            .unwrap();
        let bytes: Vec<u8> = reply.try_into().unwrap();
        let reply = Envelope::parse(&bytes).unwrap();
        assert_eq!(reply.id, request.id);
        reply.verify(&key()).unwrap();
        freshness
            .check_freshness(&reply, motey::peer::envelope::now_ms())
            .unwrap();
        let reply = Reply::from_parts(&reply.kind, reply.payload.clone()).unwrap();
        assert!(matches!(reply, Reply::Capabilities { .. }));
    };

    // Floor: TCP ping-pong of version 2's sizes, length-prefixed, one write each way.
    let stream = TcpStream::connect(("127.0.0.1", ports.tcp)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let stream = tokio::sync::Mutex::new(stream);
    let mut message = Vec::with_capacity(8 + request_bytes);
    message.extend_from_slice(&(request_bytes as u32).to_be_bytes());
    message.extend_from_slice(&(reply_bytes as u32).to_be_bytes());
    message.resize(8 + request_bytes, b'q');
    let payload = Bytes::from(message);
    let (stream, payload) = (&stream, &payload);
    let floor = move || async move {
        let mut stream = stream.lock().await;
        stream.write_all(payload).await.unwrap();
        let length = stream.read_u32().await.unwrap() as usize;
        let mut reply = vec![0; length];
        stream.read_exact(&mut reply).await.unwrap();
    };

    let mut results = [
        Measured::new("Motey peer protocol v2 (Noise session, zeromq crate REQ/ROUTER)"),
        Measured::new("version 1, signed (HMAC-SHA256, zeromq crate REQ/ROUTER)"),
        Measured::new("pyzmq REQ/REP, same sizes, no JSON (what Motey used)"),
        Measured::new("plain TCP ping-pong, same sizes (floor)"),
    ];
    let warm_up = (round_trips / 10).max(100);
    run(&mut Measured::new("warm-up"), warm_up, signed).await;
    run(&mut Measured::new("warm-up"), warm_up, unsigned).await;
    pyzmq.run(&mut Measured::new("warm-up"), warm_up);
    run(&mut Measured::new("warm-up"), warm_up, floor).await;
    // Interleaved blocks, so that a slow phase of the machine hits every path alike.
    const BLOCKS: usize = 10;
    for block in 0..BLOCKS {
        let count = round_trips / BLOCKS + usize::from(block < round_trips % BLOCKS);
        run(&mut results[0], count, signed).await;
        run(&mut results[1], count, unsigned).await;
        pyzmq.run(&mut results[2], count);
        run(&mut results[3], count, floor).await;
    }
    results
        .into_iter()
        .map(|mut measured| {
            measured.latencies.sort();
            measured.request_bytes = request_bytes;
            measured.reply_bytes = reply_bytes;
            measured
        })
        .collect()
}

impl Measured {
    fn new(name: &'static str) -> Measured {
        Measured {
            name,
            latencies: Vec::new(),
            total: Duration::ZERO,
            request_bytes: 0,
            reply_bytes: 0,
        }
    }
}

/// The CPU work of one v2 round trip, step by step, in this process without I/O: what
/// the session adds to moving the bytes.
fn cpu_steps(iterations: usize) -> Vec<(&'static str, Duration)> {
    let client_guard = motey::peer::ReplayGuard::default();
    let server_guard = motey::peer::ReplayGuard::default();
    let (client_trust, server_trust) = (trust("bench-client"), trust("bench-server"));
    let (initiator, hello) = Initiator::start(client_trust.as_ref()).unwrap();
    let (responder, welcome) = Responder::welcome(server_trust.as_ref(), &hello).unwrap();
    let (mut client, _, finish) = initiator.finish(client_trust.as_ref(), &welcome).unwrap();
    let (mut server, _) = responder.finish(server_trust.as_ref(), &finish).unwrap();
    // The fastest of 20 batches: the machine is shared, and a batch that was preempted
    // says nothing about the work.
    let batch = (iterations / 20).max(1);
    let time = |f: &mut dyn FnMut()| {
        (0..20)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..batch {
                    f();
                }
                started.elapsed() / batch as u32
            })
            .min()
            .unwrap()
    };
    let request = || {
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
        peer_message(
            Request::Capabilities.kind(),
            id,
            "bench-client",
            "bench-server",
            &canonical_json(&Request::Capabilities.payload()),
        )
    };
    let capabilities_reply = Reply::Capabilities {
        digest: capabilities_digest(&capabilities()),
        capabilities: capabilities(),
    };
    let reply_payload = canonical_json(&capabilities_reply.payload());
    let reply = |id: &str| {
        peer_message(
            capabilities_reply.kind(),
            id,
            "bench-server",
            "bench-client",
            &reply_payload,
        )
    };
    // Made right before the step that opens them, so that their timestamps are fresh.
    let mut sample_request = Vec::new();
    let mut sample_reply = Vec::new();
    vec![
        (
            "handshake (XX, both proofs), once per connection",
            time(&mut || {
                let (initiator, hello) = Initiator::start(client_trust.as_ref()).unwrap();
                let (responder, welcome) =
                    Responder::welcome(server_trust.as_ref(), &hello).unwrap();
                let (_, _, finish) = initiator.finish(client_trust.as_ref(), &welcome).unwrap();
                std::hint::black_box(responder.finish(server_trust.as_ref(), &finish).unwrap());
            }),
        ),
        (
            "client: new id, request envelope, seal",
            time(&mut || {
                std::hint::black_box(noise::seal(&mut client, &request()));
                // Keep the server's receiving nonce in step.
                server.set_receiving_nonce(client.sending_nonce());
            }),
        ),
        (
            "server: open, parse, timestamp and nonce, decode",
            time(&mut || {
                if sample_request.is_empty() {
                    sample_request = request();
                }
                let sealed = noise::seal(&mut client, &sample_request);
                let opened = noise::open(&mut server, &sealed, 1 << 20).unwrap();
                let envelope = Received::parse(&opened).unwrap();
                server_guard
                    .check_freshness(&envelope, motey::peer::envelope::now_ms())
                    .unwrap();
                std::hint::black_box(
                    Request::from_parts(&envelope.kind, envelope.payload()).unwrap(),
                );
            }),
        ),
        (
            "server: reply envelope, seal",
            time(&mut || {
                std::hint::black_box(noise::seal(&mut server, &reply("6f1c2a9e")));
                client.set_receiving_nonce(server.sending_nonce());
            }),
        ),
        (
            "client: open, parse, timestamp, decode",
            time(&mut || {
                if sample_reply.is_empty() {
                    sample_reply = reply("6f1c2a9e-8a47-4c1e-9a59-0e4f2b7d1c3a");
                }
                let sealed = noise::seal(&mut server, &sample_reply);
                let opened = noise::open(&mut client, &sealed, 1 << 20).unwrap();
                let envelope = Received::parse(&opened).unwrap();
                client_guard
                    .check_freshness(&envelope, motey::peer::envelope::now_ms())
                    .unwrap();
                std::hint::black_box(
                    Reply::from_parts(&envelope.kind, envelope.payload()).unwrap(),
                );
            }),
        ),
    ]
}

async fn run<F, Fut>(measured: &mut Measured, round_trips: usize, once: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    for _ in 0..round_trips {
        let begin = Instant::now();
        once().await;
        measured.latencies.push(begin.elapsed());
    }
    measured.total += started.elapsed();
}

fn report(
    placed: &[(Placement, Vec<Measured>)],
    steps: &[(&str, Duration)],
    round_trips: usize,
    python: &Path,
) -> String {
    let first = &placed[0].1[0];
    let mut out = String::new();
    out.push_str(&format!(
        "{round_trips} sequential capability request/reply round trips per path, one client, \
         server in a second process on loopback, the paths interleaved in 10 blocks (after {} warm-up round trips each), \
         measured twice: with all processes on one core and with the processes placed by the scheduler. \
         Request {} bytes, reply {} bytes (version 2 on the wire; pyzmq and the floor send the same sizes, version 1 its own).\n\n",
        (round_trips / 10).max(100),
        first.request_bytes,
        first.reply_bytes
    ));
    out.push_str(&format!("- Machine: {}\n", machine()));
    out.push_str(&format!(
        "- pyzmq {} (libzmq {}), {}\n",
        python_module_version(python, "pyzmq"),
        python_output(python, "import zmq; print(zmq.zmq_version())"),
        python_output(
            python,
            "import sys; print('Python', sys.version.split()[0])"
        ),
    ));
    out.push_str("- Command: `cargo bench -p motey --bench peer`\n");
    for (placement, results) in placed {
        out.push_str(&format!(
            "\n### {}\n\n| path | p50 | p99 | mean | throughput |\n|---|---|---|---|---|\n",
            placement.describe()
        ));
        for measured in results {
            let mean = measured.total / round_trips as u32;
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} req/s |\n",
                measured.name,
                micros(percentile(&measured.latencies, 0.5)),
                micros(percentile(&measured.latencies, 0.99)),
                micros(mean),
                round_trips as f64 / measured.total.as_secs_f64()
            ));
        }
        let p50 = |index: usize| percentile(&results[index].latencies, 0.5).as_secs_f64();
        let verdict = |met: bool| if met { "met" } else { "not met" };
        out.push_str(&format!(
            "\nv2 / pyzmq (p50): **{:.2}** (target ≤ 1: {}). v2 / version 1 (p50): **{:.2}**. \
             v2 / TCP floor (p50): **{:.2}**.\n",
            p50(0) / p50(2),
            verdict(p50(0) <= p50(2)),
            p50(0) / p50(1),
            p50(0) / p50(3),
        ));
    }
    let cpu: Duration = steps
        .iter()
        .filter(|(step, _)| !step.starts_with("of which"))
        .map(|(_, took)| *took)
        .sum();
    out.push_str(&format!(
        "\nWhere version 2's time goes beyond moving the bytes: its CPU work per round trip, \
         measured step by step in one process without I/O (fastest of 20 batches each), \
         **{}** in all (the handshake included, which a pooled connection pays once):\n\n| step | per round trip |\n|---|---|\n",
        micros(cpu)
    ));
    for (step, took) in steps {
        out.push_str(&format!("| {step} | {} |\n", micros(*took)));
    }
    out.push_str(
        "\nVersion 2 pays, per round trip, two AEAD seals and opens (ChaCha20-Poly1305), the JSON \
         envelopes, the nonce cache and timestamp checks, and the client's per-request deadline; \
         a new connection pays the handshake (three X25519 operations each side) once. Version 1 \
         paid four HMAC-SHA256 computations instead. pyzmq and the floor move bytes only. \
         Both Motey paths now run on the `zeromq` crate's sockets (the hand-written ZMTP of \
         version 1 is gone), whose ROUTER receives through a fair queue over all peers and \
         hands each reply to a per-peer writer task. p99 figures are noisy on a shared machine.\n",
    );
    out
}

fn python_output(python: &Path, code: &str) -> String {
    Command::new(python)
        .args(["-c", code])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}
