//! Router tests against an in-memory `JobControl`: routes vs `schemas/openapi.yaml`,
//! malformed requests, the bearer token, redaction, health and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::auth::{constant_time_eq, is_protected, presented_token};
use super::routes::{drop_slot_param, encode_path_segment, spec_format, SpecFormat};
use super::*;
use crate::control::job_control::{
    ControlError, JobControl, JobId, JobState, JobStatus, Readiness, TenantJob, TenantStatus,
};
use crate::control::job_spec::{JobSpec, JobSpecError, TenantFilter};

// ---------------------------------------------------------------------------
// The fake job manager

const TOKEN: &str = "s3cr3t-t0ken";
const METRICS: &str = "# TYPE helios_jobs gauge\nhelios_jobs 1\n";
/// A job name the fake refuses with `Unavailable` (whose message quotes a password).
const UNAVAILABLE_JOB: &str = "store-down";

struct FakeJob {
    spec: JobSpec,
    state: JobState,
}

/// Stores submitted specs. Deliberately careless: it returns specs and error reasons with
/// passwords in clear, so the tests show the API layer hides them by itself.
#[derive(Default)]
struct FakeControl {
    jobs: Mutex<BTreeMap<JobId, FakeJob>>,
    store_down: AtomicBool,
    deleted: Mutex<Vec<(JobId, bool)>>,
}

impl FakeControl {
    fn insert(&self, spec: JobSpec, state: JobState) {
        let mut jobs = self.jobs.lock().unwrap();
        jobs.insert(spec.name.clone(), FakeJob { spec, state });
    }

    fn status(job: &FakeJob) -> JobStatus {
        let spec = &job.spec;
        let tenants = match &spec.tenants.include {
            TenantFilter::All => vec!["all".to_owned()],
            TenantFilter::Only(ids) => ids.iter().cloned().collect(),
        };
        JobStatus {
            id: spec.name.clone(),
            state: job.state,
            reason: Some(format!("could not connect to {}", spec.source.dsn.expose())),
            version: 1,
            tenant_status: tenants
                .iter()
                .filter(|t| *t != "all")
                .map(|t| TenantStatus {
                    tenant: t.clone(),
                    durable_lsn: Some("0/16B3748".to_owned()),
                    rows: 7,
                    lag_seconds: 0.25,
                })
                .collect(),
            tenants,
            tables: spec.tables.iter().map(|t| t.name.clone()).collect(),
            confirmed_lsn: "0/16B3748".to_owned(),
            lag_bytes: 0,
            lag_seconds: 0.5,
            rows_per_second: 12.5,
            rows_total: 14,
            errors: 0,
            spec: serde_json::to_value(spec).unwrap(),
        }
    }

    fn with_job<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut FakeJob) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs
            .get_mut(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        f(job)
    }
}

#[async_trait::async_trait]
impl JobControl for FakeControl {
    async fn submit(&self, spec: JobSpec) -> Result<JobId, ControlError> {
        if spec.name == UNAVAILABLE_JOB {
            return Err(ControlError::Unavailable(format!(
                "metadata store unreachable; source was {}",
                spec.source.dsn.expose()
            )));
        }
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.contains_key(&spec.name) {
            return Err(ControlError::AlreadyExists(spec.name));
        }
        let id = spec.name.clone();
        jobs.insert(
            id.clone(),
            FakeJob {
                spec,
                state: JobState::Streaming,
            },
        );
        Ok(id)
    }

    async fn list(&self) -> Vec<JobStatus> {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .map(Self::status)
            .collect()
    }

    async fn get(&self, id: &str) -> Result<JobStatus, ControlError> {
        self.with_job(id, |job| Ok(Self::status(job)))
    }

    async fn pause(&self, id: &str) -> Result<JobStatus, ControlError> {
        self.with_job(id, |job| {
            if job.state == JobState::Paused {
                return Err(ControlError::Conflict(format!(
                    "job `{id}` is paused already"
                )));
            }
            job.state = JobState::Paused;
            Ok(Self::status(job))
        })
    }

    async fn resume(&self, id: &str) -> Result<JobStatus, ControlError> {
        self.with_job(id, |job| {
            if job.state != JobState::Paused {
                return Err(ControlError::Conflict(format!("job `{id}` is not paused")));
            }
            job.state = JobState::Streaming;
            Ok(Self::status(job))
        })
    }

    async fn delete(&self, id: &str, drop_slot: bool) -> Result<(), ControlError> {
        self.jobs
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| ControlError::NotFound(id.to_owned()))?;
        self.deleted
            .lock()
            .unwrap()
            .push((id.to_owned(), drop_slot));
        Ok(())
    }

    async fn tenant(&self, tenant: &str) -> Vec<TenantJob> {
        self.jobs
            .lock()
            .unwrap()
            .values()
            .filter(|job| job.spec.includes_tenant(tenant))
            .map(|job| TenantJob {
                job: job.spec.name.clone(),
                state: job.state,
                lag_seconds: 0.5,
                lag_bytes: 0,
                durable_lsn: Some("0/16B3748".to_owned()),
            })
            .collect()
    }

    async fn readiness(&self) -> Readiness {
        let jobs = self.jobs.lock().unwrap();
        let failed = jobs
            .values()
            .filter(|j| j.state == JobState::Failed)
            .count();
        Readiness {
            metadata_store: !self.store_down.load(Ordering::SeqCst),
            jobs_running: jobs.len() - failed,
            jobs_failed: failed,
        }
    }

    fn metrics_text(&self) -> String {
        METRICS.to_owned()
    }
}

