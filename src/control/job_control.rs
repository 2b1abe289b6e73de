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

impl JobState {
    /// Its name, as the API, the metrics and the events give it (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Snapshotting => "snapshotting",
            JobState::Streaming => "streaming",
            JobState::Paused => "paused",
            JobState::Failed => "failed",
            JobState::Stopping => "stopping",
        }
    }
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

/// How far the job's initial snapshot got (the one this server process took last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    /// Table loads done (a table, or one part of a large table split into parts, into one
    /// PostgreSQL target is one load).
    pub loads_done: u64,
    /// Table loads the snapshot has.
    pub loads_total: u64,
    /// Rows the targets took in the loads done.
    pub rows: u64,
    /// Bytes of COPY data sent so far, loads in progress included.
    pub bytes: u64,
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
    /// The initial snapshot's progress while it runs, and its figures once done (`None`
    /// when this server process took none for the job: it resumed from its checkpoints).
    pub snapshot: Option<SnapshotStatus>,
    /// Per-tenant progress (empty for jobs over all tenants).
    pub tenant_status: Vec<TenantStatus>,
    /// Tables a PostgreSQL target keeps in error state: their changes go to
    /// `helios.dead_letters` until a resync reloads them.
    #[serde(default)]
    pub tables_in_error: Vec<TableInError>,
    /// The job's tables renamed on the source while it runs: their changes keep going to
    /// the job's table; the spec must name them as the source does before the next start.
    #[serde(default)]
    pub renamed_tables: Vec<RenamedTable>,
    /// Tables the spec's patterns match on the source but do not carry, with why (no
    /// tenant column, no rights), as the job's last start found them.
    #[serde(default)]
    pub tables_left_out: Vec<LeftOutTable>,
    /// Sequences of the job's tables its last sync round could not keep in step on the
    /// targets, each with why and what to do: a cutover would draw ids the source gave.
    #[serde(default)]
    pub sequence_problems: Vec<String>,
    /// The job's replication slot as the source last showed it while the job ran: the WAL
    /// it keeps, and how much more before the source invalidates it (`None` until read).
    #[serde(default)]
    pub slot: Option<crate::cdc::slot_health::SlotHealth>,
    /// The spec, with passwords redacted.
    pub spec: serde_json::Value,
}

/// A table in error state on one of a job's targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInError {
    /// Position of the sink in the spec's `sinks`.
    pub sink: usize,
    /// `schema.table`.
    pub table: String,
    /// Why the target refused its changes.
    pub reason: String,
}

/// A table of a job renamed on the source while the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenamedTable {
    /// `schema.table` as the job's spec names it (and its targets hold it).
    pub table: String,
    /// `schema.table` as the source names it now.
    pub source_name: String,
}

/// A table a job's pattern matches on the source and does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOutTable {
    /// `schema.table` on the source.
    pub table: String,
    /// The spec's pattern that matches it.
    pub pattern: String,
    /// Why the pattern does not carry it.
    pub reason: String,
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

/// A point in time as a user names it: a commit LSN or a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePoint {
    /// A position in the source's WAL.
    Lsn(crate::change::Lsn),
    /// µs since 2000-01-01 UTC.
    Micros(i64),
}

impl TimePoint {
    /// Parses an LSN (`16/B374D848`) or an RFC 3339 time (`2026-03-01T00:00:00Z`, or a
    /// bare date); the error says what was expected.
    pub fn parse(text: &str) -> Result<TimePoint, String> {
        if let Some(lsn) = crate::change::parse_lsn(text) {
            return Ok(TimePoint::Lsn(lsn));
        }
        crate::time_text::parse_rfc3339(text)
            .map(TimePoint::Micros)
            .ok_or_else(|| {
                format!(
                    "`{text}` is neither an RFC 3339 time (2026-03-01T00:00:00Z) nor an LSN (16/B374D848)"
                )
            })
    }
}

/// `GET /v1/tenants/{tenant}/tables/{table}/rows`: one tenant's rows as of a pair of times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsOfQuery {
    /// The tenant id.
    pub tenant: String,
    /// `schema.table`.
    pub table: String,
    /// What we knew then (default: now).
    pub system: Option<TimePoint>,
    /// When the rows were valid (default: the system time, or now).
    pub valid: Option<TimePoint>,
    /// The job to ask when several keep this table's history.
    pub job: Option<JobId>,
    /// Only the row with this key: the values of the key columns other than the tenant
    /// column, in key order, as text (empty: every row).
    pub key: Vec<String>,
}

/// The answer to an [`AsOfQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsOfRows {
    /// The job that answered.
    pub job: JobId,
    /// The tenant id.
    pub tenant: String,
    /// `schema.table`.
    pub table: String,
    /// The system time asked, as an LSN (`X/Y`) or RFC 3339 time.
    pub system_time: String,
    /// The valid time used (RFC 3339).
    pub valid_time: String,
    /// Where the answer came from: `memory` (the hot window), `history_table` or
    /// `cold_tier` (Parquet, beyond the retention horizon).
    pub source: String,
    /// Column names.
    pub columns: Vec<String>,
    /// The rows (text forms, `null` for NULL), sorted by key.
    pub rows: Vec<Vec<Option<String>>>,
}

