//! Runs one job from start to stop: prepares the source (publication, slot), takes the
//! initial snapshot (`initial_snapshot`) or resumes, runs the reader and the dataflow,
//! prints progress.
//!
//! # Start-up decision
//! The job's progress (the first sink's: the `helios.job_progress` row of a PostgreSQL
//! target, or for a job without one, a file in the first Parquet sink's root, see
//! [`Anchor`]) says whether a snapshot completed and which position was last recorded
//! before being confirmed. With the slot's state on the source:
//! - snapshot done, slot present, slot confirmed ≤ recorded → resume at the slot's
//!   confirmed position (never past what was durable: the sinks skip what they have);
//! - slot missing, or ahead of what we recorded (it was dropped and recreated behind our
//!   back, so changes in between are lost to the stream), or invalidated by the source
//!   (`wal_status = 'lost'`) → new slot, new snapshot. A slot invalidated while the job
//!   runs ends its stream; the job then starts over the same way.
//! - no completed snapshot → (re)create the slot and snapshot.
//!
//! On resume, a spec that now carries tenants or tables the targets lack has them loaded
//! first (`backfill`). A spec's table patterns are resolved on the source before each
//! start (`table_patterns`); new tables matching them while the job runs make it stop in
//! order and start again, which loads them.
//!
//! The reader itself (reconnects, pause, stop) is `job_reader`.
//!
//! # Error handling
//! Transient errors (source or target unreachable, connection lost) are retried with
//! exponential back-off and logged; definite ones end the job with a message naming what
//! to fix.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cdc::transport::ReplicationStream;
use tokio::sync::watch;

use crate::cdc::catalog::{self, PublishedTable};
use crate::cdc::error::CdcError;
use crate::cdc::partition_watch;
use crate::cdc::slot_health;
use crate::cdc::stream::{self, ConfirmedStore, ReaderState};
use crate::cdc::watch_session::WatchSession;
use crate::change::{format_lsn, Lsn, TableInfo};
use crate::control::access::{self, AccessHub};
use crate::control::backfill::{self, coverage_json};
use crate::control::cold_progress;
use crate::control::coverage::Coverage;
use crate::control::history_start::{self, check_history_table};
use crate::control::initial_snapshot::{self, SnapshotProgress};
use crate::control::job_control::{JobState, LeftOutTable};
use crate::control::job_reader::{
    back_off, connect_started, is_transient, read_until_stopped, unless_slot_lost,
};
use crate::control::job_spec::{JobSpec, SinkSpec, TableSpec, TenantFilter, TenantKey};
pub use crate::control::job_stats::JobStats;
use crate::control::{cold_resume, history_books, history_repair, sequence_sync, table_patterns};
use crate::dataflow::host::DataflowHost;
use crate::dataflow::worker::{JobDataflow, SinkPlace, SinkTarget};
use crate::operators::history::HistoryBooks;
use crate::operators::partition::TenantPlan;
use crate::sinks::parquet::{CompactionPolicy, COMPACTION};
use crate::sinks::pg_apply::{self, store, target_rules};
use crate::sinks::qos::rate_limit::SinkLimiter;
use crate::sinks::worker::RETRY_INITIAL;
use crate::sinks::SinkError;

/// Default number of dataflow workers: half the machine's cores, at least one.
///
/// Each worker's share of a transaction becomes its own target transaction, applied by
/// its own sink task and target backend, so a worker needs about two cores' worth of
/// threads (ours plus the target's). Measured with the e2e bench on 2 cores (source and
/// target on the same machine, separate runs): one worker instead of two caught up as
/// fast with about a third less CPU and cut P99 lag at 5k rows/s from 4.9 to 2.0 ms.
pub fn default_workers() -> usize {
    half_the_cores()
}

/// Default number of async runtime threads (the stream reader, the sink tasks and their
/// connections): half the machine's cores, at least one; the dataflow workers have the
/// other half. Measured with the e2e bench on 2 cores: one thread instead of tokio's
/// default of one per core cut P99 lag at 20k rows/s from 58 to 12 ms (fewer wake-ups
/// and context switches between the reader, the sinks and the workers) and caught up as
/// fast.
pub fn default_async_threads() -> usize {
    half_the_cores()
}

