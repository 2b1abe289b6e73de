//! `helios-repl demo`: the embedded default. Starts throwaway source and target clusters,
//! creates a multi-tenant schema with 24 tenants, runs a mixed insert/update/delete load
//! while replicating 5 of the tenants, verifies the target per tenant and prints a summary.
//! The clusters are stopped on exit, also after Ctrl-C.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::control::job_runner::{self, Desired, JobStats};
use crate::control::job_spec::JobSpec;
use crate::dataflow::host::DataflowHost;
use crate::embedded::pg_cluster::PgCluster;

/// Tenants the demo database holds.
pub const DEMO_TENANTS: i32 = 24;
/// The tenants the demo job replicates.
pub const DEMO_JOB_TENANTS: [i32; 5] = [2, 5, 11, 17, 23];
/// The demo's tables (schema `app`).
pub const DEMO_TABLES: [&str; 3] = ["accounts", "orders", "events"];

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the clusters live (recreated on every run).
    pub dir: PathBuf,
    /// How long the write load runs.
    pub load: Duration,
    /// Concurrent writers.
    pub writers: usize,
    /// Timely workers.
    pub workers: usize,
}

/// The demo schema: every type the brief lists, tenant id first in each primary key.
pub const DEMO_SCHEMA: &str = "
CREATE SCHEMA app;
CREATE TABLE app.accounts (
    tenant_id integer NOT NULL, id bigint NOT NULL, name text NOT NULL, active boolean NOT NULL,
    balance numeric(14,2), score double precision, tags text[], external_id uuid DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
CREATE TABLE app.orders (
    tenant_id integer NOT NULL, id bigserial, account_id bigint NOT NULL, total numeric,
    placed_at timestamptz NOT NULL DEFAULT now(), payload jsonb, note text, PRIMARY KEY (tenant_id, id));
CREATE TABLE app.events (
    tenant_id integer NOT NULL, id bigserial, kind text NOT NULL, body bytea, ratio double precision,
    at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
INSERT INTO app.accounts (tenant_id, id, name, active, balance, score, tags)
    SELECT t, a, 'account ' || a || ' of ' || t, a % 3 <> 0, (a * 17.25)::numeric(14,2), a / 7.0,
           ARRAY['tier' || (a % 4), 'région-' || t]
    FROM generate_series(1, 24) t, generate_series(1, 50) a;
INSERT INTO app.orders (tenant_id, account_id, total, payload, note)
    SELECT t, 1 + (o % 50), o * 3.5, jsonb_build_object('items', o % 9, 'gift', o % 5 = 0), 'seed ' || o
    FROM generate_series(1, 24) t, generate_series(1, 200) o;
";

/// How a demo run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoOutcome {
    /// The target matched the source for every job tenant.
    Passed,
    /// It did not.
    Failed,
    /// Ctrl-C before the verification.
    Interrupted,
}

/// Runs the demo.
pub async fn run_demo(
    options: DemoOptions,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<DemoOutcome> {
    if options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)?;
    }
    println!(
        "starting source and target PostgreSQL under {}",
        options.dir.display()
    );
    let source = PgCluster::start(&options.dir.join("source"))?;
    let target = PgCluster::start(&options.dir.join("target"))?;
    source.create_database("app")?;
    target.create_database("replica")?;
    source.psql("app", DEMO_SCHEMA)?;
    println!(
        "source on port {} ({DEMO_TENANTS} tenants), target on port {}",
        source.port(),
        target.port()
    );

    let spec = JobSpec::from_toml_str(&demo_job(&source.dsn("app"), &target.dsn("replica")))?;
    let stats = Arc::new(JobStats::new(1));
    let host = Arc::new(
        DataflowHost::start(options.workers, tokio::runtime::Handle::current())
            .map_err(anyhow::Error::msg)?,
    );
    let (job_stop_tx, job_stop_rx) = watch::channel(Desired::Run);
    let job = job_runner::spawn_job(
        spec,
        host.clone(),
        stats.clone(),
        job_stop_rx,
        Some(Duration::from_secs(2)),
    );

    let started = Instant::now();
    let source_dsn = source.dsn("app");
    let load = tokio::select! {
        r = run_load(&source_dsn, options.writers, options.load) => r?,
        _ = stop.changed() => {
            let _ = job_stop_tx.send(Desired::Stop);
            let _ = job.await;
            println!("interrupted; stopping the clusters");
            return Ok(DemoOutcome::Interrupted);
        }
    };
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "load done: {} transactions ({} inserts, {} updates, {} deletes) in {load_secs:.1}s",
        load.transactions, load.inserts, load.updates, load.deletes
    );

    // Wait until the target has caught up with the source for the job's tenants.
    let source_client = connect(&source.dsn("app")).await?;
    let target_client = connect(&target.dsn("replica")).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut report = compare(&source_client, &target_client).await?;
    while !report.all_match() && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => break,
        }
        report = compare(&source_client, &target_client).await?;
    }
    let caught_up_secs = started.elapsed().as_secs_f64();
    let _ = job_stop_tx.send(Desired::Stop);
    match job.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("job ended with an error: {e}"),
        Err(e) => println!("job task failed: {e}"),
    }

    let rows = stats.rows_applied();
    println!();
    println!("== summary ==");
    println!(
        "tenants in source: {DEMO_TENANTS}; replicated: {:?}",
        DEMO_JOB_TENANTS
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10}  match",
        "table", "tenant", "src rows", "dst rows"
    );
    for line in &report.lines {
        println!(
            "{:<10} {:>8} {:>10} {:>10}  {}",
            line.table,
            line.tenant,
            line.source_rows,
            line.target_rows,
            if line.matches { "yes" } else { "NO" }
        );
    }
    println!(
        "rows of other tenants on the target: {}",
        report.foreign_rows
    );
    println!(
        "streamed changes applied: {rows} in {caught_up_secs:.1}s ({:.0} rows/s while loading and catching up)",
        rows as f64 / caught_up_secs.max(1e-3)
    );
    println!("sink errors: {}", stats.sinks[0].errors.load(Relaxed));
    let ok = report.all_match();
    println!(
        "verification: {}",
        if ok {
            "PASSED (per-tenant checksums equal)"
        } else {
            "FAILED"
        }
    );
    Ok(if ok {
        DemoOutcome::Passed
    } else {
        DemoOutcome::Failed
    })
}

