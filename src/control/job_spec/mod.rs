//! The dataflow job spec: what one replication job reads, for which tenants,
//! and where it writes.
//!
//! This module owns the serde types of a job file (`dataflows/*.toml`, and the
//! same document as JSON on the REST API), parsing from TOML and JSON with
//! errors that name the offending field (`sinks[0].kind`, `source.dsn`, ...),
//! and the semantic validation that runs after parsing. The JSON Schema in
//! `schemas/job.schema.json` describes the same format; keep the two in step.
//!
//! ```toml
//! name = "tenants-3-7"
//! [source]
//! dsn = "host=127.0.0.1 port=5432 user=postgres dbname=app"
//! publication = "helios_tenants_3_7"
//! slot = "helios_tenants_3_7"
//! snapshot_parallel_tables = 2  # initial copy (default: one per core, at most 4)
//! snapshot_split_tables = true  # large tables in parts side by side (default)
//! # receive_buffer_kib = 64     # replication socket (default: 64 on loopback, else the system's)
//! [tenants]
//! column = "tenant_id"          # default
//! include = [3, 7]              # or "all"
//! [[tables]]
//! name = "public.orders"
//! tenant_column = "org_id"      # optional override
//! history = true                # keep bi-temporal versions (default false)
//! valid_time_column = "effective_at"  # optional; default: the commit time
//! [[tables]]
//! name = "public.*"             # a pattern: the schema's tables with the tenant column
//! exclude = ["schema_migrations"]
//! [history]                     # optional
//! hot_window_secs = 3600        # closed versions kept in memory for as-of queries
//! row_memory_mib = 128          # rows the version books keep in memory; the rest on disk
//! [[sinks]]
//! kind = "postgres"
//! dsn = "host=127.0.0.1 port=5433 user=postgres dbname=replica"
//! batch_max_rows = 5000         # default
//! [[sinks]]
//! kind = "parquet"              # continuous export of history to the cold tier
//! root = "/var/lib/helios/cold"
//! compact_min_files = 16        # default; merge small files once this many (0: never)
//! ```
//!
//! The first sink keeps the job's progress: a postgres sink, or in a job with none, a
//! parquet sink (a cold-tier-only job: progress in `<root>/_jobs/`, history restored
//! from the published files).
//!
//! Connection strings are [`Dsn`]s: their `Debug`/`Display` hide passwords,
//! so `{:?}` of a spec is safe to log.

use std::collections::{BTreeSet, HashMap};

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

pub use super::secret::Dsn;
pub use history::{
    HistorySpec, DEFAULT_HOT_WINDOW_SECS, DEFAULT_ROW_MEMORY_MIB, MAX_HOT_WINDOW_SECS,
    MAX_ROW_MEMORY_MIB,
};
pub use in_flight::{MaxInFlight, MAX_MAX_IN_FLIGHT};
pub use nats::NatsSinkSpec;
pub use qos::{LagBudgets, PredictorChoice, QosSpec};
pub use source::{SourceSpec, MAX_SNAPSHOT_PARALLEL_TABLES};

use crate::sinks::qos::rate_limit::SinkLimits;
use parse_error::{field_path, parse_error, toml_message};

mod history;
mod in_flight;
mod nats;
mod parse_error;
mod qos;
mod sink_de;
mod source;
mod table_pattern;
mod tenant_filter;
mod tenant_key;
pub(crate) use table_pattern::{is_pattern, TablePattern};
pub use tenant_filter::deserialize_tenant_ids;
pub use tenant_key::{TenantAt, TenantKey};

