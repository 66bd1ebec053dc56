//! The agent's domain: services built from blueprints, their images and lifecycle states,
//! the capabilities a node offers and what a node knows about itself and its peers.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use motey_val::{
    DeviceMapping, ImageState, PortMapping, Privileges, RestartPolicy, VolumeMount,
};

/// Identifies a service across the fog: the node that took the blueprint chooses it, and
/// peers hosting some of its images use the same id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceId(pub String);

impl ServiceId {
    /// A fresh, random id.
    pub fn generate() -> ServiceId {
        ServiceId(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies a node (an agent) in the fog.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of a service (Motey, section 4.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    /// Accepted, nothing done yet.
    Initial,
    /// Images are being placed, pulled, created or started.
    Instantiating,
    /// Every image runs.
    Running,
    /// Termination was asked for and is under way.
    Stopping,
    /// Every image is stopped and removed.
    Terminated,
    /// An image failed; the service's reason says which and why.
    Error,
    /// A new blueprint version is being rolled out (or rolled back); the reason and the
    /// service's `update` say how far.
    Updating,
    /// The last update failed and was rolled back: the previous version runs; the reason
    /// says why the update failed.
    RolledBack,
}

impl ServiceState {
    /// Maps the states of a service's images to the service state, in the order of
    /// listing 5.8 of the Motey thesis: one image in ERROR makes the service ERROR, then
    /// TERMINATED, STOPPING, INSTANTIATING and INITIAL win in that order; only when every
    /// image runs is the service RUNNING.
    pub fn from_images(states: &[ImageState]) -> ServiceState {
        let any = |state| states.contains(&state);
        if any(ImageState::Error) {
            ServiceState::Error
        } else if any(ImageState::Terminated) {
            ServiceState::Terminated
        } else if any(ImageState::Stopping) {
            ServiceState::Stopping
        } else if any(ImageState::Instantiating) {
            ServiceState::Instantiating
        } else if any(ImageState::Initial) {
            ServiceState::Initial
        } else if !states.is_empty() && states.iter().all(|s| *s == ImageState::Running) {
            ServiceState::Running
        } else {
            ServiceState::Error
        }
    }

    /// Whether the service will not change any more on its own.
    pub fn is_final(self) -> bool {
        matches!(self, ServiceState::Terminated)
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// Something a node offers to images, such as `optical-probe` (hardware) or `zigbee`.
/// The JSON shape is Motey's: `{"capability":"zigbee","capability_type":"hardware"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Capability {
    pub capability: String,
    pub capability_type: String,
}

/// What a node tells others about itself (and what they remember of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// Addresses peers may reach the node at.
    pub addresses: Vec<String>,
    /// Port of the REST API.
    pub rest_port: u16,
    /// Port of the ZeroMQ peer (request-reply) socket.
    pub peer_port: u16,
    /// When the node was last heard of; `None` for the node itself.
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Version of the agent software the node runs.
    #[serde(default)]
    pub version: String,
    /// Short digest of the node's capabilities: peers ask again for the capabilities only
    /// when it changes.
    #[serde(default)]
    pub capabilities_digest: String,
}

/// A validated blueprint: what the user asked to run. Both blueprint formats (ours and
/// Motey's) are parsed into this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blueprint {
    pub service_name: String,
    pub images: Vec<ImageBlueprint>,
}

/// One image of a blueprint, ready to be turned into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBlueprint {
    /// Unique within the service; names the image in the API and in container labels.
    pub id: String,
    /// The image reference, e.g. `motey/meter-reader:latest`.
    pub image: String,
    /// Container name asked for by the blueprint; `None` lets the agent choose.
    #[serde(default)]
    pub container_name: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub devices: Vec<DeviceMapping>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Capabilities a node must offer to run this image.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub privileges: Privileges,
}

/// Whether the user wants a service to run or to be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredState {
    Running,
    Terminated,
}

/// What the agent knows about one image of a service: where it runs and how it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub blueprint: ImageBlueprint,
    /// The node running the image; `None` until it is placed.
    pub node: Option<NodeId>,
    pub state: ImageState,
    pub reason: Option<String>,
    /// The engine's container id, when the image runs on this node.
    pub container_id: Option<String>,
    /// The blueprint version that last changed this image; it names the container, so
    /// that an update can start the new container beside the old one.
    #[serde(default = "first_version")]
    pub version: u32,
}

fn first_version() -> u32 {
    1
}

impl ImageRecord {
    pub fn new(blueprint: ImageBlueprint) -> ImageRecord {
        ImageRecord {
            blueprint,
            node: None,
            state: ImageState::Initial,
            reason: None,
            container_id: None,
            version: 1,
        }
    }

    pub fn id(&self) -> &str {
        &self.blueprint.id
    }

