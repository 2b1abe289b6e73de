//! What the HTTP API (and anything else) may ask of the job manager, and the status it
//! reports. The API layer depends only on this trait, so it can be tested without servers;
//! `control::job_manager` is the real implementation.
//!
//! Every string here is safe to return to a client: DSNs are redacted (`***` for
//! passwords) and tenant ids appear only for tenants a job names.

use serde::{Deserialize, Serialize};

use crate::control::job_spec::{JobSpec, JobSpecError};

/// A job's id: its name (unique among the server's jobs).
pub type JobId = String;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Preparing the source and taking the initial snapshot.
    Snapshotting,
    /// Replicating changes.
    Streaming,
    /// Stopped reading on request; resumes where it stopped.
    Paused,
    /// Stopped by an error that needs a person (see `reason`).
    Failed,
    /// Being removed.
    Stopping,
}

/// Per-tenant progress of a job (only tenants the job names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// The tenant id.
    pub tenant: String,
    /// The commit LSN up to which this tenant's changes are durable at the sinks (`X/Y`).
    pub durable_lsn: Option<String>,
    /// Rows applied for this tenant since the server started.
    pub rows: u64,
    /// How old this tenant's newest applied change was when it became durable (seconds).
    pub lag_seconds: f64,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id (its name).
    pub id: JobId,
    /// Current state.
    pub state: JobState,
    /// Why it failed (for `failed`), or the last transient error.
    pub reason: Option<String>,
    /// The spec version running (1 for the first submission).
    pub version: i32,
    /// Tenants the job carries: the ids, or `["all"]`.
    pub tenants: Vec<String>,
    /// Tables the job carries.
    pub tables: Vec<String>,
    /// Position confirmed to the source (`X/Y`).
    pub confirmed_lsn: String,
    /// WAL bytes between the source's position and the confirmed one.
    pub lag_bytes: u64,
    /// Age of the oldest change not yet durable, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Rows applied per second over the last few seconds.
    pub rows_per_second: f64,
    /// Rows applied since the server started.
    pub rows_total: u64,
    /// Failed apply attempts and stream interruptions since the server started.
    pub errors: u64,
    /// Per-tenant progress (empty for jobs over all tenants).
    pub tenant_status: Vec<TenantStatus>,
    /// The spec, with passwords redacted.
    pub spec: serde_json::Value,
}

/// One job carrying a tenant, for `GET /v1/tenants/{tenant}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantJob {
    /// The job id.
    pub job: JobId,
    /// The job's state.
    pub state: JobState,
    /// The job's lag in seconds.
    pub lag_seconds: f64,
    /// The job's lag in bytes.
    pub lag_bytes: u64,
    /// This tenant's durable LSN in that job.
    pub durable_lsn: Option<String>,
}

/// Readiness for `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// The metadata store answers.
    pub metadata_store: bool,
    /// Jobs by state name.
    pub jobs_running: usize,
    /// Jobs that failed.
    pub jobs_failed: usize,
}

/// Why a request to the manager was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The spec is invalid (400/422 with the field named).
    #[error(transparent)]
    InvalidSpec(#[from] JobSpecError),
    /// No job with that id (404).
    #[error("no job `{0}`")]
    NotFound(JobId),
    /// A job with that name exists already (409).
    #[error("a job named `{0}` exists already")]
    AlreadyExists(JobId),
    /// The request does not fit the job's state, e.g. resume a running job (409).
    #[error("{0}")]
    Conflict(String),
    /// The metadata store or a server could not be reached (503).
    #[error("{0}")]
    Unavailable(String),
}

/// The operations the API offers.
#[async_trait::async_trait]
pub trait JobControl: Send + Sync + 'static {
    /// Registers and starts a job; returns its id.
    async fn submit(&self, spec: JobSpec) -> Result<JobId, ControlError>;
    /// Every job.
    async fn list(&self) -> Vec<JobStatus>;
    /// One job.
    async fn get(&self, id: &str) -> Result<JobStatus, ControlError>;
    /// Stops reading the job's source; its position is kept.
    async fn pause(&self, id: &str) -> Result<JobStatus, ControlError>;
    /// Starts reading again where it stopped.
    async fn resume(&self, id: &str) -> Result<JobStatus, ControlError>;
    /// Stops and removes the job; with `drop_slot` also drops its replication slot.
    async fn delete(&self, id: &str, drop_slot: bool) -> Result<(), ControlError>;
    /// Which jobs carry a tenant, with their lag.
    async fn tenant(&self, tenant: &str) -> Vec<TenantJob>;
    /// Whether the server can do its work.
    async fn readiness(&self) -> Readiness;
    /// The Prometheus text exposition of every metric.
    fn metrics_text(&self) -> String;
}
