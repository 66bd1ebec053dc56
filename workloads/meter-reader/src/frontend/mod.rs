//! The device frontend (FR-01 to FR-05): a small web interface on the household's network,
//! served by the reader itself. It shows the registration details, the devices, meters and
//! PV systems, the consent with grant and revoke, and the measurements as charts and a
//! table. Every request goes on to the Data API with this device's certificate, so that
//! participants never handle certificates; the page talks only to this server.
//!
//! There is no sign-in: whoever reaches the device on the home network acts for the
//! household, as the survey design intends. Two guards keep other web pages the
//! participant visits from acting through their browser: the `Host` header must name the
//! device (an IP address, a single-label or home-network name, or a configured name),
//! which defeats DNS rebinding, and consent changes need the `X-Device-Frontend` header,
//! which a cross-origin page cannot send without a CORS preflight this server never allows.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::ApiClient;
use crate::consent::ConsentState;

/// Header a consent change must carry (see the module documentation).
pub const ACTION_HEADER: &str = "x-device-frontend";

/// Most measurements of one meter that one chart request collects.
pub const MAX_POINTS_PER_METER: usize = 5000;

/// What the frontend needs from the running reader.
pub struct DeviceHooks {
    /// The reader's own status (consent, pending measurements, probes).
    pub status: Box<dyn Fn() -> Value + Send + Sync>,
    /// Called with every consent state the Data API reports to the frontend.
    pub consent_seen: Box<dyn Fn(ConsentState) + Send + Sync>,
}

#[derive(Clone)]
struct Frontend {
    api: ApiClient,
    hooks: Arc<DeviceHooks>,
    hosts: Arc<Vec<String>>,
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Only this server's own files, no inline code, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The frontend's routes. `hosts` are host names accepted besides IP addresses,
/// `localhost`, single-label names and names under `.local`, `.lan`, `.home.arpa`.
pub fn router(api: ApiClient, hooks: DeviceHooks, hosts: Vec<String>) -> Router {
    let state = Frontend {
        api,
        hooks: Arc::new(hooks),
        hosts: Arc::new(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect()),
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset(FAVICON_SVG, "image/svg+xml") }),
        )
        .route("/api/status", get(status))
        .route("/api/overview", get(overview))
        .route("/api/measurements", get(measurements))
        .route(
            "/api/consent",
            get(consent).post(grant_consent).delete(revoke_consent),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// An error answer in the Data API's shape: `{"error", "message", "field"}`.
fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message, "field": field})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such page", None)
}

/// Whether `host` (the `Host` header, port included) names this device.
pub fn host_allowed(host: &str, configured: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6 address]:port
        return rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host.as_str(), |(name, _)| name)
    };
    if name.is_empty() {
        return false;
    }
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || !name.contains('.')
        || [".local", ".lan", ".home.arpa"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
        || configured.iter().any(|c| c == name)
}

