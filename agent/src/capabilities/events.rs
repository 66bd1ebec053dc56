//! Hardware events (Motey, sections 4.2.4 and 5.4.5): local programs — a udev rule, a
//! probe's driver, `motey capability add` — publish on a ZeroMQ IPC endpoint where the
//! agent's SUB socket is bound:
//!
//! ```text
//! capabilityevent#{"capability":"zigbee","capability_type":"hardware","action":"add"}
//! ```
//!
//! `action` is `add` or `remove`; Motey's events had no action and meant `add`, so a
//! missing action still adds. Motey's Python publishers wrote the JSON with single quotes
//! (`{'capability': 'zigbee', ...}`); that is accepted too. Anything else is logged and
//! dropped (at most one warning per 10 s, naming the frame; the others are counted).
//! The socket file is created owner-only (0600), in a directory others cannot write:
//! whoever can publish changes the node's capabilities, so a publisher runs as the
//! agent's user (or root). Valid events are applied to the capabilities repository and
//! announced on a broadcast channel (for the discovery to republish the capabilities digest, and for the
//! orchestrator to move images whose capability went away).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, XPubSocket, ZmqMessage};

use crate::domain::Capability;
use crate::store::{Record, Repository};

/// The topic every capability event starts with.
pub const TOPIC: &str = "capabilityevent";

/// Largest event accepted.
const MAX_EVENT_BYTES: usize = 4096;

/// Why an event endpoint cannot be used or an event is refused.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("capability events endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("malformed capability event: {0}")]
    Malformed(String),
    #[error("no agent listens for capability events on {endpoint}: {reason}")]
    NoListener { endpoint: String, reason: String },
    #[error("capability event not delivered to {endpoint}: {reason}")]
    Send { endpoint: String, reason: String },
}

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityAction {
    Add,
    Remove,
}

impl std::str::FromStr for CapabilityAction {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "add" => Ok(CapabilityAction::Add),
            "remove" => Ok(CapabilityAction::Remove),
            other => Err(format!("{other:?} is not add or remove")),
        }
    }
}

/// One hardware event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityEvent {
    pub capability: String,
    pub capability_type: String,
    pub action: CapabilityAction,
}

#[derive(Deserialize)]
struct WireEvent {
    capability: String,
    capability_type: String,
    #[serde(default)]
    action: Option<CapabilityAction>,
}

impl CapabilityEvent {
    pub fn new(
        capability: impl Into<String>,
        capability_type: impl Into<String>,
        action: CapabilityAction,
    ) -> Result<CapabilityEvent, EventError> {
        let event = CapabilityEvent {
            capability: capability.into(),
            capability_type: capability_type.into(),
            action,
        };
        check_name("capability", &event.capability)?;
        check_name("capability_type", &event.capability_type)?;
        Ok(event)
    }

    /// Parses one message: the topic, `#`, then the JSON event.
    pub fn parse(message: &[u8]) -> Result<CapabilityEvent, EventError> {
        if message.len() > MAX_EVENT_BYTES {
            return Err(EventError::Malformed(format!(
                "{} bytes, more than {MAX_EVENT_BYTES}",
                message.len()
            )));
        }
        let text = std::str::from_utf8(message)
            .map_err(|_| EventError::Malformed("not UTF-8 text".into()))?;
        let (topic, body) = text
            .split_once('#')
            .ok_or_else(|| EventError::Malformed(format!("no '#' after the topic {TOPIC}")))?;
        if topic != TOPIC {
            return Err(EventError::Malformed(format!(
                "topic {topic:?} is not {TOPIC}"
            )));
        }
        let wire: WireEvent = match serde_json::from_str(body) {
            Ok(wire) => wire,
            // Motey's publishers sent Python's repr of a dict.
            Err(error) if body.contains('\'') && !body.contains('"') => {
                serde_json::from_str(&body.replace('\'', "\""))
                    .map_err(|_| EventError::Malformed(error.to_string()))?
            }
            Err(error) => return Err(EventError::Malformed(error.to_string())),
        };
        CapabilityEvent::new(
            wire.capability,
            wire.capability_type,
            wire.action.unwrap_or(CapabilityAction::Add),
        )
    }

