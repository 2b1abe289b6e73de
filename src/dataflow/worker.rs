//! What one timely worker does for one job: build the job's dataflow, start the worker's
//! sink tasks on the tokio runtime, and (worker 0 only) move the reader's events into the
//! job's input.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use tokio::sync::{mpsc, watch};

use crate::cdc::event_channel::EventReceiver;
use crate::cdc::stream::SourceEvent;
use crate::change::{Lsn, SourceRecord};
use crate::dataflow::deliver::{DeliveryLink, PART_BYTES, PART_ROWS};
use crate::dataflow::render::{render_job, HistoryStage, OptionalStages};
use crate::operators::access::hotness_map::HotnessMap;
use crate::operators::access::ledger::AccessLedger;
use crate::operators::history::{HistoryBooks, HistoryPlan};
use crate::operators::partition::TenantPlan;
use crate::sinks::backlog::{Backlog, Load};
use crate::sinks::nats::NatsSink;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::pg_apply::PgApplySink;
use crate::sinks::qos::rate_limit::SinkLimiter;
use crate::sinks::qos::QosPolicy;
use crate::sinks::worker::{run_sink, Linger, SinkPacing, SinkStats};
use crate::sinks::{Delivery, SinkFeed};

/// Longest a row waits in a Parquet sink for others to share its files (see [`Linger`]).
/// Caught up, a cold-tier job then writes a file per tenant and table about once a
/// second instead of one per source transaction.
pub const COLD_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// A Parquet sink stops lingering once the source is quiet and a tenth of its group is
/// pending (see [`Linger::early_rows`]).
pub const COLD_EARLY_DIVISOR: usize = 10;

/// A job whose oldest transaction not yet durable committed longer ago than this is
/// behind the source (catching up): its Parquet sinks defer compaction meanwhile.
pub const BEHIND_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the job reading with `reader` is behind the source (see [`BEHIND_AFTER`]).
fn behind_source(
    reader: Arc<crate::cdc::stream::ReaderStats>,
) -> Arc<dyn Fn() -> bool + Send + Sync> {
    Arc::new(move || {
        let oldest = reader.oldest_pending_commit.load(Ordering::Relaxed);
        oldest != 0
            && crate::change::pg_now_micros().saturating_sub(oldest)
                >= BEHIND_AFTER.as_micros() as i64
    })
}

/// Deliveries a sink task's channel holds; the rest wait in the delivery operator, and the
/// job's backlog (`max_backlog_rows`) bounds both, so this bounds no memory. It bounds
/// the groups of small transactions: a sink task forms a group from what it has taken
/// off its channel, and at 64 a sink behind the source applied groups of ~640 rows of
/// 10-row transactions however far behind it was (unpaced lag run, `HELIOS_BENCH_LAG_TOP_RATE=0`:
/// 647 rows per target transaction); at 1024 they reach `batch_max_rows` (4,757).
pub const SINK_QUEUE_BATCHES: usize = 1024;
/// Events taken from a job's reader per worker step.
pub const EVENTS_PER_STEP: usize = 4096;
/// Estimated bytes of events taken from a job's reader per worker step: what the
/// dataflow holds between its steps, whatever the rows' width.
pub const BYTES_PER_STEP: usize = 4 << 20;
/// Parts of a large transaction ([`PART_ROWS`] rows or [`PART_BYTES`] each) a worker may
/// have waiting for its sinks while the transaction is still fed: the sink applies one
/// part while the next waits, so more read-ahead holds memory without speeding anything up.
pub const LARGE_TXN_PARTS_AHEAD: usize = 2;

