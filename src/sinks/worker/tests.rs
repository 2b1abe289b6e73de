//! Tests of the sink task: stage timing, upkeep, large transactions as they arrive and
//! lingering, each with a recording sink.

use std::sync::Mutex;

use super::*;
use crate::cdc::stream::ReaderStats;
use crate::change::fixtures;
use crate::sinks::{ApplyReport, SinkError};

/// Records the rows of every apply, each taking the given time.
struct Recorder(Arc<Mutex<Vec<usize>>>, Duration);

impl Sink for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        if !self.1.is_zero() {
            tokio::time::sleep(self.1).await;
        }
        let rows = batches.iter().map(ApplyBatch::rows).sum();
        if let Ok(mut applied) = self.0.lock() {
            applied.push(rows);
        }
        Ok(ApplyReport::default())
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn batch(lsn: Lsn, rows: usize) -> Delivery {
    Delivery::Batch(fixtures::inserts(lsn, 0..rows))
}

/// Each applied transaction the reader saw is timed by stage: taken by the task, then
/// durable after its apply; a transaction without a known commit is not.
#[tokio::test]
async fn applied_transactions_are_timed_by_stage() {
    use crate::sinks::latency::LatencyStage;
    let reader: Arc<ReaderStats> = Arc::default();
    let committed = pg_now_micros() - 1_000;
    reader.commit_times.record(1, committed);
    reader.commit_times.record(2, committed);
    let stats: Arc<SinkStats> = Arc::default();
    let (tx, rx) = mpsc::channel(16);
    let sink = Recorder(Arc::default(), Duration::from_millis(20));
    let pacing = SinkPacing::fifo(Arc::default(), 100, 0);
    let task = tokio::spawn(run_sink(sink, rx, stats.clone(), reader, pacing, |_| {}));
    for lsn in 1..=3 {
        tx.send(batch(lsn, 1)).await.unwrap();
    }
    drop(tx);
    task.await.unwrap();
    let samples = stats.stages.take();
    let of = |stage| -> Vec<f64> {
        samples
            .iter()
            .filter(|(s, _)| *s == stage)
            .map(|(_, secs)| *secs)
            .collect()
    };
    let to_reader = of(LatencyStage::SourceToReader);
    assert_eq!(to_reader.len(), 2, "{samples:?}");
    assert!(to_reader.iter().all(|&s| s >= 0.001), "{samples:?}");
    assert_eq!(of(LatencyStage::ReaderToSink).len(), 2, "{samples:?}");
    let durable = of(LatencyStage::ReaderToDurable);
    assert_eq!(durable.len(), 2, "{samples:?}");
    assert!(
        durable.iter().all(|&s| s >= 0.02),
        "after a 20-ms apply: {samples:?}"
    );
}

/// Logs applies and upkeep calls.
struct UpkeepLog(Arc<Mutex<Vec<String>>>);

impl Sink for UpkeepLog {
    fn kind(&self) -> &'static str {
        "upkeep-log"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let rows: usize = batches.iter().map(ApplyBatch::rows).sum();
        self.0.lock().unwrap().push(format!("apply {rows}"));
        Ok(ApplyReport::default())
    }

    async fn upkeep(&mut self, idle: bool) {
        let what = if idle { "idle upkeep" } else { "upkeep" };
        self.0.lock().unwrap().push(what.to_string());
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Upkeep runs after each applied group has been reported durable, and as idle
/// upkeep every `IDLE_UPKEEP` the task has nothing to apply, not before.
#[tokio::test(start_paused = true)]
async fn upkeep_follows_each_durable_group_and_an_idle_spell() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel(16);
    let pacing = SinkPacing::fifo(Arc::default(), 100, 0);
    let entries = log.clone();
    let task = tokio::spawn(run_sink(
        UpkeepLog(log.clone()),
        rx,
        Arc::default(),
        Arc::default(),
        pacing,
        move |lsn| entries.lock().unwrap().push(format!("durable {lsn}")),
    ));
    let taken = |log: &Arc<Mutex<Vec<String>>>| std::mem::take(&mut *log.lock().unwrap());
    tx.send(batch(1, 2)).await.unwrap();
    tokio::time::sleep(IDLE_UPKEEP / 2).await;
    assert_eq!(taken(&log), ["apply 2", "durable 1", "upkeep"]);
    tokio::time::sleep(IDLE_UPKEEP).await;
    assert_eq!(taken(&log), ["idle upkeep"], "idle since the apply");
    tokio::time::sleep(IDLE_UPKEEP).await;
    assert_eq!(taken(&log), ["idle upkeep"], "and again while idle");
    drop(tx);
    task.await.unwrap();
}

