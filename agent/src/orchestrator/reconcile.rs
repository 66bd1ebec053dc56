//! One reconcile pass for one service: place what is unplaced, start what should run and
//! does not, observe what runs, stop what should not. Every step reads the engine first,
//! so repeating a step changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Instant;

use motey_val::{labels, ContainerStatus, ImageState, PullProgress};
use tracing::{debug, error, info, warn};

use super::container;
use super::placement::{place, Placement};
use super::remote::RemoteError;
use super::Orchestrator;
use crate::domain::{DesiredState, ImageDeployment, ImageRecord, NodeId, Service, ServiceState};

impl Orchestrator {
    pub(super) async fn reconcile_service(&self, snapshot: Service) {
        // The image an update is replacing is the rollout's to converge (its old and new
        // containers run side by side for a while); the others converge as always.
        let replacing = super::rollout::image_being_replaced(&snapshot);
        let images = snapshot
            .images
            .iter()
            .filter(|image| Some(image.id()) != replacing.as_deref());
        // The images of a service are independent of each other: converge them together.
        let observed = futures::future::join_all(images.map(|image| async {
            match snapshot.desired {
                DesiredState::Running => self.converge_image(&snapshot, image.clone()).await,
                DesiredState::Terminated => self.retire_image(&snapshot, image.clone()).await,
            }
        }))
        .await;
        self.record_observation(&snapshot, observed).await;
        if snapshot.desired == DesiredState::Running && snapshot.updating() {
            self.advance_rollout(&snapshot).await;
        }
    }

    /// Stores what a pass observed, unless the service was changed meanwhile (then the
    /// next pass, started by that change, observes again).
    async fn record_observation(&self, snapshot: &Service, observed: Vec<ImageRecord>) {
        let inner = &self.inner;
        let _guard = inner.records.lock().await;
        let current = match inner.store.services.get(snapshot.id.as_str()) {
            Ok(Some(current)) => current,
            Ok(None) => return,
            Err(error) => {
                warn!(service = %snapshot.id, %error, "cannot re-read service");
                return;
            }
        };
        if current.desired != snapshot.desired {
            return;
        }
        let mut updated = current.clone();
        for record in observed {
            // Images removed meanwhile (a peer terminated them) stay removed, and an image
            // given a new specification meanwhile (a peer updated it) is not set back: the
            // next pass observes it anew.
            if let Some(slot) = updated.image_mut(record.id()) {
                if slot.same_specification(&record) {
                    *slot = record;
                }
            }
        }
        updated.refresh_state();
        let still_stopping = updated.desired == DesiredState::Terminated
            && !matches!(
                updated.state,
                ServiceState::Terminated | ServiceState::Error
            );
        if still_stopping {
            updated.state = ServiceState::Stopping;
        }
        if updated.images.is_empty() {
            updated.state = match updated.desired {
                DesiredState::Running => ServiceState::Running,
                DesiredState::Terminated => ServiceState::Terminated,
            };
            updated.reason = None;
        }
        let changed = updated.state != current.state
            || updated.reason != current.reason
            || updated.images != current.images;
        if !changed {
            return;
        }
        if updated.state != current.state {
            match updated.state {
                ServiceState::Error => warn!(
                    service = %updated.id, name = %updated.name,
                    reason = updated.reason.as_deref().unwrap_or(""), "service in ERROR"
                ),
                state => {
                    info!(service = %updated.id, name = %updated.name, %state, "service state changed")
                }
            }
        }
        if let Err(error) = inner.store.services.put(&updated) {
            error!(service = %updated.id, %error, "cannot store observed state");
        }
    }

    /// Persists one image's progress at once (INSTANTIATING before a long pull), so that
    /// the API shows it while the pass goes on.
    pub(super) async fn record_progress(&self, snapshot: &Service, record: &ImageRecord) {
        let inner = &self.inner;
        let _guard = inner.records.lock().await;
        if let Ok(Some(mut current)) = inner.store.services.get(snapshot.id.as_str()) {
            if current.desired != snapshot.desired {
                return;
            }
            if let Some(slot) = current
                .image_mut(record.id())
                .filter(|slot| slot.same_specification(record))
            {
                *slot = record.clone();
                current.refresh_state();
                if let Err(error) = inner.store.services.put(&current) {
                    error!(service = %current.id, %error, "cannot store progress");
                }
            }
        }
    }

