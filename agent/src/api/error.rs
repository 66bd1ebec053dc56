//! Every refusal of the REST API is JSON naming what was wrong:
//! `{"error": "invalid_blueprint", "message": "...", "field": "images[1].ports[0]", "fields": [...]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::blueprint::BlueprintError;
use crate::orchestrator::OrchestratorError;
use crate::store::StoreError;
use crate::validation::FieldError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    body: ErrorBody,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    /// A stable, machine-readable code.
    error: &'static str,
    message: String,
    /// The first offending field, if the problem is located.
    field: Option<String>,
    /// Every located problem.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
                field: None,
                fields: Vec::new(),
            },
        }
    }

    pub fn invalid(
        error: &'static str,
        message: impl Into<String>,
        fields: Vec<FieldError>,
    ) -> ApiError {
        let mut api_error = ApiError::new(StatusCode::BAD_REQUEST, error, message);
        api_error.body.field = fields.first().map(|f| f.field.clone());
        api_error.body.fields = fields;
        api_error
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.body.message, "request failed");
        } else {
            tracing::info!(status = %self.status, error = self.body.error, message = %self.body.message, field = ?self.body.field, "request refused");
        }
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::internal(error.to_string())
    }
}

impl From<OrchestratorError> for ApiError {
    fn from(error: OrchestratorError) -> ApiError {
        match error {
            OrchestratorError::NotFound(_) => ApiError::not_found(error.to_string()),
            OrchestratorError::NotOwner { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_owner", error.to_string())
            }
            OrchestratorError::NameTaken { .. } => {
                let message = error.to_string();
                let mut taken = ApiError::invalid(
                    "name_taken",
                    message.clone(),
                    vec![FieldError::new("name", message)],
                );
                taken.status = StatusCode::CONFLICT;
                taken
            }
            OrchestratorError::NotOperating(refusal) => refusal.into(),
            OrchestratorError::Store(error) => error.into(),
            OrchestratorError::UpdateRefused {
                code,
                field,
                message,
            } => {
                // A valid blueprint that the service's current version rules out: a
                // conflict with the service, naming the field when there is one.
                let mut api_error = match field {
                    Some(field) => ApiError::invalid(
                        code,
                        format!("{field}: {message}"),
                        vec![FieldError::new(field, message)],
                    ),
                    None => ApiError::new(StatusCode::CONFLICT, code, message),
                };
                api_error.status = StatusCode::CONFLICT;
                api_error
            }
        }
    }
}

/// A node that is not operating refuses deployments: 409 while it is being
/// decommissioning (it will not take any again), 503 while it is joining or recovering
/// (it will, once in norm).
impl From<crate::lifecycle::NotOperating> for ApiError {
    fn from(refusal: crate::lifecycle::NotOperating) -> ApiError {
        use crate::lifecycle::NodePhase;
        match refusal.report.phase {
            NodePhase::Decommissioning => ApiError::new(
                StatusCode::CONFLICT,
                "node_decommissioning",
                refusal.to_string(),
            ),
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_not_operating",
                refusal.to_string(),
            ),
        }
    }
}

impl From<BlueprintError> for ApiError {
    fn from(error: BlueprintError) -> ApiError {
        match &error {
            BlueprintError::Syntax(_) => {
                ApiError::invalid("invalid_yaml", error.to_string(), Vec::new())
            }
            BlueprintError::Shape(_) => {
                ApiError::invalid("blueprint_too_complex", error.to_string(), Vec::new())
            }
            BlueprintError::Invalid(fields) => {
                ApiError::invalid("invalid_blueprint", error.to_string(), fields.clone())
            }
            BlueprintError::Refused(fields) => {
                let mut refused =
                    ApiError::invalid("option_not_allowed", error.to_string(), fields.clone());
                refused.status = StatusCode::FORBIDDEN;
                refused
            }
        }
    }
}
