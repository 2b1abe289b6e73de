//! The task that drives one sink for one dataflow worker: takes batches from the dataflow
//! into its [`Scheduler`], takes groups of whole transactions in the scheduler's order (up
//! to a row budget and within the sink's bandwidth limits), retries failures with
//! exponential back-off, and reports each durable LSN back.
//!
//! Nothing is reported durable while a batch keeps failing, so the source never confirms
//! past it (DESIGN.md invariant 6); every failure is counted for metrics.
//!
//! A transaction the dataflow hands over in parts ([`Delivery::Part`]) is a barrier: the
//! task first applies everything pending before it, then hands the sink its parts as they
//! come, each first spilled to a local file ([`LiveParts`], [`SpilledTxn`]), for one
//! target transaction ([`Sink::apply_large_live`]); if that fails, it takes the rest into
//! the file and applies the whole from there ([`Sink::apply_large`]), retrying with
//! back-off. Its size never shows in memory. It is not held back by the bandwidth limits
//! (the sink is busy with it alone meanwhile).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::change::{pg_now_micros, Lsn};
use crate::sinks::backlog::{Backlog, Load};
use crate::sinks::large::{LiveParts, PartsStopped};
use crate::sinks::qos::rate_limit::{Claim, SinkLimiter, SinkLimits};
use crate::sinks::qos::scheduler::{Group, Scheduler};
use crate::sinks::qos::QosPolicy;
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyBatch, ApplyReport, Delivery, InFlight, Sink, SinkError};

/// First wait after a failure.
pub const RETRY_INITIAL: Duration = Duration::from_millis(200);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a task has had nothing to apply before [`Sink::upkeep`] runs as idle upkeep
/// (and again as often while it stays idle).
pub const IDLE_UPKEEP: Duration = Duration::from_secs(10);

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
    /// The round trip to the target as the sink last measured it, in nanoseconds (0: the
    /// sink measures none).
    pub round_trip_nanos: AtomicU64,
    /// Groups the task may have in flight now (its setting, or `auto`'s choice).
    pub max_in_flight: AtomicU64,
    /// Per tenant progress, summed over workers.
    pub tenants: Mutex<HashMap<String, TenantProgress>>,
    /// Durations of apply calls not yet collected by the metrics (seconds).
    pub apply_seconds: Mutex<Vec<f64>>,
    /// Per-transaction stage durations not yet collected (see [`crate::sinks::latency`]).
    pub stages: crate::sinks::latency::StageSamples,
    /// Codec figures of a compressed-stream sink (empty for the others).
    pub compression: Arc<crate::sinks::nats::compression_stats::CompressionStats>,
    /// Compaction figures of a cold-tier sink (zero for the others).
    pub compaction: Arc<crate::sinks::parquet::CompactionStats>,
    /// Tables the sink keeps in error state, with why (those of every worker's sink).
    pub tables_in_error: Mutex<BTreeMap<String, String>>,
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
    /// What was delivered to the job's sinks and not yet applied (the reader pauses while
    /// it is large); this task takes off what it applied.
    pub backlog: Arc<Backlog>,
    /// Most rows applied in one sink transaction.
    pub max_rows: usize,
    /// Most bytes of values in one sink transaction besides its first source
    /// transaction ([`crate::sinks::qos::scheduler::GROUP_BYTES`] by default).
    pub max_bytes: u64,
    /// This task's index among the sink's tasks (one per worker), for arbitration.
    pub task: usize,
    /// Hold small groups back to publish fewer, larger ones (`None`: apply at once).
    pub linger: Option<Linger>,
    /// Most groups sent to a sink that can pipeline them ([`Sink::send`]) before the
    /// oldest is durable; 1 waits for each group before sending the next. `None`: chosen
    /// from the round trip as the sink last measured it ([`auto_in_flight`]).
    pub pipeline: Option<usize>,
}

