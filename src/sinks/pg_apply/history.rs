//! The history table of a table that keeps bi-temporal versions: `<schema>.<table>_history`
//! on the target, with the source's columns (same types, no constraints) plus
//! `valid_from`, `valid_to`, `system_from`, `system_to` (timestamptz; `NULL` = open-ended),
//! `system_from_lsn`, `system_to_lsn` (pg_lsn), `op` (the change that opened the
//! version) and `tombstone` (the version is a deletion: no row is valid over its interval;
//! it holds only the key and tenant cells). Written in the same transaction as the current-state apply and checkpoint.
//!
//! Opened versions are inserted, closed ones get their `system_to` (see
//! [`crate::sinks::versions`] for how a batch's events become those rows).

use md5::{Digest, Md5};
use tokio_postgres::{GenericClient, Transaction};

use crate::change::{format_lsn, Cell, HistoryEvent, Lsn, Row, TableInfo};
use crate::control::job_spec::{TenantFilter, TenantKey};
use crate::operators::version::{SysTime, SystemPoint, Version};
use crate::sinks::pg_apply::execute::{run, ConnectionCache};
use crate::sinks::pg_apply::statements::{cell_text, unnest_of, Param, Statement};
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::pg_apply::target_schema::ensure_shape;
use crate::sinks::versions::{plan_history, CloseRow, OpenRow};
use crate::sinks::SinkError;
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};
use crate::time_text::{format_timestamptz, PG_EPOCH_UNIX_MICROS};

/// The suffix of history table names.
pub const HISTORY_SUFFIX: &str = "_history";

/// The columns every history table has after the source's, with their types.
pub const HISTORY_COLUMNS: &[(&str, &str)] = &[
    ("valid_from", "timestamp with time zone"),
    ("valid_to", "timestamp with time zone"),
    ("system_from", "timestamp with time zone"),
    ("system_to", "timestamp with time zone"),
    ("system_from_lsn", "pg_lsn"),
    ("system_to_lsn", "pg_lsn"),
    ("op", "text"),
    ("tombstone", "boolean NOT NULL DEFAULT false"),
];

/// The history table's name for a source table name.
pub fn history_name(table: &str) -> String {
    format!("{table}{HISTORY_SUFFIX}")
}

/// Why `table` cannot keep history, if it cannot.
pub fn history_problem(table: &TableInfo) -> Option<String> {
    if table.key_columns().is_empty() {
        return Some(format!(
            "{} has no primary key or replica identity index: history needs a key to follow rows by",
            table.qualified_name()
        ));
    }
    if let Some((c, _)) = HISTORY_COLUMNS
        .iter()
        .find(|(c, _)| table.column_index(c).is_some())
    {
        return Some(format!(
            "{} has a column named `{c}`, which its history table uses for time",
            table.qualified_name()
        ));
    }
    if history_name(&table.name).len() > 63 {
        return Some(format!(
            "the history table name of {} would be longer than 63 bytes",
            table.qualified_name()
        ));
    }
    None
}

/// The history table as a shape with the source's columns and no key.
fn history_shape(table: &TableInfo) -> TableInfo {
    let mut shape = table.clone();
    shape.name = history_name(&table.name);
    shape.primary_key.clear();
    shape
}

fn index_name(table: &TableInfo, what: &str) -> String {
    let digest = Md5::digest(table.qualified_name().as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("helios_hist_{hex}_{what}")
}

/// Whether `cache` knows `table_name`'s history table in `table`'s shape, so nothing needs
/// creating or changing before its versions are written.
pub(super) fn history_shape_known(
    cache: &ConnectionCache,
    table_name: &str,
    table: &TableInfo,
) -> bool {
    cache
        .history_shapes
        .get(table_name)
        .is_some_and(|known| **known == *table)
}

/// Writes one table's history events: opened versions inserted, closed ones closed; the
/// bytes of their values are added to `bytes`.
pub(super) async fn write_history(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    table_name: &str,
    events: &[&HistoryEvent],
    bytes: &mut u64,
) -> Result<(), SinkError> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    // The latest shape of the batch (a schema change mid-batch only adds columns).
    let table = &last.table;
    if !history_shape_known(cache, table_name, table) {
        ensure_history_shape(tx, table).await?;
        cache
            .history_shapes
            .insert(table_name.to_owned(), table.clone());
    }
    for stmt in history_statements(table, events) {
        run(tx, cache, bytes, stmt).await?;
    }
    Ok(())
}

