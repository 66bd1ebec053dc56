//! How the orchestrator reaches other nodes. The orchestrator never talks to a peer
//! directly; it goes through [`RemoteNodes`], implemented over the ZeroMQ peer protocol in
//! a cluster and by [`NoPeers`] on a single node.

use motey_val::{ExecOutput, ExecRequest, LogLine, LogQuery};

use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, NodeInfo, ServiceId};

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The node is not known (never discovered, or removed).
    #[error("node {0} is unknown")]
    UnknownNode(NodeId),
    /// The node did not answer in time or could not be reached.
    #[error("node {node} unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    /// The node answered with an error.
    #[error("node {node} refused: {reason}")]
    Refused { node: NodeId, reason: String },
    /// The node does not have the image (any more).
    #[error("node {node} refused: {reason}")]
    NotFound { node: NodeId, reason: String },
    /// The node is decommissioning: its images are to be placed elsewhere.
    #[error("node {node} refused: {reason}")]
    Decommissioning { node: NodeId, reason: String },
}

/// The other nodes of the fog, as the orchestrator needs them: who is alive, what they
/// offer, and running, observing and terminating images on them.
#[async_trait::async_trait]
pub trait RemoteNodes: Send + Sync + 'static {
    /// Peers currently believed alive, excluding this node.
    async fn alive_peers(&self) -> Vec<NodeInfo>;

    /// The capabilities a peer offers.
    async fn capabilities(&self, node: &NodeId) -> Result<Vec<Capability>, RemoteError>;

    /// Asks a peer to run one image; returns its state right after the request.
    async fn deploy_image(
        &self,
        node: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, RemoteError>;

    /// The state of an image a peer runs on this node's behalf.
    async fn image_status(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, RemoteError>;

    /// Whether a peer is gone (crashed, cut off for the gone time, or unknown), rather
    /// than merely slow or suspect.
    async fn is_gone(&self, node: &NodeId) -> bool {
        !self.alive_peers().await.iter().any(|peer| &peer.id == node)
    }

    /// Asks the owner of a service whether it still places `image_id` on this node
    /// (asked by a node that hosts the image, e.g. after it was cut off or restarted).
    async fn image_assigned(
        &self,
        owner: &NodeId,
        _service_id: &ServiceId,
        _image_id: &str,
    ) -> Result<bool, RemoteError> {
        Err(RemoteError::UnknownNode(owner.clone()))
    }

    /// Asks a peer to stop and remove an image it runs on this node's behalf.
    async fn terminate_image(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<(), RemoteError>;

    /// Log lines of an image a peer runs on this node's behalf.
    async fn image_logs(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
        query: LogQuery,
    ) -> Result<Vec<LogLine>, RemoteError> {
        let _ = (service_id, image_id, query);
        Err(RemoteError::UnknownNode(node.clone()))
    }

    /// Runs a diagnostic command in an image a peer runs on this node's behalf.
    async fn image_exec(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
        exec: ExecRequest,
    ) -> Result<ExecOutput, RemoteError> {
        let _ = (service_id, image_id, exec);
        Err(RemoteError::UnknownNode(node.clone()))
    }
}

/// A node alone: no peers, so every image runs here or nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

#[async_trait::async_trait]
impl RemoteNodes for NoPeers {
    async fn alive_peers(&self) -> Vec<NodeInfo> {
        Vec::new()
    }

    async fn capabilities(&self, node: &NodeId) -> Result<Vec<Capability>, RemoteError> {
        Err(RemoteError::UnknownNode(node.clone()))
    }

    async fn deploy_image(
        &self,
        node: &NodeId,
        _deployment: ImageDeployment,
    ) -> Result<ImageStatus, RemoteError> {
        Err(RemoteError::UnknownNode(node.clone()))
    }

    async fn image_status(
        &self,
        node: &NodeId,
        _service_id: &ServiceId,
        _image_id: &str,
    ) -> Result<ImageStatus, RemoteError> {
        Err(RemoteError::UnknownNode(node.clone()))
    }

    async fn terminate_image(
        &self,
        node: &NodeId,
        _service_id: &ServiceId,
        _image_id: &str,
    ) -> Result<(), RemoteError> {
        Err(RemoteError::UnknownNode(node.clone()))
    }
}