fn half_the_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
/// Default interval between progress lines.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why a job stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The source side failed definitely.
    #[error(transparent)]
    Source(#[from] CdcError),
    /// A sink failed definitely during start-up.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The dataflow workers failed.
    #[error("dataflow: {0}")]
    Dataflow(String),
}

/// The tenant plan of a job for `peers` workers.
pub fn tenant_plan(spec: &JobSpec, peers: usize) -> TenantPlan {
    TenantPlan {
        include: spec.tenants.include.clone(),
        tenant_keys: spec
            .tables
            .iter()
            .map(|t| (t.name.clone(), spec.tenant_key_of(t)))
            .collect(),
        peers: peers.max(1) as u32,
    }
}

fn sink_places(spec: &JobSpec) -> Vec<(SinkPlace, usize)> {
    spec.sinks
        .iter()
        .map(|s| match s {
            SinkSpec::Postgres(p) => (
                SinkPlace::Postgres(p.dsn.expose().to_string()),
                p.batch_max_rows,
            ),
            SinkSpec::Parquet(p) => (
                SinkPlace::Parquet {
                    root: p.root.clone().into(),
                    compaction: CompactionPolicy {
                        min_files: p.compact_min_files,
                        ..COMPACTION
                    },
                },
                p.batch_max_rows,
            ),
            SinkSpec::Nats(n) => (SinkPlace::Nats(n.config(&spec.name)), n.batch_max_rows),
        })
        .collect()
}

/// The connection strings of the job's PostgreSQL sinks, in order.
pub(super) fn postgres_dsns(spec: &JobSpec) -> Vec<String> {
    spec.sinks
        .iter()
        .filter_map(|s| match s {
            SinkSpec::Postgres(p) => Some(p.dsn.expose().to_string()),
            SinkSpec::Parquet(_) | SinkSpec::Nats(_) => None,
        })
        .collect()
}

/// The roots of the job's Parquet sinks, in order.
pub(super) fn parquet_roots(spec: &JobSpec) -> Vec<PathBuf> {
    spec.sinks
        .iter()
        .filter_map(|s| match s {
            SinkSpec::Parquet(p) => Some(PathBuf::from(&p.root)),
            SinkSpec::Postgres(_) | SinkSpec::Nats(_) => None,
        })
        .collect()
}

/// Where a job keeps its progress and restores its history from: the first PostgreSQL
/// sink's target, or, for a job without one, the first Parquet sink's root (the spec
/// admits no other job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Anchor {
    /// `helios.job_progress` and the history tables of this target.
    Postgres(String),
    /// `_jobs/<job>.json` and the published versions under this cold root.
    Cold(PathBuf),
}

impl Anchor {
    fn of(spec: &JobSpec) -> Option<Anchor> {
        match postgres_dsns(spec).into_iter().next() {
            Some(dsn) => Some(Anchor::Postgres(dsn)),
            None => parquet_roots(spec).into_iter().next().map(Anchor::Cold),
        }
    }
}

fn cold_progress_error(e: cold_progress::ColdProgressError) -> SinkError {
    match e {
        cold_progress::ColdProgressError::Io { .. } => SinkError::Transient(e.to_string()),
        cold_progress::ColdProgressError::Invalid { .. } => SinkError::Definite(e.to_string()),
    }
}

/// Runs a blocking cold-tier step off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| SinkError::Transient(format!("cold-tier task: {e}")))?
}

/// Runs one step on the job's progress file under `root` off the async threads.
async fn progress_file_step<T: Send + 'static>(
    root: &std::path::Path,
    step: impl FnOnce(&std::path::Path) -> Result<T, cold_progress::ColdProgressError> + Send + 'static,
) -> Result<T, SinkError> {
    let root = root.to_owned();
    blocking(move || step(&root).map_err(cold_progress_error)).await
}

/// Records confirmed positions where the job's [`Anchor`] keeps them.
pub(super) struct ProgressStore {
    job: String,
    anchor: Anchor,
    client: Option<tokio_postgres::Client>,
}