/// A sink that applies large transactions as they arrive, failing its first live
/// attempt after one part when told to; it logs what each call applied.
struct LargeRecorder {
    log: Arc<Mutex<Vec<String>>>,
    fail_live_once: bool,
}

impl LargeRecorder {
    fn note(&self, entry: String) {
        self.log.lock().unwrap().push(entry);
    }
}

impl Sink for LargeRecorder {
    fn kind(&self) -> &'static str {
        "large-recorder"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let rows: usize = batches.iter().map(ApplyBatch::rows).sum();
        self.note(format!("apply {rows}"));
        Ok(ApplyReport::default())
    }

    async fn apply_large(&mut self, txn: &mut SpilledTxn) -> Result<ApplyReport, SinkError> {
        self.note(format!("from spill {}", txn.read_all().unwrap().rows()));
        Ok(ApplyReport::default())
    }

    async fn apply_large_live<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        parts: &mut LiveParts<'_, F>,
    ) -> Result<ApplyReport, SinkError> {
        let mut rows = 0;
        while let Some(part) = parts.next_part().await? {
            rows += part.rows();
            if std::mem::take(&mut self.fail_live_once) {
                self.note(format!("live failed after {rows}"));
                return Err(SinkError::Transient("target went away".into()));
            }
        }
        self.note(format!("live {rows}"));
        Ok(ApplyReport::default())
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn part_of(lsn: Lsn, rows: usize) -> Delivery {
    Delivery::Part(fixtures::inserts(lsn, 0..rows))
}

/// Runs a sink task over `deliveries`; returns the sink's log and the durable reports.
async fn run_large(deliveries: Vec<Delivery>, fail_live_once: bool) -> (Vec<String>, Vec<Lsn>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let durable = Arc::new(Mutex::new(Vec::new()));
    let sink = LargeRecorder {
        log: log.clone(),
        fail_live_once,
    };
    let (tx, rx) = mpsc::channel(16);
    let pacing = SinkPacing::fifo(Arc::default(), 100, 0);
    let reports = durable.clone();
    let task = tokio::spawn(run_sink(
        sink,
        rx,
        Arc::default(),
        Arc::default(),
        pacing,
        move |lsn| reports.lock().unwrap().push(lsn),
    ));
    for d in deliveries {
        tx.send(d).await.unwrap();
    }
    drop(tx);
    task.await.unwrap();
    let log = log.lock().unwrap().clone();
    let durable = durable.lock().unwrap().clone();
    (log, durable)
}

/// A large transaction at LSN 5 (parts of 3 and 2 rows, last batch 1 row), then a
/// small one at LSN 6.
fn large_then_small() -> Vec<Delivery> {
    vec![part_of(5, 3), part_of(5, 2), batch(5, 1), batch(6, 1)]
}

/// A large transaction is applied as its parts arrive, in one call, then what
/// follows it.
#[tokio::test(start_paused = true)]
async fn a_large_transaction_is_applied_as_it_arrives() {
    let (log, durable) = run_large(large_then_small(), false).await;
    assert_eq!(log, ["live 6", "apply 1"]);
    assert!(durable.contains(&5), "{durable:?}");
}

/// A live attempt that fails takes the rest of the parts into the spill file and the
/// whole transaction is applied again from it.
#[tokio::test(start_paused = true)]
async fn a_failed_live_attempt_is_retried_from_the_spill_file() {
    let (log, durable) = run_large(large_then_small(), true).await;
    assert_eq!(log, ["live failed after 3", "from spill 6", "apply 1"]);
    assert!(durable.contains(&5), "{durable:?}");
}

/// The job stopping before the last part: nothing of the transaction is applied and
/// the task ends.
#[tokio::test(start_paused = true)]
async fn a_large_transaction_cut_short_is_not_applied() {
    let (log, durable) = run_large(vec![part_of(5, 3)], false).await;
    assert!(log.is_empty(), "{log:?}");
    assert!(!durable.contains(&5), "{durable:?}");
}

/// A running sink task that lingers as `linger` says, reading the source's activity
/// from `reader`, and whose applies take `apply_time` each.
struct Lingering {
    tx: mpsc::Sender<Delivery>,
    applied: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Lingering {
    fn start(linger: Linger, apply_time: Duration, reader: Arc<ReaderStats>) -> Lingering {
        Lingering::start_with_backlog(linger, apply_time, reader, Arc::default())
    }

    /// A lingering sink task whose job's backlog is `backlog`.
    fn start_with_backlog(
        linger: Linger,
        apply_time: Duration,
        reader: Arc<ReaderStats>,
        backlog: Arc<Backlog>,
    ) -> Lingering {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(16);
        let mut pacing = SinkPacing::fifo(backlog, 100, 0);
        pacing.linger = Some(linger);
        let sink = Recorder(applied.clone(), apply_time);
        let task = tokio::spawn(run_sink(sink, rx, Arc::default(), reader, pacing, |_| {}));
        Lingering { tx, applied, task }
    }

    /// Rows of each apply so far.
    fn seen(&self) -> Vec<usize> {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }

    async fn send(&self, lsn: Lsn, rows: usize) {
        self.tx.send(batch(lsn, rows)).await.unwrap();
    }

    /// Closes the channel and waits for the task to end.
    async fn finish(self) {
        drop(self.tx);
        self.task.await.unwrap();
    }
}

/// A linger of `rows` and `wait` that never ends early.
fn plain_linger(rows: usize, wait: Duration) -> Linger {
    Linger {
        rows,
        bytes: usize::MAX,
        wait,
        early_rows: usize::MAX,
        read_ahead: Load::default(),
    }
}

/// A linger of `rows` and 1 s that ends early with 5 rows pending and a quiet source.
fn early_linger(rows: usize) -> Linger {
    Linger {
        rows,
        bytes: usize::MAX,
        wait: Duration::from_secs(1),
        early_rows: 5,
        read_ahead: Load {
            rows: 1000,
            bytes: 1 << 20,
        },
    }
}

/// Sends 2 rows at `lsn` and checks they wait the whole linger: `before` is what the
/// sink applied until then.
async fn two_rows_wait_the_whole_linger(sink: &Lingering, lsn: Lsn, before: &[usize]) {
    let wait = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    sink.send(lsn, 2).await;
    tokio::time::sleep_until(start + wait - Duration::from_millis(10)).await;
    assert_eq!(sink.seen(), before);
    tokio::time::sleep_until(start + wait + Duration::from_millis(10)).await;
    assert_eq!(sink.seen(), [before, &[2]].concat());
}

/// Small transactions wait for company up to the linger's time, enough rows go at
/// once, and a closing channel flushes what is pending without waiting.
#[tokio::test(start_paused = true)]
async fn a_lingering_sink_gathers_small_transactions() {
    let wait = Duration::from_millis(500);
    let sink = Lingering::start(plain_linger(10, wait), Duration::ZERO, Arc::default());
    for lsn in 1..=3 {
        sink.send(lsn, 2).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.seen().is_empty(), "applied before the linger ended");
    tokio::time::sleep(wait).await;
    assert_eq!(sink.seen(), [6]);
    // Enough rows: no waiting.
    sink.send(4, 12).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(sink.seen(), [6, 12]);
    // The channel closes: what is pending goes at once.
    sink.send(5, 1).await;
    let applied = sink.applied.clone();
    sink.finish().await;
    assert_eq!(*applied.lock().unwrap(), [6, 12, 1]);
}

/// A transaction delivered twice to one task (a replay) is applied once, and both
/// copies' loads come off the job's backlog: a copy's left there would shrink the
/// read-ahead for good.
#[tokio::test]
async fn a_transaction_delivered_twice_leaves_nothing_on_the_backlog() {
    let backlog: Arc<Backlog> = Arc::default();
    let (tx, rx) = mpsc::channel(16);
    let applied = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..2 {
        // As the delivery operator does: each delivery's load is added as it is sent.
        let copy = fixtures::inserts(7, 0..3);
        backlog.add(Load::of(&copy));
        tx.send(Delivery::Batch(copy)).await.unwrap();
    }
    drop(tx);
    let pacing = SinkPacing::fifo(backlog.clone(), 100, 0);
    let sink = Recorder(applied.clone(), Duration::ZERO);
    run_sink(sink, rx, Arc::default(), Arc::default(), pacing, |_| {}).await;
    assert_eq!(*applied.lock().unwrap(), [3], "applied once");
    assert_eq!(backlog.load(), Load::default());
}

/// Wide rows fill the read-ahead's bytes before a group's rows: pending bytes past the
/// linger's end it as pending rows do. A backlog held by another sink of the job does
/// not.
#[tokio::test(start_paused = true)]
async fn a_lingering_sink_applies_once_enough_bytes_are_pending() {
    let backlog: Arc<Backlog> = Arc::default();
    let linger = Linger {
        bytes: 1 << 20,
        ..plain_linger(1000, Duration::from_secs(1))
    };
    let sink =
        Lingering::start_with_backlog(linger, Duration::ZERO, Arc::default(), backlog.clone());
    sink.send(1, 10).await;
    // Another sink of the job is behind: the read-ahead is full, not by this sink.
    backlog.add(Load {
        rows: 200_000,
        bytes: 1 << 30,
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sink.seen().is_empty(), "10 narrow rows linger");
    let mut wide = fixtures::inserts(2, 0..2);
    if let crate::change::TenantAction::Upsert { new, .. } = &mut wide.changes[0].action {
        new.push(crate::change::Cell::text(&"x".repeat(1 << 20)));
    }
    sink.tx.send(Delivery::Batch(wide)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(sink.seen(), [12], "applied long before the linger's 1 s");
    sink.finish().await;
}

/// A lingering sink stops waiting once the source is quiet and enough rows are
/// pending; while the source keeps sending, or with too few rows, it lingers on.
#[tokio::test(start_paused = true)]
async fn a_quiet_source_ends_the_linger_of_enough_rows() {
    let linger = early_linger(100);
    let reader: Arc<ReaderStats> = Arc::default();
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let source = {
        let (reader, busy) = (reader.clone(), busy.clone());
        tokio::spawn(async move {
            while busy.load(Relaxed) {
                reader.bytes_received.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let sink = Lingering::start(linger, Duration::ZERO, reader);
    let start = tokio::time::Instant::now();
    sink.send(1, 6).await;
    tokio::time::sleep_until(start + Duration::from_millis(400)).await;
    assert!(
        sink.seen().is_empty(),
        "applied early while the source was sending"
    );
    busy.store(false, Relaxed);
    source.await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(400) + QUIET * 3).await;
    assert_eq!(sink.seen(), [6], "still lingering with the source quiet");
    // Too few rows for an early write: the whole linger.
    two_rows_wait_the_whole_linger(&sink, 2, &[6]).await;
    sink.finish().await;
}

/// After a whole group (a catch-up), a quiet source ends the linger of the rest however
/// few rows it is; once a write was not a whole group, few rows linger again.
#[tokio::test(start_paused = true)]
async fn the_rest_of_a_catch_up_goes_once_the_source_is_quiet() {
    let sink = Lingering::start(early_linger(10), Duration::ZERO, Arc::default());
    let start = tokio::time::Instant::now();
    sink.send(1, 12).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    sink.send(2, 2).await;
    tokio::time::sleep_until(start + QUIET * 3).await;
    assert_eq!(sink.seen(), [12, 2], "the rest of the catch-up lingered");
    // Not after a whole group: two rows wait the whole linger.
    two_rows_wait_the_whole_linger(&sink, 3, &[12, 2]).await;
    sink.finish().await;
}

/// Rows that arrive while a group is written linger from the write's start: they
/// neither go alone right after it nor wait a whole linger after it.
#[tokio::test(start_paused = true)]
async fn rows_arriving_during_an_apply_linger_from_its_start() {
    let linger = plain_linger(10, Duration::from_millis(500));
    let sink = Lingering::start(linger, Duration::from_millis(200), Arc::default());
    let start = tokio::time::Instant::now();
    // Enough rows: written at once, done at 200 ms.
    sink.send(1, 12).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Arrives during the write.
    sink.send(2, 2).await;
    tokio::time::sleep_until(start + Duration::from_millis(300)).await;
    assert_eq!(
        sink.seen(),
        [12],
        "the late rows went alone right after the write"
    );
    // Their linger ends 500 ms after the write started, their write 200 ms later.
    tokio::time::sleep_until(start + Duration::from_millis(690)).await;
    assert_eq!(sink.seen(), [12]);
    tokio::time::sleep_until(start + Duration::from_millis(710)).await;
    assert_eq!(sink.seen(), [12, 2]);
    sink.finish().await;
}

/// A target as a pipelining sink sees it: groups sent while earlier ones are in flight
/// commit in the order sent unless one before them failed (the guard of
/// [`crate::sinks::pg_apply::PgApplySink`]); one transaction fails on its first attempt.
#[derive(Default)]
struct PipelinedTarget {
    /// Commit LSNs committed, in commit order.
    committed: Vec<Lsn>,
    /// A group failed and later sends have not been settled since.
    broken: bool,
    /// Groups sent and not settled.
    unsettled: usize,
    /// Most groups in flight at once.
    most_in_flight: usize,
    /// The transaction that fails on its first attempt (sent or applied).
    fail_once: Option<Lsn>,
    /// Every `apply` call (the sequential path), by its first LSN.
    applied_alone: Vec<Lsn>,
    /// The round trip the sink reports.
    round_trip: Option<Duration>,
    /// The round trip measured by every reconnect after the first connect (a target
    /// that moved while the sink was cut off).
    round_trip_on_reconnect: Option<Duration>,
    /// Calls of `reconnect`, the first connect included.
    connects: usize,
    /// How often upkeep wants nothing in flight (a round-trip sample), if ever.
    sample_every: Option<Duration>,
    /// When the last sample was taken (or the first upkeep check).
    sampled_at: Option<tokio::time::Instant>,
    /// The groups in flight at each sample taken.
    samples: Vec<usize>,
}

impl PipelinedTarget {
    /// Commits `lsns` unless the chain is broken or the failing one is among them.
    fn commit(&mut self, lsns: &[Lsn]) -> Result<ApplyReport, SinkError> {
        if self.broken {
            return Err(SinkError::Transient("a group before it failed".into()));
        }
        if let Some(bad) = self.fail_once.filter(|bad| lsns.contains(bad)) {
            self.fail_once = None;
            self.broken = true;
            return Err(SinkError::Definite(format!("{bad} refused")));
        }
        self.committed.extend_from_slice(lsns);
        Ok(ApplyReport::default())
    }
}

struct Pipelining(Arc<Mutex<PipelinedTarget>>);

impl Sink for Pipelining {
    fn kind(&self) -> &'static str {
        "pipelining"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let lsns: Vec<Lsn> = batches.iter().map(|b| b.commit_lsn).collect();
        let mut target = self.0.lock().unwrap();
        assert_eq!(target.unsettled, 0, "applied while groups were in flight");
        target.broken = false;
        target.applied_alone.push(lsns[0]);
        target.commit(&lsns)
    }

    async fn send(&mut self, batches: &[ApplyBatch]) -> Option<crate::sinks::InFlight> {
        let lsns: Vec<Lsn> = batches.iter().map(|b| b.commit_lsn).collect();
        {
            let mut target = self.0.lock().unwrap();
            target.unsettled += 1;
            target.most_in_flight = target.most_in_flight.max(target.unsettled);
        }
        let target = self.0.clone();
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            target.lock().unwrap().commit(&lsns)
        }))
    }

    fn settle(&mut self, _outcome: &Result<ApplyReport, SinkError>) {
        self.0.lock().unwrap().unsettled -= 1;
    }

    fn round_trip(&self) -> Option<Duration> {
        self.0.lock().unwrap().round_trip
    }

    fn upkeep_due(&self) -> bool {
        let mut target = self.0.lock().unwrap();
        let Some(every) = target.sample_every else {
            return false;
        };
        let at = *target
            .sampled_at
            .get_or_insert_with(tokio::time::Instant::now);
        at.elapsed() >= every
    }

    async fn upkeep(&mut self, _idle: bool) {
        if self.upkeep_due() {
            let mut target = self.0.lock().unwrap();
            let in_flight = target.unsettled;
            target.samples.push(in_flight);
            target.sampled_at = Some(tokio::time::Instant::now());
        }
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        let mut target = self.0.lock().unwrap();
        target.connects += 1;
        if target.connects > 1 {
            if let Some(rtt) = target.round_trip_on_reconnect {
                target.round_trip = Some(rtt);
            }
        }
        Ok(())
    }
}

/// Runs 12 one-row transactions through a pipelining sink (`depth` groups in flight, or
/// `auto` with the sink reporting `auto`'s round trip; one transaction per group) whose
/// transaction `fail_once` fails once; checks every durable report against what the
/// target holds, and returns the target.
async fn run_pipelined(
    depth: usize,
    fail_once: Option<Lsn>,
    auto: Option<Duration>,
) -> PipelinedTarget {
    run_pipelined_on(
        PipelinedTarget {
            fail_once,
            round_trip: auto,
            ..Default::default()
        },
        if auto.is_some() { None } else { Some(depth) },
    )
    .await
}

/// [`run_pipelined`] on a given target model, with `setting` groups in flight (`None`:
/// `auto`).
/// A sink task over `target` (its reader's stats unused).
fn spawn_pipelining(
    target: &Arc<Mutex<PipelinedTarget>>,
    rx: mpsc::Receiver<Delivery>,
    stats: &Arc<SinkStats>,
    pacing: SinkPacing,
    on_durable: impl Fn(Lsn) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run_sink(
        Pipelining(target.clone()),
        rx,
        stats.clone(),
        Arc::default(),
        pacing,
        on_durable,
    ))
}

async fn run_pipelined_on(target: PipelinedTarget, setting: Option<usize>) -> PipelinedTarget {
    let fail_once = target.fail_once;
    let target = Arc::new(Mutex::new(target));
    let stats: Arc<SinkStats> = Arc::default();
    let (tx, rx) = mpsc::channel(64);
    let mut pacing = SinkPacing::fifo(Arc::default(), 1, 0);
    pacing.pipeline = setting;
    let reported = Arc::new(Mutex::new(Vec::<Lsn>::new()));
    let on_durable = {
        let (target, reported) = (target.clone(), reported.clone());
        move |lsn: Lsn| {
            let target = target.lock().unwrap();
            assert!(
                (1..=lsn).all(|l| target.committed.contains(&l)),
                "{lsn} reported durable, the target holds {:?}",
                target.committed
            );
            reported.lock().unwrap().push(lsn);
        }
    };
    let task = spawn_pipelining(&target, rx, &stats, pacing, on_durable);
    for lsn in 1..=12 {
        tx.send(batch(lsn, 1)).await.unwrap();
        if lsn % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(tx);
    task.await.unwrap();
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.last(), Some(&12), "{reported:?}");
    assert!(reported.windows(2).all(|w| w[0] <= w[1]), "{reported:?}");
    assert_eq!(
        stats.errors.load(Relaxed),
        u64::from(fail_once.is_some()),
        "one failed attempt"
    );
    Arc::try_unwrap(target)
        .ok()
        .map(|m| m.into_inner().unwrap())
        .expect("the task is done with the target")
}

/// Groups go out while earlier ones are in flight, commit in order and are reported
/// durable only once committed.
#[tokio::test(start_paused = true)]
async fn groups_are_pipelined_up_to_the_depth() {
    let target = run_pipelined(3, None, None).await;
    assert_eq!(target.committed, (1..=12).collect::<Vec<_>>());
    assert_eq!(target.most_in_flight, 3);
    assert!(
        target.applied_alone.is_empty(),
        "{:?}",
        target.applied_alone
    );
    let one = run_pipelined(1, None, None).await;
    assert_eq!(one.committed, (1..=12).collect::<Vec<_>>());
    assert_eq!(one.most_in_flight, 0, "depth 1 applies each group alone");
}

/// A failed group and every group sent after it are applied again, in order, each on
/// its own; nothing is reported durable before it is committed.
#[tokio::test(start_paused = true)]
async fn a_failed_group_is_applied_again_with_those_sent_after_it() {
    let target = run_pipelined(3, Some(6), None).await;
    assert_eq!(target.committed, (1..=12).collect::<Vec<_>>());
    assert!(
        target.applied_alone.first() == Some(&6),
        "the failed group first: {:?}",
        target.applied_alone
    );
    let again = &target.applied_alone;
    assert!(again.windows(2).all(|w| w[0] < w[1]), "{again:?}");
}

/// `auto` keeps one group in flight over a short round trip and pipelines from
/// `AUTO_PIPELINE_ROUND_TRIP` on.
#[tokio::test(start_paused = true)]
async fn auto_pipelines_only_across_a_long_round_trip() {
    assert_eq!(auto_in_flight(None), 1);
    assert_eq!(auto_in_flight(Some(Duration::from_micros(300))), 1);
    assert_eq!(
        auto_in_flight(Some(AUTO_PIPELINE_ROUND_TRIP)),
        AUTO_PIPELINE_DEPTH
    );
    assert_eq!(
        auto_in_flight(Some(Duration::from_millis(50))),
        AUTO_PIPELINE_DEPTH
    );
    let near = run_pipelined(1, None, Some(Duration::from_micros(300))).await;
    assert_eq!(near.most_in_flight, 0, "each group applied alone");
    let far = run_pipelined(1, None, Some(Duration::from_millis(10))).await;
    assert!(far.most_in_flight > 1, "{}", far.most_in_flight);
    assert_eq!(far.committed, (1..=12).collect::<Vec<_>>());
}

/// `auto` decides again after a reconnect: a sink that measured a local round trip
/// applies groups one at a time, and once an error made it reconnect to a target 10 ms
/// away, it pipelines the rest; with a fixed setting of 1 the same run never does.
#[tokio::test(start_paused = true)]
async fn auto_decides_again_after_a_reconnect() {
    let moved = || PipelinedTarget {
        fail_once: Some(4),
        round_trip: Some(Duration::from_micros(300)),
        round_trip_on_reconnect: Some(Duration::from_millis(10)),
        ..Default::default()
    };
    let target = run_pipelined_on(moved(), None).await;
    assert_eq!(target.committed, (1..=12).collect::<Vec<_>>());
    assert!(target.connects >= 2, "{}", target.connects);
    assert!(
        target.applied_alone.starts_with(&[1, 2, 3, 4]),
        "applied alone before the reconnect: {:?}",
        target.applied_alone
    );
    assert!(
        target.most_in_flight > 1,
        "pipelined after it: {}",
        target.most_in_flight
    );
    let fixed = run_pipelined_on(moved(), Some(1)).await;
    assert_eq!(fixed.committed, (1..=12).collect::<Vec<_>>());
    assert_eq!(fixed.most_in_flight, 0, "a fixed setting stays");
}

/// The stats show the sink's round trip and the groups `auto` allows from the moment the
/// task connects, and follow the round trip while the task idles (its upkeep samples it).
#[tokio::test(start_paused = true)]
async fn the_stats_show_the_round_trip_and_auto_s_choice_while_idle() {
    let target = Arc::new(Mutex::new(PipelinedTarget {
        round_trip: Some(Duration::from_millis(10)),
        ..Default::default()
    }));
    let stats: Arc<SinkStats> = Arc::default();
    let (tx, rx) = mpsc::channel(4);
    let mut pacing = SinkPacing::fifo(Arc::default(), 1, 0);
    pacing.pipeline = None;
    let task = spawn_pipelining(&target, rx, &stats, pacing, |_| {});
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(stats.round_trip_nanos.load(Relaxed), 10_000_000);
    assert_eq!(
        stats.max_in_flight.load(Relaxed),
        AUTO_PIPELINE_DEPTH as u64
    );
    // The link got faster while nothing was sent.
    target.lock().unwrap().round_trip = Some(Duration::from_micros(200));
    tokio::time::sleep(IDLE_UPKEEP + Duration::from_secs(1)).await;
    assert_eq!(stats.round_trip_nanos.load(Relaxed), 200_000);
    assert_eq!(stats.max_in_flight.load(Relaxed), 1);
    drop(tx);
    task.await.unwrap();
}

/// A backlog that keeps the pipeline full still gets its round trip sampled every
/// interval, each time with nothing in flight: the task settles its groups for it.
#[tokio::test(start_paused = true)]
async fn a_pipeline_kept_full_is_settled_for_each_due_sample() {
    let target = Arc::new(Mutex::new(PipelinedTarget {
        sample_every: Some(Duration::from_millis(50)),
        ..Default::default()
    }));
    let stats: Arc<SinkStats> = Arc::default();
    let (tx, rx) = mpsc::channel(8);
    let mut pacing = SinkPacing::fifo(Arc::default(), 1, 0);
    pacing.pipeline = Some(4);
    let task = spawn_pipelining(&target, rx, &stats, pacing, |_| {});
    // 400 one-row transactions, each a group taking 5 ms: about 0.5 s with 4 in flight,
    // the channel never empty.
    for lsn in 1..=400 {
        tx.send(batch(lsn, 1)).await.unwrap();
    }
    drop(tx);
    task.await.unwrap();
    let target = target.lock().unwrap();
    assert_eq!(target.committed, (1..=400).collect::<Vec<_>>());
    assert!(
        target.most_in_flight > 1,
        "pipelined: {}",
        target.most_in_flight
    );
    assert!(
        target.samples.len() >= 6,
        "sampled while busy: {:?}",
        target.samples
    );
    assert!(
        target.samples.iter().all(|&n| n == 0),
        "each sample with nothing in flight: {:?}",
        target.samples
    );
}
