//! Bearer-token authentication. Every `/v1` request needs the token, reads too unless
//! `[WEBSERVER] open_reads` is on (off by default: services, topology and statistics
//! tell anyone on a household's network what runs where). The comparison is constant-time so the
//! token cannot be guessed byte by byte from response times.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::ApiState;

pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    if is_read && state.open_reads {
        return Ok(next.run(request).await);
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token_matches(presented, &state.token) || token_matches(presented, &state.admin_token) {
        Ok(next.run(request).await)
    } else {
        tracing::warn!(method = %request.method(), path = %request.uri().path(), "request without a valid API token");
        Err(ApiError::unauthorized())
    }
}

/// The bearer token a request presents, if any.
pub(crate) fn presented_token(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
}

/// Device access (logs, exec) needs the admin token: without a valid token 401, with the
/// API token only 403.
pub(crate) fn require_admin(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<(), ApiError> {
    let presented = presented_token(headers);
    if token_matches(presented, &state.admin_token) {
        Ok(())
    } else if token_matches(presented, &state.token) {
        Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "admin_token_required",
            "device access (logs, exec) needs the admin token ([SECURITY] admin_token), not the API token",
        ))
    } else {
        Err(ApiError::unauthorized())
    }
}

pub(crate) fn token_matches(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
        assert!(!token_matches("", ""));
    }
}
