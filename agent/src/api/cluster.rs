//! `POST /v1/cluster/join` on the CA node: a node proves a join token and receives its
//! node certificate. Authenticated by the join token, not by the API token: the joining
//! node has none.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::error::ApiError;
use super::ApiState;
use crate::cluster::join::{JoinRequest, JoinResponse};
use crate::cluster::renewal::{RenewRequest, RenewResponse};
use crate::cluster::token::TokenError;
use crate::cluster::{ClusterAuthority, ClusterError, ClusterFiles};
use crate::validation::FieldError;

/// What the join endpoint needs on the CA node.
#[derive(Debug, Clone)]
pub struct JoinDesk {
    pub files: ClusterFiles,
    pub certificate_lifetime: Duration,
    /// Where this node's cluster key is kept (handed to joining nodes; see SECURITY.md).
    pub cluster_key: ClusterKeySource,
}

/// The cluster key as this node has it.
#[derive(Clone)]
pub enum ClusterKeySource {
    Configured(Arc<str>),
    File(PathBuf),
}

impl std::fmt::Debug for ClusterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterKeySource::Configured(_) => f.write_str("Configured(<redacted>)"),
            ClusterKeySource::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

impl ClusterKeySource {
    fn secret(&self) -> Option<String> {
        match self {
            ClusterKeySource::Configured(secret) => Some(secret.to_string()),
            ClusterKeySource::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned()),
        }
    }
}

pub async fn join(
    State(state): State<ApiState>,
    body: axum::body::Body,
) -> Result<Json<JoinResponse>, ApiError> {
    let Some(desk) = state.join.clone() else {
        return Err(not_a_ca());
    };
    let bytes = super::read_body(&state, body).await?;
    let request: JoinRequest = serde_json::from_slice(&bytes).map_err(|error| {
        let field = ["token", "node_id", "csr"]
            .into_iter()
            .find(|field| error.to_string().contains(field))
            .unwrap_or("");
        ApiError::invalid(
            "invalid_join_request",
            format!("not a join request: {error}"),
            vec![FieldError::new(field, error.to_string())],
        )
    })?;
    let node = request.node_id.clone();
    let admitted = tokio::task::spawn_blocking(move || {
        let authority = ClusterAuthority::load(&desk.files)?;
        crate::cluster::join::admit(
            &authority,
            &request,
            desk.certificate_lifetime,
            desk.cluster_key.secret(),
        )
    })
    .await
    .map_err(|error| ApiError::internal(error.to_string()))?;
    match admitted {
        Ok(response) => Ok(Json(response)),
        Err(error) => {
            tracing::warn!(target: "motey::audit", %node, %error, "refused a node's join");
            Err(refusal(error))
        }
    }
}

pub async fn renew(
    State(state): State<ApiState>,
    body: axum::body::Body,
) -> Result<Json<RenewResponse>, ApiError> {
    let Some(desk) = state.join.clone() else {
        return Err(not_a_ca());
    };
    let bytes = super::read_body(&state, body).await?;
    let request: RenewRequest = serde_json::from_slice(&bytes).map_err(|error| {
        let field = ["certificate", "csr", "signature"]
            .into_iter()
            .find(|field| error.to_string().contains(field))
            .unwrap_or("");
        ApiError::invalid(
            "invalid_renew_request",
            format!("not a renewal request: {error}"),
            vec![FieldError::new(field, error.to_string())],
        )
    })?;
    let renewed = tokio::task::spawn_blocking(move || {
        let authority = ClusterAuthority::load(&desk.files)?;
        crate::cluster::renewal::renew_for(&authority, &request, desk.certificate_lifetime)
    })
    .await
    .map_err(|error| ApiError::internal(error.to_string()))?;
    renewed.map(Json).map_err(|error| {
        tracing::warn!(target: "motey::audit", %error, "refused a certificate renewal");
        match error {
            ClusterError::Refused(refusal) => ApiError::new(
                StatusCode::FORBIDDEN,
                "certificate_refused",
                refusal.to_string(),
            ),
            other => refusal(other),
        }
    })
}

fn not_a_ca() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_a_cluster_ca",
        "this node holds no cluster CA; join through the node where `motey cluster init` ran",
    )
}

fn refusal(error: ClusterError) -> ApiError {
    let message = error.to_string();
    match error {
        ClusterError::Token(TokenError::Malformed(_)) => ApiError::invalid(
            "join_token_malformed",
            message.clone(),
            vec![FieldError::new("token", message)],
        ),
        ClusterError::Token(TokenError::Unknown(_)) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "join_token_unknown", message)
        }
        ClusterError::Token(TokenError::Expired { .. }) => {
            ApiError::new(StatusCode::GONE, "join_token_expired", message)
        }
        ClusterError::Token(TokenError::UsedUp(_)) => {
            ApiError::new(StatusCode::CONFLICT, "join_token_used", message)
        }
        ClusterError::NodeRevoked(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "node_revoked", message)
        }
        ClusterError::Invalid(_) => ApiError::invalid(
            "invalid_join_request",
            message.clone(),
            vec![FieldError::new("csr", message)],
        ),
        ClusterError::NotAnAuthority(_) => not_a_ca(),
        _ => ApiError::internal(message),
    }
}