/// How much worker 0 lets wait for the sinks before it stops feeding a job, in rows and
/// in estimated bytes (whichever is reached first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    /// The job's read-ahead (`qos.max_buffered_rows`, `qos.max_buffered_mib`).
    pub normal: Load,
    /// The read-ahead while a transaction larger than a part is fed: its parts are
    /// applied one at a time, so [`LARGE_TXN_PARTS_AHEAD`] parts per worker keep every
    /// sink busy. At the job's 100,000 rows, parts waiting in the sink channels added about
    /// 45 MiB to the peak RSS of a 3M-row transaction (196–209 against 153 MiB).
    pub large: Load,
}

impl ReadAhead {
    /// The read-ahead of a job reading `normal` ahead on `workers` workers.
    pub fn new(normal: Load, workers: usize) -> ReadAhead {
        let workers = workers.max(1);
        ReadAhead {
            normal,
            large: Load {
                rows: normal
                    .rows
                    .min((LARGE_TXN_PARTS_AHEAD * PART_ROWS).saturating_mul(workers)),
                bytes: normal
                    .bytes
                    .min((LARGE_TXN_PARTS_AHEAD * PART_BYTES).saturating_mul(workers)),
            },
        }
    }

    /// Whether worker 0 may feed more with `backlog` waiting for the sinks and `open` fed
    /// of the transaction in progress.
    pub fn allows(&self, backlog: Load, open: Load) -> bool {
        let limit = if open.rows >= PART_ROWS || open.bytes >= PART_BYTES {
            self.large
        } else {
            self.normal
        };
        backlog.within(limit)
    }
}

/// Where a worker's sink tasks run.
#[derive(Debug, Clone)]
pub struct SinkRuntimes {
    /// The worker's own runtime when it runs inline (see `host`), else the process's.
    pub worker: tokio::runtime::Handle,
    /// The process's multi-threaded runtime.
    pub process: tokio::runtime::Handle,
}

impl SinkRuntimes {
    /// Both the same runtime (a worker on a thread of its own).
    pub fn one(runtime: tokio::runtime::Handle) -> SinkRuntimes {
        SinkRuntimes {
            worker: runtime.clone(),
            process: runtime,
        }
    }