// ---------------------------------------------------------------------------
// Helpers

const VALID: &str = crate::control::job_spec::MINIMAL_SPEC;

const TOML: &str = "application/toml";
const JSON: &str = "application/json";

/// `VALID` with `from` replaced by `to` (which must occur exactly once).
fn valid_with(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "{from}");
    VALID.replace(from, to)
}

/// A valid TOML spec named `name`.
fn valid_named(name: &str) -> String {
    valid_with("name = \"t\"", &format!("name = \"{name}\""))
}

/// `VALID` as a JSON value, for JSON variants.
fn valid_json() -> Value {
    serde_json::to_value(JobSpec::from_toml_str(VALID).unwrap()).unwrap()
}

fn spec_named(name: &str) -> JobSpec {
    JobSpec::from_toml_str(&valid_named(name)).unwrap()
}

fn app(token: Option<&str>) -> (Arc<FakeControl>, Router) {
    let control = Arc::new(FakeControl::default());
    let router = router(control.clone(), token.map(str::to_owned));
    (control, router)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` of a JSON error body (which must have no other keys than `field`).
    fn error(&self) -> ErrorBody {
        let body: ErrorBody = serde_json::from_value(self.json()).unwrap_or_else(|e| {
            panic!("{}: not an error body ({e}): {}", self.status, self.text())
        });
        assert_eq!(
            self.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        body
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn request(method: &str, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let builder = Request::builder().method(method).uri(uri);
    match token {
        Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

async fn call(router: &Router, method: &str, uri: &str, token: Option<&str>) -> Answer {
    send(
        router,
        request(method, uri, token).body(Body::empty()).unwrap(),
    )
    .await
}

async fn submit(
    router: &Router,
    content_type: Option<&str>,
    body: impl Into<Body>,
    token: Option<&str>,
) -> Answer {
    let mut builder = request("POST", "/v1/jobs", token);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    send(router, builder.body(body.into()).unwrap()).await
}

// ---------------------------------------------------------------------------
// The router against schemas/openapi.yaml

const OPENAPI: &str = include_str!("../../schemas/openapi.yaml");
const JOB_SCHEMA: &str = include_str!("../../schemas/job.schema.json");
const SCHEMA_BASE: &str = "https://heliosdb.dev/schemas/";
const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn openapi() -> Value {
    serde_yaml::from_str(OPENAPI).expect("openapi.yaml parses")
}

/// (METHOD, path) of every operation in the document.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for (key, _) in item.as_object().expect("path item") {
            if HTTP_METHODS.contains(&key.as_str()) {
                routes.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> &'d Value {
    let op = &doc["paths"][path][method.to_lowercase()];
    assert!(op.is_object(), "{method} {path} not documented");
    op
}

/// Follows a local `$ref` (`#/components/...`) once.
fn deref<'d>(doc: &'d Value, value: &'d Value) -> &'d Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) => doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

/// Checks that `answer` is a documented response of the operation, with a body that
/// matches the documented media type and schema.
fn assert_documented(doc: &Value, method: &str, path: &str, answer: &Answer) {
    let op = operation(doc, method, path);
    let code = answer.status.as_u16().to_string();
    let response = op["responses"].get(&code).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered undocumented {code}: {}",
            answer.text()
        )
    });
    let response = deref(doc, response);
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        assert!(
            answer.body.is_empty(),
            "{method} {path} {code}: body not documented"
        );
        return;
    };
    let content_type = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{method} {path} {code}: no Content-Type"));
    let media = content.get(content_type).unwrap_or_else(|| {
        panic!("{method} {path} {code}: Content-Type {content_type} not documented")
    });
    if content_type == "application/json" {
        let validator = validator_for(doc, &media["schema"]);
        let body = answer.json();
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {code}: body does not match its schema: {errors:?}\n{body:#}"
        );
    }
}

/// A validator for a schema inside the OpenAPI document: `#/components/...` refs resolve
/// against the document, `job.schema.json` against schemas/job.schema.json.
fn validator_for(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let wrapper = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}openapi.yaml"),
        "components": doc["components"],
        "allOf": [schema],
    });
    let job_schema: Value = serde_json::from_str(JOB_SCHEMA).unwrap();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_resource(
            format!("{SCHEMA_BASE}job.schema.json"),
            jsonschema::Resource::from_contents(job_schema).unwrap(),
        )
        .build(&wrapper)
        .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

#[test]
fn documented_routes_are_exactly_the_registered_ones() {
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let registered: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(registered.len(), ROUTES.len(), "ROUTES has duplicates");
    assert_eq!(documented_routes(&doc), registered);
    // Open operations say so (`security: []`); protected ones inherit the bearer scheme.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    for (method, path) in ROUTES {
        let open = operation(&doc, method, path).get("security") == Some(&json!([]));
        assert_eq!(open, !is_protected(path), "{method} {path}: security");
    }
}

#[tokio::test]
async fn every_documented_route_is_routed_and_answers_as_documented() {
    let doc = openapi();
    for (method, path) in documented_routes(&doc) {
        let (control, router) = app(Some(TOKEN));
        control.insert(spec_named("known"), JobState::Streaming);
        if path.ends_with("/resume") {
            control.insert(spec_named("known"), JobState::Paused);
        }
        let uri = path.replace("{id}", "known").replace("{tenant}", "3");
        let answer = if (method.as_str(), path.as_str()) == ("POST", "/v1/jobs") {
            submit(&router, Some(TOML), valid_named("fresh"), Some(TOKEN)).await
        } else {
            call(&router, &method, &uri, Some(TOKEN)).await
        };
        assert!(
            answer.status.is_success(),
            "{method} {uri}: {} {}",
            answer.status,
            answer.text()
        );
        assert_documented(&doc, &method, &path, &answer);
    }
}

