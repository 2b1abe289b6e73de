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
//! [tenants]
//! column = "tenant_id"          # default
//! include = [3, 7]              # or "all"
//! [[tables]]
//! name = "public.orders"
//! tenant_column = "org_id"      # optional override
//! [[sinks]]
//! kind = "postgres"
//! dsn = "host=127.0.0.1 port=5433 user=postgres dbname=replica"
//! batch_max_rows = 5000         # default
//! ```
//!
//! Connection strings are [`Dsn`]s: their `Debug`/`Display` hide passwords,
//! so `{:?}` of a spec is safe to log.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

pub use super::secret::Dsn;

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
pub const SINK_KINDS: &[&str] = &["postgres"];
/// The `path` of a [`JobSpecError::Parse`] that concerns the whole document
/// (syntax errors, a document that is not a table/object).
pub const DOCUMENT_PATH: &str = "<document>";

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
}

/// The PostgreSQL database the job reads its change stream from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub dsn: Dsn,
    /// Publication name, `[a-z_][a-z0-9_]{0,62}`.
    pub publication: String,
    /// Replication slot name, `[a-z0-9_]{1,63}`.
    pub slot: String,
}

/// Which tenants the job replicates and where their id lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Tenant id column, unless a table overrides it. Default `tenant_id`.
    #[serde(default = "default_tenant_column")]
    pub column: String,
    pub include: TenantFilter,
}

/// `"all"`, or a list of tenant ids. Ids are compared as text: integers in
/// the document become their decimal text (`3` and `"3"` are the same id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantFilter {
    All,
    Only(BTreeSet<String>),
}

/// One replicated table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// `schema.table`, each part `[A-Za-z_][A-Za-z0-9_]{0,62}`.
    pub name: String,
    /// Overrides `tenants.column` for this table.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tenant_column: Option<String>,
}

impl TableSpec {
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

/// Where the job writes. Deserialization is hand-written (see
/// the private `RawSink`) so that errors inside a sink keep their field path, which
/// serde's internally tagged enums lose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkSpec {
    Postgres(PostgresSinkSpec),
}

impl SinkSpec {
    /// The `kind` as written in the document.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Postgres(_) => "postgres",
        }
    }
}

