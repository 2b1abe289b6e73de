//! The Parquet sink: continuous export of the job's history versions to the cold tier.
//!
//! Per tenant and table, each apply publishes the versions opened (`event = open`) and
//! closed (`event = close`, with the closing system time), each with its full row, by
//! its transactions as files named by LSN range (see [`ColdTableWriter`] for the commit
//! protocol). What the table's manifest already covers is skipped, so a replay after a
//! crash never writes a row twice; tenants are owned by one worker each, so every table
//! directory has exactly one writer. A transaction too large to hold is streamed into
//! staged files part by part and published once ([`super::large_txn`]).
//!
//! Compaction ([`ColdTableWriter::compact`]) runs as the sink's upkeep, after the worker
//! has reported the apply durable, so it never holds back an acknowledgement: after each
//! apply for the directories that list enough small files, and while the task is idle for
//! directories that have settled (no write for [`SETTLED`]) with two small files or more,
//! so a quiet directory does not keep its last small files until its next write. The
//! first idle upkeep after a start also opens this worker's directories that an earlier
//! run left on disk with small files ([`ParquetSink::with_owner`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::change::{Cell, HistoryEvent, Lsn, Row, TableInfo, Text};
use crate::operators::partition::TenantPlan;
use crate::sinks::large::PartSource;
use crate::sinks::parquet::large_txn::{LargeLimits, LargeWrite, LargeWriteError, LARGE_LIMITS};
use crate::sinks::parquet::writer::{
    quiet_directories, CompactionPolicy, CompactionStats, COMPACTION,
};
use crate::sinks::parquet::{
    ChangeOp, ColdColumn, ColdEvent, ColdRow, ColdTableWriter, ParquetError,
};
use crate::sinks::spill::SpilledTxn;
use crate::sinks::versions::plan_history;
use crate::sinks::{ApplyBatch, ApplyReport, Sink, SinkError, TenantApplied};

/// The cold-tier sink of one worker.
pub struct ParquetSink {
    job: String,
    root: PathBuf,
    worker: u32,
    /// Open writers by (tenant, `schema.table`), with the columns they were opened with.
    writers: HashMap<(String, String), OpenWriter>,
    /// How a large transaction is cut into files ([`LargeWrite`]).
    large_limits: LargeLimits,
    /// When a table directory's small files are merged ([`ColdTableWriter::compact`]).
    compaction: CompactionPolicy,
    /// What the compactions did, for the metrics.
    compaction_stats: Arc<CompactionStats>,
    /// Whether the job is behind the source: compaction then waits for
    /// [`BUSY_COMPACTION_FACTOR`] times as many small files, so a catch-up spends its time
    /// on new rows and is compacted once it is over.
    behind: Arc<dyn Fn() -> bool + Send + Sync>,
    /// When each open writer's directory was last written.
    written_at: HashMap<(String, String), Instant>,
    /// Directories written since the last upkeep: the only ones an upkeep after an
    /// apply looks at (the others' small files have not changed since).
    written_since_upkeep: HashSet<(String, String)>,
    /// How long a directory goes unwritten before idle upkeep compacts it ([`SETTLED`]).
    settled: Duration,
    /// The job's tenants and tables and how they are spread over workers: which
    /// directories on disk are this worker's ([`ParquetSink::with_owner`]).
    owner: Option<Arc<TenantPlan>>,
    /// Whether idle upkeep has looked on disk for this worker's directories that no
    /// writer has opened since the sink started.
    looked_on_disk: bool,
}

/// A table directory unwritten this long has settled: idle upkeep merges its small files
/// once two or more are listed. (A directory still written now and then keeps collecting
/// them until `compact_min_files`, so a trickle does not rewrite its merged file at every
/// idle moment.)
pub const SETTLED: Duration = Duration::from_secs(60);

/// Small files a settled directory needs for idle upkeep to compact it.
const SETTLED_MIN_FILES: usize = 2;

/// How many times `compact_min_files` small files a directory lists before it is
/// compacted while the sink is behind.
pub const BUSY_COMPACTION_FACTOR: usize = 8;