    /// The runtime for a sink writing to `place`: the process's for the cold tier, whose
    /// file writes block (fsyncs of whole groups) and on the worker's thread would hold up
    /// the dataflow and the job's other sinks; the worker's for the others.
    pub fn runtime_for(&self, place: &SinkPlace) -> &tokio::runtime::Handle {
        match place {
            SinkPlace::Parquet { .. } => &self.process,
            SinkPlace::Postgres(_) | SinkPlace::Nats(_) => &self.worker,
        }
    }
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkPlace {
    /// A PostgreSQL database (connection string).
    Postgres(String),
    /// A Parquet cold-tier directory, compacted by `compaction`.
    Parquet {
        /// The cold tier's root directory.
        root: std::path::PathBuf,
        /// When its table directories' small files are merged.
        compaction: crate::sinks::parquet::CompactionPolicy,
    },
    /// A NATS JetStream stream.
    Nats(crate::sinks::nats::NatsSinkConfig),
}

impl SinkPlace {
    /// What of each transaction the sink applies.
    pub fn feed(&self) -> SinkFeed {
        match self {
            // Tables and, for tables that keep history, their history tables.
            SinkPlace::Postgres(_) => SinkFeed::Both,
            SinkPlace::Parquet { .. } => SinkFeed::History,
            SinkPlace::Nats(_) => SinkFeed::Changes,
        }
    }
}

/// One sink of a job, as every worker instantiates it.
#[derive(Debug, Clone)]
pub struct SinkTarget {
    /// Where it writes.
    pub place: SinkPlace,
    /// Most rows one apply transaction takes.
    pub batch_max_rows: usize,
    /// Most groups in flight to it at once (only a postgres sink pipelines them); `None`:
    /// chosen from the round trip to it once connected.
    pub max_in_flight: Option<usize>,
    /// Counters shared by this sink's tasks on all workers.
    pub stats: Arc<SinkStats>,
    /// Bandwidth limits shared by this sink's tasks on all workers.
    pub limiter: Arc<SinkLimiter>,
}

/// Everything the workers need to run one job's dataflow.
#[derive(Clone)]
pub struct JobDataflow {
    /// The job's name (checkpoint key).
    pub job: String,
    /// Tenant routing.
    pub plan: Arc<TenantPlan>,
    /// The job's sinks.
    pub sinks: Vec<SinkTarget>,
    /// The reader's events; worker 0 takes the receiver.
    pub events: Arc<Mutex<Option<EventReceiver>>>,
    /// Where worker 0 publishes the durable frontier.
    pub durable: Arc<watch::Sender<Lsn>>,
    /// Completed transactions waiting for a sink, over all workers.
    pub backlog: Arc<Backlog>,
    /// The reader's figures (commit times, for per-tenant lag).
    pub reader: Arc<crate::cdc::stream::ReaderStats>,
    /// Tables that keep history (empty: no history stage).
    pub history: Arc<HistoryPlan>,
    /// The job's version books.
    pub books: Arc<HistoryBooks>,
    /// How postgres sinks order tenants (parquet sinks keep commit order).
    pub qos: Arc<QosPolicy>,
    /// Write counts for the hotness predictor and its predictions (`None`: no prediction).
    pub access: Option<JobAccess>,
    /// Rows and bytes read ahead of the sinks before worker 0 stops feeding the job.
    pub read_ahead: Load,
}

/// A job's access signals and predictions, as the dataflow sees them.
#[derive(Clone)]
pub struct JobAccess {
    /// Where the observe operator counts writes.
    pub ledger: Arc<AccessLedger>,
    /// The predictions the sink tasks read.
    pub hotness: Arc<HotnessMap>,
    /// Key bucket width.
    pub width: u64,
}

/// A job's dataflow as one worker holds it.
pub struct WorkerJob {
    /// The dataflow's index (for `drop_dataflow`).
    pub dataflow: usize,
    /// The input (only worker 0 keeps it open).
    input: Option<InputHandleVec<Lsn, SourceRecord>>,
    /// The reader's events (worker 0).
    events: Option<EventReceiver>,
    /// The durable frontier probe.
    probe: ProbeHandle<Lsn>,
    durable: Arc<watch::Sender<Lsn>>,
    backlog: Arc<Backlog>,
    read_ahead: ReadAhead,
    /// Records fed of the transaction in progress and their bytes (0 between
    /// transactions).
    open: Load,
    /// Skipping a transaction older than the input's time.
    discarding: bool,
    /// A Begin was fed without its Commit.
    in_transaction: bool,
    /// A sink task reported durable progress the delivery operator has not seen.
    reports_pending: Arc<AtomicBool>,
    /// Schedules the delivery operator on this worker.
    deliver: timely::scheduling::Activator,
}

impl WorkerJob {
    /// Builds the job's dataflow on this worker and starts its sink tasks on `runtimes`;
    /// `wake` wakes this worker where a timely activation alone would not (a worker parked
    /// in its runtime rather than in timely).
    pub fn build(
        worker: &mut timely::worker::Worker,
        job: &JobDataflow,
        runtimes: &SinkRuntimes,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> WorkerJob {
        let index = worker.index();
        let mut input: InputHandleVec<Lsn, SourceRecord> = InputHandleVec::new();
        let probe: ProbeHandle<Lsn> = ProbeHandle::new();
        let (report_tx, report_rx) = crossbeam_channel::unbounded::<(usize, Lsn)>();
        let waiting_for_room = Arc::new(AtomicBool::new(false));
        let reports_pending = Arc::new(AtomicBool::new(false));
        let (senders, receivers): (Vec<_>, Vec<_>) = job
            .sinks
            .iter()
            .map(|target| {
                let (tx, rx) = mpsc::channel::<Delivery>(SINK_QUEUE_BATCHES);
                ((tx, target.place.feed()), rx)
            })
            .unzip();
        let mut activator = None;
        let dataflow = worker.next_dataflow_index();
        worker.dataflow_named::<Lsn, _, _>(&format!("job {}", job.job), |scope| {
            let source = scope.input_from(&mut input);
            let history = (!job.history.is_empty()).then(|| HistoryStage {
                plan: job.history.clone(),
                books: job.books.clone(),
                reader: job.reader.clone(),
            });
            render_job(
                source,
                job.plan.clone(),
                OptionalStages {
                    history,
                    access: job.access.as_ref().map(|a| (a.ledger.clone(), a.width)),
                },
                senders,
                DeliveryLink {
                    reports: report_rx,
                    waiting_for_room: waiting_for_room.clone(),
                },
                job.backlog.clone(),
                |a| activator = Some(a),
            )
            .probe_with(&probe);
        });
        let activators = activator.expect("render_job hands over its activators");
        let from_sinks = Arc::new(activators.from_sinks);
        for (i, (rx, target)) in receivers.into_iter().zip(&job.sinks).enumerate() {
            let report_tx = report_tx.clone();
            let (from_sinks, waiting_for_room) = (from_sinks.clone(), waiting_for_room.clone());
            let (reports_pending, wake) = (reports_pending.clone(), wake.clone());
            // The worker sees the report at its next step (see `DeliveryLink`); it is
            // woken at once only when the operator waits for room in a sink's channel.
            let on_durable = move |lsn| {
                let _ = report_tx.send((i, lsn));
                reports_pending.store(true, Ordering::Release);
                if waiting_for_room.swap(false, Ordering::AcqRel) {
                    let _ = from_sinks.activate();
                    wake();
                }
            };
            let (stats, reader) = (target.stats.clone(), job.reader.clone());
            let mut pacing = SinkPacing::fifo(job.backlog.clone(), target.batch_max_rows, index);
            pacing.limiter = target.limiter.clone();
            pacing.pipeline = target.max_in_flight;
            let runtime = runtimes.runtime_for(&target.place);
            match &target.place {
                SinkPlace::Postgres(dsn) => {
                    // Checkpoints are per tenant: tenants may be reordered.
                    pacing.policy = job.qos.clone();
                    if let Some(access) = &job.access {
                        let map = access.hotness.clone();
                        pacing.hotness = Arc::new(move |b| map.hotness_of(b));
                    }
                    let sink = PgApplySink::new(&job.job, dsn, job.plan.clone(), index as u32);
                    runtime.spawn(run_sink(sink, rx, stats, reader, pacing, on_durable));
                }
                SinkPlace::Nats(config) => {
                    // The stream is the checkpoint, per (tenant, table) subject: tenants may
                    // be reordered.
                    pacing.policy = job.qos.clone();
                    let sink = NatsSink::new(
                        &job.job,
                        index as u32,
                        config.clone(),
                        job.reader.clone(),
                        target.stats.compression.clone(),
                    );
                    runtime.spawn(run_sink(sink, rx, stats, reader, pacing, on_durable));
                }
                SinkPlace::Parquet { root, compaction } => {
                    // The manifest covers LSN ranges per table: commit order only. A
                    // write costs files and fsyncs per table directory: gather rows.
                    let rows = target.batch_max_rows.min(job.read_ahead.rows / 2).max(1);
                    let bytes = (job.read_ahead.bytes / 2).max(1);
                    // A file group is cut by the linger's rows or bytes, not by a target
                    // transaction's 16 MiB (the e2e bench's 100,000 rows hold 17 MB of
                    // values: 600 files against 550).
                    pacing.max_bytes = bytes as u64;
                    pacing.linger = Some(Linger {
                        rows,
                        bytes,
                        wait: COLD_LINGER,
                        early_rows: (rows / COLD_EARLY_DIVISOR).max(1),
                        read_ahead: job.read_ahead,
                    });
                    let sink = ParquetSink::new(&job.job, root.clone(), index as u32)
                        .with_compaction(*compaction)
                        .with_behind(behind_source(job.reader.clone()))
                        .with_compaction_stats(target.stats.compaction.clone())
                        .with_owner(job.plan.clone());
                    runtime.spawn(run_sink(sink, rx, stats, reader, pacing, on_durable));
                }
            }
        }
        let (input, events) = if index == 0 {
            (
                Some(input),
                job.events.lock().ok().and_then(|mut e| e.take()),
            )
        } else {
            drop(input);
            (None, None)
        };
        WorkerJob {
            dataflow,
            input,
            events,
            probe,
            durable: job.durable.clone(),
            backlog: job.backlog.clone(),
            read_ahead: ReadAhead::new(job.read_ahead, worker.peers()),
            open: Load::default(),
            discarding: false,
            in_transaction: false,
            reports_pending,
            deliver: activators.on_worker,
        }
    }

    /// Schedules the delivery operator if a sink task reported progress since the last
    /// call (cheap: no system call). The worker calls it before every step.
    pub fn take_reports(&self) {
        if self.reports_pending.swap(false, Ordering::AcqRel) {
            self.deliver.activate();
        }
    }

    /// Worker 0: moves up to [`EVENTS_PER_STEP`] events or [`BYTES_PER_STEP`] into the
    /// input. Returns whether more may be waiting. Closes the input when the reader's
    /// channel closes, unless a transaction is open (its time must never complete).
    pub fn feed(&mut self) -> bool {
        let (Some(input), Some(rx)) = (self.input.as_mut(), self.events.as_mut()) else {
            return false;
        };
        // The sinks are behind: leave the events in the reader's bounded channel, which
        // in turn stops the reader (back-pressure to the source through TCP).
        if !self.read_ahead.allows(self.backlog.load(), self.open) {
            return false;
        }
        let mut step_bytes = 0;
        for _ in 0..EVENTS_PER_STEP {
            if step_bytes >= BYTES_PER_STEP {
                break;
            }
            match rx.try_recv() {
                Ok((SourceEvent::Begin { commit_lsn, .. }, _)) => {
                    self.open = Load::default();
                    self.in_transaction = true;
                    self.discarding = commit_lsn < *input.time();
                    if self.discarding {
                        tracing::error!(
                            commit_lsn,
                            "transaction older than the dataflow's input time; not fed again"
                        );
                    } else {
                        input.advance_to(commit_lsn);
                    }
                }
                Ok((SourceEvent::Record(record), bytes)) => {
                    step_bytes += bytes;
                    self.open = self.open.plus(Load { rows: 1, bytes });
                    if !self.discarding {
                        input.send(record);
                    }
                }
                Ok((SourceEvent::Commit { commit_lsn, .. }, _)) => {
                    self.open = Load::default();
                    self.in_transaction = false;
                    if !self.discarding {
                        input.advance_to(commit_lsn + 1);
                    }
                    self.discarding = false;
                }
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The reader stopped inside a transaction: closing the input would
                    // complete that transaction's time with only the changes fed so far,
                    // and the sinks would apply them as if whole (the next start then
                    // skips the rest, as their checkpoints cover its commit LSN). The
                    // input stays open at its time, so everything before it completes
                    // and it never does; the dataflow is dropped with it.
                    if !self.in_transaction || self.discarding {
                        self.input = None;
                    } else {
                        tracing::info!(
                            commit_lsn = *input.time(),
                            rows = self.open.rows,
                            "the reader stopped inside a transaction: its changes read so far are dropped, and the next start reads it again"
                        );
                    }
                    self.events = None;
                    return false;
                }
            }
        }
        true
    }

