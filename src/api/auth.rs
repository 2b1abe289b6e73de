//! Bearer-token check for the `/v1` routes.
//!
//! When the server is configured with a token, every request whose path is `/v1` or starts
//! with `/v1/` (known routes and unknown ones alike, so that an unauthenticated client
//! learns nothing about which exist) must carry `Authorization: Bearer <token>`; the token
//! is compared in constant time. `/healthz`, `/readyz` and `/metrics` are open. An empty
//! configured token lets no request through rather than every request.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The token `/v1` routes require, if any.
#[derive(Clone)]
pub(crate) struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    pub(crate) fn new(token: Option<String>) -> Self {
        BearerAuth {
            token: token.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
        }
    }

    /// Whether a request with these headers may use a protected route.
    pub(crate) fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        match presented_token(headers) {
            Some(presented) if !presented.is_empty() => constant_time_eq(presented, expected),
            _ => false,
        }
    }
}

/// Whether `path` is behind the token.
pub(crate) fn is_protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Middleware: refuses protected paths without the right token (401).
pub(crate) async fn require_bearer(
    State(auth): State<BearerAuth>,
    request: Request,
    next: Next,
) -> Response {
    if is_protected(request.uri().path()) && !auth.allows(request.headers()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
/// RFC 7235 says). `None` for a missing header, another scheme, or a value that is not
/// visible ASCII.
pub(crate) fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        // Two Authorization headers: ambiguous, refuse.
        return None;
    }
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(token.trim_matches(' ').as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}
