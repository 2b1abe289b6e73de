//! Initial sync: how long a new replica takes to get a table's existing rows, ours against
//! PostgreSQL's own subscription (`copy_data = true`, its table-sync worker), in the same
//! run on the same machine.
//!
//! Two throwaway clusters (`embedded::pg_cluster`, fsync off, both on this machine). The
//! source table has `HELIOS_BENCH_SYNC_ROWS` rows (default 1,000,000; the catch-up
//! bench's 8 columns: numeric, timestamptz, jsonb, text, ...; 50 tenants), written before
//! anything replicates. Each case starts from nothing and is timed until its replica holds
//! the rows, then the rows on the target are counted:
//! - (a) PostgreSQL's subscription: from `CREATE SUBSCRIPTION` (which creates its slot)
//!   until the table's sync state is `r` (ready);
//! - (b) ours, all tenants: from starting the job (which creates its slot and exports its
//!   snapshot) until it streams, i.e. the snapshot is loaded and committed;
//! - (b') the same with `snapshot_split_tables = false`: the table in one transaction
//!   (by default a large table loads in parts side by side, one per core up to four);
//! - (c) ours, 5 of 50 tenants (the copy filtered on the source);
//! - (f) ours, the 5 tenants of (c) added to a job over the other 45 (synced and stopped
//!   first, not timed): from its restart until it streams, i.e. until the added tenants'
//!   rows are loaded from a snapshot of its own (`control::backfill`), where the
//!   subscription, whose row filter cannot grow without a new copy, would sync the table
//!   again as (a) does;
//! - (d) the subscription and (e) ours over the same rows in four tables of a quarter
//!   each (the subscription syncs two tables at a time by default,
//!   `max_sync_workers_per_subscription`; we load up to one table per core at once);
//! - (g) the subscription (publishing through the partition root) and (h) ours over the
//!   same rows in a table partitioned by a hash of the tenant into four partitions; (h')
//!   ours with `snapshot_split_tables = false` (by default a large partitioned table
//!   loads in groups of its partitions side by side, one per core up to four).
//!
//! The cases run one after the other, each into a database of its own, in
//! `HELIOS_BENCH_SYNC_ROUNDS` rounds (default 3; this machine's noise moves a single
//! figure by up to a third). Prints each case's median seconds and rows/s, its ratio to
//! the subscription case before it (the median of the rounds' ratios), our process's CPU
//! seconds per million source rows (the bench's own polling included) and the seconds of
//! every round; each run appends its table to `benches/results/initial_sync.md`.
//! Run: `cargo bench --bench initial_sync`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use helios_repl::control::job_control::JobState;
use helios_repl::control::job_runner::{self, Desired, JobStats};
use helios_repl::control::job_spec::JobSpec;
use helios_repl::dataflow::host::DataflowHost;
use helios_repl::embedded::pg_cluster::PgCluster;

/// The tables: `bench.t` with every row, `bench.q1`..`q4` with a quarter each.
const TABLES: [&str; 5] = ["t", "q1", "q2", "q3", "q4"];
const QUARTERS: [&str; 4] = ["bench.q1", "bench.q2", "bench.q3", "bench.q4"];

fn create_table(name: &str) -> String {
    format!(
        "CREATE TABLE bench.{name} (tenant_id int NOT NULL, id bigint NOT NULL, amount numeric(12,2),
    at timestamptz, payload jsonb, note text, flag bool, qty int, PRIMARY KEY (tenant_id, id));"
    )
}

fn create_tables() -> String {
    let tables: Vec<String> = TABLES.iter().map(|t| create_table(t)).collect();
    let parted = create_table("p").replace(");", ") PARTITION BY HASH (tenant_id);");
    let partitions: Vec<String> = (0..PARTITIONS)
        .map(|i| {
            format!(
                "CREATE TABLE bench.p_{i} PARTITION OF bench.p FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {i});"
            )
        })
        .collect();
    format!(
        "CREATE SCHEMA bench;\n{}\n{parted}\n{}",
        tables.join("\n"),
        partitions.join("\n")
    )
}

