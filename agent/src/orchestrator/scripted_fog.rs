//! A scripted fog for the orchestrator's unit tests: peers whose liveness, phase and
//! capabilities a test sets, which record what they are asked and run whatever they are
//! given — except an image whose blueprint sets `V: broken`, which exits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use motey_val::ImageState;

use super::remote::{RemoteError, RemoteNodes};
use crate::domain::{
    Capability, ImageBlueprint, ImageDeployment, ImageStatus, NodeId, NodeInfo, ServiceId,
};

pub(super) fn node(id: &str) -> NodeId {
    NodeId(id.into())
}

pub(super) fn probe() -> Capability {
    Capability {
        capability: "optical-probe".into(),
        capability_type: "hardware".into(),
    }
}

/// How one scripted peer behaves.
#[derive(Debug, Clone)]
pub(super) struct Script {
    pub alive: bool,
    pub gone: bool,
    pub decommissioning: bool,
    pub probe: bool,
}

impl Script {
    pub fn capable() -> Script {
        Script {
            alive: true,
            gone: false,
            decommissioning: false,
            probe: true,
        }
    }
}

/// Peers with scripted liveness and phase; records deployments and terminations, and
/// answers assignment questions as told.
#[derive(Default)]
pub(super) struct Fog {
    peers: Mutex<HashMap<NodeId, Script>>,
    pub deployed: Mutex<Vec<(NodeId, ImageDeployment)>>,
    pub terminated: Mutex<Vec<(NodeId, String)>>,
    /// The owner's answer to "do you still want me to run this"; `None`: unreachable.
    pub assigned: Mutex<Option<bool>>,
    pub asked: Mutex<usize>,
}

impl Fog {
    pub fn with(peers: &[(&str, Script)]) -> Arc<Fog> {
        let fog = Fog::default();
        for (id, script) in peers {
            fog.join(id, script.clone());
        }
        Arc::new(fog)
    }

    /// A peer joins (or is replaced).
    pub fn join(&self, id: &str, script: Script) {
        self.peers.lock().unwrap().insert(node(id), script);
    }

    pub fn script(&self, id: &str) -> Script {
        self.peers.lock().unwrap()[&node(id)].clone()
    }

    pub fn change(&self, id: &str, change: impl FnOnce(&mut Script)) {
        change(self.peers.lock().unwrap().get_mut(&node(id)).unwrap());
    }

    /// The blueprint of `image` deployed last to node `id`.
    pub fn last_deployed(&self, id: &str, image: &str) -> Option<ImageBlueprint> {
        self.deployed
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(to, deployment)| to.as_str() == id && deployment.image.id == image)
            .map(|(_, deployment)| deployment.image.clone())
    }

    pub fn deployments_to(&self, id: &str) -> usize {
        self.deployed
            .lock()
            .unwrap()
            .iter()
            .filter(|(to, _)| to.as_str() == id)
            .count()
    }
}

fn info(id: &NodeId) -> NodeInfo {
    NodeInfo {
        id: id.clone(),
        name: id.to_string(),
        addresses: vec!["127.0.0.1".into()],
        rest_port: 1,
        peer_port: 2,
        last_seen: None,
        version: String::new(),
        capabilities_digest: String::new(),
    }
}

#[async_trait::async_trait]
impl RemoteNodes for Fog {
    async fn alive_peers(&self) -> Vec<NodeInfo> {
        let mut alive: Vec<NodeInfo> = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, script)| script.alive)
            .map(|(id, _)| info(id))
            .collect();
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        alive
    }

    async fn capabilities(&self, node: &NodeId) -> Result<Vec<Capability>, RemoteError> {
        let script = self.script(node.as_str());
        Ok(if script.probe { vec![probe()] } else { vec![] })
    }

    async fn deploy_image(
        &self,
        node: &NodeId,
        deployment: ImageDeployment,
    ) -> Result<ImageStatus, RemoteError> {
        if self.script(node.as_str()).decommissioning {
            return Err(RemoteError::Refused {
                node: node.clone(),
                reason: format!("node {node} is decommissioning and accepts no deployments"),
            });
        }
        self.deployed
            .lock()
            .unwrap()
            .push((node.clone(), deployment.clone()));
        Ok(ImageStatus {
            service_id: deployment.service_id,
            image_id: deployment.image.id,
            node: node.clone(),
            state: ImageState::Instantiating,
            reason: None,
            container_id: None,
        })
    }

    async fn image_status(
        &self,
        node: &NodeId,
        service_id: &ServiceId,
        image_id: &str,
    ) -> Result<ImageStatus, RemoteError> {
        let script = self.script(node.as_str());
        if !script.alive {
            return Err(RemoteError::Unreachable {
                node: node.clone(),
                reason: "node is gone".into(),
            });
        }
        if script.decommissioning {
            return Err(RemoteError::Decommissioning {
                node: node.clone(),
                reason: format!("node {node} is decommissioning; place the image elsewhere"),
            });
        }
        let broken = self
            .last_deployed(node.as_str(), image_id)
            .is_some_and(|image| image.env.get("V").map(String::as_str) == Some("broken"));
        Ok(ImageStatus {
            service_id: service_id.clone(),
            image_id: image_id.into(),
            node: node.clone(),
            state: if broken {
                ImageState::Error
            } else {
                ImageState::Running
            },
            reason: broken.then(|| "exited with code 1".into()),
            container_id: Some(format!("{node}-container")),
        })
    }

    async fn is_gone(&self, node: &NodeId) -> bool {
        self.peers
            .lock()
            .unwrap()
            .get(node)
            .is_none_or(|script| script.gone)
    }

    async fn image_assigned(
        &self,
        owner: &NodeId,
        _service_id: &ServiceId,
        _image_id: &str,
    ) -> Result<bool, RemoteError> {
        *self.asked.lock().unwrap() += 1;
        self.assigned
            .lock()
            .unwrap()
            .ok_or_else(|| RemoteError::Unreachable {
                node: owner.clone(),
                reason: "cut off".into(),
            })
    }

    async fn terminate_image(
        &self,
        node: &NodeId,
        _service_id: &ServiceId,
        image_id: &str,
    ) -> Result<(), RemoteError> {
        self.terminated
            .lock()
            .unwrap()
            .push((node.clone(), image_id.into()));
        Ok(())
    }
}