/// One table directory's history events in an apply, in order.
struct TableEvents<'a> {
    tenant: &'a str,
    table: String,
    /// The table's shape as of its last event.
    shape: &'a TableInfo,
    events: Vec<(Lsn, &'a HistoryEvent)>,
}

impl TableEvents<'_> {
    /// The rows to write, in the table's latest shape.
    fn rows(&self) -> TableRows {
        TableRows {
            tenant: self.tenant.to_owned(),
            table: self.table.clone(),
            columns: cold_columns(self.shape),
            rows: cold_rows(self.shape, &self.events),
        }
    }
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
            large_limits: LARGE_LIMITS,
            compaction: COMPACTION,
            compaction_stats: Arc::default(),
            behind: Arc::new(|| false),
            written_at: HashMap::new(),
            written_since_upkeep: HashSet::new(),
            settled: SETTLED,
            owner: None,
            looked_on_disk: false,
        }
    }

    /// The same sink owning, under `plan`, the directories of the job's tenants this
    /// worker serves and the job's tables: its first idle upkeep also compacts those
    /// already on disk (left by an earlier run) that no write has opened since. Without
    /// it (the default) idle upkeep sees only directories written since the start.
    pub fn with_owner(mut self, plan: Arc<TenantPlan>) -> ParquetSink {
        self.owner = Some(plan);
        self
    }

    /// The same sink cutting large transactions into files by `limits` (default
    /// [`LARGE_LIMITS`]).
    pub fn with_large_limits(mut self, limits: LargeLimits) -> ParquetSink {
        self.large_limits = limits;
        self
    }

    /// The same sink compacting table directories by `policy` (default [`COMPACTION`]).
    pub fn with_compaction(mut self, policy: CompactionPolicy) -> ParquetSink {
        self.compaction = policy;
        self
    }

    /// The same sink asking `behind` whether the job is behind the source (default:
    /// never), see [`BUSY_COMPACTION_FACTOR`].
    pub fn with_behind(mut self, behind: Arc<dyn Fn() -> bool + Send + Sync>) -> ParquetSink {
        self.behind = behind;
        self
    }

    /// The same sink treating a directory unwritten for `settled` as settled (default
    /// [`SETTLED`]).
    pub fn with_settled(mut self, settled: Duration) -> ParquetSink {
        self.settled = settled;
        self
    }

    /// The same sink counting its compactions into `stats`.
    pub fn with_compaction_stats(mut self, stats: Arc<CompactionStats>) -> ParquetSink {
        self.compaction_stats = stats;
        self
    }
}

/// The cold-tier columns of a table shape.
pub fn cold_columns(table: &TableInfo) -> Vec<ColdColumn> {
    table
        .columns
        .iter()
        .map(|c| ColdColumn {
            attnum: c.attnum,
            ..ColdColumn::new(c.name.clone(), c.type_name.clone())
        })
        .collect()
}

/// The cold-tier op of a history op name (the same three names).
pub(crate) fn op_of(name: &str) -> ChangeOp {
    name.parse().unwrap_or(ChangeOp::Update)
}

/// A row's values as the cold tier stores them: the shared texts, no copies.
fn texts(row: &Row, width: usize) -> Vec<Option<Text>> {
    (0..width)
        .map(|i| row.get(i).and_then(Cell::shared_text))
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

/// A batch's history events by table directory (tenant, `schema.table`), in order.
/// Consecutive events mostly share tenant and table: the directory is named once per run.
pub(super) fn by_table_directory(
    batches: &[ApplyBatch],
) -> BTreeMap<(&str, String), Vec<(Lsn, &HistoryEvent)>> {
    let mut runs: Vec<Vec<(Lsn, &HistoryEvent)>> = Vec::new();
    for batch in batches {
        for event in &batch.history {
            match runs.last_mut() {
                Some(run)
                    if run.last().is_some_and(|(_, e)| {
                        e.tenant == event.tenant && Arc::ptr_eq(&e.table, &event.table)
                    }) =>
                {
                    run.push((batch.commit_lsn, event))
                }
                _ => runs.push(vec![(batch.commit_lsn, event)]),
            }
        }
    }
    let mut grouped: BTreeMap<(&str, String), Vec<(Lsn, &HistoryEvent)>> = BTreeMap::new();
    for run in runs {
        let Some((_, first)) = run.first() else {
            continue;
        };
        let key = (first.tenant.as_str(), first.table.qualified_name());
        grouped.entry(key).or_default().extend(run);
    }
    grouped
}

fn definite(e: ParquetError) -> SinkError {
    SinkError::Definite(format!("parquet cold tier: {e}"))
}

/// Runs a write that blocks (files, fsyncs): on a multi-threaded runtime the other tasks
/// move to another thread meanwhile; a single-threaded runtime (tests) waits.
fn blocking<T>(write: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread) | Err(_) => write(),
        Ok(_) => tokio::task::block_in_place(write),
    }
}

