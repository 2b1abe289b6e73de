//! The task that drives one sink for one dataflow worker: takes batches from the dataflow
//! into its [`Scheduler`], takes groups of whole transactions in the scheduler's order (up
//! to a row budget and within the sink's bandwidth limits), retries failures with
//! exponential back-off, and reports each durable LSN back.
//!
//! Nothing is reported durable while a batch keeps failing, so the source never confirms
//! past it (DESIGN.md invariant 6); every failure is counted for metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::change::{pg_now_micros, Lsn};
use crate::sinks::qos::rate_limit::{Claim, SinkLimiter, SinkLimits};
use crate::sinks::qos::scheduler::{Group, Scheduler};
use crate::sinks::qos::QosPolicy;
use crate::sinks::{ApplyBatch, Sink};

/// First wait after a failure.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Counters one sink task keeps.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Rows inserted or updated.
    pub upserted: AtomicU64,
    /// Rows deleted.
    pub deleted: AtomicU64,
    /// Changes skipped as already applied (replays).
    pub skipped: AtomicU64,
    /// Changes kept in dead letters.
    pub dead_lettered: AtomicU64,
    /// Failed apply attempts.
    pub errors: AtomicU64,
    /// Bytes of values sent to the target.
    pub bytes_sent: AtomicU64,
    /// Microseconds spent waiting for bandwidth (rate limits) or for a tenant that may send.
    pub throttled_micros: AtomicU64,
    /// Per tenant progress, summed over workers.
    pub tenants: Mutex<HashMap<String, TenantProgress>>,
    /// Durations of apply calls not yet collected by the metrics (seconds).
    pub apply_seconds: Mutex<Vec<f64>>,
    /// Codec figures of a compressed-stream sink (empty for the others).
    pub compression: Arc<crate::sinks::nats::compression_stats::CompressionStats>,
}