/// Partitions of `bench.p` (by a hash of the tenant).
const PARTITIONS: usize = 4;

/// Rows `$1..=$2` of the catch-up bench's shape into `bench.<name>`.
fn insert_rows(name: &str) -> String {
    format!(
        "INSERT INTO bench.{name} SELECT (g % 50) + 1, g, (g % 10000000) / 100.0,
    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
    jsonb_build_object('k', g, 'kind', 'order', 'tags', jsonb_build_array('a', g % 7)),
    'note ' || g || ' for a tenant row', g % 2 = 0, (g % 1000)::int
    FROM generate_series($1::bigint, $2::bigint) g"
    )
}

/// The tenants of case (c).
const SOME_TENANTS: [i32; 5] = [3, 14, 25, 36, 47];
const POLL: Duration = Duration::from_millis(10);
const WAIT_LIMIT: Duration = Duration::from_secs(1200);

/// The same allocator as the `helios-repl` binary, so the bench measures what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Case {
    name: &'static str,
    rows: i64,
    seconds: f64,
    /// Our process's CPU seconds during the case (`None` for the subscription).
    cpu: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    helios_repl::process_memory::disable_transparent_huge_pages();
    helios_repl::process_memory::delay_purging_freed_memory();
    let rows = match std::env::var("HELIOS_BENCH_SYNC_ROWS") {
        Ok(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100_000_000).contains(n))
            .with_context(|| {
                format!("HELIOS_BENCH_SYNC_ROWS: a row count from 1 to 100000000, got `{v}`")
            })?,
        Err(_) => 1_000_000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new().prefix("helios-sync").tempdir()?;
    // The servers may run as another user (we are root): let them reach their directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let source = PgCluster::start(&dir.path().join("source"))?;
    let target = PgCluster::start(&dir.path().join("target"))?;
    let rounds = match std::env::var("HELIOS_BENCH_SYNC_ROUNDS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=20).contains(n))
            .with_context(|| {
                format!("HELIOS_BENCH_SYNC_ROUNDS: a number of rounds from 1 to 20, got `{v}`")
            })?,
        Err(_) => 3,
    };
    let result = runtime.block_on(bench(&source, &target, rows, rounds));
    if result.is_err() {
        eprintln!(
            "source log:\n{}\ntarget log:\n{}",
            source.log(),
            target.log()
        );
    }
    result
}

