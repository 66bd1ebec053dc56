//! The typed requests and replies of the peer protocol and how they map to envelope types
//! and payloads.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use motey_val::{ExecOutput, ExecRequest, LogLine, LogQuery};

use crate::domain::{Capability, ImageDeployment, ImageStatus, NodeId, ServiceId};

/// Envelope types of the requests.
pub mod kinds {
    pub const CAPABILITY_REQUEST: &str = "capability_request";
    pub const DEPLOY_IMAGE: &str = "deploy_image";
    pub const IMAGE_STATUS: &str = "image_status";
    pub const TERMINATE_IMAGE: &str = "terminate_image";
    pub const IMAGE_ASSIGNMENT: &str = "image_assignment";
    pub const CAPABILITY_REPLY: &str = "capability_reply";
    pub const DEPLOY_IMAGE_REPLY: &str = "deploy_image_reply";
    pub const IMAGE_STATUS_REPLY: &str = "image_status_reply";
    pub const TERMINATE_IMAGE_REPLY: &str = "terminate_image_reply";
    pub const IMAGE_ASSIGNMENT_REPLY: &str = "image_assignment_reply";
    pub const ERROR: &str = "error";
    // Device access (FR-11), added in the same protocol version: a node that does not
    // know them answers `unknown_type`.
    pub const IMAGE_LOGS: &str = "image_logs";
    pub const IMAGE_LOGS_REPLY: &str = "image_logs_reply";
    pub const IMAGE_EXEC: &str = "image_exec";
    pub const IMAGE_EXEC_REPLY: &str = "image_exec_reply";
}

/// Most bytes of log text one `image_logs_reply` carries, well inside the envelope's
/// 1 MiB; older lines are left out (the owner asks again from the last one it got).
pub const MAX_LOG_REPLY_BYTES: usize = 512 * 1024;

