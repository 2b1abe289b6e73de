//! A PostgreSQL target across a slow link: how far behind our sink runs with 1, 2, 4 and 8
//! target transactions in flight (the postgres sink's `max_in_flight`), and with `auto`
//! (the default: chosen from the round trip the sink measures when it connects; the table
//! shows what it chose).
//!
//! A throwaway local cluster (`embedded::pg_cluster`) sits behind a TCP proxy in this
//! process that holds every byte for half of `HELIOS_BENCH_RTT_MS` (default 10 ms) each
//! way, as a target in another region would. The production sink task
//! (`sinks::worker::run_sink` with `PgApplySink`) is fed 10-row transactions at
//! `HELIOS_BENCH_REMOTE_RATE` rows/s (default 10,000) for `HELIOS_BENCH_REMOTE_SECS`
//! seconds (default 10) per setting, each setting into its own table. Lag = from handing
//! a transaction to the sink task to the report that it is durable on the target (what
//! the source may then confirm). Prints per setting the rate achieved, lag P50 / P95 / P99
//! / max, target transactions and rows per target transaction, and P99 against the setting
//! of 1 in the same run (below 1 is better).
//!
//! Then, per setting, a backlog of `HELIOS_BENCH_REMOTE_BACKLOG_ROWS` rows (default
//! 200,000) in 1,000-row transactions is handed over at once and timed until durable:
//! the catch-up rate across the link.
//!
//! The round trip itself is the floor: with one transaction in flight a transaction
//! arriving during an apply waits for it, up to a round trip more.
//! `HELIOS_BENCH_REMOTE_HISTORY=1`: the table is kept with history, so every transaction
//! also opens its rows' versions in the target's history table.
//! Run: `cargo bench --bench remote_target`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use helios_repl::cdc::stream::ReaderStats;
use helios_repl::change::{
    Cell, HistoryEvent, HistoryOp, Lsn, Row, Scope, TableInfo, TenantAction, TenantChange,
};
use helios_repl::control::job_spec::{TenantFilter, TenantKey};
use helios_repl::embedded::pg_cluster::PgCluster;
use helios_repl::operators::partition::TenantPlan;
use helios_repl::operators::version::{SysTime, Version, VersionDelta};
use helios_repl::sinks::pg_apply::{store, PgApplySink};
use helios_repl::sinks::worker::{auto_in_flight, run_sink, SinkPacing, SinkStats};
use helios_repl::sinks::{ApplyBatch, Delivery, Sink};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/env.rs"]
mod env;
#[path = "common/table_info.rs"]
mod table_info;

use cluster::{BenchCluster, Error};
use env::env_or;
use table_info::keyed_table;

type Result<T> = std::result::Result<T, Error>;

/// Transactions in flight compared; 0 stands for `auto` (chosen from the round trip the
/// sink measures when it connects).
const DEPTHS: [usize; 5] = [1, 2, 4, 8, 0];
/// Rows per source transaction (as in the lag bench).
const ROWS_PER_TXN: usize = 10;

/// `HELIOS_BENCH_RTT_MS` (default 10): the round trip the proxy adds, in milliseconds;
/// fractions allowed (`0.5`).
fn rtt_ms() -> Result<f64> {
    let Ok(v) = std::env::var("HELIOS_BENCH_RTT_MS") else {
        return Ok(10.0);
    };
    match v.parse::<f64>() {
        Ok(ms) if ms.is_finite() && (0.0..=10_000.0).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "HELIOS_BENCH_RTT_MS: `{v}` is not a number of milliseconds from 0 to 10000"
        )
        .into()),
    }
}

