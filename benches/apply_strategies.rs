//! Apply strategies of the PostgreSQL sink: how fast one batch of replicated rows goes into
//! a target table, by strategy and batch size.
//!
//! Isolates the row-apply statement only: one target transaction per batch (`BEGIN`, the
//! strategy's statements, `COMMIT`), half the rows new keys and half updates of existing
//! keys, so both paths of `ON CONFLICT` run. The sink's savepoint per table and its
//! checkpoint write are left out (they cost the same whatever the strategy). Strategies:
//!
//! - (a) unnest upsert: exactly the production statement
//!   (`sinks::pg_apply::statements::upsert`: `INSERT … SELECT … FROM unnest($n::text[]) …
//!   ON CONFLICT … DO UPDATE`), prepared once per connection. The reference the others are
//!   compared against (the `vs (a)` column is throughput divided by (a)'s at the same batch
//!   size; above 1 is faster than production).
//! - (b) `COPY` (text format) into a temp staging table (`ON COMMIT DELETE ROWS`), then
//!   `INSERT INTO t SELECT … FROM staging ON CONFLICT … DO UPDATE`.
//! - (c) baseline: a prepared single-row `INSERT … VALUES (…) ON CONFLICT … DO UPDATE`
//!   executed once per row (one round trip each) in the same transaction.
//!
//! Each strategy has its own connection; rows are generated before timing, while building
//! statement parameters or COPY text is timed (production does it per batch). Before every
//! timed run the table is reset to the same preloaded state and vacuumed; after it the
//! table's row count and an md5 over all rows must equal a reference built independently,
//! so every strategy is shown to leave exactly the same data.
//!
//! Runs against a throwaway local cluster (`embedded::pg_cluster`, fsync off) over loopback
//! TCP; each strategy is timed 3 times, interleaved, and the median is printed. Small
//! batches are dominated by round trips (BEGIN, statements, COMMIT), whose latency depends
//! on the machine (about 100 us on an idle 2-vCPU VM, less when its CPUs are busy), so
//! compare figures within one run. Most of the time is PostgreSQL's, but not all: the dev
//! profile compiles this bench and `helios-repl` at opt-level 0 (only dependencies get 2),
//! which makes building the COPY text about 7x slower (the `build` column: ~0.3 s instead
//! of ~0.04 s per 100k rows), enough to turn (b)'s parity with (a) at 1,000 rows and its
//! small lead at 10,000 into losses.
//! `cargo bench --profile dev --bench apply_strategies` runs it; for figures that hold for
//! a release build, add `--config 'profile.dev.package.helios-repl.opt-level=2'` (only this
//! package is rebuilt, into separate artifacts, in well under a minute).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use helios_repl::change::{Cell, Row, TableInfo};
use helios_repl::embedded::pg_cluster::PgCluster;
use helios_repl::sinks::pg_apply::statements::{self, Param, Statement};
use helios_repl::sql_text::{quote_ident, quote_qualified};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/table_info.rs"]
mod table_info;

use cluster::{BenchCluster, Error};
use table_info::keyed_table;

type Result<T> = std::result::Result<T, Error>;

/// Batch sizes measured.
const BATCH_SIZES: [usize; 3] = [100, 1_000, 10_000];
/// Rows applied per (strategy, batch size) for the set-based strategies.
const SET_ROWS: usize = 100_000;
/// Rows applied per batch size for the row-at-a-time baseline (it is much slower).
const ROW_AT_A_TIME_ROWS: usize = 20_000;
/// Rows per batch and batches of the untimed warm-up of each strategy.
const WARMUP_BATCH: usize = 1_000;
const WARMUP_BATCHES: usize = 3;
/// Timed runs per (strategy, batch size); the median is reported.
const ROUNDS: usize = 3;

const SCHEMA: &str = "public";
const TABLE: &str = "orders";
const REFERENCE: &str = "orders_expected";
const TENANTS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Strategy {
    UnnestUpsert,
    CopyMerge,
    RowAtATime,
}

impl Strategy {
    const ALL: [Strategy; 3] = [
        Strategy::UnnestUpsert,
        Strategy::CopyMerge,
        Strategy::RowAtATime,
    ];