/// The statements writing `events` (of one table whose latest shape is `table`): opened
/// versions inserted, then closed ones closed.
pub(super) fn history_statements<'a>(
    table: &TableInfo,
    events: &[&'a HistoryEvent],
) -> Vec<Statement<'a>> {
    let (opens, closes) = plan_history(events);
    let mut out = Vec::with_capacity(2);
    if !opens.is_empty() {
        out.push(insert_versions(table, &opens));
    }
    if !closes.is_empty() {
        out.push(close_versions(table, &closes));
    }
    out
}

/// Creates or alters the history table of `table` to its shape.
pub async fn ensure_history_shape(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<(), SinkError> {
    let shape = history_shape(table);
    ensure_shape(client, &shape).await?;
    let name = quote_qualified(&shape.schema, &shape.name);
    let mut ddl: Vec<String> = HISTORY_COLUMNS
        .iter()
        .map(|(c, ty)| format!("ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {c} {ty}"))
        .collect();
    let key: Vec<String> = table
        .key_columns()
        .iter()
        .map(|&i| quote_ident(&table.columns[i].name))
        .collect();
    ddl.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {name} ({}, valid_from, system_from_lsn)",
        index_name(table, "key"),
        key.join(", ")
    ));
    ddl.push(format!(
        "CREATE INDEX IF NOT EXISTS {} ON {name} (system_from_lsn)",
        index_name(table, "sys")
    ));
    for sql in ddl {
        client.batch_execute(&sql).await.map_err(|e| {
            sink_error(
                &format!("create the history table of {}", table.qualified_name()),
                &e,
            )
        })?;
    }
    Ok(())
}

fn times(values: impl Iterator<Item = Option<i64>>) -> Param<'static> {
    Param::Column(values.map(|v| v.map(format_timestamptz)).collect())
}

fn lsns(values: impl Iterator<Item = u64>) -> Param<'static> {
    Param::Column(values.map(|l| Some(format_lsn(l))).collect())
}

/// `INSERT` of opened versions.
pub fn insert_versions<'a>(table: &TableInfo, rows: &[OpenRow<'a>]) -> Statement<'a> {
    versions_insert(table, rows, false)
}

/// `INSERT` of the opened versions the history table lacks: those no row of it names
/// (key, valid start and opening LSN), for mending it from another record of them.
pub fn insert_missing_versions<'a>(table: &TableInfo, rows: &[OpenRow<'a>]) -> Statement<'a> {
    versions_insert(table, rows, true)
}

/// [`insert_versions`], or with `only_missing` [`insert_missing_versions`].
fn versions_insert<'a>(
    table: &TableInfo,
    rows: &[OpenRow<'a>],
    only_missing: bool,
) -> Statement<'a> {
    let n = table.columns.len();
    let mut names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut values: Vec<String> = (0..n)
        .map(|i| format!("v.c{i}::{}", table.columns[i].type_name))
        .collect();
    let mut params: Vec<Param> = (0..n)
        .map(|i| Param::Cells(rows.iter().map(|r| cell_text(r.row.get(i))).collect()))
        .collect();
    for (name, ty) in [
        ("valid_from", "timestamptz"),
        ("valid_to", "timestamptz"),
        ("system_from", "timestamptz"),
        ("system_from_lsn", "pg_lsn"),
        ("op", "text"),
        ("tombstone", "boolean"),
    ] {
        values.push(format!("v.c{}::{ty}", names.len()));
        names.push(name.to_owned());
    }
    params.push(times(rows.iter().map(|r| Some(r.valid_from))));
    params.push(times(rows.iter().map(|r| r.valid_to)));
    params.push(times(rows.iter().map(|r| Some(r.system_from.micros))));
    params.push(lsns(rows.iter().map(|r| r.system_from.lsn)));
    params.push(Param::Column(
        rows.iter().map(|r| Some(r.op.to_owned())).collect(),
    ));
    params.push(Param::Column(
        rows.iter().map(|r| Some(r.tombstone.to_string())).collect(),
    ));
    let shape = history_shape(table);
    let history = quote_qualified(&shape.schema, &shape.name);
    let guard = if only_missing {
        // valid_from and system_from_lsn follow the source's columns (c{n}, c{n+3}).
        let mut same: Vec<String> = table
            .key_columns()
            .iter()
            .map(|&i| format!("h.{} IS NOT DISTINCT FROM {}", names[i], values[i]))
            .collect();
        same.push(format!("h.valid_from = {}", values[n]));
        same.push(format!("h.system_from_lsn = {}", values[n + 3]));
        format!(
            " WHERE NOT EXISTS (SELECT 1 FROM {history} AS h WHERE {})",
            same.join(" AND ")
        )
    } else {
        String::new()
    };
    Statement {
        text: format!(
            "INSERT INTO {history} ({}) SELECT {} FROM {}{guard}",
            names.join(", "),
            values.join(", "),
            unnest_of(params.len(), 1)
        ),
        params,
    }
}