/// Column holding the tenant id when neither `tenants.column` nor a table's
/// `tenant_column` says otherwise.
pub const DEFAULT_TENANT_COLUMN: &str = "tenant_id";
/// Default `batch_max_rows` of a postgres sink.
pub const DEFAULT_BATCH_MAX_ROWS: usize = 5000;
/// Largest accepted `batch_max_rows`.
pub const MAX_BATCH_MAX_ROWS: usize = 1_000_000;
/// Longest accepted job name.
pub const MAX_JOB_NAME_LEN: usize = 48;
/// Longest PostgreSQL identifier (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_LEN: usize = 63;
/// The sink kinds this build knows, as written in `sinks[i].kind`.
pub const SINK_KINDS: &[&str] = &["postgres", "parquet", "nats"];
/// Default `batch_max_rows` of a parquet sink (rows per published file group).
pub const DEFAULT_PARQUET_BATCH_MAX_ROWS: usize = 100_000;
/// The `path` of a [`JobSpecError::Parse`] that concerns the whole document
/// (syntax errors, a document that is not a table/object).
pub const DOCUMENT_PATH: &str = "<document>";
/// The smallest valid job spec: documentation examples and tests start from it.
pub const MINIMAL_SPEC: &str = r#"
name = "t"
[source]
dsn = "host=127.0.0.1 port=5432 user=postgres dbname=app"
publication = "pub_t"
slot = "slot_t"
[tenants]
include = [3, 7]
[[tables]]
name = "public.orders"
[[sinks]]
kind = "postgres"
dsn = "host=127.0.0.1 port=5433 user=postgres dbname=replica"
"#;

/// One replication job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// 1–48 chars of `[a-z0-9_-]`, starting with a letter.
    pub name: String,
    pub source: SourceSpec,
    pub tenants: TenantSpec,
    /// At least one; names unique.
    pub tables: Vec<TableSpec>,
    /// At least one.
    pub sinks: Vec<SinkSpec>,
    /// How bi-temporal history is kept (tables opt in with `history = true`).
    #[serde(default, skip_serializing_if = "HistorySpec::is_default")]
    pub history: HistorySpec,
    /// Tenant tiers, lag budgets and the hotness predictor.
    #[serde(default, skip_serializing_if = "QosSpec::is_default")]
    pub qos: QosSpec,
}

/// Which tenants the job replicates and where their id lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Tenant id column, unless a table overrides it. Default `tenant_id`.
    #[serde(default = "default_tenant_column")]
    pub column: String,
    pub include: TenantFilter,
    /// What happens on the targets to the rows of tenants a restarted job no longer
    /// carries (`control::backfill`). Default `keep`.
    #[serde(default, skip_serializing_if = "RemovedTenants::is_default")]
    pub removed: RemovedTenants,
}

/// `tenants.removed`: the rows of tenants dropped from `tenants.include`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RemovedTenants {
    /// They stay on the targets, no longer kept up to date.
    #[default]
    Keep,
    /// They are deleted from the PostgreSQL targets when the job restarts without them.
    Delete,
}

impl RemovedTenants {
    fn is_default(&self) -> bool {
        *self == RemovedTenants::Keep
    }
}

/// `"all"`, or a list of tenant ids. Ids are compared as text: integers in
/// the document become their decimal text (`3` and `"3"` are the same id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFilter {
    All,
    Only(BTreeSet<String>),
}

/// One replicated table, or a pattern of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// `schema.table`, each part `[A-Za-z_][A-Za-z0-9_]{0,62}`; or a pattern,
    /// `schema.glob` with `*` and `?` in the table part ([`table_pattern`]), which carries
    /// the schema's matching tables that have the tenant column.
    pub name: String,
    /// Tables a pattern leaves out (names or patterns); only with a pattern.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Overrides `tenants.column` for this table.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tenant_column: Option<String>,
    /// The tenant whose rows the whole table holds (a schema-per-tenant layout's
    /// `tenant_7.orders`): then the table needs no tenant column. Only on a table named
    /// outright; a pattern with `tenant_from = "schema"` sets it on each table it carries.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "tenant_filter::deserialize_one_tenant_id",
        serialize_with = "tenant_filter::serialize_one_tenant_id"
    )]
    pub tenant: Option<String>,
    /// `"schema"`: each table the pattern carries holds one tenant's rows, the tenant id
    /// being the part of its schema's name that the `*` of the pattern's schema part
    /// matched (`tenant_*.orders` carries `tenant_7.orders` as tenant `7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_from: Option<TenantFrom>,
    /// Keep bi-temporal versions of this table (`<table>_history` on the target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
    /// The column holding each row's valid time (timestamptz, timestamp or date); when
    /// absent, a version is valid from its commit time. Needs `history = true`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub valid_time_column: Option<String>,
}

