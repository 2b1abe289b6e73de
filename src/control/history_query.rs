//! As-of queries: one tenant's rows of a table as of a (system time, valid time) pair.
//!
//! The answer comes from the first place that holds every version that could answer it:
//! the job's in-memory version books (the hot window since the job started, minus what
//! was pruned), else the history table on the job's first target, else, for system times
//! before the retention horizon (history moved out of the history table), the Parquet
//! cold tier. Times in the future and times before the tenant's first version are refused
//! with a message saying why.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use crate::cdc::catalog;
use crate::change::{format_lsn, pg_now_micros, Cell, Lsn, Row, TableInfo};
use crate::control::job_control::{AsOfQuery, AsOfRows, ControlError, TimePoint};
use crate::control::job_runner::JobStats;
use crate::control::job_spec::{JobSpec, SinkSpec, TenantKey};
use crate::operators::version::{SysTime, SystemPoint, Version};
use crate::sinks::parquet::{read_table, ColdRow};
use crate::sinks::pg_apply::history::{first_version, load_versions, VersionFilter};
use crate::sinks::pg_apply::sink::connect;
use crate::sql_text::quote_literal;
use crate::time_text::format_rfc3339;

/// Where history older than a retention horizon lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// Closed versions with `system_to` before this (µs) left the history table.
    pub micros: i64,
    /// … and with `system_to_lsn` up to this LSN.
    pub lsn: Lsn,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ControlError {
    ControlError::Unavailable(format!("{what}: {e}"))
}

/// The job's first PostgreSQL sink (where the history table is) and its Parquet root.
pub fn history_places(spec: &JobSpec) -> (Option<String>, Option<String>) {
    let pg = spec.sinks.iter().find_map(|s| match s {
        SinkSpec::Postgres(p) => Some(p.dsn.expose().to_owned()),
        SinkSpec::Parquet(_) | SinkSpec::Nats(_) => None,
    });
    let parquet = spec.sinks.iter().find_map(|s| match s {
        SinkSpec::Parquet(p) => Some(p.root.clone()),
        SinkSpec::Postgres(_) | SinkSpec::Nats(_) => None,
    });
    (pg, parquet)
}

/// The table's current shape, read from the job's source.
pub async fn table_shape(spec: &JobSpec, table: &str) -> Result<TableInfo, ControlError> {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    let source = catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(|e| unavailable("source", e))?;
    catalog::table_info(&source, schema, name)
        .await
        .map_err(|e| unavailable("source catalog", e))
}

/// The source's current WAL position.
async fn source_wal_lsn(spec: &JobSpec) -> Result<Lsn, ControlError> {
    let source = catalog::connect(spec.source.dsn.expose())
        .await
        .map_err(|e| unavailable("source", e))?;
    let row = source
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .map_err(|e| unavailable("source", e))?;
    Ok(row.get::<_, i64>(0) as Lsn)
}

fn point_text(p: SystemPoint) -> String {
    match p {
        SystemPoint::Lsn(l) => format_lsn(l),
        SystemPoint::Micros(m) => format_rfc3339(m),
    }
}