    fn label(self) -> &'static str {
        match self {
            Strategy::UnnestUpsert => "(a) unnest upsert",
            Strategy::CopyMerge => "(b) COPY staging + merge",
            Strategy::RowAtATime => "(c) row-at-a-time upsert",
        }
    }

    fn total_rows(self) -> usize {
        match self {
            Strategy::RowAtATime => ROW_AT_A_TIME_ROWS,
            _ => SET_ROWS,
        }
    }
}

/// The replicated table as the source would describe it (`format_type` names).
fn table_info(name: &str) -> TableInfo {
    keyed_table(
        SCHEMA,
        name,
        &[
            ("tenant_id", "integer"),
            ("id", "bigint"),
            ("account_id", "bigint"),
            ("total", "numeric(12,2)"),
            ("placed_at", "timestamp with time zone"),
            ("payload", "jsonb"),
            ("note", "text"),
            ("flag", "boolean"),
        ],
        2,
    )
}

fn create_table_sql(name: &str) -> String {
    format!(
        "CREATE TABLE {} (tenant_id int, id bigint, account_id bigint, total numeric(12,2), \
         placed_at timestamptz, payload jsonb, note text, flag bool, PRIMARY KEY (tenant_id, id))",
        quote_qualified(SCHEMA, name)
    )
}

/// Row `key` in `version` 0 (preloaded) or 1 (the applied change). Values include NULLs,
/// COPY's special characters, a literal `\N` and non-ASCII text, so every strategy's
/// encoding is exercised.
fn make_row(key: usize, version: usize) -> Row {
    let t = |s: String| Cell::Text(s.into());
    let cents = (key * 7_919 + version * 104_729) % 10_000_000;
    let second = (key * 13 + version * 3_600) % (86_400 * 28);
    let placed_at = format!(
        "2024-02-{:02} {:02}:{:02}:{:02}.{:06}+00",
        1 + second / 86_400,
        second / 3_600 % 24,
        second / 60 % 60,
        second % 60,
        (key * 37) % 1_000_000
    );
    let payload = format!(
        r#"{{"sku": "SKU-{key:07}", "qty": {}, "v": {version}, "tags": ["red", "b\\slash"], "memo": "line one\nline \"two\"\ttabbed", "ship": {{"city": "Zürich", "zip": "{:05}"}}}}"#,
        key % 9 + 1,
        key % 100_000
    );
    let note = match (key + version) % 10 {
        0 | 5 => Cell::Null,
        1 => t(format!(
            "tab\there, newline\nthere, cr\r, backslash \\ v{version}"
        )),
        2 => t(r"\N".to_string()),
        3 => t(String::new()),
        _ => t(format!("order {key} revision {version}: ünïcödé ✓")),
    };
    let flag = match (key + version) % 11 {
        0 => Cell::Null,
        n if n % 2 == 0 => t("true".into()),
        _ => t("false".into()),
    };
    vec![
        t((key % TENANTS + 1).to_string()),
        t(key.to_string()),
        t((1_000_000 + key * 31 % 50_000).to_string()),
        t(format!("{}.{:02}", cents / 100, cents % 100)),
        t(placed_at),
        t(payload),
        note,
        flag,
    ]
}

/// The batches of one run over `total` rows (keys `0..total`): keys `0..total/2` are
/// preloaded; batch `i` updates the next `size/2` preloaded keys and inserts as many new
/// keys from `total/2` on. The final state is version 1 of keys `0..total` whatever `size`.
fn make_batches(total: usize, size: usize) -> Vec<Vec<Row>> {
    let half = size / 2;
    let preloaded = total / 2;
    (0..total / size)
        .map(|i| {
            let mut rows = Vec::with_capacity(size);
            for j in 0..half {
                rows.push(make_row(i * half + j, 1));
                rows.push(make_row(preloaded + i * half + j, 1));
            }
            rows
        })
        .collect()
}

fn params_of<'a>(stmt: &'a Statement<'_>) -> Vec<&'a (dyn ToSql + Sync)> {
    stmt.params.iter().map(Param::as_sql).collect()
}