    /// Whether `other` describes the same specification (blueprint and version): an
    /// observation made for one specification must not overwrite a newer one.
    pub fn same_specification(&self, other: &ImageRecord) -> bool {
        self.version == other.version && self.blueprint == other.blueprint
    }
}

/// A service: a blueprint's desired state plus the observed state of its images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    pub desired: DesiredState,
    pub state: ServiceState,
    /// Why the service is in ERROR (or why an image could not be placed).
    pub reason: Option<String>,
    pub images: Vec<ImageRecord>,
    /// The node that took the blueprint and stays responsible for it. For images this node
    /// runs on behalf of a peer, that peer's id; otherwise this node's own id.
    pub owner: NodeId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Version of the blueprint that runs; 1 when deployed, one more per completed update.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The latest update: under way, completed or rolled back.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    /// What happened to the service's versions, oldest first (at most [`HISTORY_LIMIT`]).
    #[serde(default)]
    pub history: Vec<Revision>,
}

/// Entries of a service's history kept; older ones are dropped.
pub const HISTORY_LIMIT: usize = 50;

impl Service {
    /// A new service in state INITIAL, owned by `owner`.
    pub fn new(id: ServiceId, blueprint: Blueprint, owner: NodeId) -> Service {
        let now = Utc::now();
        let mut service = Service {
            id,
            name: blueprint.service_name.clone(),
            desired: DesiredState::Running,
            state: ServiceState::Initial,
            reason: None,
            images: Vec::new(),
            owner,
            created_at: now,
            updated_at: now,
            version: 1,
            rollout: None,
            history: Vec::new(),
        };
        service.record_history(RevisionEvent::Deployed, 1, &blueprint, None);
        service.images = blueprint.images.into_iter().map(ImageRecord::new).collect();
        service
    }

    /// The blueprint the service's images currently run.
    pub fn blueprint(&self) -> Blueprint {
        Blueprint {
            service_name: self.name.clone(),
            images: self
                .images
                .iter()
                .map(|image| image.blueprint.clone())
                .collect(),
        }
    }

    /// Whether an update is being rolled out or rolled back.
    pub fn updating(&self) -> bool {
        self.rollout.as_ref().is_some_and(Rollout::active)
    }

    /// Appends to the history, dropping the oldest entries beyond [`HISTORY_LIMIT`].
    pub fn record_history(
        &mut self,
        event: RevisionEvent,
        version: u32,
        blueprint: &Blueprint,
        reason: Option<String>,
    ) {
        self.history.push(Revision {
            version,
            event,
            at: Utc::now(),
            reason,
            images: blueprint
                .images
                .iter()
                .map(|image| RevisionImage {
                    name: image.id.clone(),
                    image: image.image.clone(),
                })
                .collect(),
        });
        let excess = self.history.len().saturating_sub(HISTORY_LIMIT);
        self.history.drain(..excess);
    }

    pub fn image(&self, image_id: &str) -> Option<&ImageRecord> {
        self.images.iter().find(|image| image.id() == image_id)
    }

    pub fn image_mut(&mut self, image_id: &str) -> Option<&mut ImageRecord> {
        self.images.iter_mut().find(|image| image.id() == image_id)
    }

    /// Recomputes state and reason from the images (listing 5.8). The reason names the
    /// first failed image.
    pub fn refresh_state(&mut self) {
        let states: Vec<ImageState> = self.images.iter().map(|image| image.state).collect();
        self.state = ServiceState::from_images(&states);
        self.reason = match self.state {
            ServiceState::Error => Some(
                self.images
                    .iter()
                    .find(|image| image.state == ImageState::Error)
                    .map(|image| {
                        format!(
                            "image {}: {}",
                            image.id(),
                            image.reason.as_deref().unwrap_or("failed")
                        )
                    })
                    .unwrap_or_else(|| "no images".into()),
            ),
            _ => None,
        };
        // An update shows through the service state: UPDATING while it runs (unless an
        // image failed outright), ROLLED_BACK once the previous version runs again.
        if self.desired == DesiredState::Running {
            if let Some(rollout) = &self.rollout {
                match rollout.phase {
                    RolloutPhase::Updating | RolloutPhase::RollingBack
                        if self.state != ServiceState::Error =>
                    {
                        self.state = ServiceState::Updating;
                        self.reason = Some(rollout.describe());
                    }
                    RolloutPhase::RolledBack if self.state == ServiceState::Running => {
                        self.state = ServiceState::RolledBack;
                        self.reason = Some(rollout.describe());
                    }
                    _ => {}
                }
            }
        }
        self.updated_at = Utc::now();
    }
}

/// How far an update of a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutPhase {
    /// Images are replaced by their new version, one at a time.
    Updating,
    /// A new version failed; images already replaced get their previous version back.
    RollingBack,
    /// Every image runs the new version.
    Completed,
    /// The previous version runs again; the reason says why the update failed.
    RolledBack,
}

