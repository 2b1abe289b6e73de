//! On-demand exports of one tenant's history of one table to Parquet, and the retention
//! pass that moves old history out of the history table.
//!
//! An export reads the history table in chunks of whole transactions (by
//! `system_from_lsn`) and publishes each chunk as cold-tier files with the writer's commit
//! protocol: a crash leaves no partial file visible, and running the same export again
//! into the same directory continues after what the manifest covers, never writing a
//! version twice. Progress is visible while it runs (`GET /v1/exports/{id}`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::change::{format_lsn, Lsn, TableInfo, Text};
use crate::control::history_query::{history_places, table_shape, Horizon};
use crate::control::job_control::{
    ControlError, ExportRequest, ExportState, ExportStatus, RetentionPolicy, TimePoint,
};
use crate::control::job_spec::{JobSpec, TenantKey};
use crate::sinks::parquet::layout::table_dir;
use crate::sinks::parquet::manifest::Manifest;
use crate::sinks::parquet::sink::{cold_columns, op_of};
use crate::sinks::parquet::{ColdEvent, ColdRow, ColdTableWriter};
use crate::sinks::pg_apply::history::{history_name, lsn_sql, micros_sql as micros};
use crate::sinks::pg_apply::sink::connect;
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};
use crate::time_text::format_timestamptz;

/// Versions per published chunk (whole transactions, so a chunk may be larger).
pub const EXPORT_CHUNK_ROWS: i64 = 10_000;

fn time_condition(column_time: &str, column_lsn: &str, point: TimePoint, op: &str) -> String {
    match point {
        TimePoint::Lsn(l) => format!(
            "{column_lsn} {op} {}::pg_lsn",
            quote_literal(&format_lsn(l))
        ),
        TimePoint::Micros(m) => format!(
            "{column_time} {op} {}::timestamptz",
            quote_literal(&format_timestamptz(m))
        ),
    }
}

/// Checks an export request and returns the parsed time range.
pub fn parse_range(
    request: &ExportRequest,
) -> Result<(Option<TimePoint>, Option<TimePoint>), ControlError> {
    let parse = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(TimePoint::parse)
            .transpose()
            .map_err(|message| ControlError::Invalid {
                field: field.into(),
                message,
            })
    };
    if request.output.trim().is_empty() {
        return Err(ControlError::Invalid {
            field: "output".into(),
            message: "must name a directory".into(),
        });
    }
    Ok((parse("from", &request.from)?, parse("to", &request.to)?))
}

/// Runs one export to the end, updating `status` as it goes.
pub async fn run_export(
    spec: JobSpec,
    request: ExportRequest,
    range: (Option<TimePoint>, Option<TimePoint>),
    status: Arc<Mutex<ExportStatus>>,
) {
    let result = export(&spec, &request, range, &status).await;
    if let Ok(mut s) = status.lock() {
        match result {
            Ok(()) => s.state = ExportState::Done,
            Err(e) => {
                s.state = ExportState::Failed;
                s.error = Some(e);
            }
        }
    }
}