    /// The message to publish for this event.
    pub fn to_message(&self) -> String {
        format!(
            "{TOPIC}#{}",
            serde_json::to_string(self).expect("an event serializes")
        )
    }

    pub fn capability(&self) -> Capability {
        Capability {
            capability: self.capability.clone(),
            capability_type: self.capability_type.clone(),
        }
    }
}

fn check_name(field: &str, value: &str) -> Result<(), EventError> {
    let valid = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.:/+".contains(c));
    if valid {
        Ok(())
    } else {
        Err(EventError::Malformed(format!(
            "{field}: {value:?} is not a name (1-128 letters, digits or -_.:/+)"
        )))
    }
}

/// A capability event that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityChange {
    pub capability: Capability,
    pub action: CapabilityAction,
    /// Whether the repository changed (adding a known capability or removing an unknown
    /// one changes nothing).
    pub changed: bool,
}

/// The bound hardware event endpoint; stops with its shutdown token.
pub struct CapabilityEvents {
    endpoint: String,
    changes: broadcast::Sender<CapabilityChange>,
    task: JoinHandle<()>,
}

impl CapabilityEvents {
    /// Binds the SUB socket on `endpoint` (`ipc://PATH`, or `tcp://` for tests) and applies
    /// events to `repository` until `shutdown` is cancelled. A socket file left behind by
    /// an agent that crashed is replaced; one an agent still listens on is an error.
    pub async fn bind(
        endpoint: &str,
        repository: Arc<dyn Repository<Capability>>,
        shutdown: CancellationToken,
    ) -> Result<CapabilityEvents, EventError> {
        let endpoint_error = |reason: String| EventError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let socket_path = ipc_path(endpoint);
        if let Some(path) = &socket_path {
            prepare_socket_path(path).map_err(endpoint_error)?;
        }
        let mut socket = SubSocket::new();
        socket
            .subscribe(TOPIC)
            .await
            .map_err(|e| endpoint_error(e.to_string()))?;
        let bound = match &socket_path {
            Some(path) => {
                bind_owner_only(&mut socket, path)
                    .await
                    .map_err(endpoint_error)?;
                endpoint.to_owned()
            }
            None => socket
                .bind(endpoint)
                .await
                .map_err(|e| endpoint_error(e.to_string()))?
                .to_string(),
        };
        tracing::info!(endpoint = %bound, "listening for capability events");
        let (changes, _) = broadcast::channel(64);
        let task = tokio::spawn(receive(
            socket,
            repository,
            changes.clone(),
            shutdown,
            socket_path,
        ));
        Ok(CapabilityEvents {
            endpoint: bound,
            changes,
            task,
        })
    }

    /// The bound endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Applied events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CapabilityChange> {
        self.changes.subscribe()
    }

    /// Waits until the endpoint is closed (after the shutdown token was cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn ipc_path(endpoint: &str) -> Option<PathBuf> {
    endpoint
        .strip_prefix("ipc://")
        .filter(|path| !path.starts_with('@'))
        .map(PathBuf::from)
}

