//! QoS benchmark: what the scheduler's order does to replication lag on a bandwidth-limited
//! sink, and how well the hotness predictors forecast the next window.
//!
//! Isolates the ordering decision and nothing else: the real [`Scheduler`], the real
//! [`SinkLimiter`] (a sink limited to a fixed rows/s), the real [`Predictor`] (candle model,
//! EWMA heuristic) fed per-bucket access counts each window, and the real [`HotnessMap`]
//! lookups, on a virtual clock, so a 20-minute trace runs in seconds and
//! every policy sees exactly the same transactions. No database: applying a group takes no
//! time here, so the figures are the queueing delay the order causes, not apply latency.
//!
//! Workload: the `ZipfDriftTrace` (40 tenants, 8 premium, 2 tables, 100k keys per table,
//! Zipf 1.1 keys whose hot set moves every 3 minutes, skewed tenant activity, 2000 writes/s,
//! one row per transaction), plus a bulk load by one standard tenant (`bulk`, uniform keys,
//! 2500 rows/s) from minute 5 to minute 10. The sink takes 2400 rows/s: enough for the trace
//! alone, far from enough during the bulk load (the backlog peaks near 630,000 rows). The
//! dataflow reads at most 1,000,000 rows ahead of the sink (`qos.max_buffered_rows`;
//! `HELIOS_QOS_READ_AHEAD` changes it); what it has not read waits in commit order, where
//! no scheduler can reorder it.
//!
//! Baseline: FIFO (commit order, today's sink without QoS) in the same process. Compared:
//! tiers with round robin (no prediction), tiers + EWMA heuristic, tiers + the model, tiers +
//! auto. The application's accesses are the trace's events (as it would report them through
//! `POST /v1/access` or NATS); the bulk load is writes nobody reads. The last row counts the
//! bulk writes as accesses too (what the write-stream signal alone sees): the bulk tenant's
//! buckets then look hot. Hot rows: rows whose key bucket is among the 5 % most accessed
//! buckets of the window they were written in (ground truth, not the prediction).
//!
//! Run: `cargo bench --bench qos` (`HELIOS_QOS_SECS` shortens the trace).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use helios_repl::change::{
    Cell, ColumnInfo, Identity, Scope, TableInfo, TenantAction, TenantChange,
};
use helios_repl::operators::access::hotness_map::{HotnessMap, HotnessSnapshot, HOT_FRACTION};
use helios_repl::operators::access::{
    evaluate, BucketKey, Predictor, PredictorConfig, PredictorKind, PredictorMode, TraceConfig,
    ZipfDriftTrace,
};
use helios_repl::sinks::qos::rate_limit::{SinkLimiter, SinkLimits};
use helios_repl::sinks::qos::scheduler::Scheduler;
use helios_repl::sinks::qos::{QosPolicy, Tier};
use helios_repl::sinks::ApplyBatch;

const WINDOW_SECS: u64 = 10;
const BUCKET_WIDTH: i64 = 1000;
const SINK_ROWS_PER_SEC: u64 = 2400;
const BULK_ROWS_PER_SEC: u64 = 2500;
const BULK_FROM_SECS: u64 = 300;
const BULK_TO_SECS: u64 = 600;
/// Default read-ahead (`HELIOS_QOS_READ_AHEAD` changes it): enough to hold the bulk load's
/// backlog, so the scheduler sees every pending row.
const READ_AHEAD_ROWS: usize = 1_000_000;
const GROUP_MAX_ROWS: usize = 1000;
const TICK_MICROS: i64 = 5_000;
const HOT_SHARE: f64 = 0.05;
/// The standard tenant whose bulk load saturates the sink.
const BULK_TENANT: &str = "bulk";

/// How a run orders the sink's work.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    Fifo,
    RoundRobin,
    Predicted(PredictorMode),
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::Fifo => "FIFO (commit order)",
            Order::RoundRobin => "tiers, round robin",
            Order::Predicted(PredictorMode::Heuristic) => "tiers + EWMA heuristic",
            Order::Predicted(PredictorMode::Model) => "tiers + model",
            Order::Predicted(PredictorMode::Auto) => "tiers + auto",
            Order::Predicted(PredictorMode::Off) => "tiers, predictor off",
        }
    }
}