/// A PostgreSQL database the job applies changes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSpec {
    pub dsn: Dsn,
    /// Rows per applied batch, `1..=1_000_000`. Default 5000.
    #[serde(default = "default_batch_max_rows")]
    pub batch_max_rows: usize,
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

    /// Checks everything the types do not: names, identifiers, DSNs, counts,
    /// uniqueness, ranges. Returns the first problem found.
    pub fn validate(&self) -> Result<(), JobSpecError> {
        check_job_name("name", &self.name)?;

        check_dsn("source.dsn", &self.source.dsn)?;
        check_identifier("source.publication", &self.source.publication)?;
        check_slot("source.slot", &self.source.slot)?;

        check_identifier("tenants.column", &self.tenants.column)?;
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
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            check_table_name(&format!("tables[{i}].name"), &table.name)?;
            if let Some(column) = &table.tenant_column {
                check_identifier(&format!("tables[{i}].tenant_column"), column)?;
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
                SinkSpec::Postgres(pg) => {
                    check_dsn(&format!("sinks[{i}].dsn"), &pg.dsn)?;
                    if !(1..=MAX_BATCH_MAX_ROWS).contains(&pg.batch_max_rows) {
                        return Err(JobSpecError::invalid(
                            format!("sinks[{i}].batch_max_rows"),
                            format!(
                                "must be between 1 and {MAX_BATCH_MAX_ROWS}, got {}",
                                pg.batch_max_rows
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The tenant id column of `schema.table`, or `None` if the table is not
    /// part of this job.
    pub fn tenant_column_for(&self, schema: &str, table: &str) -> Option<&str> {
        self.tables
            .iter()
            .find(|t| t.schema() == schema && t.table() == table)
            .map(|t| t.tenant_column.as_deref().unwrap_or(&self.tenants.column))
    }

    /// Whether rows of `tenant` (the id as text) are replicated.
    pub fn includes_tenant(&self, tenant: &str) -> bool {
        match &self.tenants.include {
            TenantFilter::All => true,
            TenantFilter::Only(ids) => ids.contains(tenant),
        }
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
// Tenant filter (de)serialization: "all" | [int | string, ...]

impl Serialize for TenantFilter {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self {
            TenantFilter::All => ser.serialize_str("all"),
            TenantFilter::Only(ids) => {
                let mut seq = ser.serialize_seq(Some(ids.len()))?;
                for id in ids {
                    // Ids that are the decimal text of an i64 are written as
                    // integers (they read back to the same text).
                    match id.parse::<i64>() {
                        Ok(n) if n.to_string() == *id => seq.serialize_element(&n)?,
                        _ => seq.serialize_element(id)?,
                    }
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TenantFilter {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(TenantFilterVisitor)
    }
}

struct TenantFilterVisitor;

impl<'de> Visitor<'de> for TenantFilterVisitor {
    type Value = TenantFilter;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"all\" or an array of tenant ids (integers or strings)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v == "all" {
            Ok(TenantFilter::All)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = BTreeSet::new();
        while let Some(TenantId(id)) = seq.next_element()? {
            if ids.contains(&id) {
                return Err(de::Error::custom(format_args!(
                    "duplicate tenant id `{id}`"
                )));
            }
            ids.insert(id);
        }
        Ok(TenantFilter::Only(ids))
    }
}

/// One element of `tenants.include`, as text.
struct TenantId(String);

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TenantId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tenant id (integer or string)")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TenantId, E> {
                Ok(TenantId(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TenantId, E> {
                Ok(TenantId(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TenantId, E> {
                Ok(TenantId(v.to_owned()))
            }
        }
        de.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Sink deserialization

/// The union of every sink kind's fields. Deserializing through a plain
/// struct (instead of serde's internally tagged enum, which buffers its
/// content) keeps `serde_path_to_error` paths such as
/// `sinks[0].batch_max_rows` and rejects unknown keys by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: SinkKind,
    #[serde(default, deserialize_with = "present")]
    dsn: Option<Dsn>,
    #[serde(default, deserialize_with = "present")]
    batch_max_rows: Option<usize>,
}

enum SinkKind {
    Postgres,
}

impl<'de> Deserialize<'de> for SinkKind {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let kind = String::deserialize(de)?;
        match kind.as_str() {
            "postgres" => Ok(SinkKind::Postgres),
            other => Err(de::Error::custom(format_args!(
                "unknown sink kind `{other}`, known kinds: {}",
                SINK_KINDS.join(", ")
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for SinkSpec {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let raw = RawSink::deserialize(de)?;
        match raw.kind {
            SinkKind::Postgres => Ok(SinkSpec::Postgres(PostgresSinkSpec {
                dsn: raw.dsn.ok_or_else(|| de::Error::missing_field("dsn"))?,
                batch_max_rows: raw.batch_max_rows.unwrap_or(DEFAULT_BATCH_MAX_ROWS),
            })),
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// Renders a `serde_path_to_error` path as `sinks[0].kind`; the root is "".
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Builds a parse error, making sure the path names the field itself: serde
/// reports a missing field at the enclosing table (`source`), so the field
/// named in the message is appended (`source.dsn`). Unknown keys already
/// carry their own name in the path.
fn parse_error(mut path: String, message: String) -> JobSpecError {
    if let Some(field) = backticked_after(&message, "missing field `") {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field);
    }
    if path.is_empty() {
        path = DOCUMENT_PATH.to_owned();
    }
    JobSpecError::Parse { path, message }
}

fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// A TOML error's message with its position, on one line.
fn toml_message(doc: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) if span.start <= doc.len() => {
            let (line, column) = line_column(doc, span.start);
            format!("{} (line {line}, column {column})", e.message())
        }
        _ => e.message().to_owned(),
    }
}

fn line_column(doc: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset;
    while !doc.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &doc[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
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

/// A part of a table name: `[A-Za-z_][A-Za-z0-9_]{0,62}`.
fn is_name_part(s: &str) -> bool {
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
        .map_err(|reason| JobSpecError::invalid(field, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TENANTS_3_7: &str = include_str!("../../dataflows/tenants_3_7.toml");
    const ALL_TENANTS: &str = include_str!("../../dataflows/all_tenants.toml");
    const DEMO: &str = include_str!("../../dataflows/demo.toml");

    const VALID: &str = r#"
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

    /// `VALID` with `from` replaced by `to` (which must occur exactly once).
    fn valid_with(from: &str, to: &str) -> String {
        assert_eq!(VALID.matches(from).count(), 1, "{from}");
        VALID.replace(from, to)
    }

    #[track_caller]
    fn expect_err(doc: &str, field: &str) -> JobSpecError {
        let err = JobSpec::from_toml_str(doc).expect_err("document should be rejected");
        assert_eq!(err.field(), field, "{err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("job spec: {field}: ")),
            "Display should name {field}: {shown}"
        );
        err
    }

    #[test]
    fn example_tenants_3_7() {
        let spec = JobSpec::from_toml_str(TENANTS_3_7).unwrap();
        assert_eq!(spec.name, "tenants-3-7");
        assert_eq!(spec.tables.len(), 2);
        assert_eq!(spec.sinks.len(), 1);
        assert!(spec.includes_tenant("3"));
        assert!(spec.includes_tenant("7"));
        assert!(!spec.includes_tenant("4"));
        assert_eq!(
            spec.tenants.include,
            TenantFilter::Only(["3".to_owned(), "7".to_owned()].into())
        );
        let SinkSpec::Postgres(pg) = &spec.sinks[0];
        assert_eq!(pg.batch_max_rows, DEFAULT_BATCH_MAX_ROWS);
    }

    #[test]
    fn example_all_tenants() {
        let spec = JobSpec::from_toml_str(ALL_TENANTS).unwrap();
        assert_eq!(spec.tenants.include, TenantFilter::All);
        assert!(spec.includes_tenant("anything"));
        let overridden = spec
            .tables
            .iter()
            .filter(|t| t.tenant_column.is_some())
            .count();
        assert_eq!(overridden, 1);
        assert_eq!(spec.tenant_column_for("public", "invoices"), Some("org_id"));
        assert_eq!(
            spec.tenant_column_for("public", "customers"),
            Some(DEFAULT_TENANT_COLUMN)
        );
        assert_eq!(spec.tenant_column_for("public", "nope"), None);
    }

    #[test]
    fn example_demo() {
        let spec = JobSpec::from_toml_str(DEMO).unwrap();
        let names: Vec<_> = spec.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["app.accounts", "app.orders", "app.events"]);
        let TenantFilter::Only(ids) = &spec.tenants.include else {
            panic!("demo lists tenants");
        };
        assert_eq!(ids.len(), 5);
        assert!(ids
            .iter()
            .all(|id| (1..=24).contains(&id.parse::<u32>().unwrap())));
        assert!(spec.source.dsn.expose().contains("localhost"));
        let SinkSpec::Postgres(pg) = &spec.sinks[0];
        assert!(pg.dsn.expose().contains("localhost"));
    }

    #[test]
    fn examples_round_trip_through_toml_and_json() {
        for doc in [TENANTS_3_7, ALL_TENANTS, DEMO, VALID] {
            let spec = JobSpec::from_toml_str(doc).unwrap();
            let toml = spec.to_toml_string();
            assert_eq!(JobSpec::from_toml_str(&toml).unwrap(), spec, "{toml}");
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec, "{json}");
        }
    }

    #[test]
    fn defaults_apply() {
        let spec = JobSpec::from_toml_str(VALID).unwrap();
        assert_eq!(spec.tenants.column, DEFAULT_TENANT_COLUMN);
        assert_eq!(spec.tables[0].tenant_column, None);
        assert_eq!(spec.tables[0].schema(), "public");
        assert_eq!(spec.tables[0].table(), "orders");
        assert_eq!(
            spec.tenant_column_for("public", "orders"),
            Some("tenant_id")
        );
        let SinkSpec::Postgres(pg) = &spec.sinks[0];
        assert_eq!(pg.batch_max_rows, DEFAULT_BATCH_MAX_ROWS);
        assert_eq!(spec.sinks[0].kind(), "postgres");
    }

    #[test]
    fn json_form_parses() {
        let json = r#"{
            "name": "t",
            "source": {"dsn": "postgresql://u:pw@h/db", "publication": "p", "slot": "s"},
            "tenants": {"column": "org", "include": ["acme", 12]},
            "tables": [{"name": "s.t", "tenant_column": "org_id"}],
            "sinks": [{"batch_max_rows": 10, "dsn": "host=h", "kind": "postgres"}]
        }"#;
        let spec = JobSpec::from_json_str(json).unwrap();
        assert!(spec.includes_tenant("acme"));
        assert!(spec.includes_tenant("12"));
        assert_eq!(spec.tenant_column_for("s", "t"), Some("org_id"));
        let SinkSpec::Postgres(pg) = &spec.sinks[0];
        assert_eq!(pg.batch_max_rows, 10);
    }

    #[test]
    fn missing_source_dsn() {
        let err = expect_err(
            &valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\n",
                "",
            ),
            "source.dsn",
        );
        assert!(err.to_string().contains("missing field `dsn`"), "{err}");
        assert!(matches!(err, JobSpecError::Parse { .. }));
    }

    #[test]
    fn missing_sink_dsn_and_kind_and_top_level_fields() {
        expect_err(
            &valid_with(
                "dsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
                "",
            ),
            "sinks[0].dsn",
        );
        expect_err(&valid_with("kind = \"postgres\"\n", ""), "sinks[0].kind");
        expect_err(&valid_with("name = \"t\"\n", ""), "name");
        expect_err(&valid_with("include = [3, 7]\n", ""), "tenants.include");
    }

    #[test]
    fn empty_dsn() {
        let err = expect_err(
            &valid_with(
                "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
                "dsn = \"\"",
            ),
            "source.dsn",
        );
        assert_eq!(err.to_string(), "job spec: source.dsn: must not be empty");
        expect_err(
            &valid_with("host=127.0.0.1 port=5433", "not a dsn"),
            "sinks[0].dsn",
        );
    }

    #[test]
    fn unknown_sink_kind() {
        let err = expect_err(
            &valid_with("kind = \"postgres\"", "kind = \"kafka\""),
            "sinks[0].kind",
        );
        let shown = err.to_string();
        assert!(
            shown.contains("kafka") && shown.contains("postgres"),
            "{shown}"
        );
        // Order of keys does not matter, and JSON reports the same path.
        let json = r#"{"name":"t","source":{"dsn":"host=h","publication":"p","slot":"s"},
            "tenants":{"include":"all"},"tables":[{"name":"a.b"}],
            "sinks":[{"kind":"postgres","dsn":"host=h"},{"dsn":"host=h","kind":"kafka"}]}"#;
        let err = JobSpec::from_json_str(json).unwrap_err();
        assert_eq!(err.field(), "sinks[1].kind", "{err}");
    }

    #[test]
    fn wrong_types() {
        let doc = valid_with(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nbatch_max_rows = \"many\"",
        );
        let err = expect_err(&doc, "sinks[0].batch_max_rows");
        assert!(err.to_string().contains("many"), "{err}");
        expect_err(&valid_with("name = \"t\"", "name = 5"), "name");
        expect_err(
            &valid_with("publication = \"pub_t\"", "publication = true"),
            "source.publication",
        );
        expect_err(
            &valid_with("include = [3, 7]", "include = [3, true]"),
            "tenants.include[1]",
        );
        expect_err(
            &valid_with("include = [3, 7]", "include = \"ALL\""),
            "tenants.include",
        );
        expect_err(
            &valid_with("include = [3, 7]", "include = 3"),
            "tenants.include",
        );
        let doc = valid_with("[[tables]]\nname = \"public.orders\"\n", "")
            .replace("name = \"t\"\n", "name = \"t\"\ntables = \"x\"\n");
        expect_err(&doc, "tables");
        let err = JobSpec::from_json_str(r#"{"name": null}"#).unwrap_err();
        assert_eq!(err.field(), "name", "{err}");
    }

    #[test]
    fn negative_batch_max_rows() {
        let doc = valid_with(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nbatch_max_rows = -1",
        );
        expect_err(&doc, "sinks[0].batch_max_rows");
    }

    #[test]
    fn unknown_keys() {
        let err = expect_err(
            &valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\npasswd = \"x\""),
            "source.passwd",
        );
        assert!(
            err.to_string().contains("source.passwd: unknown field"),
            "{err}"
        );
        expect_err(
            &valid_with("name = \"t\"", "name = \"t\"\nverbose = true"),
            "verbose",
        );
        expect_err(
            &valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\nsource = 1"),
            "source.source",
        );
        expect_err(
            &valid_with("kind = \"postgres\"", "kind = \"postgres\"\nbatch = 3"),
            "sinks[0].batch",
        );
        expect_err(
            &valid_with(
                "name = \"public.orders\"",
                "name = \"public.orders\"\nwhere = \"x\"",
            ),
            "tables[0].where",
        );
        let json = r#"{"name":"t","source":{"dsn":"host=h","publication":"p","slot":"s","extra":1},
            "tenants":{"include":"all"},"tables":[{"name":"a.b"}],"sinks":[{"kind":"postgres","dsn":"host=h"}]}"#;
        let err = JobSpec::from_json_str(json).unwrap_err();
        assert_eq!(err.field(), "source.extra", "{err}");
    }

    #[test]
    fn bad_names() {
        for slot in ["Slot", "", "has-dash", "a.b", &"s".repeat(64)] {
            expect_err(
                &valid_with("slot = \"slot_t\"", &format!("slot = \"{slot}\"")),
                "source.slot",
            );
        }
        assert!(
            JobSpec::from_toml_str(&valid_with("slot = \"slot_t\"", "slot = \"9_slot\"")).is_ok()
        );
        for publication in ["9pub", "Pub", "p-q", ""] {
            expect_err(
                &valid_with(
                    "publication = \"pub_t\"",
                    &format!("publication = \"{publication}\""),
                ),
                "source.publication",
            );
        }
        for name in ["T", "1abc", "-a", "", "a b", &"a".repeat(49)] {
            expect_err(
                &valid_with("name = \"t\"", &format!("name = \"{name}\"")),
                "name",
            );
        }
        assert!(JobSpec::from_toml_str(&valid_with(
            "name = \"t\"",
            &format!("name = \"{}\"", "a".repeat(48))
        ))
        .is_ok());
        for table in [
            "orders",
            "a.b.c",
            "\\\"public\\\".orders",
            "public. orders",
            "public.",
            ".x",
            "1s.t",
        ] {
            expect_err(
                &valid_with("name = \"public.orders\"", &format!("name = \"{table}\"")),
                "tables[0].name",
            );
        }
        assert!(JobSpec::from_toml_str(&valid_with(
            "name = \"public.orders\"",
            "name = \"App.Orders_2\""
        ))
        .is_ok());
        expect_err(
            &valid_with("include = [3, 7]", "column = \"Org\"\ninclude = [3, 7]"),
            "tenants.column",
        );
        expect_err(
            &valid_with(
                "name = \"public.orders\"",
                "name = \"public.orders\"\ntenant_column = \"a b\"",
            ),
            "tables[0].tenant_column",
        );
    }

    #[test]
    fn duplicate_tables() {
        let doc = valid_with(
            "[[tables]]\nname = \"public.orders\"",
            "[[tables]]\nname = \"public.orders\"\n[[tables]]\nname = \"public.items\"\n[[tables]]\nname = \"public.orders\"",
        );
        let err = expect_err(&doc, "tables[2].name");
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert!(matches!(err, JobSpecError::Invalid { .. }));
    }

    #[test]
    fn duplicate_tenant_ids() {
        for include in ["[3, 3]", "[3, \"3\"]", "[\"a\", \"b\", \"a\"]"] {
            let err = expect_err(
                &valid_with("include = [3, 7]", &format!("include = {include}")),
                "tenants.include",
            );
            assert!(err.to_string().contains("duplicate tenant id"), "{err}");
        }
    }

    #[test]
    fn empty_include_and_empty_lists() {
        let err = expect_err(
            &valid_with("include = [3, 7]", "include = []"),
            "tenants.include",
        );
        assert!(matches!(err, JobSpecError::Invalid { .. }));
        expect_err(
            &valid_with("include = [3, 7]", "include = [\"\"]"),
            "tenants.include",
        );
        let doc = valid_with("[[tables]]\nname = \"public.orders\"\n", "")
            .replace("name = \"t\"\n", "name = \"t\"\ntables = []\n");
        expect_err(&doc, "tables");
        let doc = valid_with(
            "[[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
            "",
        )
        .replace("name = \"t\"\n", "name = \"t\"\nsinks = []\n");
        expect_err(&doc, "sinks");
    }

    #[test]
    fn batch_max_rows_range() {
        for bad in ["0", "1000001"] {
            let doc = valid_with(
                "kind = \"postgres\"",
                &format!("kind = \"postgres\"\nbatch_max_rows = {bad}"),
            );
            let err = expect_err(&doc, "sinks[0].batch_max_rows");
            assert!(matches!(err, JobSpecError::Invalid { .. }));
        }
        for good in ["1", "1000000"] {
            let doc = valid_with(
                "kind = \"postgres\"",
                &format!("kind = \"postgres\"\nbatch_max_rows = {good}"),
            );
            assert!(JobSpec::from_toml_str(&doc).is_ok(), "{good}");
        }
    }

    #[test]
    fn syntax_errors_concern_the_document() {
        let err = JobSpec::from_toml_str("name = \n").unwrap_err();
        assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
        let err = JobSpec::from_json_str("[]").unwrap_err();
        assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
        let err = JobSpec::from_json_str(&format!(
            "{} x",
            serde_json::to_string(&JobSpec::from_toml_str(VALID).unwrap()).unwrap()
        ))
        .unwrap_err();
        assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
    }

    #[test]
    fn debug_of_spec_hides_passwords() {
        let doc = valid_with(
            "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
            "dsn = \"host=h password='top secret' dbname=app\"",
        );
        let spec = JobSpec::from_toml_str(&doc).unwrap();
        assert!(!format!("{spec:?}").contains("secret"));
        assert!(spec.to_toml_string().contains("top secret"));
        let doc = valid_with(
            "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
            "dsn = \"host=h password='hunter2\"",
        );
        let err = JobSpec::from_toml_str(&doc).unwrap_err();
        assert_eq!(err.field(), "source.dsn");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn toml_output_writes_integer_ids_as_integers() {
        let mut spec = JobSpec::from_toml_str(VALID).unwrap();
        spec.tenants.include =
            TenantFilter::Only(["7".into(), "acme".into(), "007".into(), "-2".into()].into());
        let toml = spec.to_toml_string();
        assert!(
            toml.contains(r#"include = [-2, "007", 7, "acme"]"#),
            "{toml}"
        );
        assert_eq!(JobSpec::from_toml_str(&toml).unwrap(), spec);
    }

    // --- property: parse(to_toml(spec)) == spec -------------------------------

    fn identifier() -> impl Strategy<Value = String> {
        "[a-z_][a-z0-9_]{0,62}"
    }

    fn dsn() -> impl Strategy<Value = Dsn> {
        prop_oneof![
            (identifier(), 1u16.., "[ -~]{0,12}").prop_map(|(db, port, password)| {
                let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
                Dsn::new(format!(
                    "host=db.example port={port} dbname={db} password='{quoted}'"
                ))
            }),
            ("[a-z]{1,8}", "[A-Za-z0-9%]{1,10}", identifier()).prop_map(|(user, pass, db)| {
                Dsn::new(format!("postgresql://{user}:{pass}@localhost:5432/{db}"))
            }),
        ]
    }

    fn tenant_filter() -> impl Strategy<Value = TenantFilter> {
        let id = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            "\\PC{1,12}",
            "[0-9]{1,4}",
        ];
        prop_oneof![
            Just(TenantFilter::All),
            proptest::collection::btree_set(id, 1..8).prop_map(TenantFilter::Only),
        ]
    }

    fn tables() -> impl Strategy<Value = Vec<TableSpec>> {
        let name = ("[A-Za-z_][A-Za-z0-9_]{0,20}", "[A-Za-z_][A-Za-z0-9_]{0,20}")
            .prop_map(|(s, t)| format!("{s}.{t}"));
        proptest::collection::btree_set(name, 1..5).prop_flat_map(|names| {
            let n = names.len();
            proptest::collection::vec(proptest::option::of(identifier()), n).prop_map(
                move |columns| {
                    names
                        .iter()
                        .zip(columns)
                        .map(|(name, tenant_column)| TableSpec {
                            name: name.clone(),
                            tenant_column,
                        })
                        .collect()
                },
            )
        })
    }

    fn job_spec() -> impl Strategy<Value = JobSpec> {
        let sink = (dsn(), 1..=MAX_BATCH_MAX_ROWS).prop_map(|(dsn, batch_max_rows)| {
            SinkSpec::Postgres(PostgresSinkSpec {
                dsn,
                batch_max_rows,
            })
        });
        (
            "[a-z][a-z0-9_-]{0,47}",
            (dsn(), identifier(), "[a-z0-9_]{1,63}"),
            (identifier(), tenant_filter()),
            tables(),
            proptest::collection::vec(sink, 1..3),
        )
            .prop_map(
                |(name, (dsn, publication, slot), (column, include), tables, sinks)| JobSpec {
                    name,
                    source: SourceSpec {
                        dsn,
                        publication,
                        slot,
                    },
                    tenants: TenantSpec { column, include },
                    tables,
                    sinks,
                },
            )
    }

    proptest! {
        #[test]
        fn toml_round_trip(spec in job_spec()) {
            prop_assert!(spec.validate().is_ok(), "{:?}", spec.validate());
            let toml = spec.to_toml_string();
            let back = JobSpec::from_toml_str(&toml);
            prop_assert!(back.is_ok(), "{:?}\n{}", back, toml);
            prop_assert_eq!(back.unwrap(), spec);
        }

        #[test]
        fn json_round_trip(spec in job_spec()) {
            let json = serde_json::to_string(&spec).unwrap();
            prop_assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
        }
    }
}