/// Copies `from` to `to`, each chunk held until `delay` after it was read. Plain threads
/// and sockets rather than the async runtime: its timers round a wait up to a whole
/// millisecond, which would hide a sub-millisecond round trip.
fn delayed_copy(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        while let Ok((due, bytes)) = rx.recv() {
            let wait = due.saturating_duration_since(std::time::Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let due = std::time::Instant::now() + delay;
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
}

/// A proxy to `127.0.0.1:upstream` adding `one_way` each way; returns its port.
fn delay_proxy(upstream: u16, one_way: Duration) -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            delayed_copy(client, server_write, one_way);
            delayed_copy(server, client_write, one_way);
        }
    });
    Ok(port)
}

/// The replicated table.
fn table_info(name: &str) -> TableInfo {
    keyed_table(
        "app",
        name,
        &[
            ("tenant_id", "integer"),
            ("id", "bigint"),
            ("amount", "numeric(12,2)"),
            ("note", "text"),
            ("placed_at", "timestamp with time zone"),
        ],
        2,
    )
}

/// Source transaction `n` (commit LSN `n`): `rows` inserts of tenant `n % 50`, each with
/// its history version opened when `history` (a table kept with history).
fn transaction(table: &Arc<TableInfo>, n: u64, rows: usize, history: bool) -> ApplyBatch {
    let tenant = (n % 50).to_string();
    let text = |s: String| Cell::Text(s.into());
    let changes: Vec<TenantChange> = (0..rows as u64)
        .map(|i| TenantChange {
            scope: Scope::Tenant(tenant.clone()),
            seq: i as u32,
            table: table.clone(),
            action: TenantAction::Upsert {
                old: None,
                new: vec![
                    text(tenant.clone()),
                    text((n * rows as u64 + i).to_string()),
                    text(format!("{}.{:02}", n % 1000, i)),
                    text(format!("order {n}/{i}")),
                    text("2026-12-05 12:00:00+00".into()),
                ],
                insert: true,
            },
        })
        .collect();
    let history = if history {
        changes.iter().filter_map(|c| opened(c, n)).collect()
    } else {
        Vec::new()
    };
    ApplyBatch {
        commit_lsn: n,
        changes,
        history,
    }
}

/// The history version an insert committed at `lsn` opens (valid from the epoch on).
fn opened(change: &TenantChange, lsn: Lsn) -> Option<HistoryEvent> {
    let TenantAction::Upsert { new, .. } = &change.action else {
        return None;
    };
    let key: Row = change
        .table
        .key_columns()
        .iter()
        .map(|&k| new[k].clone())
        .collect();
    Some(HistoryEvent {
        tenant: match &change.scope {
            Scope::Tenant(t) => t.clone(),
            Scope::Worker { .. } => String::new(),
        },
        seq: change.seq,
        table: change.table.clone(),
        op: HistoryOp::Insert,
        delta: VersionDelta::Open(Version {
            key,
            value: new.clone(),
            valid_from: 0,
            valid_to: None,
            system_from: SysTime { lsn, micros: 0 },
            system_to: None,
            tombstone: false,
        }),
    })
}

/// How transactions reach the sink task.
#[derive(Clone, Copy)]
enum Load {
    /// 10-row transactions at `rate` rows/s for `secs` seconds.
    Paced { rate: u64, secs: u64 },
    /// `rows` rows in 1,000-row transactions, handed over at once (a backlog to catch up).
    Backlog { rows: u64 },
}

/// Rows per transaction of a backlog.
const BACKLOG_TXN_ROWS: usize = 1000;