/// One transaction of the simulated source.
struct Txn {
    at: i64,
    tenant: String,
    table: usize,
    key: i64,
}

/// Lags (ms) of one class of rows.
#[derive(Default)]
struct Lags(Vec<f64>);

impl Lags {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_by(f64::total_cmp);
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i]
    }
}

struct Outcome {
    premium: Lags,
    hot: Lags,
    standard: Lags,
    all: Lags,
    model_windows: u64,
    windows: u64,
    applied: usize,
    /// Wall time of `close_window` calls (ms): sum and worst.
    close_ms: (f64, f64),
}

fn table(i: usize) -> Arc<TableInfo> {
    let column = |name: &str, ty: &str| ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_modifier: -1,
        type_name: ty.into(),
        in_identity: true,
        missing_value: None,
        attnum: None,
    };
    Arc::new(TableInfo {
        oid: i as u32 + 1,
        schema: "bench".into(),
        name: format!("table-{i}"),
        columns: vec![column("id", "bigint"), column("tenant_id", "text")],
        primary_key: vec![0],
        identity: Identity::Default,
        type_ddl: Vec::new(),
    })
}

fn workload(trace: &ZipfDriftTrace, secs: u64) -> Vec<Txn> {
    let mut txns = Vec::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    for sec in 0..secs {
        for e in trace.events_in_second(sec) {
            let table = e
                .table
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            txns.push(Txn {
                at: e.t_ms as i64 * 1000,
                tenant: e.tenant,
                table,
                key: e.key,
            });
        }
        if (BULK_FROM_SECS..BULK_TO_SECS).contains(&sec) {
            for i in 0..BULK_ROWS_PER_SEC {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                txns.push(Txn {
                    at: (sec * 1_000_000 + i * 1_000_000 / BULK_ROWS_PER_SEC) as i64,
                    tenant: BULK_TENANT.into(),
                    table: 0,
                    key: (rng_state % 100_000) as i64,
                });
            }
        }
    }
    txns.sort_by_key(|t| t.at);
    txns
}

/// Per window, the hot buckets: the most written 5 % (ground truth).
fn hot_sets(txns: &[Txn], tables: &[Arc<TableInfo>]) -> Vec<HashSet<BucketKey>> {
    let mut windows: Vec<HashMap<BucketKey, usize>> = Vec::new();
    for t in txns.iter().filter(|t| t.tenant != BULK_TENANT) {
        let w = (t.at / 1_000_000) as usize / WINDOW_SECS as usize;
        if windows.len() <= w {
            windows.resize_with(w + 1, HashMap::new);
        }
        *windows[w].entry(bucket_key(t, tables)).or_default() += 1;
    }
    windows
        .into_iter()
        .map(|counts| {
            let mut v: Vec<(BucketKey, usize)> = counts.into_iter().collect();
            v.sort_by_key(|e| std::cmp::Reverse(e.1));
            let n = ((v.len() as f64) * HOT_SHARE).ceil() as usize;
            v.into_iter().take(n).map(|(k, _)| k).collect()
        })
        .collect()
}

fn bucket_key(t: &Txn, tables: &[Arc<TableInfo>]) -> BucketKey {
    BucketKey {
        tenant: t.tenant.as_str().into(),
        table: tables[t.table].qualified_name().into(),
        bucket: t.key.div_euclid(BUCKET_WIDTH),
    }
}

fn batch(lsn: u64, t: &Txn, tables: &[Arc<TableInfo>]) -> ApplyBatch {
    ApplyBatch {
        commit_lsn: lsn,
        changes: vec![TenantChange {
            scope: Scope::Tenant(t.tenant.clone()),
            seq: 0,
            table: tables[t.table].clone(),
            action: TenantAction::Upsert {
                old: None,
                new: vec![Cell::Text(t.key.to_string().into()), Cell::text(&t.tenant)],
                insert: true,
            },
        }],
        history: Vec::new(),
    }
}

