//! Device access for administrators (FR-11): `GET .../images/{image}/logs` (tail, follow)
//! and `POST .../images/{image}/exec` (a diagnostic command in the image's container).
//! Both need the admin token, not the API token, and work for images hosted on peers
//! (the owner asks the peer). Every diagnostic command is logged (target `motey::audit`)
//! with who asked, where and what.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use motey_val::{ExecRequest, LogLine, LogQuery};
use serde::{Deserialize, Serialize};

use super::auth::require_admin;
use super::error::ApiError;
use super::{read_body, ApiState};
use crate::domain::{NodeId, ServiceId};
use crate::orchestrator::access::{AccessError, Location};
use crate::validation::FieldError;

/// Lines a log request returns unless `tail` says otherwise.
const DEFAULT_TAIL: usize = 100;
/// Most lines one log request may ask for.
const MAX_TAIL: usize = 10_000;

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> ApiError {
        match &error {
            AccessError::NotFound { .. } => ApiError::not_found(error.to_string()),
            AccessError::NoContainer { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_running", error.to_string())
            }
            AccessError::Refused(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "refused", error.to_string())
            }
            AccessError::Engine(motey_val::ValError::Refused { .. })
            | AccessError::Engine(motey_val::ValError::NotFound(_)) => {
                ApiError::new(StatusCode::CONFLICT, "engine_refused", error.to_string())
            }
            AccessError::Remote(_) | AccessError::Engine(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "unreachable", error.to_string())
            }
            AccessError::Store(_) => ApiError::internal(error.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LogParams {
    tail: Option<String>,
    follow: Option<String>,
    timestamps: Option<String>,
}

fn flag(value: &Option<String>, field: &str) -> Result<bool, ApiError> {
    match value.as_deref() {
        None | Some("false") | Some("0") => Ok(false),
        Some("") | Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            "invalid_parameter",
            format!("{field}: {other:?} is not true or false"),
            vec![FieldError::new(field, "expected true or false")],
        )),
    }
}

fn render(line: &LogLine, timestamps: bool) -> String {
    match (timestamps, line.at_ns) {
        (true, Some(at)) => format!(
            "{} {}\n",
            chrono::DateTime::from_timestamp_nanos(at)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            line.text
        ),
        _ => format!("{}\n", line.text),
    }
}

/// `GET /v1/services/{id}/images/{image}/logs?tail=N&follow=true&timestamps=true`:
/// `text/plain` lines; with `follow` the response streams until the client disconnects.
pub async fn logs(
    State(state): State<ApiState>,
    Path((id, image)): Path<(String, String)>,
    params: Result<Query<LogParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers)?;
    // axum's own refusal is plain text; every refusal of this API is JSON.
    let Query(params) = params.map_err(|rejection| {
        ApiError::invalid(
            "invalid_parameter",
            format!("the query string: {}", rejection.body_text()),
            Vec::new(),
        )
    })?;
    let tail = match params.tail.as_deref() {
        None => DEFAULT_TAIL,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|tail| *tail <= MAX_TAIL)
            .ok_or_else(|| {
                ApiError::invalid(
                    "invalid_parameter",
                    format!("tail: {text:?} is not a number of lines from 0 to {MAX_TAIL}"),
                    vec![FieldError::new("tail", format!("expected 0 to {MAX_TAIL}"))],
                )
            })?,
    };
    let follow = flag(&params.follow, "follow")?;
    let timestamps = flag(&params.timestamps, "timestamps")?;
    let service = ServiceId(id);
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if follow {
        let lines = state
            .orchestrator
            .follow_image_logs(&service, &image, tail)
            .await?;
        tracing::info!(%service, %image, tail, "following an image's log");
        let body = lines.map(move |line| match line {
            Ok(line) => Ok::<_, std::io::Error>(render(&line, timestamps)),
            // The status line is sent already: say it in the text, then end.
            Err(error) => Err(std::io::Error::other(error.to_string())),
        });
        return Ok((
            text_plain,
            [(header::CACHE_CONTROL, "no-cache")],
            Body::from_stream(body),
        )
            .into_response());
    }
    let (_, lines) = state
        .orchestrator
        .image_logs(
            &service,
            &image,
            LogQuery {
                tail,
                since_ns: None,
            },
        )
        .await?;
    let text: String = lines.iter().map(|line| render(line, timestamps)).collect();
    Ok((text_plain, text).into_response())
}

#[derive(Debug, Deserialize)]
struct ExecBody {
    command: Vec<String>,
}

/// What a diagnostic command did, and where it ran.
#[derive(Debug, Serialize)]
pub struct ExecView {
    pub node: NodeId,
    pub exit_code: Option<i64>,
    pub output: String,
    pub truncated: bool,
    pub timed_out: bool,
}

/// `POST /v1/services/{id}/images/{image}/exec` with `{"command": ["cat", "/data/x"]}`:
/// runs the command (no shell) in the image's container, within `[SECURITY] exec_timeout`
/// and `exec_max_output`.
pub async fn exec(
    State(state): State<ApiState>,
    Path((id, image)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ExecView>, ApiError> {
    require_admin(&state, &headers)?;
    if !state.access.allow_exec {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "exec_not_allowed",
            "diagnostic commands are not allowed on this node ([SECURITY] allow_exec)",
        ));
    }
    let body = read_body(&state, body).await?;
    let request: ExecBody = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid(
            "invalid_exec",
            format!("command: expected {{\"command\": [\"program\", \"arg\", ...]}}: {error}"),
            vec![FieldError::new("command", "expected a list of strings")],
        )
    })?;
    if request
        .command
        .first()
        .is_none_or(|program| program.trim().is_empty())
    {
        return Err(ApiError::invalid(
            "invalid_exec",
            "command: names no program",
            vec![FieldError::new("command", "names no program")],
        ));
    }
    let service = ServiceId(id);
    let who = headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let exec = ExecRequest {
        command: request.command.clone(),
        timeout_secs: state.access.exec_timeout_secs,
        max_output_bytes: state.access.exec_max_output,
    };
    let result = state.orchestrator.image_exec(&service, &image, exec).await;
    let node = match &result {
        Ok((Location::Peer(node), _)) => node.to_string(),
        Ok((Location::Here(_), _)) => state.orchestrator.node().to_string(),
        Err(_) => "-".into(),
    };
    tracing::info!(
        target: "motey::audit",
        who = "admin token", client = %who, %service, %image, %node,
        command = ?request.command,
        exit_code = ?result.as_ref().ok().and_then(|(_, output)| output.exit_code),
        error = ?result.as_ref().err().map(ToString::to_string),
        "diagnostic command run"
    );
    let (location, output) = result?;
    Ok(Json(ExecView {
        node: match location {
            Location::Peer(node) => node,
            Location::Here(_) => state.orchestrator.node().clone(),
        },
        exit_code: output.exit_code,
        output: output.output,
        truncated: output.truncated,
        timed_out: output.timed_out,
    }))
}
