//! Mending a history table that refused versions while its table was in error state
//! (`helios.table_state.history_missed_lsn`), from the job's Parquet cold tier, which took
//! every version from the stream.
//!
//! At each start that resumes the stream, before the backfill and the version books, the
//! versions the tier opened or closed from the first missed LSN on are written where the
//! history table lacks them (an opened version inserted unless a row names it, a closed
//! one closed). The tier is read as it is written, in transactions of a bounded number of
//! rows, so memory does not grow with how long the table was in error; a last
//! transaction clears the mark, and a mend cut short is taken again. Each tenant's
//! are taken up to what the target's checkpoints say is applied for it, or the resume
//! position if later: the stream sends the later changes again, and the sink writes their
//! versions then. A history table that still refuses them (the constraint that refused
//! them is still there) keeps the mark, with a warning: its books then come from the cold
//! tier (`job_runner`), and a resync of the table stays refused (`resync`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use crate::change::{format_lsn, Lsn, Row, TableInfo};
use crate::control::cold_history::{cold_error, tier_tenants};
use crate::control::history_query::cold_row_cells;
use crate::control::job_runner::{parquet_roots, JobError};
use crate::control::job_spec::{JobSpec, TableSpec, TenantFilter};
use crate::operators::version::SysTime;
use crate::sinks::parquet::{for_each_batch, ColdEvent, ColdRow, ParquetError};
use crate::sinks::pg_apply::{history, store};
use crate::sinks::versions::{CloseRow, OpenRow};
use crate::sinks::SinkError;

/// Tier rows a mending transaction takes at most: what a mend holds in memory at a time,
/// however long the table was in error.
const MEND_TXN_ROWS: usize = 20_000;

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
        let checkpoints = Arc::new(store::load_checkpoints(target, &spec.name).await?);
        let upto = move |tenant: &str| {
            resume.max(store::tenant_applied(&checkpoints, tenant).unwrap_or(0))
        };
        for (table, from) in missed {
            let Some((_, info)) = infos.iter().find(|(t, _)| t.name == table) else {
                continue;
            };
            let mend = TableMend {
                job: &spec.name,
                root: &root,
                table: &table,
                info,
                include,
                from,
                txn_rows: MEND_TXN_ROWS,
            };
            match mend.run(target, upto.clone()).await? {
                Mended::Done { inserted, closed } => {
                    tracing::info!(job = %spec.name, target = index, table = %table,
                        from = %format_lsn(from), inserted, closed,
                        "history table mended from the cold tier: the versions it refused while the table was in error are in it now")
                }
                Mended::Refused(reason) => {
                    tracing::warn!(job = %spec.name, target = index, table = %table,
                        from = %format_lsn(from), error = %reason,
                        "the history table still refuses the versions it missed while the table was in error; it is mended from the cold tier at a later start")
                }
            }
        }
    }
    Ok(())
}

/// How a table's mend ended.
#[derive(Debug, PartialEq, Eq)]
enum Mended {
    /// Every missed version written and the mark cleared: rows inserted and closed.
    Done { inserted: u64, closed: u64 },
    /// The history table refused a transaction (the mark stays): the target's reason.
    Refused(String),
}

/// One history table's mend from the cold tier at `root`: the versions of `info`'s table
/// (of the tenants `include` names) opened or closed at an LSN from `from` on.
struct TableMend<'a> {
    job: &'a str,
    root: &'a Path,
    /// The table's name in the job's spec.
    table: &'a str,
    info: &'a TableInfo,
    include: &'a TenantFilter,
    from: Lsn,
    /// Tier rows per transaction ([`MEND_TXN_ROWS`]).
    txn_rows: usize,
}

impl TableMend<'_> {
    /// Writes the missed versions into `target`'s history table, each tenant's up to
    /// `upto(tenant)`. Two passes over the tier, first the versions it opened, then those
    /// it closed, so a close never comes before its version's row whatever order the files
    /// hold. Each pass writes in transactions of up to `txn_rows` tier rows; a last one
    /// clears the mark. Both writes are idempotent, so a mend cut short (refused, or the
    /// process stopped) leaves the mark and is taken again from its start.
    async fn run(
        &self,
        target: &mut tokio_postgres::Client,
        upto: impl Fn(&str) -> Lsn + Clone + Send + 'static,
    ) -> Result<Mended, SinkError> {
        let (mut inserted, mut closed) = (0, 0);
        for event in [ColdEvent::Open, ColdEvent::Close] {
            let (mut chunks, reader) = self.tier_chunks(event, upto.clone());
            while let Some(rows) = chunks.recv().await {
                let versions = TierVersions::of(self.info, &rows);
                let (opens, closes) = versions.rows();
                match history::mend_versions(target, self.job, self.info, &opens, &closes, false)
                    .await
                {
                    Ok((i, c)) => (inserted, closed) = (inserted + i, closed + c),
                    Err(SinkError::Definite(reason)) => return Ok(Mended::Refused(reason)),
                    Err(e) => return Err(e),
                }
            }
            reader
                .await
                .map_err(|e| SinkError::Transient(format!("cold-tier task: {e}")))??;
        }
        match history::mend_versions(target, self.job, self.info, &[], &[], true).await {
            Ok(_) => Ok(Mended::Done { inserted, closed }),
            Err(SinkError::Definite(reason)) => Ok(Mended::Refused(reason)),
            Err(e) => Err(e),
        }
    }

    /// The tier's rows of kind `event` in the mend's range, read off the async threads and
    /// handed over `txn_rows` at a time (one chunk read ahead). The task's result says
    /// whether the whole tier was read: a chunk receiver dropped early stops it.
    fn tier_chunks(
        &self,
        event: ColdEvent,
        upto: impl Fn(&str) -> Lsn + Send + 'static,
    ) -> (
        tokio::sync::mpsc::Receiver<Vec<ColdRow>>,
        tokio::task::JoinHandle<Result<(), SinkError>>,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let root = self.root.to_path_buf();
        let table = self.table.to_string();
        let qualified = self.info.qualified_name();
        let include = self.include.clone();
        let (from, txn_rows) = (self.from, self.txn_rows.max(1));
        let reader = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::new();
            let hand_over = |chunk: &mut Vec<ColdRow>| {
                sender
                    .blocking_send(std::mem::take(chunk))
                    .map_err(|_| ParquetError::Stopped {
                        reason: "the mend stopped".into(),
                    })
            };
            let tenants = tier_tenants(&root, &table, &include).map_err(cold_error(&root))?;
            for tenant in tenants {
                let to = upto(&tenant);
                for_each_batch(&root, &tenant, &qualified, |rows| {
                    for row in rows {
                        let in_range = row
                            .commit_lsn()
                            .is_some_and(|lsn| (from..=to).contains(&lsn));
                        if in_range && row.event == event {
                            chunk.push(row);
                            if chunk.len() >= txn_rows {
                                hand_over(&mut chunk)?;
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(cold_error(&root))?;
            }
            if !chunk.is_empty() {
                hand_over(&mut chunk).map_err(cold_error(&root))?;
            }
            Ok(())
        });
        (receiver, reader)
    }
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

#[cfg(test)]
#[path = "history_repair_tests.rs"]
mod tests;
