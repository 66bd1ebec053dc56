//! Docker's view of a container, mapped to the engine-neutral [`ContainerStatus`].
//!
//! | Docker state        | ImageState    | reason                                  |
//! |---------------------|---------------|-----------------------------------------|
//! | created             | Instantiating | (Error with Docker's message if start failed) |
//! | running             | Running       |                                         |
//! | restarting          | Instantiating | (the restart policy is at work)         |
//! | paused              | Error         | `paused` — the agent never pauses       |
//! | removing, stopping  | Stopping      |                                         |
//! | exited, code 0      | Terminated    |                                         |
//! | exited, code N ≠ 0  | Error         | `exited with code N`                    |
//! | OOM killed          | Error         | `killed for running out of memory ...`  |
//! | dead                | Error         | `dead` plus Docker's message            |

use std::collections::BTreeMap;

use bollard::models::{ContainerInspectResponse, ContainerState, ContainerStateStatusEnum};
use motey_val::{ContainerStatus, ImageState};

/// Builds the status of one inspected container.
pub(crate) fn container_status(inspected: ContainerInspectResponse) -> ContainerStatus {
    let config = inspected.config.unwrap_or_default();
    let state = inspected.state.unwrap_or_default();
    let (image_state, reason) = image_state(&state);
    ContainerStatus {
        id: inspected.id.unwrap_or_default(),
        name: inspected
            .name
            .map(|name| name.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        // The reference the container was created from, not the content id.
        image: config.image.or(inspected.image).unwrap_or_default(),
        state: image_state,
        engine_state: state
            .status
            .map(|status| status.to_string())
            .unwrap_or_else(|| "unknown".into()),
        exit_code: state.exit_code,
        reason,
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Maps Docker's container state to an image state and, for errors, a reason for humans.
pub(crate) fn image_state(state: &ContainerState) -> (ImageState, Option<String>) {
    let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    let exit_code = state.exit_code.unwrap_or(0);
    let engine_error = state.error.as_deref().filter(|message| !message.is_empty());
    match status {
        ContainerStateStatusEnum::RUNNING => (ImageState::Running, None),
        ContainerStateStatusEnum::RESTARTING => (ImageState::Instantiating, None),
        // A container whose start failed stays `created` and carries Docker's message.
        ContainerStateStatusEnum::CREATED => match engine_error {
            Some(message) => (
                ImageState::Error,
                Some(format!("failed to start: {message}")),
            ),
            None => (ImageState::Instantiating, None),
        },
        ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING => {
            (ImageState::Stopping, None)
        }
        ContainerStateStatusEnum::PAUSED => (
            ImageState::Error,
            Some("paused (not by the agent, which never pauses containers)".into()),
        ),
        ContainerStateStatusEnum::EXITED => {
            if state.oom_killed == Some(true) {
                (
                    ImageState::Error,
                    Some(format!(
                        "killed for running out of memory (exit code {exit_code})"
                    )),
                )
            } else if exit_code != 0 {
                (
                    ImageState::Error,
                    Some(exit_reason(exit_code, engine_error)),
                )
            } else {
                (ImageState::Terminated, None)
            }
        }
        ContainerStateStatusEnum::DEAD => (
            ImageState::Error,
            Some(match engine_error {
                Some(message) => format!("dead: {message}"),
                None => "dead (Docker could not stop or remove it)".into(),
            }),
        ),
        ContainerStateStatusEnum::EMPTY => {
            (ImageState::Error, Some("Docker reports no state".into()))
        }
    }
}

fn exit_reason(exit_code: i64, engine_error: Option<&str>) -> String {
    match engine_error {
        Some(message) => format!("exited with code {exit_code}: {message}"),
        None => format!("exited with code {exit_code}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::ContainerConfig;

    use super::*;

    fn state(status: ContainerStateStatusEnum, exit_code: i64) -> ContainerState {
        ContainerState {
            status: Some(status),
            exit_code: Some(exit_code),
            ..Default::default()
        }
    }

    #[test]
    fn live_states() {
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::RUNNING, 0)),
            (ImageState::Running, None)
        );
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::RESTARTING, 3)),
            (ImageState::Instantiating, None)
        );
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::CREATED, 0)),
            (ImageState::Instantiating, None)
        );
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::REMOVING, 0)).0,
            ImageState::Stopping
        );
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::STOPPING, 0)).0,
            ImageState::Stopping
        );
    }

    #[test]
    fn clean_exit_is_terminated_and_failure_names_the_code() {
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::EXITED, 0)),
            (ImageState::Terminated, None)
        );
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::EXITED, 3)),
            (ImageState::Error, Some("exited with code 3".into()))
        );
    }

    #[test]
    fn oom_kill_is_named() {
        let mut oom = state(ContainerStateStatusEnum::EXITED, 137);
        oom.oom_killed = Some(true);
        let (image_state, reason) = image_state(&oom);
        assert_eq!(image_state, ImageState::Error);
        assert!(reason.unwrap().contains("out of memory"));
    }

    #[test]
    fn failed_start_paused_and_dead_are_errors() {
        let mut failed = state(ContainerStateStatusEnum::CREATED, 127);
        failed.error = Some("exec: \"nope\": executable file not found".into());
        let (s, reason) = image_state(&failed);
        assert_eq!(s, ImageState::Error);
        assert!(reason.unwrap().contains("executable file not found"));
        assert_eq!(
            image_state(&state(ContainerStateStatusEnum::PAUSED, 0)).0,
            ImageState::Error
        );
        let (s, reason) = image_state(&state(ContainerStateStatusEnum::DEAD, 0));
        assert_eq!(s, ImageState::Error);
        assert!(reason.unwrap().starts_with("dead"));
    }

    #[test]
    fn status_carries_name_reference_and_labels() {
        let inspected = ContainerInspectResponse {
            id: Some("c0ffee".into()),
            name: Some("/svc-web".into()),
            image: Some("sha256:1234".into()),
            state: Some(state(ContainerStateStatusEnum::EXITED, 2)),
            config: Some(ContainerConfig {
                image: Some("motey/testbox:latest".into()),
                labels: Some(HashMap::from([("io.motey.managed".into(), "true".into())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = container_status(inspected);
        assert_eq!(status.id, "c0ffee");
        assert_eq!(status.name, "svc-web");
        assert_eq!(status.image, "motey/testbox:latest");
        assert_eq!(status.engine_state, "exited");
        assert_eq!(status.exit_code, Some(2));
        assert_eq!(status.reason.as_deref(), Some("exited with code 2"));
        assert_eq!(status.labels["io.motey.managed"], "true");
    }
}