/// `"col" = EXCLUDED."col", …` for the non-key columns.
fn update_set(table: &TableInfo) -> String {
    let key = table.key_columns();
    table
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !key.contains(i))
        .map(|(_, c)| format!("{0} = EXCLUDED.{0}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn column_list(table: &TableInfo) -> String {
    table
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_list(table: &TableInfo) -> String {
    table
        .key_columns()
        .iter()
        .map(|&i| quote_ident(&table.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a run's time went, summed over its batches.
#[derive(Default)]
struct Phases {
    /// Client side: building the statement's parameters (a) or the COPY text (b).
    build: Duration,
    /// Sending the rows: the upsert (a), `COPY` (b), every single-row upsert (c).
    send: Duration,
    /// The staging table's merge (b).
    merge: Duration,
    /// `BEGIN` and `COMMIT`.
    commit: Duration,
}

/// One connection set up for one strategy: prepared statements, staging table.
struct Applier {
    strategy: Strategy,
    client: Client,
    table: TableInfo,
    prepared: Option<tokio_postgres::Statement>,
    phases: Phases,
}

impl Applier {
    async fn new(strategy: Strategy, dsn: &str, table: &TableInfo) -> Result<Applier> {
        let client = connect(dsn).await?;
        let name = quote_qualified(&table.schema, &table.name);
        let prepared = match strategy {
            Strategy::UnnestUpsert => {
                // The statement text does not depend on the rows: prepare it once.
                let text = statements::upsert::<Row>(table, &[]).text;
                Some(client.prepare(&text).await?)
            }
            Strategy::CopyMerge => {
                client
                    .batch_execute(&format!(
                        "CREATE TEMP TABLE staging (LIKE {name}) ON COMMIT DELETE ROWS"
                    ))
                    .await?;
                let cols = column_list(table);
                let text = format!(
                    "INSERT INTO {name} ({cols}) SELECT {cols} FROM pg_temp.staging \
                     ON CONFLICT ({}) DO UPDATE SET {}",
                    key_list(table),
                    update_set(table)
                );
                Some(client.prepare(&text).await?)
            }
            Strategy::RowAtATime => {
                let values: Vec<String> = table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("${}::text::{}", i + 1, c.type_name))
                    .collect();
                let text = format!(
                    "INSERT INTO {name} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
                    column_list(table),
                    values.join(", "),
                    key_list(table),
                    update_set(table)
                );
                Some(client.prepare(&text).await?)
            }
        };
        Ok(Applier {
            strategy,
            client,
            table: table.clone(),
            prepared,
            phases: Phases::default(),
        })
    }

    /// Applies one batch in its own transaction; returns the rows the server reports.
    async fn apply(&mut self, rows: &[Row]) -> Result<u64> {
        let prepared = self.prepared.clone().ok_or("not prepared")?;
        let start = Instant::now();
        let tx = self.client.transaction().await?;
        let begun = Instant::now();
        self.phases.commit += begun - start;
        let n = match self.strategy {
            Strategy::UnnestUpsert => {
                let stmt = statements::upsert(&self.table, rows);
                let params = params_of(&stmt);
                let built = Instant::now();
                self.phases.build += built - begun;
                let n = tx.execute(&prepared, &params).await?;
                self.phases.send += built.elapsed();
                n
            }
            Strategy::CopyMerge => {
                return copy_merge(tx, &prepared, &self.table, rows, &mut self.phases).await;
            }
            Strategy::RowAtATime => {
                let mut n = 0;
                for row in rows {
                    let values: Vec<Option<&str>> = row.iter().map(Cell::as_text).collect();
                    let params: Vec<&(dyn ToSql + Sync)> =
                        values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    n += tx.execute(&prepared, &params).await?;
                }
                self.phases.send += begun.elapsed();
                n
            }
        };
        let done = Instant::now();
        tx.commit().await?;
        self.phases.commit += done.elapsed();
        Ok(n)
    }
}

async fn copy_merge(
    tx: Transaction<'_>,
    merge: &tokio_postgres::Statement,
    table: &TableInfo,
    rows: &[Row],
    phases: &mut Phases,
) -> Result<u64> {
    let start = Instant::now();
    // The sink's own COPY encoding; the staging table has the table's columns in order.
    let text = statements::copy_rows(table, rows).data;
    let encoded = Instant::now();
    let sink = tx
        .copy_in::<_, bytes::Bytes>("COPY pg_temp.staging FROM STDIN")
        .await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(text).await?;
    let copied = sink.as_mut().finish().await?;
    let copy_done = Instant::now();
    let n = tx.execute(merge, &[]).await?;
    let merged = Instant::now();
    tx.commit().await?;
    let committed = Instant::now();
    phases.build += encoded - start;
    phases.send += copy_done - encoded;
    phases.merge += merged - copy_done;
    phases.commit += committed - merged;
    if copied != rows.len() as u64 {
        return Err(format!("COPY loaded {copied} rows of {}", rows.len()).into());
    }
    Ok(n)
}

async fn connect(dsn: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection closed: {e}");
        }
    });
    Ok(client)
}

/// Empties `table` and loads version 0 of keys `keys` with the production append statement
/// (not one of the strategies measured).
async fn load(
    client: &Client,
    table: &TableInfo,
    keys: std::ops::Range<usize>,
    version: usize,
) -> Result<()> {
    let name = quote_qualified(&table.schema, &table.name);
    client.batch_execute(&format!("TRUNCATE {name}")).await?;
    let keys: Vec<usize> = keys.collect();
    for chunk in keys.chunks(10_000) {
        let rows: Vec<Row> = chunk.iter().map(|&k| make_row(k, version)).collect();
        let stmt = statements::append(table, &rows);
        client.execute(&stmt.text, &params_of(&stmt)).await?;
    }
    // Separate simple queries: VACUUM refuses to run in a multi-statement batch.
    client
        .batch_execute(&format!("VACUUM ANALYZE {name}"))
        .await?;
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// Row count and md5 over every row's text form, in key order.
async fn checksum(client: &Client, name: &str) -> Result<(i64, String)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY tenant_id, id)), '') \
                 FROM {} AS t",
                quote_qualified(SCHEMA, name)
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

