//! The routes, their handlers, and the router that ties them to a [`JobControl`].
//!
//! [`ROUTES`] is the list of every (method, path) the API answers; [`router`] registers
//! exactly those, each through [`endpoint`], and the tests check the list against
//! `schemas/openapi.yaml`, so the code and the document cannot drift apart silently.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::{self, ApiTokens, BearerAuth};
use super::error::{redact_text, ApiError};
use crate::control::access::AccessEvents;
use crate::control::job_control::{
    AsOfQuery, AsOfRows, ControlError, ExportRequest, ExportStatus, JobCompression, JobControl,
    JobEvents, JobId, JobStatus, ResyncRequest, RetentionPolicy, SyncRequest, SyncResult,
    TenantJob, TimePoint, EVENTS_DEFAULT, EVENTS_MAX,
};
use crate::control::job_spec::JobSpec;

/// Every route the API answers, as (method, path template). [`router`] registers exactly
/// these; `schemas/openapi.yaml` documents exactly these (checked by the tests).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("PUT", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/pause"),
    ("POST", "/v1/jobs/{id}/resume"),
    ("POST", "/v1/jobs/{id}/resync"),
    ("POST", "/v1/jobs/{id}/sync"),
    ("GET", "/v1/jobs/{id}/compression"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/tenants/{tenant}"),
    ("GET", "/v1/tenants/{tenant}/tables/{table}/rows"),
    ("POST", "/v1/exports"),
    ("GET", "/v1/exports/{id}"),
    ("GET", "/v1/retention-policies"),
    ("PUT", "/v1/retention-policies"),
    ("POST", "/v1/access"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// Largest accepted request body (1 MiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The media types `POST /v1/jobs` reads, as named in its 415 answer.
pub const SPEC_CONTENT_TYPES: &[&str] = &["application/json", "application/toml", "text/toml"];

/// `Content-Type` of `GET /metrics` (OpenMetrics 1.0 text).
pub const METRICS_CONTENT_TYPE: &str = crate::metrics::CONTENT_TYPE;

/// Body of `201` from `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreated {
    /// The new job's id.
    pub id: JobId,
}

/// Body of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    /// Every job.
    pub jobs: Vec<JobStatus>,
}

/// Body of `GET /v1/tenants/{tenant}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantJobs {
    /// The tenant asked about.
    pub tenant: String,
    /// The jobs carrying it (possibly none).
    pub jobs: Vec<TenantJob>,
}

/// Body of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`: the process answers.
    pub status: String,
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    control: Arc<dyn JobControl>,
}

/// The API's router over `control`. With an admin token, every `/v1` path requires
/// `Authorization: Bearer <token>`, the read-only token taken on `GET` and `HEAD` (see
/// `auth`); `/healthz`, `/readyz` and `/metrics` never do.
pub fn router(control: Arc<dyn JobControl>, tokens: ApiTokens) -> Router {
    let mut router = Router::new();
    for &(method, path) in ROUTES {
        router = router.route(path, endpoint(method, path));
    }
    router
        // Must follow the routes: it applies to those registered before it.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            BearerAuth::new(tokens),
            auth::require_bearer,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(AppState { control })
}