impl ConfirmedStore for ProgressStore {
    async fn store_confirmed(&mut self, lsn: Lsn) -> Result<(), String> {
        let dsn = match &self.anchor {
            Anchor::Postgres(dsn) => dsn,
            Anchor::Cold(root) => {
                let job = self.job.clone();
                return progress_file_step(root, move |r| {
                    cold_progress::record_confirmed(r, &job, lsn)
                })
                .await
                .map_err(|e| e.to_string());
            }
        };
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(
                pg_apply::sink::connect(dsn)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let client = self.client.as_ref().ok_or("no connection")?;
        store::record_confirmed(client, &self.job, lsn)
            .await
            .map_err(|e| e.to_string())
    }
}

/// What the job's owner wants it to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    /// Replicate.
    Run,
    /// Stop reading the source, keep the position and the dataflow.
    Pause,
    /// Finish what is in flight and stop.
    Stop,
}

/// How long a stopping job waits for in-flight changes to become durable.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Starts [`run_job`] as a task on the host's job runtime ([`DataflowHost::job_runtime`]):
/// with a single worker placed `Inline`, the reader then runs on the worker's thread beside
/// the dataflow and the sinks.
pub fn spawn_job(
    spec: JobSpec,
    host: Arc<DataflowHost>,
    stats: Arc<JobStats>,
    control: watch::Receiver<Desired>,
    progress_every: Option<Duration>,
) -> tokio::task::JoinHandle<Result<(), JobError>> {
    host.job_runtime()
        .spawn(async move { run_job(spec, &host, stats, control, progress_every).await })
}