/// What one node asks of another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Which capabilities do you offer?
    Capabilities,
    /// Run this image (on behalf of the service's owner).
    DeployImage(Box<ImageDeployment>),
    /// How is this image doing?
    ImageStatus {
        service_id: ServiceId,
        image_id: String,
    },
    /// Stop and remove this image.
    TerminateImage {
        service_id: ServiceId,
        image_id: String,
    },
    /// Asked of a service's owner by a node hosting one of its images: do you still
    /// want `node` to run this image?
    ImageAssignment {
        service_id: ServiceId,
        image_id: String,
        node: NodeId,
    },
    /// The log lines of this image (only its owner may ask).
    ImageLogs {
        service_id: ServiceId,
        image_id: String,
        query: LogQuery,
    },
    /// Run a diagnostic command in this image's container (only its owner may ask).
    ImageExec {
        service_id: ServiceId,
        image_id: String,
        exec: ExecRequest,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct AssignmentRef {
    service_id: ServiceId,
    image_id: String,
    node: NodeId,
}

#[derive(Debug, Serialize, Deserialize)]
struct AssignmentPayload {
    assigned: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct LogsPayload {
    service_id: ServiceId,
    image_id: String,
    tail: usize,
    #[serde(default)]
    since_ns: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExecPayload {
    service_id: ServiceId,
    image_id: String,
    command: Vec<String>,
    timeout_secs: u64,
    max_output_bytes: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct LogLinesPayload {
    lines: Vec<LogLine>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageRef {
    service_id: ServiceId,
    image_id: String,
}

impl Request {
    /// The envelope type of the request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Capabilities => kinds::CAPABILITY_REQUEST,
            Request::DeployImage(_) => kinds::DEPLOY_IMAGE,
            Request::ImageStatus { .. } => kinds::IMAGE_STATUS,
            Request::TerminateImage { .. } => kinds::TERMINATE_IMAGE,
            Request::ImageAssignment { .. } => kinds::IMAGE_ASSIGNMENT,
            Request::ImageLogs { .. } => kinds::IMAGE_LOGS,
            Request::ImageExec { .. } => kinds::IMAGE_EXEC,
        }
    }

    /// The envelope type a successful reply to this request has.
    pub fn reply_kind(&self) -> &'static str {
        match self {
            Request::Capabilities => kinds::CAPABILITY_REPLY,
            Request::DeployImage(_) => kinds::DEPLOY_IMAGE_REPLY,
            Request::ImageStatus { .. } => kinds::IMAGE_STATUS_REPLY,
            Request::TerminateImage { .. } => kinds::TERMINATE_IMAGE_REPLY,
            Request::ImageAssignment { .. } => kinds::IMAGE_ASSIGNMENT_REPLY,
            Request::ImageLogs { .. } => kinds::IMAGE_LOGS_REPLY,
            Request::ImageExec { .. } => kinds::IMAGE_EXEC_REPLY,
        }
    }

    pub fn payload(&self) -> Value {
        match self {
            Request::Capabilities => json!({}),
            Request::DeployImage(deployment) => {
                serde_json::to_value(deployment).expect("a deployment serializes to JSON")
            }
            Request::ImageStatus {
                service_id,
                image_id,
            }
            | Request::TerminateImage {
                service_id,
                image_id,
            } => json!({ "service_id": service_id, "image_id": image_id }),
            Request::ImageAssignment {
                service_id,
                image_id,
                node,
            } => json!({ "service_id": service_id, "image_id": image_id, "node": node }),
            Request::ImageLogs {
                service_id,
                image_id,
                query,
            } => serde_json::to_value(LogsPayload {
                service_id: service_id.clone(),
                image_id: image_id.clone(),
                tail: query.tail,
                since_ns: query.since_ns,
            })
            .expect("a log request serializes to JSON"),
            Request::ImageExec {
                service_id,
                image_id,
                exec,
            } => serde_json::to_value(ExecPayload {
                service_id: service_id.clone(),
                image_id: image_id.clone(),
                command: exec.command.clone(),
                timeout_secs: exec.timeout_secs,
                max_output_bytes: exec.max_output_bytes,
            })
            .expect("an exec request serializes to JSON"),
        }
    }

    /// The request an envelope of type `kind` with this payload stands for. The payload
    /// is a JSON value or, as received, raw JSON (`&RawValue`).
    pub fn from_parts<'de, P>(kind: &str, payload: P) -> Result<Request, DecodeError>
    where
        P: Deserializer<'de, Error = serde_json::Error>,
    {
        let bad = |error: serde_json::Error| DecodeError::BadPayload {
            kind: kind.to_owned(),
            reason: error.to_string(),
        };
        match kind {
            kinds::CAPABILITY_REQUEST => Ok(Request::Capabilities),
            kinds::DEPLOY_IMAGE => Ok(Request::DeployImage(Box::new(
                Deserialize::deserialize(payload).map_err(bad)?,
            ))),
            kinds::IMAGE_STATUS => {
                let ImageRef {
                    service_id,
                    image_id,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Request::ImageStatus {
                    service_id,
                    image_id,
                })
            }
            kinds::TERMINATE_IMAGE => {
                let ImageRef {
                    service_id,
                    image_id,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Request::TerminateImage {
                    service_id,
                    image_id,
                })
            }
            kinds::IMAGE_ASSIGNMENT => {
                let AssignmentRef {
                    service_id,
                    image_id,
                    node,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Request::ImageAssignment {
                    service_id,
                    image_id,
                    node,
                })
            }
            kinds::IMAGE_LOGS => {
                let LogsPayload {
                    service_id,
                    image_id,
                    tail,
                    since_ns,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Request::ImageLogs {
                    service_id,
                    image_id,
                    query: LogQuery { tail, since_ns },
                })
            }
            kinds::IMAGE_EXEC => {
                let ExecPayload {
                    service_id,
                    image_id,
                    command,
                    timeout_secs,
                    max_output_bytes,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Request::ImageExec {
                    service_id,
                    image_id,
                    exec: ExecRequest {
                        command,
                        timeout_secs,
                        max_output_bytes,
                    },
                })
            }
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

/// Why an error reply was sent: the requester acts on the code, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No session, a handshake proof not believed, a sender other than the session's
    /// node, a node no longer trusted, or a stale or replayed message.
    Unauthorized,
    /// The message is for another node than this one (`to`).
    Misdirected,
    /// The envelope or its payload could not be understood.
    BadRequest,
    /// The envelope version is not spoken by this node.
    UnsupportedVersion,
    /// The request type is not known to this node.
    UnknownType,
    /// The node understood the request and declined it (the message says why).
    Refused,
    /// The image asked about is not on this node (any more).
    NotFound,
    /// The node is decommissioning: its images are to be placed elsewhere.
    Decommissioning,
    /// Too many requests are in progress on this node.
    Busy,
    /// The node failed while handling the request.
    Internal,
    /// A code of a newer version of the protocol.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Misdirected => "misdirected",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Refused => "refused",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Decommissioning => "decommissioning",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Other => "other",
        }
    }
}

/// A handler's refusal of a request: the code and the message the requester gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct PeerRefusal {
    pub code: ErrorCode,
    pub message: String,
}

impl PeerRefusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> PeerRefusal {
        PeerRefusal {
            code,
            message: message.into(),
        }
    }
}