/// The round trip from which `auto` sends groups while earlier ones are in flight. From
/// about 0.75 ms on, pipelining cut the lag P99 by a fifth to a third in `cargo bench
/// --bench remote_target`; around 0.5 ms the gain was within its noise, and near a
/// loopback's round trip it only adds target transactions (see `benches/HISTORY.md`).
pub const AUTO_PIPELINE_ROUND_TRIP: Duration = Duration::from_micros(600);
/// How many groups `auto` keeps in flight across such a round trip.
pub const AUTO_PIPELINE_DEPTH: usize = 8;

/// The groups in flight `auto` chooses for a sink whose round trip is `round_trip`: one
/// when it is short or unknown (a local target gains nothing from more, and the target
/// commits more, smaller transactions), [`AUTO_PIPELINE_DEPTH`] from
/// [`AUTO_PIPELINE_ROUND_TRIP`] on (see `cargo bench --bench remote_target`).
pub fn auto_in_flight(round_trip: Option<Duration>) -> usize {
    match round_trip {
        Some(rtt) if rtt >= AUTO_PIPELINE_ROUND_TRIP => AUTO_PIPELINE_DEPTH,
        _ => 1,
    }
}

/// Copies the tables `sink` keeps in error state, with their reasons, into `stats` (for
/// the job's status and metrics). A table leaves error state only when the job restarts
/// (a resync), so the set only grows while the stats live; a reason may grow (its history
/// table refusing versions too).
fn note_tables_in_error<S: Sink>(sink: &S, stats: &SinkStats) {
    let Some(failed) = sink.tables_in_error().filter(|f| !f.is_empty()) else {
        return;
    };
    if let Ok(mut known) = stats.tables_in_error.lock() {
        for (table, why) in failed {
            if known.get(table) != Some(why) {
                known.insert(table.clone(), why.clone());
            }
        }
    }
}

/// How many groups may be in flight now: the sink's setting, or with `auto` (`None`)
/// [`auto_in_flight`] of the round trip as the sink last measured it (at each connect and,
/// for the PostgreSQL sink, every 10 s while connected), so a target that moved, with or
/// without a reconnect, is decided for again. Logs each new choice in `chosen`. Notes the
/// tables the sink keeps in error on the way ([`note_tables_in_error`]).
fn groups_in_flight<S: Sink>(
    sink: &S,
    setting: Option<usize>,
    chosen: &mut Option<usize>,
    stats: &SinkStats,
) -> usize {
    note_tables_in_error(sink, stats);
    let round_trip = sink.round_trip();
    // A measured round trip is never 0 ns: 0 stands for none.
    let nanos = round_trip.map_or(0, |r| {
        u64::try_from(r.as_nanos()).unwrap_or(u64::MAX).max(1)
    });
    stats.round_trip_nanos.store(nanos, Relaxed);
    let depth = setting.unwrap_or_else(|| auto_in_flight(round_trip));
    stats.max_in_flight.store(depth as u64, Relaxed);
    if setting.is_some() {
        return depth;
    }
    if *chosen != Some(depth) {
        tracing::info!(
            sink = sink.kind(),
            round_trip_us = round_trip.map(|r| r.as_micros() as u64),
            max_in_flight = depth,
            "groups in flight chosen from the round trip to the target"
        );
        *chosen = Some(depth);
    }
    depth
}

/// How long a sink whose writes carry a high fixed cost (the Parquet cold tier: files,
/// fsyncs and a manifest per table directory) lets pending rows gather before applying
/// them: it applies once `rows` are pending, once the oldest has waited `wait`, at once
/// when the channel closes, and early once the source has sent nothing for [`QUIET`] with
/// at least `early_rows` pending, or with any rows pending right after a whole group (the
/// end of a catch-up: no company is coming; a steady trickle keeps the source busy and its
/// groups full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// Pending rows that are worth a write.
    pub rows: usize,
    /// Pending bytes (estimated, [`crate::footprint`]) that are worth a write.
    pub bytes: usize,
    /// Longest a pending row waits for others.
    pub wait: Duration,
    /// Pending rows worth a write once the source is quiet (`usize::MAX`: never early, not
    /// even after a whole group).
    pub early_rows: usize,
    /// The job's read-ahead: past this backlog the reader pauses, so a quiet source
    /// then means a waiting reader, not an idle source.
    pub read_ahead: Load,
}

