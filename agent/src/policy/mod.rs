//! What a node lets an image do to its host. Every image this node starts passes this one
//! check first, whoever asked for it (a REST deployment or update, a peer's deployment, a
//! rollback): the host's `[SECURITY]` is the last word, never the requester's.
//!
//! Options that hand a container the host (privileged mode, the host's network or pid
//! namespace, added kernel capabilities, host devices, bind mounts of host paths) are
//! refused unless `[SECURITY]` allows each one, because anyone holding the API token or
//! the cluster key could otherwise take over the node. Named volumes belong to the
//! service whose name they carry, so one service cannot mount another's data.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use crate::config::Security;
use crate::domain::ImageBlueprint;

/// The option of an image a refusal is about, in engine-neutral terms. The blueprint
/// formats map it back to the field the user wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOption {
    Privileged,
    NetworkMode,
    PidMode,
    /// The list of added capabilities.
    CapAdd,
    /// The volume at this index of the image's volumes.
    Volume(usize),
    /// The device at this index of the image's devices.
    Device(usize),
}

impl fmt::Display for HostOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostOption::Privileged => f.write_str("privileged"),
            HostOption::NetworkMode => f.write_str("network_mode"),
            HostOption::PidMode => f.write_str("pid_mode"),
            HostOption::CapAdd => f.write_str("cap_add"),
            HostOption::Volume(n) => write!(f, "volumes[{n}]"),
            HostOption::Device(n) => write!(f, "devices[{n}]"),
        }
    }
}

/// One option of one image that this node does not allow, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The image's id within its service.
    pub image: String,
    pub option: HostOption,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image {}: {}: {}", self.image, self.option, self.reason)
    }
}

/// The images ask for something this node's `[SECURITY]` does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by this node's policy: {}", join(.0))]
pub struct PolicyRefused(pub Vec<Refusal>);

fn join(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every image of the service `service_name` against `security`.
pub fn check(
    service_name: &str,
    images: &[ImageBlueprint],
    security: &Security,
) -> Result<(), PolicyRefused> {
    let refusals: Vec<Refusal> = images
        .iter()
        .flat_map(|image| refusals(service_name, image, security))
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(PolicyRefused(refusals))
    }
}

/// Everything this node refuses about one image.
pub fn refusals(service_name: &str, image: &ImageBlueprint, security: &Security) -> Vec<Refusal> {
    let mut found: Vec<(HostOption, String)> = Vec::new();
    let privileges = &image.privileges;
    if privileges.privileged && !security.allow_privileged {
        found.push((
            HostOption::Privileged,
            "privileged containers are not allowed on this node ([SECURITY] allow_privileged)"
                .into(),
        ));
    }
    if privileges.host_network && !security.allow_host_network {
        found.push((
            HostOption::NetworkMode,
            "the host network is not allowed on this node ([SECURITY] allow_host_network)".into(),
        ));
    }
    if privileges.host_pid && !security.allow_host_pid {
        found.push((
            HostOption::PidMode,
            "the host pid namespace is not allowed on this node ([SECURITY] allow_host_pid)".into(),
        ));
    }
    for capability in &privileges.cap_add {
        if !security
            .allowed_cap_add
            .contains(&capability.to_uppercase())
        {
            found.push((
                HostOption::CapAdd,
                format!(
                    "adding capability {capability} is not allowed on this node ([SECURITY] allowed_cap_add)"
                ),
            ));
        }
    }
    for (n, volume) in image.volumes.iter().enumerate() {
        let refusal = if is_bind_mount(&volume.source) {
            bind_refusal(&volume.source, &security.bind_paths)
        } else {
            volume_refusal(&volume.source, service_name)
        };
        found.extend(refusal.map(|reason| (HostOption::Volume(n), reason)));
    }
    for (n, device) in image.devices.iter().enumerate() {
        found.extend(
            device_refusal(
                &device.host_path,
                device.permissions(),
                &security.allowed_devices,
            )
            .map(|reason| (HostOption::Device(n), reason)),
        );
    }
    found
        .into_iter()
        .map(|(option, reason)| Refusal {
            image: image.id.clone(),
            option,
            reason,
        })
        .collect()
}

