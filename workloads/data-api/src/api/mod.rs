//! The HTTP interface (table 4.2): participant endpoints scoped to the household of the
//! calling device, researcher and admin endpoints under `/management`. Every error is a
//! JSON body `{"error": code, "message": text, "field": path | null}`.

mod certificates;
mod correction;
mod management;
mod openapi;
mod participant;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::Tokens;
use crate::health::{Availability, StoreHealth};
use crate::nuts::NutsIndex;
use crate::store::{Store, StoreError};
use crate::validate::FieldError;

pub use management::HouseholdView;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Export pseudonyms and the certificate deny-list.
    pub privacy: Arc<crate::privacy::Privacy>,
    pub tokens: Arc<Tokens>,
    pub nuts: Arc<NutsIndex>,
    /// The devices' expected report cycle; device health flags silence beyond two.
    pub report_interval: std::time::Duration,
    /// Whether the store still works, as the requests find it (`/health`).
    pub health: Arc<StoreHealth>,
}

impl AppState {
    /// Runs storage work that may fsync off the async workers.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("storage task failed: {e}")))?
    }
}

/// Batches larger than this are refused (contract: at most 1000 measurements).
pub const MAX_BATCH: usize = 1000;
/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 4 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/account", get(participant::account))
        .route("/household", get(participant::household))
        .route(
            "/household/consent",
            get(participant::consent)
                .post(participant::grant_consent)
                .delete(participant::revoke_consent),
        )
        .route(
            "/household/measurement_device",
            get(participant::measurement_devices),
        )
        .route("/household/meter", get(participant::meters))
        .route(
            "/household/meter/measurement",
            post(participant::post_measurements),
        )
        .route(
            "/household/meter/{uuid}/measurement",
            get(participant::meter_measurements),
        )
        .route("/household/pv_system", get(participant::pv_systems))
        .route(
            "/management/household",
            get(management::list_households).post(management::create_household),
        )
        .route(
            "/management/household/{id}",
            get(management::get_household).patch(management::update_household),
        )
        .route(
            "/management/export/measurements",
            get(management::export_measurements),
        )
        .route(
            "/management/export/households",
            get(management::export_households),
        )
        .route("/management/session", get(management::session))
        .route(
            "/management/certificate/revoked",
            get(certificates::list).post(certificates::revoke),
        )
        .route("/health", get(health))
        .route("/openapi.json", get(openapi_document))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.health.clone(),
            track_store,
        ))
        .with_state(state)
}

/// Marks the answers of a failed store and learns from every answer whether the store
/// works: a failure makes the process unhealthy, a successful write healthy again.
async fn track_store(
    State(health): State<Arc<StoreHealth>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let writes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let response = next.run(request).await;
    if let Some(StoreUnavailable(error)) = response.extensions().get() {
        health.failed(error.clone());
    } else if writes && response.status().is_success() {
        health.wrote();
    }
    response
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

/// Liveness for the supervisor: 503 while the store fails (the process exits if it does
/// not recover within the retry window).
async fn health(State(state): State<AppState>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    match state.health.availability() {
        Availability::Available => {
            Json(serde_json::json!({"status": "ok", "version": version})).into_response()
        }
        Availability::Unavailable { for_, error } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "store_unavailable",
                "version": version,
                "error": error,
                "unavailable_seconds": for_.as_secs_f64(),
            })),
        )
            .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not support the method",
    )
}

/// The error code of an answer the store could not give.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

/// Set on the answers of a failed store, with the store's error.
#[derive(Debug, Clone)]
struct StoreUnavailable(String);