impl TableSpec {
    /// A table of the given name with the job's defaults (no history, the job's tenant
    /// column).
    pub fn named(name: impl Into<String>) -> TableSpec {
        TableSpec {
            name: name.into(),
            exclude: Vec::new(),
            tenant_column: None,
            tenant: None,
            tenant_from: None,
            history: false,
            valid_time_column: None,
        }
    }

    /// Whether `name` is a pattern of tables rather than one table.
    pub fn is_pattern(&self) -> bool {
        table_pattern::is_pattern(&self.name)
    }

    /// The part before the `.` (empty if the name has none; such a name does
    /// not pass validation).
    pub fn schema(&self) -> &str {
        self.name.split_once('.').map_or("", |(schema, _)| schema)
    }

    /// The part after the `.` (the whole name if it has none).
    pub fn table(&self) -> &str {
        self.name
            .split_once('.')
            .map_or(&self.name, |(_, table)| table)
    }
}

/// `tables[].tenant_from`: where the tables of a pattern take their tenant id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantFrom {
    /// The part of the table's schema name that the schema part's `*` matched.
    Schema,
}

/// Where the job writes. Deserialization is hand-written (see
/// the private `RawSink`) so that errors inside a sink keep their field path, which
/// serde's internally tagged enums lose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkSpec {
    Postgres(PostgresSinkSpec),
    Parquet(ParquetSinkSpec),
    Nats(NatsSinkSpec),
}

impl SinkSpec {
    /// The `kind` as written in the document.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Postgres(_) => "postgres",
            SinkSpec::Parquet(_) => "parquet",
            SinkSpec::Nats(_) => "nats",
        }
    }

    /// Most rows one apply takes.
    pub fn batch_max_rows(&self) -> usize {
        match self {
            SinkSpec::Postgres(p) => p.batch_max_rows,
            SinkSpec::Parquet(p) => p.batch_max_rows,
            SinkSpec::Nats(p) => p.batch_max_rows,
        }
    }

    /// Most groups in flight to the sink at once (1 for sinks that do not pipeline).
    pub fn max_in_flight(&self) -> MaxInFlight {
        match self {
            SinkSpec::Postgres(p) => p.max_in_flight,
            SinkSpec::Parquet(_) | SinkSpec::Nats(_) => MaxInFlight::Fixed(1),
        }
    }

    /// The sink's bandwidth limits.
    pub fn limits(&self) -> SinkLimits {
        match self {
            SinkSpec::Postgres(p) => p.limits.limits(),
            SinkSpec::Parquet(p) => p.limits.limits(),
            SinkSpec::Nats(p) => p.limits.limits(),
        }
    }
}

/// The Parquet cold tier: every history version of the job's tables, continuously
/// exported to `<root>/tenant=<t>/table=<table>/date=<d>/part-<lsn range>.parquet`.
/// (Read through the private `RawSink`, which rejects unknown keys.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetSinkSpec {
    /// Directory of the cold tier (created if missing).
    pub root: String,
    /// Most rows one published group of files takes, `1..=1_000_000`. Default 100000. The
    /// sink waits for this many (or half the job's read-ahead) or for its oldest pending
    /// row to have waited 1 s before it writes. Bigger groups make fewer, larger files
    /// (each costs a file per tenant and table, fsyncs and a manifest update).
    #[serde(default = "default_parquet_batch_max_rows")]
    pub batch_max_rows: usize,
    /// Merge a table directory's small files (under 100,000 rows) once it lists this
    /// many: 0 (never) or `2..=100_000`. Default 16.
    #[serde(default = "default_compact_min_files")]
    pub compact_min_files: usize,
    /// The sink's bandwidth limits.
    #[serde(flatten)]
    pub limits: SinkLimitsSpec,
}

fn default_parquet_batch_max_rows() -> usize {
    DEFAULT_PARQUET_BATCH_MAX_ROWS
}

fn default_compact_min_files() -> usize {
    crate::sinks::parquet::COMPACTION.min_files
}

/// Largest accepted `compact_min_files`.
pub const MAX_COMPACT_MIN_FILES: usize = 100_000;