#[tokio::test]
async fn error_answers_match_the_document() {
    let doc = openapi();
    let (control, router) = app(Some(TOKEN));
    control.insert(spec_named("known"), JobState::Streaming);
    let cases: Vec<(&str, &str, Answer)> = vec![
        (
            "GET",
            "/v1/jobs/{id}",
            call(&router, "GET", "/v1/jobs/nope", Some(TOKEN)).await,
        ),
        (
            "GET",
            "/v1/jobs",
            call(&router, "GET", "/v1/jobs", None).await,
        ),
        (
            "POST",
            "/v1/jobs/{id}/resume",
            call(&router, "POST", "/v1/jobs/known/resume", Some(TOKEN)).await,
        ),
        (
            "DELETE",
            "/v1/jobs/{id}",
            call(
                &router,
                "DELETE",
                "/v1/jobs/known?drop_slot=maybe",
                Some(TOKEN),
            )
            .await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(&router, Some(TOML), valid_named("known"), Some(TOKEN)).await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(
                &router,
                Some(TOML),
                valid_named(UNAVAILABLE_JOB),
                Some(TOKEN),
            )
            .await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(&router, Some("text/xml"), "x", Some(TOKEN)).await,
        ),
        (
            "POST",
            "/v1/jobs",
            submit(
                &router,
                Some(TOML),
                valid_with("slot_t", "Slot"),
                Some(TOKEN),
            )
            .await,
        ),
    ];
    let statuses: Vec<u16> = cases.iter().map(|(_, _, a)| a.status.as_u16()).collect();
    assert_eq!(statuses, [404, 401, 409, 400, 409, 503, 415, 422]);
    for (method, path, answer) in &cases {
        assert_documented(&doc, method, path, answer);
    }
    control.store_down.store(true, Ordering::SeqCst);
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_documented(&doc, "GET", "/readyz", &answer);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let (_, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/nope", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.error().error.contains("/nope"), "{}", answer.text());

    let answer = call(&router, "GET", "/v1/nope", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.error().error.contains("GET /v1/nope"));
    // Without the token, unknown /v1 paths are refused like known ones.
    let answer = call(&router, "GET", "/v1/nope", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

    let answer = call(&router, "PUT", "/v1/jobs", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let error = answer.error().error;
    assert!(
        error.contains("PUT") && error.contains("GET") && error.contains("POST"),
        "{error}"
    );
    let allow = answer.headers.get(header::ALLOW).expect("Allow header");
    let allow: BTreeSet<&str> = allow.to_str().unwrap().split(',').map(str::trim).collect();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow:?}");

    let answer = call(&router, "PATCH", "/v1/jobs/known", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.error().error.contains("DELETE"));
    // A path segment that does not decode to UTF-8 is a bad request naming the parameter.
    let answer = call(&router, "GET", "/v1/jobs/%FF", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error().field.as_deref(), Some("id"));
    assert_documented(&openapi(), "GET", "/v1/jobs/{id}", &answer);
    let answer = call(&router, "POST", "/healthz", None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(answer.error().error.contains("POST"));
}

// ---------------------------------------------------------------------------
// Malformed bodies

/// One malformed submission and what its answer must say.
struct Bad {
    what: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
    /// Must occur in `error`.
    says: &'static str,
}

fn bad(
    what: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<&'static str>,
    says: &'static str,
) -> Bad {
    Bad {
        what,
        content_type,
        body: body.into(),
        status,
        field,
        says,
    }
}

fn json_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value = valid_json();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn malformed_bodies() -> Vec<Bad> {
    let source_section = "[source]\ndsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\npublication = \"pub_t\"\nslot = \"slot_t\"\n";
    let mut huge = valid_named("huge").into_bytes();
    huge.extend(std::iter::repeat_n(b'#', MAX_BODY_BYTES));
    huge.push(b'\n');
    vec![
        // wrong types
        bad(
            "batch_max_rows string",
            Some(TOML),
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = \"x\"",
            ),
            400,
            Some("sinks[0].batch_max_rows"),
            "invalid type",
        ),
        bad(
            "include integer",
            Some(TOML),
            valid_with("include = [3, 7]", "include = 5"),
            400,
            Some("tenants.include"),
            "invalid type",
        ),
        bad(
            "name integer",
            Some(TOML),
            valid_with("name = \"t\"", "name = 3"),
            400,
            Some("name"),
            "invalid type",
        ),
        bad(
            "name null (JSON)",
            Some(JSON),
            json_with(|v| v["name"] = Value::Null),
            400,
            Some("name"),
            "invalid type",
        ),
        bad(
            "include element bool (JSON)",
            Some(JSON),
            json_with(|v| v["tenants"]["include"] = json!([3, true])),
            400,
            Some("tenants.include[1]"),
            "tenant id",
        ),
        bad(
            "tables a string (JSON)",
            Some(JSON),
            json_with(|v| v["tables"] = json!("x")),
            400,
            Some("tables"),
            "invalid type",
        ),
        // missing fields
        bad(
            "missing name",
            Some(TOML),
            valid_with("name = \"t\"\n", ""),
            400,
            Some("name"),
            "missing field `name`",
        ),
        bad(
            "missing source",
            Some(TOML),
            valid_with(source_section, ""),
            400,
            Some("source"),
            "missing field `source`",
        ),
        bad(
            "missing source.dsn",
            Some(TOML),
            valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\n",
                "",
            ),
            400,
            Some("source.dsn"),
            "missing field `dsn`",
        ),
        bad(
            "missing slot",
            Some(TOML),
            valid_with("slot = \"slot_t\"\n", ""),
            400,
            Some("source.slot"),
            "missing field `slot`",
        ),
        bad(
            "missing tables",
            Some(TOML),
            valid_with("[[tables]]\nname = \"public.orders\"\n", ""),
            400,
            Some("tables"),
            "missing field `tables`",
        ),
        bad(
            "missing sinks (JSON)",
            Some(JSON),
            json_with(|v| {
                v.as_object_mut().unwrap().remove("sinks");
            }),
            400,
            Some("sinks"),
            "missing field `sinks`",
        ),
        bad(
            "missing sinks[0].dsn",
            Some(TOML),
            valid_with(
                "dsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
                "",
            ),
            400,
            Some("sinks[0].dsn"),
            "missing field `dsn`",
        ),
        // unknown values and keys
        bad(
            "unknown sink kind",
            Some(TOML),
            valid_with("kind = \"postgres\"", "kind = \"kafka\""),
            400,
            Some("sinks[0].kind"),
            "unknown sink kind `kafka`",
        ),
        bad(
            "unknown top-level key",
            Some(TOML),
            valid_with("name = \"t\"", "name = \"t\"\nverbose = true"),
            400,
            Some("verbose"),
            "unknown field `verbose`",
        ),
        bad(
            "unknown nested key",
            Some(TOML),
            valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\npasswd = \"x\""),
            400,
            Some("source.passwd"),
            "unknown field `passwd`",
        ),
        bad(
            "unknown key in a sink (JSON)",
            Some(JSON),
            json_with(|v| v["sinks"][0]["batch"] = json!(3)),
            400,
            Some("sinks[0].batch"),
            "unknown field `batch`",
        ),
        // values that parse but are not acceptable
        bad(
            "empty include",
            Some(TOML),
            valid_with("include = [3, 7]", "include = []"),
            422,
            Some("tenants.include"),
            "at least one tenant",
        ),
        bad(
            "bad slot name",
            Some(TOML),
            valid_with("slot = \"slot_t\"", "slot = \"Bad-Slot\""),
            422,
            Some("source.slot"),
            "not a valid replication slot name",
        ),
        bad(
            "duplicate tables",
            Some(TOML),
            valid_with(
                "[[tables]]\nname = \"public.orders\"",
                "[[tables]]\nname = \"public.orders\"\n[[tables]]\nname = \"public.orders\"",
            ),
            422,
            Some("tables[1].name"),
            "duplicate table",
        ),
        bad(
            "empty tables (JSON)",
            Some(JSON),
            json_with(|v| v["tables"] = json!([])),
            422,
            Some("tables"),
            "at least one table",
        ),
        bad(
            "batch_max_rows 0",
            Some(TOML),
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = 0",
            ),
            422,
            Some("sinks[0].batch_max_rows"),
            "between 1 and",
        ),
        bad(
            "sink dsn not a dsn",
            Some(TOML),
            valid_with(
                "host=127.0.0.1 port=5433 user=postgres dbname=replica",
                "not a dsn",
            ),
            422,
            Some("sinks[0].dsn"),
            "missing `=`",
        ),
        bad(
            "bad job name",
            Some(TOML),
            valid_with("name = \"t\"", "name = \"Big Job\""),
            422,
            Some("name"),
            "not a valid job name",
        ),
        // the body as a whole
        bad(
            "huge body",
            Some(TOML),
            huge,
            413,
            None,
            "larger than 1048576 bytes",
        ),
        bad(
            "invalid UTF-8",
            Some(TOML),
            b"name = \"\xff\xfe\"\n".to_vec(),
            400,
            None,
            "body is not valid UTF-8",
        ),
        bad(
            "wrong content type",
            Some("application/xml"),
            VALID,
            415,
            None,
            "application/json, application/toml or text/toml",
        ),
        bad(
            "form content type (curl's default)",
            Some("application/x-www-form-urlencoded"),
            VALID,
            415,
            None,
            "unsupported content type `application/x-www-form-urlencoded`",
        ),
        bad(
            "no content type",
            None,
            VALID,
            415,
            None,
            "missing Content-Type",
        ),
        bad(
            "non-UTF-8 charset",
            Some("application/json; charset=latin1"),
            "{}",
            415,
            None,
            "unsupported charset `latin1`",
        ),
        bad(
            "JSON syntax error",
            Some(JSON),
            r#"{"name" "t"}"#,
            400,
            None,
            "expected `:`",
        ),
        bad(
            "JSON cut short",
            Some(JSON),
            r#"{"name": "t", "source": "#,
            400,
            Some("source"),
            "EOF while parsing",
        ),
        bad(
            "JSON trailing garbage",
            Some(JSON),
            {
                let mut b = json_with(|_| {});
                b.extend_from_slice(b" x");
                b
            },
            400,
            None,
            "trailing characters",
        ),
        bad(
            "JSON document not an object",
            Some(JSON),
            "42",
            400,
            None,
            "invalid type: integer `42`, expected struct JobSpec",
        ),
        bad(
            "TOML syntax error",
            Some(TOML),
            "name = \n",
            400,
            None,
            "line 1",
        ),
        bad(
            "empty JSON body",
            Some(JSON),
            "",
            400,
            None,
            "EOF while parsing",
        ),
        bad(
            "empty TOML body",
            Some(TOML),
            "",
            400,
            Some("name"),
            "missing field `name`",
        ),
    ]
}