/// Runs `spec` on `host` until `control` says stop, or a definite error.
pub async fn run_job(
    spec: JobSpec,
    host: &DataflowHost,
    stats: Arc<JobStats>,
    mut control: watch::Receiver<Desired>,
    progress_every: Option<Duration>,
) -> Result<(), JobError> {
    let result = loop {
        match run_job_inner(&spec, host, &stats, &mut control, progress_every).await {
            // A new slot and snapshot: the start-up finds the slot invalidated.
            Err(JobError::Source(CdcError::SlotLost(slot))) => {
                stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(job = %spec.name, slot, "the source invalidated the replication slot while the job ran; starting over with a new slot and snapshot");
            }
            // The start-up loads the new tables (`backfill`).
            Ok(Ended::TablesAdded(what)) => {
                tracing::info!(job = %spec.name, "{what}; restarting the job to carry them");
            }
            Ok(Ended::Stopped) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    match &result {
        Ok(()) => stats.set_state(JobState::Stopping, None),
        Err(e) => {
            tracing::error!(job = %spec.name, error = %e, "job failed");
            stats.set_state(JobState::Failed, Some(e.to_string()));
        }
    }
    result
}

/// How one run of the job ended without an error.
enum Ended {
    /// As `control` asked.
    Stopped,
    /// Tables that the job's patterns match appeared on the source: start over to load them.
    TablesAdded(String),
}

async fn run_job_inner(
    submitted: &JobSpec,
    host: &DataflowHost,
    stats: &Arc<JobStats>,
    outer_control: &mut watch::Receiver<Desired>,
    progress_every: Option<Duration>,
) -> Result<Ended, JobError> {
    let spec = submitted;
    let sinks = sink_places(spec);
    let Some(anchor) = Anchor::of(spec) else {
        return Err(JobError::Dataflow(
            "the job has no postgres or parquet sink to keep its progress".into(),
        ));
    };

    // Start-up: retried while transient, until stopped.
    stats.set_state(JobState::Snapshotting, None);
    let mut wait = RETRY_INITIAL;
    let (carried, plan, (client, confirmed, table_names)) = loop {
        if *outer_control.borrow() == Desired::Stop {
            return Ok(Ended::Stopped);
        }
        match start(submitted, host.workers(), &anchor, stats).await {
            Ok(ready) => break ready,
            Err(e) if is_transient(&e) => {
                stats.errors.fetch_add(1, Relaxed);
                stats.set_state(JobState::Snapshotting, Some(e.to_string()));
                tracing::warn!(job = %spec.name, error = %e, retry_in_s = wait.as_secs_f32(), "cannot start the job yet; retrying");
                back_off(&mut wait, outer_control).await;
            }
            Err(e) => return Err(e),
        }
    };
    // From here on, the job's tables are the ones its patterns carry this time.
    let spec: &JobSpec = &carried;
    stats.set_state(JobState::Streaming, None);
    tracing::info!(job = %spec.name, position = %format_lsn(confirmed), "streaming");

    let (events_tx, events_rx) = crate::cdc::event_channel::event_channel();
    let (durable_tx, mut durable_rx) = watch::channel::<Lsn>(0);
    let hub = Arc::new(AccessHub::new(spec, stats.take_saved_model()));
    stats.set_access(Some(hub.clone()));
    // One plain session to the source for everything the job reads there now and then.
    let watch_session = WatchSession::new(spec.source.dsn.expose());
    let windows = tokio::spawn(access::run_windows(hub.clone(), watch_session.clone()));
    let now = crate::change::pg_now_micros();
    host.install(JobDataflow {
        job: spec.name.clone(),
        plan: plan.clone(),
        sinks: sinks
            .iter()
            .zip(&stats.sinks)
            .zip(&spec.sinks)
            .map(|(((place, rows), stats), sink)| SinkTarget {
                place: place.clone(),
                batch_max_rows: *rows,
                max_in_flight: sink.max_in_flight().fixed(),
                stats: stats.clone(),
                limiter: Arc::new(SinkLimiter::new(sink.limits(), now)),
            })
            .collect(),
        events: Arc::new(std::sync::Mutex::new(Some(events_rx))),
        durable: Arc::new(durable_tx),
        backlog: {
            let backlog: Arc<crate::sinks::backlog::Backlog> = Arc::default();
            if let Ok(mut current) = stats.backlog.lock() {
                *current = backlog.clone();
            }
            backlog
        },
        reader: stats.reader.clone(),
        history: Arc::new(history_start::history_plan(spec)),
        books: stats.books.clone(),
        qos: Arc::new(spec.qos.policy()),
        access: Some(hub.dataflow_side()),
        read_ahead: crate::sinks::backlog::Load {
            rows: spec.read_ahead_rows(),
            bytes: spec.read_ahead_bytes(),
        },
    });
    let pruner = (spec.history_tables().next().is_some()).then(|| {
        tokio::spawn(prune_hot_window(
            stats.books.clone(),
            Duration::from_secs(spec.history.hot_window_secs),
        ))
    });
    let progress = progress_every
        .map(|every| tokio::spawn(print_progress(spec.name.clone(), stats.clone(), every)));
    let slot_watch = tokio::spawn(slot_health::watch(
        spec.name.clone(),
        watch_session.clone(),
        spec.source.slot.clone(),
        stats.slot.clone(),
    ));
    let partitions = tokio::spawn(partition_watch::watch(
        spec.name.clone(),
        watch_session.clone(),
        spec.tables.iter().map(|t| t.name.clone()).collect(),
    ));
    let sequences = tokio::spawn(sequence_sync::keep_up(
        spec.clone(),
        watch_session.clone(),
        stats.sequence_problems.clone(),
    ));
    let wake = host.waker();
    let mut store = ProgressStore {
        job: spec.name.clone(),
        anchor,
        client: None,
    };
    let mut state = ReaderState::new(confirmed)
        .with_table_names(table_names, stats.reader.renamed_tables.clone());
    // The reader obeys `control`, which follows the caller's, and stops on its own when
    // new tables match the job's patterns.
    let (control_tx, mut control) = watch::channel(*outer_control.borrow());
    let tables_added = std::sync::OnceLock::new();
    let reading = read_until_stopped(
        spec,
        client,
        &mut state,
        &events_tx,
        &wake,
        &mut durable_rx,
        &mut store,
        stats,
        &mut control,
    );
    let follow = async {
        while outer_control.changed().await.is_ok() {
            let desired = *outer_control.borrow_and_update();
            if tables_added.get().is_none() || desired == Desired::Stop {
                control_tx.send_replace(desired);
            }
        }
        std::future::pending::<Infallible>().await
    };
    let new_tables = async {
        if !submitted.has_table_patterns() {
            return std::future::pending::<Infallible>().await;
        }
        let what = table_patterns::watch_for_new_tables(&watch_session, submitted, spec).await;
        let _ = tables_added.set(what);
        control_tx.send_replace(Desired::Stop);
        std::future::pending::<Infallible>().await
    };
    let result = tokio::select! {
        result = reading => result,
        why = history_failure(&stats.books) => Err(JobError::Dataflow(why)),
        never = follow => match never {},
        never = new_tables => match never {},
    };
    let (client, result) = match result {
        Ok(client) => (client, Ok(())),
        Err(e) => (None, Err(e)),
    };

    // Stop feeding; let every transaction handed over whole become durable before the
    // dataflow goes. (One the reader stopped inside of never does: its time stays open,
    // see `dataflow::worker`, and the next start reads it again.)
    drop(events_tx);
    wake();
    if result.is_ok() {
        let fed_through = state.fed_through;
        let drained =
            tokio::time::timeout(DRAIN_LIMIT, durable_rx.wait_for(|&f| f > fed_through)).await;
        if drained.is_err() {
            tracing::warn!(job = %spec.name, "in-flight changes not durable after {DRAIN_LIMIT:?}; they are replayed on the next start");
        }
    }
    if let Some(mut client) = client {
        // Confirm what became durable while draining; closing the stream reports it to the
        // server and waits for the server to end its side.
        let confirmed = stream::confirm(
            &mut store,
            &mut client,
            &mut state,
            &mut durable_rx,
            &stats.reader,
        )
        .await;
        if let (Ok(()), Err(e)) = (confirmed, client.close().await) {
            tracing::warn!(job = %spec.name, error = %e, "the replication stream did not end in order");
        }
        tracing::info!(job = %spec.name, confirmed = %format_lsn(state.tracker.confirmed()), "stopped");
    }
    if result.is_ok() && tables_added.get().is_none() {
        sequence_sync::sync_at_stop(spec).await;
    }
    host.remove(&spec.name);
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(p) = pruner {
        p.abort();
    }
    slot_watch.abort();
    partitions.abort();
    sequences.abort();
    windows.abort();
    stats.set_access(None);
    result.map(|()| match tables_added.into_inner() {
        Some(what) => Ended::TablesAdded(what),
        None => Ended::Stopped,
    })
}

/// Keeps the in-memory history to the hot window: older closed versions are read from the
/// history table.
async fn prune_hot_window(books: Arc<HistoryBooks>, window: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(10).min(window));
    loop {
        tick.tick().await;
        let horizon = crate::change::pg_now_micros() - window.as_micros() as i64;
        let dropped = books.prune_closed_before(horizon);
        if dropped > 0 {
            tracing::debug!(dropped, "closed versions left the hot window");
        }
    }
}

/// Waits until the history operator stops (a row of the version books did not read back
/// from their spill file): the job cannot go on, and a restart rebuilds the books.
async fn history_failure(books: &HistoryBooks) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        if let Some(why) = books.failure() {
            return why;
        }
    }
}