async fn export(
    spec: &JobSpec,
    request: &ExportRequest,
    (from, to): (Option<TimePoint>, Option<TimePoint>),
    status: &Mutex<ExportStatus>,
) -> Result<(), String> {
    let (Some(dsn), _) = history_places(spec) else {
        return Err("the job has no postgres sink holding history".into());
    };
    let table = table_shape(spec, &request.table)
        .await
        .map_err(|e| e.to_string())?;
    let tenant_key = spec
        .tenant_key_for(&table.schema, &table.name)
        .unwrap_or_else(|| TenantKey::Column(spec.tenants.column.clone()));
    let target = connect(&dsn).await.map_err(|e| e.to_string())?;
    let history = quote_qualified(&table.schema, &history_name(&table.name));
    let mut conditions = vec![format!(
        "{}::text = {}",
        tenant_key.sql(),
        quote_literal(&request.tenant)
    )];
    if let Some(p) = from {
        conditions.push(time_condition("system_from", "system_from_lsn", p, ">="));
    }
    if let Some(p) = to {
        conditions.push(time_condition("system_from", "system_from_lsn", p, "<"));
    }
    let filter = conditions.join(" AND ");
    let total: i64 = target
        .query_one(
            &format!("SELECT count(*) FROM {history} WHERE {filter}"),
            &[],
        )
        .await
        .map_err(|e| format!("count history versions: {e}"))?
        .get(0);
    if let Ok(mut s) = status.lock() {
        s.rows_total = total as u64;
    }
    let output = PathBuf::from(&request.output);
    let columns = cold_columns(&table);
    let (tenant, name) = (request.tenant.clone(), table.qualified_name());
    let mut writer = {
        let (output, columns) = (output.clone(), columns.clone());
        tokio::task::spawn_blocking(move || {
            ColdTableWriter::open(&output, &tenant, &name, &columns)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?
    };
    let mut last = writer.covered_lsn();
    let select = select_versions_sql(&table, &history);
    loop {
        let after = format!(
            "{filter} AND system_from_lsn > {}::pg_lsn",
            quote_literal(&format_lsn(last))
        );
        let bound = target
            .query_one(
                &format!(
                    "SELECT coalesce(
                       (SELECT (system_from_lsn - '0/0'::pg_lsn)::bigint FROM {history} WHERE {after}
                        ORDER BY system_from_lsn OFFSET {} LIMIT 1),
                       (SELECT (max(system_from_lsn) - '0/0'::pg_lsn)::bigint FROM {history} WHERE {after}))",
                    EXPORT_CHUNK_ROWS - 1
                ),
                &[],
            )
            .await
            .map_err(|e| format!("read history versions: {e}"))?
            .get::<_, Option<i64>>(0);
        let Some(bound) = bound.map(|b| b as Lsn) else {
            break;
        };
        let sql = format!(
            "{select} WHERE {after} AND system_from_lsn <= {}::pg_lsn ORDER BY system_from_lsn",
            quote_literal(&format_lsn(bound))
        );
        let rows = target
            .query(&sql, &[])
            .await
            .map_err(|e| format!("read history versions: {e}"))?;
        let cold: Vec<ColdRow> = rows.iter().map(|r| cold_row(&table, r)).collect();
        let lo = cold
            .iter()
            .map(|r| r.system_from_lsn)
            .min()
            .unwrap_or(bound);
        let n = cold.len() as u64;
        let (files, back) = tokio::task::spawn_blocking(move || {
            let files = writer.write(&cold, lo, bound);
            (files, writer)
        })
        .await
        .map_err(|e| e.to_string())?;
        writer = back;
        let files = files.map_err(|e| e.to_string())?;
        last = bound;
        if let Ok(mut s) = status.lock() {
            s.rows_written += n;
            s.files.extend(files.into_iter().map(|f| f.path));
        }
    }
    Ok(())
}

/// `SELECT` of a history table's versions in the column order [`cold_row`] reads.
pub(crate) fn select_versions_sql(table: &TableInfo, history: &str) -> String {
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect();
    format!(
        "SELECT {}, {}, {}, {}, {}, {}, {}, op, tombstone FROM {history}",
        cols.join(", "),
        micros("valid_from"),
        micros("valid_to"),
        micros("system_from"),
        lsn_sql("system_from_lsn"),
        micros("system_to"),
        lsn_sql("system_to_lsn"),
    )
}

/// A history-table version as one cold-tier row: `close` if it has ended, else `open`.
pub(crate) fn cold_row(table: &TableInfo, r: &tokio_postgres::Row) -> ColdRow {
    let n = table.columns.len();
    let system_to: Option<i64> = r.get(n + 4);
    let op: String = r.get(n + 6);
    ColdRow {
        event: if system_to.is_some() {
            ColdEvent::Close
        } else {
            ColdEvent::Open
        },
        op: op_of(&op),
        values: (0..n)
            .map(|i| r.get::<_, Option<String>>(i).map(Text::from))
            .collect(),
        valid_from: r.get::<_, Option<i64>>(n).unwrap_or(i64::MIN),
        valid_to: r.get(n + 1),
        system_from: r.get::<_, Option<i64>>(n + 2).unwrap_or(0),
        system_from_lsn: r.get::<_, i64>(n + 3) as Lsn,
        system_to,
        system_to_lsn: r.get::<_, Option<i64>>(n + 5).map(|l| l as Lsn),
        tombstone: r.get(n + 7),
    }
}

/// One retention pass for one policy: deletes from the history table the tenant's closed
/// versions older than the policy's age that the job's cold tier already holds. Returns
/// the horizon reached (`None`: nothing moved).
pub async fn apply_retention(
    spec: &JobSpec,
    policy: &RetentionPolicy,
    now_micros: i64,
) -> Result<Option<Horizon>, String> {
    let (Some(dsn), Some(root)) = history_places(spec) else {
        return Err(format!(
            "job `{}` has no parquet sink: history cannot leave the history table",
            spec.name
        ));
    };
    let table = table_shape(spec, &policy.table)
        .await
        .map_err(|e| e.to_string())?;
    let dir = table_dir(Path::new(&root), &policy.tenant, &table.qualified_name());
    let covered = match Manifest::load(&dir) {
        Ok(Some(m)) => m.max_lsn(),
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let tenant_key = spec
        .tenant_key_for(&table.schema, &table.name)
        .unwrap_or_else(|| TenantKey::Column(spec.tenants.column.clone()));
    let cutoff = now_micros - i64::from(policy.days) * 86_400_000_000;
    let history = quote_qualified(&table.schema, &history_name(&table.name));
    let target = connect(&dsn).await.map_err(|e| e.to_string())?;
    let row = target
        .query_one(
            &format!(
                "WITH gone AS (DELETE FROM {history} WHERE {}::text = $1 AND system_to IS NOT NULL \
                 AND system_to < $2::text::timestamptz AND system_to_lsn <= $3::text::pg_lsn \
                 RETURNING system_to, system_to_lsn) \
                 SELECT count(*), {}, (max(system_to_lsn) - '0/0'::pg_lsn)::bigint FROM gone",
                tenant_key.sql(),
                micros("max(system_to)")
            ),
            &[
                &policy.tenant,
                &format_timestamptz(cutoff),
                &format_lsn(covered),
            ],
        )
        .await
        .map_err(|e| format!("retention on {}: {e}", policy.table))?;
    let moved: i64 = row.get(0);
    Ok(
        match (
            moved,
            row.get::<_, Option<i64>>(1),
            row.get::<_, Option<i64>>(2),
        ) {
            (n, Some(micros), Some(lsn)) if n > 0 => {
                tracing::info!(tenant = %policy.tenant, table = %policy.table, versions = n, "history moved to the cold tier only");
                Some(Horizon {
                    micros,
                    lsn: lsn as Lsn,
                })
            }
            _ => None,
        },
    )
}
