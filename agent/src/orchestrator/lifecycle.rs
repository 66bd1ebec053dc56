//! How the reconcile loop follows the lifecycle of nodes:
//!
//! - **A peer that is gone** keeps the images it runs for this node for the grace period
//!   (`[CLUSTER] reschedule_grace`); back within it, it is re-adopted, not churned. After
//!   it, the images are placed elsewhere.
//! - **A hosted image is confirmed with its owner** when the owner has not asked for it
//!   for a while (after a restart, or after this node was cut off): an image the owner has
//!   since placed elsewhere is removed here, so nothing runs twice. An owner that cannot
//!   be reached changes nothing: the image keeps running on its own (edge autonomy).
//! - **A capability that vanishes** (a probe unplugged) takes the images needing it off
//!   this node: owned ones are placed again (elsewhere, or ERROR naming the capability),
//!   hosted ones are released so that their owner places them again.
//! - **A decommissioning peer** answers for its images with a refusal; the owner places
//!   them elsewhere, then releases them there.
//! - **Decommissioning this node** terminates the services it owns (handing a service's
//!   desired state to another node is left to the admin, who submits its blueprint
//!   there) and waits until the owners took back what it hosts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use motey_val::ImageState;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::reconcile::unplaced;
use super::{container, Orchestrator, OrchestratorError};
use crate::domain::{DesiredState, ImageRecord, NodeId, Service, ServiceId, ServiceState};
use crate::lifecycle::NodePhase;
use crate::store::StoreError;

/// Part of the refusal a decommissioning node gives for its images; owners recognise it
/// and move the image.
pub const DECOMMISSIONING: &str = "is decommissioning";

/// What a decommissioning node still has to hand back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DrainProgress {
    /// Services this node owns that are not TERMINATED yet.
    pub own_services: usize,
    /// Images this node runs for peers that have not taken them back yet.
    pub hosted_images: usize,
}

impl DrainProgress {
    pub fn is_drained(&self) -> bool {
        self.own_services == 0 && self.hosted_images == 0
    }
}

impl Orchestrator {
    /// The capabilities `record` needs that this node does not offer (none when the
    /// store cannot say: nothing is taken down on a read error).
    pub(super) fn missing_capabilities(&self, record: &ImageRecord) -> Vec<String> {
        if record.blueprint.capabilities.is_empty() {
            return Vec::new();
        }
        let Ok(offered) = self.inner.store.capabilities.list() else {
            return Vec::new();
        };
        let offered: BTreeSet<String> = offered.into_iter().map(|c| c.capability).collect();
        record
            .blueprint
            .capabilities
            .iter()
            .filter(|needed| !offered.contains(*needed))
            .cloned()
            .collect()
    }

    /// This node lost a capability the local image needs: its containers are removed; an
    /// owned image is left unplaced (the caller places it again), a hosted one released
    /// (its owner places it again when it learns that it is gone).
    pub(super) async fn take_off_this_node(
        &self,
        service: &Service,
        record: ImageRecord,
        missing: &[String],
    ) -> ImageRecord {
        let missing = missing.join(", ");
        warn!(service = %service.id, image = %record.id(), capabilities = %missing, "this node no longer offers capabilities the image needs; stopping it here");
        self.remove_local_containers(service, record.id()).await;
        if service.owner == self.inner.node {
            return unplaced(
                record,
                format!("this node no longer offers the capabilities {missing}; placing the image again"),
            );
        }
        if let Err(error) = self.forget_hosted_image(&service.id, record.id()).await {
            warn!(service = %service.id, image = %record.id(), %error, "cannot release the hosted image");
        }
        let mut record = record;
        record.state = ImageState::Terminated;
        record.reason = Some(format!(
            "this node no longer offers the capabilities {missing}"
        ));
        record.container_id = None;
        record
    }

    /// Whether the owner of a hosted image still wants it on this node. Asked only when
    /// the owner has not shown it lately; an unreachable owner leaves the image running.
    pub(super) async fn owner_still_assigns(
        &self,
        service: &Service,
        record: &ImageRecord,
    ) -> bool {
        let key = (service.id.clone(), record.id().to_owned());
        let window = self.confirmation_window();
        let fresh = self
            .confirmed()
            .get(&key)
            .is_some_and(|at| at.elapsed() < window);
        if fresh {
            return true;
        }
        match self
            .inner
            .remote
            .image_assigned(&service.owner, &service.id, record.id())
            .await
        {
            Ok(true) => {
                debug!(service = %service.id, image = %record.id(), owner = %service.owner, "owner still assigns the image here");
                self.confirmed().insert(key, Instant::now());
                true
            }
            Ok(false) => {
                info!(service = %service.id, image = %record.id(), owner = %service.owner, "owner no longer assigns the image to this node");
                false
            }
            Err(error) => {
                debug!(service = %service.id, image = %record.id(), owner = %service.owner, %error, "owner not reachable; the image keeps running on its own");
                true
            }
        }
    }

    /// Removes a hosted image its owner placed elsewhere meanwhile.
    pub(super) async fn remove_unassigned(
        &self,
        service: &Service,
        record: ImageRecord,
    ) -> ImageRecord {
        self.remove_local_containers(service, record.id()).await;
        if let Err(error) = self.forget_hosted_image(&service.id, record.id()).await {
            warn!(service = %service.id, image = %record.id(), %error, "cannot forget the hosted image");
        }
        let mut record = record;
        record.state = ImageState::Terminated;
        record.reason = Some(format!("node {} placed the image elsewhere", service.owner));
        record.container_id = None;
        record
    }

    /// The owner asked for the image's status: it still wants it here.
    pub(super) fn owner_showed_interest(&self, service: &ServiceId, image: &str) {
        self.confirmed()
            .insert((service.clone(), image.to_owned()), Instant::now());
    }

