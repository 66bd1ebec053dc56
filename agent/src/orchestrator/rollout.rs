//! Updates of a running service to a new blueprint version (FR-10), as part of the
//! reconcile loop. The service record holds the rollout (target and previous blueprint,
//! the image being replaced, since when its new container runs); each pass takes one step
//! from what the engine shows, so a restarted agent goes on where the last one stopped.
//!
//! Images are replaced one at a time: the new container is started beside the old one,
//! must keep running for `[ORCHESTRATOR] update_settle` seconds, and only then is the old
//! one stopped — so some version of the image always runs. Where two containers cannot
//! coexist (a fixed container name or a fixed host port), the old one is stopped first.
//! An image hosted on a peer is replaced by a new deployment there (the peer recreates
//! it). When a new container fails or does not run within `update_timeout`, the update
//! is rolled back: images already replaced get their previous version back, the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use motey_val::{labels, ContainerStatus, ImageState};
use tracing::{info, warn};

use super::{container, Orchestrator, OrchestratorError};
use crate::domain::{
    Blueprint, DesiredState, ImageBlueprint, ImageDeployment, ImageRecord, NodeId, RevisionEvent,
    Rollout, RolloutPhase, Service, ServiceId,
};

/// Where one step of a rollout stands after a pass.
enum Step {
    /// Still waiting: the new container was asked for, or has not run long enough.
    Waiting {
        step_started_at: Option<chrono::DateTime<Utc>>,
        running_since: Option<chrono::DateTime<Utc>>,
    },
    /// The new version runs and the old one is gone.
    Replaced { container_id: Option<String> },
    /// The new version does not run; the reason says why.
    Failed(String),
}

/// The image the service's rollout replaces now: the first whose blueprint is not yet the
/// one the rollout moves to.
pub(super) fn image_being_replaced(service: &Service) -> Option<String> {
    let rollout = service.rollout.as_ref().filter(|r| r.active())?;
    if service.desired != DesiredState::Running {
        return None;
    }
    let goal = goal_of(rollout);
    service
        .images
        .iter()
        .find(|image| {
            goal.get(image.id())
                .is_some_and(|wanted| *wanted != &image.blueprint)
        })
        .map(|image| image.id().to_owned())
}

/// The blueprint of each image the rollout moves towards, and the version it carries.
fn goal_of(rollout: &Rollout) -> BTreeMap<&str, &ImageBlueprint> {
    let blueprint = match rollout.phase {
        RolloutPhase::RollingBack => &rollout.previous,
        _ => &rollout.target,
    };
    blueprint
        .images
        .iter()
        .map(|image| (image.id.as_str(), image))
        .collect()
}

fn goal_version(rollout: &Rollout) -> u32 {
    match rollout.phase {
        RolloutPhase::RollingBack => rollout.from_version,
        _ => rollout.to_version,
    }
}