struct Measurement {
    strategy: Strategy,
    batch: usize,
    rows: usize,
    seconds: f64,
    checksum: String,
    phases: Phases,
}

impl Measurement {
    fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.seconds
    }
}

/// Resets the table, applies every batch with `applier` and verifies the result.
async fn run(
    admin: &Client,
    applier: &mut Applier,
    total: usize,
    batch: usize,
    reference: &(i64, String),
) -> Result<Measurement> {
    let table = table_info(TABLE);
    let batches = make_batches(total, batch);
    load(admin, &table, 0..total / 2, 0).await?;
    applier.phases = Phases::default();
    let start = Instant::now();
    let mut reported = 0;
    for rows in &batches {
        reported += applier.apply(rows).await?;
    }
    let seconds = start.elapsed().as_secs_f64();
    if reported != total as u64 {
        return Err(format!(
            "{} at batch {batch}: server reported {reported} rows, expected {total}",
            applier.strategy.label()
        )
        .into());
    }
    let got = checksum(admin, TABLE).await?;
    if got != *reference {
        return Err(format!(
            "{} at batch {batch}: table has {got:?}, reference {reference:?}",
            applier.strategy.label()
        )
        .into());
    }
    Ok(Measurement {
        strategy: applier.strategy,
        batch,
        rows: total,
        seconds,
        checksum: got.1,
        phases: std::mem::take(&mut applier.phases),
    })
}

