//! The HTTP API: the only code that knows HTTP and JSON.
//!
//! It turns requests into calls on a
//! [`JobControl`](crate::control::job_control::JobControl) and the answers into JSON responses:
//! `POST /v1/jobs` (a job spec as JSON or TOML), `GET /v1/jobs`, `GET|DELETE /v1/jobs/{id}`,
//! `POST /v1/jobs/{id}/pause|resume`, `GET /v1/tenants/{tenant}`, and the open
//! `/healthz`, `/readyz`, `/metrics`. [`ROUTES`] lists them; `schemas/openapi.yaml`
//! documents them, and a test keeps the two equal.
//!
//! - `routes`: the route list, the handlers, [`router`], request logging (method, path,
//!   status at debug, never bodies).
//! - `auth`: the bearer tokens on `/v1`: admin, and read-only (`GET`/`HEAD`) (constant-time
//!   compare).
//! - `error`: [`ApiError`], the one error type, and its body `{"error", "field"}`.
//!
//! What it never does: start, stop or inspect jobs itself (that is the `JobControl`
//! implementation's work, and the API holds no job state of its own); talk to PostgreSQL;
//! interpret a job spec beyond parsing it with [`JobSpec`](crate::control::job_spec::JobSpec)
//! (validation and its field-naming errors live there); log a request body; or put a
//! password into a response: error messages and job statuses pass through
//! [`redact_text`] before they go out, on top of the redaction the manager does.

mod auth;
pub mod client;
mod error;
mod routes;
#[cfg(test)]
mod tests;
pub mod tls;

use std::future::Future;

pub use auth::ApiTokens;
pub use error::{redact_text, ApiError, ErrorBody};
pub use routes::{
    router, Health, JobCreated, JobList, TenantJobs, MAX_BODY_BYTES, METRICS_CONTENT_TYPE, ROUTES,
    SPEC_CONTENT_TYPES,
};

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and
/// waits for the requests in flight to finish; over TLS with `tls` if given (see [`tls`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, scheme, "API listening"),
        Err(e) => tracing::warn!(%e, scheme, "API listening on an unknown address"),
    }
    match tls {
        Some(config) => {
            axum::serve(tls::TlsListener::new(listener, config), router)
                .with_graceful_shutdown(shutdown)
                .await?
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?
        }
    }
    tracing::info!("API stopped");
    Ok(())
}