fn run(
    read_ahead: usize,
    count_bulk: bool,
    order: Order,
    txns: &[Txn],
    trace: &ZipfDriftTrace,
    hot: &[HashSet<BucketKey>],
    tables: &[Arc<TableInfo>],
) -> Outcome {
    let tiers: HashMap<String, Tier> = trace
        .tenant_names()
        .iter()
        .filter(|t| trace.is_premium(t))
        .map(|t| (t.clone(), Tier::Premium))
        .collect();
    let policy = match order {
        Order::Fifo => QosPolicy::fifo(),
        _ => QosPolicy {
            tenant_tiers: tiers.clone(),
            use_hotness: matches!(order, Order::Predicted(_)),
            ..QosPolicy::default()
        },
    };
    let mode = match order {
        Order::Predicted(m) => m,
        _ => PredictorMode::Off,
    };
    let mut predictor = Predictor::new(PredictorConfig {
        window_secs: WINDOW_SECS,
        mode,
        ..PredictorConfig::default()
    });
    let map = HotnessMap::new(BUCKET_WIDTH as u64, Default::default());
    let limiter = SinkLimiter::new(
        SinkLimits {
            rows_per_sec: Some(SINK_ROWS_PER_SEC),
            ..SinkLimits::default()
        },
        0,
    );
    let mut scheduler = Scheduler::new(Arc::new(policy));
    let mut source: VecDeque<(u64, usize)> = VecDeque::new();
    let mut born: HashMap<u64, usize> = HashMap::new();
    let mut counts: HashMap<BucketKey, f64> = HashMap::new();
    let mut out = Outcome {
        premium: Lags::default(),
        hot: Lags::default(),
        standard: Lags::default(),
        all: Lags::default(),
        model_windows: 0,
        windows: 0,
        applied: 0,
        close_ms: (0.0, 0.0),
    };
    let end = txns.last().map_or(0, |t| t.at) + 600_000_000;
    let mut next = 0usize;
    let mut now = 0i64;
    let mut next_window = (WINDOW_SECS * 1_000_000) as i64;
    while now < end && (next < txns.len() || !source.is_empty() || !scheduler.is_empty()) {
        now += TICK_MICROS;
        while next < txns.len() && txns[next].at <= now {
            let t = &txns[next];
            if count_bulk || t.tenant != BULK_TENANT {
                *counts.entry(bucket_key(t, tables)).or_default() += 1.0;
            }
            source.push_back((next as u64 + 1, next));
            next += 1;
        }
        if now >= next_window {
            let counts = std::mem::take(&mut counts);
            let started = std::time::Instant::now();
            predictor.close_window(next_window / 1_000_000, &counts, &HashMap::new());
            let ms = started.elapsed().as_secs_f64() * 1e3;
            out.close_ms = (out.close_ms.0 + ms, out.close_ms.1.max(ms));
            out.windows += 1;
            let kind = predictor.in_use();
            if kind == PredictorKind::Model {
                out.model_windows += 1;
            }
            map.publish(if kind == PredictorKind::RoundRobin {
                HotnessSnapshot::default()
            } else {
                HotnessSnapshot::hot_set(
                    predictor
                        .predictions()
                        .map(|(k, v)| (&*k.tenant, &*k.table, k.bucket, v)),
                    HOT_FRACTION,
                )
            });
            next_window += (WINDOW_SECS * 1_000_000) as i64;
        }
        // The dataflow reads ahead of the sink up to the read-ahead limit.
        while scheduler.pending_rows() < read_ahead {
            let Some((lsn, i)) = source.pop_front() else {
                break;
            };
            let b = batch(lsn, &txns[i], tables);
            let h = map.hotness_of(&b);
            born.insert(lsn, i);
            scheduler.push(b, txns[i].at, h);
        }
        while limiter.sink_wait_micros(now) == 0 && !scheduler.is_empty() {
            let budget = limiter.sink_rows_budget(now).min(GROUP_MAX_ROWS);
            let group = scheduler.next_group(now, budget, &mut |_, _, _| true);
            if group.batches.is_empty() {
                break;
            }
            limiter.take(&group, now);
            for b in &group.batches {
                let Some(i) = born.remove(&b.commit_lsn) else {
                    continue;
                };
                let t = &txns[i];
                let lag = (now - t.at) as f64 / 1000.0;
                let w = (t.at / 1_000_000) as usize / WINDOW_SECS as usize;
                out.all.0.push(lag);
                out.applied += 1;
                if tiers.contains_key(&t.tenant) {
                    out.premium.0.push(lag);
                } else {
                    out.standard.0.push(lag);
                }
                if hot
                    .get(w)
                    .is_some_and(|h| h.contains(&bucket_key(t, tables)))
                {
                    out.hot.0.push(lag);
                }
            }
        }
    }
    out
}