/// A refusal that names no more specific code.
impl From<String> for PeerRefusal {
    fn from(message: String) -> PeerRefusal {
        PeerRefusal::new(ErrorCode::Refused, message)
    }
}

impl From<&str> for PeerRefusal {
    fn from(message: &str) -> PeerRefusal {
        PeerRefusal::new(ErrorCode::Refused, message)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Capabilities {
        capabilities: Vec<Capability>,
        /// Digest of the capabilities (as in the node's announcements).
        digest: String,
    },
    Deployed(ImageStatus),
    ImageStatus(ImageStatus),
    Terminated,
    /// Whether the owner still places the image on the asking node.
    Assignment {
        assigned: bool,
    },
    ImageLogs(Vec<LogLine>),
    ImageExec(ExecOutput),
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct CapabilitiesPayload {
    capabilities: Vec<Capability>,
    #[serde(default)]
    digest: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ErrorPayload {
    code: ErrorCode,
    #[serde(default)]
    message: String,
}

impl Reply {
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Capabilities { .. } => kinds::CAPABILITY_REPLY,
            Reply::Deployed(_) => kinds::DEPLOY_IMAGE_REPLY,
            Reply::ImageStatus(_) => kinds::IMAGE_STATUS_REPLY,
            Reply::Terminated => kinds::TERMINATE_IMAGE_REPLY,
            Reply::Assignment { .. } => kinds::IMAGE_ASSIGNMENT_REPLY,
            Reply::ImageLogs(_) => kinds::IMAGE_LOGS_REPLY,
            Reply::ImageExec(_) => kinds::IMAGE_EXEC_REPLY,
            Reply::Error { .. } => kinds::ERROR,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
        }
    }

    pub fn payload(&self) -> Value {
        let value = match self {
            Reply::Capabilities {
                capabilities,
                digest,
            } => serde_json::to_value(CapabilitiesPayload {
                capabilities: capabilities.clone(),
                digest: digest.clone(),
            }),
            Reply::Deployed(status) | Reply::ImageStatus(status) => serde_json::to_value(status),
            Reply::Terminated => Ok(json!({})),
            Reply::Assignment { assigned } => serde_json::to_value(AssignmentPayload {
                assigned: *assigned,
            }),
            Reply::ImageLogs(lines) => serde_json::to_value(LogLinesPayload {
                lines: lines.clone(),
            }),
            Reply::ImageExec(output) => serde_json::to_value(output),
            Reply::Error { code, message } => serde_json::to_value(ErrorPayload {
                code: *code,
                message: message.clone(),
            }),
        };
        value.expect("replies serialize to JSON")
    }

    /// The reply an envelope of type `kind` with this payload stands for (see
    /// [`Request::from_parts`]).
    pub fn from_parts<'de, P>(kind: &str, payload: P) -> Result<Reply, DecodeError>
    where
        P: Deserializer<'de, Error = serde_json::Error>,
    {
        let bad = |error: serde_json::Error| DecodeError::BadPayload {
            kind: kind.to_owned(),
            reason: error.to_string(),
        };
        match kind {
            kinds::CAPABILITY_REPLY => {
                let CapabilitiesPayload {
                    capabilities,
                    digest,
                } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Reply::Capabilities {
                    capabilities,
                    digest,
                })
            }
            kinds::DEPLOY_IMAGE_REPLY => Ok(Reply::Deployed(
                Deserialize::deserialize(payload).map_err(bad)?,
            )),
            kinds::IMAGE_STATUS_REPLY => Ok(Reply::ImageStatus(
                Deserialize::deserialize(payload).map_err(bad)?,
            )),
            kinds::TERMINATE_IMAGE_REPLY => Ok(Reply::Terminated),
            kinds::IMAGE_ASSIGNMENT_REPLY => {
                let AssignmentPayload { assigned } =
                    Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Reply::Assignment { assigned })
            }
            kinds::IMAGE_LOGS_REPLY => {
                let LogLinesPayload { lines } = Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Reply::ImageLogs(lines))
            }
            kinds::IMAGE_EXEC_REPLY => Ok(Reply::ImageExec(
                Deserialize::deserialize(payload).map_err(bad)?,
            )),
            kinds::ERROR => {
                let ErrorPayload { code, message } =
                    Deserialize::deserialize(payload).map_err(bad)?;
                Ok(Reply::Error { code, message })
            }
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
}