/// `POST /v1/exports`: one tenant's history of one table to Parquet files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The tenant id.
    pub tenant: String,
    /// `schema.table`.
    pub table: String,
    /// Versions that became known at or after this time / LSN (default: the first).
    #[serde(default)]
    pub from: Option<String>,
    /// Versions that became known before this time / LSN (default: now).
    #[serde(default)]
    pub to: Option<String>,
    /// Directory the files go to (the cold-tier layout is created under it).
    pub output: String,
    /// The job to export from when several keep this table's history.
    #[serde(default)]
    pub job: Option<JobId>,
}

/// Where an export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportState {
    /// Writing files.
    Running,
    /// Every version is published.
    Done,
    /// Stopped with an error (see `error`); files published so far stay valid.
    Failed,
}

impl ExportState {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportState::Running => "running",
            ExportState::Done => "done",
            ExportState::Failed => "failed",
        }
    }
}

/// An export's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportStatus {
    /// The export's id.
    pub id: String,
    /// Where it is.
    pub state: ExportState,
    /// The job exported from.
    pub job: JobId,
    /// The tenant id.
    pub tenant: String,
    /// `schema.table`.
    pub table: String,
    /// The output directory.
    pub output: String,
    /// Versions to write.
    pub rows_total: u64,
    /// Versions written so far.
    pub rows_written: u64,
    /// Files published (relative to the table's directory).
    pub files: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A retention policy: history of a tenant's table older than `days` days leaves the
/// history table and lives only in the job's Parquet cold tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// The tenant id.
    pub tenant: String,
    /// `schema.table`.
    pub table: String,
    /// Closed versions older than this many days move out (0: as soon as exported).
    pub days: u32,
}

/// Body of `POST /v1/jobs/{id}/resync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncRequest {
    /// The job's tables to reload (`schema.table`, or a bare name unique among them).
    pub tables: Vec<String>,
    /// Reload only these tenants' rows of the tables (tenants the job carries); none or
    /// absent: the tables whole.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::control::job_spec::deserialize_tenant_ids"
    )]
    pub tenants: Vec<String>,
}

/// Body of `POST /v1/jobs/{id}/sync` (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRequest {
    /// How long to wait for the job to catch up, `1..=3600` (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Default and largest `timeout_secs` of a [`SyncRequest`].
pub const SYNC_TIMEOUT_DEFAULT_SECS: u64 = 60;
pub const SYNC_TIMEOUT_MAX_SECS: u64 = 3600;

/// Answer of `POST /v1/jobs/{id}/sync`: every change the source committed before
/// `source_lsn` is durable on the job's sinks, and its sequences are raised on its
/// PostgreSQL targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResult {
    /// The source's WAL position when the request came (`X/Y`).
    pub source_lsn: String,
    /// The job's confirmed position once it passed `source_lsn` (`X/Y`).
    pub confirmed_lsn: String,
    /// Seconds the request waited for it.
    pub waited_secs: f64,
    /// Sequences raised on the targets (a sequence on two targets counts twice).
    pub sequences_raised: u64,
    /// Sequences it could not raise, each with why and what to do (empty when all were):
    /// a target cut over regardless would draw ids the source already gave.
    #[serde(default)]
    pub sequence_problems: Vec<String>,
}

impl From<crate::control::resync::ResyncError> for ControlError {
    /// A request the job cannot follow (422, naming `tables` or `tenants`), or a target
    /// that could not take it (503).
    fn from(e: crate::control::resync::ResyncError) -> Self {
        use crate::control::resync::ResyncError;
        let field = match e {
            ResyncError::Sink(e) => return ControlError::Unavailable(e.to_string()),
            ResyncError::Patterns(e) => return ControlError::Unavailable(e),
            ResyncError::EmptyTenant
            | ResyncError::NotAJobTenant { .. }
            | ResyncError::NotTheTablesTenant { .. }
            | ResyncError::TenantsOfTableInError { .. } => "tenants",
            _ => "tables",
        };
        ControlError::Invalid {
            field: field.to_string(),
            message: e.to_string(),
        }
    }
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
    /// What the request names does not exist, e.g. no job keeps history of that table
    /// for that tenant, or nothing was known yet at that time (404).
    #[error("{0}")]
    Missing(String),
    /// A request value is well-formed but not acceptable, e.g. a time in the future (422).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// What the request waits for did not happen in the time it allows (504).
    #[error("{0}")]
    TimedOut(String),
}