#[tokio::test]
async fn malformed_bodies_are_refused_naming_the_problem() {
    let (control, router) = app(Some(TOKEN));
    let cases = malformed_bodies();
    assert!(cases.len() >= 20);
    for case in cases {
        let answer = submit(&router, case.content_type, case.body, Some(TOKEN)).await;
        assert_eq!(
            answer.status.as_u16(),
            case.status,
            "{}: {}",
            case.what,
            answer.text()
        );
        let error = answer.error();
        assert!(
            error.error.contains(case.says),
            "{}: error {:?} does not say {:?}",
            case.what,
            error.error,
            case.says
        );
        assert_eq!(error.field.as_deref(), case.field, "{}: field", case.what);
        if let Some(field) = case.field {
            assert!(error.error.contains(field), "{}: {error:?}", case.what);
        }
    }
    assert!(control.jobs.lock().unwrap().is_empty());
    // The server keeps serving.
    let answer = submit(&router, Some(TOML), VALID, Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    let answer = submit(
        &router,
        Some(JSON),
        json_with(|v| v["name"] = json!("t-json")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(control.jobs.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn accepted_content_types() {
    let (_, router) = app(None);
    for (i, content_type) in [
        "application/toml",
        "text/toml",
        "TEXT/TOML; charset=UTF-8",
        "application/toml;charset=\"utf-8\"",
    ]
    .into_iter()
    .enumerate()
    {
        let answer = submit(
            &router,
            Some(content_type),
            valid_named(&format!("t{i}")),
            None,
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            answer.text()
        );
    }
    let answer = submit(
        &router,
        Some("application/json; charset=utf-8"),
        json_with(|v| v["name"] = json!("j")),
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    // A TOML document sent as JSON is a JSON syntax error, not guessed at.
    let answer = submit(&router, Some(JSON), valid_named("x"), None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    for content_type in ["text/plain", "application/yaml", "json", ""] {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        assert!(spec_format(&headers).is_err(), "{content_type}");
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    assert_eq!(spec_format(&headers).unwrap(), SpecFormat::Json);
}

// ---------------------------------------------------------------------------
// Jobs

#[tokio::test]
async fn submit_answers_201_with_location_and_409_for_a_duplicate() {
    let (control, router) = app(None);
    let answer = submit(&router, Some(TOML), valid_named("orders-eu"), None).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.json(), json!({"id": "orders-eu"}));
    assert_eq!(
        answer.headers.get(header::LOCATION).unwrap(),
        "/v1/jobs/orders-eu"
    );
    assert_eq!(
        control.jobs.lock().unwrap()["orders-eu"].spec,
        spec_named("orders-eu")
    );

    let answer = submit(&router, Some(TOML), valid_named("orders-eu"), None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let error = answer.error();
    assert!(
        error.error.contains("orders-eu") && error.error.contains("exists"),
        "{error:?}"
    );
    assert_eq!(error.field, None);
}

#[tokio::test]
async fn job_lifecycle() {
    let (control, router) = app(None);
    assert_eq!(
        submit(&router, Some(TOML), valid_named("life"), None)
            .await
            .status,
        StatusCode::CREATED
    );
    let answer = call(&router, "GET", "/v1/jobs/life", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let status: JobStatus = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(status.id, "life");
    assert_eq!(status.state, JobState::Streaming);
    assert_eq!(status.tables, ["public.orders"]);

    let answer = call(&router, "GET", "/v1/jobs", None).await;
    let list: JobList = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(list.jobs.len(), 1);
    assert_eq!(list.jobs[0].id, "life");

    let answer = call(&router, "POST", "/v1/jobs/life/pause", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["state"], "paused");
    let answer = call(&router, "POST", "/v1/jobs/life/pause", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(answer.error().error.contains("paused already"));
    let answer = call(&router, "POST", "/v1/jobs/life/resume", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["state"], "streaming");
    let answer = call(&router, "POST", "/v1/jobs/life/resume", None).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);

    let answer = call(&router, "DELETE", "/v1/jobs/life", None).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.body.is_empty());
    for (method, uri) in [
        ("GET", "/v1/jobs/life"),
        ("DELETE", "/v1/jobs/life"),
        ("POST", "/v1/jobs/life/pause"),
        ("POST", "/v1/jobs/life/resume"),
    ] {
        let answer = call(&router, method, uri, None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {uri}");
        assert_eq!(answer.error().error, "no job `life`");
    }
    assert_eq!(
        *control.deleted.lock().unwrap(),
        [("life".to_owned(), false)]
    );
    let answer = call(&router, "GET", "/v1/jobs", None).await;
    assert_eq!(answer.json(), json!({"jobs": []}));
}

#[tokio::test]
async fn delete_reads_drop_slot() {
    let (control, router) = app(None);
    for name in ["a", "b", "c"] {
        control.insert(spec_named(name), JobState::Streaming);
    }
    for (uri, status, field) in [
        ("/v1/jobs/a?drop_slot=yes", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot=1", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot=TRUE", 400, Some("drop_slot")),
        ("/v1/jobs/a?drop_slot", 400, Some("drop_slot")),
        (
            "/v1/jobs/a?drop_slot=true&drop_slot=false",
            400,
            Some("drop_slot"),
        ),
        ("/v1/jobs/a?dropslot=true", 400, Some("dropslot")),
        ("/v1/jobs/a?drop_slot=true", 204, None),
        ("/v1/jobs/b?drop_slot=false", 204, None),
        ("/v1/jobs/c", 204, None),
        ("/v1/jobs/c?drop_slot=true", 404, None),
    ] {
        let answer = call(&router, "DELETE", uri, None).await;
        assert_eq!(answer.status.as_u16(), status, "{uri}: {}", answer.text());
        if status >= 400 {
            let error = answer.error();
            assert_eq!(error.field.as_deref(), field, "{uri}");
            if let Some(field) = field {
                assert!(error.error.contains(field), "{uri}: {error:?}");
            }
        }
    }
    assert_eq!(
        *control.deleted.lock().unwrap(),
        [
            ("a".to_owned(), true),
            ("b".to_owned(), false),
            ("c".to_owned(), false)
        ]
    );
    let uri: axum::http::Uri = "/v1/jobs/x?drop_slot=%74rue".parse().unwrap();
    assert!(drop_slot_param(&uri).unwrap());
}

#[tokio::test]
async fn tenant_lists_the_jobs_carrying_it() {
    let (control, router) = app(None);
    control.insert(spec_named("three-seven"), JobState::Streaming);
    let mut all = spec_named("everyone");
    all.tenants.include = TenantFilter::All;
    control.insert(all, JobState::Paused);

    let answer = call(&router, "GET", "/v1/tenants/3", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body: TenantJobs = serde_json::from_value(answer.json()).unwrap();
    assert_eq!(body.tenant, "3");
    let jobs: Vec<&str> = body.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(jobs, ["everyone", "three-seven"]);

    control.jobs.lock().unwrap().remove("everyone");
    let answer = call(&router, "GET", "/v1/tenants/acme%20corp", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"tenant": "acme corp", "jobs": []}));
}

#[tokio::test]
async fn control_errors_map_to_statuses() {
    let cases = [
        (ControlError::NotFound("x".into()), 404),
        (ControlError::AlreadyExists("x".into()), 409),
        (ControlError::Conflict("x".into()), 409),
        (ControlError::Unavailable("x".into()), 503),
        (
            ControlError::InvalidSpec(JobSpecError::Parse {
                path: "sinks[0].kind".into(),
                message: "m".into(),
            }),
            400,
        ),
        (
            ControlError::InvalidSpec(JobSpecError::Invalid {
                field: "source.slot".into(),
                reason: "r".into(),
            }),
            422,
        ),
    ];
    for (error, status) in cases {
        let error = ApiError::from(error);
        assert_eq!(error.status().as_u16(), status, "{error}");
    }
    let error = ApiError::from(ControlError::InvalidSpec(JobSpecError::Invalid {
        field: "source.slot".into(),
        reason: "bad".into(),
    }));
    assert_eq!(
        error.body(),
        ErrorBody {
            error: "job spec: source.slot: bad".into(),
            field: Some("source.slot".into())
        }
    );
    let error = ApiError::from(JobSpecError::Parse {
        path: crate::control::job_spec::DOCUMENT_PATH.into(),
        message: "expected `=` (line 1, column 3)".into(),
    });
    assert_eq!(error.field(), None);
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);

    // Through the router: the manager's refusal of a submit.
    let (_, router) = app(None);
    let answer = submit(&router, Some(TOML), valid_named(UNAVAILABLE_JOB), None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.error().error.contains("metadata store unreachable"));
}

// ---------------------------------------------------------------------------
// Bearer token

fn protected_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| is_protected(path))
}

async fn call_route(router: &Router, method: &str, path: &str, auth: Option<&str>) -> Answer {
    let uri = path.replace("{id}", "known").replace("{tenant}", "3");
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(auth) = auth {
        builder = builder.header(header::AUTHORIZATION, auth);
    }
    let body = if (method, path) == ("POST", "/v1/jobs") {
        builder = builder.header(header::CONTENT_TYPE, TOML);
        Body::from(valid_named("fresh"))
    } else {
        Body::empty()
    };
    send(router, builder.body(body).unwrap()).await
}

#[tokio::test]
async fn every_v1_route_requires_the_token() {
    assert_eq!(protected_routes().count(), 7);
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some("Bearer ".to_owned()),
        Some("Bearer".to_owned()),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some(format!("Token {TOKEN}")),
    ];
    for (method, path) in protected_routes() {
        let (control, router) = app(Some(TOKEN));
        let initial = if path.ends_with("/resume") {
            JobState::Paused
        } else {
            JobState::Streaming
        };
        control.insert(spec_named("known"), initial);
        for auth in &wrong {
            let answer = call_route(&router, method, path, auth.as_deref()).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {auth:?}"
            );
            assert_eq!(
                answer.headers.get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer"
            );
            assert_eq!(
                answer.json(),
                json!({"error": "missing or invalid bearer token"})
            );
        }
        // Nothing reached the manager.
        assert_eq!(control.jobs.lock().unwrap().len(), 1);
        assert_eq!(control.jobs.lock().unwrap()["known"].state, initial);
        for auth in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN}")] {
            let answer = call_route(&router, method, path, Some(&auth)).await;
            assert!(
                answer.status.is_success(),
                "{method} {path} {auth}: {} {}",
                answer.status,
                answer.text()
            );
            // Undo the effect so the next accepted request succeeds too.
            control.jobs.lock().unwrap().remove("fresh");
            control.insert(spec_named("known"), initial);
        }
    }
}

#[tokio::test]
async fn open_routes_need_no_token() {
    let (_, router) = app(Some(TOKEN));
    for (method, path) in ROUTES.iter().filter(|(_, path)| !is_protected(path)) {
        for auth in [None, Some("Bearer wrong")] {
            let answer = call_route(&router, method, path, auth).await;
            assert_eq!(answer.status, StatusCode::OK, "{method} {path} {auth:?}");
        }
    }
}

#[tokio::test]
async fn without_a_configured_token_v1_is_open() {
    let (_, router) = app(None);
    assert_eq!(
        call(&router, "GET", "/v1/jobs", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&router, "GET", "/v1/jobs", Some("anything"))
            .await
            .status,
        StatusCode::OK
    );
    // An empty configured token lets nothing through.
    let (_, router) = app(Some(""));
    let answer = send(
        &router,
        Request::get("/v1/jobs")
            .header(header::AUTHORIZATION, "Bearer ")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}

#[test]
fn token_parsing_and_comparison() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(constant_time_eq(b"", b""));
    let token = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        presented_token(&headers).map(|t| String::from_utf8(t.to_vec()).unwrap())
    };
    assert_eq!(token("Bearer abc").as_deref(), Some("abc"));
    assert_eq!(token("BEARER abc").as_deref(), Some("abc"));
    assert_eq!(token("Bearer  abc ").as_deref(), Some("abc"));
    assert_eq!(token("Basic abc"), None);
    assert_eq!(token("Bearerabc"), None);
    let mut headers = HeaderMap::new();
    headers.append(header::AUTHORIZATION, "Bearer a".parse().unwrap());
    headers.append(header::AUTHORIZATION, "Bearer a".parse().unwrap());
    assert_eq!(presented_token(&headers), None);
    assert!(is_protected("/v1/jobs") && is_protected("/v1") && is_protected("/v1/"));
    assert!(!is_protected("/v10") && !is_protected("/healthz") && !is_protected("/metrics"));
}

