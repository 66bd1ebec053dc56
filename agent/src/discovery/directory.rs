//! What this node knows of the other nodes of the fog: their metadata, when each was last
//! heard of and whether it is believed alive, suspect or gone. Kept in memory, persisted in
//! the store's nodes repository, and announced to the rest of the agent as [`PeerEvent`]s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::domain::{NodeId, NodeInfo};
use crate::lifecycle::PhaseReport;
use crate::store::{Repository, StoreError};

/// How alive a peer is believed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Heard of within the suspect time.
    Alive,
    /// Not heard of for a while; not used for new placements, but nothing is moved yet.
    Suspect,
    /// Crashed (its last will arrived) or silent for longer than the gone time: images it
    /// ran for others should be placed elsewhere.
    Gone,
}

/// One node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub info: NodeInfo,
    pub state: PeerState,
    /// When the node was last heard of; `None` for this node.
    pub last_seen: Option<DateTime<Utc>>,
    /// Whether this entry is the node answering.
    #[serde(default)]
    pub this_node: bool,
    /// Why the node is suspect or gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node's lifecycle phase as it last announced it (`None` for nodes that do not
    /// announce one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PhaseReport>,
}

/// What changed about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A node was heard of: for the first time, or again after being suspect or gone.
    Alive {
        info: NodeInfo,
        previous: Option<PeerState>,
    },
    /// A known, alive node announced different metadata (addresses, capabilities digest...).
    Updated(NodeInfo),
    /// A node has not been heard of for the suspect time.
    Suspect(NodeId),
    /// A node crashed or stayed silent for the gone time.
    Gone { node: NodeId, reason: String },
    /// A node announced that it leaves the fog; it is forgotten.
    Left(NodeId),
}

/// When silence makes a peer suspect, then gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub suspect_after: Duration,
    pub gone_after: Duration,
}

impl Liveness {
    pub fn from_config(mqtt: &crate::config::Mqtt) -> Liveness {
        Liveness {
            suspect_after: Duration::from_secs(mqtt.peer_suspect_after_secs),
            gone_after: Duration::from_secs(mqtt.peer_gone_after_secs),
        }
    }
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            suspect_after: Duration::from_secs(15),
            gone_after: Duration::from_secs(30),
        }
    }
}

struct Entry {
    info: NodeInfo,
    state: PeerState,
    reason: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    /// Monotonic time of the last message, for expiry (immune to wall-clock jumps).
    heard_at: Instant,
    /// Connection epoch of the node's latest announcement (see `discovery`).
    epoch: u64,
    phase: Option<PhaseReport>,
}

struct Inner {
    this_node: NodeInfo,
    /// This node's phase, announced with its metadata.
    this_phase: Option<PhaseReport>,
    peers: HashMap<NodeId, Entry>,
    /// Silence is only counted from here on: a node that was itself cut off from the broker
    /// cannot tell whether the others were silent.
    counting_since: Instant,
    /// Whether this node currently hears the broker; no one expires while it does not.
    listening: bool,
}

/// The peers of this node (shared; clones see the same directory).
#[derive(Clone)]
pub struct PeerDirectory {
    inner: Arc<Mutex<Inner>>,
    repository: Arc<dyn Repository<NodeInfo>>,
    liveness: Liveness,
    events: broadcast::Sender<PeerEvent>,
}

impl std::fmt::Debug for PeerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDirectory")
            .field("this_node", &self.this_node().id)
            .field("liveness", &self.liveness)
            .finish()
    }
}