/// Named volumes are managed by the engine; anything path-like is a host directory.
pub fn is_bind_mount(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

/// Why the bind mount of `source` is refused, if it is. The source must lie under one of
/// the allowed directories, and every component below that directory must exist and be
/// no symbolic link: a link placed there by an earlier container (`escape -> /`) would
/// otherwise hand the next one whatever it points to. A source that does not exist yet is
/// refused too, rather than letting the engine create it as root.
fn bind_refusal(source: &str, allowed: &[PathBuf]) -> Option<String> {
    let path = Path::new(source);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Some(format!(
            "bind mount of {source} is not allowed: the source must be an absolute path without . or .."
        ));
    }
    let Some(root) = allowed.iter().find(|root| path.starts_with(root)) else {
        return Some(format!(
            "bind mount of {source} is not allowed on this node (not under [SECURITY] bind_paths)"
        ));
    };
    let below = path.strip_prefix(root).unwrap_or(Path::new(""));
    // The allowed directory itself is the administrator's choice and may be a link.
    if let Err(error) = std::fs::metadata(root) {
        return Some(missing(source, root, &error));
    }
    let mut current = root.clone();
    for component in below.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(found) if found.file_type().is_symlink() => {
                return Some(format!(
                    "bind mount of {source} is not allowed: {} is a symbolic link",
                    current.display()
                ));
            }
            Ok(_) => {}
            Err(error) => return Some(missing(source, &current, &error)),
        }
    }
    None
}

fn missing(source: &str, path: &Path, error: &std::io::Error) -> String {
    if error.kind() == ErrorKind::NotFound {
        format!(
            "bind mount of {source} is not allowed: {} does not exist on this node",
            path.display()
        )
    } else {
        format!(
            "bind mount of {source} is not allowed: {} cannot be checked ({error})",
            path.display()
        )
    }
}

/// Why the named volume `name` is refused for the service `service_name`, if it is: a
/// service mounts only volumes named after it (`<service>` or `<service>-...`).
fn volume_refusal(name: &str, service_name: &str) -> Option<String> {
    let owned = name == service_name
        || name
            .strip_prefix(service_name)
            .is_some_and(|rest| rest.starts_with('-'));
    (!owned).then(|| {
        format!(
            "volume {name} is not allowed: a service mounts only volumes named after it ({service_name} or {service_name}-...)"
        )
    })
}

/// A host device `[SECURITY] allowed_devices` lets containers use, with the cgroup
/// permissions it allows (`r`, `w`, `m`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedDevice {
    pub path: String,
    pub permissions: String,
}

impl AllowedDevice {
    /// `/dev/ttyUSB0` (every permission) or `/dev/ttyUSB0:rw`; `None` if malformed.
    pub fn parse(text: &str) -> Option<AllowedDevice> {
        let (path, permissions) = match text.split_once(':') {
            Some((path, permissions)) => (path, permissions),
            None => (text, "rwm"),
        };
        let valid = path.starts_with("/dev/")
            && !path.split('/').any(|part| part == "..")
            && !permissions.is_empty()
            && permissions.chars().all(|c| "rwm".contains(c));
        valid.then(|| AllowedDevice {
            path: path.to_owned(),
            permissions: permissions.to_owned(),
        })
    }
}

fn device_refusal(host_path: &str, permissions: &str, allowed: &[AllowedDevice]) -> Option<String> {
    match allowed.iter().find(|device| device.path == host_path) {
        None => Some(format!(
            "device {host_path} is not allowed on this node (not in [SECURITY] allowed_devices)"
        )),
        Some(device) if !permissions.chars().all(|p| device.permissions.contains(p)) => {
            Some(format!(
                "device {host_path} is allowed with the permissions {} only, not {permissions}",
                device.permissions
            ))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