/// `UPDATE` that closes versions.
pub fn close_versions<'a>(table: &TableInfo, rows: &[CloseRow<'a>]) -> Statement<'a> {
    let key = table.key_columns();
    let mut params: Vec<Param> = (0..key.len())
        .map(|k| Param::Cells(rows.iter().map(|r| cell_text(r.key.get(k))).collect()))
        .collect();
    let mut conditions: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            format!(
                "h.{} = v.c{k}::{}",
                quote_ident(&table.columns[i].name),
                table.columns[i].type_name
            )
        })
        .collect();
    let k = key.len();
    conditions.push(format!("h.valid_from = v.c{k}::timestamptz"));
    conditions.push(format!("h.system_from_lsn = v.c{}::pg_lsn", k + 1));
    conditions.push("h.system_to_lsn IS NULL".into());
    params.push(times(rows.iter().map(|r| Some(r.valid_from))));
    params.push(lsns(rows.iter().map(|r| r.system_from.lsn)));
    params.push(times(rows.iter().map(|r| Some(r.system_to.micros))));
    params.push(lsns(rows.iter().map(|r| r.system_to.lsn)));
    let shape = history_shape(table);
    Statement {
        text: format!(
            "UPDATE {} AS h SET system_to = v.c{}::timestamptz, system_to_lsn = v.c{}::pg_lsn \
             FROM {} WHERE {}",
            quote_qualified(&shape.schema, &shape.name),
            k + 2,
            k + 3,
            unnest_of(params.len(), 1),
            conditions.join(" AND ")
        ),
        params,
    }
}

/// Most versions one statement of [`mend_versions`] writes.
const MEND_CHUNK: usize = 1000;