impl PeerDirectory {
    /// The directory of `this_node`, starting from the peers persisted in `repository`.
    /// Persisted peers start as suspect: they were known, but have not been heard of since
    /// this node started; they turn alive with their first announcement or gone if they
    /// stay silent for the gone time.
    pub fn open(
        this_node: NodeInfo,
        repository: Arc<dyn Repository<NodeInfo>>,
        liveness: Liveness,
    ) -> Result<PeerDirectory, StoreError> {
        let now = Instant::now();
        let mut peers = HashMap::new();
        for info in repository.list()? {
            if info.id == this_node.id {
                continue;
            }
            peers.insert(
                info.id.clone(),
                Entry {
                    last_seen: info.last_seen,
                    info,
                    state: PeerState::Suspect,
                    reason: Some("not heard of since this node started".into()),
                    heard_at: now,
                    epoch: 0,
                    phase: None,
                },
            );
        }
        let mut stored_self = this_node.clone();
        stored_self.last_seen = None;
        repository.put(&stored_self)?;
        let (events, _) = broadcast::channel(256);
        Ok(PeerDirectory {
            inner: Arc::new(Mutex::new(Inner {
                this_node: stored_self,
                this_phase: None,
                peers,
                counting_since: now,
                listening: false,
            })),
            repository,
            liveness,
            events,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Changes of peers from now on. An event is sent before its change shows in
    /// [`PeerDirectory::list`], so a reader who saw a change finds its event. A receiver that lags behind by more than 256 events
    /// gets `RecvError::Lagged` and should re-read [`PeerDirectory::list`].
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    /// This node's own metadata, as it announces it.
    pub fn this_node(&self) -> NodeInfo {
        self.lock().this_node.clone()
    }

    /// Changes this node's metadata (e.g. a new capabilities digest); the discovery
    /// announces it at its next heartbeat, or at once through `DiscoveryHandle::announce`.
    pub fn update_this_node(&self, change: impl FnOnce(&mut NodeInfo)) -> NodeInfo {
        let mut inner = self.lock();
        let id = inner.this_node.id.clone();
        change(&mut inner.this_node);
        // The id is the key of everything; it cannot change while running.
        inner.this_node.id = id;
        let info = inner.this_node.clone();
        if let Err(error) = self.repository.put(&info) {
            tracing::warn!(%error, "cannot persist this node's metadata");
        }
        info
    }

    /// This node's phase as announced.
    pub fn this_phase(&self) -> Option<PhaseReport> {
        self.lock().this_phase.clone()
    }

    /// Records this node's phase; the discovery announces it at its next heartbeat, or
    /// at once through `DiscoveryHandle::announce`.
    pub fn set_this_phase(&self, phase: PhaseReport) {
        self.lock().this_phase = Some(phase);
    }

    /// Every known node, this node first, then the others by id.
    pub fn list(&self) -> Vec<Peer> {
        let inner = self.lock();
        let mut peers: Vec<Peer> = inner
            .peers
            .values()
            .map(|entry| Peer {
                info: entry.info.clone(),
                state: entry.state,
                last_seen: entry.last_seen,
                this_node: false,
                reason: entry.reason.clone(),
                phase: entry.phase.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        peers.insert(
            0,
            Peer {
                info: inner.this_node.clone(),
                state: PeerState::Alive,
                last_seen: None,
                this_node: true,
                reason: None,
                phase: inner.this_phase.clone(),
            },
        );
        peers
    }

    /// The other nodes currently believed alive (not this node), by id.
    pub fn alive(&self) -> Vec<NodeInfo> {
        let inner = self.lock();
        let mut alive: Vec<NodeInfo> = inner
            .peers
            .values()
            .filter(|entry| entry.state == PeerState::Alive)
            .map(|entry| entry.info.clone())
            .collect();
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        alive
    }

    /// One peer (or this node).
    pub fn get(&self, node: &NodeId) -> Option<Peer> {
        self.list().into_iter().find(|peer| &peer.info.id == node)
    }

    /// Forgets a peer (e.g. one that is gone for good).
    pub fn forget(&self, node: &NodeId) -> bool {
        let mut inner = self.lock();
        let removed = inner.peers.remove(node).is_some();
        if removed {
            self.persist_removal(node);
            let _ = self.events.send(PeerEvent::Left(node.clone()));
        }
        drop(inner);
        removed
    }

    /// A node announced itself (on request, on connecting or as its heartbeat).
    pub fn observe(&self, info: NodeInfo, epoch: u64, now: Instant) {
        self.observe_with_phase(info, None, epoch, now);
    }

    /// As [`PeerDirectory::observe`], with the lifecycle phase the node announced.
    pub fn observe_with_phase(
        &self,
        mut info: NodeInfo,
        phase: Option<PhaseReport>,
        epoch: u64,
        now: Instant,
    ) {
        let this_id = self.lock().this_node.id.clone();
        if info.id == this_id {
            return;
        }
        let seen_at = Utc::now();
        info.last_seen = Some(seen_at);
        let mut inner = self.lock();
        let event = match inner.peers.get_mut(&info.id) {
            None => {
                tracing::info!(node = %info.id, name = %info.name, "node joined");
                self.persist(&info);
                inner.peers.insert(
                    info.id.clone(),
                    Entry {
                        info: info.clone(),
                        state: PeerState::Alive,
                        reason: None,
                        last_seen: Some(seen_at),
                        heard_at: now,
                        epoch,
                        phase,
                    },
                );
                Some(PeerEvent::Alive {
                    info,
                    previous: None,
                })
            }
            Some(entry) => {
                entry.heard_at = now;
                entry.last_seen = Some(seen_at);
                entry.epoch = epoch;
                let phase_changed = entry.phase.as_ref().map(|p| (p.phase, &p.reason))
                    != phase.as_ref().map(|p| (p.phase, &p.reason));
                if phase_changed {
                    tracing::info!(node = %info.id, phase = ?phase.as_ref().map(|p| p.phase), "node phase changed");
                }
                entry.phase = phase;
                let changed = !same_metadata(&entry.info, &info) || phase_changed;
                entry.info = info.clone();
                if entry.state != PeerState::Alive {
                    let previous = entry.state;
                    tracing::info!(node = %info.id, ?previous, "node is alive again");
                    entry.state = PeerState::Alive;
                    entry.reason = None;
                    self.persist(&info);
                    Some(PeerEvent::Alive {
                        info,
                        previous: Some(previous),
                    })
                } else if changed {
                    tracing::info!(node = %info.id, digest = %info.capabilities_digest, "node metadata changed");
                    self.persist(&info);
                    Some(PeerEvent::Updated(info))
                } else {
                    None
                }
            }
        };
        // Sent while the change is not yet visible, so that whoever sees it also finds
        // its event in the channel.
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
        drop(inner);
    }

    /// A node announced that it leaves (graceful stop). Announcements of an older
    /// connection than the latest one heard of are ignored.
    pub fn leave(&self, node: &NodeId, epoch: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.peers.get(node) else {
            return;
        };
        if epoch < entry.epoch {
            tracing::debug!(%node, epoch, known = entry.epoch, "ignoring the leave of an older connection");
            return;
        }
        inner.peers.remove(node);
        // Store and channel are updated under the lock, so that no reader sees the
        // change in one place and not yet in the other.
        self.persist_removal(node);
        let _ = self.events.send(PeerEvent::Left(node.clone()));
        drop(inner);
        tracing::info!(%node, "node left");
    }

    /// The broker announced a node's last will: its connection broke without a goodbye.
    /// Only the will of the connection last heard of counts; an older connection's will
    /// can arrive after the node reconnected.
    pub fn lost(&self, node: &NodeId, epoch: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.peers.get_mut(node) else {
            return;
        };
        // As Sparkplug's birth/death sequence: a will counts only for the connection whose
        // birth this node heard. After this node restarted it knows no connection of the
        // peer yet (epoch 0), and a will arriving then may be a stale one of a connection
        // older than the peer's current one; a real crash is still noticed by silence.
        if epoch != entry.epoch {
            tracing::debug!(%node, epoch, known = entry.epoch, "ignoring the last will of another connection");
            return;
        }
        self.mark_gone(
            node,
            entry,
            "its connection to the broker broke (last will)",
        );
    }

    /// The node's certificate was revoked: it is gone, whatever it announces, so that the
    /// owners of the images it runs place them elsewhere.
    pub fn revoked(&self, node: &NodeId) {
        let mut inner = self.lock();
        let Some(entry) = inner.peers.get_mut(node) else {
            return;
        };
        self.mark_gone(node, entry, "its certificate was revoked");
    }

    /// Marks a peer gone for `reason` (unless it is already), keeps that and tells the
    /// subscribers; the caller holds the directory's lock.
    fn mark_gone(&self, node: &NodeId, entry: &mut Entry, reason: &str) {
        if entry.state == PeerState::Gone {
            return;
        }
        tracing::warn!(%node, %reason, "node gone");
        entry.state = PeerState::Gone;
        entry.reason = Some(reason.to_owned());
        let mut info = entry.info.clone();
        info.last_seen = entry.last_seen;
        self.persist(&info);
        let _ = self.events.send(PeerEvent::Gone {
            node: node.clone(),
            reason: reason.to_owned(),
        });
    }

    /// This node (re)connected to the broker: silence counts from now on.
    pub fn broker_connected(&self, now: Instant) {
        let mut inner = self.lock();
        inner.listening = true;
        inner.counting_since = now;
    }

    /// This node lost the broker: it stops judging the others until it hears it again.
    pub fn broker_disconnected(&self) {
        self.lock().listening = false;
    }

    /// Moves silent peers to suspect, then gone.
    pub fn expire(&self, now: Instant) {
        let mut inner = self.lock();
        if !inner.listening {
            return;
        }
        let counting_since = inner.counting_since;
        let mut events = Vec::new();
        let mut persist = Vec::new();
        for entry in inner.peers.values_mut() {
            let silent = now.saturating_duration_since(entry.heard_at.max(counting_since));
            let next = if silent >= self.liveness.gone_after {
                PeerState::Gone
            } else if silent >= self.liveness.suspect_after {
                PeerState::Suspect
            } else {
                continue;
            };
            // Gone is left only by an announcement, never by the clock.
            if entry.state == next || entry.state == PeerState::Gone {
                continue;
            }
            let reason = format!("not heard of for {} s", silent.as_secs());
            let node = entry.info.id.clone();
            match next {
                PeerState::Suspect => {
                    tracing::info!(%node, %reason, "node suspect");
                    events.push(PeerEvent::Suspect(node));
                }
                _ => {
                    tracing::warn!(%node, %reason, "node gone");
                    events.push(PeerEvent::Gone {
                        node,
                        reason: reason.clone(),
                    });
                }
            }
            entry.state = next;
            entry.reason = Some(reason);
            let mut info = entry.info.clone();
            info.last_seen = entry.last_seen;
            persist.push(info);
        }
        for info in persist {
            self.persist(&info);
        }
        for event in events {
            let _ = self.events.send(event);
        }
        drop(inner);
    }

    fn persist(&self, info: &NodeInfo) {
        if let Err(error) = self.repository.put(info) {
            tracing::warn!(node = %info.id, %error, "cannot persist node");
        }
    }

    fn persist_removal(&self, node: &NodeId) {
        if let Err(error) = self.repository.remove(node.as_str()) {
            tracing::warn!(%node, %error, "cannot remove node from the store");
        }
    }
}

fn same_metadata(a: &NodeInfo, b: &NodeInfo) -> bool {
    a.name == b.name
        && a.addresses == b.addresses
        && a.rest_port == b.rest_port
        && a.peer_port == b.peer_port
        && a.version == b.version
        && a.capabilities_digest == b.capabilities_digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId(id.into()),
            name: format!("{id}-name"),
            addresses: vec!["127.0.0.1".into()],
            rest_port: 5023,
            peer_port: 5091,
            last_seen: None,
            version: "0.1.0".into(),
            capabilities_digest: String::new(),
        }
    }

    fn liveness() -> Liveness {
        Liveness {
            suspect_after: Duration::from_secs(10),
            gone_after: Duration::from_secs(20),
        }
    }

    fn directory(store: &Store) -> PeerDirectory {
        PeerDirectory::open(node("self"), store.nodes.clone(), liveness()).unwrap()
    }

    #[tokio::test]
    async fn peers_join_expire_and_come_back() {
        let store = Store::temporary().unwrap();
        let directory = directory(&store);
        let mut events = directory.subscribe();
        let start = Instant::now();
        directory.broker_connected(start);
        directory.observe(node("b"), 1, start);
        directory.observe(node("self"), 1, start);
        let alive = directory.alive();
        assert_eq!(alive.len(), 1, "this node is not its own peer");
        assert_eq!(alive[0].id, NodeId("b".into()));
        assert!(alive[0].last_seen.is_some());
        assert!(matches!(
            events.try_recv().unwrap(),
            PeerEvent::Alive { previous: None, .. }
        ));

        directory.expire(start + Duration::from_secs(11));
        assert_eq!(
            events.try_recv().unwrap(),
            PeerEvent::Suspect(NodeId("b".into()))
        );
        assert!(directory.alive().is_empty());

        directory.expire(start + Duration::from_secs(21));
        assert!(matches!(events.try_recv().unwrap(), PeerEvent::Gone { .. }));
        let listed = directory.list();
        assert!(listed[0].this_node);
        assert_eq!(listed[1].state, PeerState::Gone);

        directory.observe(node("b"), 2, start + Duration::from_secs(22));
        assert!(matches!(
            events.try_recv().unwrap(),
            PeerEvent::Alive {
                previous: Some(PeerState::Gone),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn nobody_expires_while_this_node_is_cut_off() {
        let store = Store::temporary().unwrap();
        let directory = directory(&store);
        let start = Instant::now();
        directory.broker_connected(start);
        directory.observe(node("b"), 1, start);
        directory.broker_disconnected();
        directory.expire(start + Duration::from_secs(60));
        assert_eq!(directory.alive().len(), 1);
        // After reconnecting, peers get the full suspect time to announce themselves.
        directory.broker_connected(start + Duration::from_secs(60));
        directory.expire(start + Duration::from_secs(65));
        assert_eq!(directory.alive().len(), 1);
        directory.expire(start + Duration::from_secs(71));
        assert!(directory.alive().is_empty());
    }

    #[tokio::test]
    async fn last_will_counts_only_for_the_current_connection() {
        let store = Store::temporary().unwrap();
        let directory = directory(&store);
        let now = Instant::now();
        directory.broker_connected(now);
        directory.observe(node("b"), 5, now);
        directory.lost(&NodeId("b".into()), 4);
        assert_eq!(directory.alive().len(), 1);
        directory.lost(&NodeId("b".into()), 5);
        assert!(directory.alive().is_empty());
        assert_eq!(directory.list()[1].state, PeerState::Gone);
    }

    #[tokio::test]
    async fn a_stale_last_will_after_this_node_restarted_changes_nothing() {
        let store = Store::temporary().unwrap();
        let now = Instant::now();
        {
            let directory = directory(&store);
            directory.broker_connected(now);
            directory.observe(node("b"), 5, now);
        }
        let restarted = directory(&store);
        restarted.broker_connected(now);
        restarted.lost(&NodeId("b".into()), 4);
        assert_ne!(restarted.list()[1].state, PeerState::Gone);
        restarted.observe(node("b"), 6, now);
        restarted.lost(&NodeId("b".into()), 5);
        assert_eq!(restarted.alive().len(), 1);
        restarted.lost(&NodeId("b".into()), 6);
        assert!(restarted.alive().is_empty());
    }

    #[tokio::test]
    async fn leaving_forgets_the_peer_in_memory_and_in_the_store() {
        let store = Store::temporary().unwrap();
        let directory = directory(&store);
        let now = Instant::now();
        directory.observe(node("b"), 5, now);
        assert_eq!(store.nodes.list().unwrap().len(), 2);
        directory.leave(&NodeId("b".into()), 4);
        assert_eq!(
            directory.list().len(),
            2,
            "older connection's leave is ignored"
        );
        directory.leave(&NodeId("b".into()), 5);
        assert_eq!(directory.list().len(), 1);
        assert_eq!(store.nodes.list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn persisted_peers_come_back_as_suspect() {
        let store = Store::temporary().unwrap();
        {
            let directory = directory(&store);
            directory.observe(node("b"), 1, Instant::now());
        }
        let directory = directory(&store);
        let listed = directory.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].state, PeerState::Suspect);
        assert!(listed[1].last_seen.is_some());
        assert!(directory.alive().is_empty());
    }

    #[tokio::test]
    async fn metadata_changes_are_announced() {
        let store = Store::temporary().unwrap();
        let directory = directory(&store);
        let mut events = directory.subscribe();
        let now = Instant::now();
        directory.observe(node("b"), 1, now);
        let _ = events.try_recv();
        directory.observe(node("b"), 1, now);
        assert!(events.try_recv().is_err(), "a heartbeat is not a change");
        let mut changed = node("b");
        changed.capabilities_digest = "d1".into();
        directory.observe(changed, 1, now);
        assert!(
            matches!(events.try_recv().unwrap(), PeerEvent::Updated(info) if info.capabilities_digest == "d1")
        );
    }
}
