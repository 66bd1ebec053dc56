//! The lifecycle of a node, after sections 3.1 and 3.3 of the Motey thesis (OpenFog): a
//! node is *commissioned* (identity, keys, clock), *provisioned* (it joins the fog and
//! advertises its capabilities), then *operating*; it is *recovering* while something is
//! out of norm (the container engine unreachable, the disk full, the broker lost) and
//! *decommissioning* when it is being taken out of the fog for good.
//!
//! Only an operating node accepts deployments, from the REST API or from peers; whatever
//! runs already keeps running in every phase (edge autonomy). The phase is announced with
//! the node's discovery metadata, so peers and the web client show it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Where a node is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodePhase {
    /// Identity, keys and clock are being set up.
    Commissioning,
    /// Joining the fog: reaching the broker, advertising capabilities.
    Provisioning,
    /// Everything in norm: deployments are accepted.
    Operating,
    /// Something is out of norm; the reason says what. Running images keep running.
    Recovering,
    /// The node is leaving the fog for good: its images are drained to other nodes.
    Decommissioning,
}

impl NodePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            NodePhase::Commissioning => "commissioning",
            NodePhase::Provisioning => "provisioning",
            NodePhase::Operating => "operating",
            NodePhase::Recovering => "recovering",
            NodePhase::Decommissioning => "decommissioning",
        }
    }
}

impl fmt::Display for NodePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's phase with why it is there and since when, as announced and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: NodePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
}

impl PhaseReport {
    pub fn new(phase: NodePhase, reason: Option<String>) -> PhaseReport {
        PhaseReport {
            phase,
            reason,
            since: Utc::now(),
        }
    }

    /// Whether the node in this phase takes new deployments.
    pub fn accepts_deployments(&self) -> bool {
        self.phase == NodePhase::Operating
    }
}

impl fmt::Display for PhaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            Some(reason) => write!(f, "{} ({reason})", self.phase),
            None => write!(f, "{}", self.phase),
        }
    }
}

/// Why a node refuses a deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node {node} is {report} and accepts no deployments")]
pub struct NotOperating {
    pub node: String,
    pub report: PhaseReport,
}

/// The phase of this node, shared by everyone who reads or changes it (clones see the
/// same phase).
#[derive(Clone)]
pub struct NodeLifecycle {
    phase: Arc<watch::Sender<PhaseReport>>,
}

impl std::fmt::Debug for NodeLifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeLifecycle")
            .field(&self.current())
            .finish()
    }
}

impl NodeLifecycle {
    pub fn new(phase: NodePhase) -> NodeLifecycle {
        let (sender, _) = watch::channel(PhaseReport::new(phase, None));
        NodeLifecycle {
            phase: Arc::new(sender),
        }
    }

    pub fn current(&self) -> PhaseReport {
        self.phase.borrow().clone()
    }

    /// Changes of the phase from now on.
    pub fn subscribe(&self) -> watch::Receiver<PhaseReport> {
        self.phase.subscribe()
    }

    /// Moves to `phase` (keeping `since` when neither phase nor reason change).
    /// Decommissioning is final: no check brings a node back from it.
    pub fn set(&self, phase: NodePhase, reason: Option<String>) -> bool {
        self.phase.send_if_modified(|current| {
            if current.phase == NodePhase::Decommissioning && phase != NodePhase::Decommissioning {
                return false;
            }
            if current.phase == phase && current.reason == reason {
                return false;
            }
            if current.phase != phase {
                tracing::info!(from = %current.phase, to = %phase, reason = reason.as_deref().unwrap_or(""), "node phase changed");
            }
            *current = PhaseReport::new(phase, reason);
            true
        })
    }

    /// `Ok` when deployments are accepted, else why not.
    pub fn check_accepts_deployments(&self, node: &str) -> Result<(), NotOperating> {
        let report = self.current();
        if report.accepts_deployments() {
            Ok(())
        } else {
            Err(NotOperating {
                node: node.to_owned(),
                report,
            })
        }
    }
}

/// What the periodic health check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// `None` while the clock is plausible; signed peer messages need it to be right.
    pub clock_problem: Option<String>,
    /// Whether the node ever reached the broker since it started.
    pub broker_ever_connected: bool,
    /// `None` while the broker is connected; else why not.
    pub broker_problem: Option<String>,
    /// `None` while the engine answers; else its error.
    pub engine_problem: Option<String>,
    /// `None` while the data directory's disk has room; else how little is left.
    pub disk_problem: Option<String>,
}