/// A PostgreSQL database the job applies changes to.
/// (Read through the private `RawSink`, which rejects unknown keys.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSinkSpec {
    pub dsn: Dsn,
    /// Rows per applied batch, `1..=1_000_000`. Default 5000.
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
    /// Target transactions sent before the oldest one's outcome is back, `1..=64`, or
    /// `"auto"` (the default: chosen from the round trip to the target, measured when the
    /// sink connects and sampled again every 10 s while it is connected). More hides a long round trip to a remote target: a transaction behind
    /// a failed one rolls back with it.
    #[serde(default)]
    pub max_in_flight: MaxInFlight,
    /// The sink's bandwidth limits.
    #[serde(flatten)]
    pub limits: SinkLimitsSpec,
}

/// The bandwidth limits every kind of sink takes (all optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkLimitsSpec {
    /// Rows per second the sink may write over all tenants (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_sec: Option<u64>,
    /// Bytes of values per second the sink may write over all tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
    /// Rows per second the sink may write for each tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_max_rows_per_sec: Option<u64>,
    /// Bytes of values per second the sink may write for each tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_max_bytes_per_sec: Option<u64>,
}

impl SinkLimitsSpec {
    /// As the rate limiter takes them.
    pub fn limits(&self) -> SinkLimits {
        SinkLimits {
            rows_per_sec: self.max_rows_per_sec,
            bytes_per_sec: self.max_bytes_per_sec,
            tenant_rows_per_sec: self.tenant_max_rows_per_sec,
            tenant_bytes_per_sec: self.tenant_max_bytes_per_sec,
        }
    }
}