async fn bench(
    source: &PgCluster,
    target: &PgCluster,
    rows: i64,
    rounds: usize,
) -> anyhow::Result<()> {
    source.create_database("bench")?;
    // The subscription's launcher starts a worker at most every
    // `wal_retrieve_retry_interval` (5 s): with subscriptions created back to back that
    // wait, not the copy, would be timed.
    let admin = connect(&target.dsn("postgres")).await?;
    admin
        .batch_execute("ALTER SYSTEM SET wal_retrieve_retry_interval = '50ms'")
        .await?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    source.psql("bench", &create_tables())?;
    let src = connect(&source.dsn("bench")).await?;
    let written = Instant::now();
    src.execute(&insert_rows("t"), &[&1i64, &rows]).await?;
    for (i, quarter) in TABLES[1..].iter().enumerate() {
        let i = i as i64;
        let (first, last) = (rows * i / 4 + 1, rows * (i + 1) / 4);
        src.execute(&insert_rows(quarter), &[&first, &last]).await?;
    }
    src.execute(&insert_rows("p"), &[&1i64, &rows]).await?;
    src.batch_execute("VACUUM ANALYZE").await?;
    println!(
        "initial_sync: {rows} rows written three times (one table, four tables, a partitioned table) in {:.1} s",
        written.elapsed().as_secs_f64()
    );
    source.psql("bench", "CREATE PUBLICATION pub_one FOR TABLE bench.t")?;
    source.psql(
        "bench",
        &format!(
            "CREATE PUBLICATION pub_four FOR TABLE {}",
            QUARTERS.join(", ")
        ),
    )?;
    source.psql(
        "bench",
        "CREATE PUBLICATION pub_parted FOR TABLE bench.p WITH (publish_via_partition_root = true)",
    )?;
    let some: Vec<String> = SOME_TENANTS.iter().map(|t| t.to_string()).collect();
    let some_rows = count(
        &src,
        &format!(
            "SELECT count(*) FROM bench.t WHERE tenant_id IN ({})",
            some.join(", ")
        ),
    )
    .await?;
    let one = ["bench.t"];
    let parted = ["bench.p"];
    let all = "\"all\"";
    let whole = "snapshot_split_tables = false\n";
    let mut runs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Each round into databases, subscriptions, jobs and slots of its own.
        let db = |name: &str| format!("{name}_{round}");
        for name in [
            "sub_a", "ours_b", "ours_b1", "ours_c", "ours_f", "sub_d", "ours_e", "sub_g", "ours_h",
            "ours_h1",
        ] {
            target.create_database(&db(name))?;
        }
        let cases = vec![
            subscription(
                source,
                target,
                ("(a) PostgreSQL subscription (copy_data)", &db("sub_a")),
                "pub_one",
                &one,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                ("(b) ours, 50 of 50 tenants", &db("ours_b"), ""),
                all,
                &one,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                (
                    "(b') ours, 50 of 50, one transaction",
                    &db("ours_b1"),
                    whole,
                ),
                all,
                &one,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                ("(c) ours, 5 of 50 tenants", &db("ours_c"), ""),
                &format!("[{}]", some.join(", ")),
                &one,
                some_rows,
            )
            .await?,
            ours_adding_tenants(source, target, &db("ours_f"), rows, some_rows).await?,
            subscription(
                source,
                target,
                ("(d) PostgreSQL subscription, four tables", &db("sub_d")),
                "pub_four",
                &QUARTERS,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                ("(e) ours, four tables", &db("ours_e"), ""),
                all,
                &QUARTERS,
                rows,
            )
            .await?,
            subscription(
                source,
                target,
                (
                    "(g) PostgreSQL subscription, partitioned table",
                    &db("sub_g"),
                ),
                "pub_parted",
                &parted,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                ("(h) ours, partitioned table", &db("ours_h"), ""),
                all,
                &parted,
                rows,
            )
            .await?,
            ours(
                source,
                target,
                (
                    "(h') ours, partitioned, one transaction",
                    &db("ours_h1"),
                    whole,
                ),
                all,
                &parted,
                rows,
            )
            .await?,
        ];
        runs.push(cases);
    }
    let table = render(&runs, rows);
    print!("{table}");
    append_results(source, &table, rows)?;
    Ok(())
}

/// The rows of `tables` on `client`.
async fn rows_in(client: &tokio_postgres::Client, tables: &[&str]) -> anyhow::Result<i64> {
    let mut total = 0;
    for table in tables {
        total += count(client, &format!("SELECT count(*) FROM {table}")).await?;
    }
    Ok(total)
}

