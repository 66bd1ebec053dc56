//! `/v1/capabilities` (listing 5.5 of the Motey thesis): what this node offers. `PUT` adds
//! and `DELETE` removes a JSON list of `{"capability": ..., "capability_type": ...}`.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::{read_body, ApiState};
use crate::domain::Capability;
use crate::validation::Schema;

const CAPABILITIES_SCHEMA: &str = include_str!("../../schemas/capabilities.schema.json");

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<Capability>>, ApiError> {
    Ok(Json(state.store.capabilities.list()?))
}

/// 201 with the node's capabilities after adding.
pub async fn add(
    State(state): State<ApiState>,
    body: Body,
) -> Result<(StatusCode, Json<Vec<Capability>>), ApiError> {
    let capabilities = parse(&state, body).await?;
    for capability in &capabilities {
        state.store.capabilities.put(capability)?;
        tracing::info!(capability = %capability.capability, capability_type = %capability.capability_type, "capability added");
    }
    // Images waiting for a capability may be placeable now; peers learn the new digest.
    state.capabilities_changed();
    Ok((StatusCode::CREATED, Json(state.store.capabilities.list()?)))
}

/// 200 with the node's capabilities after removing. Removing an absent one is no error.
pub async fn remove(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<Vec<Capability>>, ApiError> {
    let capabilities = parse(&state, body).await?;
    for capability in &capabilities {
        if state
            .store
            .capabilities
            .remove(&crate::store::Record::key(capability))?
        {
            tracing::info!(capability = %capability.capability, capability_type = %capability.capability_type, "capability removed");
        }
    }
    state.capabilities_changed();
    Ok(Json(state.store.capabilities.list()?))
}

async fn parse(state: &ApiState, body: Body) -> Result<Vec<Capability>, ApiError> {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    let body = read_body(state, body).await?;
    let document: serde_json::Value = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid(
            "invalid_json",
            format!("the body is not JSON: {error}"),
            Vec::new(),
        )
    })?;
    let errors = SCHEMA
        .get_or_init(|| Schema::compile(CAPABILITIES_SCHEMA))
        .validate(&document);
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::invalid("invalid_capabilities", message, errors));
    }
    serde_json::from_value(document)
        .map_err(|error| ApiError::invalid("invalid_capabilities", error.to_string(), Vec::new()))
}
