//! How an image of a service becomes a container: its name, its labels (which let a
//! restarted agent find what it runs) and a digest of its specification (which tells
//! whether a running container still matches the blueprint).

use std::collections::BTreeMap;

use motey_val::{labels, ContainerSpec};
use sha2::{Digest, Sha256};

use crate::domain::{ImageBlueprint, NodeId, Service};

/// The engine-neutral specification of the container for `image` of `service` on `node`.
pub fn spec(service: &Service, image: &ImageBlueprint, node: &NodeId) -> ContainerSpec {
    versioned_spec(service, image, node, 1)
}

/// As [`spec`], for the blueprint version `version` of the image. Versions after the
/// first get their own default container name, so that an update can start the new
/// container while the old one still runs.
pub fn versioned_spec(
    service: &Service,
    image: &ImageBlueprint,
    node: &NodeId,
    version: u32,
) -> ContainerSpec {
    let mut spec = ContainerSpec {
        name: image.container_name.clone().unwrap_or_else(|| {
            let name = default_name(service, image, node);
            if version > 1 {
                format!("{name}-v{version}")
            } else {
                name
            }
        }),
        image: image.image.clone(),
        command: image.command.clone(),
        env: image.env.clone(),
        ports: image.ports.clone(),
        volumes: image.volumes.clone(),
        devices: image.devices.clone(),
        restart: image.restart,
        labels: BTreeMap::new(),
        privileges: image.privileges.clone(),
    };
    let digest = digest(&spec);
    spec.labels = BTreeMap::from([
        (labels::MANAGED.to_owned(), "true".to_owned()),
        (labels::SERVICE_ID.to_owned(), service.id.to_string()),
        (labels::SERVICE_NAME.to_owned(), service.name.clone()),
        (labels::IMAGE_ID.to_owned(), image.id.clone()),
        (labels::NODE_ID.to_owned(), node.to_string()),
        (labels::SPEC_DIGEST.to_owned(), digest),
    ]);
    spec
}

/// Whether two containers of this specification cannot run side by side.
pub fn exclusive(spec: &ContainerSpec, image: &ImageBlueprint) -> bool {
    image.container_name.is_some() || spec.ports.iter().any(|port| port.host_port.is_some())
}

/// Labels selecting every container this node runs for one image of a service.
pub fn selector(node: &NodeId, service: &str, image_id: &str) -> BTreeMap<String, String> {
    let mut selector = node_selector(node);
    selector.insert(labels::SERVICE_ID.to_owned(), service.to_owned());
    selector.insert(labels::IMAGE_ID.to_owned(), image_id.to_owned());
    selector
}

/// Labels selecting every container this node manages.
pub fn node_selector(node: &NodeId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::MANAGED.to_owned(), "true".to_owned()),
        (labels::NODE_ID.to_owned(), node.to_string()),
    ])
}

/// `motey-<service>-<image>-<8 chars of the service id>-<6 of the node's>`: readable in
/// `docker ps`, unique per service instance, and unique per node even when several nodes
/// share one engine (an image moved off a crashed node may meet its old container there).
fn default_name(service: &Service, image: &ImageBlueprint, node: &NodeId) -> String {
    let short_id: String = service.id.as_str().chars().take(8).collect();
    let node_tag = hex::encode(&Sha256::digest(node.as_str().as_bytes())[..3]);
    let raw = format!("motey-{}-{}-{short_id}-{node_tag}", service.name, image.id);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A short, stable digest of everything that shapes the container (labels excluded).
fn digest(spec: &ContainerSpec) -> String {
    let canonical = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&Sha256::digest(&canonical)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Blueprint, ServiceId};

    fn service(image: &str) -> Service {
        let blueprint: Blueprint = crate::blueprint::parse(
            &format!("name: web_shop\nimages:\n  - name: front\n    image: {image}\n"),
            &Default::default(),
        )
        .unwrap();
        Service::new(
            ServiceId("0123456789abcdef".into()),
            blueprint,
            NodeId("n1".into()),
        )
    }

    #[test]
    fn labels_identify_service_image_and_node() {
        let service = service("nginx");
        let spec = spec(&service, &service.images[0].blueprint, &NodeId("n1".into()));
        assert!(
            spec.name.starts_with("motey-web_shop-front-01234567-"),
            "{}",
            spec.name
        );
        let elsewhere = super::spec(&service, &service.images[0].blueprint, &NodeId("n2".into()));
        assert_ne!(spec.name, elsewhere.name);
        assert_eq!(spec.labels[labels::SERVICE_ID], "0123456789abcdef");
        assert_eq!(spec.labels[labels::IMAGE_ID], "front");
        assert_eq!(spec.labels[labels::NODE_ID], "n1");
        assert_eq!(spec.labels[labels::SPEC_DIGEST].len(), 16);
    }

    #[test]
    fn digest_changes_with_the_blueprint_only() {
        let a = service("nginx:1");
        let b = service("nginx:2");
        let node = NodeId("n1".into());
        let digest = |s: &Service| {
            spec(s, &s.images[0].blueprint, &node).labels[labels::SPEC_DIGEST].clone()
        };
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
    }
}
