//! Runs a job's Timely workers: builds the same dataflow on every worker, feeds the
//! reader's events into worker 0's input, starts each worker's sink tasks on the tokio
//! runtime, and publishes the durable frontier for the reader to confirm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use tokio::sync::{mpsc, watch};

use crate::cdc::stream::SourceEvent;
use crate::change::{Lsn, SourceRecord};
use crate::dataflow::render::render_job;
use crate::operators::partition::TenantPlan;
use crate::sinks::pg_apply::PgApplySink;
use crate::sinks::worker::{run_sink, SinkStats};
use crate::sinks::ApplyBatch;

/// Batches queued per sink task before the worker blocks (back-pressure).
pub const SINK_QUEUE_BATCHES: usize = 64;
/// Events taken from the reader per worker step.
const EVENTS_PER_STEP: usize = 4096;
/// Longest a worker parks without being woken.
const PARK: Duration = Duration::from_millis(10);

/// One sink of the job, as every worker instantiates it.
#[derive(Debug, Clone)]
pub struct SinkTarget {
    /// Target connection string.
    pub dsn: String,
    /// Most rows one apply transaction takes.
    pub batch_max_rows: usize,
    /// Counters shared by this sink's tasks on all workers.
    pub stats: Arc<SinkStats>,
}

/// What the workers need.
pub struct DataflowConfig {
    /// The job's name (checkpoint key).
    pub job: String,
    /// Number of timely workers (threads).
    pub workers: usize,
    /// Tenant routing.
    pub plan: Arc<TenantPlan>,
    /// The job's sinks.
    pub sinks: Vec<SinkTarget>,
    /// Where sink tasks run.
    pub runtime: tokio::runtime::Handle,
    /// Set to stop at once, without waiting for in-flight changes to become durable.
    pub abort: Arc<AtomicBool>,
}

/// The wake-up handle of the worker that reads events (set once it runs).
pub type FeederThread = Arc<Mutex<Option<Thread>>>;

/// Runs the workers until the event channel closes and everything is durable (or abort).
pub fn run_dataflow(
    config: DataflowConfig,
    events: mpsc::Receiver<SourceEvent>,
    durable: watch::Sender<Lsn>,
    feeder: FeederThread,
) -> Result<(), String> {
    let config = Arc::new(config);
    let events = Arc::new(Mutex::new(Some(events)));
    let durable = Arc::new(durable);
    let guards = timely::execute(
        timely::Config::process(config.workers.max(1)),
        move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let mut input: InputHandleVec<Lsn, SourceRecord> = InputHandleVec::new();
            let probe: ProbeHandle<Lsn> = ProbeHandle::new();
            let (report_tx, report_rx) = crossbeam_channel::unbounded::<(usize, Lsn)>();
            let mut senders = Vec::new();
            let mut receivers = Vec::new();
            for _ in &config.sinks {
                let (tx, rx) = mpsc::channel::<ApplyBatch>(SINK_QUEUE_BATCHES);
                senders.push(tx);
                receivers.push(rx);
            }
            let mut activator = None;
            worker.dataflow::<Lsn, _, _>(|scope| {
                let source = scope.input_from(&mut input);
                render_job(source, config.plan.clone(), senders, report_rx, |a| {
                    activator = Some(a)
                })
                .probe_with(&probe);
            });
            let activator = Arc::new(activator.expect("render_job hands over an activator"));
            for (i, (rx, target)) in receivers.into_iter().zip(&config.sinks).enumerate() {
                let sink =
                    PgApplySink::new(&config.job, &target.dsn, config.plan.clone(), index as u32);
                let report_tx = report_tx.clone();
                let activator = activator.clone();
                config.runtime.spawn(run_sink(
                    sink,
                    rx,
                    target.batch_max_rows,
                    target.stats.clone(),
                    move |lsn| {
                        let _ = report_tx.send((i, lsn));
                        let _ = activator.activate();
                    },
                ));
            }
            drop(report_tx);
            let report = |probe: &ProbeHandle<Lsn>| {
                if index != 0 {
                    return;
                }
                let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(Lsn::MAX));
                durable.send_if_modified(|v| {
                    if frontier > *v {
                        *v = frontier;
                        true
                    } else {
                        false
                    }
                });
            };
            if index == 0 {
                if let Ok(mut slot) = feeder.lock() {
                    *slot = Some(std::thread::current());
                }
                let rx = events.lock().ok().and_then(|mut e| e.take());
                if let Some(mut rx) = rx {
                    feed(worker, &mut input, &mut rx, &probe, &config.abort, &report);
                }
            }
            drop(input);
            let _ = peers;
            while !probe.done() && !config.abort.load(Ordering::Relaxed) {
                worker.step_or_park(Some(PARK));
                report(&probe);
            }
        },
    )?;
    for result in guards.join() {
        result?;
    }
    Ok(())
}

/// Worker 0's loop: moves reader events into the input until the channel closes.
fn feed(
    worker: &mut timely::worker::Worker,
    input: &mut InputHandleVec<Lsn, SourceRecord>,
    rx: &mut mpsc::Receiver<SourceEvent>,
    probe: &ProbeHandle<Lsn>,
    abort: &AtomicBool,
    report: &impl Fn(&ProbeHandle<Lsn>),
) {
    let mut discarding = false;
    loop {
        let mut taken = 0;
        let mut closed = false;
        while taken < EVENTS_PER_STEP {
            match rx.try_recv() {
                Ok(event) => {
                    taken += 1;
                    match event {
                        SourceEvent::Begin { commit_lsn, .. } => {
                            discarding = commit_lsn < *input.time();
                            if discarding {
                                tracing::error!(commit_lsn, "transaction older than the dataflow's input time; not fed again");
                            } else {
                                input.advance_to(commit_lsn);
                            }
                        }
                        SourceEvent::Record(record) => {
                            if !discarding {
                                input.send(record);
                            }
                        }
                        SourceEvent::Commit { commit_lsn, .. } => {
                            if !discarding {
                                input.advance_to(commit_lsn + 1);
                            }
                            discarding = false;
                        }
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if taken == EVENTS_PER_STEP {
            worker.step();
        } else {
            worker.step_or_park(Some(PARK));
        }
        report(probe);
        if closed || abort.load(Ordering::Relaxed) {
            return;
        }
    }
}