/// The publication row filter that keeps other tenants' rows on the source. PostgreSQL
/// allows it for UPDATE and DELETE only when the column is in the replica identity; a
/// filtered UPDATE that moves a row out of (into) the job's tenants arrives as a DELETE
/// (INSERT), which the dataflow applies like any other.
pub fn tenant_row_filter(
    include: &TenantFilter,
    table: &TableInfo,
    key: &TenantKey,
) -> Option<String> {
    let in_identity = key
        .column()
        .and_then(|c| table.column_index(c))
        .is_some_and(|i| table.columns[i].in_identity);
    if in_identity {
        include.row_filter_on(table, key)
    } else {
        None
    }
}

/// Stops a start whose spec names both a partitioned table and one of its partitions: the
/// publication publishes a partition's changes as its partitioned table's, so the
/// partition's own table would silently get none.
async fn refuse_partitions_of_carried_tables(
    source: &tokio_postgres::Client,
    infos: &[(TableSpec, Arc<TableInfo>)],
) -> Result<(), JobError> {
    let carried: Vec<(String, u32)> = infos
        .iter()
        .map(|(_, info)| (info.qualified_name(), info.oid))
        .collect();
    let pairs = catalog::partitions_of_each_other(source, &carried).await?;
    let Some((partition, ancestor)) = pairs.into_iter().next() else {
        return Ok(());
    };
    Err(CdcError::Definite(format!(
        "tables[{partition}]: {partition} is a partition of {ancestor}, which the job also \
         carries; a partition's changes reach the job as its partitioned table's, so name only \
         one of them (the partitioned table carries every partition's rows)",
    ))
    .into())
}