/// How long the source must have sent nothing for a lingering sink to stop waiting.
pub const QUIET: Duration = Duration::from_millis(50);

/// When the source last sent anything, as seen by a sink task polling the reader's
/// byte count.
struct SourceActivity {
    bytes: u64,
    since: tokio::time::Instant,
}

impl SourceActivity {
    fn new(bytes: u64) -> Self {
        SourceActivity {
            bytes,
            since: tokio::time::Instant::now(),
        }
    }

    /// How long the byte count has stood at `bytes`.
    fn quiet_for(&mut self, bytes: u64) -> Duration {
        if bytes != self.bytes {
            *self = SourceActivity::new(bytes);
        }
        self.since.elapsed()
    }
}

impl SinkPacing {
    /// Commit order, no limits, no hotness: the plain sink task.
    pub fn fifo(backlog: Arc<Backlog>, max_rows: usize, task: usize) -> Self {
        SinkPacing {
            policy: Arc::new(QosPolicy::fifo()),
            limiter: Arc::new(SinkLimiter::new(SinkLimits::default(), 0)),
            hotness: Arc::new(|_| 0.0),
            backlog,
            max_rows,
            max_bytes: crate::sinks::qos::scheduler::GROUP_BYTES,
            task,
            linger: None,
            pipeline: Some(1),
        }
    }
}

/// Longest sleep while waiting for bandwidth before looking at new batches again.
const PACING_SLICE: Duration = Duration::from_millis(50);

