//! The task that drives one sink for one dataflow worker: takes batches from the dataflow,
//! groups consecutive ones into one apply (up to a row budget), retries failures with
//! exponential back-off, and reports each durable LSN back.
//!
//! Nothing is reported durable while a batch keeps failing, so the source never confirms
//! past it (DESIGN.md invariant 6); every failure is counted for metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::change::{pg_now_micros, Lsn};
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
    /// Per tenant progress, summed over workers.
    pub tenants: Mutex<HashMap<String, TenantProgress>>,
    /// Durations of apply calls not yet collected by the metrics (seconds).
    pub apply_seconds: Mutex<Vec<f64>>,
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

/// Runs until the dataflow closes the channel. `on_durable(lsn)` is called after every
/// batch up to `lsn` is durable.
pub async fn run_sink<S: Sink>(
    mut sink: S,
    mut batches: mpsc::Receiver<ApplyBatch>,
    max_rows: usize,
    stats: Arc<SinkStats>,
    reader: Arc<crate::cdc::stream::ReaderStats>,
    on_durable: impl Fn(Lsn) + Send,
) {
    let mut wait = RETRY_INITIAL;
    while let Err(err) = sink.reconnect().await {
        stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(sink = sink.kind(), error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach the sink; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
    while let Some(first) = batches.recv().await {
        let mut rows = first.rows();
        let mut group = vec![first];
        while rows < max_rows {
            match batches.try_recv() {
                Ok(b) => {
                    rows += b.rows();
                    group.push(b);
                }
                Err(_) => break,
            }
        }
        let last = group.last().map(|b| b.commit_lsn).unwrap_or(0);
        let mut wait = RETRY_INITIAL;
        loop {
            let started = std::time::Instant::now();
            match sink.apply(&group).await {
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
                    on_durable(last);
                    break;
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
}