/// What a start hands the running job: the spec with its patterns resolved, its tenant
/// plan, and what [`prepare`] returns.
type Started = (
    Arc<JobSpec>,
    Arc<TenantPlan>,
    (ReplicationStream, Lsn, TableNames),
);

/// Resolves the job's table patterns on the source, then [`prepare`]s the job with the
/// tables they carry.
async fn start(
    submitted: &JobSpec,
    workers: usize,
    anchor: &Anchor,
    stats: &JobStats,
) -> Result<Started, JobError> {
    let (spec, left_out) = if submitted.has_table_patterns() {
        let source = catalog::connect(submitted.source.dsn.expose()).await?;
        let resolution = table_patterns::resolve(&source, submitted).await?;
        table_patterns::report(&submitted.name, &resolution);
        let left_out = resolution
            .left_out
            .into_iter()
            .map(|l| LeftOutTable {
                table: l.table,
                pattern: l.pattern,
                reason: l.reason,
            })
            .collect();
        (resolution.spec, left_out)
    } else {
        (submitted.clone(), Vec::new())
    };
    let spec = Arc::new(spec);
    stats.set_carried(spec.clone(), left_out);
    let plan = Arc::new(tenant_plan(&spec, workers));
    let ready = prepare(&spec, &plan, anchor, &stats.books, &stats.snapshot).await?;
    Ok((spec, plan, ready))
}

/// The job's tables by OID on the source, as its spec names them (schema, name).
type TableNames = HashMap<u32, (String, String)>;