/// A job spec that could not be parsed or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum JobSpecError {
    /// The document does not have the shape of a job spec.
    #[error("job spec: {path}: {message}")]
    Parse { path: String, message: String },
    /// The document parsed but a value is not acceptable.
    #[error("job spec: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl JobSpecError {
    /// The path of the offending field (`sinks[0].kind`, `source.dsn`), or
    /// [`DOCUMENT_PATH`] when the error is about the document as a whole.
    pub fn field(&self) -> &str {
        match self {
            JobSpecError::Parse { path, .. } => path,
            JobSpecError::Invalid { field, .. } => field,
        }
    }

    /// What is wrong, without the field path.
    pub fn message(&self) -> &str {
        match self {
            JobSpecError::Parse { message, .. } => message,
            JobSpecError::Invalid { reason, .. } => reason,
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        JobSpecError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl JobSpec {
    /// Parses a TOML job document and validates it.
    pub fn from_toml_str(s: &str) -> Result<JobSpec, JobSpecError> {
        let de = toml::Deserializer::parse(s).map_err(|e| JobSpecError::Parse {
            path: DOCUMENT_PATH.to_owned(),
            message: toml_message(s, &e),
        })?;
        let spec: JobSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = field_path(e.path());
            parse_error(path, toml_message(s, e.inner()))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a JSON job document (the REST API form) and validates it.
    pub fn from_json_str(s: &str) -> Result<JobSpec, JobSpecError> {
        let mut de = serde_json::Deserializer::from_str(s);
        let spec: JobSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = field_path(e.path());
            parse_error(path, e.inner().to_string())
        })?;
        de.end().map_err(|e| JobSpecError::Parse {
            path: DOCUMENT_PATH.to_owned(),
            message: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks that `self` may replace `current`, the spec of a job that exists: the same
    /// name, slot and publication (a new slot is a new job, with a new snapshot). Anything
    /// else may change; what the new spec adds is loaded when the job restarts
    /// (`control::backfill`).
    pub fn check_replaces(&self, current: &JobSpec) -> Result<(), JobSpecError> {
        let unchanged = |field: &str, now: &str, new: &str, why: &str| {
            if now == new {
                Ok(())
            } else {
                Err(JobSpecError::Invalid {
                    field: field.to_string(),
                    reason: format!("is `{new}`, the job's is `{now}`: {why}"),
                })
            }
        };
        unchanged(
            "name",
            &current.name,
            &self.name,
            "a job's name cannot change",
        )?;
        let new_job = "a job cannot move to another; delete it and submit the new spec as a job";
        unchanged(
            "source.slot",
            &current.source.slot,
            &self.source.slot,
            new_job,
        )?;
        unchanged(
            "source.publication",
            &current.source.publication,
            &self.source.publication,
            new_job,
        )
    }

    /// Checks everything the types do not: names, identifiers, DSNs, counts,
    /// uniqueness, ranges. Returns the first problem found.
    pub fn validate(&self) -> Result<(), JobSpecError> {
        check_job_name("name", &self.name)?;

        self.source.validate()?;

        check_column("tenants.column", &self.tenants.column)?;
        if let TenantFilter::Only(ids) = &self.tenants.include {
            if ids.is_empty() {
                return Err(JobSpecError::invalid(
                    "tenants.include",
                    "must list at least one tenant id, or be \"all\"",
                ));
            }
            if ids.contains("") {
                return Err(JobSpecError::invalid(
                    "tenants.include",
                    "tenant ids must not be empty strings",
                ));
            }
        }

        if self.tables.is_empty() {
            return Err(JobSpecError::invalid(
                "tables",
                "must contain at least one table",
            ));
        }
        if self.tenants.removed == RemovedTenants::Delete {
            if let Some((i, sink)) = self
                .sinks
                .iter()
                .enumerate()
                .find(|(_, s)| !matches!(s, SinkSpec::Postgres(_)))
            {
                return Err(JobSpecError::invalid(
                    "tenants.removed",
                    format!(
                        "\"delete\" purges PostgreSQL targets only, and sinks[{i}] is a {} sink: \
                         its copy of removed tenants' rows would stay",
                        sink.kind()
                    ),
                ));
            }
            if let Some(t) = self.tables.iter().find(|t| t.history) {
                return Err(JobSpecError::invalid(
                    "tenants.removed",
                    format!(
                        "\"delete\" is not supported with history tables: the versions of {} \
                         would stay",
                        t.name
                    ),
                ));
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            if table.is_pattern() {
                TablePattern::parse(&format!("tables[{i}]"), &table.name, &table.exclude)?;
            } else {
                check_table_name(&format!("tables[{i}].name"), &table.name)?;
                if !table.exclude.is_empty() {
                    return Err(JobSpecError::invalid(
                        format!("tables[{i}].exclude"),
                        format!(
                            "`{}` names one table; `exclude` goes with a pattern such as `{}.*`",
                            table.name,
                            table.schema()
                        ),
                    ));
                }
            }
            if let Some(column) = &table.tenant_column {
                check_column(&format!("tables[{i}].tenant_column"), column)?;
            }
            self.check_one_tenant_table(i, table)?;
            if let Some(column) = &table.valid_time_column {
                check_column(&format!("tables[{i}].valid_time_column"), column)?;
                if !table.history {
                    return Err(JobSpecError::invalid(
                        format!("tables[{i}].valid_time_column"),
                        "needs `history = true` on the same table",
                    ));
                }
            }
            if let Some(first) = seen.insert(&table.name, i) {
                return Err(JobSpecError::invalid(
                    format!("tables[{i}].name"),
                    format!("duplicate table `{}` (also tables[{first}])", table.name),
                ));
            }
        }

        if self.sinks.is_empty() {
            return Err(JobSpecError::invalid(
                "sinks",
                "must contain at least one sink",
            ));
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            match sink {
                SinkSpec::Postgres(pg) => check_dsn(&format!("sinks[{i}].dsn"), &pg.dsn)?,
                SinkSpec::Nats(n) => n.validate(&format!("sinks[{i}]"))?,
                SinkSpec::Parquet(pq) => {
                    if pq.root.trim().is_empty() {
                        return Err(JobSpecError::invalid(
                            format!("sinks[{i}].root"),
                            "must name a directory",
                        ));
                    }
                    if let Some(t) = self.tables.iter().position(|t| !t.history) {
                        return Err(JobSpecError::invalid(
                            format!("sinks[{i}].kind"),
                            format!(
                                "a parquet sink exports bi-temporal history: set `history = true` on tables[{t}] ({})",
                                self.tables[t].name
                            ),
                        ));
                    }
                }
            }
            let limits = sink.limits();
            for (name, value) in [
                ("max_rows_per_sec", limits.rows_per_sec),
                ("max_bytes_per_sec", limits.bytes_per_sec),
                ("tenant_max_rows_per_sec", limits.tenant_rows_per_sec),
                ("tenant_max_bytes_per_sec", limits.tenant_bytes_per_sec),
            ] {
                if value == Some(0) {
                    return Err(JobSpecError::invalid(
                        format!("sinks[{i}].{name}"),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
            }
            let rows = sink.batch_max_rows();
            if !(1..=MAX_BATCH_MAX_ROWS).contains(&rows) {
                return Err(JobSpecError::invalid(
                    format!("sinks[{i}].batch_max_rows"),
                    format!("must be between 1 and {MAX_BATCH_MAX_ROWS}, got {rows}"),
                ));
            }
            if let MaxInFlight::Fixed(in_flight) = sink.max_in_flight() {
                if !(1..=MAX_MAX_IN_FLIGHT).contains(&in_flight) {
                    return Err(JobSpecError::invalid(
                        format!("sinks[{i}].max_in_flight"),
                        format!(
                            "must be between 1 and {MAX_MAX_IN_FLIGHT} or \"auto\", got {in_flight}"
                        ),
                    ));
                }
            }
            if let SinkSpec::Parquet(p) = sink {
                let n = p.compact_min_files;
                if n == 1 || n > MAX_COMPACT_MIN_FILES {
                    return Err(JobSpecError::invalid(
                        format!("sinks[{i}].compact_min_files"),
                        format!(
                            "must be 0 (never compact) or between 2 and {MAX_COMPACT_MIN_FILES}, got {n}"
                        ),
                    ));
                }
            }
        }
        let has_postgres = self
            .sinks
            .iter()
            .any(|s| matches!(s, SinkSpec::Postgres(_)));
        let first_keeps_progress = match self.sinks.first() {
            Some(SinkSpec::Postgres(_)) => true,
            Some(SinkSpec::Parquet(_)) => !has_postgres,
            Some(SinkSpec::Nats(_)) | None => false,
        };
        if !first_keeps_progress {
            return Err(JobSpecError::invalid(
                "sinks[0].kind",
                if has_postgres {
                    "the first sink must be a postgres sink: it takes the initial copy and keeps \
                     the job's progress (and the history table versions are restored from)"
                } else {
                    "the first sink must be a postgres or parquet sink: it keeps the job's \
                     progress (a job without a postgres sink keeps it, and its history, in the \
                     first parquet sink's root)"
                },
            ));
        }
        self.qos.validate()?;
        if let TenantFilter::Only(ids) = &self.tenants.include {
            if let Some(t) = self.qos.tenants.keys().find(|t| !ids.contains(*t)) {
                return Err(JobSpecError::invalid(
                    "qos.tenants",
                    format!("tenant `{t}` has a tier but is not in tenants.include"),
                ));
            }
        }
        self.history.validate()
    }

    /// Rows the dataflow reads ahead of the sinks: `qos.max_buffered_rows` if set, else
    /// [`qos::DEFAULT_MAX_BUFFERED_ROWS`] or twice the largest Parquet sink's group if more
    /// (a Parquet sink writes groups of at most half the read-ahead, so the next group is
    /// read while one is written).
    pub fn read_ahead_rows(&self) -> usize {
        self.qos.max_buffered_rows.unwrap_or_else(|| {
            let largest_group = self
                .sinks
                .iter()
                .filter_map(|s| match s {
                    SinkSpec::Parquet(p) => Some(p.batch_max_rows),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            largest_group
                .saturating_mul(2)
                .clamp(qos::DEFAULT_MAX_BUFFERED_ROWS, qos::MAX_MAX_BUFFERED_ROWS)
        })
    }

    /// Bytes (estimated) the dataflow reads ahead of the sinks: `qos.max_buffered_mib` if
    /// set, else [`qos::DEFAULT_MAX_BUFFERED_MIB`] or the rows read ahead at
    /// [`qos::DEFAULT_BYTES_PER_ROW`] each if more (a Parquet sink's default read-ahead of
    /// 200,000 rows, so its groups are cut by rows, not bytes, at ordinary widths).
    pub fn read_ahead_bytes(&self) -> usize {
        match self.qos.max_buffered_mib {
            Some(mib) => mib << 20,
            None => (qos::DEFAULT_MAX_BUFFERED_MIB << 20).max(
                self.read_ahead_rows()
                    .saturating_mul(qos::DEFAULT_BYTES_PER_ROW),
            ),
        }
    }

    /// `tables[i].tenant` and `tables[i].tenant_from`: a one-tenant table names its
    /// tenant outright (one the job carries), a pattern of them takes it from the one `*`
    /// of its schema part; neither goes with a tenant column.
    fn check_one_tenant_table(&self, i: usize, table: &TableSpec) -> Result<(), JobSpecError> {
        let both = |field: &str| {
            JobSpecError::invalid(
                format!("tables[{i}].{field}"),
                "a one-tenant table has no tenant column: leave `tenant_column` out",
            )
        };
        if let Some(id) = &table.tenant {
            let field = format!("tables[{i}].tenant");
            if table.tenant_column.is_some() {
                return Err(both("tenant"));
            }
            if table.is_pattern() {
                return Err(JobSpecError::invalid(
                    field,
                    format!(
                        "`{}` is a pattern: its tables are not all one tenant's; \
                         `tenant_from = \"schema\"` takes each one's tenant from its schema",
                        table.name
                    ),
                ));
            }
            if id.is_empty() {
                return Err(JobSpecError::invalid(field, "must not be empty"));
            }
            if !self.includes_tenant(id) {
                return Err(JobSpecError::invalid(
                    field,
                    format!("tenant `{id}` is not in `tenants.include`"),
                ));
            }
        }
        if table.tenant_from.is_some() {
            let field = format!("tables[{i}].tenant_from");
            if table.tenant_column.is_some() {
                return Err(both("tenant_from"));
            }
            if table.tenant.is_some() {
                return Err(JobSpecError::invalid(
                    field,
                    "`tenant` names the table's tenant outright: set one of the two",
                ));
            }
            let schema = table.schema();
            if !table.is_pattern() || schema.matches('*').count() != 1 || schema.contains('?') {
                return Err(JobSpecError::invalid(
                    field,
                    format!(
                        "\"schema\" takes the tenant id from what the one `*` of the schema \
                         part matches (`tenant_*.orders`); `{}` has {} `*` and {} `?` there",
                        table.name,
                        schema.matches('*').count(),
                        schema.matches('?').count()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether any `tables[].name` is a pattern, resolved on the source at each start.
    pub fn has_table_patterns(&self) -> bool {
        self.tables.iter().any(TableSpec::is_pattern)
    }

    /// The tables that keep bi-temporal history.
    pub fn history_tables(&self) -> impl Iterator<Item = &TableSpec> {
        self.tables.iter().filter(|t| t.history)
    }

    /// Where the tenant id of `schema.table`'s rows comes from, or `None` if the table is
    /// not part of this job.
    pub fn tenant_key_for(&self, schema: &str, table: &str) -> Option<TenantKey> {
        self.tables
            .iter()
            .find(|t| t.schema() == schema && t.table() == table)
            .map(|t| self.tenant_key_of(t))
    }

    /// The tenant whose rows table `name` (as the spec names it) holds, when it is one
    /// tenant's whole table (`tenant = …`, or carried by a `tenant_from = "schema"`
    /// pattern): no other tenant has rows or history there.
    pub fn table_owner(&self, name: &str) -> Option<&str> {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.tenant.as_deref())
    }

    /// Where the tenant id of `table`'s rows comes from: the whole table's tenant, or its
    /// tenant column (its own, or the job's).
    pub fn tenant_key_of(&self, table: &TableSpec) -> TenantKey {
        match &table.tenant {
            Some(id) => TenantKey::Table(id.clone()),
            None => TenantKey::Column(
                table
                    .tenant_column
                    .clone()
                    .unwrap_or_else(|| self.tenants.column.clone()),
            ),
        }
    }

    /// Whether rows of `tenant` (the id as text) are replicated.
    pub fn includes_tenant(&self, tenant: &str) -> bool {
        self.tenants.include.includes(tenant)
    }

    /// The spec as a TOML document that [`JobSpec::from_toml_str`] reads back
    /// to an equal spec (for any spec that passes [`JobSpec::validate`]).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| {
            // Only reachable for values TOML cannot hold (an integer beyond
            // i64); such a spec does not validate anyway.
            format!(
                "# job spec `{}` cannot be written as TOML: {e}\n",
                self.name
            )
        })
    }
}

fn default_tenant_column() -> String {
    DEFAULT_TENANT_COLUMN.to_owned()
}

fn default_batch_max_rows() -> usize {
    DEFAULT_BATCH_MAX_ROWS
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option`
/// field: the key may be absent, but when present the value must be a `T`
/// (JSON `null` is rejected, as by the JSON Schema).
fn present<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

// ---------------------------------------------------------------------------
// Field checks

fn check_job_name(field: &str, name: &str) -> Result<(), JobSpecError> {
    let ok = (1..=MAX_JOB_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(JobSpecError::invalid(
            field,
            format!(
                "`{name}` is not a valid job name: expected 1-{MAX_JOB_NAME_LEN} characters \
                 of [a-z0-9_-] starting with a letter"
            ),
        ))
    }
}

/// A lower-case PostgreSQL identifier: `[a-z_][a-z0-9_]{0,62}`.
fn is_identifier(s: &str) -> bool {
    (1..=MAX_IDENTIFIER_LEN).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A part of a table name, or a column name: `[A-Za-z_][A-Za-z0-9_]{0,62}`.
pub(crate) fn is_name_part(s: &str) -> bool {
    (1..=MAX_IDENTIFIER_LEN).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_identifier(field: &str, s: &str) -> Result<(), JobSpecError> {
    if is_identifier(s) {
        Ok(())
    } else {
        Err(JobSpecError::invalid(
            field,
            format!("`{s}` is not a valid identifier: expected [a-z_][a-z0-9_]{{0,62}}"),
        ))
    }
}

/// A column name as the source's catalog spells it: `[A-Za-z_][A-Za-z0-9_]{0,62}`, case
/// kept (a column created as `"organizationId"`, as ORMs such as Prisma do, is named so).
fn check_column(field: &str, s: &str) -> Result<(), JobSpecError> {
    if is_name_part(s) {
        Ok(())
    } else {
        Err(JobSpecError::invalid(
            field,
            format!(
                "`{s}` is not a valid column name: expected [A-Za-z_][A-Za-z0-9_]{{0,62}}, \
                 as the source's catalog spells it"
            ),
        ))
    }
}

fn check_slot(field: &str, s: &str) -> Result<(), JobSpecError> {
    let ok = (1..=MAX_IDENTIFIER_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(JobSpecError::invalid(
            field,
            format!("`{s}` is not a valid replication slot name: expected [a-z0-9_]{{1,63}}"),
        ))
    }
}

fn check_table_name(field: &str, s: &str) -> Result<(), JobSpecError> {
    let ok = matches!(s.split_once('.'), Some((schema, table)) if is_name_part(schema) && is_name_part(table));
    if ok {
        Ok(())
    } else {
        Err(JobSpecError::invalid(
            field,
            format!(
                "`{s}` is not a schema-qualified table name: expected `schema.table`, \
                 each part [A-Za-z_][A-Za-z0-9_]{{0,62}}"
            ),
        ))
    }
}

fn check_dsn(field: &str, dsn: &Dsn) -> Result<(), JobSpecError> {
    if dsn.is_blank() {
        return Err(JobSpecError::invalid(field, "must not be empty"));
    }
    // The reason never quotes the DSN itself: it may hold a password.
    dsn.check_syntax()
        .map_err(|reason| JobSpecError::invalid(field, reason))?;
    // TLS settings no connection could meet (a bad `sslmode`), said now. The rest is
    // read when connecting: a stored spec holds a reference in place of its DSN.
    crate::pg_connect::TlsSettings::of_dsn(dsn.expose())
        .map(|_| ())
        .map_err(|e| JobSpecError::invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests;
