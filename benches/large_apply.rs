//! One large transaction applied by the PostgreSQL sink, against a bare `COPY` of the
//! same rows: how close the sink's part-by-part apply comes to what the target itself
//! can load.
//!
//! A large transaction reaches a sink task in parts of 20,000 rows (`deliver::PART_ROWS`)
//! before its commit; the task spills each part and the sink writes it, as it arrives,
//! into one open target transaction (`sinks::large`, `PgApplySink::apply_large_live`).
//! This bench hands the production sink task (`sinks::worker::run_sink` with
//! `PgApplySink`) one transaction of `HELIOS_BENCH_LARGE_ROWS` inserts (default 1,000,000;
//! the e2e bench's eight columns: int, bigint, numeric, timestamptz, jsonb, text, bool,
//! int; 50 tenants), its parts built before the clock starts and handed over two ahead
//! (as the dataflow does while it feeds a large transaction), and times it until the task
//! reports it durable. The baseline, in the same process and cluster: the same rows
//! encoded as `COPY` text before the clock starts, then `BEGIN`, one `COPY … FROM STDIN`
//! and `COMMIT` on one connection, which is the target's own cost of loading them. Each
//! is run `HELIOS_BENCH_LARGE_ROUNDS` times (default 3), taking turns, into an empty
//! table; the medians are printed with their ratio.
//!
//! Everything runs on one thread (a current-thread runtime), as a single worker runs
//! inline with its sink tasks and their connections in `helios-repl run`.
//! Run: `cargo bench --bench large_apply`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use futures_util::SinkExt;
use helios_repl::cdc::stream::ReaderStats;
use helios_repl::change::{Cell, Scope, TableInfo, TenantAction, TenantChange};
use helios_repl::control::job_spec::TenantFilter;
use helios_repl::operators::partition::TenantPlan;
use helios_repl::sinks::pg_apply::{store, PgApplySink};
use helios_repl::sinks::worker::{run_sink, SinkPacing, SinkStats};
use helios_repl::sinks::{ApplyBatch, Delivery};
use tokio::sync::mpsc;

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/table_info.rs"]
mod table_info;

use cluster::{BenchCluster, Error};
use table_info::keyed_table;

type Result<T> = std::result::Result<T, Error>;

/// Rows per part, as the dataflow cuts a large transaction (`deliver::PART_ROWS`).
const PART_ROWS: usize = 20_000;
/// Tenants the rows spread over.
const TENANTS: i64 = 50;

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|e| format!("{name}: `{v}` is not a whole number: {e}").into()),
        Err(_) => Ok(default),
    }
}

fn table() -> TableInfo {
    keyed_table(
        "app",
        "orders",
        &[
            ("tenant_id", "integer"),
            ("id", "bigint"),
            ("amount", "numeric(12,2)"),
            ("at", "timestamp with time zone"),
            ("payload", "jsonb"),
            ("note", "text"),
            ("flag", "boolean"),
            ("qty", "integer"),
        ],
        2,
    )
}

