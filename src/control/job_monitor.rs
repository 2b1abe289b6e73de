//! The monitor task of a job under `helios-repl serve`: every [`MONITOR_EVERY`] it samples
//! the job's figures (`JobStats`) into its metrics, records state changes as events,
//! mirrors the per-tenant progress into the metadata store and saves the hotness
//! predictions when a window closes.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::job_manager::JobManager;
use crate::control::job_runner::JobStats;
use crate::metrics::names::{SIDE_MERGED, SIDE_WRITTEN};
use crate::metrics::JobMetrics;

/// How often each job's figures are sampled.
pub const MONITOR_EVERY: Duration = Duration::from_secs(2);

/// Samples one job's figures: rows/s, metrics, events, per-tenant checkpoints.
pub(super) async fn monitor(
    manager: Arc<JobManager>,
    job: String,
    stats: Arc<JobStats>,
    metrics: Arc<JobMetrics>,
    rows_per_second: Arc<std::sync::Mutex<f64>>,
    kinds: Vec<&'static str>,
    keeps_history: bool,
) {
    let kind = |i: usize| kinds.get(i).copied().unwrap_or("postgres");
    let mut tick = tokio::time::interval(MONITOR_EVERY);
    let mut last_rows = stats.rows_applied();
    let mut last_at = Instant::now();
    let mut mirrored: HashMap<String, u64> = HashMap::new();
    let mut seen_counts: HashMap<(usize, String), (u64, u64)> = HashMap::new();
    let mut seen_bytes = 0u64;
    let mut seen_streamed = 0u64;
    let mut seen_socket_reads = (0u64, 0u64);
    let mut seen_walks = 0u64;
    let mut seen_errors: Vec<u64> = vec![0; stats.sinks.len()];
    let mut seen_reads = 0u64;
    let mut saved_windows = 0u64;
    loop {
        tick.tick().await;
        let rows = stats.rows_applied();
        let rate =
            (rows.saturating_sub(last_rows)) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        (last_rows, last_at) = (rows, Instant::now());
        if let Ok(mut r) = rows_per_second.lock() {
            *r = rate;
        }
        manager.record_state_changes(&job, &stats).await;
        let state = stats.state();
        metrics.set_state(state.0.name());
        metrics.set_lag(None, stats.lag_seconds(), stats.lag_bytes());
        metrics.set_confirmed_lsn(stats.reader.confirmed.load(Relaxed));
        metrics.set_cutover_gaps(
            stats.tables_left_out().len() as u64,
            stats.sequence_problems().len() as u64,
        );
        if let Some(slot) = stats.slot() {
            metrics.set_slot_wal(slot.retained_wal_bytes, slot.safe_wal_bytes);
        }
        let backlog = stats.backlog.lock().map(|b| b.load()).unwrap_or_default();
        metrics.set_sink_backlog(backlog.rows as u64, backlog.bytes as u64);
        if keeps_history {
            metrics.set_history_versions_held(stats.books.versions_held() as u64);
            let rows = stats.books.row_bytes();
            metrics.set_history_row_bytes(rows.memory, rows.spilled);
            // A restart of the job starts its books' count again.
            metrics.history_row_walks(rows.walks.checked_sub(seen_walks).unwrap_or(rows.walks));
            seen_walks = rows.walks;
        }
        let bytes = stats.reader.bytes_received.load(Relaxed);
        metrics.bytes_received(bytes.saturating_sub(seen_bytes));
        seen_bytes = bytes;
        let streamed = stats.reader.streamed_txns.load(Relaxed);
        metrics.streamed_transactions(streamed.saturating_sub(seen_streamed));
        seen_streamed = streamed;
        let socket_reads = (
            stats.reader.socket_reads.load(Relaxed),
            stats.reader.batched_reads.load(Relaxed),
        );
        metrics.socket_reads(
            socket_reads.0.saturating_sub(seen_socket_reads.0),
            socket_reads.1.saturating_sub(seen_socket_reads.1),
        );
        seen_socket_reads = socket_reads;
        let mut changed = Vec::new();
        for (i, sink) in stats.sinks.iter().enumerate() {
            let errors = sink.errors.load(Relaxed);
            for _ in seen_errors[i]..errors {
                metrics.sink_error(kind(i));
            }
            seen_errors[i] = errors;
            for seconds in sink.take_apply_seconds() {
                metrics.apply_batch(kind(i), seconds);
            }
            for (stage, seconds) in sink.stages.take() {
                metrics.transaction_stage(kind(i), stage, seconds);
            }
            for (tenant, p) in sink.tenant_progress() {
                let seen = seen_counts.entry((i, tenant.clone())).or_default();
                metrics.rows(&tenant, "upsert", p.upserts.saturating_sub(seen.0));
                metrics.rows(&tenant, "delete", p.deletes.saturating_sub(seen.1));
                *seen = (p.upserts, p.deletes);
                metrics.set_lag(Some(&tenant), p.lag_seconds, stats.lag_bytes());
                if mirrored.get(&tenant) != Some(&p.lsn) {
                    mirrored.insert(tenant.clone(), p.lsn);
                    changed.push((tenant, p.lsn));
                }
            }
            let skipped = sink.skipped.load(Relaxed);
            let dead = sink.dead_lettered.load(Relaxed);
            let bytes = sink.bytes_sent.load(Relaxed);
            let seen = seen_counts.entry((i, "_sink".into())).or_default();
            metrics.rows("_all", "skipped_replay", skipped.saturating_sub(seen.0));
            metrics.rows("_all", "dead_lettered", dead.saturating_sub(seen.1));
            *seen = (skipped, dead);
            let seen_b = seen_counts.entry((i, "_bytes".into())).or_default();
            metrics.bytes_sent(kind(i), bytes.saturating_sub(seen_b.0));
            seen_b.0 = bytes;
        }
        if let Err(e) = manager.store.record_checkpoints(&job, &changed).await {
            tracing::warn!(job = %job, error = %e, "cannot mirror checkpoints");
        }
        let mut in_error: HashMap<&'static str, usize> = HashMap::new();
        for (i, sink) in stats.sinks.iter().enumerate() {
            if kind(i) == "postgres" {
                let tables = sink.tables_in_error.lock().map_or(0, |t| t.len());
                *in_error.entry(kind(i)).or_default() += tables;
            }
        }
        for (kind, tables) in in_error {
            metrics.set_sink_tables_in_error(kind, tables);
        }
        for (i, sink) in stats.sinks.iter().enumerate() {
            let micros = sink.throttled_micros.load(Relaxed);
            let seen = seen_counts.entry((i, "_throttled".into())).or_default();
            metrics.throttled(kind(i), micros.saturating_sub(seen.0) as f64 / 1e6);
            seen.0 = micros;
            let round_trip = sink.round_trip_nanos.load(Relaxed);
            if round_trip > 0 {
                metrics.set_sink_round_trip(kind(i), round_trip as f64 / 1e9);
                metrics.set_sink_max_in_flight(kind(i), sink.max_in_flight.load(Relaxed));
            }
            if kind(i) == "nats" {
                let c = &sink.compression;
                let encode = c.encode_micros.load(Relaxed);
                let seen = seen_counts.entry((i, "_encode".into())).or_default();
                metrics.encode_seconds(kind(i), encode.saturating_sub(seen.0) as f64 / 1e6);
                seen.0 = encode;
                metrics.set_codec_fast_mode(kind(i), c.fast_mode.load(Relaxed));
            }
            if kind(i) == "parquet" {
                let c = &sink.compaction;
                for (side, files, bytes) in [
                    (SIDE_MERGED, &c.files_merged, &c.bytes_merged),
                    (SIDE_WRITTEN, &c.files_written, &c.bytes_written),
                ] {
                    let (files, bytes) = (files.load(Relaxed), bytes.load(Relaxed));
                    let seen = seen_counts
                        .entry((i, format!("_compaction_{side}")))
                        .or_default();
                    metrics.cold_compaction(
                        side,
                        files.saturating_sub(seen.0),
                        bytes.saturating_sub(seen.1),
                    );
                    *seen = (files, bytes);
                }
            }
        }
        if let Some(hub) = stats.access() {
            let reads = hub.ledger.reads.load(Relaxed);
            if reads < seen_reads {
                // A new run of the job: its hub counts from zero.
                (seen_reads, saved_windows) = (0, 0);
            }
            metrics.access_events(reads.saturating_sub(seen_reads));
            seen_reads = reads;
            let status = hub.status();
            metrics.set_predictor_in_use(status.in_use);
            for (name, error) in [
                ("model", status.errors.model),
                ("heuristic", status.errors.heuristic),
                ("last_window", status.errors.last_window),
            ] {
                if let Some(e) = error {
                    metrics.set_prediction_error(name, e);
                }
            }
            metrics.set_hotness(
                status
                    .tenant_hotness
                    .iter()
                    .map(|(t, h)| (t.as_str(), f64::from(*h))),
            );
            if status.windows > saved_windows {
                saved_windows = status.windows;
                manager.save_prediction(&hub).await;
            }
        }
    }
}