/// Checks the source, then snapshots or resumes. Returns the started replication session,
/// the position it starts from and the job's tables by OID.
async fn prepare(
    spec: &JobSpec,
    plan: &TenantPlan,
    anchor: &Anchor,
    books: &Arc<HistoryBooks>,
    snapshot: &SnapshotProgress,
) -> Result<(ReplicationStream, Lsn, TableNames), JobError> {
    let dsn = spec.source.dsn.expose();
    let (slot, publication) = (&spec.source.slot, &spec.source.publication);
    let source = catalog::connect(dsn).await?;
    catalog::check_wal_level(&source).await?;
    let mut published = Vec::new();
    let mut infos = Vec::new();
    let names: Vec<(&str, &str)> = spec
        .tables
        .iter()
        .map(|t| (t.schema(), t.table()))
        .collect();
    let shapes = catalog::tables_info(&source, &names).await?;
    for (table, info) in spec.tables.iter().zip(shapes) {
        if let Some(warning) = catalog::refused_changes_warning(&info) {
            tracing::warn!(job = %spec.name, table = %table.name, "{warning}");
        }
        if let Some(problem) = check_history_table(table, &info) {
            return Err(CdcError::Definite(format!("tables[{}]: {problem}", table.name)).into());
        }
        let column = &plan.tenant_keys[&info.qualified_name()];
        if column.at(&info).is_none() {
            return Err(CdcError::Definite(format!(
                "tables[{}]: table {} has no {}",
                info.qualified_name(),
                info.qualified_name(),
                column.describe()
            ))
            .into());
        }
        published.push(PublishedTable {
            schema: info.schema.clone(),
            name: info.name.clone(),
            row_filter: tenant_row_filter(&plan.include, &info, column),
        });
        infos.push((table.clone(), Arc::new(info)));
    }
    refuse_partitions_of_carried_tables(&source, &infos).await?;
    catalog::ensure_publication(&source, publication, &published).await?;
    let table_names: TableNames = infos
        .iter()
        .map(|(_, info)| (info.oid, (info.schema.clone(), info.name.clone())))
        .collect();
    let mut targets = Vec::new();
    let target_tables: Vec<(String, String)> = names
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    for (i, sink) in spec.sinks.iter().enumerate() {
        let SinkSpec::Postgres(p) = sink else {
            continue;
        };
        let client = pg_apply::sink::connect(p.dsn.expose()).await?;
        store::migrate(&client).await?;
        let subject = format!("sinks[{i}]");
        target_rules::check_at_start(&spec.name, &subject, &client, &target_tables).await?;
        targets.push(client);
    }
    let progress = load_progress(spec, anchor, &targets).await?;
    let slot_state = catalog::slot_state(&source, slot).await?;
    let recorded = progress
        .confirmed_lsn
        .or(progress.snapshot_lsn)
        .unwrap_or(0);
    match (progress.snapshot_lsn, &slot_state) {
        (Some(_), Some(s)) if s.lost => {
            tracing::warn!(job = %spec.name, slot, confirmed = %format_lsn(s.confirmed_flush),
                "the source invalidated the replication slot (it removed WAL the slot still needed: max_slot_wal_keep_size), so the changes since its confirmed position are gone from the stream; taking a new snapshot");
        }
        (Some(_), Some(s)) if s.confirmed_flush <= recorded => {
            if s.active {
                return Err(CdcError::Stream(format!(
                    "replication slot `{slot}` is in use by another session"
                ))
                .into());
            }
            match anchor {
                Anchor::Postgres(_) => {
                    history_repair::mend_from_cold_tier(
                        spec,
                        &plan.include,
                        &mut targets,
                        &infos,
                        s.confirmed_flush,
                    )
                    .await?;
                    backfill::widen(spec, &mut targets, s.confirmed_flush, snapshot).await?
                }
                Anchor::Cold(root) => {
                    let job = spec.name.clone();
                    let held =
                        progress_file_step(root, move |r| cold_progress::load_coverage(r, &job))
                            .await?;
                    let coverage = cold_resume::cold_tier_coverage(spec, held)?;
                    cold_resume::check_streams(spec, root, s.confirmed_flush).await?;
                    if let Some(coverage) = coverage {
                        let job = spec.name.clone();
                        progress_file_step(root, move |r| {
                            cold_progress::record_coverage(r, &job, &coverage)
                        })
                        .await?;
                    }
                }
            }
            history_books::restore(
                spec,
                plan,
                anchor,
                &targets,
                &infos,
                s.confirmed_flush,
                books,
            )
            .await?;
            let client = match connect_started(spec, s.confirmed_flush).await {
                Ok(client) => client,
                Err(e) => return Err(unless_slot_lost(&source, slot, e).await.into()),
            };
            tracing::info!(job = %spec.name, from = %format_lsn(s.confirmed_flush), "resuming from the slot's confirmed position");
            return Ok((client, s.confirmed_flush, table_names));
        }
        (Some(_), Some(s)) => {
            tracing::warn!(job = %spec.name, slot, slot_position = %format_lsn(s.confirmed_flush), recorded = %format_lsn(recorded),
                "the slot is ahead of what this job confirmed: it was recreated; taking a new snapshot");
        }
        (Some(_), None) => {
            tracing::warn!(job = %spec.name, slot, "the replication slot is gone; taking a new snapshot");
        }
        (None, _) => {}
    }
    if let Some(s) = &slot_state {
        if s.active {
            return Err(CdcError::Stream(format!(
                "replication slot `{slot}` is in use by another session"
            ))
            .into());
        }
        catalog::drop_slot(&source, slot).await?;
    }
    clear_snapshot(spec, anchor, &targets).await?;
    for target in &targets {
        pg_apply::floors::forget_all(target, &spec.name).await?;
    }
    let (client, at) = initial_snapshot::take_snapshot(
        spec,
        plan,
        anchor,
        &mut targets,
        &infos,
        snapshot,
        recorded,
    )
    .await?;
    history_books::restore(spec, plan, anchor, &targets, &infos, at, books).await?;
    Ok((client, at, table_names))
}