impl ParquetSink {
    /// After a failed write the writers are dropped: they reopen (and recover what the
    /// failure left on disk) on the retry.
    fn after_write<T, E: std::fmt::Display>(&mut self, result: &Result<T, E>) {
        if let Err(e) = result {
            tracing::warn!(job = %self.job, worker = self.worker, error = %e, "cold-tier write failed; retried");
            self.writers.clear();
        }
    }

    /// Writes one large transaction's parts as [`PartSource`] hands them out.
    async fn write_large<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        lsn: Lsn,
        mut parts: PartSource<'_, '_, '_, F>,
    ) -> Result<ApplyReport, LargeWriteError> {
        let (root, writers) = (&self.root, &mut self.writers);
        let mut large = LargeWrite::new(root, lsn, self.large_limits);
        let result = async {
            while let Some(part) = parts.next_part().await? {
                blocking(|| large.add(&part, writers))?;
            }
            Ok(blocking(|| large.finish(writers))?)
        }
        .await;
        self.after_write(&result);
        result
    }

    /// Opens a writer for each of this worker's directories on disk that lists at least
    /// [`SETTLED_MIN_FILES`] small files and has none open yet. Unwritten since the sink
    /// started, they count as settled, so the idle upkeep calling this compacts them.
    fn open_quiet_directories(&mut self, policy: &CompactionPolicy) {
        let Some(plan) = &self.owner else {
            return;
        };
        let worker = self.worker;
        let owns = |tenant: &str, table: &str| {
            plan.includes(tenant)
                && plan.worker_of(tenant) == worker
                && plan.tenant_keys.contains_key(table)
        };
        let root = &self.root;
        let found = match blocking(|| {
            quiet_directories(root, &owns, policy.small_rows, SETTLED_MIN_FILES)
        }) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(job = %self.job, worker, error = %e, "cannot list the cold tier for idle compaction");
                return;
            }
        };
        for dir in found {
            let key = (dir.tenant, dir.table);
            if self.writers.contains_key(&key) {
                continue;
            }
            match blocking(|| ColdTableWriter::open(root, &key.0, &key.1, &dir.columns)) {
                Ok(writer) => {
                    self.writers.insert(key, (dir.columns, writer));
                }
                Err(e) => {
                    tracing::warn!(job = %self.job, worker, tenant = %key.0, table = %key.1, error = %e, "cannot open a cold-tier directory for idle compaction")
                }
            }
        }
    }
}