// ---------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn passwords_never_appear_in_responses() {
    let (control, router) = app(Some(TOKEN));
    let spec = valid_with(
        "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
        "dsn = \"host=127.0.0.1 user=postgres password=hunter2 dbname=app\"",
    )
    .replace(
        "host=127.0.0.1 port=5433 user=postgres dbname=replica",
        "postgresql://postgres:hunter2@127.0.0.1:5433/replica?password=hunter2",
    );
    let mut answers = vec![submit(&router, Some(TOML), spec.clone(), Some(TOKEN)).await];
    assert_eq!(answers[0].status, StatusCode::CREATED);
    // The fake keeps the password (it is the manager's to use).
    assert!(control.jobs.lock().unwrap()["t"]
        .spec
        .source
        .dsn
        .expose()
        .contains("hunter2"));

    for (method, uri) in [
        ("GET", "/v1/jobs/t"),
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs/t/pause"),
        ("POST", "/v1/jobs/t/resume"),
        ("GET", "/v1/tenants/3"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
    ] {
        let answer = call(&router, method, uri, Some(TOKEN)).await;
        assert_eq!(answer.status, StatusCode::OK, "{method} {uri}");
        answers.push(answer);
    }
    let shown = answers[1].json();
    assert_eq!(
        shown["spec"]["source"]["dsn"],
        "host=127.0.0.1 user=postgres password=*** dbname=app"
    );
    assert_eq!(
        shown["spec"]["sinks"][0]["dsn"],
        "postgresql://postgres:***@127.0.0.1:5433/replica?password=***"
    );
    assert_eq!(
        shown["reason"],
        "could not connect to host=127.0.0.1 user=postgres password=*** dbname=app"
    );

    // Errors about the same or slightly broken documents.
    answers.push(submit(&router, Some(TOML), spec.clone(), Some(TOKEN)).await);
    let leaky_bodies: Vec<(&str, String)> = vec![
        (
            TOML,
            valid_with(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = \"host=h password=hunter2\"",
            ),
        ),
        (
            TOML,
            valid_with("name = \"t\"", "name = \"postgresql://u:hunter2@h/db\""),
        ),
        (
            TOML,
            valid_with("name = \"t\"", "name = \"x password='hunter2 y'\""),
        ),
        (
            TOML,
            valid_with("slot = \"slot_t\"", "slot = \"password=hunter2\""),
        ),
        (
            TOML,
            valid_with("include = [3, 7]", "include = \"postgres://u:hunter2@h\""),
        ),
        (
            TOML,
            valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
                "dsn = \"host=h password='hunter2\"",
            ),
        ),
        (
            TOML,
            valid_with("kind = \"postgres\"", "kind = \"password=hunter2\""),
        ),
        (TOML, format!("{spec}\nsecret = \"password=hunter2\"")),
        (TOML, format!("dsn = \"password=hunter2\n{spec}")),
        (
            JSON,
            String::from_utf8(json_with(|v| {
                v["sinks"][0]["batch_max_rows"] = json!("host=h password=hunter2")
            }))
            .unwrap(),
        ),
        (
            JSON,
            String::from_utf8(json_with(|v| {
                v["tenants"]["include"] = json!(["a", "postgresql://x:hunter2@h", "a"])
            }))
            .unwrap(),
        ),
        (
            JSON,
            r#"{"name": "postgresql://u:hunter2@h/db"}"#.to_owned(),
        ),
    ];
    for (content_type, body) in leaky_bodies {
        let answer = submit(&router, Some(content_type), body.clone(), Some(TOKEN)).await;
        assert!(answer.status.is_client_error(), "{body}: {}", answer.status);
        answer.error();
        answers.push(answer);
    }
    answers.push(
        submit(
            &router,
            Some(TOML),
            valid_named(UNAVAILABLE_JOB).replace("dbname=app", "password=hunter2"),
            Some(TOKEN),
        )
        .await,
    );
    assert_eq!(
        answers.last().unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    answers.push(call(&router, "GET", "/v1/jobs/password=hunter2", Some(TOKEN)).await);
    answers.push(call(&router, "GET", "/password=hunter2", Some(TOKEN)).await);

    for answer in &answers {
        let text = answer.text();
        assert!(!text.contains("hunter2"), "{}: {text}", answer.status);
        for value in answer.headers.values() {
            assert!(!value.to_str().unwrap_or_default().contains("hunter2"));
        }
    }
}