    /// Desired RUNNING: place the image if it has no node yet, then run it here or watch
    /// it on its peer.
    async fn converge_image(&self, service: &Service, mut record: ImageRecord) -> ImageRecord {
        let me = self.inner.node.clone();
        if record.node.as_ref() == Some(&me) {
            let missing = self.missing_capabilities(&record);
            if !missing.is_empty() {
                record = self.take_off_this_node(service, record, &missing).await;
                if service.owner != me {
                    return record;
                }
            } else if service.owner != me && !self.owner_still_assigns(service, &record).await {
                return self.remove_unassigned(service, record).await;
            }
        }
        if record.node.is_none() {
            match self.place_image(service, &record).await {
                Ok(node) => {
                    record.node = Some(node);
                    record.reason = None;
                    if record.state == ImageState::Error {
                        record.state = ImageState::Initial;
                    }
                }
                Err(reason) => {
                    // Stays unplaced: a later pass places it when a node with the
                    // capabilities appears (a probe plugged in, a peer joining).
                    if record.reason.as_deref() != Some(reason.as_str()) {
                        warn!(service = %service.id, image = %record.id(), %reason, "image cannot be placed");
                    }
                    record.state = ImageState::Error;
                    record.reason = Some(reason);
                    return record;
                }
            }
        }
        match record.node.clone() {
            Some(node) if node == me => self.converge_local(service, record).await,
            Some(node) => self.observe_remote(service, record, node).await,
            None => record,
        }
    }

    /// Chooses a node and, for a peer, hands the image over to it.
    pub(super) async fn place_image(
        &self,
        service: &Service,
        record: &ImageRecord,
    ) -> Result<NodeId, String> {
        let local: BTreeSet<String> = match self.inner.store.capabilities.list() {
            Ok(capabilities) => capabilities.into_iter().map(|c| c.capability).collect(),
            Err(error) => return Err(format!("cannot read this node's capabilities: {error}")),
        };
        let placed_on = self.images_placed_per_peer();
        match place(
            &record.blueprint,
            &local,
            self.inner.remote.as_ref(),
            &placed_on,
        )
        .await
        {
            Placement::Here => Ok(self.inner.node.clone()),
            Placement::Nowhere { missing } => Err(format!(
                "no node offers the capabilities {}",
                missing.join(", ")
            )),
            Placement::Peers(candidates) => {
                let mut refusals = Vec::new();
                for peer in candidates {
                    let deployment = ImageDeployment {
                        service_id: service.id.clone(),
                        service_name: service.name.clone(),
                        owner: self.inner.node.clone(),
                        image: record.blueprint.clone(),
                        version: record.version,
                    };
                    match self.inner.remote.deploy_image(&peer, deployment).await {
                        Ok(_) => {
                            info!(service = %service.id, image = %record.id(), %peer, "image placed on peer");
                            return Ok(peer);
                        }
                        Err(error) => refusals.push(error.to_string()),
                    }
                }
                Err(format!(
                    "no capable peer accepted the image: {}",
                    refusals.join("; ")
                ))
            }
        }
    }

    fn images_placed_per_peer(&self) -> HashMap<NodeId, usize> {
        let mut counts = HashMap::new();
        for service in self.inner.store.services.list().unwrap_or_default() {
            if service.desired != DesiredState::Running {
                continue;
            }
            for image in &service.images {
                if let Some(node) = &image.node {
                    *counts.entry(node.clone()).or_insert(0) += 1;
                }
            }
        }
        counts
    }