/// The target an [`Anchor::Postgres`] names: the first of the job's PostgreSQL targets.
pub(super) fn anchor_target(
    targets: &[tokio_postgres::Client],
) -> Result<&tokio_postgres::Client, JobError> {
    targets
        .first()
        .ok_or_else(|| JobError::Dataflow("the job's progress target is not connected".into()))
}

/// The job's recorded positions, from its [`Anchor`].
async fn load_progress(
    spec: &JobSpec,
    anchor: &Anchor,
    targets: &[tokio_postgres::Client],
) -> Result<store::JobProgress, JobError> {
    Ok(match anchor {
        Anchor::Postgres(_) => store::load_progress(anchor_target(targets)?, &spec.name).await?,
        Anchor::Cold(root) => {
            let job = spec.name.clone();
            progress_file_step(root, move |r| cold_progress::load_progress(r, &job)).await?
        }
    })
}

/// Forgets the job's snapshot before a new one is taken.
async fn clear_snapshot(
    spec: &JobSpec,
    anchor: &Anchor,
    targets: &[tokio_postgres::Client],
) -> Result<(), JobError> {
    match anchor {
        Anchor::Postgres(_) => store::clear_snapshot(anchor_target(targets)?, &spec.name).await?,
        Anchor::Cold(root) => {
            let job = spec.name.clone();
            progress_file_step(root, move |r| cold_progress::clear_snapshot(r, &job)).await?
        }
    }
    Ok(())
}

/// Records the completed snapshot at `lsn` where the job's [`Anchor`] keeps progress.
pub(super) async fn record_snapshot_done(
    spec: &JobSpec,
    anchor: &Anchor,
    targets: &[tokio_postgres::Client],
    lsn: Lsn,
) -> Result<(), JobError> {
    let slot = &spec.source.slot;
    match anchor {
        Anchor::Postgres(_) => {
            let coverage = coverage_json(&Coverage::of(spec))?;
            for target in targets {
                store::record_coverage(target, &spec.name, &coverage).await?;
                // Every table was loaded whole: no error state of an earlier run applies,
                // nor do the dead letters before it.
                store::clear_table_states(target, &spec.name, lsn).await?;
            }
            store::record_snapshot(anchor_target(targets)?, &spec.name, slot, lsn).await?
        }
        Anchor::Cold(root) => {
            let (job, slot) = (spec.name.clone(), slot.clone());
            let coverage = coverage_json(&Coverage::of(spec))?;
            progress_file_step(root, move |r| {
                cold_progress::record_snapshot(r, &job, &slot, lsn, &coverage)
            })
            .await?
        }
    }
    Ok(())
}

async fn print_progress(job: String, stats: Arc<JobStats>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut last_rows = stats.rows_applied();
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let rows = stats.rows_applied();
        let secs = last.elapsed().as_secs_f64().max(1e-3);
        let rate = (rows - last_rows) as f64 / secs;
        last_rows = rows;
        last = Instant::now();
        let errors: u64 = stats.sinks.iter().map(|s| s.errors.load(Relaxed)).sum();
        if let (JobState::Snapshotting, Some(s)) = (stats.state().0, stats.snapshot.status()) {
            println!(
                "[{job}] snapshot loads={}/{} rows={} bytes={}",
                s.loads_done, s.loads_total, s.rows, s.bytes
            );
            continue;
        }
        let renamed: String = crate::control::job_manager::renamed_tables(&stats)
            .iter()
            .map(|t| format!(" renamed_on_source={}->{}", t.table, t.source_name))
            .collect();
        println!(
            "[{job}] rows/s={rate:.0} rows={rows} lag={:.2}s lag_bytes={} confirmed={} in_flight={} sink_errors={errors}{renamed}",
            stats.lag_seconds(),
            stats.lag_bytes(),
            format_lsn(stats.reader.confirmed.load(Relaxed)),
            stats.reader.in_flight.load(Relaxed),
        );
    }
}
