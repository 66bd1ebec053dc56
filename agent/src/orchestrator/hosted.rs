//! Images this node runs on behalf of peers. A peer's deploy request becomes a service
//! record owned by that peer, holding only the images placed here; the reconcile loop
//! treats it like any other service, so hosted images also survive an agent restart.

use tracing::info;

use super::Orchestrator;
use crate::domain::{
    Capability, DesiredState, ImageDeployment, ImageRecord, ImageStatus, NodeId, Service,
    ServiceId, ServiceState,
};
use crate::store::StoreError;

/// Why a peer's request about a hosted image was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostedImageError {
    #[error("image {image} of service {service} not found")]
    NotFound { service: ServiceId, image: String },
    #[error("this node lacks the capabilities {0}")]
    MissingCapabilities(String),
    #[error(transparent)]
    NotOperating(#[from] crate::lifecycle::NotOperating),
    #[error("node {0} {decommissioning}; place the image elsewhere", decommissioning = super::lifecycle::DECOMMISSIONING)]
    Decommissioning(crate::domain::NodeId),
    /// The image asks for something this node's `[SECURITY]` does not allow.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyRefused),
    /// The service is this node's own, or hosted here for another node than the sender.
    #[error("service {service} belongs to node {owner}; node {sender} may not deploy, observe or terminate its images here")]
    NotOwner {
        service: ServiceId,
        owner: NodeId,
        sender: NodeId,
    },
    /// The deployment names another owner than the node that sent it.
    #[error("the deployment names node {claimed} as its owner but was sent by node {sender}")]
    ForgedOwner { claimed: NodeId, sender: NodeId },
    /// Another service of the same name runs here: it would share that service's volumes.
    #[error("this node already runs service {existing} named {name:?}; a second service of that name would share its volumes")]
    NameTaken { name: String, existing: ServiceId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Orchestrator {
    /// What this node offers to images.
    pub fn capabilities(&self) -> Result<Vec<Capability>, StoreError> {
        self.inner.store.capabilities.list()
    }

    /// The peer `sender` (authenticated by the peer protocol) asks this node to run one
    /// image of a service it owns. The sender becomes the owner of the hosted service at
    /// its first deployment and stays it; this node's own `[SECURITY]` decides whether the
    /// image may run here, whatever the owner's allows.
    pub async fn host_image(
        &self,
        sender: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, HostedImageError> {
        self.inner
            .lifecycle
            .check_accepts_deployments(self.inner.node.as_str())?;
        if &deployment.owner != sender {
            return Err(HostedImageError::ForgedOwner {
                claimed: deployment.owner.clone(),
                sender: sender.clone(),
            });
        }
        crate::policy::check(
            &deployment.service_name,
            std::slice::from_ref(&deployment.image),
            &self.inner.security,
        )?;
        let offered: Vec<String> = self
            .capabilities()?
            .into_iter()
            .map(|c| c.capability)
            .collect();
        let missing: Vec<&str> = deployment
            .image
            .capabilities
            .iter()
            .filter(|needed| !offered.contains(needed))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(HostedImageError::MissingCapabilities(missing.join(", ")));
        }
        let me = self.inner.node.clone();
        let status = {
            let _guard = self.inner.records.lock().await;
            let store = &self.inner.store.services;
            let existing = store.get(deployment.service_id.as_str())?;
            match &existing {
                Some(service) => self.check_owner(service, sender)?,
                None => {
                    let name = &deployment.service_name;
                    if let Some(existing) = self.live_namesake(name, &deployment.service_id)? {
                        return Err(HostedImageError::NameTaken {
                            name: name.clone(),
                            existing,
                        });
                    }
                }
            }
            let mut service = existing.unwrap_or_else(|| {
                let mut service = Service::new(
                    deployment.service_id.clone(),
                    crate::domain::Blueprint {
                        service_name: deployment.service_name.clone(),
                        images: vec![],
                    },
                    sender.clone(),
                );
                service.state = ServiceState::Instantiating;
                service
            });
            service.desired = DesiredState::Running;
            let image_id = deployment.image.id.clone();
            match service.image_mut(&image_id) {
                // A repeated request (the owner retried after a lost reply) changes nothing.
                Some(existing)
                    if existing.blueprint == deployment.image
                        && existing.version == deployment.version => {}
                Some(existing) => *existing = hosted_record(&deployment, &me),
                None => service.images.push(hosted_record(&deployment, &me)),
            }
            service.updated_at = chrono::Utc::now();
            store.put(&service)?;
            status_of(&service, &image_id, &me)
        };
        info!(service = %deployment.service_id, image = %status.image_id, owner = %deployment.owner, "hosting image for peer");
        self.wake();
        Ok(status)
    }

    /// The state of an image this node hosts for `sender`.
    pub fn hosted_image_status(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image: &str,
    ) -> Result<ImageStatus, HostedImageError> {
        if self.inner.lifecycle.current().phase == crate::lifecycle::NodePhase::Decommissioning {
            return Err(HostedImageError::Decommissioning(self.inner.node.clone()));
        }
        let found = self.inner.store.services.get(service.as_str())?;
        if let Some(record) = &found {
            self.check_owner(record, sender)?;
        }
        if found.as_ref().is_some_and(|s| s.image(image).is_some()) {
            self.owner_showed_interest(service, image);
        }
        found
            .filter(|s| s.image(image).is_some())
            .map(|s| status_of(&s, image, &self.inner.node))
            .ok_or_else(|| HostedImageError::NotFound {
                service: service.clone(),
                image: image.to_owned(),
            })
    }

    /// The owner `sender` takes an image back: forget it; the loop removes its container.
    pub async fn release_hosted_image(
        &self,
        sender: &NodeId,
        service: &ServiceId,
        image: &str,
    ) -> Result<(), HostedImageError> {
        if let Some(record) = self.inner.store.services.get(service.as_str())? {
            self.check_owner(&record, sender)?;
        }
        self.forget_hosted_image(service, image).await
    }

    /// Forgets an image hosted here (its owner took it back, or this node gives it up);
    /// the loop removes its container.
    pub(super) async fn forget_hosted_image(
        &self,
        service: &ServiceId,
        image: &str,
    ) -> Result<(), HostedImageError> {
        {
            let _guard = self.inner.records.lock().await;
            let store = &self.inner.store.services;
            let Some(mut record) = store.get(service.as_str())? else {
                return Ok(()); // already gone: releasing twice is fine
            };
            record.images.retain(|candidate| candidate.id() != image);
            if record.images.is_empty() && record.owner != self.inner.node {
                store.remove(service.as_str())?;
            } else {
                store.put(&record)?;
            }
        }
        info!(%service, %image, "hosted image released");
        self.wake();
        Ok(())
    }
}

impl Orchestrator {
    /// Only the node that first deployed a hosted service may change or observe it, and
    /// no peer may touch a service this node owns itself.
    fn check_owner(&self, service: &Service, sender: &NodeId) -> Result<(), HostedImageError> {
        if service.owner == self.inner.node || &service.owner != sender {
            return Err(HostedImageError::NotOwner {
                service: service.id.clone(),
                owner: service.owner.clone(),
                sender: sender.clone(),
            });
        }
        Ok(())
    }

    /// Volumes are scoped by service name ([`crate::policy`]), so a node runs at most one
    /// live service of each name, its own or hosted: the one other than `id`, if any.
    pub(super) fn live_namesake(
        &self,
        name: &str,
        id: &ServiceId,
    ) -> Result<Option<ServiceId>, StoreError> {
        Ok(self
            .inner
            .store
            .services
            .list()?
            .into_iter()
            .find(|service| {
                service.name == name
                    && &service.id != id
                    && service.desired == DesiredState::Running
            })
            .map(|service| service.id))
    }
}

fn hosted_record(deployment: &ImageDeployment, node: &NodeId) -> ImageRecord {
    let mut record = ImageRecord::new(deployment.image.clone());
    record.node = Some(node.clone());
    record.version = deployment.version;
    record
}

fn status_of(service: &Service, image: &str, node: &NodeId) -> ImageStatus {
    let record = service.image(image);
    ImageStatus {
        service_id: service.id.clone(),
        image_id: image.to_owned(),
        node: node.clone(),
        state: record
            .map(|r| r.state)
            .unwrap_or(motey_val::ImageState::Terminated),
        reason: record.and_then(|r| r.reason.clone()),
        container_id: record.and_then(|r| r.container_id.clone()),
    }
}
