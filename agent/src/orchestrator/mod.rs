//! The orchestrator: a reconcile loop in the shape of a Kubernetes controller. The
//! desired state is what the store holds (services and whether they should run); the
//! observed state is what the engine reports for containers carrying our labels and what
//! peers report for images they run for us. Each pass converges one towards the other and
//! is idempotent, so a pass may be repeated, interrupted or run by a freshly restarted
//! agent without creating a second container.

pub mod access;
pub mod container;
mod hosted;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
pub mod placement;
mod reconcile;
pub mod remote;
mod rollout;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod scripted_fog;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use futures::StreamExt;
use motey_val::{labels, EngineEvent, VirtualizationEngine};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config;
use crate::domain::{Blueprint, DesiredState, NodeId, Service, ServiceId, ServiceState};
use crate::lifecycle::{NodeLifecycle, NodePhase, NotOperating};
use crate::store::{Store, StoreError};
use remote::RemoteNodes;

pub use hosted::HostedImageError;
pub use lifecycle::DrainProgress;

/// Why an orchestration request was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("service {0} does not exist")]
    NotFound(ServiceId),
    #[error("service {service} is owned by node {owner}; terminate it there")]
    NotOwner { service: ServiceId, owner: NodeId },
    #[error(transparent)]
    NotOperating(#[from] NotOperating),
    /// Another live service of the same name runs on this node; the two would share
    /// their volumes.
    #[error("service {existing} named {name:?} already runs on this node; terminate it first or choose another name")]
    NameTaken { name: String, existing: ServiceId },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An update cannot start; `code` is the API's error code, `field` the offending one.
    #[error("{message}")]
    UpdateRefused {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
}

/// Runs the services of this node and of the peers that placed images here.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    store: Store,
    engine: Arc<dyn VirtualizationEngine>,
    remote: Arc<dyn RemoteNodes>,
    settings: config::Orchestrator,
    /// What this node lets an image do to its host; checked before every start.
    security: config::Security,
    /// Asks the loop for a pass now rather than at the next interval.
    wake: Notify,
    /// Serializes read-modify-write of service records between the API, peers and the
    /// loop, so that an update made while a pass pulls an image is not overwritten.
    records: Mutex<()>,
    /// This node's phase: only an operating node accepts deployments.
    lifecycle: NodeLifecycle,
    /// Milliseconds a peer may be gone before the images it runs for us are placed
    /// elsewhere (`[CLUSTER] reschedule_grace`).
    reschedule_grace_ms: AtomicU64,
    /// When this node first found each peer gone (reset once it answers again).
    gone_since: SyncMutex<HashMap<NodeId, std::time::Instant>>,
    /// When the owner of each hosted image last showed that it still wants it here
    /// (it asked for its status, or said so when asked).
    confirmed: SyncMutex<HashMap<(ServiceId, String), std::time::Instant>>,
}