/// Refuses requests for foreign host names and cross-site consent changes; adds the
/// security headers to every answer.
async fn guard(State(frontend): State<Frontend>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_owned();
    if !host_allowed(&host, &frontend.hosts) {
        tracing::warn!(host = %host, "device frontend: request for a foreign host name refused");
        return error(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "this device answers only under its own address; add the name to METER_READER_UI_HOSTS",
            Some("Host"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if let Some(refusal) = cross_site(headers, &host) {
            tracing::warn!(host = %host, reason = refusal, "device frontend: action refused");
            return error(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                refusal,
                Some(ACTION_HEADER),
            );
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn cross_site(headers: &HeaderMap, host: &str) -> Option<&'static str> {
    if headers.get(ACTION_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return Some("consent changes come only from the device frontend's own page");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if !origin_host.eq_ignore_ascii_case(host) {
            return Some("the request comes from another site");
        }
    }
    None
}

/// One Data API answer as the page gets it: `{"ok", "status", "body"}`. A Data API that
/// cannot be reached answers with status 502 and `data_api_unreachable`.
async fn part(frontend: &Frontend, method: reqwest::Method, path: &str) -> Value {
    match frontend.api.call(method, path).await {
        Ok((status, body)) => json!({
            "ok": (200..300).contains(&status),
            "status": status,
            "body": body,
        }),
        Err(e) => {
            tracing::warn!(path, error = %e, "device frontend: Data API not reached");
            json!({
                "ok": false,
                "status": 502,
                "body": {
                    "error": "data_api_unreachable",
                    "message": format!("the Data API could not be reached: {e}"),
                    "field": null,
                },
            })
        }
    }
}

fn consent_state(value: &Value) -> Option<ConsentState> {
    serde_json::from_value(value.get("state")?.clone()).ok()
}

async fn status(State(frontend): State<Frontend>) -> Json<Value> {
    Json((frontend.hooks.status)())
}

/// Everything the page shows but the measurements, in one answer, so that the page
/// loads with one request and each part can fail on its own (after revocation the
/// account is gone, for example).
async fn overview(State(frontend): State<Frontend>) -> Json<Value> {
    let get = reqwest::Method::GET;
    let (account, household, devices, meters, pv_systems) = tokio::join!(
        part(&frontend, get.clone(), "/account"),
        part(&frontend, get.clone(), "/household"),
        part(&frontend, get.clone(), "/household/measurement_device"),
        part(&frontend, get.clone(), "/household/meter"),
        part(&frontend, get, "/household/pv_system"),
    );
    if household["ok"] == true {
        if let Some(state) = consent_state(&household["body"]["consent"]) {
            (frontend.hooks.consent_seen)(state);
        }
    }
    Json(json!({
        "reader": (frontend.hooks.status)(),
        "account": account,
        "household": household,
        "measurement_devices": devices,
        "meters": meters,
        "pv_systems": pv_systems,
    }))
}

/// Passes a consent answer through, taking note of the state it reports.
async fn consent_call(frontend: Frontend, method: reqwest::Method) -> Response {
    let action = method.clone();
    let answer = part(&frontend, method, "/household/consent").await;
    if answer["ok"] == true {
        if let Some(state) = consent_state(&answer["body"]) {
            if action != reqwest::Method::GET {
                tracing::info!(consent = %state, "consent changed through the device frontend");
            }
            (frontend.hooks.consent_seen)(state);
        }
    }
    let status = answer["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(answer["body"].clone())).into_response()
}

async fn consent(State(frontend): State<Frontend>) -> Response {
    consent_call(frontend, reqwest::Method::GET).await
}

/// FR-01.
async fn grant_consent(State(frontend): State<Frontend>) -> Response {
    consent_call(frontend, reqwest::Method::POST).await
}

/// FR-02: final; the Data API anonymizes the household in the same step.
async fn revoke_consent(State(frontend): State<Frontend>) -> Response {
    consent_call(frontend, reqwest::Method::DELETE).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesParams {
    from: Option<String>,
    to: Option<String>,
}

/// A query parameter that is not an RFC 3339 time; names the parameter.
struct BadTime(&'static str);

impl IntoResponse for BadTime {
    fn into_response(self) -> Response {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "expected an RFC 3339 time such as 2026-11-23T10:15:00Z",
            Some(self.0),
        )
    }
}

fn time_param(
    field: &'static str,
    value: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, BadTime> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| BadTime(field))
        })
        .transpose()
}

/// FR-05: the household's measurements from `from` (default: the last hour) to `to`,
/// every meter's series collected through the Data API's pages, at most
/// [`MAX_POINTS_PER_METER`] each (`truncated` says when more exist).
async fn measurements(
    State(frontend): State<Frontend>,
    params: Result<Query<SeriesParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "known parameters: from, to",
            Some("query"),
        );
    };
    let from = match time_param("from", params.from.as_deref()) {
        Ok(t) => t.unwrap_or_else(|| chrono::Utc::now() - chrono::Duration::hours(1)),
        Err(bad) => return bad.into_response(),
    };
    let to = match time_param("to", params.to.as_deref()) {
        Ok(t) => t,
        Err(bad) => return bad.into_response(),
    };
    let format =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let meters = part(&frontend, reqwest::Method::GET, "/household/meter").await;
    if meters["ok"] != true {
        return forward_failure(&meters);
    }
    let mut series = Vec::new();
    let mut truncated = false;
    for meter in meters["body"]["meters"].as_array().into_iter().flatten() {
        let Some(uuid) = meter["uuid"]
            .as_str()
            .and_then(|u| uuid::Uuid::parse_str(u).ok())
        else {
            continue;
        };
        let mut points: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!(
                "/household/meter/{uuid}/measurement?limit=1000&from={}",
                format(from)
            );
            if let Some(to) = to {
                path.push_str(&format!("&to={}", format(to)));
            }
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&url_encode(c));
            }
            let page = part(&frontend, reqwest::Method::GET, &path).await;
            if page["ok"] != true {
                return forward_failure(&page);
            }
            points.extend(
                page["body"]["measurements"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            cursor = page["body"]["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
            if points.len() >= MAX_POINTS_PER_METER {
                truncated = true;
                break;
            }
        }
        points.truncate(MAX_POINTS_PER_METER);
        series.push(json!({
            "uuid": uuid,
            "type": meter["type"],
            "model": meter["model"],
            "measurements": points,
        }));
    }
    Json(json!({
        "from": format(from),
        "to": to.map(format),
        "meters": series,
        "truncated": truncated,
    }))
    .into_response()
}

fn forward_failure(answer: &Value) -> Response {
    let status = answer["status"]
        .as_u64()
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .filter(|s| !s.is_success())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    (status, Json(answer["body"].clone())).into_response()
}

/// Percent-encodes a query value (cursors are opaque to the frontend).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_of_the_device_only() {
        let configured = vec!["reader.example.org".to_string()];
        for ok in [
            "192.168.1.20:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:8080",
            "meter-reader:8080",
            "meter-reader.local",
            "reader.fritz.box.lan:80",
            "reader.home.arpa",
            "READER.example.org:8080",
        ] {
            assert!(host_allowed(ok, &configured), "{ok}");
        }
        for refused in [
            "",
            ":8080",
            "evil.example.com",
            "evil.example.com:8080",
            "[not-an-ip]:80",
            "127.0.0.1.evil.example.com",
        ] {
            assert!(!host_allowed(refused, &configured), "{refused}");
        }
    }

    #[test]
    fn consent_changes_need_the_frontend_header_and_same_origin() {
        let mut headers = HeaderMap::new();
        assert!(cross_site(&headers, "192.168.1.20:8080").is_some());
        headers.insert(ACTION_HEADER, HeaderValue::from_static("1"));
        assert!(cross_site(&headers, "192.168.1.20:8080").is_none());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://192.168.1.20:8080"),
        );
        assert!(cross_site(&headers, "192.168.1.20:8080").is_none());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example.com"),
        );
        assert!(cross_site(&headers, "192.168.1.20:8080").is_some());
    }

    #[test]
    fn cursors_are_encoded() {
        assert_eq!(url_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
        assert_eq!(url_encode("AZaz09-_.~"), "AZaz09-_.~");
    }
}
