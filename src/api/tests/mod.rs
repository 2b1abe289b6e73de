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
    AsOfQuery, AsOfRows, ControlError, ExportRequest, ExportState, ExportStatus, JobControl, JobId,
    JobState, JobStatus, Readiness, ResyncRequest, RetentionPolicy, TenantJob, TenantStatus,
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
    policies: Mutex<Vec<RetentionPolicy>>,
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
            snapshot: Some(crate::control::job_control::SnapshotStatus {
                loads_done: 1,
                loads_total: 2,
                rows: 40,
                bytes: 4096,
            }),
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
            tables_in_error: vec![crate::control::job_control::TableInError {
                sink: 0,
                table: "public.orders".to_owned(),
                reason: "violates check constraint".to_owned(),
            }],
            renamed_tables: vec![crate::control::job_control::RenamedTable {
                table: "public.orders".to_owned(),
                source_name: "public.orders_v2".to_owned(),
            }],
            tables_left_out: vec![crate::control::job_control::LeftOutTable {
                table: "public.countries".to_owned(),
                pattern: "public.*".to_owned(),
                reason: "it has no tenant column `tenant_id`".to_owned(),
            }],
            sequence_problems: vec![
                "sequence \"public\".\"orders_id_seq\" is not kept in step on target 0".to_owned(),
            ],
            slot: Some(crate::cdc::slot_health::SlotHealth {
                wal_status: "unreserved".to_owned(),
                retained_wal_bytes: 5 << 20,
                safe_wal_bytes: Some(0),
            }),
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

    async fn resync(&self, id: &str, request: ResyncRequest) -> Result<JobStatus, ControlError> {
        self.with_job(id, |job| {
            crate::control::resync::check(&job.spec, &request.tables)?;
            crate::control::resync::check_tenants(&job.spec, &request.tenants)?;
            Ok(Self::status(job))
        })
    }

    async fn sync(
        &self,
        id: &str,
        request: crate::control::job_control::SyncRequest,
    ) -> Result<crate::control::job_control::SyncResult, ControlError> {
        crate::control::job_sync::timeout_of(&request)?;
        self.with_job(id, |job| match job.state {
            JobState::Paused => Err(ControlError::Conflict("the job is paused".into())),
            _ => Ok(crate::control::job_control::SyncResult {
                source_lsn: "0/16B3748".into(),
                confirmed_lsn: "0/16B3790".into(),
                waited_secs: 0.25,
                sequences_raised: 2,
                sequence_problems: Vec::new(),
            }),
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

    async fn replace(&self, id: &str, spec: JobSpec) -> Result<JobStatus, ControlError> {
        self.with_job(id, |job| {
            spec.check_replaces(&job.spec)?;
            job.spec = spec;
            Ok(Self::status(job))
        })
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

    async fn rows_as_of(&self, query: AsOfQuery) -> Result<AsOfRows, ControlError> {
        match query.tenant.as_str() {
            "nobody" => return Err(ControlError::Missing("no job keeps history".into())),
            "future" => {
                return Err(ControlError::Invalid {
                    field: "system_time".into(),
                    message: "is in the future".into(),
                })
            }
            _ => {}
        }
        // Echoes what the route parsed, so tests can check it.
        Ok(AsOfRows {
            job: query.job.unwrap_or_else(|| "fake".into()),
            tenant: query.tenant,
            table: query.table,
            system_time: format!("{:?}", query.system),
            valid_time: format!("{:?}", query.valid),
            source: "memory".into(),
            columns: vec!["id".into()],
            // The key values, when given, come back as the one row.
            rows: vec![if query.key.is_empty() {
                vec![Some("1".into())]
            } else {
                query.key.into_iter().map(Some).collect()
            }],
        })
    }

    async fn start_export(&self, request: ExportRequest) -> Result<ExportStatus, ControlError> {
        crate::control::exports::parse_range(&request)?;
        Ok(ExportStatus {
            id: "exp-1".into(),
            state: ExportState::Running,
            job: "fake".into(),
            tenant: request.tenant,
            table: request.table,
            output: request.output,
            rows_total: 0,
            rows_written: 0,
            files: vec![],
            error: None,
        })
    }

    async fn export_status(&self, id: &str) -> Result<ExportStatus, ControlError> {
        if id != "known" {
            return Err(ControlError::Missing(format!("no export `{id}`")));
        }
        let request = ExportRequest {
            tenant: "3".into(),
            table: "public.orders".into(),
            from: None,
            to: None,
            output: "/tmp/x".into(),
            job: None,
        };
        self.start_export(request).await
    }

    async fn set_retention(
        &self,
        policy: RetentionPolicy,
    ) -> Result<RetentionPolicy, ControlError> {
        self.policies.lock().unwrap().push(policy.clone());
        Ok(policy)
    }

    async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, ControlError> {
        Ok(self.policies.lock().unwrap().clone())
    }

    async fn events(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<crate::control::job_control::JobEvents, ControlError> {
        use crate::control::job_control::{JobEvent, JobEvents};
        if !self.jobs.lock().unwrap().contains_key(id) {
            return Err(ControlError::NotFound(id.to_string()));
        }
        let event = |at: &str, kind: &str, detail: Option<&str>| JobEvent {
            at: at.to_owned(),
            kind: kind.to_owned(),
            detail: detail.map(str::to_owned),
        };
        let mut events = vec![
            event(
                "2026-12-07T10:00:02.000000Z",
                "failed",
                Some("cannot connect to host=db password=hunter2"),
            ),
            event("2026-12-07T10:00:01.000000Z", "streaming", None),
            event(
                "2026-12-07T10:00:00.000000Z",
                "submitted",
                Some("version 1"),
            ),
        ];
        events.truncate(limit as usize);
        Ok(JobEvents {
            job: id.to_owned(),
            events,
        })
    }

    async fn compression(
        &self,
        id: &str,
    ) -> Result<crate::control::job_control::JobCompression, ControlError> {
        if !self.jobs.lock().unwrap().contains_key(id) {
            return Err(ControlError::NotFound(id.to_string()));
        }
        Ok(crate::control::job_control::JobCompression {
            job: id.to_string(),
            sinks: Vec::new(),
        })
    }

    async fn record_access(
        &self,
        events: crate::control::access::AccessEvents,
    ) -> Result<crate::control::access::AccessAccepted, ControlError> {
        // Accepted when the event names no job or a job this fake knows.
        let jobs = self.jobs.lock().unwrap();
        let accepted = events
            .events
            .iter()
            .filter(|e| e.job.as_ref().is_none_or(|j| jobs.contains_key(j)))
            .count();
        Ok(crate::control::access::AccessAccepted {
            accepted,
            unmatched: events.events.len() - accepted,
        })
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
    let router = router(
        control.clone(),
        ApiTokens {
            admin: token.map(str::to_owned),
            read_only: None,
        },
    );
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

/// A request with a JSON body and the test token.
async fn call_json(router: &Router, method: &str, uri: &str, body: &str) -> Answer {
    let builder = request(method, uri, Some(TOKEN)).header(header::CONTENT_TYPE, JSON);
    send(router, builder.body(Body::from(body.to_owned())).unwrap()).await
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

fn json_with(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value = valid_json();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

mod any_body;
mod auth;
mod history;
mod jobs;
mod malformed;
mod openapi;
mod probes;
mod secrets;