/// Checks that `target` may replace the blueprint of `service`: the same images (names)
/// with the same capabilities, so that every image stays where it was placed. Returns the
/// offending field and why.
fn check_compatible(service: &Service, target: &Blueprint) -> Result<(), (String, String)> {
    if target.service_name != service.name {
        return Err((
            "name".into(),
            format!(
                "an update keeps the service name {:?}; deploy {:?} as a new service",
                service.name, target.service_name
            ),
        ));
    }
    for (index, image) in target.images.iter().enumerate() {
        match service.image(&image.id) {
            None => {
                return Err((
                    format!("images[{index}].name"),
                    format!(
                        "image {:?} is not part of the service; an update replaces the images {}",
                        image.id,
                        service
                            .images
                            .iter()
                            .map(|i| i.id().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
            Some(record) => {
                let mut before = record.blueprint.capabilities.clone();
                let mut after = image.capabilities.clone();
                before.sort();
                after.sort();
                if before != after {
                    return Err((
                        format!("images[{index}].capabilities"),
                        format!(
                            "an update keeps the capabilities of image {:?} ({}) so that it stays on its node",
                            image.id,
                            before.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    if let Some(missing) = service
        .images
        .iter()
        .find(|record| !target.images.iter().any(|image| image.id == record.id()))
    {
        return Err((
            "images".into(),
            format!(
                "image {:?} of the service is missing; an update replaces images, it does not remove them",
                missing.id()
            ),
        ));
    }
    Ok(())
}

impl Orchestrator {
    /// Starts the update of a service to a new blueprint version. The rollout is stored
    /// before this returns; the loop then replaces the images one at a time.
    pub async fn update(
        &self,
        id: &ServiceId,
        target: Blueprint,
    ) -> Result<Service, OrchestratorError> {
        let refused = |code: &'static str, field: Option<String>, message: String| {
            OrchestratorError::UpdateRefused {
                code,
                field,
                message,
            }
        };
        let service = {
            let _guard = self.inner.records.lock().await;
            let mut service = self.load_owned(id)?;
            if service.desired != DesiredState::Running {
                return Err(refused(
                    "service_terminated",
                    None,
                    format!("service {id} is terminated; deploy the blueprint as a new service"),
                ));
            }
            if let Some(rollout) = service.rollout.as_ref().filter(|r| r.active()) {
                return Err(refused(
                    "update_in_progress",
                    None,
                    format!(
                        "service {id} is being updated ({}); wait for the update to end",
                        rollout.describe()
                    ),
                ));
            }
            check_compatible(&service, &target)
                .map_err(|(field, message)| refused("invalid_update", Some(field), message))?;
            let previous = service.blueprint();
            if previous.images == target.images {
                return Err(refused(
                    "no_change",
                    None,
                    format!("the blueprint is the one version {} runs", service.version),
                ));
            }
            let to_version = service.version + 1;
            let now = Utc::now();
            service.record_history(RevisionEvent::UpdateStarted, to_version, &target, None);
            service.rollout = Some(Rollout {
                from_version: service.version,
                to_version,
                phase: RolloutPhase::Updating,
                target,
                previous,
                current_image: None,
                step_started_at: None,
                running_since: None,
                reason: None,
                started_at: now,
                finished_at: None,
            });
            service.refresh_state();
            self.inner.store.services.put(&service)?;
            info!(service = %service.id, name = %service.name, from = to_version - 1, to = to_version, "service update asked for");
            service
        };
        self.wake();
        Ok(service)
    }

    /// One step of the service's rollout: replace the current image, or finish.
    pub(super) async fn advance_rollout(&self, snapshot: &Service) {
        let Some(rollout) = snapshot.rollout.clone().filter(Rollout::active) else {
            return;
        };
        let Some(image_id) = image_being_replaced(snapshot) else {
            self.finish_rollout(snapshot, &rollout).await;
            return;
        };
        let Some(record) = snapshot.image(&image_id).cloned() else {
            return;
        };
        let goal = goal_of(&rollout);
        let Some(wanted) = goal.get(image_id.as_str()).map(|bp| (*bp).clone()) else {
            return;
        };
        let version = goal_version(&rollout);
        // A step that belongs to another image (the previous one just finished) starts
        // afresh.
        let mut progress = rollout.clone();
        if progress.current_image.as_deref() != Some(image_id.as_str()) {
            progress.current_image = Some(image_id.clone());
            progress.step_started_at = None;
            progress.running_since = None;
        }
        let step = match record.node.clone() {
            Some(node) if node == self.inner.node => {
                self.replace_local(snapshot, &record, &wanted, version, &progress)
                    .await
            }
            Some(node) => {
                self.replace_remote(snapshot, &wanted, version, node, &progress)
                    .await
            }
            // Not placed anywhere: nothing runs to be replaced; placing it is the loop's.
            None => Step::Replaced { container_id: None },
        };
        self.record_step(
            snapshot, &rollout, &image_id, wanted, version, progress, step,
        )
        .await;
    }

    /// Makes the wanted version of a local image run beside the old one, then removes the
    /// old one.
    async fn replace_local(
        &self,
        service: &Service,
        record: &ImageRecord,
        wanted: &ImageBlueprint,
        version: u32,
        progress: &Rollout,
    ) -> Step {
        let engine = &self.inner.engine;
        let me = &self.inner.node;
        let old_spec = container::versioned_spec(service, &record.blueprint, me, record.version);
        let new_spec = container::versioned_spec(service, wanted, me, version);
        let selector = container::selector(me, service.id.as_str(), record.id());
        let Ok(containers) = engine.list(&selector).await else {
            return waiting(progress);
        };
        let digest = |c: &ContainerStatus| c.labels.get(labels::SPEC_DIGEST).cloned();
        let (new, rest): (Vec<ContainerStatus>, Vec<ContainerStatus>) = containers
            .into_iter()
            .partition(|c| digest(c).as_ref() == Some(&new_spec.labels[labels::SPEC_DIGEST]));
        let (old, others): (Vec<ContainerStatus>, Vec<ContainerStatus>) = rest
            .into_iter()
            .partition(|c| digest(c).as_ref() == Some(&old_spec.labels[labels::SPEC_DIGEST]));
        for stray in others.iter().chain(new.iter().skip(1)) {
            info!(container = %stray.id, image = %record.id(), "removing container of neither version");
            self.stop_and_remove(&stray.id).await;
        }
        let Some(current) = new.into_iter().next() else {
            if progress.step_started_at.is_some() && progress.running_since.is_some() {
                return Step::Failed(format!(
                    "the container of version {version} vanished while it was checked"
                ));
            }
            if container::exclusive(&new_spec, wanted)
                || container::exclusive(&old_spec, &record.blueprint)
            {
                // A fixed name or host port: the two versions cannot run side by side.
                for container in &old {
                    info!(container = %container.id, image = %record.id(), "stopping the old version first (fixed name or host port)");
                    self.stop_and_remove(&container.id).await;
                }
            }
            if let Err(error) = engine
                .ensure_image(
                    &new_spec.image,
                    &super::reconcile::pull_logger(&new_spec.image),
                )
                .await
            {
                return Step::Failed(error.to_string());
            }
            return match engine.create_and_start(&new_spec).await {
                Ok(id) => {
                    info!(service = %service.id, image = %record.id(), container = %id, version, "new version started beside the old one");
                    Step::Waiting {
                        step_started_at: Some(Utc::now()),
                        running_since: None,
                    }
                }
                Err(error) => Step::Failed(error.to_string()),
            };
        };
        match current.state {
            ImageState::Running => {
                let since = progress.running_since.unwrap_or_else(Utc::now);
                if !self.settled(since) {
                    return Step::Waiting {
                        step_started_at: progress.step_started_at.or(Some(since)),
                        running_since: Some(since),
                    };
                }
                for container in &old {
                    info!(container = %container.id, image = %record.id(), "new version runs; stopping the old one");
                    self.stop_and_remove(&container.id).await;
                }
                Step::Replaced {
                    container_id: Some(current.id),
                }
            }
            ImageState::Initial | ImageState::Instantiating => self.within_timeout(progress),
            ImageState::Error | ImageState::Stopping | ImageState::Terminated => {
                let reason = current.reason.clone().unwrap_or_else(|| {
                    format!(
                        "the container stopped ({}{})",
                        current.engine_state,
                        current
                            .exit_code
                            .map(|code| format!(", exit code {code}"))
                            .unwrap_or_default()
                    )
                });
                // The failed container goes; the loop keeps or restores the old version.
                self.stop_and_remove(&current.id).await;
                Step::Failed(reason)
            }
        }
    }

    /// Deploys the wanted version on the peer hosting the image, then watches it there.
    async fn replace_remote(
        &self,
        service: &Service,
        wanted: &ImageBlueprint,
        version: u32,
        node: NodeId,
        progress: &Rollout,
    ) -> Step {
        let remote = &self.inner.remote;
        if progress.step_started_at.is_none() {
            let deployment = ImageDeployment {
                service_id: service.id.clone(),
                service_name: service.name.clone(),
                owner: self.inner.node.clone(),
                image: wanted.clone(),
                version,
            };
            return match remote.deploy_image(&node, deployment).await {
                Ok(_) => {
                    info!(service = %service.id, image = %wanted.id, %node, "new version deployed on the peer");
                    Step::Waiting {
                        step_started_at: Some(Utc::now()),
                        running_since: None,
                    }
                }
                Err(error) => Step::Failed(error.to_string()),
            };
        }
        match remote.image_status(&node, &service.id, &wanted.id).await {
            Ok(status) => match status.state {
                ImageState::Running => {
                    let since = progress.running_since.unwrap_or_else(Utc::now);
                    if self.settled(since) {
                        Step::Replaced {
                            container_id: status.container_id,
                        }
                    } else {
                        Step::Waiting {
                            step_started_at: progress.step_started_at,
                            running_since: Some(since),
                        }
                    }
                }
                ImageState::Initial | ImageState::Instantiating => self.within_timeout(progress),
                _ => {
                    Step::Failed(status.reason.unwrap_or_else(|| {
                        format!("the image is {:?} on node {node}", status.state)
                    }))
                }
            },
            Err(error) => {
                warn!(service = %service.id, image = %wanted.id, %node, %error, "cannot observe the updated image");
                self.within_timeout(progress)
            }
        }
    }

    fn settled(&self, since: chrono::DateTime<Utc>) -> bool {
        let settle = self.inner.settings.update_settle_secs as i64;
        (Utc::now() - since).num_milliseconds() >= settle * 1000
    }

    /// The new version does not run (yet): wait, unless it has had its time. Seen not
    /// running, it must run a full `update_settle` again — a container its restart
    /// policy keeps restarting does not pass by being caught running twice.
    fn within_timeout(&self, progress: &Rollout) -> Step {
        let timeout = self.inner.settings.update_timeout_secs;
        match progress.step_started_at {
            Some(started) if (Utc::now() - started).num_seconds() as u64 >= timeout => {
                Step::Failed(format!(
                    "the new version did not run within {timeout} s ([ORCHESTRATOR] update_timeout)"
                ))
            }
            _ => Step::Waiting {
                step_started_at: progress.step_started_at,
                running_since: None,
            },
        }
    }

    /// Stores the outcome of a step, unless the service changed meanwhile (terminated, or
    /// the rollout replaced).
    #[allow(clippy::too_many_arguments)]
    async fn record_step(
        &self,
        snapshot: &Service,
        rollout: &Rollout,
        image_id: &str,
        wanted: ImageBlueprint,
        version: u32,
        mut progress: Rollout,
        step: Step,
    ) {
        let mut wake_soon = true;
        {
            let _guard = self.inner.records.lock().await;
            let Ok(Some(mut current)) = self.inner.store.services.get(snapshot.id.as_str()) else {
                return;
            };
            if current.desired != DesiredState::Running || current.rollout.as_ref() != Some(rollout)
            {
                return;
            }
            match step {
                Step::Waiting {
                    step_started_at,
                    running_since,
                } => {
                    progress.step_started_at = step_started_at;
                    progress.running_since = running_since;
                }
                Step::Replaced { container_id } => {
                    if let Some(record) = current.image_mut(image_id) {
                        record.blueprint = wanted;
                        record.version = version;
                        if container_id.is_some() {
                            record.container_id = container_id;
                            record.state = ImageState::Running;
                            record.reason = None;
                        }
                    }
                    info!(service = %current.id, image = %image_id, version, "image replaced");
                    progress.current_image = None;
                    progress.step_started_at = None;
                    progress.running_since = None;
                }
                Step::Failed(reason) => match progress.phase {
                    RolloutPhase::Updating => {
                        let reason = format!("image {image_id} version {version}: {reason}");
                        // A peer now holds the failed version: mark it as replaced, so that
                        // rolling back deploys the previous version there again.
                        if let Some(record) = current.image_mut(image_id) {
                            if record.node.as_ref() != Some(&self.inner.node) {
                                record.blueprint = wanted;
                                record.version = version;
                            }
                        }
                        warn!(service = %current.id, %reason, "update failed; rolling back");
                        progress.phase = RolloutPhase::RollingBack;
                        progress.reason = Some(reason);
                        progress.current_image = None;
                        progress.step_started_at = None;
                        progress.running_since = None;
                    }
                    _ => {
                        // The previous version does not come back the gentle way: put its
                        // blueprint back and let the loop recreate (or report) it.
                        warn!(service = %current.id, image = %image_id, %reason, "rolling back the image failed; restoring it directly");
                        if let Some(record) = current.image_mut(image_id) {
                            record.blueprint = wanted;
                            record.version = version;
                            record.state = ImageState::Initial;
                            record.reason = Some(reason);
                        }
                        progress.current_image = None;
                        progress.step_started_at = None;
                        progress.running_since = None;
                    }
                },
            }
            wake_soon = wake_soon && progress.active();
            current.rollout = Some(progress);
            current.refresh_state();
            if let Err(error) = self.inner.store.services.put(&current) {
                warn!(service = %current.id, %error, "cannot store update progress");
            }
        }
        if wake_soon {
            self.wake_after(Duration::from_millis(500));
        }
    }

    /// Ends a rollout whose images all run the version it moved to.
    async fn finish_rollout(&self, snapshot: &Service, rollout: &Rollout) {
        let _guard = self.inner.records.lock().await;
        let Ok(Some(mut current)) = self.inner.store.services.get(snapshot.id.as_str()) else {
            return;
        };
        if current.rollout.as_ref() != Some(rollout) {
            return;
        }
        let mut done = rollout.clone();
        done.finished_at = Some(Utc::now());
        done.current_image = None;
        done.step_started_at = None;
        done.running_since = None;
        match rollout.phase {
            RolloutPhase::Updating => {
                done.phase = RolloutPhase::Completed;
                current.version = rollout.to_version;
                current.record_history(
                    RevisionEvent::Updated,
                    rollout.to_version,
                    &rollout.target,
                    None,
                );
                info!(service = %current.id, name = %current.name, version = rollout.to_version, "service updated");
            }
            _ => {
                done.phase = RolloutPhase::RolledBack;
                current.record_history(
                    RevisionEvent::RolledBack,
                    rollout.to_version,
                    &rollout.target,
                    rollout.reason.clone(),
                );
                warn!(service = %current.id, name = %current.name, version = rollout.from_version, reason = rollout.reason.as_deref().unwrap_or(""), "update rolled back");
            }
        }
        current.rollout = Some(done);
        current.refresh_state();
        if let Err(error) = self.inner.store.services.put(&current) {
            warn!(service = %current.id, %error, "cannot store the end of the update");
        }
    }

    /// Asks for a pass after `delay` (a rollout waiting for a container to settle).
    fn wake_after(&self, delay: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.wake();
        });
    }
}

fn waiting(progress: &Rollout) -> Step {
    Step::Waiting {
        step_started_at: progress.step_started_at,
        running_since: progress.running_since,
    }
}