/// The demo job's spec text.
pub fn demo_job(source_dsn: &str, target_dsn: &str) -> String {
    let tenants: Vec<String> = DEMO_JOB_TENANTS.iter().map(|t| t.to_string()).collect();
    let tables: String = DEMO_TABLES
        .iter()
        .map(|t| format!("[[tables]]\nname = \"app.{t}\"\n"))
        .collect();
    format!(
        "name = \"demo\"\n[source]\ndsn = \"{source_dsn}\"\npublication = \"helios_demo\"\nslot = \"helios_demo\"\n\
         [tenants]\ncolumn = \"tenant_id\"\ninclude = [{}]\n{tables}[[sinks]]\nkind = \"postgres\"\ndsn = \"{target_dsn}\"\n",
        tenants.join(", ")
    )
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// What the load generator did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadSummary {
    /// Committed transactions.
    pub transactions: u64,
    /// Rows inserted.
    pub inserts: u64,
    /// Rows updated.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
}

/// Runs `writers` concurrent writers doing mixed transactions over all tenants.
pub async fn run_load(
    dsn: &str,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<LoadSummary> {
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let dsn = dsn.to_string();
        tasks.push(tokio::spawn(async move { writer(&dsn, w, duration).await }));
    }
    let mut total = LoadSummary::default();
    for t in tasks {
        let s = t.await??;
        total.transactions += s.transactions;
        total.inserts += s.inserts;
        total.updates += s.updates;
        total.deletes += s.deletes;
    }
    Ok(total)
}