/// What one setting measured.
struct Measured {
    /// `max_in_flight` as the table shows it.
    setting: String,
    rows_per_sec: f64,
    lag_ms: Vec<f64>,
    groups: usize,
    rows: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run_setting(dsn: &str, depth: usize, load: Load, history: bool) -> Result<Measured> {
    let (kind, txns, txn_rows, every) = match load {
        Load::Paced { rate, secs } => (
            "paced",
            rate * secs / ROWS_PER_TXN as u64,
            ROWS_PER_TXN,
            Some(Duration::from_secs_f64(ROWS_PER_TXN as f64 / rate as f64)),
        ),
        Load::Backlog { rows } => (
            "backlog",
            rows.div_ceil(BACKLOG_TXN_ROWS as u64),
            BACKLOG_TXN_ROWS,
            None,
        ),
    };
    let suffix = if history { "_h" } else { "" };
    let table = Arc::new(table_info(&format!("orders_{kind}_{depth}{suffix}")));
    let plan = TenantPlan {
        include: TenantFilter::All,
        tenant_keys: HashMap::from([(
            table.qualified_name(),
            TenantKey::Column("tenant_id".to_string()),
        )]),
        peers: 1,
    };
    let mut sink = PgApplySink::new(
        &format!("remote_{kind}_{depth}{suffix}"),
        dsn,
        Arc::new(plan),
        0,
    );
    let stats: Arc<SinkStats> = Arc::default();
    let handed: Arc<Mutex<BTreeMap<Lsn, Instant>>> = Arc::default();
    let lags: Arc<Mutex<Vec<f64>>> = Arc::default();
    let on_durable = {
        let (handed, lags) = (handed.clone(), lags.clone());
        move |lsn: Lsn| {
            let now = Instant::now();
            let (Ok(mut handed), Ok(mut lags)) = (handed.lock(), lags.lock()) else {
                return;
            };
            let later = handed.split_off(&(lsn + 1));
            for (_, at) in std::mem::replace(&mut *handed, later) {
                lags.push((now - at).as_secs_f64() * 1e3);
            }
        }
    };
    let (tx, rx) = mpsc::channel(1024);
    let mut pacing = SinkPacing::fifo(Arc::default(), 5000, 0);
    let setting = if depth == 0 {
        sink.reconnect().await?;
        pacing.pipeline = None;
        let rtt = sink.round_trip();
        let seen = rtt.map_or("none".into(), |d| {
            format!("{:.2} ms", d.as_secs_f64() * 1e3)
        });
        format!("auto ({}; round trip {seen})", auto_in_flight(rtt))
    } else {
        pacing.pipeline = Some(depth);
        depth.to_string()
    };
    let task = tokio::spawn(run_sink(
        sink,
        rx,
        stats.clone(),
        Arc::new(ReaderStats::default()),
        pacing,
        on_durable,
    ));
    // The first transaction creates the table; the timing starts after it.
    handed
        .lock()
        .map_err(|_| "poisoned")?
        .insert(1, Instant::now());
    tx.send(Delivery::Batch(transaction(
        &table,
        1,
        ROWS_PER_TXN,
        history,
    )))
    .await?;
    while !handed.lock().map_err(|_| "poisoned")?.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lags.lock().map_err(|_| "poisoned")?.clear();
    stats.take_apply_seconds();
    let first_rows = stats.upserted.load(std::sync::atomic::Ordering::Relaxed);
    let mut tick = every.map(tokio::time::interval);
    if let Some(t) = &mut tick {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    }
    // A backlog's transactions are built before the clock starts.
    let mut built: Vec<ApplyBatch> = match load {
        Load::Backlog { .. } => (2..txns + 2)
            .rev()
            .map(|n| transaction(&table, n, txn_rows, history))
            .collect(),
        Load::Paced { .. } => Vec::new(),
    };
    let started = Instant::now();
    let mut groups = 0;
    for n in 2..txns + 2 {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        let txn = built
            .pop()
            .unwrap_or_else(|| transaction(&table, n, txn_rows, history));
        handed
            .lock()
            .map_err(|_| "poisoned")?
            .insert(n, Instant::now());
        tx.send(Delivery::Batch(txn)).await?;
        groups += stats.take_apply_seconds().len();
    }
    drop(tx);
    task.await?;
    let elapsed = started.elapsed().as_secs_f64();
    groups += stats.take_apply_seconds().len();
    let rows = stats.upserted.load(std::sync::atomic::Ordering::Relaxed) - first_rows;
    let mut lag_ms = std::mem::take(&mut *lags.lock().map_err(|_| "poisoned")?);
    if lag_ms.len() as u64 != txns || rows != txns * txn_rows as u64 {
        return Err(format!(
            "max_in_flight {setting}, {kind}: {} of {txns} transactions reported durable, {rows} rows written",
            lag_ms.len()
        )
        .into());
    }
    lag_ms.sort_by(f64::total_cmp);
    Ok(Measured {
        setting,
        rows_per_sec: rows as f64 / elapsed,
        lag_ms,
        groups,
        rows,
    })
}

async fn bench(cluster: &PgCluster) -> Result<()> {
    let rtt = rtt_ms()?;
    let rate = env_or("HELIOS_BENCH_REMOTE_RATE", 10_000)?.max(ROWS_PER_TXN as u64);
    let secs = env_or("HELIOS_BENCH_REMOTE_SECS", 10)?.max(1);
    let direct = cluster.dsn("bench");
    let client = helios_repl::sinks::pg_apply::sink::connect(&direct).await?;
    store::migrate(&client).await?;
    let port = delay_proxy(cluster.port(), Duration::from_secs_f64(rtt / 2e3))?;
    let dsn = direct.replace(&format!("port={}", cluster.port()), &format!("port={port}"));
    if dsn == direct {
        return Err(format!("cannot point `{direct}` at the proxy").into());
    }
    let backlog = env_or("HELIOS_BENCH_REMOTE_BACKLOG_ROWS", 200_000)?.max(1);
    let history = env_or("HELIOS_BENCH_REMOTE_HISTORY", 0)? != 0;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "remote_target: {cores} cores, round trip {rtt} ms added by a proxy; steady: {rate} \
         rows/s of {ROWS_PER_TXN}-row transactions for {secs} s per setting; catch-up: \
         {backlog} rows in {BACKLOG_TXN_ROWS}-row transactions handed over at once{}",
        if history {
            "; every row's history version opened too"
        } else {
            ""
        }
    );
    let mut steady = Vec::new();
    let mut backlogs = Vec::new();
    for depth in DEPTHS {
        let m = run_setting(&dsn, depth, Load::Paced { rate, secs }, history).await?;
        println!(
            "max_in_flight {}, steady: P99 {:.1} ms, {} target transactions",
            m.setting,
            percentile(&m.lag_ms, 0.99),
            m.groups
        );
        steady.push(m);
        let m = run_setting(&dsn, depth, Load::Backlog { rows: backlog }, history).await?;
        println!(
            "max_in_flight {}, catch-up: {:.0} rows/s, {} target transactions",
            m.setting, m.rows_per_sec, m.groups
        );
        backlogs.push(m);
    }
    let base = percentile(&steady[0].lag_ms, 0.99);
    println!(
        "\nSteady load:\n\n| max_in_flight | rows/s | lag P50 ms | P95 ms | P99 ms | max ms | target txns | rows per target txn | P99 vs 1 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &steady {
        let p99 = percentile(&m.lag_ms, 0.99);
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.2} |",
            m.setting,
            m.rows_per_sec,
            percentile(&m.lag_ms, 0.5),
            percentile(&m.lag_ms, 0.95),
            p99,
            m.lag_ms.last().copied().unwrap_or(f64::NAN),
            m.groups,
            m.rows as f64 / m.groups.max(1) as f64,
            p99 / base
        );
    }
    let base = backlogs[0].rows_per_sec;
    println!(
        "\nCatch-up:\n\n| max_in_flight | rows/s | target txns | rows per target txn | rows/s vs 1 |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for m in &backlogs {
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.2} |",
            m.setting,
            m.rows_per_sec,
            m.groups,
            m.rows as f64 / m.groups.max(1) as f64,
            m.rows_per_sec / base
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let bench_cluster = BenchCluster::start("bench")?;
    let result = bench_cluster.run(bench(&bench_cluster.cluster));
    result
}