    /// Makes exactly one container match the image's specification on this node.
    pub(super) async fn converge_local(
        &self,
        service: &Service,
        mut record: ImageRecord,
    ) -> ImageRecord {
        let engine = &self.inner.engine;
        let me = &self.inner.node;
        let spec = container::versioned_spec(service, &record.blueprint, me, record.version);
        let selector = container::selector(me, service.id.as_str(), record.id());
        let containers = match engine.list(&selector).await {
            Ok(containers) => containers,
            Err(error) => {
                // Without the engine nothing can be observed; keep the last known state.
                debug!(%error, "engine unavailable; image state kept");
                return record;
            }
        };
        let wanted = &spec.labels[labels::SPEC_DIGEST];
        let (current, mut outdated): (Vec<ContainerStatus>, Vec<ContainerStatus>) = containers
            .into_iter()
            .partition(|c| c.labels.get(labels::SPEC_DIGEST) == Some(wanted));
        for duplicate in current.iter().skip(1) {
            info!(container = %duplicate.id, image = %record.id(), "removing duplicate container");
            self.stop_and_remove(&duplicate.id).await;
        }
        // An outdated container (the owner updated a hosted image) keeps running until the
        // new one runs, so that the image does not stop in between — unless the two cannot
        // run side by side (same name, fixed name or host port).
        let side_by_side = !container::exclusive(&spec, &record.blueprint)
            && outdated.iter().all(|c| c.name != spec.name);
        if !side_by_side {
            for container in outdated.drain(..) {
                info!(container = %container.id, image = %record.id(), "removing outdated container");
                self.stop_and_remove(&container.id).await;
            }
        }
        record = match current.into_iter().next() {
            Some(found) => {
                if record.container_id.as_deref() != Some(found.id.as_str()) {
                    debug!(container = %found.id, image = %record.id(), "container adopted");
                }
                record.container_id = Some(found.id);
                record.state = found.state;
                record.reason = found.reason;
                record
            }
            None => self.start_container(service, record, &spec).await,
        };
        if !matches!(
            record.state,
            ImageState::Initial | ImageState::Instantiating
        ) {
            for container in &outdated {
                info!(container = %container.id, image = %record.id(), state = ?record.state, "removing the outdated container (the new one started or failed)");
                self.stop_and_remove(&container.id).await;
            }
        }
        record
    }

    /// Creates and starts the image's container when there is none. Creates one if none
    /// was made yet, or if the one made was removed behind the agent's back (whatever
    /// state it was last seen in). An image whose creation failed (no such image, name
    /// taken) is not retried in a loop: the user terminates or updates it.
    async fn start_container(
        &self,
        service: &Service,
        mut record: ImageRecord,
        spec: &motey_val::ContainerSpec,
    ) -> ImageRecord {
        let engine = &self.inner.engine;
        let should_exist = record.container_id.is_some()
            || matches!(
                record.state,
                ImageState::Initial | ImageState::Instantiating | ImageState::Running
            );
        if !should_exist {
            return record;
        }
        // Whoever asked for the image (REST, a peer, an update, a rollback), this node's
        // own policy decides: a setting changed since, or a bind source swapped for a
        // link, is caught here.
        if let Err(refused) = crate::policy::check(
            &service.name,
            std::slice::from_ref(&record.blueprint),
            &self.inner.security,
        ) {
            warn!(service = %service.id, image = %record.id(), reason = %refused, "image refused by this node's policy");
            record.state = ImageState::Error;
            record.reason = Some(refused.to_string());
            record.container_id = None;
            return record;
        }
        if record.state == ImageState::Running {
            warn!(service = %service.id, image = %record.id(), "container vanished; recreating it");
        }
        record.state = ImageState::Instantiating;
        record.reason = None;
        record.container_id = None;
        self.record_progress(service, &record).await;
        if let Err(error) = engine
            .ensure_image(&spec.image, &pull_logger(&spec.image))
            .await
        {
            record.state = ImageState::Error;
            record.reason = Some(error.to_string());
            return record;
        }
        match engine.create_and_start(spec).await {
            Ok(id) => {
                info!(service = %service.id, image = %record.id(), container = %id, "container started");
                let status = engine.inspect(&id).await;
                record.container_id = Some(id);
                match status {
                    Ok(status) => {
                        record.state = status.state;
                        record.reason = status.reason;
                    }
                    Err(error) => {
                        record.state = ImageState::Error;
                        record.reason = Some(error.to_string());
                    }
                }
            }
            Err(error) => {
                record.state = ImageState::Error;
                record.reason = Some(error.to_string());
            }
        }
        record
    }

    /// Asks the peer running the image how it is. A peer that is gone loses the image:
    /// it is placed again, on a node that is alive.
    async fn observe_remote(
        &self,
        service: &Service,
        mut record: ImageRecord,
        node: NodeId,
    ) -> ImageRecord {
        let remote = &self.inner.remote;
        match remote.image_status(&node, &service.id, record.id()).await {
            Ok(status) => {
                self.peer_answered(&node);
                record.state = status.state;
                record.reason = status.reason;
                record.container_id = status.container_id;
            }
            Err(RemoteError::NotFound { .. }) => {
                warn!(service = %service.id, image = %record.id(), %node, "peer no longer runs the image; placing it again");
                return unplaced(
                    record,
                    format!("node {node} lost the image; placing it again"),
                );
            }
            Err(RemoteError::Decommissioning { .. }) => {
                let moved = self.move_off(service, record, node).await;
                return match moved.node.clone() {
                    Some(node) if node == self.inner.node => {
                        self.converge_local(service, moved).await
                    }
                    _ => moved,
                };
            }
            Err(error) => match self.grace_left(&node).await {
                None => {
                    warn!(service = %service.id, image = %record.id(), %node, "node is gone; placing its image again");
                    return unplaced(
                        record,
                        format!("node {node} is gone; placing the image again"),
                    );
                }
                Some(Some(left)) => {
                    record.reason = Some(format!(
                        "node {node} is gone; the image is placed elsewhere unless the node is back within {} s",
                        left.as_secs().max(1)
                    ));
                }
                Some(None) => record.reason = Some(format!("state unknown: {error}")),
            },
        }
        record
    }

