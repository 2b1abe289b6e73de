//! Starting a job's bi-temporal history: checks that each history table can keep
//! versions, records the versions a snapshot opens and closes (only rows that changed),
//! brings the Parquet cold tier up to the history table,
//! and restores the in-memory version books at the position the stream resumes from.
//!
//! The history table on the first sink's target is written in the same transaction as the
//! checkpoints, and the stream resumes at a confirmed position no sink is behind of, so
//! the versions current at that position are exactly the state the books had there:
//! replayed transactions then produce the same history events again, which every sink
//! skips by its own checkpoint.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;

use crate::change::format_lsn;
use crate::change::{Lsn, Row, TableInfo};
use crate::control::cold_seed;
use crate::control::exports::{cold_row, select_versions_sql};
use crate::control::job_runner;
use crate::control::job_spec::{JobSpec, TableSpec, TenantAt, TenantFilter, TenantKey};
use crate::operators::history::{HistoryBooks, HistoryPlan};
use crate::operators::partition::TenantPlan;
use crate::operators::version::SysTime;
use crate::sinks::parquet::large_txn::{LargeWrite, LARGE_LIMITS};
use crate::sinks::parquet::sink::cold_columns;
use crate::sinks::pg_apply::floors::Floors;
use crate::sinks::pg_apply::history::{
    each_version, ensure_history_shape, history_name, history_problem, record_snapshot_versions,
    tenant_predicate, VersionFilter,
};
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;
use crate::sql_text::{quote_literal, quote_qualified};

/// Which tables of `spec` keep history and where their valid time comes from.
pub fn history_plan(spec: &JobSpec) -> HistoryPlan {
    HistoryPlan {
        tables: spec
            .history_tables()
            .map(|t| (t.name.clone(), t.valid_time_column.clone()))
            .collect(),
        tenant_keys: spec
            .history_tables()
            .filter_map(|t| {
                let key = spec.tenant_key_for(t.schema(), t.table())?;
                Some((t.name.clone(), key))
            })
            .collect(),
    }
}

/// Why a history table of the spec cannot keep versions, if it cannot.
pub fn check_history_table(spec: &TableSpec, info: &TableInfo) -> Option<String> {
    if !spec.history {
        return None;
    }
    if let Some(problem) = history_problem(info) {
        return Some(problem);
    }
    match &spec.valid_time_column {
        Some(c) if info.column_index(c).is_none() => Some(format!(
            "{} has no valid-time column `{c}`",
            info.qualified_name()
        )),
        _ => None,
    }
}

fn tenant_of(plan: &TenantPlan, table: &TableInfo, row: &Row) -> Option<String> {
    let key = plan.tenant_keys.get(&table.qualified_name())?;
    key.at(table)?.of(row).map(str::to_owned)
}

/// After a snapshot: records the loaded rows as versions known from `at`, and brings every
/// Parquet sink of the job up to the history table: each version opened or closed after
/// `since` (the job's last recorded position, which every sink held; 0 when none) is
/// written to each tenant's directory unless its manifest covers it.
///
/// Not only the versions this snapshot opened and closed: an earlier snapshot that a crash
/// cut short after recording its versions in the history table, before its cold write was
/// published, left versions (and closes of the versions before them) that only the
/// history table has, and the stream never produces them again.
pub async fn record_snapshot(
    spec: &JobSpec,
    plan: &TenantPlan,
    target: &tokio_postgres::Client,
    tables: &[(TableSpec, Arc<TableInfo>)],
    at: SysTime,
    since: Lsn,
) -> Result<(), SinkError> {
    for (table, info) in tables.iter().filter(|(t, _)| t.history) {
        let column = &plan.tenant_keys[&table.name];
        let recorded = record_snapshot_versions(
            target,
            info,
            column,
            &plan.include,
            table.valid_time_column.as_deref(),
            at,
        )
        .await?;
        tracing::info!(job = %spec.name, table = %table.name, opened = recorded.opened, closed = recorded.closed,
            "snapshot rows recorded as history versions");
        publish_versions_since(spec, target, info, column, &plan.include, since, at.lsn).await?;
    }
    Ok(())
}

