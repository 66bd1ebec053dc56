//! Translation of Docker API failures into the engine-neutral [`ValError`].
//!
//! Docker answers most failures with an HTTP status; what a status means depends on what
//! the request was about (a 404 for a container is "gone", for an image it is "cannot be
//! had"), so every call site names its [`Subject`].

use bollard::errors::Error as DockerError;
use motey_val::ValError;

/// What a failed request was about, so that a 404 can be reported precisely.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Subject<'a> {
    Container(&'a str),
    Image(&'a str),
    /// The engine itself (ping, version, events).
    Engine,
}

/// Maps a bollard error of `operation` (e.g. `"start container"`) to a [`ValError`].
pub(crate) fn to_val_error(operation: &str, subject: Subject<'_>, error: DockerError) -> ValError {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => from_status(operation, subject, status_code, message),
        // A pull reports registry failures inside a successful response stream.
        DockerError::DockerStreamError { error } => match subject {
            Subject::Image(image) => ValError::ImageUnavailable {
                image: image.to_owned(),
                reason: error,
            },
            _ => refused(operation, error),
        },
        DockerError::SocketNotFoundError(path) => {
            ValError::Unreachable(format!("Docker socket {path} not found"))
        }
        DockerError::UnsupportedURISchemeError { uri } => ValError::Unreachable(format!(
            "unsupported Docker endpoint {uri:?} (use unix:///path or tcp://host:port)"
        )),
        DockerError::RequestTimeoutError => {
            ValError::Unreachable(format!("Docker did not answer {operation} in time"))
        }
        error @ (DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::HyperLegacyError { .. }
        | DockerError::HttpClientError { .. }) => ValError::Unreachable(error.to_string()),
        other => refused(operation, format!("unexpected answer from Docker: {other}")),
    }
}

fn from_status(operation: &str, subject: Subject<'_>, status: u16, message: String) -> ValError {
    match (status, subject) {
        (404, Subject::Container(id)) => ValError::NotFound(id.to_owned()),
        (404, Subject::Image(image)) => ValError::ImageUnavailable {
            image: image.to_owned(),
            reason: message,
        },
        _ => refused(operation, format!("{message} (HTTP {status})")),
    }
}

fn refused(operation: &str, reason: String) -> ValError {
    ValError::Refused {
        operation: operation.to_owned(),
        reason,
    }
}

/// Maps a failed pull: unless Docker itself cannot be reached, whatever went wrong (registry
/// down, unknown manifest, denied access, answered with any status) makes the image
/// unavailable, with Docker's words as the reason.
pub(crate) fn pull_error(image: &str, error: DockerError) -> ValError {
    match to_val_error("pull image", Subject::Image(image), error) {
        ValError::Refused { reason, .. } => ValError::ImageUnavailable {
            image: image.to_owned(),
            reason,
        },
        other => other,
    }
}

/// True when Docker answered with exactly this HTTP status.
pub(crate) fn has_status(error: &DockerError, status: u16) -> bool {
    matches!(error, DockerError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn not_found_names_the_container() {
        let error = to_val_error(
            "inspect container",
            Subject::Container("abc"),
            server(404, "No such container: abc"),
        );
        assert!(matches!(error, ValError::NotFound(id) if id == "abc"));
    }

    #[test]
    fn not_found_image_keeps_the_engines_reason() {
        let error = to_val_error(
            "create container",
            Subject::Image("nope:1"),
            server(404, "No such image: nope:1"),
        );
        match error {
            ValError::ImageUnavailable { image, reason } => {
                assert_eq!(image, "nope:1");
                assert_eq!(reason, "No such image: nope:1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn conflict_is_a_refusal_naming_the_operation() {
        let error = to_val_error(
            "create container",
            Subject::Container("web"),
            server(
                409,
                "Conflict. The container name \"/web\" is already in use",
            ),
        );
        match error {
            ValError::Refused { operation, reason } => {
                assert_eq!(operation, "create container");
                assert!(reason.contains("already in use"), "{reason}");
                assert!(reason.contains("409"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pull_stream_error_makes_the_image_unavailable() {
        let error = to_val_error(
            "pull image",
            Subject::Image("r/x:1"),
            DockerError::DockerStreamError {
                error: "manifest unknown".into(),
            },
        );
        assert!(
            matches!(error, ValError::ImageUnavailable { reason, .. } if reason == "manifest unknown")
        );
    }

    #[test]
    fn any_answered_pull_failure_makes_the_image_unavailable() {
        let error = pull_error(
            "127.0.0.1:1/x:1",
            server(500, "dial tcp 127.0.0.1:1: connection refused"),
        );
        assert!(
            matches!(error, ValError::ImageUnavailable { ref image, ref reason } if image == "127.0.0.1:1/x:1" && reason.contains("connection refused")),
            "{error:?}"
        );
        let io = DockerError::IOError {
            err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert!(matches!(pull_error("x", io), ValError::Unreachable(_)));
    }

    #[test]
    fn connection_failures_are_unreachable() {
        let io = DockerError::IOError {
            err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        };
        assert!(matches!(
            to_val_error("ping", Subject::Engine, io),
            ValError::Unreachable(_)
        ));
        let socket = DockerError::SocketNotFoundError("/nope.sock".into());
        assert!(
            matches!(to_val_error("connect", Subject::Engine, socket), ValError::Unreachable(m) if m.contains("/nope.sock"))
        );
        assert!(matches!(
            to_val_error("ping", Subject::Engine, DockerError::RequestTimeoutError),
            ValError::Unreachable(_)
        ));
    }

    #[test]
    fn status_check_only_matches_server_answers() {
        assert!(has_status(&server(304, ""), 304));
        assert!(!has_status(&server(404, ""), 304));
        assert!(!has_status(&DockerError::RequestTimeoutError, 304));
    }
}