async fn writer(dsn: &str, seed: usize, duration: Duration) -> anyhow::Result<LoadSummary> {
    let mut client = connect(dsn).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed as u64 + 1);
    let mut s = LoadSummary::default();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let tenant: i32 = rng.gen_range(1..=DEMO_TENANTS);
        let mut done = LoadSummary::default();
        match one_transaction(&mut client, &mut rng, tenant, &mut done).await {
            Ok(()) => {
                s.transactions += 1;
                s.inserts += done.inserts;
                s.updates += done.updates;
                s.deletes += done.deletes;
            }
            // Writers touch the same rows in different orders: retry deadlock victims.
            Err(e) if matches!(e.code().map(|c| c.code()), Some("40P01" | "40001")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(s)
}

async fn one_transaction(
    client: &mut tokio_postgres::Client,
    rng: &mut rand::rngs::StdRng,
    tenant: i32,
    s: &mut LoadSummary,
) -> Result<(), tokio_postgres::Error> {
    let specials = ["NaN", "Infinity", "-Infinity", "0", "-0", "1e308"];
    let tx = client.transaction().await?;
    for _ in 0..rng.gen_range(1..=5) {
        let dice = rng.gen_range(0..100);
        if dice < 55 {
            let account: i64 = rng.gen_range(1..=50);
            let note = format!("order {} ✓ für tenant {tenant}", rng.gen::<u32>());
            tx.execute(
                "INSERT INTO app.orders (tenant_id, account_id, total, payload, note)
                 VALUES ($1, $2, ($3::float8 * 1000)::numeric(12,2), jsonb_build_object('k', $3::float8), $4)",
                &[&tenant, &account, &rng.gen::<f64>(), &note],
            )
            .await?;
            let body: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let ratio = specials[rng.gen_range(0..specials.len())];
            tx.execute(
                "INSERT INTO app.events (tenant_id, kind, body, ratio) VALUES ($1, 'order', $2, $3::text::float8)",
                &[&tenant, &body, &ratio],
            )
            .await?;
            s.inserts += 2;
        } else if dice < 85 {
            let pick: i64 = rng.gen_range(1..5000);
            let n = tx
                .execute(
                    "UPDATE app.orders SET total = total + 1, note = note || '+' WHERE tenant_id = $1 AND id =
                       (SELECT id FROM app.orders WHERE tenant_id = $1 AND id >= $2 ORDER BY id LIMIT 1)",
                    &[&tenant, &pick],
                )
                .await?;
            let account: i64 = rng.gen_range(1..=50);
            let m = tx
                .execute(
                    "UPDATE app.accounts SET balance = balance + 1.25, active = NOT active,
                            tags = tags || ARRAY['upd'] WHERE tenant_id = $1 AND id = $2",
                    &[&tenant, &account],
                )
                .await?;
            s.updates += n + m;
        } else {
            let pick: i64 = rng.gen_range(1..5000);
            let n = tx
                .execute(
                    "DELETE FROM app.orders WHERE tenant_id = $1 AND id =
                       (SELECT id FROM app.orders WHERE tenant_id = $1 AND id >= $2 ORDER BY id LIMIT 1)",
                    &[&tenant, &pick],
                )
                .await?;
            s.deletes += n;
        }
    }
    tx.commit().await
}

/// One (table, tenant) comparison.
#[derive(Debug, Clone)]
pub struct CompareLine {
    /// Table name.
    pub table: String,
    /// Tenant id.
    pub tenant: i32,
    /// Rows on the source.
    pub source_rows: i64,
    /// Rows on the target.
    pub target_rows: i64,
    /// Whether the checksums of the rows' text forms are equal.
    pub matches: bool,
}

/// The result of comparing source and target.
#[derive(Debug, Clone, Default)]
pub struct CompareReport {
    /// Per table and job tenant.
    pub lines: Vec<CompareLine>,
    /// Rows on the target that belong to tenants outside the job.
    pub foreign_rows: i64,
}

impl CompareReport {
    /// Every line matches and no foreign rows exist.
    pub fn all_match(&self) -> bool {
        self.foreign_rows == 0 && self.lines.iter().all(|l| l.matches)
    }
}

/// Per-tenant checksum: row count and md5 of the rows' text forms in key order.
pub const TENANT_CHECKSUM_SQL: &str = "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') FROM app.{table} t WHERE tenant_id = $1";

async fn compare(
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
) -> anyhow::Result<CompareReport> {
    let mut report = CompareReport::default();
    let job_tenants: Vec<i32> = DEMO_JOB_TENANTS.to_vec();
    for table in DEMO_TABLES {
        let sql = TENANT_CHECKSUM_SQL.replace("{table}", table);
        for &tenant in &job_tenants {
            let s = source.query_one(&sql, &[&tenant]).await?;
            let t = target.query_opt(&sql, &[&tenant]).await.ok().flatten();
            let (t_rows, t_sum): (i64, String) = t
                .map(|r| (r.get(0), r.get(1)))
                .unwrap_or((0, String::new()));
            let (s_rows, s_sum): (i64, String) = (s.get(0), s.get(1));
            report.lines.push(CompareLine {
                table: table.to_string(),
                tenant,
                source_rows: s_rows,
                target_rows: t_rows,
                matches: s_rows == t_rows && s_sum == t_sum,
            });
        }
        let foreign = target
            .query_opt(
                &format!("SELECT count(*) FROM app.{table} WHERE NOT (tenant_id = ANY($1))"),
                &[&job_tenants],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        report.foreign_rows += foreign;
    }
    Ok(report)
}