    /// Whether this node (as owner) places `image` of `service` on `node`.
    pub fn assigns(
        &self,
        service: &ServiceId,
        image: &str,
        node: &NodeId,
    ) -> Result<bool, StoreError> {
        let me = &self.inner.node;
        Ok(self
            .inner
            .store
            .services
            .get(service.as_str())?
            .is_some_and(|found| {
                &found.owner == me
                    && found.desired == DesiredState::Running
                    && found
                        .image(image)
                        .is_some_and(|record| record.node.as_ref() == Some(node))
            }))
    }

    /// A peer that runs one of our images could not be asked about it. `None`: it has
    /// been gone for the grace period (or longer) and the image should be placed
    /// elsewhere; otherwise the time it has left.
    pub(super) async fn grace_left(&self, node: &NodeId) -> Option<Option<Duration>> {
        if !self.inner.remote.is_gone(node).await {
            return Some(None);
        }
        let grace = self.reschedule_grace();
        let mut gone = self.gone_since();
        let since = *gone.entry(node.clone()).or_insert_with(|| {
            // Once per silence, not once per image and reconcile pass.
            info!(%node, grace_secs = grace.as_secs(), "node is gone; waiting for it before placing its images elsewhere");
            Instant::now()
        });
        let elapsed = since.elapsed();
        if elapsed >= grace {
            None
        } else {
            Some(Some(grace - elapsed))
        }
    }

    /// A peer answered: whatever silence came before is over.
    pub(super) fn peer_answered(&self, node: &NodeId) {
        if self.gone_since().remove(node).is_some() {
            info!(%node, "node answers again; its images are re-adopted");
        }
    }

    /// The peer running `record` is decommissioning: place the image elsewhere, then
    /// release it there. With no other capable node it waits in ERROR naming what is
    /// missing, and is placed again when such a node appears.
    pub(super) async fn move_off(
        &self,
        service: &Service,
        record: ImageRecord,
        from: NodeId,
    ) -> ImageRecord {
        info!(service = %service.id, image = %record.id(), node = %from, "node is decommissioning; moving the image off it");
        let mut moved = unplaced(record, format!("node {from} {DECOMMISSIONING}"));
        let placed = self.place_image(service, &moved).await;
        if let Err(error) = self
            .inner
            .remote
            .terminate_image(&from, &service.id, moved.id())
            .await
        {
            debug!(service = %service.id, image = %moved.id(), node = %from, %error, "decommissioning node did not confirm the release");
        }
        match placed {
            Ok(node) => {
                moved.node = Some(node);
                moved.reason = None;
                moved
            }
            Err(reason) => {
                moved.state = ImageState::Error;
                moved.reason = Some(format!("{reason} (node {from} {DECOMMISSIONING})"));
                moved
            }
        }
    }

    /// Starts taking this node out of the fog: it refuses deployments from now on,
    /// terminates the services it owns and waits for its peers to take back their images.
    pub async fn decommission(&self) -> Result<DrainProgress, OrchestratorError> {
        self.inner.lifecycle.set(
            NodePhase::Decommissioning,
            Some("leaving the fog; draining its images".into()),
        );
        for service in self.services()? {
            if service.owner == self.inner.node && service.desired == DesiredState::Running {
                self.terminate(&service.id).await?;
            }
        }
        self.wake();
        Ok(self.drain_progress()?)
    }

    /// What is left before this node can leave.
    pub fn drain_progress(&self) -> Result<DrainProgress, StoreError> {
        let mut progress = DrainProgress {
            own_services: 0,
            hosted_images: 0,
        };
        for service in self.inner.store.services.list()? {
            if service.owner == self.inner.node {
                if service.state != ServiceState::Terminated {
                    progress.own_services += 1;
                }
            } else {
                progress.hosted_images += service.images.len();
            }
        }
        Ok(progress)
    }

    /// Forgets the images hosted for peers that did not take them back in time (the last
    /// step of leaving; their owners find them gone and place them again).
    pub async fn abandon_hosted_images(&self) {
        let Ok(services) = self.inner.store.services.list() else {
            return;
        };
        for service in services.into_iter().filter(|s| s.owner != self.inner.node) {
            for image in &service.images {
                warn!(service = %service.id, image = %image.id(), owner = %service.owner, "owner did not take the image back; removing it");
                if let Err(error) = self.forget_hosted_image(&service.id, image.id()).await {
                    warn!(service = %service.id, %error, "cannot forget the hosted image");
                }
            }
        }
    }

    /// Stops and removes every container this node manages (the last step of leaving).
    pub async fn remove_all_containers(&self) {
        let selector = container::node_selector(&self.inner.node);
        if let Ok(containers) = self.inner.engine.list(&selector).await {
            for found in containers {
                info!(container = %found.id, "removing container of a decommissioned node");
                self.stop_and_remove(&found.id).await;
            }
        }
    }

    async fn remove_local_containers(&self, service: &Service, image: &str) {
        let selector = container::selector(&self.inner.node, service.id.as_str(), image);
        if let Ok(containers) = self.inner.engine.list(&selector).await {
            for found in containers {
                self.stop_and_remove(&found.id).await;
            }
        }
    }

    /// How long an owner's interest in a hosted image counts: a few of its reconcile
    /// passes (each asks for the image's status).
    fn confirmation_window(&self) -> Duration {
        Duration::from_secs((self.inner.settings.reconcile_interval_secs * 3).max(5))
    }

    fn confirmed(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(ServiceId, String), Instant>> {
        self.inner
            .confirmed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn gone_since(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, Instant>> {
        self.inner
            .gone_since
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