/// Answers `query` for the job `spec` (which keeps the table's history for the tenant).
pub async fn rows_as_of(
    spec: &JobSpec,
    stats: &JobStats,
    query: &AsOfQuery,
    horizon: Option<Horizon>,
) -> Result<AsOfRows, ControlError> {
    let now = pg_now_micros();
    let system = match query.system {
        None => SystemPoint::Micros(now),
        Some(TimePoint::Micros(m)) => SystemPoint::Micros(m),
        Some(TimePoint::Lsn(l)) => SystemPoint::Lsn(l),
    };
    match system {
        SystemPoint::Micros(m) if m > now => {
            return Err(ControlError::Invalid {
                field: "system_time".into(),
                message: format!(
                    "{} is in the future (now is {}): nothing is known yet of that time",
                    format_rfc3339(m),
                    format_rfc3339(now)
                ),
            })
        }
        SystemPoint::Lsn(l) => {
            // What the stream last saw of the source's WAL; until it has seen anything
            // (just after a start) or when asked past it, the source itself tells.
            let mut seen = stats.reader.server_wal_end.load(Relaxed);
            if l > seen {
                seen = source_wal_lsn(spec).await?;
            }
            if l > seen {
                return Err(ControlError::Invalid {
                    field: "system_time".into(),
                    message: format!(
                        "LSN {} is past the source's current position {}: it is in the future",
                        format_lsn(l),
                        format_lsn(seen)
                    ),
                });
            }
        }
        _ => {}
    }
    let (Some(dsn), cold_root) = history_places(spec) else {
        return Err(ControlError::Missing(format!(
            "job `{}` has no postgres sink holding history",
            spec.name
        )));
    };
    let table = table_shape(spec, &query.table).await?;
    let tenant_key = spec
        .tenant_key_for(&table.schema, &table.name)
        .unwrap_or_else(|| TenantKey::Column(spec.tenants.column.clone()));
    let target = connect(&dsn).await.map_err(|e| unavailable("target", e))?;
    let first = first_version(&target, &table, &tenant_key, &query.tenant)
        .await
        .map_err(|e| unavailable("history table", e))?;
    let Some(first) = first else {
        return Err(ControlError::Missing(format!(
            "no history of tenant {}'s rows in {} is known yet",
            query.tenant, query.table
        )));
    };
    let before_first = match system {
        SystemPoint::Lsn(l) => l < first.lsn,
        SystemPoint::Micros(m) => m < first.micros,
    };
    if before_first && horizon.is_none() {
        return Err(ControlError::Missing(format!(
            "nothing was known of tenant {}'s rows in {} at {}: the first version is from {} ({})",
            query.tenant,
            query.table,
            point_text(system),
            format_rfc3339(first.micros),
            format_lsn(first.lsn)
        )));
    }
    let valid = match query.valid {
        Some(TimePoint::Micros(m)) => m,
        Some(TimePoint::Lsn(l)) => commit_time_at(&target, &table, l).await?.ok_or_else(|| {
            ControlError::Missing(format!(
                "valid_time {}: no transaction of {} at or before this LSN is in its history",
                format_lsn(l),
                query.table
            ))
        })?,
        None => match system {
            SystemPoint::Micros(m) => m,
            SystemPoint::Lsn(_) => now,
        },
    };
    let in_cold_tier = horizon.as_ref().is_some_and(|h| match system {
        SystemPoint::Lsn(l) => l < h.lsn,
        SystemPoint::Micros(m) => m < h.micros,
    });
    let (source, rows) = if let Some(rows) = (!in_cold_tier)
        .then(|| stats.books.as_of(&query.tenant, &table, system, valid))
        .flatten()
    {
        ("memory", rows)
    } else if in_cold_tier {
        let Some(root) = cold_root else {
            return Err(ControlError::Missing(format!(
                "history of {} before {} left the history table and job `{}` has no parquet sink",
                query.table,
                point_text(system),
                spec.name
            )));
        };
        let (_, cold) = read_table(Path::new(&root), &query.tenant, &table.qualified_name())
            .map_err(|e| unavailable("cold tier", e))?;
        let versions = versions_from_cold_rows(&table, &cold);
        ("cold_tier", visible_rows(&versions, system, valid))
    } else {
        let filter = format!(
            "{}::text = {}",
            tenant_key.sql(),
            quote_literal(&query.tenant)
        );
        let versions = load_versions(
            &target,
            &table,
            Some(&filter),
            VersionFilter::AsOf(system, valid),
        )
        .await
        .map_err(|e| unavailable("history table", e))?;
        let mut rows: Vec<Row> = versions.into_iter().map(|v| v.value).collect();
        rows.sort_by_key(|r| key_of(&table, r));
        ("history_table", rows)
    };
    let rows = only_key(&table, &tenant_key, &query.key, rows)?;
    Ok(AsOfRows {
        job: spec.name.clone(),
        tenant: query.tenant.clone(),
        table: query.table.clone(),
        system_time: point_text(system),
        valid_time: format_rfc3339(valid),
        source: source.into(),
        columns: table.columns.iter().map(|c| c.name.clone()).collect(),
        rows: rows
            .into_iter()
            .map(|r| r.iter().map(|c| c.as_text().map(str::to_owned)).collect())
            .collect(),
    })
}

