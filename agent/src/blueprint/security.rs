//! What a node lets a blueprint do to it. Options that hand a container the host
//! (privileged mode, host network or pid namespace, added kernel capabilities, bind mounts
//! of arbitrary host paths) are refused unless `[SECURITY]` allows them, because anyone
//! holding the API token could otherwise take over every node of the fog.

use std::path::{Component, Path};

use super::ImageDraft;
use crate::config::Security;
use crate::validation::FieldError;

pub(crate) fn check(drafts: &[ImageDraft], security: &Security) -> Result<(), Vec<FieldError>> {
    let mut refusals = Vec::new();
    for draft in drafts {
        let privileges = &draft.image.privileges;
        if privileges.privileged && !security.allow_privileged {
            refusals.push(FieldError::new(
                &draft.privileged_field,
                "privileged containers are not allowed on this node ([SECURITY] allow_privileged)",
            ));
        }
        if privileges.host_network && !security.allow_host_network {
            refusals.push(FieldError::new(
                &draft.network_field,
                "the host network is not allowed on this node ([SECURITY] allow_host_network)",
            ));
        }
        if privileges.host_pid && !security.allow_host_pid {
            refusals.push(FieldError::new(
                &draft.pid_field,
                "the host pid namespace is not allowed on this node ([SECURITY] allow_host_pid)",
            ));
        }
        for capability in &privileges.cap_add {
            if !security
                .allowed_cap_add
                .contains(&capability.to_uppercase())
            {
                refusals.push(FieldError::new(
                    &draft.cap_add_field,
                    format!(
                        "adding capability {capability} is not allowed on this node ([SECURITY] allowed_cap_add)"
                    ),
                ));
            }
        }
        for (volume, field) in draft.image.volumes.iter().zip(&draft.volume_fields) {
            if is_bind_mount(&volume.source) && !bind_allowed(&volume.source, &security.bind_paths)
            {
                refusals.push(FieldError::new(
                    field,
                    format!(
                        "bind mount of {} is not allowed on this node (not under [SECURITY] bind_paths)",
                        volume.source
                    ),
                ));
            }
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

/// Named volumes are managed by the engine; anything path-like is a host directory.
pub(crate) fn is_bind_mount(source: &str) -> bool {
    source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
}

/// Whether `source` lies under one of the allowed directories. `..` is refused outright
/// rather than resolved, so `/srv/allowed/../../etc` cannot slip through.
fn bind_allowed(source: &str, allowed: &[std::path::PathBuf]) -> bool {
    let path = Path::new(source);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return false;
    }
    allowed.iter().any(|root| path.starts_with(root))
}