/// Why an envelope's type and payload do not make a request or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("payload of {kind} is invalid: {reason}")]
    BadPayload { kind: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ImageBlueprint, ImageState};

    fn status() -> ImageStatus {
        ImageStatus {
            service_id: ServiceId("s1".into()),
            image_id: "web".into(),
            node: NodeId("n2".into()),
            state: ImageState::Running,
            reason: None,
            container_id: Some("c0ffee".into()),
        }
    }

    #[test]
    fn requests_round_trip_through_kind_and_payload() {
        let image: ImageBlueprint = serde_json::from_value(json!({
            "id": "web", "image": "motey/testbox:latest"
        }))
        .unwrap();
        let requests = [
            Request::Capabilities,
            Request::DeployImage(Box::new(ImageDeployment {
                service_id: ServiceId("s1".into()),
                service_name: "shop".into(),
                owner: NodeId("n1".into()),
                image,
                version: 2,
            })),
            Request::ImageStatus {
                service_id: ServiceId("s1".into()),
                image_id: "web".into(),
            },
            Request::TerminateImage {
                service_id: ServiceId("s1".into()),
                image_id: "web".into(),
            },
            Request::ImageAssignment {
                service_id: ServiceId("s1".into()),
                image_id: "web".into(),
                node: NodeId("n2".into()),
            },
            Request::ImageLogs {
                service_id: ServiceId("s1".into()),
                image_id: "web".into(),
                query: LogQuery {
                    tail: 100,
                    since_ns: Some(1_700_000_000_000_000_001),
                },
            },
            Request::ImageExec {
                service_id: ServiceId("s1".into()),
                image_id: "web".into(),
                exec: ExecRequest {
                    command: vec!["cat".into(), "/etc/hostname".into()],
                    timeout_secs: 10,
                    max_output_bytes: 4096,
                },
            },
        ];
        for request in requests {
            let decoded = Request::from_parts(request.kind(), request.payload()).unwrap();
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn replies_round_trip_through_kind_and_payload() {
        let replies = [
            Reply::Capabilities {
                capabilities: vec![Capability {
                    capability: "zigbee".into(),
                    capability_type: "hardware".into(),
                }],
                digest: "abc".into(),
            },
            Reply::Deployed(status()),
            Reply::ImageStatus(status()),
            Reply::Terminated,
            Reply::Assignment { assigned: false },
            Reply::ImageLogs(vec![LogLine {
                at_ns: Some(1),
                stream: motey_val::LogStream::Stderr,
                text: "probe not found".into(),
            }]),
            Reply::ImageExec(ExecOutput {
                exit_code: Some(0),
                output: "ok\n".into(),
                truncated: false,
                timed_out: false,
            }),
            Reply::error(ErrorCode::Refused, "no space left"),
        ];
        for reply in replies {
            let decoded = Reply::from_parts(reply.kind(), reply.payload()).unwrap();
            assert_eq!(decoded, reply);
        }
    }

    #[test]
    fn unknown_types_and_bad_payloads_are_named() {
        assert_eq!(
            Request::from_parts("reboot", json!({})),
            Err(DecodeError::UnknownType("reboot".into()))
        );
        let error = Request::from_parts(kinds::IMAGE_STATUS, json!({"service_id": 3})).unwrap_err();
        assert!(error.to_string().contains("image_status"), "{error}");
    }
}