/// The handler of one entry of [`ROUTES`].
///
/// # Panics
/// For a pair that has no handler: a new entry in [`ROUTES`] needs an arm here (any
/// router construction, hence every test, fails until it has one).
fn endpoint(method: &str, path: &str) -> MethodRouter<AppState> {
    match (method, path) {
        ("POST", "/v1/jobs") => post(submit_job),
        ("GET", "/v1/jobs") => get(list_jobs),
        ("GET", "/v1/jobs/{id}") => get(get_job),
        ("DELETE", "/v1/jobs/{id}") => delete(delete_job),
        ("PUT", "/v1/jobs/{id}") => put(replace_job),
        ("POST", "/v1/jobs/{id}/pause") => post(pause_job),
        ("POST", "/v1/jobs/{id}/resume") => post(resume_job),
        ("POST", "/v1/jobs/{id}/resync") => post(resync_job),
        ("POST", "/v1/jobs/{id}/sync") => post(sync_job),
        ("GET", "/v1/jobs/{id}/compression") => get(job_compression),
        ("GET", "/v1/jobs/{id}/events") => get(job_events),
        ("GET", "/v1/tenants/{tenant}") => get(tenant_jobs),
        ("GET", "/v1/tenants/{tenant}/tables/{table}/rows") => get(rows_as_of),
        ("POST", "/v1/exports") => post(start_export),
        ("GET", "/v1/exports/{id}") => get(export_status),
        ("GET", "/v1/retention-policies") => get(retention_policies),
        ("PUT", "/v1/retention-policies") => put(set_retention),
        ("POST", "/v1/access") => post(record_access),
        ("GET", "/healthz") => get(healthz),
        ("GET", "/readyz") => get(readyz),
        ("GET", "/metrics") => get(metrics),
        _ => panic!("api::routes::ROUTES lists {method} {path}, which has no handler"),
    }
}

// ---------------------------------------------------------------------------
// Jobs

/// The two spec formats `POST /v1/jobs` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpecFormat {
    Json,
    Toml,
}

/// The spec format named by a `Content-Type` header (415 for anything else, or for a
/// charset other than UTF-8).
pub(crate) fn spec_format(headers: &HeaderMap) -> Result<SpecFormat, ApiError> {
    let unsupported = |found: String| ApiError::UnsupportedMediaType {
        found,
        accepted: accepted_types(),
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("missing Content-Type header".to_owned()));
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported("Content-Type header is not visible ASCII".to_owned()))?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let format = match essence.as_str() {
        "application/json" => SpecFormat::Json,
        "application/toml" | "text/toml" => SpecFormat::Toml,
        _ => return Err(unsupported(format!("unsupported content type `{essence}`"))),
    };
    for param in parts {
        if let Some((name, charset)) = param.split_once('=') {
            let charset = charset.trim().trim_matches('"');
            if name.trim().eq_ignore_ascii_case("charset")
                && !charset.eq_ignore_ascii_case("utf-8")
                && !charset.eq_ignore_ascii_case("utf8")
            {
                return Err(unsupported(format!(
                    "unsupported charset `{charset}` (only utf-8)"
                )));
            }
        }
    }
    Ok(format)
}

fn accepted_types() -> String {
    match SPEC_CONTENT_TYPES {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The job spec in a request's body, in the format its `Content-Type` names.
fn spec_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<JobSpec, ApiError> {
    let format = spec_format(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::bad_request(
                format!("could not read the request body: {rejection}"),
                None,
            )
        }
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("body is not valid UTF-8", None))?;
    Ok(match format {
        SpecFormat::Json => JobSpec::from_json_str(text),
        SpecFormat::Toml => JobSpec::from_toml_str(text),
    }?)
}

async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = spec_body(&headers, body)?;
    let id = state.control.submit(spec).await?;
    let mut response = (StatusCode::CREATED, Json(JobCreated { id: id.clone() })).into_response();
    match HeaderValue::try_from(format!("/v1/jobs/{}", encode_path_segment(&id))) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(e) => tracing::warn!(%e, "job id does not fit a Location header"),
    }
    Ok(response)
}

async fn replace_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = path_param(id, "id")?;
    let spec = spec_body(&headers, body)?;
    Ok(Json(redact_status(state.control.replace(&id, spec).await?)))
}

async fn list_jobs(State(state): State<AppState>) -> Json<JobList> {
    let jobs = state.control.list().await;
    Json(JobList {
        jobs: jobs.into_iter().map(redact_status).collect(),
    })
}

async fn get_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = path_param(id, "id")?;
    Ok(Json(redact_status(state.control.get(&id).await?)))
}

