//! `/v1/services`: submit a YAML blueprint, list services, show one, terminate one.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::error::ApiError;
use super::{read_body, ApiState};
use crate::blueprint;
use crate::domain::{
    DesiredState, ImageState, NodeId, Revision, RolloutPhase, Service, ServiceId, ServiceState,
};

/// Media types a blueprint may be sent as. JSON is YAML, so it is welcome too.
const BLUEPRINT_TYPES: &[&str] = &[
    "application/x-yaml",
    "application/yaml",
    "text/yaml",
    "text/x-yaml",
    "application/json",
];

/// A service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub id: ServiceId,
    pub name: String,
    pub state: ServiceState,
    pub desired: DesiredState,
    pub reason: Option<String>,
    pub owner: NodeId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub images: Vec<ImageView>,
    /// Version of the blueprint that runs (1, then one more per completed update).
    pub version: u32,
    /// The latest update, if any: under way, completed or rolled back.
    pub update: Option<UpdateView>,
    pub links: ServiceLinks,
}

/// An update as the API shows it.
#[derive(Debug, Serialize)]
pub struct UpdateView {
    pub from_version: u32,
    pub to_version: u32,
    pub phase: RolloutPhase,
    /// The image being replaced now.
    pub image: Option<String>,
    /// What the update does now, or why it was rolled back.
    pub message: String,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where related resources are.
#[derive(Debug, Serialize)]
pub struct ServiceLinks {
    #[serde(rename = "self")]
    pub this: String,
    pub services: &'static str,
    pub nodes: &'static str,
    pub history: String,
}

/// One image of a service: where it runs and how it is.
#[derive(Debug, Serialize)]
pub struct ImageView {
    pub name: String,
    pub image: String,
    pub node: Option<NodeId>,
    pub state: ImageState,
    pub reason: Option<String>,
    pub container_id: Option<String>,
    pub capabilities: Vec<String>,
}

impl From<Service> for ServiceView {
    fn from(service: Service) -> ServiceView {
        ServiceView {
            links: ServiceLinks {
                this: format!("/v1/services/{}", service.id),
                services: "/v1/services",
                nodes: "/v1/nodes",
                history: format!("/v1/services/{}/history", service.id),
            },
            version: service.version,
            update: service.rollout.map(|rollout| UpdateView {
                message: rollout.describe(),
                from_version: rollout.from_version,
                to_version: rollout.to_version,
                phase: rollout.phase,
                image: rollout.current_image,
                reason: rollout.reason,
                started_at: rollout.started_at,
                finished_at: rollout.finished_at,
            }),
            images: service
                .images
                .into_iter()
                .map(|image| ImageView {
                    name: image.blueprint.id,
                    image: image.blueprint.image,
                    node: image.node,
                    state: image.state,
                    reason: image.reason,
                    container_id: image.container_id,
                    capabilities: image.blueprint.capabilities,
                })
                .collect(),
            id: service.id,
            name: service.name,
            state: service.state,
            desired: service.desired,
            reason: service.reason,
            owner: service.owner,
            created_at: service.created_at,
            updated_at: service.updated_at,
        }
    }
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let services = state.orchestrator.services()?;
    Ok(Json(services.into_iter().map(ServiceView::from).collect()))
}

pub async fn show(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(state.orchestrator.service(&ServiceId(id))?.into()))
}

/// `POST /v1/services` with a YAML blueprint: 201 and the new service (state INITIAL),
/// which the orchestrator then brings to RUNNING or ERROR.
pub async fn create(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let parsed = read_blueprint(&state, &headers, body).await?;
    let service = state.orchestrator.submit(parsed).await?;
    let location = format!("/v1/services/{}", service.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(ServiceView::from(service)),
    )
        .into_response())
}

