//! Bearer tokens on the `/v1` routes.
//!
//! When the server is configured with a token, every request whose path is `/v1` or starts
//! with `/v1/` (known routes and unknown ones alike, so that an unauthenticated client
//! learns nothing about which exist) must carry `Authorization: Bearer <token>`; tokens
//! are compared in constant time. A second, read-only token (`--read-token`) may be set
//! beside it, for dashboards and scripts that only look: it is taken on `GET` and `HEAD`
//! and refused (403) on every other method, which change something (a job, a target's
//! sequences, an export, the access signals). `/healthz`, `/readyz` and `/metrics` are
//! open. An empty configured token lets no request through rather than every request.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The tokens the server takes on `/v1`.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    /// Takes every route (`None`: the routes are open).
    pub admin: Option<String>,
    /// Takes `GET` and `HEAD` only; ignored without an admin token.
    pub read_only: Option<String>,
}

/// What a request's token lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Every route.
    Full,
    /// Reading only.
    ReadOnly,
    /// Nothing: no token, or a wrong one.
    Denied,
}

/// The tokens `/v1` routes require, if any.
#[derive(Clone)]
pub(crate) struct BearerAuth {
    admin: Option<Arc<[u8]>>,
    read_only: Option<Arc<[u8]>>,
}

fn bytes(token: Option<String>) -> Option<Arc<[u8]>> {
    token.map(|t| Arc::from(t.into_bytes().into_boxed_slice()))
}

impl BearerAuth {
    pub(crate) fn new(tokens: ApiTokens) -> Self {
        let admin = bytes(tokens.admin);
        BearerAuth {
            // A read-only token without an admin one would leave every route open.
            read_only: admin.as_ref().and(bytes(tokens.read_only)),
            admin,
        }
    }

    /// What a request with these headers may do on a protected route.
    pub(crate) fn access(&self, headers: &HeaderMap) -> Access {
        let Some(admin) = &self.admin else {
            return Access::Full;
        };
        let Some(presented) = presented_token(headers).filter(|p| !p.is_empty()) else {
            return Access::Denied;
        };
        // Both compared, so the time taken does not say which token was near.
        let is_admin = constant_time_eq(presented, admin);
        let is_reader = self
            .read_only
            .as_ref()
            .is_some_and(|r| constant_time_eq(presented, r));
        match (is_admin, is_reader) {
            (true, _) => Access::Full,
            (false, true) => Access::ReadOnly,
            (false, false) => Access::Denied,
        }
    }
}

/// Whether `path` is behind the token.
pub(crate) fn is_protected(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Whether `method` only reads.
pub(crate) fn only_reads(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Middleware: refuses protected paths without a right token (401), and methods that
/// change something with the read-only token (403).
pub(crate) async fn require_bearer(
    State(auth): State<BearerAuth>,
    request: Request,
    next: Next,
) -> Response {
    if is_protected(request.uri().path()) {
        match auth.access(request.headers()) {
            Access::Full => {}
            Access::ReadOnly if only_reads(request.method()) => {}
            Access::ReadOnly => {
                return ApiError::ReadOnlyToken {
                    method: request.method().to_string(),
                    path: request.uri().path().to_string(),
                }
                .into_response()
            }
            Access::Denied => return ApiError::Unauthorized.into_response(),
        }
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
