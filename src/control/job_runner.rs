//! Runs one job from start to stop: prepares the source (publication, slot), takes the
//! initial snapshot or resumes, runs the reader and the dataflow, prints progress.
//!
//! # Start-up decision
//! The job's progress row (in the first sink's target, `helios.job_progress`) says
//! whether a snapshot completed and which position was last recorded before being
//! confirmed. With the slot's state on the source:
//! - snapshot done, slot present, slot confirmed ≤ recorded → resume at the slot's
//!   confirmed position (never past what was durable: the sinks skip what they have);
//! - slot missing, or ahead of what we recorded (it was dropped and recreated behind our
//!   back, so changes in between are lost to the stream) → new slot, new snapshot;
//! - no completed snapshot → (re)create the slot and snapshot.
//!
//! # Error handling
//! Transient errors (source or target unreachable, connection lost) are retried with
//! exponential back-off and logged; definite ones end the job with a message naming what
//! to fix.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::ReplicationClient;
use tokio::sync::{mpsc, watch};

use crate::cdc::catalog;
use crate::cdc::error::CdcError;
use crate::cdc::snapshot;
use crate::cdc::stream::{self, ConfirmedStore, ReaderIo, ReaderState, ReaderStats, SourceEvent};
use crate::change::{format_lsn, Lsn};
use crate::control::job_spec::{JobSpec, SinkSpec, TenantFilter};
use crate::dataflow::worker::{run_dataflow, DataflowConfig, FeederThread, SinkTarget};
use crate::operators::partition::TenantPlan;
use crate::sinks::pg_apply::{self, store};
use crate::sinks::worker::{SinkStats, RETRY_INITIAL, RETRY_MAX};
use crate::sinks::SinkError;

/// Default number of dataflow workers.
pub const DEFAULT_WORKERS: usize = 2;
/// Default interval between progress lines.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

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

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Number of timely workers.
    pub workers: usize,
    /// Interval between progress lines (`None`: no progress lines).
    pub progress_every: Option<Duration>,
}

/// Live figures of a running job.
#[derive(Debug, Default)]
pub struct JobStats {
    /// The reader's counters.
    pub reader: Arc<ReaderStats>,
    /// Per sink counters (summed over workers).
    pub sinks: Vec<Arc<SinkStats>>,
}

impl JobStats {
    /// Rows applied (upserted + deleted) over all sinks.
    pub fn rows_applied(&self) -> u64 {
        self.sinks
            .iter()
            .map(|s| s.upserted.load(Relaxed) + s.deleted.load(Relaxed))
            .sum()
    }

    /// Seconds the oldest not-yet-durable transaction has waited since its commit.
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self.reader.oldest_pending_commit.load(Relaxed);
        if oldest == 0 {
            return 0.0;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        ((now - PG_EPOCH_UNIX_MICROS - oldest) as f64 / 1e6).max(0.0)
    }

    /// WAL bytes between the server's position and the confirmed one.
    pub fn lag_bytes(&self) -> u64 {
        let server = self.reader.server_wal_end.load(Relaxed);
        server.saturating_sub(self.reader.confirmed.load(Relaxed))
    }
}

/// The tenant plan of a job for `peers` workers.
pub fn tenant_plan(spec: &JobSpec, peers: usize) -> TenantPlan {
    TenantPlan {
        include: spec.tenants.include.clone(),
        tenant_columns: spec
            .tables
            .iter()
            .map(|t| {
                let column = t
                    .tenant_column
                    .clone()
                    .unwrap_or_else(|| spec.tenants.column.clone());
                (t.name.clone(), column)
            })
            .collect(),
        peers: peers.max(1) as u32,
    }
}

fn sink_dsns(spec: &JobSpec) -> Vec<(String, usize)> {
    spec.sinks
        .iter()
        .map(|s| match s {
            SinkSpec::Postgres(p) => (p.dsn.expose().to_string(), p.batch_max_rows),
        })
        .collect()
}

/// Records confirmed positions in the first sink's target.
struct ProgressStore {
    job: String,
    dsn: String,
    client: Option<tokio_postgres::Client>,
}