/// Runs until the dataflow closes the channel and everything received is applied.
/// `on_durable(lsn)` is called once every batch up to `lsn` is durable.
pub async fn run_sink<S: Sink>(
    mut sink: S,
    mut batches: mpsc::Receiver<Delivery>,
    stats: Arc<SinkStats>,
    reader: Arc<crate::cdc::stream::ReaderStats>,
    pacing: SinkPacing,
    on_durable: impl Fn(Lsn) + Send + Sync,
) {
    let mut wait = RETRY_INITIAL;
    while let Err(err) = sink.reconnect().await {
        stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(sink = sink.kind(), error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach the sink; retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
    // `auto`'s last choice, decided again as the round trip changes (and shown in the
    // stats from the start, before any group).
    let mut chosen = None;
    groups_in_flight(&sink, pacing.pipeline, &mut chosen, &stats);
    let mut scheduler = Scheduler::new(pacing.policy.clone()).with_group_bytes(pacing.max_bytes);
    let limiter = pacing.limiter.clone();
    let (max_rows, task) = (pacing.max_rows, pacing.task);
    let push = |scheduler: &mut Scheduler, batch: ApplyBatch| {
        let seen = reader.commit_times.seen(batch.commit_lsn);
        let now = pg_now_micros();
        if let Some(seen) = seen {
            stats.stages.taken(seen, now);
        }
        let born = seen.map_or(now, |s| s.committed);
        let hot = (pacing.hotness)(&batch);
        if let Some(copy) = scheduler.push(batch, born, hot) {
            take_off_backlog(&pacing, Load::of(&copy));
        }
    };
    let mut open = true;
    // The first part of a large transaction, once received: nothing else is taken from
    // the channel until it is applied (its other parts come next).
    let mut large: Option<ApplyBatch> = None;
    // Since when rows have been pending (for the linger).
    let mut pending_since: Option<tokio::time::Instant> = None;
    // The last group went because a whole group was pending: behind the source, so once
    // it goes quiet the rest goes too, however few rows (the end of a catch-up).
    let mut catching_up = false;
    let mut activity = SourceActivity::new(reader.bytes_received.load(Relaxed));
    let receive = |scheduler: &mut Scheduler, large: &mut Option<ApplyBatch>, d: Delivery| match d {
        Delivery::Batch(b) => push(scheduler, b),
        Delivery::Part(p) => *large = Some(p),
    };
    // Groups sent and not yet settled, oldest first.
    let mut in_flight = InFlightGroups::default();
    loop {
        if let Some(first) = large.take() {
            in_flight
                .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
                .await;
            drain(
                &mut sink,
                &mut scheduler,
                &stats,
                &reader,
                &pacing,
                &on_durable,
            )
            .await;
            let before = scheduler.durable_watermark();
            match stream_large(
                &mut sink,
                first,
                &mut batches,
                &stats,
                &reader,
                &pacing,
                before,
                &on_durable,
            )
            .await
            {
                Some(lsn) => on_durable(lsn),
                None => break,
            }
            continue;
        }
        if scheduler.is_empty() {
            if !open {
                break;
            }
            if limiter.is_shared() {
                limiter.arbitrate(task, None);
            }
            match batches.try_recv() {
                // It came while the last group was applied: its linger runs since then.
                Ok(d) => receive(&mut scheduler, &mut large, d),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    pending_since = None;
                    if let Some(oldest) = in_flight.oldest() {
                        // Whichever comes first: the next batch, or the oldest group's outcome.
                        tokio::select! {
                            d = batches.recv() => match d {
                                Some(d) => receive(&mut scheduler, &mut large, d),
                                None => break,
                            },
                            outcome = oldest => {
                                in_flight
                                    .settle_oldest(Some(outcome), &mut sink, &stats, &reader, &pacing, &on_durable)
                                    .await;
                                continue;
                            }
                        }
                        continue;
                    }
                    let next = tokio::select! {
                        d = batches.recv() => d,
                        _ = tokio::time::sleep(IDLE_UPKEEP) => {
                            sink.upkeep(true).await;
                            // An idle sink's round trip (sampled in its upkeep) stays current.
                            groups_in_flight(&sink, pacing.pipeline, &mut chosen, &stats);
                            continue;
                        }
                    };
                    match next {
                        Some(d) => receive(&mut scheduler, &mut large, d),
                        None => break,
                    }
                }
            }
        }
        let mut took = false;
        while large.is_none() {
            let Ok(d) = batches.try_recv() else { break };
            receive(&mut scheduler, &mut large, d);
            took = true;
        }
        if took {
            // The channel has room again: wake the dataflow's delivery to refill it, so
            // the scheduler sees as much of the backlog as the read-ahead allows.
            on_durable(in_flight.durable_below(&scheduler));
        }
        if large.is_some() {
            continue;
        }
        let depth = groups_in_flight(&sink, pacing.pipeline, &mut chosen, &stats);
        if in_flight.len() >= depth.max(1) {
            // Room for another group once the oldest is settled; what arrives meanwhile
            // joins the next group.
            in_flight
                .settle_oldest(None, &mut sink, &stats, &reader, &pacing, &on_durable)
                .await;
            continue;
        }
        if in_flight.len() > 0 && sink.upkeep_due() {
            // A backlog keeps the pipeline full, so its groups never settle to nothing by
            // themselves: settle them once (one pipeline bubble per sample interval) so
            // the upkeep runs with nothing in flight (see settle_oldest).
            in_flight
                .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
                .await;
            continue;
        }
        if let Some(linger) = pacing.linger {
            in_flight
                .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
                .await;
            let since = *pending_since.get_or_insert_with(tokio::time::Instant::now);
            let left = linger.wait.saturating_sub(since.elapsed());
            let pending = scheduler.pending_rows();
            let early = linger.early_rows != usize::MAX;
            let source_done = (pending >= linger.early_rows || catching_up && early)
                && pacing.backlog.load().within(linger.read_ahead)
                && activity.quiet_for(reader.bytes_received.load(Relaxed)) >= QUIET;
            // Wide rows fill the read-ahead's bytes before a group's rows: half of them
            // is worth a write as half its rows is.
            let enough = pending >= linger.rows || scheduler.pending_footprint() >= linger.bytes;
            if open && !enough && !left.is_zero() && !source_done {
                tokio::select! {
                    b = batches.recv() => match b {
                        Some(d) => receive(&mut scheduler, &mut large, d),
                        None => open = false,
                    },
                    // Looks at the source again after a quiet spell.
                    _ = tokio::time::sleep(left.min(QUIET)) => {}
                }
                continue;
            }
            catching_up = enough;
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
        let before = scheduler.durable_watermark();
        let group = if sink_wait > 0 || yields {
            Group::default()
        } else {
            let budget = limiter.sink_rows_budget(now).min(max_rows);
            scheduler.next_group(now, budget, &mut |tenant, _, _| {
                limiter.tenant_wait_micros(tenant, now) == 0
            })
        };
        if group.batches.is_empty() {
            in_flight
                .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
                .await;
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
                    Some(d) => receive(&mut scheduler, &mut large, d),
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
        // Rows left behind by this group have waited already: they keep their linger.
        // Rows that arrive during the apply linger from its start (a lingering sink
        // catching up thus still writes groups of `linger.rows`, not whatever arrived
        // while the last group was written).
        let taken_at = tokio::time::Instant::now();
        let left_behind = !scheduler.is_empty();
        let watermark = scheduler.durable_watermark();
        sink.set_watermark(watermark);
        let sent = if depth > 1 {
            sink.send(&group.batches).await
        } else {
            None
        };
        match sent {
            Some(flight) => in_flight.push(SentGroup {
                load: group.load(),
                batches: group.batches,
                before,
                watermark,
                started: std::time::Instant::now(),
                flight,
            }),
            None => {
                in_flight
                    .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
                    .await;
                sink.set_watermark(watermark);
                apply_group(&mut sink, &group.batches, &stats, &reader).await;
                take_off_backlog(&pacing, group.load());
                on_durable(watermark);
                sink.upkeep(false).await;
            }
        }
        if !left_behind {
            pending_since = Some(taken_at);
        }
    }
    in_flight
        .settle_all(&mut sink, &stats, &reader, &pacing, &on_durable)
        .await;
}

/// A group sent with [`Sink::send`] whose outcome is not in yet.
struct SentGroup {
    batches: Vec<ApplyBatch>,
    /// What the group takes off the backlog once durable.
    load: Load,
    /// The scheduler's durable watermark before the group was taken.
    before: Lsn,
    /// The scheduler's durable watermark once it was taken: durable with the group.
    watermark: Lsn,
    started: std::time::Instant,
    flight: InFlight,
}

/// The groups in flight to a sink, oldest first; settled in that order.
#[derive(Default)]
struct InFlightGroups(VecDeque<SentGroup>);

impl InFlightGroups {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn push(&mut self, group: SentGroup) {
        self.0.push_back(group);
    }

    /// The oldest group's outcome, to wait for.
    fn oldest(&mut self) -> Option<&mut InFlight> {
        self.0.front_mut().map(|g| &mut g.flight)
    }

    /// What may be reported durable: everything the scheduler has let go of, unless some
    /// of it is still in flight.
    fn durable_below(&self, scheduler: &Scheduler) -> Lsn {
        self.0
            .front()
            .map_or_else(|| scheduler.durable_watermark(), |g| g.before)
    }

    /// Waits for every group in flight (see [`InFlightGroups::settle_oldest`]).
    async fn settle_all<S: Sink>(
        &mut self,
        sink: &mut S,
        stats: &SinkStats,
        reader: &crate::cdc::stream::ReaderStats,
        pacing: &SinkPacing,
        on_durable: &impl Fn(Lsn),
    ) {
        while self.len() > 0 {
            self.settle_oldest(None, sink, stats, reader, pacing, on_durable)
                .await;
        }
    }

    /// Settles the oldest group with its outcome (`outcome`, or waited for). If it failed,
    /// every group sent after it failed with it or is treated as failed (nothing may be
    /// durable past a failed group), and they are all applied again in order, each
    /// retried until durable.
    async fn settle_oldest<S: Sink>(
        &mut self,
        outcome: Option<Result<ApplyReport, SinkError>>,
        sink: &mut S,
        stats: &SinkStats,
        reader: &crate::cdc::stream::ReaderStats,
        pacing: &SinkPacing,
        on_durable: &impl Fn(Lsn),
    ) {
        let Some(oldest) = self.0.pop_front() else {
            return;
        };
        let SentGroup {
            batches,
            load,
            watermark,
            started,
            flight,
            ..
        } = oldest;
        let outcome = match outcome {
            Some(o) => o,
            None => flight.await,
        };
        sink.settle(&outcome);
        let err = match outcome {
            Ok(report) => {
                durable_group(stats, reader, &report, &batches, started);
                take_off_backlog(pacing, load);
                on_durable(watermark);
                if self.0.is_empty() {
                    sink.upkeep(false).await;
                }
                return;
            }
            Err(err) => err,
        };
        stats.errors.fetch_add(1, Relaxed);
        tracing::warn!(sink = sink.kind(), error = %err, behind = self.len(), "a pipelined group failed; applying it and the groups sent after it again, in order");
        // Each group's future is dropped before anything is applied again: a sink may need
        // the connection to itself for that.
        let mut again = vec![(batches, load, watermark)];
        while let Some(next) = self.0.pop_front() {
            // Its own outcome does not matter: it is applied again after the failed one.
            let _ = next.flight.await;
            sink.settle(&Err(SinkError::Transient(
                "a group sent before it failed".into(),
            )));
            again.push((next.batches, next.load, next.watermark));
        }
        for (batches, load, watermark) in again {
            sink.set_watermark(watermark);
            apply_group(sink, &batches, stats, reader).await;
            take_off_backlog(pacing, load);
            on_durable(watermark);
        }
        sink.upkeep(false).await;
    }
}

/// Applies everything pending, in the scheduler's order (bandwidth is charged, not
/// waited for): what comes before a large transaction.
async fn drain<S: Sink>(
    sink: &mut S,
    scheduler: &mut Scheduler,
    stats: &SinkStats,
    reader: &crate::cdc::stream::ReaderStats,
    pacing: &SinkPacing,
    on_durable: &impl Fn(Lsn),
) {
    while !scheduler.is_empty() {
        let now = pg_now_micros();
        let group = scheduler.next_group(now, pacing.max_rows, &mut |_, _, _| true);
        if group.batches.is_empty() {
            break;
        }
        pacing.limiter.take(&group, now);
        sink.set_watermark(scheduler.durable_watermark());
        apply_group(sink, &group.batches, stats, reader).await;
        take_off_backlog(pacing, group.load());
        on_durable(scheduler.durable_watermark());
    }
}

fn take_off_backlog(pacing: &SinkPacing, load: Load) {
    pacing.backlog.take(load);
}

/// Applies a large transaction while its parts arrive (`first` is the first one), each
/// spilled to local disk first ([`LiveParts`]); if that attempt fails, takes the rest into
/// the spill file and applies it whole from there, retrying with back-off. Returns its
/// commit LSN once durable; `None` when the channel closed before its last part (the job
/// is stopping: the attempt's target transaction is rolled back, nothing of it applied),
/// another transaction arrived inside it, or the spill file failed (the task stops, so
/// nothing past it is acknowledged and the source sends it again after a restart).
#[allow(clippy::too_many_arguments)]
async fn stream_large<S: Sink>(
    sink: &mut S,
    first: ApplyBatch,
    batches: &mut mpsc::Receiver<Delivery>,
    stats: &SinkStats,
    reader: &crate::cdc::stream::ReaderStats,
    pacing: &SinkPacing,
    durable_before: Lsn,
    on_durable: &(impl Fn(Lsn) + Sync),
) -> Option<Lsn> {
    let lsn = first.commit_lsn;
    let kind = sink.kind();
    let stop = |stopped: PartsStopped| {
        if !matches!(stopped, PartsStopped::Closed) {
            stats.errors.fetch_add(1, Relaxed);
            tracing::error!(sink = kind, lsn, error = %stopped, "large transaction given up; this sink stops and nothing past it is acknowledged");
        }
        None
    };
    // Each part is a burst of memory: give it back as it is freed (`process_memory`).
    let _prompt_purge = crate::process_memory::PromptPurge::hold();
    let mut spill = match SpilledTxn::create(lsn) {
        Ok(s) => s,
        Err(e) => return stop(e.into()),
    };
    // Everything handed over before it was applied first (`drain`).
    sink.set_watermark(lsn);
    tracing::info!(
        sink = kind,
        lsn,
        "large transaction arriving in parts; applying it as they come, spilled to local disk"
    );
    let started = std::time::Instant::now();
    let live = {
        let mut parts = LiveParts::new(first, batches, &mut spill, |load| {
            take_off_backlog(pacing, load);
            // Room in the channel again: let the dataflow hand over the next part.
            on_durable(durable_before);
        });
        let live = sink.apply_large_live(&mut parts).await;
        let whole = parts.is_complete();
        let history = parts.history_seen();
        if let Err(stopped) = parts.finish().await {
            return stop(stopped);
        }
        match live {
            Ok(_) if !whole => Err(crate::sinks::SinkError::Definite(
                "the sink reported a large transaction durable before its last part".into(),
            )),
            // Versions are matched across the parts in the spill file: not a failure.
            Err(_) if history => Ok(None),
            other => other.map(|report| Some((report, history))),
        }
    };
    let durable = |report: &ApplyReport, started| {
        record(stats, reader, report, started);
        if let Some(seen) = reader.commit_times.seen(lsn) {
            stats.stages.durable(seen, pg_now_micros());
        }
        Some(lsn)
    };
    let mut wait = RETRY_INITIAL;
    match live {
        Ok(None) => tracing::info!(
            sink = kind,
            lsn,
            rows = spill.rows(),
            parts = spill.part_count(),
            "large transaction with history versions spilled to local disk; applying it from there"
        ),
        Ok(Some((report, history))) => {
            let (rows, parts) = (spill.rows(), spill.part_count());
            if history {
                // A sink that waits for the last part (the cold tier) reads it back from
                // the spill file.
                tracing::info!(
                    sink = kind,
                    lsn,
                    rows,
                    parts,
                    "large transaction applied from its spill file"
                );
            } else {
                tracing::info!(
                    sink = kind,
                    lsn,
                    rows,
                    parts,
                    "large transaction applied as it arrived"
                );
            }
            return durable(&report, started);
        }
        Err(err) => {
            tracing::info!(
                sink = kind,
                lsn,
                rows = spill.rows(),
                parts = spill.part_count(),
                bytes = spill.bytes(),
                "large transaction spilled to local disk; applying it whole"
            );
            retry_after(sink, stats, &err, &mut wait).await;
        }
    }
    loop {
        let started = std::time::Instant::now();
        match sink.apply_large(&mut spill).await {
            Ok(report) => return durable(&report, started),
            Err(err) => retry_after(sink, stats, &err, &mut wait).await,
        }
    }
}

/// Counts a failed attempt, waits (doubling the wait up to [`RETRY_MAX`]) and reconnects.
async fn retry_after<S: Sink>(
    sink: &mut S,
    stats: &SinkStats,
    err: &crate::sinks::SinkError,
    wait: &mut Duration,
) {
    stats.errors.fetch_add(1, Relaxed);
    tracing::warn!(sink = sink.kind(), error = %err, retry_in_ms = wait.as_millis() as u64, "apply failed; retrying");
    tokio::time::sleep(*wait).await;
    *wait = (*wait * 2).min(RETRY_MAX);
    if let Err(err) = sink.reconnect().await {
        tracing::warn!(sink = sink.kind(), error = %err, "reconnect failed");
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
                durable_group(stats, reader, &report, group, started);
                return;
            }
            Err(err) => retry_after(sink, stats, &err, &mut wait).await,
        }
    }
}

/// Records a group that became durable: its figures and its transactions' stage times.
fn durable_group(
    stats: &SinkStats,
    reader: &crate::cdc::stream::ReaderStats,
    report: &ApplyReport,
    group: &[ApplyBatch],
    started: std::time::Instant,
) {
    record(stats, reader, report, started);
    let now = pg_now_micros();
    for seen in group
        .iter()
        .filter_map(|b| reader.commit_times.seen(b.commit_lsn))
    {
        stats.stages.durable(seen, now);
    }
}

/// Records what an apply did in the sink's figures.
fn record(
    stats: &SinkStats,
    reader: &crate::cdc::stream::ReaderStats,
    report: &ApplyReport,
    started: std::time::Instant,
) {
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
}

#[cfg(test)]
mod tests;
