//! The node's policy ([`crate::policy`]) applied to a blueprint as the user wrote it: each
//! refusal names the field of the format the blueprint came in.

use super::ImageDraft;
use crate::config::Security;
use crate::policy::{self, HostOption};
use crate::validation::FieldError;

pub(crate) fn check(
    service_name: &str,
    drafts: &[ImageDraft],
    security: &Security,
) -> Result<(), Vec<FieldError>> {
    let refusals: Vec<FieldError> = drafts
        .iter()
        .flat_map(|draft| {
            policy::refusals(service_name, &draft.image, security)
                .into_iter()
                .map(|refusal| FieldError::new(field(draft, refusal.option), refusal.reason))
        })
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

fn field(draft: &ImageDraft, option: HostOption) -> String {
    match option {
        HostOption::Privileged => draft.privileged_field.clone(),
        HostOption::NetworkMode => draft.network_field.clone(),
        HostOption::PidMode => draft.pid_field.clone(),
        HostOption::CapAdd => draft.cap_add_field.clone(),
        HostOption::Volume(n) => draft.volume_fields.get(n).cloned().unwrap_or_default(),
        HostOption::Device(n) => draft.device_fields.get(n).cloned().unwrap_or_default(),
    }
}
