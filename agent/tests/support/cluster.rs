//! Helpers of the cluster tests: a real mosquitto broker on a free loopback port, agents'
//! discovery in-process with their own temporary stores, and polling with a generous limit.
#![allow(dead_code)]

use std::future::Future;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use motey::discovery::{
    Discovery, DiscoveryHandle, DiscoverySettings, Liveness, Peer, PeerDirectory, PeerState,
};
use motey::domain::{
    Capability, ImageDeployment, ImageState, ImageStatus, NodeId, NodeInfo, ServiceId,
};
use motey::peer::{ClusterKey, ClusterKeyTrust, ErrorCode, PeerHandler, PeerRefusal, SessionTrust};
use motey::store::Store;
use tokio_util::sync::CancellationToken;

/// How long anything may take on a loaded CI machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` until it holds; panics naming `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Like [`eventually`] for an async check.
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "broker not listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mosquitto_binary() -> PathBuf {
    for candidate in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    PathBuf::from("mosquitto")
}

/// A mosquitto broker of its own, killed when dropped.
pub struct Mosquitto {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Plain MQTT on a free loopback port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|port, _| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n")
        })
    }

    /// With a configuration made from the port and the broker's own directory.
    pub fn start_with(config: impl FnOnce(u16, &Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = format!("{}persistence false\n", config(port, dir.path()));
        std::fs::write(dir.path().join("mosquitto.conf"), text).unwrap();
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto runs (Debian package mosquitto; scripts/setup-deps.sh installs it)");
        self.child = Some(child);
        wait_listening(self.port);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Makes the broker read its configuration and password file again (SIGHUP); its
    /// clients stay connected.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn key() -> ClusterKey {
    ClusterKey::from_secret("the cluster secret of the tests")
}

/// Node `node`'s identity in the peer protocol, its static key proven with `key`.
pub fn trust_with_key(node: &str, key: ClusterKey) -> Arc<dyn SessionTrust> {
    Arc::new(ClusterKeyTrust::new(
        NodeId(node.into()),
        key,
        rand::random(),
    ))
}

/// Node `node`'s identity in the peer protocol, in the tests' cluster.
pub fn trust(node: &str) -> Arc<dyn SessionTrust> {
    trust_with_key(node, key())
}

pub fn node_info(id: &str) -> NodeInfo {
    NodeInfo {
        id: NodeId(id.into()),
        name: format!("node {id}"),
        addresses: vec!["127.0.0.1".into()],
        rest_port: 5023,
        peer_port: 5091,
        last_seen: None,
        version: env!("CARGO_PKG_VERSION").into(),
        capabilities_digest: String::new(),
    }
}

/// Quick heartbeats and expiry, so that the tests do not wait for production times.
pub fn fast_liveness() -> Liveness {
    Liveness {
        suspect_after: Duration::from_secs(3),
        gone_after: Duration::from_secs(6),
    }
}

pub fn fast_settings(port: u16) -> DiscoverySettings {
    let mut settings = DiscoverySettings::new("127.0.0.1", port);
    settings.heartbeat_interval = Duration::from_millis(500);
    settings.keepalive = Duration::from_secs(5);
    settings.reconnect_min = Duration::from_millis(100);
    settings.reconnect_max = Duration::from_millis(500);
    settings.topic_prefix = format!("motey-test-{port}");
    settings
}

/// One agent's discovery, with its own store.
pub struct TestNode {
    pub id: NodeId,
    pub store: Store,
    pub directory: PeerDirectory,
    pub discovery: Option<DiscoveryHandle>,
    pub shutdown: CancellationToken,
}

impl TestNode {
    pub fn start(id: &str, settings: DiscoverySettings, liveness: Liveness) -> TestNode {
        TestNode::start_with_key(id, settings, liveness, key())
    }

    pub fn start_with_key(
        id: &str,
        settings: DiscoverySettings,
        liveness: Liveness,
        key: ClusterKey,
    ) -> TestNode {
        let store = Store::temporary().unwrap();
        let directory = PeerDirectory::open(node_info(id), store.nodes.clone(), liveness).unwrap();
        let shutdown = CancellationToken::new();
        let discovery =
            Discovery::start(settings, directory.clone(), key, shutdown.clone()).unwrap();
        TestNode {
            id: NodeId(id.into()),
            store,
            directory,
            discovery: Some(discovery),
            shutdown,
        }
    }

    pub fn peer(&self, id: &str) -> Option<Peer> {
        self.directory
            .list()
            .into_iter()
            .find(|peer| peer.info.id.as_str() == id && !peer.this_node)
    }

    pub fn state_of(&self, id: &str) -> Option<PeerState> {
        self.peer(id).map(|peer| peer.state)
    }

    /// Ids of the peers believed alive.
    pub fn alive_ids(&self) -> Vec<String> {
        self.directory
            .alive()
            .into_iter()
            .map(|info| info.id.0)
            .collect()
    }

    pub fn sees_alive(&self, ids: &[&str]) -> bool {
        let mut alive = self.alive_ids();
        alive.sort();
        let mut expected: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        expected.sort();
        alive == expected
    }

    pub fn is_connected(&self) -> bool {
        self.discovery
            .as_ref()
            .is_some_and(|discovery| discovery.is_connected())
    }

    /// Graceful stop: announces the leave.
    pub async fn leave(&mut self) {
        if let Some(discovery) = self.discovery.take() {
            discovery.leave().await;
        }
    }

    /// Stops without a goodbye, as a crash would.
    pub fn crash(&mut self) {
        if let Some(discovery) = self.discovery.take() {
            discovery.abort();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A peer handler that records what it was asked, answers from fixed data, and can be
/// told to never answer deployments (a node that hangs mid-request).
#[derive(Default)]
pub struct RecordingHandler {
    pub node: String,
    pub capabilities: Vec<Capability>,
    pub calls: AtomicUsize,
    pub deployments: Mutex<Vec<ImageDeployment>>,
    pub terminated: Mutex<Vec<(ServiceId, String)>>,
    pub hang_deployments: bool,
}

impl RecordingHandler {
    pub fn new(node: &str) -> RecordingHandler {
        RecordingHandler {
            node: node.into(),
            capabilities: vec![Capability {
                capability: "optical-probe".into(),
                capability_type: "hardware".into(),
            }],
            ..RecordingHandler::default()
        }
    }

    pub fn hanging(node: &str) -> RecordingHandler {
        RecordingHandler {
            hang_deployments: true,
            ..RecordingHandler::new(node)
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn status(&self, service: &ServiceId, image_id: &str, state: ImageState) -> ImageStatus {
        ImageStatus {
            service_id: service.clone(),
            image_id: image_id.into(),
            node: NodeId(self.node.clone()),
            state,
            reason: None,
            container_id: Some(format!("{service}-{image_id}")),
        }
    }
}

#[async_trait::async_trait]
impl PeerHandler for RecordingHandler {
    async fn capabilities(&self) -> Vec<Capability> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.capabilities.clone()
    }

    async fn deploy_image(
        &self,
        _sender: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, PeerRefusal> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hang_deployments {
            std::future::pending::<()>().await;
        }
        let status = self.status(
            &deployment.service_id,
            &deployment.image.id,
            ImageState::Instantiating,
        );
        self.deployments.lock().unwrap().push(deployment);
        Ok(status)
    }

    async fn image_status(
        &self,
        _sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, PeerRefusal> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if image_id == "unknown" {
            return Err(PeerRefusal::new(
                ErrorCode::NotFound,
                format!("no image {image_id} of service {service} here"),
            ));
        }
        Ok(self.status(service, image_id, ImageState::Running))
    }

    async fn terminate_image(
        &self,
        _sender: &NodeId,
        service: &ServiceId,
        image_id: &str,
    ) -> Result<(), PeerRefusal> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.terminated
            .lock()
            .unwrap()
            .push((service.clone(), image_id.into()));
        Ok(())
    }
}

pub fn shared(handler: RecordingHandler) -> Arc<RecordingHandler> {
    Arc::new(handler)
}