async fn job_compression(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobCompression>, ApiError> {
    let id = path_param(id, "id")?;
    Ok(Json(state.control.compression(&id).await?))
}

async fn job_events(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<JobEvents>, ApiError> {
    let id = path_param(id, "id")?;
    let limit = events_limit_param(&uri)?;
    let mut answer = state.control.events(&id, limit).await?;
    for event in &mut answer.events {
        event.detail = event.detail.as_deref().map(redact_text);
    }
    Ok(Json(answer))
}

/// The `limit` query parameter of `GET /v1/jobs/{id}/events`: absent →
/// [`EVENTS_DEFAULT`], else `1..=`[`EVENTS_MAX`]; anything else, or another parameter → 400.
pub(crate) fn events_limit_param(uri: &Uri) -> Result<u32, ApiError> {
    let Some(value) = only_query_param(uri, "limit")? else {
        return Ok(EVENTS_DEFAULT);
    };
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=EVENTS_MAX).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(
                format!("limit must be a whole number from 1 to {EVENTS_MAX}, got `{value}`"),
                Some("limit"),
            )
        })
}

/// The value of the query parameter `name`, the only one a route takes: 400 for another
/// parameter, or `name` given twice.
fn only_query_param(uri: &Uri, name: &str) -> Result<Option<String>, ApiError> {
    let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}"), None))?;
    let mut found = None;
    for (given, value) in params {
        if given != name {
            return Err(ApiError::bad_request(
                format!("unknown query parameter `{given}`; the only one accepted is {name}"),
                Some(&given),
            ));
        }
        if found.replace(value).is_some() {
            return Err(ApiError::bad_request(
                format!("{name} is given more than once"),
                Some(name),
            ));
        }
    }
    Ok(found)
}

async fn pause_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = path_param(id, "id")?;
    Ok(Json(redact_status(state.control.pause(&id).await?)))
}

async fn resume_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = path_param(id, "id")?;
    Ok(Json(redact_status(state.control.resume(&id).await?)))
}

async fn resync_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JobStatus>, ApiError> {
    let id = path_param(id, "id")?;
    let body = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let request: ResyncRequest = json_body(&body)?;
    Ok(Json(redact_status(
        state.control.resync(&id, request).await?,
    )))
}

async fn sync_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SyncResult>, ApiError> {
    let id = path_param(id, "id")?;
    let body = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let request: SyncRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SyncRequest::default()
    } else {
        json_body(&body)?
    };
    Ok(Json(state.control.sync(&id, request).await?))
}

async fn delete_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    let id = path_param(id, "id")?;
    let drop_slot = drop_slot_param(&uri)?;
    state.control.delete(&id, drop_slot).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `drop_slot` query parameter of `DELETE /v1/jobs/{id}`: absent → false, `true` or
/// `false`; any other value, a repeated one, or another parameter → 400.
pub(crate) fn drop_slot_param(uri: &Uri) -> Result<bool, ApiError> {
    match only_query_param(uri, "drop_slot")?.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(value) => Err(ApiError::bad_request(
            format!("drop_slot must be `true` or `false`, got `{value}`"),
            Some("drop_slot"),
        )),
    }
}

// ---------------------------------------------------------------------------
// Tenants, health, metrics

async fn tenant_jobs(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantJobs>, ApiError> {
    let tenant = path_param(tenant, "tenant")?;
    let jobs = state.control.tenant(&tenant).await;
    Ok(Json(TenantJobs { tenant, jobs }))
}

/// Body of `GET /v1/retention-policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicies {
    /// Every policy.
    pub policies: Vec<RetentionPolicy>,
}

/// `system_time`, `valid_time`, `job` and `key` values of an as-of request.
pub(crate) type AsOfParams = (
    Option<TimePoint>,
    Option<TimePoint>,
    Option<String>,
    Vec<String>,
);