/// The directory a socket path lies in (`.` for a bare file name).
fn socket_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn prepare_socket_path(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let parent = socket_dir(path);
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let mode = std::fs::metadata(parent)
        .map_err(|e| format!("cannot read {}: {e}", parent.display()))?
        .permissions()
        .mode();
    // Anyone who can write there could swap the socket for their own and read every
    // event meant for the agent, or replace it between start-ups.
    if mode & 0o002 != 0 {
        return Err(format!(
            "its directory {} is writable by others (mode {:o}); use a directory only the agent's user can write",
            parent.display(),
            mode & 0o7777
        ));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err("another agent is listening on it".into());
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Binds `socket` on `path` so that only the agent's user can ever connect: whoever can
/// send here changes the node's capabilities. The socket is bound inside a fresh
/// directory only the owner can enter, made owner-only (0600) and only then moved to
/// `path`, so there is no moment at which it is both reachable and open to others.
async fn bind_owner_only(socket: &mut SubSocket, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let staging = socket_dir(path).join(format!(".capabilities-{}.bind", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    let staged = staging.join("socket");
    let bound = async {
        socket
            .bind(&format!("ipc://{}", staged.display()))
            .await
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make the socket owner-only: {e}"))?;
        std::fs::rename(&staged, path)
            .map_err(|e| format!("cannot move the socket into place: {e}"))
    }
    .await;
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// At most one warning per this time for bad events (whoever may publish can send them
/// in a loop); the others are counted.
const BAD_EVENT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The bytes of an event message: one frame `topic#json`, as Motey sends, or two frames
/// (topic, json), joined; larger messages are refused before they are copied.
fn event_bytes(frames: &[bytes::Bytes]) -> Result<Vec<u8>, String> {
    let total: usize = frames.iter().map(|frame| frame.len()).sum::<usize>() + 1;
    if total > MAX_EVENT_BYTES + 1 {
        return Err(format!(
            "{} bytes in {} frame(s), more than {MAX_EVENT_BYTES}",
            total - 1,
            frames.len()
        ));
    }
    match frames {
        [single] => Ok(single.to_vec()),
        [topic, body] => Ok([topic.as_ref(), b"#", body.as_ref()].concat()),
        _ => Err(format!("{} frames, expected 1 or 2", frames.len())),
    }
}

async fn receive(
    mut socket: SubSocket,
    repository: Arc<dyn Repository<Capability>>,
    changes: broadcast::Sender<CapabilityChange>,
    shutdown: CancellationToken,
    socket_path: Option<PathBuf>,
) {
    let bad_events = crate::logging::RateLimit::new(BAD_EVENT_LOG_INTERVAL);
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = socket.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "capability event receive failed");
                continue;
            }
        };
        let frames = message.into_vec();
        let parsed = event_bytes(&frames).and_then(|bytes| {
            CapabilityEvent::parse(&bytes).map_err(|error| {
                let shown: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                format!("{error}; the frame was {shown:?}")
            })
        });
        let event = match parsed {
            Ok(event) => event,
            Err(reason) => {
                if let Some(suppressed) = bad_events.admit() {
                    tracing::warn!("capability event dropped: {reason}{suppressed}");
                }
                continue;
            }
        };
        let capability = event.capability();
        let applied = match event.action {
            CapabilityAction::Add => {
                repository
                    .get(&capability.key())
                    .and_then(|known| match known {
                        Some(_) => Ok(false),
                        None => repository.put(&capability).map(|()| true),
                    })
            }
            CapabilityAction::Remove => repository.remove(&capability.key()),
        };
        match applied {
            Ok(changed) => {
                tracing::info!(
                    capability = %capability.capability,
                    capability_type = %capability.capability_type,
                    action = ?event.action,
                    changed,
                    "capability event applied"
                );
                let _ = changes.send(CapabilityChange {
                    capability,
                    action: event.action,
                    changed,
                });
            }
            Err(error) => tracing::error!(%error, "capability event not stored"),
        }
    }
    drop(socket);
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
}

/// Publishes one event to the agent listening on `endpoint` (what `motey capability
/// add|remove` does). It waits until the agent's subscription has arrived before sending,
/// so the event is not lost to the PUB/SUB start-up race, and fails if no agent answers
/// within a few seconds.
pub async fn publish_capability_event(
    endpoint: &str,
    capability: &str,
    capability_type: &str,
    action: CapabilityAction,
) -> Result<(), EventError> {
    let event = CapabilityEvent::new(capability, capability_type, action)?;
    publish_messages(endpoint, &[event.to_message().into_bytes()]).await
}

/// Publishes raw messages, in order, over one connection to the agent listening on
/// `endpoint` (for publishers that build their own events).
pub async fn publish_messages(endpoint: &str, messages: &[Vec<u8>]) -> Result<(), EventError> {
    let no_listener = |reason: String| EventError::NoListener {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let wait = Duration::from_secs(5);
    let mut options = SocketOptions::default();
    options.connect_timeout(wait);
    // An XPUB socket is a PUB socket that hands the subscriptions it receives to us.
    let mut socket = XPubSocket::with_options(options);
    match tokio::time::timeout(wait, socket.connect(endpoint)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(no_listener(error.to_string())),
        Err(_) => return Err(no_listener("timed out connecting".into())),
    }
    let subscribed = async {
        loop {
            let message = socket.recv().await?;
            let subscribes = message.get(0).is_some_and(|frame| {
                frame.first() == Some(&1) && TOPIC.as_bytes().starts_with(&frame[1..])
            });
            if subscribes {
                return Ok::<(), zeromq::ZmqError>(());
            }
        }
    };
    match tokio::time::timeout(wait, subscribed).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(no_listener(error.to_string())),
        Err(_) => return Err(no_listener("it did not subscribe in time".into())),
    }
    for message in messages {
        socket
            .send(ZmqMessage::from(message.clone()))
            .await
            .map_err(|error| EventError::Send {
                endpoint: endpoint.to_owned(),
                reason: error.to_string(),
            })?;
    }
    // Sending only queues the messages; closing at once could lose them.
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_parse_in_our_and_moteys_forms() {
        let event = CapabilityEvent::parse(
            br#"capabilityevent#{"capability":"zigbee","capability_type":"hardware","action":"remove"}"#,
        )
        .unwrap();
        assert_eq!(event.action, CapabilityAction::Remove);
        assert_eq!(event.capability().capability, "zigbee");

        let motey = CapabilityEvent::parse(
            b"capabilityevent#{'capability': 'zigbee', 'capability_type': 'hardware'}",
        )
        .unwrap();
        assert_eq!(motey.action, CapabilityAction::Add);

        let again = CapabilityEvent::parse(event.to_message().as_bytes()).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn malformed_events_say_why() {
        let cases: [&[u8]; 7] = [
            b"capabilityevent",
            b"otherevent#{}",
            b"capabilityevent#{not json",
            br#"capabilityevent#{"capability":"","capability_type":"hardware"}"#,
            br#"capabilityevent#{"capability":"a b","capability_type":"hardware"}"#,
            br#"capabilityevent#{"capability":"zigbee","capability_type":"hardware","action":"toggle"}"#,
            b"capabilityevent#\xff\xfe",
        ];
        for case in cases {
            assert!(
                matches!(CapabilityEvent::parse(case), Err(EventError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn oversized_and_misframed_messages_are_refused_naming_the_frames() {
        let big = bytes::Bytes::from(vec![b'x'; MAX_EVENT_BYTES + 1]);
        let error = event_bytes(&[big]).unwrap_err();
        assert!(error.contains("4097 bytes in 1 frame(s)"), "{error}");
        let frames = [b"a", b"b", b"c"].map(|frame| bytes::Bytes::from_static(frame));
        assert_eq!(
            event_bytes(&frames).unwrap_err(),
            "3 frames, expected 1 or 2"
        );
        let joined = event_bytes(&[
            bytes::Bytes::from_static(b"capabilityevent"),
            bytes::Bytes::from_static(b"{}"),
        ])
        .unwrap();
        assert_eq!(joined, b"capabilityevent#{}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = CapabilityEvent::parse(&bytes);
        }

        #[test]
        fn parsing_event_like_text_never_panics(body in r#"\{("[a-z_]{1,16}":"[ -~]{0,12}",?){0,4}\}"#) {
            let _ = CapabilityEvent::parse(format!("capabilityevent#{body}").as_bytes());
        }
    }
}
