//! Mending a history table that refused versions while its table was in error state
//! (`helios.table_state.history_missed_lsn`), from the job's Parquet cold tier, which took
//! every version from the stream.
//!
//! At each start that resumes the stream, before the backfill and the version books, the
//! versions the tier opened or closed from the first missed LSN on are written where the
//! history table lacks them (an opened version inserted unless a row names it, a closed
//! one closed), in one transaction per target that then clears the mark. Each tenant's
//! are taken up to what the target's checkpoints say is applied for it, or the resume
//! position if later: the stream sends the later changes again, and the sink writes their
//! versions then. A history table that still refuses them (the constraint that refused
//! them is still there) keeps the mark, with a warning: its books then come from the cold
//! tier (`job_runner`), and a resync of the table stays refused (`resync`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::change::{format_lsn, Lsn, Row, TableInfo};
use crate::control::cold_history::{cold_error, tier_tenants};
use crate::control::history_query::cold_row_cells;
use crate::control::job_runner::{blocking, parquet_roots, JobError};
use crate::control::job_spec::{JobSpec, TableSpec, TenantFilter};
use crate::operators::version::SysTime;
use crate::sinks::parquet::{for_each_batch, ColdEvent, ColdRow};
use crate::sinks::pg_apply::{history, store};
use crate::sinks::versions::{CloseRow, OpenRow};
use crate::sinks::SinkError;

/// Mends, on each of `targets`, the history tables of `spec` marked as having missed
/// versions, from the job's first Parquet sink's root, the stream resuming at `resume`
/// (module doc). A target that refuses keeps its mark; one that cannot be reached is an
/// error (the start is retried).
pub async fn mend_from_cold_tier(
    spec: &JobSpec,
    include: &TenantFilter,
    targets: &mut [tokio_postgres::Client],
    infos: &[(TableSpec, Arc<TableInfo>)],
    resume: Lsn,
) -> Result<(), JobError> {
    let Some(root) = parquet_roots(spec).into_iter().next() else {
        return Ok(());
    };
    let with_history: BTreeSet<String> = spec.history_tables().map(|t| t.name.clone()).collect();
    if with_history.is_empty() {
        return Ok(());
    }
    for (index, target) in targets.iter_mut().enumerate() {
        let missed = store::load_history_missed(target, &spec.name, &with_history).await?;
        if missed.is_empty() {
            continue;
        }
        let checkpoints = store::load_checkpoints(target, &spec.name).await?;
        let upto = move |tenant: &str| {
            resume.max(store::tenant_applied(&checkpoints, tenant).unwrap_or(0))
        };
        for (table, from) in missed {
            let Some((_, info)) = infos.iter().find(|(t, _)| t.name == table) else {
                continue;
            };
            let rows = tier_rows(&root, &table, info, include, from, upto.clone()).await?;
            let versions = TierVersions::of(info, &rows);
            let (opens, closes) = versions.rows();
            match history::mend_versions(target, &spec.name, info, &opens, &closes).await {
                Ok((inserted, closed)) => {
                    tracing::info!(job = %spec.name, target = index, table = %table,
                        from = %format_lsn(from), inserted, closed,
                        "history table mended from the cold tier: the versions it refused while the table was in error are in it now")
                }
                Err(SinkError::Definite(reason)) => {
                    tracing::warn!(job = %spec.name, target = index, table = %table,
                        from = %format_lsn(from), error = %reason,
                        "the history table still refuses the versions it missed while the table was in error; it is mended from the cold tier at a later start")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The tier's rows under `root` of `table` (of the tenants `include` names) that opened or
/// closed a version at an LSN from `from` up to `upto(tenant)`.
async fn tier_rows(
    root: &Path,
    table: &str,
    info: &TableInfo,
    include: &TenantFilter,
    from: Lsn,
    upto: impl Fn(&str) -> Lsn + Send + 'static,
) -> Result<Vec<ColdRow>, SinkError> {
    let (root, table, qualified, include): (PathBuf, String, String, TenantFilter) = (
        root.to_path_buf(),
        table.to_string(),
        info.qualified_name(),
        include.clone(),
    );
    blocking(move || {
        let mut out = Vec::new();
        for tenant in tier_tenants(&root, &table, &include).map_err(cold_error(&root))? {
            let to = upto(&tenant);
            for_each_batch(&root, &tenant, &qualified, |rows| {
                out.extend(
                    rows.into_iter()
                        .filter(|r| r.commit_lsn().is_some_and(|lsn| (from..=to).contains(&lsn))),
                );
                Ok(())
            })
            .map_err(cold_error(&root))?;
        }
        Ok(out)
    })
    .await
}

/// Cold-tier rows as the history table's rows: values and keys owned, so the versions to
/// open and close can borrow them.
struct TierVersions<'a> {
    rows: &'a [ColdRow],
    values: Vec<Row>,
    keys: Vec<Row>,
}

impl<'a> TierVersions<'a> {
    fn of(info: &TableInfo, rows: &'a [ColdRow]) -> TierVersions<'a> {
        let key_columns = info.key_columns();
        let (keys, values) = rows.iter().map(|r| cold_row_cells(&key_columns, r)).unzip();
        TierVersions { rows, values, keys }
    }

    /// The versions the rows open, and those they close.
    fn rows(&self) -> (Vec<OpenRow<'_>>, Vec<CloseRow<'_>>) {
        let mut opens = Vec::new();
        let mut closes = Vec::new();
        for ((r, value), key) in self.rows.iter().zip(&self.values).zip(&self.keys) {
            let system_from = SysTime {
                lsn: r.system_from_lsn,
                micros: r.system_from,
            };
            match (r.event, r.system_to_lsn, r.system_to) {
                (ColdEvent::Open, ..) => opens.push(OpenRow {
                    row: value,
                    valid_from: r.valid_from,
                    valid_to: r.valid_to,
                    system_from,
                    op: r.op.as_str(),
                    tombstone: r.tombstone,
                }),
                (ColdEvent::Close, Some(lsn), Some(micros)) => closes.push(CloseRow {
                    key,
                    value,
                    valid_to: r.valid_to,
                    valid_from: r.valid_from,
                    system_from,
                    system_to: SysTime { lsn, micros },
                    op: r.op.as_str(),
                    tombstone: r.tombstone,
                }),
                // A close without its end is not a valid row; `tier_rows` keeps none.
                (ColdEvent::Close, ..) => {}
            }
        }
        (opens, closes)
    }
}