/// Cases (a) and (d): the subscription's table sync, timed until every table is ready.
async fn subscription(
    source: &PgCluster,
    target: &PgCluster,
    (label, name): (&'static str, &str),
    publication: &str,
    tables: &[&str],
    rows: i64,
) -> anyhow::Result<Case> {
    let ddl: Vec<String> = tables
        .iter()
        .map(|t| create_table(t.trim_start_matches("bench.")))
        .collect();
    target.psql(name, &format!("CREATE SCHEMA bench;\n{}", ddl.join("\n")))?;
    let tgt = connect(&target.dsn(name)).await?;
    let started = Instant::now();
    tgt.batch_execute(&format!(
        "CREATE SUBSCRIPTION {name} CONNECTION '{}' PUBLICATION {publication} WITH (copy_data = true)",
        source.dsn("bench")
    ))
    .await?;
    loop {
        let ready = count(
            &tgt,
            "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate = 'r'",
        )
        .await?;
        if ready == tables.len() as i64 {
            break;
        }
        if started.elapsed() > WAIT_LIMIT {
            bail!("{label}: {ready} tables ready after {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let on_target = rows_in(&tgt, tables).await?;
    if on_target != rows {
        bail!("{label}: {on_target} rows on the target, expected {rows}");
    }
    // Its slot goes with it: the next rounds need theirs.
    tgt.batch_execute(&format!("DROP SUBSCRIPTION {name}"))
        .await?;
    Ok(Case {
        name: label,
        rows,
        seconds,
        cpu: None,
    })
}

/// Our job's spec: database `name` on the target, its own slot and publication.
fn job_spec(
    source: &PgCluster,
    target: &PgCluster,
    (name, source_settings): (&str, &str),
    tenants: &str,
    tables: &[&str],
) -> anyhow::Result<JobSpec> {
    let listed: String = tables
        .iter()
        .map(|t| format!("[[tables]]\nname = \"{t}\"\n"))
        .collect();
    Ok(JobSpec::from_toml_str(&format!(
        "name = \"{name}\"\n[source]\ndsn = \"{}\"\npublication = \"{name}\"\nslot = \"{name}\"\n{source_settings}\
         [tenants]\ncolumn = \"tenant_id\"\ninclude = {tenants}\n{listed}\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        source.dsn("bench"),
        target.dsn(name)
    ))?)
}

/// Runs `spec` from its start until it streams, then stops it; the seconds that took
/// and our process's CPU seconds meanwhile.
async fn run_until_streaming(label: &str, spec: JobSpec) -> anyhow::Result<(f64, f64)> {
    let host = Arc::new(
        DataflowHost::start(
            job_runner::default_workers(),
            tokio::runtime::Handle::current(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    let stats = Arc::new(JobStats::new(spec.sinks.len()));
    let (control_tx, control_rx) = tokio::sync::watch::channel(Desired::Run);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut job = job_runner::spawn_job(spec, host.clone(), stats.clone(), control_rx, None);
    loop {
        let (state, reason) = stats.state();
        match state {
            JobState::Streaming => break,
            JobState::Failed => bail!("{label}: the job failed: {}", reason.unwrap_or_default()),
            _ => {}
        }
        if job.is_finished() {
            bail!(
                "{label}: the job ended before it streamed: {:?}",
                (&mut job).await
            );
        }
        if started.elapsed() > WAIT_LIMIT {
            bail!("{label}: not streaming after {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    if let Some(loaded) = stats.snapshot.status() {
        println!(
            "{label}: {} loads (a table or a part of one, into the target)",
            loaded.loads_total
        );
    }
    let _ = control_tx.send(Desired::Stop);
    match job.await {
        Ok(Ok(())) => {}
        other => bail!("{label}: the job did not stop cleanly: {other:?}"),
    }
    drop(host);
    Ok((seconds, cpu))
}

/// Checks that the target's `tables` hold `rows` rows, then drops the job's slot (it
/// would hold the source's WAL, and the next rounds need slots).
async fn check_and_drop_slot(
    source: &PgCluster,
    target: &PgCluster,
    (label, name): (&str, &str),
    tables: &[&str],
    rows: i64,
) -> anyhow::Result<()> {
    let tgt = connect(&target.dsn(name)).await?;
    let on_target = rows_in(&tgt, tables).await?;
    if on_target != rows {
        bail!("{label}: {on_target} rows on the target, expected {rows}");
    }
    connect(&source.dsn("bench"))
        .await?
        .batch_execute(&format!("SELECT pg_drop_replication_slot('{name}')"))
        .await?;
    Ok(())
}

/// Cases (b), (c) and (e): our job, from its start until it streams.
async fn ours(
    source: &PgCluster,
    target: &PgCluster,
    (label, name, source_settings): (&'static str, &str, &str),
    tenants: &str,
    tables: &[&str],
    rows: i64,
) -> anyhow::Result<Case> {
    let spec = job_spec(source, target, (name, source_settings), tenants, tables)?;
    let (seconds, cpu) = run_until_streaming(label, spec).await?;
    check_and_drop_slot(source, target, (label, name), tables, rows).await?;
    Ok(Case {
        name: label,
        rows,
        seconds,
        cpu: Some(cpu),
    })
}

/// Case (f): a job over the other 45 tenants, synced and stopped (not timed), restarted
/// with `SOME_TENANTS` added to its list; timed from that start until it streams, which
/// is when the added tenants' `added_rows` are loaded (`control::backfill`). The target
/// then holds all `rows`.
async fn ours_adding_tenants(
    source: &PgCluster,
    target: &PgCluster,
    name: &str,
    rows: i64,
    added_rows: i64,
) -> anyhow::Result<Case> {
    let label = "(f) ours, 5 tenants added to a job of 45";
    let others: Vec<String> = (1..=50)
        .filter(|t| !SOME_TENANTS.contains(t))
        .map(|t| t.to_string())
        .collect();
    let every: Vec<String> = (1..=50).map(|t| t.to_string()).collect();
    let one = ["bench.t"];
    let before = job_spec(
        source,
        target,
        (name, ""),
        &format!("[{}]", others.join(", ")),
        &one,
    )?;
    run_until_streaming(label, before).await?;
    let after = job_spec(
        source,
        target,
        (name, ""),
        &format!("[{}]", every.join(", ")),
        &one,
    )?;
    let (seconds, cpu) = run_until_streaming(label, after).await?;
    check_and_drop_slot(source, target, (label, name), &one, rows).await?;
    Ok(Case {
        name: label,
        rows: added_rows,
        seconds,
        cpu: Some(cpu),
    })
}

/// The table: each case's median over the rounds (seconds, rows/s, CPU), its ratio to the
/// subscription case before it as the median of the rounds' ratios (each round's pair ran
/// back to back), and its seconds in each round.
fn render(runs: &[Vec<Case>], source_rows: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | rows on target | seconds (median) | source rows/s | target rows/s | vs the subscription | our CPU s / M source rows | seconds by round |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|");
    let Some(first) = runs.first() else {
        return out;
    };
    // Each of ours against the subscription case before it (the same tables).
    let mut base = 0;
    for (i, case) in first.iter().enumerate() {
        if case.cpu.is_none() {
            base = i;
        }
        let seconds: Vec<f64> = runs.iter().map(|r| r[i].seconds).collect();
        let ratio = median(
            runs.iter()
                .map(|r| r[base].seconds / r[i].seconds)
                .collect(),
        );
        let cpu: Vec<f64> = runs.iter().filter_map(|r| r[i].cpu).collect();
        let cpu = if cpu.is_empty() {
            "n/a (server)".to_string()
        } else {
            format!("{:.2}", median(cpu) / (source_rows as f64 / 1e6))
        };
        let by_round: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
        let median_s = median(seconds);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {cpu} | {} |",
            case.name,
            case.rows,
            median_s,
            source_rows as f64 / median_s,
            case.rows as f64 / median_s,
            ratio,
            by_round.join(", "),
        );
    }
    out
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Appends the run's table, with date, machine size, commit and server version, to
/// `benches/results/initial_sync.md`.
fn append_results(source: &PgCluster, table: &str, rows: i64) -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (uncommitted changes)"
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = source
        .psql("bench", "SHOW server_version")
        .unwrap_or_default();
    let entry = format!(
        "\n## {date}\n\nMachine: {cores} cores; commit {commit}{dirty}; PostgreSQL {}; \
         {rows} source rows.\n\n{table}",
        version.trim()
    );
    let path = std::path::Path::new(root).join("benches/results/initial_sync.md");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    use std::io::Write as _;
    file.write_all(entry.as_bytes())?;
    println!("appended to {}", path.display());
    Ok(())
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// User and system CPU seconds of this process so far.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
