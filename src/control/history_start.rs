//! Starting a job's bi-temporal history: checks that each history table can keep
//! versions, records the versions a snapshot loads, seeds the Parquet cold tier with them,
//! and restores the in-memory version books at the position the stream resumes from.
//!
//! The history table on the first sink's target is written in the same transaction as the
//! checkpoints, and the stream resumes at a confirmed position no sink is behind of, so
//! the versions current at that position are exactly the state the books had there:
//! replayed transactions then produce the same history events again, which every sink
//! skips by its own checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::change::{Lsn, Row, TableInfo};
use crate::control::job_spec::{JobSpec, SinkSpec, TableSpec};
use crate::operators::history::{HistoryBooks, HistoryPlan};
use crate::operators::partition::TenantPlan;
use crate::operators::version::{SysTime, Version};
use crate::sinks::parquet::sink::cold_columns;
use crate::sinks::parquet::{ChangeOp, ColdEvent, ColdRow, ColdTableWriter};
use crate::sinks::pg_apply::history::{
    ensure_history_shape, history_problem, load_versions, record_snapshot_versions,
    tenant_predicate, VersionFilter,
};
use crate::sinks::SinkError;

/// Which tables of `spec` keep history and where their valid time comes from.
pub fn history_plan(spec: &JobSpec) -> HistoryPlan {
    HistoryPlan {
        tables: spec
            .history_tables()
            .map(|t| (t.name.clone(), t.valid_time_column.clone()))
            .collect(),
        tenant_columns: spec
            .history_tables()
            .filter_map(|t| {
                let column = spec.tenant_column_for(t.schema(), t.table())?;
                Some((t.name.clone(), column.to_owned()))
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
    let column = plan.tenant_columns.get(&table.qualified_name())?;
    row.get(table.column_index(column)?)?
        .as_text()
        .map(str::to_owned)
}

/// After a snapshot: records the loaded rows as versions known from `at`, and writes them
/// to every Parquet sink of the job.
pub async fn record_snapshot(
    spec: &JobSpec,
    plan: &TenantPlan,
    target: &tokio_postgres::Client,
    tables: &[(TableSpec, Arc<TableInfo>)],
    at: SysTime,
) -> Result<(), SinkError> {
    for (table, info) in tables.iter().filter(|(t, _)| t.history) {
        let column = &plan.tenant_columns[&table.name];
        let rows = record_snapshot_versions(
            target,
            info,
            column,
            &plan.include,
            table.valid_time_column.as_deref(),
            at,
        )
        .await?;
        tracing::info!(job = %spec.name, table = %table.name, versions = rows, "snapshot rows recorded as history versions");
        let roots: Vec<&str> = spec
            .sinks
            .iter()
            .filter_map(|s| match s {
                SinkSpec::Parquet(p) => Some(p.root.as_str()),
                SinkSpec::Postgres(_) => None,
            })
            .collect();
        if roots.is_empty() {
            continue;
        }
        let filter = tenant_predicate(column, &plan.include);
        let versions = load_versions(
            target,
            info,
            filter.as_deref(),
            VersionFilter::CurrentAtLsn(at.lsn),
        )
        .await?;
        let mut by_tenant: BTreeMap<String, Vec<ColdRow>> = BTreeMap::new();
        for v in versions.into_iter().filter(|v| v.system_from.lsn == at.lsn) {
            if let Some(tenant) = tenant_of(plan, info, &v.value) {
                by_tenant.entry(tenant).or_default().push(snapshot_row(v));
            }
        }
        for root in roots {
            seed_cold_tier(Path::new(root), info, &by_tenant, at.lsn)?;
        }
    }
    Ok(())
}

fn snapshot_row(v: Version<Row, Row>) -> ColdRow {
    ColdRow {
        event: ColdEvent::Open,
        op: ChangeOp::Insert,
        values: v
            .value
            .iter()
            .map(|c| c.as_text().map(str::to_owned))
            .collect(),
        valid_from: v.valid_from,
        valid_to: v.valid_to,
        system_from: v.system_from.micros,
        system_from_lsn: v.system_from.lsn,
        system_to: None,
        system_to_lsn: None,
        tombstone: v.tombstone,
    }
}

fn seed_cold_tier(
    root: &Path,
    table: &TableInfo,
    by_tenant: &BTreeMap<String, Vec<ColdRow>>,
    lsn: Lsn,
) -> Result<(), SinkError> {
    let columns = cold_columns(table);
    for (tenant, rows) in by_tenant {
        let mut writer = ColdTableWriter::open(root, tenant, &table.qualified_name(), &columns)
            .map_err(|e| {
                SinkError::Definite(format!("parquet cold tier {}: {e}", root.display()))
            })?;
        if writer.covered_lsn() < lsn {
            writer.write(rows, lsn, lsn).map_err(|e| {
                SinkError::Definite(format!("parquet cold tier {}: {e}", root.display()))
            })?;
        }
    }
    Ok(())
}

/// Fills `books` with the versions current at `resume` (the stream's start position).
pub async fn restore_books(
    plan: &TenantPlan,
    target: &tokio_postgres::Client,
    tables: &[(TableSpec, Arc<TableInfo>)],
    resume: Lsn,
    books: &HistoryBooks,
) -> Result<usize, SinkError> {
    let mut restored = 0;
    for (table, info) in tables.iter().filter(|(t, _)| t.history) {
        ensure_history_shape(target, info).await?;
        let column = &plan.tenant_columns[&table.name];
        let filter = tenant_predicate(column, &plan.include);
        let versions = load_versions(
            target,
            info,
            filter.as_deref(),
            VersionFilter::CurrentAtLsn(resume),
        )
        .await?;
        for v in versions {
            if let Some(tenant) = tenant_of(plan, info, &v.value) {
                books.restore(&tenant, &table.name, v);
                restored += 1;
            }
        }
    }
    Ok(restored)
}