impl ConfirmedStore for ProgressStore {
    async fn store_confirmed(&mut self, lsn: Lsn) -> Result<(), String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(
                pg_apply::sink::connect(&self.dsn)
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

/// Runs `spec` until `shutdown` turns true or a definite error.
pub async fn run_job(
    spec: JobSpec,
    options: RunOptions,
    stats: Arc<JobStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), JobError> {
    let workers = options.workers.max(1);
    let plan = Arc::new(tenant_plan(&spec, workers));
    let sinks = sink_dsns(&spec);
    let Some((progress_dsn, _)) = sinks.first().cloned() else {
        return Err(JobError::Dataflow("the job has no sink".into()));
    };

    // Start-up: retried while transient, until shutdown.
    let mut wait = RETRY_INITIAL;
    let (client, confirmed) = loop {
        match prepare(&spec, &plan).await {
            Ok(ready) => break ready,
            Err(e) if is_transient(&e) => {
                tracing::warn!(job = %spec.name, error = %e, retry_in_s = wait.as_secs_f32(), "cannot start the job yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(job = %spec.name, position = %format_lsn(confirmed), "streaming");

    let (events_tx, events_rx) = mpsc::channel::<SourceEvent>(8192);
    let (durable_tx, mut durable_rx) = watch::channel::<Lsn>(0);
    let feeder: FeederThread = Default::default();
    let abort = Arc::new(AtomicBool::new(false));
    let config = DataflowConfig {
        job: spec.name.clone(),
        workers,
        plan: plan.clone(),
        sinks: sinks
            .iter()
            .zip(&stats.sinks)
            .map(|((dsn, rows), stats)| SinkTarget {
                dsn: dsn.clone(),
                batch_max_rows: *rows,
                stats: stats.clone(),
            })
            .collect(),
        runtime: tokio::runtime::Handle::current(),
        abort: abort.clone(),
    };
    let feeder_for_thread = feeder.clone();
    let dataflow = std::thread::Builder::new()
        .name("helios-dataflow".into())
        .spawn(move || run_dataflow(config, events_rx, durable_tx, feeder_for_thread))
        .map_err(|e| JobError::Dataflow(e.to_string()))?;

    let progress = options.progress_every.map(|every| {
        let stats = stats.clone();
        let name = spec.name.clone();
        tokio::spawn(print_progress(name, stats, every))
    });

    let wake = move || {
        if let Ok(slot) = feeder.lock() {
            if let Some(t) = slot.as_ref() {
                t.unpark();
            }
        }
    };
    let mut store = ProgressStore {
        job: spec.name.clone(),
        dsn: progress_dsn,
        client: None,
    };
    let mut state = ReaderState::new(confirmed);
    let result = read_with_reconnect(
        &spec,
        client,
        &mut state,
        &events_tx,
        &wake,
        &mut durable_rx,
        &mut store,
        &stats.reader,
        &mut shutdown,
    )
    .await;

    // Stop feeding; let what is in flight become durable, then confirm it.
    drop(events_tx);
    if result.is_err() {
        abort.store(true, Relaxed);
    }
    let joined = tokio::task::spawn_blocking(move || dataflow.join())
        .await
        .map_err(|e| JobError::Dataflow(e.to_string()))?;
    if let Some(p) = progress {
        p.abort();
    }
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(JobError::Dataflow(e)),
        Err(_) => return Err(JobError::Dataflow("a dataflow worker panicked".into())),
    }
    result
}

fn is_transient(e: &JobError) -> bool {
    match e {
        JobError::Source(e) => e.is_transient(),
        JobError::Sink(SinkError::Transient(_)) => true,
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_with_reconnect(
    spec: &JobSpec,
    mut client: ReplicationClient,
    state: &mut ReaderState,
    events: &mpsc::Sender<SourceEvent>,
    wake: &(dyn Fn() + Send + Sync),
    durable: &mut watch::Receiver<Lsn>,
    store: &mut ProgressStore,
    stats: &ReaderStats,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), JobError> {
    let dsn = spec.source.dsn.expose();
    let mut wait = RETRY_INITIAL;
    loop {
        let outcome = match catalog::connect(dsn).await {
            Ok(catalog) => {
                let io = ReaderIo {
                    client: &mut client,
                    catalog: &catalog,
                    out: events,
                    wake,
                    durable,
                    store,
                    stats,
                    shutdown,
                };
                stream::read_stream(io, state).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                // Shutdown: give the sinks a moment to finish what is in flight and confirm it.
                let _ = client.shutdown().await;
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(job = %spec.name, error = %e, retry_in_s = wait.as_secs_f32(), "replication stream interrupted; reconnecting");
                client.abort();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                wait = (wait * 2).min(RETRY_MAX);
                let cfg = stream::replication_config(
                    dsn,
                    &spec.source.slot,
                    &spec.source.publication,
                    state.tracker.confirmed(),
                )?;
                match connect_started(cfg).await {
                    Ok(c) => {
                        client = c;
                        wait = RETRY_INITIAL;
                    }
                    Err(e) => tracing::warn!(job = %spec.name, error = %e, "reconnect failed"),
                }
            }
            Err(e) => {
                tracing::error!(job = %spec.name, error = %e, "job stopped");
                client.abort();
                return Err(e.into());
            }
        }
    }
}

async fn connect_started(
    cfg: pgwire_replication::ReplicationConfig,
) -> Result<ReplicationClient, CdcError> {
    let mut client = ReplicationClient::connect(cfg)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    client
        .wait_started()
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    Ok(client)
}

/// Checks the source, then snapshots or resumes. Returns the started replication session
/// and the position it starts from.
async fn prepare(spec: &JobSpec, plan: &TenantPlan) -> Result<(ReplicationClient, Lsn), JobError> {
    let dsn = spec.source.dsn.expose();
    let (slot, publication) = (&spec.source.slot, &spec.source.publication);
    let source = catalog::connect(dsn).await?;
    catalog::check_wal_level(&source).await?;
    let tables: Vec<(String, String)> = spec
        .tables
        .iter()
        .map(|t| (t.schema().to_string(), t.table().to_string()))
        .collect();
    catalog::ensure_publication(&source, publication, &tables).await?;
    for (schema, name) in &tables {
        let info = catalog::table_info(&source, schema, name).await?;
        let column = &plan.tenant_columns[&info.qualified_name()];
        if info.column_index(column).is_none() {
            return Err(CdcError::Definite(format!(
                "tables[{}]: table {schema}.{name} has no tenant column `{column}`",
                info.qualified_name()
            ))
            .into());
        }
    }
    let sinks = sink_dsns(spec);
    let mut targets = Vec::new();
    for (dsn, _) in &sinks {
        let client = pg_apply::sink::connect(dsn).await?;
        store::migrate(&client).await?;
        targets.push(client);
    }
    let progress = store::load_progress(&targets[0], &spec.name).await?;
    let slot_state = catalog::slot_state(&source, slot).await?;
    let recorded = progress
        .confirmed_lsn
        .or(progress.snapshot_lsn)
        .unwrap_or(0);
    match (progress.snapshot_lsn, &slot_state) {
        (Some(_), Some(s)) if s.confirmed_flush <= recorded => {
            if s.active {
                return Err(CdcError::Stream(format!(
                    "replication slot `{slot}` is in use by another session"
                ))
                .into());
            }
            let cfg = stream::replication_config(dsn, slot, publication, s.confirmed_flush)?;
            let client = connect_started(cfg).await?;
            tracing::info!(job = %spec.name, from = %format_lsn(s.confirmed_flush), "resuming from the slot's confirmed position");
            return Ok((client, s.confirmed_flush));
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
    store::clear_snapshot(&targets[0], &spec.name).await?;
    take_snapshot(spec, plan, &mut targets).await
}

/// Creates the slot with an exported snapshot, loads every table into every target, and
/// starts streaming from the consistent point.
async fn take_snapshot(
    spec: &JobSpec,
    plan: &TenantPlan,
    targets: &mut [tokio_postgres::Client],
) -> Result<(ReplicationClient, Lsn), JobError> {
    let dsn = spec.source.dsn.expose();
    let (slot, publication) = (&spec.source.slot, &spec.source.publication);
    let cfg = stream::replication_config(dsn, slot, publication, 0)?;
    let mut repl = ReplicationClient::connect_gated(cfg)
        .await
        .map_err(|e| CdcError::Connect(e.to_string()))?;
    let snap = snapshot::create_slot_exporting_snapshot(&mut repl, slot).await?;
    let started = Instant::now();
    let copier = catalog::connect(dsn).await?;
    snapshot::begin_on_snapshot(&copier, &snap.snapshot_name).await?;
    let mut bytes = 0u64;
    for table in &spec.tables {
        let info = catalog::table_info(&copier, table.schema(), table.table()).await?;
        let column = plan.tenant_columns[&table.name].clone();
        let sql = snapshot::copy_out_sql(&info, &column, &plan.include);
        for target in targets.iter_mut() {
            let rows = snapshot::copy_out(&copier, &sql).await?;
            bytes +=
                pg_apply::snapshot::load_table(target, &info, &column, &plan.include, rows).await?;
        }
    }
    copier
        .batch_execute("COMMIT")
        .await
        .map_err(CdcError::query("end snapshot transaction"))?;
    store::record_snapshot(&targets[0], &spec.name, slot, snap.consistent_point).await?;
    let tenants = match &plan.include {
        TenantFilter::All => "all".to_string(),
        TenantFilter::Only(t) => t.len().to_string(),
    };
    tracing::info!(job = %spec.name, tables = spec.tables.len(), tenants, bytes, seconds = started.elapsed().as_secs_f32(),
        consistent_point = %format_lsn(snap.consistent_point), "initial snapshot loaded");
    repl.start()
        .await
        .map_err(|e| CdcError::Stream(e.to_string()))?;
    repl.wait_started()
        .await
        .map_err(|e| CdcError::Stream(e.to_string()))?;
    Ok((repl, snap.consistent_point))
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
        println!(
            "[{job}] rows/s={rate:.0} rows={rows} lag={:.2}s lag_bytes={} confirmed={} in_flight={} sink_errors={errors}",
            stats.lag_seconds(),
            stats.lag_bytes(),
            format_lsn(stats.reader.confirmed.load(Relaxed)),
            stats.reader.in_flight.load(Relaxed),
        );
    }
}