impl Sink for ParquetSink {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let work: Vec<TableEvents> = by_table_directory(batches)
            .into_iter()
            .filter_map(|((tenant, table), events)| {
                Some(TableEvents {
                    tenant,
                    table,
                    shape: events.last()?.1.table.as_ref(),
                    events,
                })
            })
            .collect();
        if work.is_empty() {
            return Ok(ApplyReport::default());
        }
        let keys: Vec<(String, String)> = work
            .iter()
            .map(|t| (t.tenant.to_owned(), t.table.clone()))
            .collect();
        let (root, writers) = (&self.root, &mut self.writers);
        let result = blocking(move || write_all(root, writers, work));
        self.after_write(&result);
        if result.is_ok() {
            let now = Instant::now();
            for key in keys {
                self.written_at.insert(key.clone(), now);
                self.written_since_upkeep.insert(key);
            }
        }
        result
    }

    /// Compacts the directories that ask for it: after an apply, those written since the
    /// last upkeep that list `compact_min_files` small files ([`BUSY_COMPACTION_FACTOR`]
    /// times as many while the job is behind); when idle, the settled ones listing two
    /// or more.
    async fn upkeep(&mut self, idle: bool) {
        let written = std::mem::take(&mut self.written_since_upkeep);
        if self.compaction.min_files == 0 {
            return;
        }
        let min_files = match (idle, (self.behind)()) {
            (true, _) => SETTLED_MIN_FILES,
            (false, true) => self
                .compaction
                .min_files
                .saturating_mul(BUSY_COMPACTION_FACTOR),
            (false, false) => self.compaction.min_files,
        };
        let policy = CompactionPolicy {
            min_files,
            ..self.compaction
        };
        if idle && !self.looked_on_disk {
            self.looked_on_disk = true;
            self.open_quiet_directories(&policy);
        }
        let now = Instant::now();
        let looked_at = |key: &(String, String)| {
            if idle {
                self.written_at
                    .get(key)
                    .is_none_or(|at| now.duration_since(*at) >= self.settled)
            } else {
                written.contains(key)
            }
        };
        let due: Vec<&mut ColdTableWriter> = self
            .writers
            .iter_mut()
            .filter(|(key, (_, w))| looked_at(key) && w.wants_compaction(&policy))
            .map(|(_, (_, w))| w)
            .collect();
        if due.is_empty() {
            return;
        }
        let stats = self.compaction_stats.as_ref();
        blocking(|| in_parallel(due, |w| compact(w, &policy, stats)));
    }

    /// Writes a large transaction piece by piece ([`LargeWrite`]); a table whose columns
    /// changed inside it makes it written whole instead.
    async fn apply_large(&mut self, txn: &mut SpilledTxn) -> Result<ApplyReport, SinkError> {
        let lsn = txn.commit_lsn();
        match self
            .write_large(
                lsn,
                PartSource::<fn(crate::sinks::backlog::Load)>::spilled(txn)?,
            )
            .await
        {
            Ok(report) => Ok(report),
            Err(LargeWriteError::Sink(e)) => Err(e),
            Err(shape @ LargeWriteError::ShapeChanged { .. }) => {
                tracing::info!(job = %self.job, worker = self.worker, reason = %shape, "large transaction written to the cold tier whole");
                let whole = txn
                    .read_all()
                    .map_err(|e| SinkError::Definite(e.to_string()))?;
                self.apply(std::slice::from_ref(&whole)).await
            }
        }
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

/// Table directories written at once by one apply. Each has its own writer and files,
/// so they are independent; most of a write's time is its fsyncs, which overlap.
const PARALLEL_TABLE_WRITES: usize = 4;

/// An open writer with the columns it was opened with.
pub type OpenWriter = (Vec<ColdColumn>, ColdTableWriter);

/// Runs `each` on every item, [`PARALLEL_TABLE_WRITES`] at once (on this thread alone
/// for a single item).
fn in_parallel<T: Send>(items: Vec<T>, each: impl Fn(T) + Sync) {
    let threads = items.len().min(PARALLEL_TABLE_WRITES);
    let queue = Mutex::new(items.into_iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next());
    let work_off_queue = || {
        while let Some(item) = next() {
            each(item);
        }
    };
    if threads <= 1 {
        work_off_queue();
    } else {
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work_off_queue);
            }
            work_off_queue();
        });
    }
}

