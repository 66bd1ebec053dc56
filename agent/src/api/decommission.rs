//! `POST /v1/decommission`: takes this node out of the fog. The node refuses deployments
//! from then on, terminates the services it owns, waits (at most `timeout_secs`) for its
//! peers to take back the images it runs for them, removes what is left, announces its
//! removal and stops.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{read_body, ApiState};
use crate::lifecycle::NodePhase;
use crate::validation::FieldError;

/// How long draining may take when the request does not say.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 120;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecommissionRequest {
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DecommissionAccepted {
    pub phase: NodePhase,
    /// Services of this node still to be terminated.
    pub own_services: usize,
    /// Images hosted for peers still to be taken back by them.
    pub hosted_images: usize,
    pub timeout_secs: u64,
}

pub async fn decommission(
    State(state): State<ApiState>,
    body: Body,
) -> Result<(StatusCode, Json<DecommissionAccepted>), ApiError> {
    let Some(requests) = state.decommission.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "this agent cannot be decommissioned through its API",
        ));
    };
    let body = read_body(&state, body).await?;
    let request: DecommissionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecommissionRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            ApiError::invalid(
                "invalid_request",
                format!("expected {{\"timeout_secs\": <seconds>}}: {error}"),
                vec![FieldError {
                    field: "timeout_secs".into(),
                    message: error.to_string(),
                }],
            )
        })?
    };
    let timeout_secs = request.timeout_secs.unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS);
    let progress = state.orchestrator.decommission().await?;
    // A second request while draining changes nothing: the first deadline holds.
    let _ = requests.try_send(Duration::from_secs(timeout_secs));
    Ok((
        StatusCode::ACCEPTED,
        Json(DecommissionAccepted {
            phase: NodePhase::Decommissioning,
            own_services: progress.own_services,
            hosted_images: progress.hosted_images,
            timeout_secs,
        }),
    ))
}