async fn bench(cluster: &PgCluster) -> Result<()> {
    let dsn = cluster.dsn("bench");
    let admin = connect(&dsn).await?;
    admin
        .batch_execute(&format!(
            "{}; {}",
            create_table_sql(TABLE),
            create_table_sql(REFERENCE)
        ))
        .await?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("apply_strategies: {cores} cores, PostgreSQL {version} (throwaway cluster, fsync off, loopback TCP)");

    // Reference final states, built with the production append statement in a separate
    // table: version 1 of keys 0..total.
    let reference_table = table_info(REFERENCE);
    let mut references = Vec::new();
    for total in [SET_ROWS, ROW_AT_A_TIME_ROWS] {
        load(&admin, &reference_table, 0..total, 1).await?;
        references.push((total, checksum(&admin, REFERENCE).await?));
    }
    let reference_of = |total: usize| {
        references
            .iter()
            .find(|(t, _)| *t == total)
            .map(|(_, r)| r.clone())
            .ok_or("no reference")
    };

    let table = table_info(TABLE);
    let mut appliers = Vec::new();
    for strategy in Strategy::ALL {
        appliers.push(Applier::new(strategy, &dsn, &table).await?);
    }

    // Warm-up: every strategy once, untimed (caches, plans, the staging table's buffers).
    for applier in &mut appliers {
        let total = WARMUP_BATCH * WARMUP_BATCHES;
        load(&admin, &table, 0..total / 2, 0).await?;
        for rows in make_batches(total, WARMUP_BATCH) {
            applier.apply(&rows).await?;
        }
    }

    // Rounds interleave strategies and batch sizes, each round starting with another
    // strategy, so drift on a shared machine spreads over all of them; the median run of
    // each (strategy, batch size) is reported.
    let mut runs: Vec<Measurement> = Vec::new();
    for round in 0..ROUNDS {
        for batch in BATCH_SIZES {
            for k in 0..appliers.len() {
                let applier = &mut appliers[(round + k) % Strategy::ALL.len()];
                let total = applier.strategy.total_rows();
                let m = run(&admin, applier, total, batch, &reference_of(total)?).await?;
                eprintln!(
                    "  round {round}: {:<26} batch {batch:>6}: {:>7} rows in {:.2}s",
                    m.strategy.label(),
                    m.rows,
                    m.seconds
                );
                runs.push(m);
            }
        }
    }

    let mut medians: Vec<(&Measurement, f64, f64)> = Vec::new();
    for batch in BATCH_SIZES {
        for strategy in Strategy::ALL {
            let mut of: Vec<&Measurement> = runs
                .iter()
                .filter(|m| m.batch == batch && m.strategy == strategy)
                .collect();
            of.sort_by(|x, y| x.seconds.total_cmp(&y.seconds));
            let (min, max) = (of[0].seconds, of[of.len() - 1].seconds);
            medians.push((of[of.len() / 2], min, max));
        }
    }

    let mut out = String::new();
    writeln!(
        out,
        "\n{:<26} {:>6} {:>7} {:>8} {:>9} {:>7}  {:<11}  checksum",
        "strategy", "batch", "rows", "seconds", "rows/s", "vs (a)", "min-max s"
    )?;
    for (m, min, max) in &medians {
        let base = medians
            .iter()
            .find(|(b, _, _)| b.batch == m.batch && b.strategy == Strategy::UnnestUpsert)
            .ok_or("no (a) result")?
            .0;
        writeln!(
            out,
            "{:<26} {:>6} {:>7} {:>8.2} {:>9.0} {:>6.2}x  {:<11}  {}",
            m.strategy.label(),
            m.batch,
            m.rows,
            m.seconds,
            m.rows_per_sec(),
            m.rows_per_sec() / base.rows_per_sec(),
            format!("{min:.2}-{max:.2}"),
            &m.checksum[..12]
        )?;
    }
    writeln!(
        out,
        "\nseconds: median of {ROUNDS} runs; vs (a): throughput relative to (a) at the same batch \
         size (>1 is faster).\nEvery run left the table equal (row count and md5) to the \
         reference for its row count: {SET_ROWS} rows {}, {ROW_AT_A_TIME_ROWS} rows {}.",
        &reference_of(SET_ROWS)?.1[..12],
        &reference_of(ROW_AT_A_TIME_ROWS)?.1[..12],
    )?;
    writeln!(
        out,
        "\nWhere the median run's time went (seconds): build = client-side parameters or COPY \
         text, send = upsert / COPY / single-row upserts, merge = staging merge, commit = BEGIN + \
         COMMIT.\n{:<26} {:>6} {:>7} {:>7} {:>7} {:>7}",
        "strategy", "batch", "build", "send", "merge", "commit"
    )?;
    for (m, _, _) in &medians {
        let p = &m.phases;
        writeln!(
            out,
            "{:<26} {:>6} {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            m.strategy.label(),
            m.batch,
            p.build.as_secs_f64(),
            p.send.as_secs_f64(),
            p.merge.as_secs_f64(),
            p.commit.as_secs_f64()
        )?;
    }
    print!("{out}");
    Ok(())
}

fn main() -> Result<()> {
    let started = Instant::now();
    let bench_cluster = BenchCluster::start("bench")?;
    let result = bench_cluster.run(bench(&bench_cluster.cluster));
    println!("total bench time {:.0}s", started.elapsed().as_secs_f64());
    result
}
