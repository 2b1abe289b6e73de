//! The Parquet sink: continuous export of the job's history versions to the cold tier.
//!
//! Per tenant and table, each apply publishes the versions opened (`event = open`) and
//! closed (`event = close`, with the closing system time), each with its full row, by
//! its transactions as files named by LSN range (see [`ColdTableWriter`] for the commit
//! protocol). What the table's manifest already covers is skipped, so a replay after a
//! crash never writes a row twice; tenants are owned by one worker each, so every table
//! directory has exactly one writer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::change::{Cell, HistoryEvent, Lsn, Row, TableInfo};
use crate::sinks::parquet::{
    ChangeOp, ColdColumn, ColdEvent, ColdRow, ColdTableWriter, ParquetError,
};
use crate::sinks::versions::plan_history;
use crate::sinks::{ApplyBatch, ApplyReport, Sink, SinkError, TenantApplied};

/// The cold-tier sink of one worker.
pub struct ParquetSink {
    job: String,
    root: PathBuf,
    worker: u32,
    /// Open writers by (tenant, `schema.table`), with the columns they were opened with.
    writers: HashMap<(String, String), (Vec<ColdColumn>, ColdTableWriter)>,
}

/// One table directory's share of an apply.
struct TableRows {
    tenant: String,
    table: String,
    columns: Vec<ColdColumn>,
    /// (commit LSN, row) in order.
    rows: Vec<(Lsn, ColdRow)>,
}

impl ParquetSink {
    /// A sink for worker `worker` writing under `root`.
    pub fn new(job: &str, root: PathBuf, worker: u32) -> ParquetSink {
        ParquetSink {
            job: job.to_owned(),
            root,
            worker,
            writers: HashMap::new(),
        }
    }
}

/// The cold-tier columns of a table shape.
pub fn cold_columns(table: &TableInfo) -> Vec<ColdColumn> {
    table
        .columns
        .iter()
        .map(|c| ColdColumn {
            name: c.name.clone(),
            pg_type: c.type_name.clone(),
        })
        .collect()
}

/// The cold-tier op of a history op name (the same three names).
pub(crate) fn op_of(name: &str) -> ChangeOp {
    name.parse().unwrap_or(ChangeOp::Update)
}

fn texts(row: &Row, width: usize) -> Vec<Option<String>> {
    (0..width)
        .map(|i| row.get(i).and_then(Cell::as_text).map(str::to_owned))
        .collect()
}

/// Turns one table directory's events (in order) into cold rows.
pub fn cold_rows(table: &TableInfo, events: &[(Lsn, &HistoryEvent)]) -> Vec<(Lsn, ColdRow)> {
    let width = table.columns.len();
    let mut out = Vec::new();
    // Per transaction: versions opened and closed by one transaction are not stored.
    let mut start = 0;
    while start < events.len() {
        let lsn = events[start].0;
        let end = start
            + events[start..]
                .iter()
                .take_while(|(l, _)| *l == lsn)
                .count();
        let txn: Vec<&HistoryEvent> = events[start..end].iter().map(|(_, e)| *e).collect();
        let (opens, closes) = plan_history(&txn);
        for c in closes {
            out.push((
                lsn,
                ColdRow {
                    event: ColdEvent::Close,
                    op: op_of(c.op),
                    values: texts(c.value, width),
                    valid_from: c.valid_from,
                    valid_to: c.valid_to,
                    system_from: c.system_from.micros,
                    system_from_lsn: c.system_from.lsn,
                    system_to: Some(c.system_to.micros),
                    system_to_lsn: Some(c.system_to.lsn),
                    tombstone: c.tombstone,
                },
            ));
        }
        for o in opens {
            out.push((
                lsn,
                ColdRow {
                    event: ColdEvent::Open,
                    op: op_of(o.op),
                    values: texts(o.row, width),
                    valid_from: o.valid_from,
                    valid_to: o.valid_to,
                    system_from: o.system_from.micros,
                    system_from_lsn: o.system_from.lsn,
                    system_to: None,
                    system_to_lsn: None,
                    tombstone: o.tombstone,
                },
            ));
        }
        start = end;
    }
    out
}

fn definite(e: ParquetError) -> SinkError {
    SinkError::Definite(format!("parquet cold tier: {e}"))
}

impl Sink for ParquetSink {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let mut grouped: BTreeMap<(&str, String), Vec<(Lsn, &HistoryEvent)>> = BTreeMap::new();
        for batch in batches {
            for event in &batch.history {
                grouped
                    .entry((&event.tenant, event.table.qualified_name()))
                    .or_default()
                    .push((batch.commit_lsn, event));
            }
        }
        let work: Vec<TableRows> = grouped
            .into_iter()
            .filter_map(|((tenant, table), events)| {
                let shape = events.last()?.1.table.clone();
                Some(TableRows {
                    tenant: tenant.to_owned(),
                    table,
                    columns: cold_columns(&shape),
                    rows: cold_rows(&shape, &events),
                })
            })
            .collect();
        if work.is_empty() {
            return Ok(ApplyReport::default());
        }
        let root = self.root.clone();
        let mut writers = std::mem::take(&mut self.writers);
        let (writers, result) = tokio::task::spawn_blocking(move || {
            let result = write_all(&root, &mut writers, work);
            (writers, result)
        })
        .await
        .map_err(|e| SinkError::Transient(format!("parquet writer task: {e}")))?;
        self.writers = writers;
        if let Err(e) = &result {
            tracing::warn!(job = %self.job, worker = self.worker, error = %e, "cold-tier write failed; retried");
            // Writers reopen (and recover) on the retry.
            self.writers.clear();
        }
        result
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        std::fs::create_dir_all(&self.root).map_err(|e| {
            SinkError::Definite(format!(
                "cannot create the cold-tier directory {}: {e}",
                self.root.display()
            ))
        })
    }
}

fn write_all(
    root: &std::path::Path,
    writers: &mut HashMap<(String, String), (Vec<ColdColumn>, ColdTableWriter)>,
    work: Vec<TableRows>,
) -> Result<ApplyReport, SinkError> {
    let mut report = ApplyReport::default();
    for t in work {
        let key = (t.tenant.clone(), t.table.clone());
        let reopen = writers.get(&key).is_none_or(|(cols, _)| *cols != t.columns);
        if reopen {
            let writer =
                ColdTableWriter::open(root, &t.tenant, &t.table, &t.columns).map_err(definite)?;
            writers.insert(key.clone(), (t.columns.clone(), writer));
        }
        let Some((_, writer)) = writers.get_mut(&key) else {
            continue;
        };
        let covered = writer.covered_lsn();
        let fresh: Vec<ColdRow> = t
            .rows
            .iter()
            .filter(|(lsn, _)| *lsn > covered)
            .map(|(_, r)| r.clone())
            .collect();
        report.skipped += (t.rows.len() - fresh.len()) as u64;
        let (Some(lo), Some(hi)) = (
            t.rows.iter().map(|r| r.0).filter(|l| *l > covered).min(),
            t.rows.iter().map(|r| r.0).max(),
        ) else {
            continue;
        };
        let files = writer.write(&fresh, lo, hi).map_err(definite)?;
        report.upserted += fresh.len() as u64;
        report.bytes += files.iter().map(|f| f.bytes).sum::<u64>();
        report.tenants.push(TenantApplied {
            tenant: t.tenant.clone(),
            lsn: hi,
            upserts: fresh.len() as u64,
            deletes: 0,
        });
    }
    Ok(report)
}
