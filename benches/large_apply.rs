//! One large transaction applied by the PostgreSQL sink, against the target loading the
//! same rows by itself: how close the sink's part-by-part apply comes to the target's own
//! cost.
//!
//! A large transaction reaches a sink task in parts of 20,000 rows (`deliver::PART_ROWS`)
//! before its commit; the task spills each part and the sink writes it, as it arrives,
//! into one open target transaction (`sinks::large`, `PgApplySink::apply_large_live`).
//! This bench hands the production sink task (`sinks::worker::run_sink` with
//! `PgApplySink`) one transaction of `HELIOS_BENCH_LARGE_ROWS` rows (default 1,000,000;
//! the e2e bench's eight columns: int, bigint, numeric, timestamptz, jsonb, text, bool,
//! int; 50 tenants), its parts built before the clock starts and handed over two ahead
//! (as the dataflow does while it feeds a large transaction), and times it until the task
//! reports it durable. Two transactions: inserts into an empty table (a bulk load: the
//! sink `COPY`s them), and updates of every row of a table holding them (the sink's
//! upserts). The baseline, in the same process and cluster, is the same rows encoded as
//! `COPY` text before the clock starts and loaded on one connection in one transaction:
//! straight into the table, or for the updates into a temporary table and then one
//! `UPDATE … FROM` it. Each is run `HELIOS_BENCH_LARGE_ROUNDS` times (default 3), taking
//! turns; the medians are printed with their ratio (1.00: as fast as the target alone).
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
#[path = "common/env.rs"]
mod env;
#[path = "common/table_info.rs"]
mod table_info;

use cluster::{BenchCluster, Error};
use env::env_or;
use table_info::{keyed_table, BENCH_COLUMNS};

type Result<T> = std::result::Result<T, Error>;

/// Rows per part, as the dataflow cuts a large transaction (`deliver::PART_ROWS`).
const PART_ROWS: usize = 20_000;
/// Tenants the rows spread over.
const TENANTS: i64 = 50;

fn table() -> TableInfo {
    keyed_table("app", "orders", &BENCH_COLUMNS, 2)
}

/// Row `g` as the source sends it (text values); `marker` ends its note.
fn row_text(g: i64, marker: &str) -> [String; 8] {
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
        format!("note {g} for a tenant row{marker}"),
        if g % 2 == 0 { "t" } else { "f" }.to_string(),
        (g % 1000).to_string(),
    ]
}

/// The transaction's parts (commit LSN `lsn`): rows `1..=rows` inserted, or updated with
/// a marked note.
fn parts(table: &Arc<TableInfo>, lsn: u64, rows: i64, case: Case) -> Vec<ApplyBatch> {
    let mut parts = Vec::new();
    let mut changes = Vec::with_capacity(PART_ROWS);
    for g in 1..=rows {
        let cells: Vec<Cell> = row_text(g, case.marker())
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
                insert: case == Case::Insert,
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

/// What the transaction does to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Inserts every row into an empty table (a bulk load).
    Insert,
    /// Updates every row of a table that holds them (a backfilled column, say).
    Update,
}

impl Case {
    fn marker(self) -> &'static str {
        match self {
            Case::Insert => "",
            Case::Update => " (updated)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::Insert => "inserts into an empty table",
            Case::Update => "updates of every row",
        }
    }
}

/// The same rows as `COPY` text.
fn copy_text(rows: i64, case: Case) -> bytes::Bytes {
    let mut out = String::with_capacity(rows as usize * 160);
    for g in 1..=rows {
        let r = row_text(g, case.marker());
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
async fn ours(dsn: &str, run: u64, table: &Arc<TableInfo>, rows: i64, case: Case) -> Result<f64> {
    let plan = TenantPlan {
        include: TenantFilter::All,
        tenant_keys: HashMap::from([(
            table.qualified_name(),
            helios_repl::control::job_spec::TenantKey::Column("tenant_id".to_string()),
        )]),
        peers: 1,
    };
    let sink = PgApplySink::new(&format!("large_{run}"), dsn, Arc::new(plan), 0);
    let mut queued = parts(table, 100 + run, rows, case);
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
    while durable.load(Relaxed) < 100 + run {
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

/// The same rows in one `COPY` of pre-encoded text (for updates: into a temporary table,
/// then one `UPDATE … FROM` it); seconds from `BEGIN` to `COMMIT`.
async fn bare(client: &tokio_postgres::Client, data: bytes::Bytes, case: Case) -> Result<f64> {
    let started = Instant::now();
    client.batch_execute("BEGIN").await?;
    let into = match case {
        Case::Insert => "app.orders",
        Case::Update => {
            client
                .batch_execute("CREATE TEMP TABLE staged (LIKE app.orders) ON COMMIT DROP")
                .await?;
            "staged"
        }
    };
    let sink = client
        .copy_in(&format!(
            "COPY {into} (tenant_id, id, amount, at, payload, note, flag, qty) FROM STDIN"
        ))
        .await?;
    futures_util::pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await?;
    if case == Case::Update {
        client
            .batch_execute(
                "UPDATE app.orders t SET amount = s.amount, at = s.at, payload = s.payload,
                 note = s.note, flag = s.flag, qty = s.qty
                 FROM staged s WHERE t.tenant_id = s.tenant_id AND t.id = s.id",
            )
            .await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Rows of the table as `case` leaves them.
async fn count(client: &tokio_postgres::Client, case: Case) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM app.orders WHERE note LIKE '%' || $1",
            &[&case.marker()],
        )
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
    let loaded = copy_text(rows, Case::Insert);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "large_apply: {cores} cores; one transaction of {rows} rows in parts of {PART_ROWS}, \
         {rounds} rounds"
    );
    let mut table_out = String::from(
        "| transaction | the sink, s (median) | rows/s | bare, s (median) | rows/s | sink vs bare |\n|---|---:|---:|---:|---:|---:|\n",
    );
    let mut run = 0;
    for case in [Case::Insert, Case::Update] {
        let data = copy_text(rows, case);
        let (mut ours_s, mut bare_s) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for which in 0..2 {
                client.batch_execute("TRUNCATE app.orders").await?;
                if case == Case::Update {
                    bare(&client, loaded.clone(), Case::Insert).await?;
                }
                client.batch_execute("VACUUM ANALYZE app.orders").await?;
                client.batch_execute("CHECKPOINT").await?;
                run += 1;
                let secs = if (round + which) % 2 == 0 {
                    let s = ours(&dsn, run, &table, rows, case).await?;
                    ours_s.push(s);
                    println!("{}, round {round}: the sink {s:.2} s", case.label());
                    s
                } else {
                    let s = bare(&client, data.clone(), case).await?;
                    bare_s.push(s);
                    println!("{}, round {round}: bare {s:.2} s", case.label());
                    s
                };
                let n = count(&client, case).await?;
                if n != rows {
                    return Err(format!(
                        "{}: {n} of {rows} rows on the target after {secs:.2} s",
                        case.label()
                    )
                    .into());
                }
            }
        }
        let (o, b) = (median(ours_s), median(bare_s));
        table_out.push_str(&format!(
            "| {rows} {} | {o:.2} | {:.0} | {b:.2} | {:.0} | {:.2} |\n",
            case.label(),
            rows as f64 / o,
            rows as f64 / b,
            b / o
        ));
    }
    println!("\n{table_out}");
    Ok(())
}

fn main() -> Result<()> {
    let bench_cluster = BenchCluster::start("bench")?;
    let result = bench_cluster.run(bench(&bench_cluster.cluster));
    result
}