fn main() {
    let secs: u64 = std::env::var("HELIOS_QOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200);
    let config = TraceConfig::default();
    let trace = ZipfDriftTrace::new(config.clone());
    let tables: Vec<Arc<TableInfo>> = (0..config.tables.max(1)).map(table).collect();
    let read_ahead: usize = std::env::var("HELIOS_QOS_READ_AHEAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(READ_AHEAD_ROWS);
    let txns = workload(&trace, secs);
    let hot = hot_sets(&txns, &tables);
    println!(
        "QoS benchmark: {} transactions over {secs} s ({} tenants, {} premium, bulk load {}–{} s at {BULK_ROWS_PER_SEC} rows/s), sink {SINK_ROWS_PER_SEC} rows/s, read-ahead {read_ahead} rows, windows {WINDOW_SECS} s\n",
        txns.len(),
        config.tenants,
        config.premium_tenants,
        BULK_FROM_SECS,
        BULK_TO_SECS
    );
    println!("| order | premium P50 / P99 (ms) | hot rows P50 / P99 (ms) | standard P50 / P99 (ms) | all P99 (ms) | hot P99 lower than FIFO by | model in use | window close mean / max (ms) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut fifo_hot_p99 = f64::NAN;
    for (order, count_bulk) in [
        (Order::Fifo, false),
        (Order::RoundRobin, false),
        (Order::Predicted(PredictorMode::Heuristic), false),
        (Order::Predicted(PredictorMode::Model), false),
        (Order::Predicted(PredictorMode::Auto), false),
        (Order::Predicted(PredictorMode::Auto), true),
    ] {
        let started = std::time::Instant::now();
        let mut o = run(read_ahead, count_bulk, order, &txns, &trace, &hot, &tables);
        let name = if count_bulk {
            format!("{}, bulk writes counted", order.name())
        } else {
            order.name().to_string()
        };
        assert_eq!(
            o.applied,
            txns.len(),
            "{}: every transaction is applied",
            order.name()
        );
        let hot_p99 = o.hot.pct(0.99);
        if order == Order::Fifo {
            fifo_hot_p99 = hot_p99;
        }
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} | {:.2} % | {}/{} windows | {:.1} / {:.1} |",
            name,
            o.premium.pct(0.5),
            o.premium.pct(0.99),
            o.hot.pct(0.5),
            hot_p99,
            o.standard.pct(0.5),
            o.standard.pct(0.99),
            o.all.pct(0.99),
            (1.0 - hot_p99 / fifo_hot_p99) * 100.0,
            o.model_windows,
            o.windows,
            o.close_ms.0 / o.windows.max(1) as f64,
            o.close_ms.1,
        );
        eprintln!("  ({name} took {:.1} s)", started.elapsed().as_secs_f64());
    }
    println!("\nPrediction quality on the same trace (without the bulk load), next-window counts per key bucket:\n");
    let started = std::time::Instant::now();
    let report = evaluate(&config, secs, WINDOW_SECS, BUCKET_WIDTH);
    println!("{report}");
    eprintln!(
        "  (evaluation took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