/// Writes every table directory's rows, [`PARALLEL_TABLE_WRITES`] at once; each thread
/// also turns its directories' events into rows.
fn write_all(
    root: &std::path::Path,
    writers: &mut HashMap<(String, String), OpenWriter>,
    work: Vec<TableEvents>,
) -> Result<ApplyReport, SinkError> {
    let jobs: Vec<(TableEvents, Option<OpenWriter>)> = work
        .into_iter()
        .map(|t| {
            let writer = writers.remove(&(t.tenant.to_owned(), t.table.clone()));
            (t, writer)
        })
        .collect();
    let done = Mutex::new(Vec::new());
    in_parallel(jobs, |(t, writer)| {
        let key = (t.tenant.to_owned(), t.table.clone());
        let outcome = write_table(root, t.rows(), writer);
        if let Ok(mut d) = done.lock() {
            d.push((key, outcome));
        }
    });
    let mut report = ApplyReport::default();
    let mut first_error = None;
    let done = done.into_inner().unwrap_or_default();
    for (key, outcome) in done {
        match outcome {
            Ok((writer, applied)) => {
                writers.insert(key, writer);
                report.skipped += applied.skipped;
                report.bytes += applied.bytes;
                if let Some(tenant) = applied.tenant {
                    report.upserted += tenant.upserts;
                    report.tenants.push(tenant);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// What one table directory's write did.
struct TableWritten {
    /// The tenant's applied position (`None`: nothing new).
    tenant: Option<TenantApplied>,
    /// Rows skipped as already covered.
    skipped: u64,
    /// Bytes published.
    bytes: u64,
}

/// Writes one table directory's rows, opening (and recovering) its writer if needed.
fn write_table(
    root: &std::path::Path,
    t: TableRows,
    writer: Option<OpenWriter>,
) -> Result<(OpenWriter, TableWritten), SinkError> {
    let (columns, mut writer) = match writer {
        Some((cols, w)) if cols == t.columns => (cols, w),
        _ => {
            let w =
                ColdTableWriter::open(root, &t.tenant, &t.table, &t.columns).map_err(definite)?;
            (t.columns.clone(), w)
        }
    };
    let covered = writer.covered_lsn();
    let (lo, hi) = (
        t.rows.iter().map(|r| r.0).filter(|l| *l > covered).min(),
        t.rows.iter().map(|r| r.0).max(),
    );
    let total = t.rows.len();
    let fresh: Vec<ColdRow> = t
        .rows
        .into_iter()
        .filter(|(lsn, _)| *lsn > covered)
        .map(|(_, r)| r)
        .collect();
    let skipped = (total - fresh.len()) as u64;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        let nothing = TableWritten {
            tenant: None,
            skipped,
            bytes: 0,
        };
        return Ok(((columns, writer), nothing));
    };
    let files = writer.write(&fresh, lo, hi).map_err(definite)?;
    let applied = TenantApplied {
        tenant: t.tenant,
        lsn: hi,
        upserts: fresh.len() as u64,
        deletes: 0,
    };
    let bytes = files.iter().map(|f| f.bytes).sum::<u64>();
    let written = TableWritten {
        tenant: Some(applied),
        skipped,
        bytes,
    };
    Ok(((columns, writer), written))
}

/// Compacts one table directory. Its rows are durable whatever happens here, so a failure
/// is logged, not returned: the writer recovers before its next write.
fn compact(writer: &mut ColdTableWriter, policy: &CompactionPolicy, stats: &CompactionStats) {
    match writer.compact(policy) {
        Ok(done) if done.files_in > 0 => {
            stats.record(&done);
            tracing::info!(
                table_dir = %writer.table_dir().display(),
                files_in = done.files_in,
                files_out = done.files_out,
                rows = done.rows,
                bytes_in = done.bytes_in,
                bytes_out = done.bytes_out,
                "cold tier compacted"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            table_dir = %writer.table_dir().display(),
            error = %e,
            "cold tier compaction failed; the writer recovers the directory before its next write"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::change::fixtures::{opened, table};
    use crate::sinks::parquet::{read_table, Manifest};

    fn open_event(table: &Arc<TableInfo>, tenant: u32, id: u32, lsn: Lsn) -> HistoryEvent {
        let row: Row = vec![
            Cell::Text(tenant.to_string().into()),
            Cell::Text(id.to_string().into()),
        ];
        opened(&tenant.to_string(), id, table, row, lsn)
    }

    /// Table `app.<name>` of `(tenant_id, id)`, both in the key.
    fn keyed_table(name: &str) -> Arc<TableInfo> {
        Arc::new(table(
            name,
            &[("tenant_id", "integer"), ("id", "integer")],
            &[0, 1],
        ))
    }

    /// A policy under which files of fewer than 100 rows are small.
    fn small_policy(min_files: usize) -> CompactionPolicy {
        CompactionPolicy {
            small_rows: 100,
            min_files,
            max_rows: 1_000,
        }
    }

    /// A batch at `lsn` opening `n` rows of tenant 1.
    fn tenant_one_batch(shape: &Arc<TableInfo>, lsn: u64, n: u32) -> ApplyBatch {
        tenant_batch(shape, 1, lsn, n)
    }

    /// A batch at `lsn` opening `n` rows of `tenant`.
    fn tenant_batch(shape: &Arc<TableInfo>, tenant: u32, lsn: u64, n: u32) -> ApplyBatch {
        ApplyBatch {
            commit_lsn: lsn,
            changes: Vec::new(),
            history: (0..n)
                .map(|i| open_event(shape, tenant, lsn as u32 * 10 + i, lsn))
                .collect(),
        }
    }

    /// The files tenant 1's table directory lists.
    fn tenant_one_files(root: &std::path::Path) -> Vec<crate::sinks::parquet::FileEntry> {
        directory_files(root, "1", "app.t")
    }

    /// The files the manifest of (`tenant`, `table`) lists.
    fn directory_files(
        root: &std::path::Path,
        tenant: &str,
        table: &str,
    ) -> Vec<crate::sinks::parquet::FileEntry> {
        Manifest::load(&super::super::table_dir(root, tenant, table))
            .unwrap()
            .unwrap()
            .files
    }

    /// A sink that keeps up writes one small file per apply; once a directory lists
    /// enough of them the upkeep after an apply merges them, and the table reads the same.
    /// The apply itself never compacts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn small_files_are_compacted_as_the_sink_writes() {
        let dir = tempfile::tempdir().unwrap();
        let shape = keyed_table("t");
        let policy = small_policy(4);
        let stats = Arc::new(CompactionStats::default());
        let mut sink = ParquetSink::new("j", dir.path().to_path_buf(), 0)
            .with_compaction(policy)
            .with_compaction_stats(stats.clone());
        sink.reconnect().await.unwrap();
        let mut ids = Vec::new();
        for lsn in 1..=10u64 {
            ids.extend([lsn * 10, lsn * 10 + 1]);
            sink.apply(&[tenant_one_batch(&shape, lsn, 2)])
                .await
                .unwrap();
            if lsn == 4 {
                assert_eq!(tenant_one_files(dir.path()).len(), 4, "not in the apply");
            }
            sink.upkeep(false).await;
        }
        let files = tenant_one_files(dir.path());
        assert!(files.len() < 4, "merged as it wrote: {files:?}");
        assert_eq!(files.last().map(|f| f.lsn_max), Some(10));
        let (_, rows) = read_table(dir.path(), "1", "app.t").unwrap();
        let read: Vec<u64> = rows
            .iter()
            .filter_map(|r| r.values[1].as_deref()?.parse().ok())
            .collect();
        assert_eq!(read, ids, "every row once, in order");
        let merged = stats
            .files_merged
            .load(std::sync::atomic::Ordering::Relaxed);
        let written = stats
            .files_written
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(merged >= 4 && written >= 1, "counted: {stats:?}");
        // Each compaction replaced the files it merged (merged files too, when merged
        // again) with the ones it wrote.
        assert_eq!(
            10 + written,
            files.len() as u64 + merged,
            "ten files written, the merged ones replaced: {stats:?}"
        );
    }

    /// While the job is behind the source compaction waits for
    /// [`BUSY_COMPACTION_FACTOR`] times as many small files; the first upkeep after the
    /// catch-up compacts what gathered, in one pass.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_sink_that_is_behind_compacts_once_it_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let shape = keyed_table("t");
        let policy = small_policy(2);
        use std::sync::atomic::{AtomicBool, Ordering};
        let behind = Arc::new(AtomicBool::new(true));
        let flag = behind.clone();
        let mut sink = ParquetSink::new("j", dir.path().to_path_buf(), 0)
            .with_compaction(policy)
            .with_behind(Arc::new(move || flag.load(Ordering::Relaxed)));
        sink.reconnect().await.unwrap();
        let batch = |lsn: u64, n: u32| tenant_one_batch(&shape, lsn, n);
        let files = || tenant_one_files(dir.path()).len();
        for lsn in 1..=10u64 {
            sink.apply(&[batch(lsn, 4)]).await.unwrap();
            sink.upkeep(false).await;
        }
        assert_eq!(
            files(),
            10,
            "behind: ten files, fewer than 2 x 8, none merged"
        );
        behind.store(false, Ordering::Relaxed);
        sink.apply(&[batch(11, 1)]).await.unwrap();
        sink.upkeep(false).await;
        assert_eq!(files(), 1, "caught up: merged in one pass");
        let (_, rows) = read_table(dir.path(), "1", "app.t").unwrap();
        assert_eq!(rows.len(), 41);
    }

    /// Idle upkeep merges a directory's last small files, fewer than `compact_min_files`,
    /// once it has settled, and only then; a directory written since waits again, and a
    /// compaction policy of 0 (off) keeps every file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn idle_upkeep_compacts_a_settled_directory() {
        let dir = tempfile::tempdir().unwrap();
        let shape = keyed_table("t");
        let settled = Duration::from_millis(300);
        let stats = Arc::new(CompactionStats::default());
        let mut sink = ParquetSink::new("j", dir.path().to_path_buf(), 0)
            .with_compaction(small_policy(16))
            .with_compaction_stats(stats.clone())
            .with_settled(settled);
        sink.reconnect().await.unwrap();
        let files = || tenant_one_files(dir.path()).len();
        for lsn in 1..=3u64 {
            sink.apply(&[tenant_one_batch(&shape, lsn, 2)])
                .await
                .unwrap();
            sink.upkeep(false).await;
        }
        sink.upkeep(true).await;
        assert_eq!(files(), 3, "written just now: not settled yet");
        tokio::time::sleep(settled).await;
        sink.upkeep(true).await;
        assert_eq!(files(), 1, "settled: its three small files merged");
        sink.upkeep(true).await;
        assert_eq!(files(), 1, "nothing more to merge");
        sink.apply(&[tenant_one_batch(&shape, 4, 2)]).await.unwrap();
        sink.upkeep(true).await;
        assert_eq!(files(), 2, "written again: waits to settle");
        let (_, rows) = read_table(dir.path(), "1", "app.t").unwrap();
        assert_eq!(rows.len(), 8, "every row once");
        assert_eq!(
            stats
                .files_merged
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );

        let off = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::new("j", off.path().to_path_buf(), 0)
            .with_compaction(small_policy(0))
            .with_settled(Duration::ZERO);
        for lsn in 1..=3u64 {
            sink.apply(&[tenant_one_batch(&shape, lsn, 2)])
                .await
                .unwrap();
        }
        sink.upkeep(true).await;
        assert_eq!(tenant_one_files(off.path()).len(), 3, "compaction off");
    }

    /// After a restart, the first idle upkeep also compacts the worker's directories left
    /// on disk that nothing has written since (before, they waited for their next write):
    /// only those of the job's tables, of tenants this worker serves, listing two small
    /// files or more; a sink without an owner leaves the disk alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn idle_upkeep_after_a_restart_compacts_what_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let column = |name: &str| {
            (
                name.to_string(),
                crate::control::job_spec::TenantKey::Column("tenant_id".to_string()),
            )
        };
        let plan = Arc::new(TenantPlan {
            include: crate::control::job_spec::TenantFilter::All,
            tenant_keys: [column("app.t")].into_iter().collect(),
            peers: 2,
        });
        let mine = plan.worker_of("1");
        let theirs = (2..100u32)
            .find(|t| plan.worker_of(&t.to_string()) != mine)
            .unwrap();
        let t = keyed_table("t");
        let other_table = keyed_table("u");
        // The earlier run: three small files in each directory, one in `lone`'s.
        let mut earlier = ParquetSink::new("j", root.clone(), mine)
            .with_compaction(small_policy(16))
            .with_owner(plan.clone());
        earlier.reconnect().await.unwrap();
        let lone = (2..100u32)
            .find(|t| *t != theirs && plan.worker_of(&t.to_string()) == mine)
            .unwrap();
        for lsn in 1..=3u64 {
            earlier
                .apply(&[
                    tenant_batch(&t, 1, lsn, 2),
                    tenant_batch(&t, theirs, lsn, 2),
                    tenant_batch(&other_table, 1, lsn, 2),
                ])
                .await
                .unwrap();
        }
        earlier
            .apply(&[tenant_batch(&t, lone, 4, 2)])
            .await
            .unwrap();
        drop(earlier);
        let counts = || {
            (
                directory_files(&root, "1", "app.t").len(),
                directory_files(&root, &theirs.to_string(), "app.t").len(),
                directory_files(&root, "1", "app.u").len(),
                directory_files(&root, &lone.to_string(), "app.t").len(),
            )
        };
        assert_eq!(counts(), (3, 3, 3, 1));

        let mut no_owner = ParquetSink::new("j", root.clone(), mine)
            .with_compaction(small_policy(16))
            .with_settled(Duration::ZERO);
        no_owner.upkeep(true).await;
        assert_eq!(
            counts(),
            (3, 3, 3, 1),
            "no owner: nothing on disk is looked at"
        );

        let stats = Arc::new(CompactionStats::default());
        let mut restarted = ParquetSink::new("j", root.clone(), mine)
            .with_compaction(small_policy(16))
            .with_compaction_stats(stats.clone())
            .with_owner(plan.clone());
        restarted.upkeep(false).await;
        assert_eq!(
            counts(),
            (3, 3, 3, 1),
            "an upkeep after an apply does not look"
        );
        restarted.upkeep(true).await;
        assert_eq!(
            counts(),
            (1, 3, 3, 1),
            "ours merged; another worker's tenant, a table not in the job and a lone file not"
        );
        let (_, rows) = read_table(&root, "1", "app.t").unwrap();
        assert_eq!(rows.len(), 6, "every row once");
        assert_eq!(
            stats
                .files_merged
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        // The adopted writer goes on as usual: a new write lands beside the merged file.
        restarted.apply(&[tenant_batch(&t, 1, 5, 2)]).await.unwrap();
        assert_eq!(counts().0, 2);
        assert_eq!(read_table(&root, "1", "app.t").unwrap().1.len(), 8);
    }

    /// One apply spanning more table directories than are written at once: every tenant
    /// gets its own rows, and a replay of the same batches writes nothing again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_apply_writes_every_tenant_once_and_a_replay_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let shape = keyed_table("t");
        let tenants = PARALLEL_TABLE_WRITES as u32 * 2 + 1;
        let batches: Vec<ApplyBatch> = (1..=3u64)
            .map(|lsn| ApplyBatch {
                commit_lsn: lsn * 10,
                changes: Vec::new(),
                history: (0..tenants)
                    .flat_map(|t| (0..4).map(move |i| (t, lsn as u32 * 100 + i)))
                    .map(|(t, id)| open_event(&shape, t, id, lsn * 10))
                    .collect(),
            })
            .collect();
        let mut sink = ParquetSink::new("j", dir.path().to_path_buf(), 0);
        sink.reconnect().await.unwrap();
        let report = sink.apply(&batches).await.unwrap();
        assert_eq!(report.upserted, u64::from(tenants) * 12);
        assert_eq!(report.tenants.len(), tenants as usize);
        assert!(report
            .tenants
            .iter()
            .all(|t| t.lsn == 30 && t.upserts == 12));
        for t in 0..tenants {
            let (_, rows) = read_table(dir.path(), &t.to_string(), "app.t").unwrap();
            assert_eq!(rows.len(), 12, "tenant {t}");
            assert!(rows
                .iter()
                .all(|r| r.values[0].as_deref() == Some(t.to_string().as_str())));
        }
        let replay = sink.apply(&batches).await.unwrap();
        assert_eq!(replay.upserted, 0);
        assert_eq!(replay.skipped, u64::from(tenants) * 12);
        // A fresh sink (a restart) skips them by the manifests too.
        let mut restarted = ParquetSink::new("j", dir.path().to_path_buf(), 0);
        let again = restarted.apply(&batches[1..]).await.unwrap();
        assert_eq!((again.upserted, again.skipped), (0, u64::from(tenants) * 8));
    }
}