/// Row `g` as the source sends it (text values).
fn row_text(g: i64) -> [String; 8] {
    [
        (g % TENANTS + 1).to_string(),
        g.to_string(),
        format!("{}.{:02}", g / 100, g % 100),
        format!(
            "2024-01-01 {:02}:{:02}:{:02}+00",
            (g / 3600) % 24,
            (g / 60) % 60,
            g % 60
        ),
        format!(r#"{{"k": {g}, "kind": "order", "tags": ["a", {}]}}"#, g % 7),
        format!("note {g} for a tenant row"),
        if g % 2 == 0 { "t" } else { "f" }.to_string(),
        (g % 1000).to_string(),
    ]
}

/// The transaction's parts (commit LSN `lsn`), rows `1..=rows`.
fn parts(table: &Arc<TableInfo>, lsn: u64, rows: i64) -> Vec<ApplyBatch> {
    let mut parts = Vec::new();
    let mut changes = Vec::with_capacity(PART_ROWS);
    for g in 1..=rows {
        let cells: Vec<Cell> = row_text(g)
            .into_iter()
            .map(|v| Cell::Text(v.into()))
            .collect();
        changes.push(TenantChange {
            scope: Scope::Tenant((g % TENANTS + 1).to_string()),
            seq: (g - 1) as u32,
            table: table.clone(),
            action: TenantAction::Upsert {
                old: None,
                new: cells,
                insert: true,
            },
        });
        if changes.len() == PART_ROWS || g == rows {
            parts.push(ApplyBatch {
                commit_lsn: lsn,
                changes: std::mem::replace(&mut changes, Vec::with_capacity(PART_ROWS)),
                history: Vec::new(),
            });
        }
    }
    parts
}

/// The same rows as `COPY` text.
fn copy_text(rows: i64) -> bytes::Bytes {
    let mut out = String::with_capacity(rows as usize * 160);
    for g in 1..=rows {
        let r = row_text(g);
        out.push_str(&r.join("\t"));
        out.push('\n');
    }
    out.into()
}

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS app.orders (tenant_id integer NOT NULL, id bigint NOT NULL,
    amount numeric(12,2), at timestamptz, payload jsonb, note text, flag boolean, qty integer,
    PRIMARY KEY (tenant_id, id))";

/// The sink task applying the transaction; seconds until it reported it durable.
async fn ours(dsn: &str, round: u64, table: &Arc<TableInfo>, rows: i64) -> Result<f64> {
    let plan = TenantPlan {
        include: TenantFilter::All,
        tenant_columns: HashMap::from([(table.qualified_name(), "tenant_id".to_string())]),
        peers: 1,
    };
    let sink = PgApplySink::new(&format!("large_{round}"), dsn, Arc::new(plan), 0);
    let mut queued = parts(table, 100 + round, rows);
    queued.reverse();
    let stats: Arc<SinkStats> = Arc::default();
    let durable = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let on_durable = {
        let durable = durable.clone();
        move |lsn: u64| durable.store(lsn, Relaxed)
    };
    // Two parts ahead of the sink, as the dataflow feeds a large transaction.
    let (tx, rx) = mpsc::channel(2);
    let started = Instant::now();
    let task = tokio::spawn(run_sink(
        sink,
        rx,
        stats.clone(),
        Arc::new(ReaderStats::default()),
        SinkPacing::fifo(Arc::default(), 5000, 0),
        on_durable,
    ));
    while let Some(part) = queued.pop() {
        let delivery = if queued.is_empty() {
            Delivery::Batch(part)
        } else {
            Delivery::Part(part)
        };
        tx.send(delivery).await?;
    }
    while durable.load(Relaxed) < 100 + round {
        tokio::task::yield_now().await;
        if task.is_finished() {
            return Err("the sink task stopped before the transaction was durable".into());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(tx);
    task.await?;
    let landed = stats.upserted.load(Relaxed);
    if landed != rows as u64 {
        return Err(format!("the sink wrote {landed} of {rows} rows").into());
    }
    Ok(secs)
}

/// The same rows in one `COPY` of pre-encoded text; seconds from `BEGIN` to `COMMIT`.
async fn bare_copy(client: &tokio_postgres::Client, data: bytes::Bytes) -> Result<f64> {
    let started = Instant::now();
    client.batch_execute("BEGIN").await?;
    let sink = client
        .copy_in("COPY app.orders (tenant_id, id, amount, at, payload, note, flag, qty) FROM STDIN")
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await?;
    client.batch_execute("COMMIT").await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn count(client: &tokio_postgres::Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM app.orders", &[])
        .await?
        .get(0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn bench(cluster: &helios_repl::embedded::pg_cluster::PgCluster) -> Result<()> {
    let rows = env_or("HELIOS_BENCH_LARGE_ROWS", 1_000_000)?.max(1) as i64;
    let rounds = env_or("HELIOS_BENCH_LARGE_ROUNDS", 3)?.max(1);
    let dsn = cluster.dsn("bench");
    let client = helios_repl::sinks::pg_apply::sink::connect(&dsn).await?;
    store::migrate(&client).await?;
    client
        .batch_execute("CREATE SCHEMA IF NOT EXISTS app")
        .await?;
    client.batch_execute(CREATE).await?;
    let table = Arc::new(table());
    let data = copy_text(rows);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "large_apply: {cores} cores; one transaction of {rows} inserts in parts of {PART_ROWS}, \
         {rounds} rounds"
    );
    let (mut ours_s, mut bare_s) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for which in 0..2 {
            client
                .batch_execute("TRUNCATE app.orders; CHECKPOINT")
                .await?;
            let secs = match (round + which) % 2 {
                0 => {
                    let s = ours(&dsn, round, &table, rows).await?;
                    ours_s.push(s);
                    println!("round {round}: sink {s:.2} s");
                    s
                }
                _ => {
                    let s = bare_copy(&client, data.clone()).await?;
                    bare_s.push(s);
                    println!("round {round}: bare COPY {s:.2} s");
                    s
                }
            };
            let n = count(&client).await?;
            if n != rows {
                return Err(format!("{n} of {rows} rows on the target after {secs:.2} s").into());
            }
        }
    }
    let (o, b) = (median(ours_s), median(bare_s));
    println!("\n| run | seconds (median) | rows/s | vs bare COPY |");
    println!("|---|---:|---:|---:|");
    println!(
        "| the sink, part by part | {o:.2} | {:.0} | {:.2} |",
        rows as f64 / o,
        b / o
    );
    println!(
        "| bare `COPY` of pre-encoded text | {b:.2} | {:.0} | 1.00 |",
        rows as f64 / b
    );
    Ok(())
}

fn main() -> Result<()> {
    let bench_cluster = BenchCluster::start("bench")?;
    let result = bench_cluster.run(bench(&bench_cluster.cluster));
    result
}