impl SinkStats {
    /// Takes the apply durations recorded since the last call.
    pub fn take_apply_seconds(&self) -> Vec<f64> {
        self.apply_seconds
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// A copy of the per-tenant progress.
    pub fn tenant_progress(&self) -> HashMap<String, TenantProgress> {
        self.tenants.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// One tenant's progress at a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TenantProgress {
    /// The highest commit LSN durable for the tenant.
    pub lsn: Lsn,
    /// Inserts and updates applied.
    pub upserts: u64,
    /// Deletes applied.
    pub deletes: u64,
    /// How old the tenant's newest applied change was when it became durable (seconds).
    pub lag_seconds: f64,
}

/// How a sink task orders and paces its work.
#[derive(Clone)]
pub struct SinkPacing {
    /// Tiers, budgets and whether tenants may be reordered.
    pub policy: Arc<QosPolicy>,
    /// The sink's bandwidth limits (shared by its tasks on every worker).
    pub limiter: Arc<SinkLimiter>,
    /// Predicted hotness of a transaction (0 when nothing is known).
    pub hotness: Arc<dyn Fn(&ApplyBatch) -> f32 + Send + Sync>,
    /// Rows delivered to the job's sinks and not yet applied (the reader pauses while it
    /// is large); this task takes off what it applied.
    pub backlog: Arc<AtomicUsize>,
    /// Most rows applied in one sink transaction.
    pub max_rows: usize,
    /// This task's index among the sink's tasks (one per worker), for arbitration.
    pub task: usize,
}

impl SinkPacing {
    /// Commit order, no limits, no hotness: the plain sink task.
    pub fn fifo(backlog: Arc<AtomicUsize>, max_rows: usize, task: usize) -> Self {
        SinkPacing {
            policy: Arc::new(QosPolicy::fifo()),
            limiter: Arc::new(SinkLimiter::new(SinkLimits::default(), 0)),
            hotness: Arc::new(|_| 0.0),
            backlog,
            max_rows,
            task,
        }
    }
}

/// Longest sleep while waiting for bandwidth before looking at new batches again.
const PACING_SLICE: Duration = Duration::from_millis(50);

/// Runs until the dataflow closes the channel and everything received is applied.
/// `on_durable(lsn)` is called once every batch up to `lsn` is durable.
pub async fn run_sink<S: Sink>(
    mut sink: S,
    mut batches: mpsc::Receiver<ApplyBatch>,
    stats: Arc<SinkStats>,
    reader: Arc<crate::cdc::stream::ReaderStats>,
    pacing: SinkPacing,
    on_durable: impl Fn(Lsn) + Send,
) {
    let mut wait = RETRY_INITIAL;
    while let Err(err) = sink.reconnect().await {
        stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(sink = sink.kind(), error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach the sink; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
    let mut scheduler = Scheduler::new(pacing.policy.clone());
    let limiter = pacing.limiter.clone();
    let (max_rows, task) = (pacing.max_rows, pacing.task);
    let push = |scheduler: &mut Scheduler, batch: ApplyBatch| {
        let born = reader
            .commit_times
            .get(batch.commit_lsn)
            .unwrap_or_else(pg_now_micros);
        let hot = (pacing.hotness)(&batch);
        scheduler.push(batch, born, hot);
    };
    let mut open = true;
    loop {
        if scheduler.is_empty() {
            if !open {
                break;
            }
            if limiter.is_shared() {
                limiter.arbitrate(task, None);
            }
            match batches.recv().await {
                Some(b) => push(&mut scheduler, b),
                None => break,
            }
        }
        let mut took = false;
        while let Ok(b) = batches.try_recv() {
            push(&mut scheduler, b);
            took = true;
        }
        if took {
            // The channel has room again: wake the dataflow's delivery to refill it, so
            // the scheduler sees as much of the backlog as the read-ahead allows.
            on_durable(scheduler.durable_watermark());
        }
        let now = pg_now_micros();
        let sink_wait = limiter.sink_wait_micros(now);
        // A shared bandwidth goes to the task with the best tier first.
        let arbitrated = limiter.is_shared() && scheduler.policy().reorder;
        let yields = arbitrated
            && !limiter.arbitrate(
                task,
                scheduler
                    .claim(now, &mut |tenant| {
                        limiter.tenant_wait_micros(tenant, now) == 0
                    })
                    .map(|(tier, overdue)| Claim { tier, overdue }),
            );
        let group = if sink_wait > 0 || yields {
            Group::default()
        } else {
            let budget = limiter.sink_rows_budget(now).min(max_rows);
            scheduler.next_group(now, budget, &mut |tenant, _, _| {
                limiter.tenant_wait_micros(tenant, now) == 0
            })
        };
        if group.batches.is_empty() {
            // Out of bandwidth (the sink's or every waiting tenant's): wait a slice, or
            // until a new batch arrives, which may belong to a tenant that may send.
            let slice = if sink_wait > 0 && !yields {
                Duration::from_micros(sink_wait as u64).min(PACING_SLICE)
            } else {
                PACING_SLICE / 5
            };
            let started = std::time::Instant::now();
            tokio::select! {
                b = batches.recv(), if open => match b {
                    Some(b) => push(&mut scheduler, b),
                    None => open = false,
                },
                _ = tokio::time::sleep(slice) => {}
            }
            stats
                .throttled_micros
                .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
            continue;
        }
        if arbitrated {
            let tier = group.born.iter().map(|(t, _)| *t).min().unwrap_or_default();
            limiter.charge(task, tier, group.rows, scheduler.policy().min_share);
        }
        limiter.take(&group, now);
        apply_group(&mut sink, &group.batches, &stats, &reader).await;
        let _ = pacing
            .backlog
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(group.rows)));
        on_durable(scheduler.durable_watermark());
    }
}

/// Applies one group, retrying with back-off until it is durable, and records the figures.
async fn apply_group<S: Sink>(
    sink: &mut S,
    group: &[ApplyBatch],
    stats: &SinkStats,
    reader: &crate::cdc::stream::ReaderStats,
) {
    let mut wait = RETRY_INITIAL;
    loop {
        let started = std::time::Instant::now();
        match sink.apply(group).await {
            Ok(report) => {
                if let Ok(mut v) = stats.apply_seconds.lock() {
                    // Bounded: a scrape-less server keeps only the latest figures.
                    if v.len() >= 4096 {
                        v.clear();
                    }
                    v.push(started.elapsed().as_secs_f64());
                }
                let now = pg_now_micros();
                if let Ok(mut t) = stats.tenants.lock() {
                    for a in &report.tenants {
                        let e = t.entry(a.tenant.clone()).or_default();
                        if a.lsn >= e.lsn {
                            e.lsn = a.lsn;
                            if let Some(at) = reader.commit_times.get(a.lsn) {
                                e.lag_seconds = ((now - at) as f64 / 1e6).max(0.0);
                            }
                        }
                        e.upserts += a.upserts;
                        e.deletes += a.deletes;
                    }
                }
                stats.upserted.fetch_add(report.upserted, Relaxed);
                stats.deleted.fetch_add(report.deleted, Relaxed);
                stats.skipped.fetch_add(report.skipped, Relaxed);
                stats.dead_lettered.fetch_add(report.dead_lettered, Relaxed);
                stats.bytes_sent.fetch_add(report.bytes, Relaxed);
                return;
            }
            Err(err) => {
                stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(sink = sink.kind(), error = %err, retry_in_ms = wait.as_millis() as u64, "apply failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
                if let Err(err) = sink.reconnect().await {
                    tracing::warn!(sink = sink.kind(), error = %err, "reconnect failed");
                }
            }
        }
    }
}