#[test]
fn redact_text_hides_passwords_anywhere() {
    let cases = [
        ("no secret here", "no secret here"),
        (
            "host=h password=hunter2 dbname=x",
            "host=h password=*** dbname=x",
        ),
        (
            "invalid type: string \"host=h password=hunter2\", expected usize",
            "invalid type: string \"host=h password=***",
        ),
        (
            "`postgresql://u:hunter2@h/db` is not a valid job name",
            "`postgresql://u:***@h/db` is not a valid job name",
        ),
        (
            "postgres://u:hunter2@h and password=hunter2",
            "postgres://u:***@h and password=***",
        ),
        (
            "see POSTGRESQL://u:hunter2@h/db?password=hunter2",
            "see POSTGRESQL://u:***@h/db?password=***",
        ),
        ("x password='hunter2 y' z", "x password=*** z"),
        ("x password='hunter2", "x password=***"),
        (
            "unknown sink kind `password=hunter2`, known kinds",
            "unknown sink kind `password=***",
        ),
        ("\"PassWord = hunter2\"", "\"PassWord = ***"),
        ("mypassword=hunter2 x", "mypassword=*** x"),
        ("password='a\\'hunter2' x", "password=*** x"),
        ("password=é\\éhunter2", "password=***"),
        ("passwordless=1 password", "passwordless=1 password"),
        (
            "postgresql://h/db?password=hunter2&sslmode=off x",
            "postgresql://h/db?password=***&sslmode=off x",
        ),
    ];
    for (text, expected) in cases {
        let redacted = redact_text(text);
        assert!(redacted.starts_with(expected), "{text:?} -> {redacted:?}");
        assert!(!redacted.contains("hunter2"), "{text:?} -> {redacted:?}");
    }
    assert_eq!(encode_path_segment("a-b_c.d~9"), "a-b_c.d~9");
    assert_eq!(encode_path_segment("a b/é"), "a%20b%2F%C3%A9");
}