/// An update of a service from one blueprint version to the next (FR-10). Kept in the
/// service record, so that an agent restarted in the middle goes on where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub from_version: u32,
    pub to_version: u32,
    pub phase: RolloutPhase,
    /// The blueprint being rolled out.
    pub target: Blueprint,
    /// The blueprint it replaces, restored on failure.
    pub previous: Blueprint,
    /// The image being replaced now.
    pub current_image: Option<String>,
    /// When the replacement of the current image began (its new container was asked for).
    pub step_started_at: Option<DateTime<Utc>>,
    /// Since when the current image's new container has been seen running.
    pub running_since: Option<DateTime<Utc>>,
    /// Why the update was rolled back.
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Rollout {
    /// Whether images are still being replaced (forwards or back).
    pub fn active(&self) -> bool {
        matches!(
            self.phase,
            RolloutPhase::Updating | RolloutPhase::RollingBack
        )
    }

    /// One line for the service's reason.
    pub fn describe(&self) -> String {
        let image = self
            .current_image
            .as_deref()
            .map(|image| format!(" (image {image})"))
            .unwrap_or_default();
        let why = self
            .reason
            .as_deref()
            .map(|reason| format!(": {reason}"))
            .unwrap_or_default();
        match self.phase {
            RolloutPhase::Updating => format!(
                "updating from version {} to {}{image}",
                self.from_version, self.to_version
            ),
            RolloutPhase::RollingBack => {
                format!("rolling back to version {}{image}{why}", self.from_version)
            }
            RolloutPhase::Completed => format!("updated to version {}", self.to_version),
            RolloutPhase::RolledBack => format!(
                "update to version {} rolled back; version {} runs{why}",
                self.to_version, self.from_version
            ),
        }
    }
}

/// What happened in one entry of a service's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionEvent {
    /// The service was created with this version.
    Deployed,
    /// An update to this version began.
    UpdateStarted,
    /// Every image runs this version.
    Updated,
    /// The update to this version failed and was rolled back.
    RolledBack,
}

/// One entry of a service's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub version: u32,
    pub event: RevisionEvent,
    pub at: DateTime<Utc>,
    pub reason: Option<String>,
    /// The images of that version: name and reference.
    pub images: Vec<RevisionImage>,
}

/// An image as a history entry names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionImage {
    pub name: String,
    pub image: String,
}

/// An image a node asks a peer to run (ZeroMQ "deploy image").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDeployment {
    pub service_id: ServiceId,
    pub service_name: String,
    /// The node that owns the service; the hosting node refuses a deployment whose owner
    /// is not the node that sent it.
    pub owner: NodeId,
    pub image: ImageBlueprint,
    /// The blueprint version that last changed the image (as in [`ImageRecord`]): the
    /// hosting node names the container after it, so that an update starts the new
    /// container beside the old one there too.
    #[serde(default = "first_version")]
    pub version: u32,
}

/// The state of one image as the node running it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    pub service_id: ServiceId,
    pub image_id: String,
    pub node: NodeId,
    pub state: ImageState,
    pub reason: Option<String>,
    pub container_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ImageState::*;

    #[test]
    fn all_running_is_running() {
        assert_eq!(
            ServiceState::from_images(&[Running, Running]),
            ServiceState::Running
        );
    }

    #[test]
    fn one_error_wins_over_everything() {
        assert_eq!(
            ServiceState::from_images(&[Running, Error, Terminated, Instantiating]),
            ServiceState::Error
        );
    }

    #[test]
    fn listing_5_8_order_after_error() {
        assert_eq!(
            ServiceState::from_images(&[Running, Terminated, Stopping]),
            ServiceState::Terminated
        );
        assert_eq!(
            ServiceState::from_images(&[Stopping, Instantiating]),
            ServiceState::Stopping
        );
        assert_eq!(
            ServiceState::from_images(&[Instantiating, Initial, Running]),
            ServiceState::Instantiating
        );
        assert_eq!(
            ServiceState::from_images(&[Initial, Running]),
            ServiceState::Initial
        );
    }

    #[test]
    fn no_images_is_an_error() {
        assert_eq!(ServiceState::from_images(&[]), ServiceState::Error);
    }

    #[test]
    fn states_serialize_in_upper_case() {
        assert_eq!(
            serde_json::to_string(&ServiceState::Instantiating).unwrap(),
            "\"INSTANTIATING\""
        );
        assert_eq!(ServiceState::Error.to_string(), "ERROR");
    }

    #[test]
    fn capability_has_motey_json_shape() {
        let parsed: Vec<Capability> =
            serde_json::from_str(r#"[{"capability":"zigbee","capability_type":"hardware"}]"#)
                .unwrap();
        assert_eq!(parsed[0].capability, "zigbee");
        assert_eq!(parsed[0].capability_type, "hardware");
    }
}