/// The rows whose key columns other than the tenant column equal `key` (all rows when
/// `key` is empty); a count of values that does not match those columns is a 422.
fn only_key(
    table: &TableInfo,
    tenant_key: &TenantKey,
    key: &[String],
    rows: Vec<Row>,
) -> Result<Vec<Row>, ControlError> {
    if key.is_empty() {
        return Ok(rows);
    }
    let columns: Vec<usize> = table
        .key_columns()
        .into_iter()
        .filter(|&i| !tenant_key.is_column(&table.columns[i].name))
        .collect();
    if columns.len() != key.len() {
        let names: Vec<&str> = columns
            .iter()
            .map(|&i| table.columns[i].name.as_str())
            .collect();
        return Err(ControlError::Invalid {
            field: "key".into(),
            message: format!(
                "{} is keyed by ({}) within a tenant: give {} key value(s), got {}",
                table.qualified_name(),
                names.join(", "),
                columns.len(),
                key.len()
            ),
        });
    }
    Ok(rows
        .into_iter()
        .filter(|row| {
            columns
                .iter()
                .zip(key)
                .all(|(&i, value)| row.get(i).and_then(Cell::as_text) == Some(value.as_str()))
        })
        .collect())
}

fn key_of(table: &TableInfo, row: &Row) -> Row {
    table
        .key_columns()
        .iter()
        .map(|&i| row.get(i).cloned().unwrap_or(Cell::Null))
        .collect()
}

/// The commit time of the latest transaction at or before `lsn` in the table's history.
async fn commit_time_at(
    target: &tokio_postgres::Client,
    table: &TableInfo,
    lsn: Lsn,
) -> Result<Option<i64>, ControlError> {
    let history = crate::sql_text::quote_qualified(
        &table.schema,
        &crate::sinks::pg_apply::history::history_name(&table.name),
    );
    let sql = format!(
        "SELECT {} FROM {history} WHERE system_from_lsn <= $1::text::pg_lsn",
        crate::sinks::pg_apply::history::micros_sql("max(system_from)")
    );
    let row = target
        .query_one(&sql, &[&format_lsn(lsn)])
        .await
        .map_err(|e| unavailable("history table", e))?;
    Ok(row.get(0))
}

/// A cold-tier row's key cells (the columns `keys`) and all its cells.
pub fn cold_row_cells(keys: &[usize], r: &ColdRow) -> (Row, Row) {
    let value: Row = r
        .values
        .iter()
        .map(|v| v.as_deref().map_or(Cell::Null, Cell::text))
        .collect();
    let key: Row = keys
        .iter()
        .map(|&i| value.get(i).cloned().unwrap_or(Cell::Null))
        .collect();
    (key, value)
}

/// Rebuilds versions from cold-tier rows. The continuous sink writes an `open` row when a
/// version starts and a `close` row when it ends, an export one row per version (a
/// `close` one if it had ended); rows of one version (same key, valid start and system
/// start) merge, the `system_to` of any of them ending it.
pub fn versions_from_cold_rows(table: &TableInfo, rows: &[ColdRow]) -> Vec<Version<Row, Row>> {
    let keys = table.key_columns();
    let mut versions: BTreeMap<(Row, i64, Lsn), Version<Row, Row>> = BTreeMap::new();
    for r in rows {
        let (key, value) = cold_row_cells(&keys, r);
        let system_to = match (r.system_to, r.system_to_lsn) {
            (Some(micros), Some(lsn)) => Some(SysTime { lsn, micros }),
            _ => None,
        };
        let v = versions
            .entry((key.clone(), r.valid_from, r.system_from_lsn))
            .or_insert(Version {
                key,
                value,
                valid_from: r.valid_from,
                valid_to: r.valid_to,
                system_from: SysTime {
                    lsn: r.system_from_lsn,
                    micros: r.system_from,
                },
                system_to: None,
                tombstone: r.tombstone,
            });
        v.system_to = v.system_to.or(system_to);
    }
    versions.into_values().collect()
}

/// The rows of the versions visible at (`system`, `valid`), sorted by key; tombstones
/// hide nothing else (at most one version of a key is visible) and show no row.
pub fn visible_rows(versions: &[Version<Row, Row>], system: SystemPoint, valid: i64) -> Vec<Row> {
    let mut rows: Vec<(&Row, &Row)> = versions
        .iter()
        .filter(|v| !v.tombstone && v.visible_at(system, valid))
        .map(|v| (&v.key, &v.value))
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, v)| v.clone()).collect()
}
