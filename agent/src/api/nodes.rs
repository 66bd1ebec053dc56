//! `/v1/nodes`: the nodes this agent knows, itself first.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::ApiState;
use crate::domain::NodeInfo;

/// Where the API learns about peers: the discovery layer in a cluster, the store alone
/// on a single node.
pub trait NodeDirectory: Send + Sync + 'static {
    /// Every known peer (not this node) with its liveness.
    fn peers(&self) -> Vec<NodeView>;
}

/// A node as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `alive`, `suspect` or `gone`.
    pub state: String,
    /// Whether this is the node answering.
    pub this_node: bool,
    /// Lifecycle phase: `commissioning`, `provisioning`, `operating`, `recovering` or
    /// `decommissioning`; absent for nodes that do not announce one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::lifecycle::NodePhase>,
    /// Why the node is in its phase (what is out of norm while recovering).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_reason: Option<String>,
}

/// Peers as last stored, all shown alive: the single-node case, where nothing refreshes them.
pub struct StoredNodes(pub crate::store::Store);

impl NodeDirectory for StoredNodes {
    fn peers(&self) -> Vec<NodeView> {
        self.0
            .nodes
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|info| NodeView {
                info,
                state: "alive".into(),
                this_node: false,
                phase: None,
                phase_reason: None,
            })
            .collect()
    }
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let phase = state.orchestrator.lifecycle().current();
    let me = NodeView {
        info: (*state.this_node).clone(),
        state: "alive".into(),
        this_node: true,
        phase: Some(phase.phase),
        phase_reason: phase.reason,
    };
    let mut nodes = vec![me];
    nodes.extend(
        state
            .nodes
            .peers()
            .into_iter()
            .filter(|peer| peer.info.id != state.this_node.id),
    );
    Ok(Json(nodes))
}