/// The phase a node in `health` is in (decommissioning is set by hand, never derived).
/// A node that never reached the broker is still joining (provisioning); one that lost
/// it, or whose engine or disk fails, is recovering.
pub fn phase_of(health: &Health) -> (NodePhase, Option<String>) {
    if let Some(problem) = &health.clock_problem {
        return (NodePhase::Commissioning, Some(problem.clone()));
    }
    let mut problems = Vec::new();
    if let Some(problem) = &health.engine_problem {
        problems.push(format!("container engine unreachable: {problem}"));
    }
    if let Some(problem) = &health.disk_problem {
        problems.push(problem.clone());
    }
    if health.broker_ever_connected {
        if let Some(problem) = &health.broker_problem {
            problems.push(format!("MQTT broker lost: {problem}"));
        }
    }
    if !problems.is_empty() {
        return (NodePhase::Recovering, Some(problems.join("; ")));
    }
    if !health.broker_ever_connected {
        let reason = health
            .broker_problem
            .clone()
            .unwrap_or_else(|| "joining the fog (waiting for the MQTT broker)".into());
        return (NodePhase::Provisioning, Some(reason));
    }
    (NodePhase::Operating, None)
}

/// A node whose clock is before this (unix seconds, 2024-01-01) has not set it yet (a
/// Raspberry Pi without a real-time clock before NTP answered).
const PLAUSIBLE_CLOCK_SECS: i64 = 1_704_067_200;

/// The clock problem of this node, if its clock is not set yet.
pub fn clock_problem() -> Option<String> {
    let now = Utc::now();
    (now.timestamp() < PLAUSIBLE_CLOCK_SECS).then(|| {
        format!("waiting for the clock to be set (it says {now}); signed peer messages need it")
    })
}

/// Below this much free space on the data directory's disk a node is recovering.
pub const DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Free bytes of the file system holding `path`, if the platform says.
pub fn available_bytes(path: &std::path::Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The disk problem of the data directory at `path`, if it is (nearly) full.
pub fn disk_problem(path: &std::path::Path) -> Option<String> {
    let available = available_bytes(path)?;
    (available < DISK_RESERVE_BYTES).then(|| {
        format!(
            "disk of {} nearly full ({} MiB left)",
            path.display(),
            available / (1024 * 1024)
        )
    })
}

/// How often the health of a node is checked.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_joins_operates_and_recovers() {
        let joining = phase_of(&Health::default());
        assert_eq!(joining.0, NodePhase::Provisioning);
        let operating = Health {
            broker_ever_connected: true,
            ..Health::default()
        };
        assert_eq!(phase_of(&operating), (NodePhase::Operating, None));
        let lost_broker = Health {
            broker_problem: Some("connection refused".into()),
            ..operating.clone()
        };
        let (phase, reason) = phase_of(&lost_broker);
        assert_eq!(phase, NodePhase::Recovering);
        assert!(reason.unwrap().contains("MQTT broker lost"));
        let dead_engine = Health {
            engine_problem: Some("no such socket".into()),
            ..Health::default()
        };
        let (phase, reason) = phase_of(&dead_engine);
        assert_eq!(phase, NodePhase::Recovering, "even before joining");
        assert!(reason
            .unwrap()
            .contains("container engine unreachable: no such socket"));
    }

    #[test]
    fn an_unset_clock_keeps_the_node_commissioning() {
        let health = Health {
            clock_problem: Some("1970".into()),
            broker_ever_connected: true,
            ..Health::default()
        };
        assert_eq!(phase_of(&health).0, NodePhase::Commissioning);
        assert_eq!(clock_problem(), None);
    }

    #[test]
    fn decommissioning_is_final_and_refuses_deployments() {
        let lifecycle = NodeLifecycle::new(NodePhase::Operating);
        assert!(lifecycle.check_accepts_deployments("n1").is_ok());
        assert!(lifecycle.set(NodePhase::Decommissioning, None));
        assert!(!lifecycle.set(NodePhase::Operating, None));
        let refused = lifecycle.check_accepts_deployments("n1").unwrap_err();
        assert_eq!(refused.report.phase, NodePhase::Decommissioning);
        assert_eq!(
            refused.to_string(),
            "node n1 is decommissioning and accepts no deployments"
        );
    }

    #[test]
    fn unchanged_phase_keeps_its_since() {
        let lifecycle = NodeLifecycle::new(NodePhase::Recovering);
        lifecycle.set(NodePhase::Recovering, Some("engine".into()));
        let since = lifecycle.current().since;
        assert!(!lifecycle.set(NodePhase::Recovering, Some("engine".into())));
        assert_eq!(lifecycle.current().since, since);
    }
}