    /// Desired TERMINATED: stop and remove the image wherever it runs.
    async fn retire_image(&self, service: &Service, mut record: ImageRecord) -> ImageRecord {
        let me = self.inner.node.clone();
        match record.node.clone() {
            Some(node) if node == me => {
                let selector = container::selector(&me, service.id.as_str(), record.id());
                match self.inner.engine.list(&selector).await {
                    Ok(containers) => {
                        for container in containers {
                            self.stop_and_remove(&container.id).await;
                        }
                        record.state = ImageState::Terminated;
                        record.reason = None;
                    }
                    Err(error) => {
                        record.state = ImageState::Stopping;
                        record.reason = Some(format!("engine unavailable: {error}"));
                    }
                }
            }
            Some(node) => match self
                .inner
                .remote
                .terminate_image(&node, &service.id, record.id())
                .await
            {
                Ok(()) => {
                    record.state = ImageState::Terminated;
                    record.reason = None;
                }
                Err(error @ RemoteError::UnknownNode(_)) => {
                    record.state = ImageState::Terminated;
                    record.reason = Some(error.to_string());
                }
                Err(error) => {
                    record.state = ImageState::Stopping;
                    record.reason = Some(error.to_string());
                }
            },
            None => {
                record.state = ImageState::Terminated;
                record.reason = None;
            }
        }
        record.container_id = None;
        record
    }

    /// Removes containers of this node that no stored service wants: left by a service
    /// deleted while the agent was down, or by images a peer took back.
    pub(super) async fn remove_orphans(&self) {
        let me = &self.inner.node;
        let Ok(containers) = self.inner.engine.list(&container::node_selector(me)).await else {
            return;
        };
        for found in containers {
            let service_id = found
                .labels
                .get(labels::SERVICE_ID)
                .cloned()
                .unwrap_or_default();
            let image_id = found
                .labels
                .get(labels::IMAGE_ID)
                .cloned()
                .unwrap_or_default();
            let _guard = self.inner.records.lock().await;
            let wanted = match self.inner.store.services.get(&service_id) {
                Ok(Some(service)) => {
                    service.desired == DesiredState::Running
                        && service
                            .image(&image_id)
                            .is_some_and(|image| image.node.as_ref() == Some(me))
                }
                Ok(None) => false,
                Err(_) => true, // unsure: leave it alone
            };
            drop(_guard);
            if !wanted {
                info!(container = %found.id, service = %service_id, image = %image_id, "removing container no service wants");
                self.stop_and_remove(&found.id).await;
            }
        }
    }

    pub(super) async fn stop_and_remove(&self, container_id: &str) {
        let engine = &self.inner.engine;
        if let Err(error) = engine
            .stop(container_id, self.inner.settings.stop_grace_secs)
            .await
        {
            debug!(container = %container_id, %error, "stop failed; removing anyway");
        }
        if let Err(error) = engine.remove(container_id).await {
            warn!(container = %container_id, %error, "cannot remove container");
        }
    }
}

pub(super) fn unplaced(mut record: ImageRecord, reason: String) -> ImageRecord {
    record.node = None;
    record.state = ImageState::Initial;
    record.reason = Some(reason);
    record.container_id = None;
    record
}

/// Logs pull progress at most every few seconds per image, so a slow pull on a Pi shows
/// that it advances without flooding the log.
pub(super) fn pull_logger(image: &str) -> impl Fn(PullProgress) + Send + Sync {
    let image = image.to_owned();
    let last = Arc::new(SyncMutex::new(None::<Instant>));
    move |progress: PullProgress| {
        let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| at.elapsed().as_secs() < 3) {
            return;
        }
        *last = Some(Instant::now());
        match (progress.current, progress.total) {
            (Some(current), Some(total)) if total > 0 => info!(
                %image, status = %progress.status, percent = current * 100 / total, "pulling image"
            ),
            _ => info!(%image, status = %progress.status, "pulling image"),
        }
    }
}