/// `PUT /v1/services/{id}` with a new version of the service's blueprint: 202 and the
/// service (state UPDATING); its images are then replaced one at a time, and the update
/// is rolled back automatically if a new version does not run.
pub async fn update(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let id = ServiceId(id);
    // A missing service is named before the body is judged.
    state.orchestrator.service(&id)?;
    let parsed = read_blueprint(&state, &headers, body).await?;
    let service = state.orchestrator.update(&id, parsed).await?;
    Ok((StatusCode::ACCEPTED, Json(service.into())))
}

/// `GET /v1/services/{id}/history`: the service's versions, oldest first.
pub async fn history(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    Ok(Json(state.orchestrator.service(&ServiceId(id))?.history))
}

/// `DELETE /v1/services/{id}`: 202; the service goes STOPPING, then TERMINATED.
pub async fn terminate(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let service = state.orchestrator.terminate(&ServiceId(id)).await?;
    Ok((StatusCode::ACCEPTED, Json(service.into())))
}

/// `DELETE /v1/service` (Motey's alias) with the blueprint as body: terminates the
/// services of this node carrying the blueprint's `id`, or else its service name.
pub async fn terminate_by_blueprint(
    State(state): State<ApiState>,
    body: Body,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let body = read_body(&state, body).await?;
    let document = off_runtime(&state, move || {
        let text = std::str::from_utf8(&body).unwrap_or_default();
        blueprint::shape::check(text).map_err(blueprint::BlueprintError::from)?;
        blueprint::to_json(text).map_err(|_| {
            ApiError::invalid(
                "invalid_yaml",
                "the body is not a YAML or JSON blueprint",
                Vec::new(),
            )
        })
    })
    .await?;
    let id = document["id"].as_str();
    let name = document["service_name"]
        .as_str()
        .or(document["name"].as_str());
    if id.is_none() && name.is_none() {
        return Err(ApiError::invalid(
            "invalid_blueprint",
            "service_name: is required to find the service",
            vec![crate::validation::FieldError::new(
                "service_name",
                "is required",
            )],
        ));
    }
    let me = state.orchestrator.node().clone();
    let targets: Vec<ServiceId> = state
        .orchestrator
        .services()?
        .into_iter()
        .filter(|service| service.owner == me && service.desired == DesiredState::Running)
        .filter(|service| match id {
            Some(id) => service.id.as_str() == id,
            None => Some(service.name.as_str()) == name,
        })
        .map(|service| service.id)
        .collect();
    if targets.is_empty() {
        return Err(ApiError::not_found(
            "no running service matches the blueprint",
        ));
    }
    let mut terminated = Vec::new();
    for id in targets {
        terminated.push(state.orchestrator.terminate(&id).await?.into());
    }
    Ok(Json(terminated))
}

/// A blueprint from a request body (YAML or JSON), parsed and validated.
async fn read_blueprint(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::domain::Blueprint, ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !BLUEPRINT_TYPES.contains(&media_type.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a blueprint is sent as application/x-yaml, not {:?}",
                if media_type.is_empty() {
                    "(no Content-Type)"
                } else {
                    &media_type
                }
            ),
        ));
    }
    let body = read_body(state, body).await?;
    let security = state.security.clone();
    off_runtime(state, move || {
        let text = std::str::from_utf8(&body).map_err(|error| {
            ApiError::invalid(
                "invalid_yaml",
                format!("the blueprint is not UTF-8: {error}"),
                Vec::new(),
            )
        })?;
        Ok(blueprint::parse(text, &security)?)
    })
    .await
}

/// Runs a parse on a blocking thread, at most [`super::BLUEPRINT_PARSES`] at a time: the
/// YAML parser's cost grows faster than its input, and on the async runtime one large
/// body would hold up `/health`, heartbeats and peer requests alike.
async fn off_runtime<T, F>(state: &ApiState, parse: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    let _permit = state
        .parses
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the agent is shutting down"))?;
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|error| ApiError::internal(format!("the blueprint parse failed: {error}")))?
}