impl Orchestrator {
    pub fn new(
        node: NodeId,
        store: Store,
        engine: Arc<dyn VirtualizationEngine>,
        remote: Arc<dyn RemoteNodes>,
        settings: config::Orchestrator,
        security: config::Security,
    ) -> Orchestrator {
        Orchestrator {
            inner: Arc::new(Inner {
                node,
                store,
                engine,
                remote,
                settings,
                security,
                wake: Notify::new(),
                records: Mutex::new(()),
                lifecycle: NodeLifecycle::new(NodePhase::Operating),
                reschedule_grace_ms: AtomicU64::new(0),
                gone_since: SyncMutex::new(HashMap::new()),
                confirmed: SyncMutex::new(HashMap::new()),
            }),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }

    pub fn engine(&self) -> &Arc<dyn VirtualizationEngine> {
        &self.inner.engine
    }

    pub fn remote(&self) -> &Arc<dyn RemoteNodes> {
        &self.inner.remote
    }

    /// This node's phase (operating unless the agent's health checks say otherwise).
    pub fn lifecycle(&self) -> &NodeLifecycle {
        &self.inner.lifecycle
    }

    /// How long a gone peer keeps the images it runs for this node before they are
    /// placed elsewhere; a peer back within it is re-adopted, not churned.
    pub fn set_reschedule_grace(&self, grace: Duration) {
        self.inner
            .reschedule_grace_ms
            .store(grace.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn reschedule_grace(&self) -> Duration {
        Duration::from_millis(self.inner.reschedule_grace_ms.load(Ordering::Relaxed))
    }

    /// Accepts a validated blueprint as a new service owned by this node. The service is
    /// stored (so it survives a crash) before this returns; the loop then places and
    /// starts its images.
    pub async fn submit(&self, blueprint: Blueprint) -> Result<Service, OrchestratorError> {
        self.inner
            .lifecycle
            .check_accepts_deployments(self.inner.node.as_str())?;
        let service = Service::new(ServiceId::generate(), blueprint, self.inner.node.clone());
        {
            let _guard = self.inner.records.lock().await;
            if let Some(existing) = self.live_namesake(&service.name, &service.id)? {
                return Err(OrchestratorError::NameTaken {
                    name: service.name.clone(),
                    existing,
                });
            }
            self.inner.store.services.put(&service)?;
        }
        info!(service = %service.id, name = %service.name, images = service.images.len(), "service accepted");
        self.wake();
        Ok(service)
    }

    /// Asks for a service to be terminated: its images are stopped and removed, wherever
    /// they run. Terminating a terminated service is not an error.
    pub async fn terminate(&self, id: &ServiceId) -> Result<Service, OrchestratorError> {
        let service = {
            let _guard = self.inner.records.lock().await;
            let mut service = self.load_owned(id)?;
            if service.desired != DesiredState::Terminated {
                service.desired = DesiredState::Terminated;
                service.state = ServiceState::Stopping;
                service.reason = None;
                service.updated_at = chrono::Utc::now();
                self.inner.store.services.put(&service)?;
                info!(service = %service.id, name = %service.name, "service termination asked for");
            }
            service
        };
        self.wake();
        Ok(service)
    }

    pub fn service(&self, id: &ServiceId) -> Result<Service, OrchestratorError> {
        self.load(id)
    }

    /// Every service this node knows: its own and those it hosts images of for peers.
    pub fn services(&self) -> Result<Vec<Service>, OrchestratorError> {
        let mut services = self.inner.store.services.list()?;
        services.sort_by_key(|service| service.created_at);
        Ok(services)
    }

    /// Asks for a reconcile pass as soon as possible.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs reconcile passes until `shutdown` is cancelled: one at start (adopting what a
    /// previous run left), then on every wake-up, engine event or interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_secs(self.inner.settings.reconcile_interval_secs);
        let events = tokio::spawn(self.clone().follow_engine_events(shutdown.clone()));
        info!(node = %self.inner.node, interval_secs = interval.as_secs(), "orchestrator started");
        loop {
            self.reconcile_all().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
        events.abort();
        info!("orchestrator stopped; containers keep running and are adopted on the next start");
    }

    /// Wakes the loop when a container of this node changes, so a crash shows up within
    /// moments instead of at the next interval.
    async fn follow_engine_events(self, shutdown: CancellationToken) {
        let node = self.inner.node.to_string();
        loop {
            let mut events = self.inner.engine.events();
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.next() => event,
                };
                match event {
                    Some(Ok(EngineEvent::ContainerChanged {
                        labels: found,
                        action,
                        container_id,
                        ..
                    })) => {
                        if found.get(labels::NODE_ID) == Some(&node) {
                            debug!(container = %container_id, %action, "container changed");
                            self.wake();
                        }
                    }
                    Some(Err(error)) => {
                        debug!(%error, "engine event stream failed");
                        break;
                    }
                    None => break,
                }
            }
            // The engine went away or restarted: reconcile, then follow again.
            self.wake();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// One pass over every service, then over containers nobody wants any more. Services
    /// are converged concurrently so a long image pull does not hold up the others.
    pub async fn reconcile_all(&self) {
        let services = match self.inner.store.services.list() {
            Ok(services) => services,
            Err(error) => {
                warn!(%error, "cannot read services; skipping this pass");
                return;
            }
        };
        futures::future::join_all(
            services
                .into_iter()
                .filter(|service| !service.state.is_final())
                .map(|service| self.reconcile_service(service)),
        )
        .await;
        self.remove_orphans().await;
    }

    fn load(&self, id: &ServiceId) -> Result<Service, OrchestratorError> {
        self.inner
            .store
            .services
            .get(id.as_str())?
            .ok_or_else(|| OrchestratorError::NotFound(id.clone()))
    }

    /// A service this node owns: only its owner changes what a service should be.
    fn load_owned(&self, id: &ServiceId) -> Result<Service, OrchestratorError> {
        let service = self.load(id)?;
        if service.owner != self.inner.node {
            return Err(OrchestratorError::NotOwner {
                service: id.clone(),
                owner: service.owner,
            });
        }
        Ok(service)
    }
}