/// Brings every Parquet sink of the job up to `target`'s history table for `table`'s
/// tenants in `include`: each version opened or closed after `since` (and up to `at`, a
/// snapshot's or a backfill's point) is written to each tenant's directory unless its
/// manifest covers it. A version the tier holds open gets a close row; one it lacks, one
/// row with all it knows. Streamed as read: the versions are never held whole. Returns
/// the versions read (each tier writes those its directories lack).
pub async fn publish_versions_since(
    spec: &JobSpec,
    target: &tokio_postgres::Client,
    info: &Arc<TableInfo>,
    column: &TenantKey,
    include: &TenantFilter,
    since: Lsn,
    at: Lsn,
) -> Result<u64, SinkError> {
    let roots = job_runner::parquet_roots(spec);
    if roots.is_empty() {
        return Ok(0);
    }
    let filter = tenant_predicate(column, include);
    let history = quote_qualified(&info.schema, &history_name(&info.name));
    let since_lsn = since.min(at.saturating_sub(1));
    let after = quote_literal(&format_lsn(since_lsn));
    let sql = format!(
        "{} WHERE (system_from_lsn > {after}::pg_lsn OR system_to_lsn > {after}::pg_lsn){} \
         ORDER BY system_from_lsn",
        select_versions_sql(info, &history),
        filter.map(|f| format!(" AND {f}")).unwrap_or_default()
    );
    let rows = target
        .query_raw(
            &sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(|e| sink_error("read history versions for the cold tier", &e))?;
    let tenant_at = column.at(info);
    let versions = rows.filter_map(|r| {
        let version = match r {
            Ok(r) => {
                let row = cold_row(info, &r);
                let tenant = match tenant_at {
                    Some(TenantAt::Column(i)) => row
                        .values
                        .get(i)
                        .and_then(|v| v.as_deref())
                        .map(str::to_owned),
                    Some(TenantAt::Table(id)) => Some(id.to_owned()),
                    None => None,
                };
                tenant.map(|tenant| Ok((tenant, row)))
            }
            Err(e) => Some(Err(sink_error(
                "read history versions for the cold tier",
                &e,
            ))),
        };
        std::future::ready(version)
    });
    let info = info.as_ref().clone();
    cold_seed::feed(versions, move |chunks| {
        let columns = cold_columns(&info);
        let writes = roots
            .iter()
            .map(|root| {
                let write = LargeWrite::spanning(root, since_lsn + 1, at, LARGE_LIMITS);
                (write, HashMap::new())
            })
            .collect();
        let table = info.qualified_name();
        cold_seed::stream_into_tier(writes, &table, &columns, chunks, &mut cold_seed::EveryRow)
    })
    .await
}

/// Fills `books` with the versions current at `resume` (the stream's start position),
/// or, for rows a backfill loaded at a later floor, at that floor: the history operator
/// skips their changes below it (`floors`, handed to the books too).
pub async fn restore_books(
    plan: &TenantPlan,
    target: &tokio_postgres::Client,
    tables: &[(TableSpec, Arc<TableInfo>)],
    resume: Lsn,
    floors: &Floors,
    books: &HistoryBooks,
) -> Result<usize, SinkError> {
    let mut restored = 0;
    for (table, info) in tables.iter().filter(|(t, _)| t.history) {
        ensure_history_shape(target, info).await?;
        let column = &plan.tenant_keys[&table.name];
        let point = floors.table_resume(&table.name, resume);
        let later: Vec<(String, Lsn)> = floors
            .tenants_past(&table.name, point)
            .into_iter()
            .filter(|(tenant, _)| plan.includes(tenant))
            .collect();
        let filter = tenant_predicate(column, &plan.include);
        // One version at a time: the books bound their rows' memory, the table is
        // never held whole.
        each_version(
            target,
            info,
            filter.as_deref(),
            VersionFilter::CurrentAtLsn(point),
            |v| {
                if let Some(tenant) = tenant_of(plan, info, &v.value) {
                    if !later.iter().any(|(t, _)| *t == tenant) {
                        books.restore(&tenant, &table.name, v);
                        restored += 1;
                    }
                }
            },
        )
        .await?;
        for (tenant, floor) in &later {
            let one = TenantFilter::Only(std::iter::once(tenant.clone()).collect());
            let filter = tenant_predicate(column, &one);
            each_version(
                target,
                info,
                filter.as_deref(),
                VersionFilter::CurrentAtLsn(*floor),
                |v| {
                    books.restore(tenant, &table.name, v);
                    restored += 1;
                },
            )
            .await?;
        }
    }
    books.set_floors(floors.clone());
    Ok(restored)
}