    /// Worker 0: publishes the durable frontier (every commit LSN below it is durable at
    /// every sink on every worker).
    pub fn report(&self) {
        let frontier = self
            .probe
            .with_frontier(|f| f.first().copied().unwrap_or(Lsn::MAX));
        self.durable.send_if_modified(|v| {
            if frontier > *v {
                *v = frontier;
                true
            } else {
                false
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::{Builder, RuntimeFlavor};

    #[test]
    fn a_large_transaction_is_read_ahead_by_two_parts_per_worker_only() {
        let rows = |rows| Load { rows, bytes: 0 };
        let mib = 1 << 20;
        let normal = Load {
            rows: 100_000,
            bytes: 256 * mib,
        };
        let one = ReadAhead::new(normal, 1);
        assert_eq!(one.large.rows, 2 * PART_ROWS);
        assert_eq!(one.large.bytes, 2 * PART_BYTES);
        // Between and inside ordinary transactions the job's read-ahead holds.
        assert!(one.allows(rows(100_000), rows(0)));
        assert!(!one.allows(rows(100_001), rows(0)));
        assert!(one.allows(rows(100_000), rows(PART_ROWS - 1)));
        // Once the transaction in progress passes a part, two parts may wait.
        assert!(one.allows(rows(2 * PART_ROWS), rows(PART_ROWS)));
        assert!(!one.allows(rows(2 * PART_ROWS + 1), rows(PART_ROWS)));
        assert!(!one.allows(rows(50_000), rows(5 * PART_ROWS)));

        let two = ReadAhead::new(normal, 2);
        assert_eq!(two.large.rows, 4 * PART_ROWS, "two parts per worker");
        assert_eq!(two.large.bytes, 4 * PART_BYTES);
        // A job reading less ahead than that keeps its own bound.
        let small = ReadAhead::new(
            Load {
                rows: 10_000,
                bytes: PART_BYTES,
            },
            2,
        );
        assert_eq!(small.large, small.normal);
        assert!(!small.allows(rows(10_001), rows(10 * PART_ROWS)));
        assert_eq!(
            ReadAhead::new(
                Load {
                    rows: usize::MAX,
                    bytes: usize::MAX
                },
                0
            )
            .large,
            Load {
                rows: 2 * PART_ROWS,
                bytes: 2 * PART_BYTES
            }
        );
    }

    #[test]
    fn wide_rows_are_read_ahead_by_bytes() {
        let one = ReadAhead::new(
            Load {
                rows: 100_000,
                bytes: 64 << 20,
            },
            1,
        );
        let waiting = |rows, bytes| Load { rows, bytes };
        // 1,000 rows of 100 KB pass the job's bytes long before its rows.
        assert!(one.allows(waiting(600, 60 << 20), Load::default()));
        assert!(!one.allows(waiting(700, 70 << 20), Load::default()));
        // A transaction whose bytes pass a part is large, however few its rows: two
        // parts' bytes may wait.
        let open = waiting(200, PART_BYTES);
        assert!(one.allows(waiting(300, 2 * PART_BYTES), open));
        assert!(!one.allows(waiting(300, 2 * PART_BYTES + 1), open));
        assert!(
            one.allows(
                waiting(300, 2 * PART_BYTES + 1),
                waiting(200, PART_BYTES - 1)
            ),
            "below a part it is an ordinary transaction"
        );
    }

    #[test]
    fn cold_tier_sinks_run_on_the_process_runtime_and_the_others_on_the_workers() {
        let worker = Builder::new_current_thread().build().unwrap();
        let process = Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let runtimes = SinkRuntimes {
            worker: worker.handle().clone(),
            process: process.handle().clone(),
        };
        let flavor = |place: SinkPlace| runtimes.runtime_for(&place).runtime_flavor();
        let cold = SinkPlace::Parquet {
            root: "/tmp/cold".into(),
            compaction: crate::sinks::parquet::COMPACTION,
        };
        assert_eq!(flavor(cold), RuntimeFlavor::MultiThread);
        let target = SinkPlace::Postgres("host=127.0.0.1 dbname=t".into());
        assert_eq!(flavor(target), RuntimeFlavor::CurrentThread);
    }
}