/// The query parameters of the as-of route: `system_time`, `valid_time`, `job`, each at
/// most once, and `key`, once per key column in key order; anything else is a 400
/// naming it.
pub(crate) fn as_of_params(uri: &Uri) -> Result<AsOfParams, ApiError> {
    let Query(params) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}"), None))?;
    let (mut system, mut valid, mut job, mut key) = (None, None, None, Vec::new());
    for (name, value) in params {
        let once = |seen: bool| {
            if seen {
                Err(ApiError::bad_request(
                    format!("{name} is given more than once"),
                    Some(&name),
                ))
            } else {
                Ok(())
            }
        };
        match name.as_str() {
            "system_time" | "valid_time" => {
                let point = TimePoint::parse(&value)
                    .map_err(|m| ApiError::bad_request(format!("{name}: {m}"), Some(&name)))?;
                let slot = if name == "system_time" {
                    &mut system
                } else {
                    &mut valid
                };
                once(slot.is_some())?;
                *slot = Some(point);
            }
            "job" => {
                once(job.is_some())?;
                job = Some(value);
            }
            "key" => key.push(value),
            _ => {
                return Err(ApiError::bad_request(
                    format!(
                    "unknown query parameter `{name}`; accepted: system_time, valid_time, job, key"
                ),
                    Some(&name),
                ))
            }
        }
    }
    Ok((system, valid, job, key))
}

async fn rows_as_of(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
) -> Result<Json<AsOfRows>, ApiError> {
    let Path((tenant, table)) = path.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let (system, valid, job, key) = as_of_params(&uri)?;
    let query = AsOfQuery {
        tenant,
        table,
        system,
        valid,
        job,
        key,
    };
    Ok(Json(state.control.rows_as_of(query).await?))
}

/// Parses a JSON body into `T`, naming the offending field on failure.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let field = (field != ".").then_some(field);
        ApiError::bad_request(
            format!("invalid request body: {}", e.inner()),
            field.as_deref(),
        )
    })
}

async fn start_export(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let request: ExportRequest = json_body(&body)?;
    let status = state.control.start_export(request).await?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

async fn export_status(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ExportStatus>, ApiError> {
    let id = path_param(id, "id")?;
    Ok(Json(state.control.export_status(&id).await?))
}

async fn retention_policies(
    State(state): State<AppState>,
) -> Result<Json<RetentionPolicies>, ApiError> {
    Ok(Json(RetentionPolicies {
        policies: state.control.retention_policies().await?,
    }))
}

async fn set_retention(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RetentionPolicy>, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let policy: RetentionPolicy = json_body(&body)?;
    Ok(Json(state.control.set_retention(policy).await?))
}

async fn record_access(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(e.body_text(), None))?;
    let events: AccessEvents = json_body(&body)?;
    events.validate().map_err(|e| ControlError::Invalid {
        field: e.field,
        message: e.reason,
    })?;
    let accepted = state.control.record_access(events).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.control.readiness().await;
    let status = if readiness.metadata_store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        state.control.metrics_text(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Fallbacks and middleware

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri, matched: Option<MatchedPath>) -> ApiError {
    let template = matched.as_ref().map(MatchedPath::as_str);
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, path)| Some(*path) == template)
        .map(|(method, _)| *method)
        .collect();
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
        allowed: allowed.join(", "),
    }
}

/// Logs method, path and status of every request at debug (never bodies or queries).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "http request"
    );
    response
}

// ---------------------------------------------------------------------------
// Helpers

fn path_param(param: Result<Path<String>, PathRejection>, name: &str) -> Result<String, ApiError> {
    param.map(|Path(value)| value).map_err(|e| {
        ApiError::bad_request(format!("invalid path parameter {name}: {e}"), Some(name))
    })
}

/// A job status as the API returns it: the manager redacts the spec already; this hides any
/// password that slipped through anyway, in the spec's strings and in `reason`.
pub(crate) fn redact_status(mut status: JobStatus) -> JobStatus {
    status.reason = status.reason.as_deref().map(redact_text);
    redact_json(&mut status.spec);
    status
}

fn redact_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => *s = redact_text(s),
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(map) => map.values_mut().for_each(redact_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