/// An error answer. Refusals (401/403) are logged as warnings with their reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> ApiError {
        ApiError::invalid_field(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::EmailTaken => {
                ApiError::conflict("email_taken", e.to_string()).with_field("user.email")
            }
            StoreError::DuplicateId { .. } => ApiError::conflict("duplicate_id", e.to_string()),
            StoreError::UnknownHousehold(_) => {
                ApiError::not_found("unknown_household", e.to_string())
            }
            StoreError::HouseholdChanged(_) => {
                ApiError::conflict("concurrent_update", e.to_string())
            }
            StoreError::Consent(c) => ApiError::forbidden(c.code(), c.to_string()),
            StoreError::MeasurementOfOtherMeter { index, .. } => {
                ApiError::invalid_field(format!("measurements[{index}].uuid"), e.to_string())
            }
            _ if e.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                STORE_UNAVAILABLE,
                e.to_string(),
            ),
            StoreError::Database(_)
            | StoreError::Corrupt(_)
            | StoreError::Postgres(_)
            | StoreError::NoConnection(_)
            | StoreError::TlsSetup(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::Vault(_)
            | StoreError::Sealing(_)
            | StoreError::Ledger(_) => {
                tracing::error!(error = %e, "storage failure");
                ApiError::internal("storage failure")
            }
        }
    }
}

impl From<crate::consent::TransitionError> for ApiError {
    fn from(e: crate::consent::TransitionError) -> ApiError {
        use crate::consent::TransitionError as T;
        match e {
            T::Consent(c) => ApiError::conflict(c.code(), c.to_string()),
            T::UnknownHousehold(_) => ApiError::not_found("unknown_household", e.to_string()),
            T::Contended => ApiError::conflict(
                "concurrent_update",
                "the household kept changing; try again",
            ),
            T::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.status.as_u16() {
            401 | 403 => tracing::warn!(
                status = self.status.as_u16(),
                error = self.code,
                message = %self.message,
                "request refused"
            ),
            500.. => tracing::error!(error = self.code, message = %self.message, "request failed"),
            _ => tracing::debug!(
                status = self.status.as_u16(),
                error = self.code,
                field = self.field.as_deref(),
                message = %self.message,
                "request rejected"
            ),
        }
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        })
        .unwrap_or_else(|_| br#"{"error":"internal_error","message":"","field":null}"#.to_vec());
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.code == STORE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            response
                .extensions_mut()
                .insert(StoreUnavailable(self.message.clone()));
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code.ends_with("token") {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Oversized bodies are still read (and dropped) up to this size, so the client gets to
/// read the 413 instead of a broken pipe while it is still sending.
const DRAIN_LIMIT: usize = 64 << 20;

/// Reads a request body up to `limit` bytes; larger bodies get 413.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut collected = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("reading the body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            collected.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {limit} bytes"),
        ));
    }
    Ok(collected.freeze())
}

/// The caller, or its refusal once the body it is still sending has been read: the client
/// then gets to read the refusal instead of a connection closed under its upload.
pub async fn admit<T>(caller: Result<T, ApiError>, body: Body) -> Result<(T, Body), ApiError> {
    match caller {
        Ok(caller) => Ok((caller, body)),
        Err(refusal) => {
            let _ = read_body(body, 0).await;
            Err(refusal)
        }
    }
}

/// Deserializes JSON, naming the failing field path in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        records_are_objects(&value, "body")?;
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", inner.to_string())
        } else {
            ApiError::invalid_field(
                if path == "." { "body".to_owned() } else { path },
                inner.to_string(),
            )
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    Ok(value)
}

/// The management bodies' records (the body, `user`, `address`, `location`, `metadata`
/// and the entries of lists) must be JSON objects: serde would also read a record from a
/// list of its fields' values, which no client means.
fn records_are_objects(value: &serde_json::Value, path: &str) -> Result<(), ApiError> {
    use serde_json::Value;
    const RECORDS: [&str; 4] = ["user", "address", "location", "metadata"];
    let not_an_object = |path: &str| ApiError::invalid_field(path, "must be a JSON object");
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let inner = if path == "body" {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if RECORDS.contains(&key.as_str()) && field.is_array() {
                    return Err(not_an_object(&inner));
                }
                records_are_objects(field, &inner)?;
            }
            Ok(())
        }
        Value::Array(_) if path == "body" => Err(not_an_object(path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let inner = format!("{path}[{i}]");
                if item.is_array() {
                    return Err(not_an_object(&inner));
                }
                records_are_objects(item, &inner)?;
            }
            Ok(())
        }
        _ if path == "body" => Err(not_an_object(path)),
        _ => Ok(()),
    }
}

/// Query string extractor whose errors are JSON like every other error.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| ApiError::invalid_field("query", e.body_text()))
    }
}