impl From<crate::control::metadata::MetadataError> for ControlError {
    /// The metadata store could not be reached or refused: 503.
    fn from(e: crate::control::metadata::MetadataError) -> Self {
        ControlError::Unavailable(e.to_string())
    }
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
    /// Replaces a job's spec (same name, slot and publication) and restarts it under the
    /// new one, paused if it was paused; what the new spec adds (tenants, tables,
    /// targets) is loaded before it streams (`control::backfill`). The job's own spec
    /// again changes nothing.
    async fn replace(&self, id: &str, spec: JobSpec) -> Result<JobStatus, ControlError>;
    /// Reloads `request.tables` of a job whole from the source (`control::resync`): the
    /// job restarts, paused if it was paused, and loads them before it streams on.
    async fn resync(&self, id: &str, request: ResyncRequest) -> Result<JobStatus, ControlError>;
    /// Waits until every change the source committed before the request is durable on the
    /// job's sinks, then raises the job's sequences on its PostgreSQL targets
    /// (`control::sequence_sync`): the step before a tenant is cut over to a target.
    async fn sync(&self, id: &str, request: SyncRequest) -> Result<SyncResult, ControlError>;
    /// Which jobs carry a tenant, with their lag.
    async fn tenant(&self, tenant: &str) -> Vec<TenantJob>;
    /// Whether the server can do its work.
    async fn readiness(&self) -> Readiness;
    /// The Prometheus text exposition of every metric.
    fn metrics_text(&self) -> String;
    /// A tenant's rows of a table as of a pair of times.
    async fn rows_as_of(&self, query: AsOfQuery) -> Result<AsOfRows, ControlError>;
    /// Starts exporting a tenant's history of a table to Parquet.
    async fn start_export(&self, request: ExportRequest) -> Result<ExportStatus, ControlError>;
    /// An export's progress.
    async fn export_status(&self, id: &str) -> Result<ExportStatus, ControlError>;
    /// Creates or replaces a retention policy.
    async fn set_retention(&self, policy: RetentionPolicy)
        -> Result<RetentionPolicy, ControlError>;
    /// Every retention policy.
    async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, ControlError>;
    /// What the codec of each of a job's compressed-stream sinks chose, per stream.
    async fn compression(&self, id: &str) -> Result<JobCompression, ControlError>;
    /// A job's last `limit` events, newest first; also of a job deleted since, while the
    /// store keeps them (not found: no such job and no events).
    async fn events(&self, id: &str, limit: u32) -> Result<JobEvents, ControlError>;
    /// Counts access events (already validated) for the jobs that replicate their rows.
    async fn record_access(
        &self,
        events: crate::control::access::AccessEvents,
    ) -> Result<crate::control::access::AccessAccepted, ControlError>;
}

/// One thing that happened to a job, as the metadata store recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// When (RFC 3339, UTC, microseconds).
    pub at: String,
    /// What: a state the job entered (`snapshotting`, `streaming`, `paused`, `failed`,
    /// `stopping`) or a request (`submitted`, `replaced`, `pause requested`, `resume
    /// requested`, `resync requested`, `deleted`).
    pub kind: String,
    /// The reason or particulars (a failed job's error, a spec version), if any.
    pub detail: Option<String>,
}

/// Body of `GET /v1/jobs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvents {
    /// The job.
    pub job: String,
    /// Its events, newest first.
    pub events: Vec<JobEvent>,
}

/// How many events `GET /v1/jobs/{id}/events` returns by default, and at most.
pub const EVENTS_DEFAULT: u32 = 50;
/// See [`EVENTS_DEFAULT`].
pub const EVENTS_MAX: u32 = 1000;

/// Body of `GET /v1/jobs/{id}/compression`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompression {
    /// The job.
    pub job: String,
    /// Its compressed-stream sinks (NATS), by position in the spec.
    pub sinks: Vec<SinkCompression>,
}

/// One compressed-stream sink's codec figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkCompression {
    /// Position of the sink in the spec's `sinks`.
    pub sink: usize,
    /// Its kind (`nats`).
    pub kind: String,
    /// Frames published since the job started.
    pub frames: u64,
    /// Rows in them.
    pub rows: u64,
    /// Arrow bytes encoded.
    pub arrow_bytes: u64,
    /// Frame bytes published.
    pub frame_bytes: u64,
    /// Frame bytes per row.
    pub bytes_per_row: f64,
    /// Seconds spent encoding.
    pub encode_seconds: f64,
    /// True while the sink uses cheaper encodings (CPU budget exceeded).
    pub fast_mode: bool,
    /// Times it fell back to them.
    pub fallbacks: u64,
    /// Per (tenant, table) stream: the latest frame's codec per column.
    pub streams: Vec<crate::sinks::nats::compression_stats::StreamReport>,
}

#[cfg(test)]
mod tests {
    use super::JobState;

    #[test]
    fn a_states_name_is_its_serde_name() {
        for state in [
            JobState::Snapshotting,
            JobState::Streaming,
            JobState::Paused,
            JobState::Failed,
            JobState::Stopping,
        ] {
            let json = serde_json::to_string(&state).expect("serialise");
            assert_eq!(json, format!("\"{}\"", state.name()));
        }
    }
}