/// Writes part of another record of `table`'s versions (the cold tier's) into its history
/// table where it lacks them, in one transaction on `client`: `opens` inserted unless a
/// row names them, `closes` closed where still open. Both are idempotent, so a mend cut
/// short is taken again from its start. With `clear_mark`, the same transaction then
/// clears the table's missed mark (`store::clear_history_missed`). Returns the rows
/// inserted and closed.
pub async fn mend_versions(
    client: &mut tokio_postgres::Client,
    job: &str,
    table: &TableInfo,
    opens: &[OpenRow<'_>],
    closes: &[CloseRow<'_>],
    clear_mark: bool,
) -> Result<(u64, u64), SinkError> {
    let failed = |what: &'static str| move |e: tokio_postgres::Error| sink_error(what, &e);
    let tx = client
        .transaction()
        .await
        .map_err(failed("begin mending a history table"))?;
    ensure_history_shape(&tx, table).await?;
    let mut written = (0, 0);
    let chunks = opens
        .chunks(MEND_CHUNK)
        .map(|c| (insert_missing_versions(table, c), true))
        .chain(
            closes
                .chunks(MEND_CHUNK)
                .map(|c| (close_versions(table, c), false)),
        );
    for (stmt, opening) in chunks {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            stmt.params.iter().map(Param::as_sql).collect();
        let n = tx
            .execute(stmt.text.as_str(), &params)
            .await
            .map_err(failed("mend a history table"))?;
        if opening {
            written.0 += n;
        } else {
            written.1 += n;
        }
    }
    if clear_mark {
        crate::sinks::pg_apply::store::clear_history_missed(&tx, job, &table.qualified_name())
            .await?;
    }
    tx.commit()
        .await
        .map_err(failed("commit mending a history table"))?;
    Ok(written)
}

/// `col::text IN (...)` for a tenant filter; `None` for all tenants.
pub fn tenant_predicate(key: &TenantKey, include: &TenantFilter) -> Option<String> {
    include.sql_condition(key)
}

/// SQL for a timestamptz column as µs since 2000-01-01 (±infinity as the i64 extremes).
pub fn micros_sql(expr: &str) -> String {
    format!(
        "CASE WHEN {expr} IS NULL THEN NULL WHEN isfinite({expr}) \
         THEN (extract(epoch FROM {expr}) * 1000000)::bigint - {PG_EPOCH_UNIX_MICROS} \
         WHEN {expr} > 'epoch'::timestamptz THEN {max} ELSE {min} END",
        max = i64::MAX,
        min = i64::MIN
    )
}

/// SQL for a pg_lsn column as a number.
pub fn lsn_sql(expr: &str) -> String {
    format!("({expr} - '0/0'::pg_lsn)::bigint")
}

/// What [`record_snapshot_versions`] did to a history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotVersions {
    /// Versions closed: rows the snapshot found changed or gone, and deletions of keys
    /// it found again.
    pub closed: u64,
    /// Versions opened: rows new or changed since the versions still open.
    pub opened: u64,
}

/// After a snapshot loaded `table`: brings the versions still open for the job's tenants
/// (from an earlier snapshot and the stream after it) to the loaded rows, at the
/// snapshot's consistent point. A row whose open version holds the same values keeps it;
/// a changed or new row gets a version valid from the row's valid time (or the snapshot
/// time), its old version closed; a version whose row is gone is closed; a deletion
/// (tombstone) stays open while its key is still absent. Values are compared as text, so
/// types without an equality operator (`json`, `point`) compare too.
pub async fn record_snapshot_versions(
    client: &impl GenericClient,
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
    valid_column: Option<&str>,
    at: SysTime,
) -> Result<SnapshotVersions, SinkError> {
    ensure_history_shape(client, table).await?;
    let shape = history_shape(table);
    let history = quote_qualified(&shape.schema, &shape.name);
    let source = quote_qualified(&table.schema, &table.name);
    let filter = tenant_predicate(tenant_key, include);
    let when = quote_literal(&format_timestamptz(at.micros));
    let lsn = quote_literal(&format_lsn(at.lsn));
    let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let same_key = table
        .key_columns()
        .iter()
        .map(|&i| format!("h.{n} = s.{n}", n = names[i]))
        .collect::<Vec<_>>()
        .join(" AND ");
    let as_text = |alias: &str| {
        names
            .iter()
            .map(|n| format!("{alias}.{n}::text"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same_row = format!(
        "{same_key} AND ({}) IS NOT DISTINCT FROM ({})",
        as_text("h"),
        as_text("s")
    );
    let and_filter = filter
        .as_ref()
        .map(|f| format!(" AND {f}"))
        .unwrap_or_default();
    let close = format!(
        "UPDATE {history} AS h SET system_to = {when}::timestamptz, system_to_lsn = {lsn}::pg_lsn \
         WHERE system_to_lsn IS NULL{and_filter} AND CASE WHEN tombstone \
           THEN EXISTS (SELECT 1 FROM {source} AS s WHERE {same_key}) \
           ELSE NOT EXISTS (SELECT 1 FROM {source} AS s WHERE {same_row}) END"
    );
    let valid = match valid_column {
        Some(c) => format!(
            "coalesce({}::timestamptz, {when}::timestamptz)",
            quote_ident(c)
        ),
        None => format!("{when}::timestamptz"),
    };
    let open = format!(
        "INSERT INTO {history} ({cols}, valid_from, system_from, system_from_lsn, op) \
         SELECT {cols}, {valid}, {when}::timestamptz, {lsn}::pg_lsn, 'insert' FROM {source} AS s \
         WHERE NOT EXISTS (SELECT 1 FROM {history} AS h \
           WHERE h.system_to_lsn IS NULL AND NOT h.tombstone AND {same_row}){and_filter}",
        cols = names.join(", "),
    );
    let closed = client
        .execute(&close, &[])
        .await
        .map_err(|e| sink_error("close the versions a new snapshot changed", &e))?;
    let opened = client
        .execute(&open, &[])
        .await
        .map_err(|e| sink_error("record snapshot versions", &e))?;
    Ok(SnapshotVersions { closed, opened })
}

/// How versions are picked from a history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionFilter {
    /// Versions current at a commit LSN (restoring the version books at a resume point).
    CurrentAtLsn(Lsn),
    /// Versions visible at a system point and valid at a valid time (as-of queries).
    AsOf(SystemPoint, i64),
}

/// Versions of `table` for the tenants `tenants` selects: rows and tombstones for
/// [`VersionFilter::CurrentAtLsn`], rows only for [`VersionFilter::AsOf`].
pub async fn load_versions(
    client: &impl GenericClient,
    table: &TableInfo,
    tenants: Option<&str>,
    filter: VersionFilter,
) -> Result<Vec<Version<Row, Row>>, SinkError> {
    let mut versions = Vec::new();
    each_version(client, table, tenants, filter, |v| versions.push(v)).await?;
    Ok(versions)
}

/// The versions [`load_versions`] reads, handed to `each` as they arrive from the target
/// (restoring the version books holds one at a time, not the table); returns how many.
pub async fn each_version(
    client: &impl GenericClient,
    table: &TableInfo,
    tenants: Option<&str>,
    filter: VersionFilter,
    mut each: impl FnMut(Version<Row, Row>),
) -> Result<u64, SinkError> {
    use futures_util::StreamExt;
    let sql = versions_sql(table, tenants, filter);
    let rows = client
        .query_raw(
            &sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(|e| sink_error("read history versions", &e))?;
    futures_util::pin_mut!(rows);
    let mut read = 0;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| sink_error("read history versions", &e))?;
        each(version_of(table, &row).map_err(|e| sink_error("read a history version", &e))?);
        read += 1;
    }
    Ok(read)
}

/// The query of [`each_version`]: the columns as text, then the version's times.
fn versions_sql(table: &TableInfo, tenants: Option<&str>, filter: VersionFilter) -> String {
    let shape = history_shape(table);
    let history = quote_qualified(&shape.schema, &shape.name);
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect();
    let mut conditions: Vec<String> = tenants.map(str::to_owned).into_iter().collect();
    let point = |p: SystemPoint| match p {
        SystemPoint::Lsn(l) => (
            "system_from_lsn",
            "system_to_lsn",
            format!("{}::pg_lsn", quote_literal(&format_lsn(l))),
        ),
        SystemPoint::Micros(m) => (
            "system_from",
            "system_to",
            format!("{}::timestamptz", quote_literal(&format_timestamptz(m))),
        ),
    };
    match filter {
        VersionFilter::CurrentAtLsn(lsn) => {
            let (from, to, at) = point(SystemPoint::Lsn(lsn));
            conditions.push(format!("{from} <= {at} AND ({to} IS NULL OR {to} > {at})"));
        }
        VersionFilter::AsOf(system, valid) => {
            let (from, to, at) = point(system);
            let v = format!("{}::timestamptz", quote_literal(&format_timestamptz(valid)));
            conditions.push(format!(
                "{from} <= {at} AND ({to} IS NULL OR {to} > {at}) \
                 AND valid_from <= {v} AND (valid_to IS NULL OR valid_to > {v}) \
                 AND NOT tombstone"
            ));
        }
    }
    format!(
        "SELECT {}, {}, {}, {}, {}, tombstone FROM {history} WHERE {}",
        cols.join(", "),
        micros_sql("valid_from"),
        micros_sql("valid_to"),
        micros_sql("system_from"),
        lsn_sql("system_from_lsn"),
        conditions.join(" AND ")
    )
}

/// One row of [`versions_sql`] as a version (an unexpected type is an error, not a panic).
fn version_of(
    table: &TableInfo,
    r: &tokio_postgres::Row,
) -> Result<Version<Row, Row>, tokio_postgres::Error> {
    let n = table.columns.len();
    let value = (0..n)
        .map(|i| {
            Ok(match r.try_get::<_, Option<String>>(i)? {
                Some(t) => Cell::Text(t.into()),
                None => Cell::Null,
            })
        })
        .collect::<Result<Row, tokio_postgres::Error>>()?;
    Ok(Version {
        key: table
            .key_columns()
            .iter()
            .map(|&i| value[i].clone())
            .collect(),
        valid_from: r.try_get::<_, Option<i64>>(n)?.unwrap_or(i64::MIN),
        valid_to: r.try_get(n + 1)?,
        system_from: SysTime {
            lsn: r.try_get::<_, i64>(n + 3)? as Lsn,
            micros: r.try_get::<_, Option<i64>>(n + 2)?.unwrap_or(0),
        },
        system_to: None,
        tombstone: r.try_get(n + 4)?,
        value,
    })
}

/// The earliest system time of any version of `tenant`'s rows (`None`: no history yet).
pub async fn first_version(
    client: &impl GenericClient,
    table: &TableInfo,
    tenant_key: &TenantKey,
    tenant: &str,
) -> Result<Option<SysTime>, SinkError> {
    let shape = history_shape(table);
    let sql = format!(
        "SELECT {}, {} FROM {} WHERE {}::text = $1 ORDER BY system_from_lsn LIMIT 1",
        micros_sql("system_from"),
        lsn_sql("system_from_lsn"),
        quote_qualified(&shape.schema, &shape.name),
        tenant_key.sql()
    );
    let row = client
        .query_opt(&sql, &[&tenant])
        .await
        .map_err(|e| sink_error("read the first history version", &e))?;
    Ok(row.map(|r| SysTime {
        micros: r.get::<_, Option<i64>>(0).unwrap_or(0),
        lsn: r.get::<_, i64>(1) as Lsn,
    }))
}

#[cfg(test)]
mod tests;