// ---------------------------------------------------------------------------
// Health, readiness, metrics

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (_, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/metrics", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers.get(header::CONTENT_TYPE).unwrap(),
        crate::metrics::CONTENT_TYPE
    );
    assert_eq!(answer.text(), METRICS);
}

#[tokio::test]
async fn readyz_follows_the_metadata_store_and_healthz_is_always_ok() {
    let (control, router) = app(Some(TOKEN));
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.json(),
        json!({"metadata_store": true, "jobs_running": 0, "jobs_failed": 0})
    );
    control.store_down.store(true, Ordering::SeqCst);
    control.insert(spec_named("broken"), JobState::Failed);
    let answer = call(&router, "GET", "/readyz", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        answer.json(),
        json!({"metadata_store": false, "jobs_running": 0, "jobs_failed": 1})
    );
    let answer = call(&router, "GET", "/healthz", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"status": "ok"}));
}

// ---------------------------------------------------------------------------
// serve

#[tokio::test]
async fn serve_answers_over_tcp_and_stops_on_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_, router) = app(Some(TOKEN));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router, async {
        let _ = stopped.await;
    }));

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(r#"{"status":"ok"}"#), "{response}");

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------
// Any body: never a server error, always a JSON answer

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bodies_get_4xx_json_or_201(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\PC{0,200}".prop_map(String::into_bytes),
            // Valid documents with one line dropped.
            (0usize..14).prop_map(|skip| VALID
                .lines()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| format!("{l}\n"))
                .collect::<String>()
                .into_bytes()),
        ],
        json in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (_, router) = app(None);
        let content_type = if json { JSON } else { TOML };
        let answer = runtime.block_on(submit(&router, Some(content_type), body, None));
        prop_assert!(
            answer.status == StatusCode::CREATED || answer.status.is_client_error(),
            "{} {}", answer.status, answer.text()
        );
        if answer.status != StatusCode::CREATED {
            let error = answer.error();
            prop_assert!(!error.error.is_empty());
        }
    }
}

#[test]
fn route_table_is_well_formed() {
    for (method, path) in ROUTES {
        assert!(method.parse::<Method>().is_ok(), "{method}");
        assert!(path.starts_with('/'), "{path}");
    }
}
