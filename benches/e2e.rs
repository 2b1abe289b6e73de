//! End-to-end benchmark: catch-up throughput, lag under sustained load and memory of the
//! replicator, side by side with what a user would pick instead, in one run on one machine.
//!
//! Isolates the whole replication path (source walsender + pgoutput, our reader, the
//! dataflow, the PostgreSQL sink and the target) and nothing else: it starts its own
//! throwaway source and target clusters (`embedded::pg_cluster`, fsync off, both on this
//! machine) and runs every catch-up case alone, one after the other (the lag runs of (a) and
//! (b) take turns, see below). Baselines, in the same run:
//!
//! - (a) PostgreSQL's own publication/subscription between the two clusters (the reference
//!   for the `vs (a)` column and for lag);
//! - (e) `pg_recvlogical` writing the pgoutput stream to `/dev/null`: what the source can
//!   send at most (the `vs (e)` column);
//! - (b) ours PG→PG for all 50 tenants and (c) ours for 5 of 50 tenants (the job runner of
//!   the library, `DataflowHost` with 2 workers + `job_runner::run_job`), the tenant filter
//!   pushed into the publication as a row filter (the default); (c') the same 5 tenants with
//!   the publication unfiltered, so our partition operator drops the other 45;
//! - (d) ours PG→Parquet: a cold-tier-only job (the table with `history = true`, one
//!   Parquet sink, no PostgreSQL target), timed until the tables' manifests list every
//!   row as a version; the files are read back afterwards and their rows counted.
//!
//! Catch-up: N rows (`HELIOS_BENCH_ROWS`, default 1,000,000; 8 columns incl. numeric,
//! timestamptz, jsonb, text; 1,000 rows per transaction; 50 tenants) are written while every
//! replicator is stopped; each replication slot exists before the writes (ours: the job ran
//! once on the empty table and was stopped; the subscription was created disabled with
//! `copy_data = false`), so the rows are streamed, not snapshotted. Each case is timed from
//! its start until the target holds the last transaction's rows (checked every 50 ms by key
//! lookups; the last transaction commits after all others), and the target's row count is
//! verified afterwards.
//!
//! Ours runs in a child process (this binary re-executed with `HELIOS_BENCH_CHILD=job`), so
//! its CPU time (`/proc/self/stat`) and peak RSS (`VmHWM`) are the replicator's alone; the
//! load generator and the polling stay in this process. Each catch-up case also reports
//! the CPU seconds the source and the target cluster spent during it (their postmasters,
//! reaped and running children, from `/proc`): the walsender's decoding on the source,
//! the apply (subscription worker or our sessions' backends) on the target.
//!
//! Lag (`HELIOS_BENCH_LAG_SECS`, default 30 s per rate and replicator): paced inserts of
//! 10 rows per transaction from 8 connections at 5k and 20k rows/s, then at 35k rows/s
//! from 16 connections (the fastest rate the source sustains on 2 cores, the issue's
//! figure; `HELIOS_BENCH_LAG_TOP_RATE` changes it, 0 runs unpaced), for (a) and (b), which
//! take turns in `HELIOS_BENCH_LAG_ROUNDS` rounds per rate (default 3; see `e2e/lag.rs`)
//! so that both meet the machine's noise of the same minutes
//! (`HELIOS_BENCH_LAG_VARIANT=K=V[,K=V]` adds a third, ours run with that environment,
//! to the turns: an A/B of a setting in one run, though its walsender adds load). The source row
//! carries `created_at default clock_timestamp()`; on the target a `BEFORE INSERT` trigger
//! marked `ENABLE ALWAYS` sets `applied_at := clock_timestamp()`. Lag = the later of
//! `applied_at` and the target's commit time (`pg_xact_commit_timestamp(xmin)`) minus
//! `created_at`, the same formula for both replicators. Each lag row also gives the rows per
//! target transaction (distinct `xmin`s) and each round's P99; `HELIOS_BENCH_LAG_TIMELINE=1` prints every round's
//! per-second rows, target transactions and P50/P99/max, to tell stalls from a steady tail.
//! For ours, a second table splits the lag by stage of the data path per source
//! transaction (`sinks::latency`: source commit → reader, reader → sink task, reader →
//! durable), from the job's own stage samples, beside the context switches of our
//! threads per source transaction (its thread hand-overs).
//!
//! Memory: peak RSS of ours during the catch-up runs and while replicating one transaction
//! of `HELIOS_BENCH_BIG_TXN_ROWS` rows (default 10,000,000) into the target, and one of
//! `HELIOS_BENCH_HISTORY_TXN_ROWS` (default 1,000,000) in a history job into the cold tier,
//! each in a fresh process. A
//! child passing `HELIOS_BENCH_RSS_CAP_MIB` (default 8192) is stopped and reported as above
//! the cap.
//!
//! Prints one markdown table and appends it, with date, machine size, commit and
//! PostgreSQL version, to `benches/results/e2e.md`.
//!
//! `HELIOS_BENCH_PG_EXTRA`: TOML appended to our postgres sinks (`\n` for a newline), e.g.
//! `max_in_flight = 2`; in `HELIOS_BENCH_LAG_VARIANT` it is appended to the variant's only.
//!
//! `HELIOS_BENCH_TRANSPORT=unix`: every client (the subscription, `pg_recvlogical`, our
//! jobs' source and target connections, the load and the polling) reaches the clusters over
//! their Unix-domain sockets instead of loopback TCP (`tcp`, the default).
//! `HELIOS_BENCH_TRANSPORT=tls`: loopback TCP with TLS, every client with
//! `sslmode=require` (the clusters serve a self-signed certificate made for the run).
//!
//! `HELIOS_BENCH_SOURCE_EXTRA`: TOML appended to our jobs' `[source]` (`\n` for a newline),
//! e.g. `receive_buffer_kib = 0` for the system's socket buffer; in
//! `HELIOS_BENCH_LAG_VARIANT` it goes to the variant's only.
//!
//! `HELIOS_BENCH_COLD_EXTRA`: TOML appended to (d)'s Parquet sink (`\n` for a newline),
//! e.g. `batch_max_rows = 50000\n[qos]\nmax_buffered_rows = 100000` to try other group sizes.
//!
//! Profile: `HELIOS_BENCH_PERF=DIR` runs each of our children under `perf record -g`
//! (`HELIOS_BENCH_PERF_DWARF=1`: `--call-graph dwarf`, full stacks).
//! Heap profile: `HELIOS_BENCH_HEAPTRACK=DIR cargo bench --bench e2e --features
//! bench-system-allocator` runs each child under `heaptrack` (read the files with
//! `heaptrack_print`); without the feature heaptrack sees only what bypasses mimalloc.
//! Run: `cargo bench --bench e2e` (quick: `HELIOS_BENCH_ROWS=200000 HELIOS_BENCH_LAG_SECS=10
//! HELIOS_BENCH_BIG_TXN_ROWS=1000000 cargo bench --bench e2e`).

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use helios_repl::control::job_control::JobState;
use helios_repl::control::job_runner::{self, Desired, JobStats};
use helios_repl::control::job_spec::JobSpec;
use helios_repl::dataflow::host::{DataflowHost, WorkerPlacement};
use helios_repl::embedded::pg_cluster::PgCluster;
use helios_repl::sinks::latency::LatencyStage;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

#[path = "common/target_txn.rs"]
mod target_txn;

#[path = "e2e/lag.rs"]
mod lag;

use lag::LAG_LOADS;

const TENANTS: i64 = 50;
const ROWS_PER_TXN: i64 = 1_000;
/// The tenants of case (c).
const SOME_TENANTS: [i32; 5] = [3, 14, 25, 36, 47];

/// The size. A child whose RSS passes `HELIOS_BENCH_RSS_CAP_MIB` (default 8192) is
/// stopped and the figure is reported as above the cap.
const DEFAULT_BIG_TXN_ROWS: u64 = 10_000_000;
/// One transaction into a history job's cold tier (its books hold every row).
const DEFAULT_HISTORY_TXN_ROWS: u64 = 1_000_000;
const POLL: Duration = Duration::from_millis(50);
const WAIT_LIMIT: Duration = Duration::from_secs(1800);

const CATCHUP_TABLE: &str = "CREATE SCHEMA bench;
CREATE TABLE bench.t (tenant_id int NOT NULL, id bigint NOT NULL, amount numeric(12,2),
    at timestamptz, payload jsonb, note text, flag bool, qty int, PRIMARY KEY (tenant_id, id));
CREATE TABLE bench.big (LIKE bench.t INCLUDING ALL);
CREATE TABLE bench.bigh (LIKE bench.t INCLUDING ALL);";

const INSERT_ROWS: &str =
    "INSERT INTO bench.{table} SELECT (g % 50) + 1, g, (g % 10000000) / 100.0,
    timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
    jsonb_build_object('k', g, 'kind', 'order', 'tags', jsonb_build_array('a', g % 7)),
    'note ' || g || ' for a tenant row', g % 2 = 0, (g % 1000)::int
    FROM generate_series($1::bigint, $2::bigint) g";

/// The same allocator as the `helios-repl` binary, so the child measures what users run
/// (unless built with `--features bench-system-allocator`, for heaptrack).
#[cfg(not(feature = "bench-system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    if std::env::var("HELIOS_BENCH_CHILD").as_deref() == Ok("job") {
        // Our replicator, with helios-repl's runtime size.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(bench_async_threads())
            .enable_all()
            .build()?;
        return runtime.block_on(child_main());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(parent_main())
}

// ---------------------------------------------------------------------------------------
// The child: runs one job until told to stop.

/// `stage=P50/P99/max` in ms per data-path stage, as the child answers `latency`.
fn stage_quantiles(stages: &mut [Vec<f64>]) -> String {
    LatencyStage::ALL
        .iter()
        .map(|s| {
            let v = &mut stages[s.index()];
            v.sort_by(f64::total_cmp);
            let q = |q: f64| {
                v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                    .map_or(0.0, |s| s * 1e3)
            };
            format!("{}={:.2}/{:.2}/{:.2}", s.as_str(), q(0.5), q(0.99), q(1.0))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Protocol on stdin/stdout: prints `streaming` once the job streams; answers `stats` with
/// `stats cpu_s=… hwm_kb=… rows=…`; on `stop` (or EOF) stops the job, prints the same
/// figures as `stopped …` and exits. A failed job prints `failed <reason>`.
async fn child_main() -> anyhow::Result<()> {
    // As the `helios-repl` binary does first thing.
    helios_repl::process_memory::disable_transparent_huge_pages();
    helios_repl::process_memory::delay_purging_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_env("HELIOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let spec = JobSpec::from_toml_str(&std::env::var("HELIOS_BENCH_SPEC")?)?;
    let ticks = clock_ticks();
    let stats = Arc::new(JobStats::new(spec.sinks.len()));
    // HELIOS_BENCH_WORKER_PLACEMENT=inline|inline-sinks|own-thread: `--worker-placement`.
    let placement = match std::env::var("HELIOS_BENCH_WORKER_PLACEMENT").as_deref() {
        Ok("own-thread") => WorkerPlacement::OwnThread,
        Ok("inline") => WorkerPlacement::Inline,
        Ok("inline-sinks") | Err(_) => WorkerPlacement::InlineSinks,
        Ok(other) => bail!("HELIOS_BENCH_WORKER_PLACEMENT: unknown placement `{other}`"),
    };
    let host = Arc::new(
        DataflowHost::start_with(
            bench_workers(),
            tokio::runtime::Handle::current(),
            placement,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let (control_tx, control_rx) = tokio::sync::watch::channel(Desired::Run);
    let mut job = job_runner::spawn_job(spec, host.clone(), stats.clone(), control_rx, None);
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    // Seconds the sinks spent in apply calls (planning, sending, waiting for the target).
    let apply_s = std::cell::Cell::new(0.0f64);
    let figures = |stats: &JobStats| -> String {
        let took: f64 = stats
            .sinks
            .iter()
            .flat_map(|s| s.take_apply_seconds())
            .sum();
        apply_s.set(apply_s.get() + took);
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "cpu_s={:.3} hwm_kb={} rows={} apply_s={:.3} switches={} reads={} batched={} received={}",
            cpu_seconds(ticks),
            vm_hwm_kb(),
            stats.rows_applied(),
            apply_s.get(),
            context_switches(),
            stats.reader.socket_reads.load(Relaxed),
            stats.reader.batched_reads.load(Relaxed),
            stats.reader.bytes_received.load(Relaxed),
        )
    };
    let mut announced = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    // Stage durations (seconds) since the last `latency` command, by `LatencyStage::index`;
    // the same since the last `latency_slice` (the lag timeline's per-second stages).
    let mut stages: Vec<Vec<f64>> = vec![Vec::new(); LatencyStage::ALL.len()];
    let mut slice: Vec<Vec<f64>> = vec![Vec::new(); LatencyStage::ALL.len()];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for (stage, secs) in stats.sinks.iter().flat_map(|s| s.stages.take()) {
                    stages[stage.index()].push(secs);
                    slice[stage.index()].push(secs);
                }
                let (state, reason) = stats.state();
                if state == JobState::Streaming && !announced {
                    announced = true;
                    println!("streaming");
                }
                if state == JobState::Failed {
                    println!("failed {}", reason.unwrap_or_default());
                    std::process::exit(2);
                }
            }
            line = line_rx.recv() => {
                match line.as_deref() {
                    Some("stats") => println!("stats {}", figures(&stats)),
                    Some("latency") => {
                        println!("latency {}", stage_quantiles(&mut stages));
                        stages.iter_mut().for_each(Vec::clear);
                        slice.iter_mut().for_each(Vec::clear);
                    }
                    Some("latency_slice") => {
                        println!("latency_slice {}", stage_quantiles(&mut slice));
                        slice.iter_mut().for_each(Vec::clear);
                    }
                    Some(_) => {}
                    None => {}
                }
                if matches!(line.as_deref(), Some("stop") | None) {
                    let at_stop = figures(&stats);
                    let _ = control_tx.send(Desired::Stop);
                    match (&mut job).await {
                        Ok(Ok(())) => println!("stopped {at_stop}"),
                        Ok(Err(e)) => println!("failed {e}"),
                        Err(e) => println!("failed {e}"),
                    }
                    drop(host);
                    return Ok(());
                }
            }
            r = &mut job => {
                println!("failed job ended early: {:?}", r.map(|r| r.map_err(|e| e.to_string())));
                std::process::exit(2);
            }
        }
    }
}

/// Timely workers of our replicator (`HELIOS_BENCH_WORKERS`, default `helios-repl`'s:
/// half the cores, at least one).
fn bench_workers() -> usize {
    env_count("HELIOS_BENCH_WORKERS")
        .unwrap_or_else(helios_repl::control::job_runner::default_workers)
}

/// Async runtime threads of our replicator (`HELIOS_BENCH_ASYNC_THREADS`, default
/// `helios-repl`'s: half the cores, at least one).
fn bench_async_threads() -> usize {
    env_count("HELIOS_BENCH_ASYNC_THREADS")
        .unwrap_or_else(helios_repl::control::job_runner::default_async_threads)
}

/// A positive count from the environment.
fn env_count(name: &str) -> Option<usize> {
    Some(env_u64(name, 0) as usize).filter(|&n| n > 0)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is index 0; utime and stime are fields 14 and 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(11) + get(12)) / ticks
}

/// CPU seconds (user + system) a whole cluster has used so far: its postmaster, the
/// children it reaped (walsenders and backends that ended) and those still running.
///
/// A child that has exited but is not yet reaped (a zombie) reads zero CPU in
/// `/proc/<pid>/stat` and is not yet in the postmaster's `cutime`: its whole CPU would
/// vanish from this reading (the walsender of a replication client that just ended).
/// So the scan is repeated, for up to 2 s, until no child of the postmaster is a zombie.
fn cluster_cpu_seconds(cluster: &PgCluster, ticks: f64) -> f64 {
    let pid_file = cluster.root().join("data").join("postmaster.pid");
    let Some(postmaster) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return 0.0;
    };
    let mut scan = cluster_cpu_scan(postmaster);
    for _ in 0..400 {
        if !scan.zombie_child {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        scan = cluster_cpu_scan(postmaster);
    }
    // A child reaped during a pass can be missed by it (the postmaster read before its
    // `cutime` had the child, the child's entry gone when its turn came): a cluster's CPU
    // only grows, so the largest of a few passes is the complete one.
    let mut most = scan.ticks;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(10));
        most = most.max(cluster_cpu_scan(postmaster).ticks);
    }
    most / ticks
}

/// One pass over `/proc` for [`cluster_cpu_seconds`].
struct ClusterCpuScan {
    /// Clock ticks of the postmaster (with its reaped children) and its live children.
    ticks: f64,
    /// A child of the postmaster had exited without being reaped.
    zombie_child: bool,
}

fn cluster_cpu_scan(postmaster: u32) -> ClusterCpuScan {
    let mut scan = ClusterCpuScan {
        ticks: 0.0,
        zombie_child: false,
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return scan;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state is index 0, ppid 1, utime 11, stime 12,
        // cutime 13, cstime 14.
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.len() < 15 {
            continue;
        }
        let f = |i: usize| fields[i].parse::<f64>().unwrap_or(0.0);
        if pid == postmaster.to_string() {
            scan.ticks += f(11) + f(12) + f(13) + f(14);
        } else if fields[1].parse::<u32>().ok() == Some(postmaster) {
            scan.ticks += f(11) + f(12);
            scan.zombie_child |= fields[0] == "Z";
        }
    }
    scan
}

/// CPU seconds of the source and target clusters so far.
fn clusters_cpu(source: &PgCluster, target: &PgCluster, ticks: f64) -> (f64, f64) {
    (
        cluster_cpu_seconds(source, ticks),
        cluster_cpu_seconds(target, ticks),
    )
}

/// Context switches (voluntary and not) of this process's live threads so far, from
/// `/proc/self/task/*/status`.
fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Driving a child from the parent.

struct JobChild {
    child: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Figures a child reports.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    cpu_s: f64,
    hwm_kb: u64,
    rows: u64,
    /// Seconds the sinks spent applying (their busy time).
    apply_s: f64,
    /// Context switches of the process's threads so far (each time one slept or was
    /// preempted): its thread wake-ups.
    switches: u64,
    /// Reads of the replication socket (counted every 500 ms), those that waited for a
    /// batch, and the pgoutput bytes received.
    reads: u64,
    batched: u64,
    received: u64,
}

impl JobChild {
    async fn spawn(spec: &str) -> anyhow::Result<JobChild> {
        JobChild::spawn_with_env(spec, &[]).await
    }

    /// [`JobChild::spawn`] with `env` set for the child besides.
    async fn spawn_with_env(spec: &str, env: &[(String, String)]) -> anyhow::Result<JobChild> {
        // HELIOS_BENCH_PERF=DIR records each child with `perf record -g` into DIR.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let perf = std::env::var_os("HELIOS_BENCH_PERF");
        let heaptrack = std::env::var_os("HELIOS_BENCH_HEAPTRACK");
        let mut command = match (perf, heaptrack) {
            (None, Some(dir)) => {
                // HELIOS_BENCH_HEAPTRACK=DIR: each child under heaptrack, into DIR.
                let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let out = std::path::Path::new(&dir).join(format!("heaptrack-child-{run}"));
                let mut c = tokio::process::Command::new("heaptrack");
                c.arg("-o").arg(out).arg(std::env::current_exe()?);
                c
            }
            (Some(dir), _) => {
                let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let out = std::path::Path::new(&dir).join(format!("perf-child-{run}.data"));
                let mut c = tokio::process::Command::new("perf");
                // HELIOS_BENCH_PERF_DWARF=1: full stacks (the release build has no frame
                // pointers), at a lower rate.
                let stacks: &[&str] = match std::env::var_os("HELIOS_BENCH_PERF_DWARF") {
                    Some(_) => &["--call-graph", "dwarf,32768", "-F", "499"],
                    None => &["-g", "-F", "499"],
                };
                c.arg("record")
                    .args(stacks)
                    .arg("-o")
                    .arg(out)
                    .arg("--")
                    .arg(std::env::current_exe()?);
                c
            }
            (None, None) => tokio::process::Command::new(std::env::current_exe()?),
        };
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .env("HELIOS_BENCH_CHILD", "job")
            .env("HELIOS_BENCH_SPEC", spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or(anyhow!("child stdin"))?;
        let stdout = child.stdout.take().ok_or(anyhow!("child stdout"))?;
        Ok(JobChild {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Reads lines until one starts with `prefix`; returns the rest of it.
    async fn expect(&mut self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .map_err(|_| anyhow!("job child: no `{prefix}` within {limit:?}"))??
                .ok_or_else(|| anyhow!("job child exited before `{prefix}`"))?;
            if let Some(rest) = line.strip_prefix("failed") {
                bail!("job failed:{rest}");
            }
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    async fn send(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Per-stage latency of the transactions applied since the last call (P50/P99/max ms).
    async fn latency(&mut self) -> anyhow::Result<String> {
        self.send("latency").await?;
        self.expect("latency", Duration::from_secs(30)).await
    }

    /// The same since the last call of either, leaving [`JobChild::latency`]'s samples.
    async fn latency_slice(&mut self) -> anyhow::Result<String> {
        self.send("latency_slice").await?;
        self.expect("latency_slice", Duration::from_secs(30)).await
    }

    async fn stats(&mut self) -> anyhow::Result<Figures> {
        self.send("stats").await?;
        Ok(parse_figures(
            &self.expect("stats", Duration::from_secs(30)).await?,
        ))
    }

    async fn stop(mut self) -> anyhow::Result<Figures> {
        self.send("stop").await?;
        let f = parse_figures(&self.expect("stopped", Duration::from_secs(120)).await?);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        Ok(f)
    }
}

fn parse_figures(text: &str) -> Figures {
    let mut f = Figures::default();
    for part in text.split_whitespace() {
        match part.split_once('=') {
            Some(("cpu_s", v)) => f.cpu_s = v.parse().unwrap_or(0.0),
            Some(("hwm_kb", v)) => f.hwm_kb = v.parse().unwrap_or(0),
            Some(("rows", v)) => f.rows = v.parse().unwrap_or(0),
            Some(("apply_s", v)) => f.apply_s = v.parse().unwrap_or(0.0),
            Some(("switches", v)) => f.switches = v.parse().unwrap_or(0),
            Some(("reads", v)) => f.reads = v.parse().unwrap_or(0),
            Some(("batched", v)) => f.batched = v.parse().unwrap_or(0),
            Some(("received", v)) => f.received = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    f
}

/// How the replication socket was read: reads, bytes per read, and the share that waited
/// for a batch (`cdc::transport`'s read batching).
fn socket_reads(f: &Figures) -> String {
    format!(
        "{} socket reads of {:.0} bytes on average, {:.0} % batched",
        f.reads,
        f.received as f64 / f.reads.max(1) as f64,
        100.0 * f.batched as f64 / f.reads.max(1) as f64
    )
}

/// A job spec as TOML text, like `demo.rs` builds it.
fn job_spec(name: &str, source_dsn: &str, table: &str, tenants: &str, target_dsn: &str) -> String {
    format!(
        "name = \"{name}\"\n[source]\ndsn = \"{source_dsn}\"\npublication = \"{name}\"\nslot = \"{name}\"\n{}\
         [tenants]\ncolumn = \"tenant_id\"\ninclude = {tenants}\n[[tables]]\nname = \"{table}\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{target_dsn}\"\n{}",
        source_extra(),
        pg_extra(std::env::var("HELIOS_BENCH_PG_EXTRA").ok().as_deref())
    )
}

/// `HELIOS_BENCH_PG_EXTRA`'s TOML for our postgres sinks (`\n` for a newline), e.g.
/// `max_in_flight = 2`; empty when unset.
fn pg_extra(value: Option<&str>) -> String {
    value.map_or_else(String::new, |v| format!("{}\n", v.replace("\\n", "\n")))
}

/// `HELIOS_BENCH_SOURCE_EXTRA`'s TOML for our jobs' `[source]` (`\n` for a newline), e.g.
/// `receive_buffer_kib = 0`; empty when unset.
fn source_extra() -> String {
    pg_extra(std::env::var("HELIOS_BENCH_SOURCE_EXTRA").ok().as_deref())
}

/// The spec of case (d): `table` with history, into a Parquet cold tier under `root` only.
fn cold_job_spec(name: &str, source_dsn: &str, table: &str, root: &std::path::Path) -> String {
    format!(
        "name = \"{name}\"\n[source]\ndsn = \"{source_dsn}\"\npublication = \"{name}\"\nslot = \"{name}\"\n{}\
         [tenants]\ncolumn = \"tenant_id\"\ninclude = \"all\"\n[[tables]]\nname = \"{table}\"\nhistory = true\n\
         [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n{}",
        source_extra(),
        root.display(), std::env::var("HELIOS_BENCH_COLD_EXTRA").unwrap_or_default().replace("\\n", "\n")
    )
}

/// What the manifests of `table` under `root` list, over every tenant.
#[derive(Debug, Clone, Copy, Default)]
struct ColdListed {
    rows: u64,
    files: u64,
    bytes: u64,
}

fn cold_listed(root: &std::path::Path, table: &str) -> anyhow::Result<ColdListed> {
    use helios_repl::sinks::parquet::{list_tables, table_dir, Manifest};
    let mut listed = ColdListed::default();
    for (tenant, t) in list_tables(root)? {
        if t == table {
            if let Some(m) = Manifest::load(&table_dir(root, &tenant, &t))? {
                listed.rows += m.files.iter().map(|f| f.rows).sum::<u64>();
                listed.bytes += m.files.iter().map(|f| f.bytes).sum::<u64>();
                listed.files += m.files.len() as u64;
            }
        }
    }
    Ok(listed)
}

/// Compacts every tenant's directory of `table` under `root` (each run of at least two
/// small files, as the sink does once a directory lists `compact_min_files` of them);
/// returns the seconds it took and what is listed afterwards.
fn compact_cold(root: &std::path::Path, table: &str) -> anyhow::Result<(f64, ColdListed)> {
    use helios_repl::sinks::parquet::{
        list_tables, table_dir, ColdTableWriter, CompactionPolicy, Manifest, COMPACTION,
    };
    let policy = CompactionPolicy {
        min_files: 2,
        ..COMPACTION
    };
    let started = Instant::now();
    for (tenant, t) in list_tables(root)? {
        if t != table {
            continue;
        }
        let Some(manifest) = Manifest::load(&table_dir(root, &tenant, &t))? else {
            continue;
        };
        let mut writer = ColdTableWriter::open(root, &tenant, &t, &manifest.columns)?;
        writer.compact(&policy)?;
    }
    Ok((started.elapsed().as_secs_f64(), cold_listed(root, table)?))
}

/// Waits until the manifests of `table` under `root` list `want` rows; returns when.
async fn wait_for_cold_rows(
    root: &std::path::Path,
    table: &str,
    want: u64,
) -> anyhow::Result<Instant> {
    let start = Instant::now();
    loop {
        if cold_listed(root, table)?.rows >= want {
            return Ok(Instant::now());
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!("the cold tier did not catch up within {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Open versions in the files of `table` under `root`, read back and verified.
fn cold_open_versions(root: &std::path::Path, table: &str) -> anyhow::Result<i64> {
    use helios_repl::sinks::parquet::{list_tables, read_table, ColdEvent};
    let mut n = 0;
    for (tenant, t) in list_tables(root)? {
        if t == table {
            let (_, rows) = read_table(root, &tenant, &t)?;
            n += rows.iter().filter(|r| r.event == ColdEvent::Open).count() as i64;
        }
    }
    Ok(n)
}

/// Runs the job until it streams (taking its snapshot of the still-empty table, creating
/// its slot), then stops it.
async fn prime(spec: &str) -> anyhow::Result<()> {
    let mut child = JobChild::spawn(spec).await?;
    child.expect("streaming", Duration::from_secs(120)).await?;
    child.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The parent: clusters, workloads, measurements, the table.

/// How every client of the run reaches the clusters (`HELIOS_BENCH_TRANSPORT`). The
/// subscription, `pg_recvlogical`, our jobs and the load generator all take the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Loopback TCP, the default.
    Tcp,
    /// The servers' Unix-domain sockets.
    Unix,
    /// Loopback TCP with TLS (`sslmode=require`).
    Tls,
}

impl Transport {
    fn of_env() -> anyhow::Result<Transport> {
        match std::env::var("HELIOS_BENCH_TRANSPORT").as_deref() {
            Err(_) | Ok("tcp") => Ok(Transport::Tcp),
            Ok("unix") => Ok(Transport::Unix),
            Ok("tls") => Ok(Transport::Tls),
            Ok(other) => {
                bail!("HELIOS_BENCH_TRANSPORT must be `tcp`, `unix` or `tls`, not {other:?}")
            }
        }
    }

    /// The run's transport; a bad value was refused at start, so it falls back to TCP.
    fn get() -> Transport {
        Transport::of_env().unwrap_or(Transport::Tcp)
    }

    fn describe(self) -> &'static str {
        match self {
            Transport::Tcp => "loopback TCP",
            Transport::Unix => "Unix-domain sockets",
            Transport::Tls => "loopback TCP with TLS (sslmode=require)",
        }
    }
}

/// The connection string of `database` on `cluster` over the run's transport.
fn dsn(cluster: &PgCluster, database: &str) -> String {
    match Transport::get() {
        Transport::Tcp => cluster.dsn(database),
        Transport::Unix => cluster.socket_dsn(database),
        Transport::Tls => format!("{} sslmode=require", cluster.dsn(database)),
    }
}

/// The `-h` of `cluster` for command-line clients over the run's transport (with TLS they
/// get `PGSSLMODE=require` as well: [`libpq_env`]).
fn host(cluster: &PgCluster) -> String {
    match Transport::get() {
        Transport::Unix => cluster.root().display().to_string(),
        Transport::Tcp | Transport::Tls => "127.0.0.1".to_string(),
    }
}

/// The `sslmode` a command-line libpq client of the run needs.
fn libpq_env() -> (&'static str, &'static str) {
    match Transport::get() {
        Transport::Tls => ("PGSSLMODE", "require"),
        Transport::Tcp | Transport::Unix => ("PGSSLMODE", "prefer"),
    }
}

/// With TLS, has `cluster` serve a self-signed certificate made now (clients use
/// `sslmode=require`, which does not check it), its `pg_hba.conf` as before.
fn serve_run_transport(cluster: &PgCluster) -> anyhow::Result<()> {
    if Transport::get() != Transport::Tls {
        return Ok(());
    }
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let hba = "local all all trust\nlocal replication all trust\n\
               host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n";
    cluster.serve_tls(&cert.pem(), &key.serialize_pem(), &cert.pem(), hba)?;
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    use helios_repl::pg_connect::{self, OnClose};
    Ok(pg_connect::connect(dsn, "bench", OnClose::Debug).await?)
}

/// The last id each tenant gets when ids `1..=n` go to tenant `(id % 50) + 1`.
fn last_ids(n: i64, tenants: &[i32]) -> (Vec<i32>, Vec<i64>) {
    tenants
        .iter()
        .map(|&t| {
            let r = i64::from(t) - 1;
            (t, n - ((n - r).rem_euclid(TENANTS)))
        })
        // Ids start at 1: with fewer rows than tenants some tenants have none.
        .filter(|&(_, id)| id >= 1)
        .unzip()
}

/// Waits until the target holds every key in `keys`; returns when it did.
async fn wait_for_keys(
    target: &tokio_postgres::Client,
    table: &str,
    keys: &(Vec<i32>, Vec<i64>),
) -> anyhow::Result<Instant> {
    let sql = format!(
        "SELECT count(*) FROM {table} WHERE (tenant_id, id) IN \
         (SELECT * FROM unnest($1::int[], $2::bigint[]))"
    );
    let want = keys.0.len() as i64;
    let start = Instant::now();
    loop {
        if let Ok(row) = target.query_one(&sql, &[&keys.0, &keys.1]).await {
            if row.get::<_, i64>(0) == want {
                return Ok(Instant::now());
            }
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!("the target did not catch up within {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Waits (up to 5 s) until no walsender holds `slot`.
async fn wait_slot_released(source: &tokio_postgres::Client, slot: &str) {
    for _ in 0..500 {
        let active = source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await;
        if matches!(active, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn drop_slot(source: &tokio_postgres::Client, slot: &str) {
    for _ in 0..100 {
        let r = source
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        if r.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("could not drop slot {slot}");
}

/// Writes ids `first..=last` in transactions of `per_txn` rows from two connections; the
/// transaction with the highest ids commits alone, after all the others.
async fn write_rows(
    dsn: &str,
    table: &str,
    first: i64,
    last: i64,
    per_txn: i64,
) -> anyhow::Result<()> {
    let sql = INSERT_ROWS.replace("{table}", table);
    let mut starts: Vec<i64> = (0..)
        .map(|i| first + i * per_txn)
        .take_while(|s| *s <= last)
        .collect();
    let final_start = starts.pop().ok_or(anyhow!("no rows to write"))?;
    let mut tasks = Vec::new();
    for w in 0..2 {
        let mine: Vec<i64> = starts.iter().copied().skip(w).step_by(2).collect();
        let (dsn, sql) = (dsn.to_string(), sql.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&dsn).await?;
            let stmt = client.prepare(&sql).await?;
            for s in mine {
                client.execute(&stmt, &[&s, &(s + per_txn - 1)]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let client = connect(dsn).await?;
    client.execute(&sql, &[&final_start, &last]).await?;
    Ok(())
}

struct CatchUp {
    label: &'static str,
    target_rows: i64,
    secs: f64,
    figures: Option<Figures>,
    /// CPU seconds the source and the target cluster spent during the run.
    servers_cpu: (f64, f64),
}

async fn parent_main() -> anyhow::Result<()> {
    let rows = env_u64("HELIOS_BENCH_ROWS", 1_000_000).max(ROWS_PER_TXN as u64) as i64;
    let lag_secs = env_u64("HELIOS_BENCH_LAG_SECS", 30).max(1);
    let big_rows = env_u64("HELIOS_BENCH_BIG_TXN_ROWS", DEFAULT_BIG_TXN_ROWS).max(1) as i64;
    let rss_cap_mib = env_u64("HELIOS_BENCH_RSS_CAP_MIB", 8192);
    let history_rows =
        env_u64("HELIOS_BENCH_HISTORY_TXN_ROWS", DEFAULT_HISTORY_TXN_ROWS).max(1) as i64;
    let mut lag_loads = LAG_LOADS;
    lag_loads[2].rate = env_u64("HELIOS_BENCH_LAG_TOP_RATE", LAG_LOADS[2].rate);
    // Each round at least a second per replicator.
    let lag_rounds = env_u64("HELIOS_BENCH_LAG_ROUNDS", lag::DEFAULT_ROUNDS).clamp(1, lag_secs);
    // Checked here, before anything starts: later calls fall back to TCP.
    Transport::of_env()?;
    let bench_started = Instant::now();

    let dir = tempfile::Builder::new().prefix("helios-e2e").tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let source = PgCluster::start(&dir.path().join("source"))?;
    let target = PgCluster::start(&dir.path().join("target"))?;
    serve_run_transport(&source)?;
    serve_run_transport(&target)?;
    let pg_version = source.psql("postgres", "SHOW server_version")?;
    println!(
        "source on port {}, target on port {}, PostgreSQL {pg_version}; {rows} rows, lag {lag_secs}s per rate, big transaction {big_rows} rows",
        source.port(),
        target.port()
    );
    // Each of our lag replicators creates its own databases (`lag::Ours::start`).
    for db in ["bench", "lag_a"] {
        source.create_database(db)?;
    }
    for db in ["sub_a", "ours_b", "ours_c", "ours_c_op", "big", "lag_a"] {
        target.create_database(db)?;
    }
    source.psql("bench", CATCHUP_TABLE)?;
    source.psql("bench", "CREATE PUBLICATION pg_pub FOR TABLE bench.t")?;
    target.psql("sub_a", CATCHUP_TABLE)?;
    let src_bench = dsn(&source, "bench");
    let src = connect(&src_bench).await?;

    // ---- catch-up: every slot before the writes ----
    target.psql(
        "sub_a",
        &format!(
            "CREATE SUBSCRIPTION sub_a CONNECTION '{src_bench}' PUBLICATION pg_pub \
             WITH (enabled = false, copy_data = false)"
        ),
    )?;
    src.execute(
        "SELECT pg_create_logical_replication_slot('recv_e', 'pgoutput')",
        &[],
    )
    .await?;
    let some: Vec<String> = SOME_TENANTS.iter().map(|t| t.to_string()).collect();
    let some_list = format!("[{}]", some.join(", "));
    let spec_b = job_spec(
        "ours_b",
        &src_bench,
        "bench.t",
        "\"all\"",
        &dsn(&target, "ours_b"),
    );
    let spec_c = job_spec(
        "ours_c",
        &src_bench,
        "bench.t",
        &some_list,
        &dsn(&target, "ours_c"),
    );
    let spec_c_op = job_spec(
        "ours_c_op",
        &src_bench,
        "bench.t",
        &some_list,
        &dsn(&target, "ours_c_op"),
    );
    let spec_big = job_spec(
        "ours_big",
        &src_bench,
        "bench.big",
        "\"all\"",
        &dsn(&target, "big"),
    );
    let cold_d = dir.path().join("cold_d");
    let spec_d = cold_job_spec("ours_d", &src_bench, "bench.t", &cold_d);
    prime(&spec_b).await.context("priming (b)")?;
    prime(&spec_d).await.context("priming (d)")?;
    prime(&spec_c).await.context("priming (c)")?;
    prime(&spec_c_op).await.context("priming (c')")?;
    // (c'): the same job with the filter only in our partition operator. Its publication
    // loses the row filter the job set; the writes below are decoded with the publication
    // as it was when they were written (the job sets the filter again when it starts, after
    // them), so the source sends every tenant's rows.
    src.batch_execute("ALTER PUBLICATION ours_c_op SET TABLE bench.t")
        .await?;

    let t = Instant::now();
    write_rows(&src_bench, "t", 1, rows, ROWS_PER_TXN).await?;
    src.batch_execute("CHECKPOINT").await?;
    let endpos: String = src
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    println!(
        "wrote {rows} rows in {:.1}s ({:.0} rows/s)",
        t.elapsed().as_secs_f64(),
        rows as f64 / t.elapsed().as_secs_f64()
    );
    let all_tenants: Vec<i32> = (1..=TENANTS as i32).collect();
    let keys_all = last_ids(rows, &all_tenants);
    let keys_some = last_ids(rows, &SOME_TENANTS);
    let mut catchup = Vec::new();

    // (e) pg_recvlogical to /dev/null, up to the position after the writes.
    let ticks = clock_ticks();
    let servers_since = |at: (f64, f64)| {
        let now = clusters_cpu(&source, &target, ticks);
        (now.0 - at.0, now.1 - at.1)
    };
    let port = source.port().to_string();
    let cpu_at = clusters_cpu(&source, &target, ticks);
    let t = Instant::now();
    let (ssl_var, ssl_mode) = libpq_env();
    let status = tokio::process::Command::new("pg_recvlogical")
        .env(ssl_var, ssl_mode)
        .args([
            "-h",
            &host(&source),
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "bench",
        ])
        .args([
            "--slot",
            "recv_e",
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o", "publication_names=pg_pub"])
        .args(["--endpos", &endpos])
        .status()
        .await?;
    let secs_e = t.elapsed().as_secs_f64();
    // Its walsender ends after the client: count its CPU once it has.
    wait_slot_released(&src, "recv_e").await;
    let servers_e = servers_since(cpu_at);
    if !status.success() {
        bail!("pg_recvlogical failed: {status}");
    }
    drop_slot(&src, "recv_e").await;
    println!("(e) pg_recvlogical: {secs_e:.2}s");

    // (a) PostgreSQL's subscription.
    let tgt_a = connect(&dsn(&target, "sub_a")).await?;
    tgt_a.batch_execute("CHECKPOINT").await?;
    let cpu_at = clusters_cpu(&source, &target, ticks);
    let t = Instant::now();
    tgt_a
        .batch_execute("ALTER SUBSCRIPTION sub_a ENABLE")
        .await?;
    let done = wait_for_keys(&tgt_a, "bench.t", &keys_all).await?;
    let secs_a = done.duration_since(t).as_secs_f64();
    let servers_cpu = servers_since(cpu_at);
    let rows_a = count(&tgt_a, "SELECT count(*) FROM bench.t").await?;
    tgt_a.batch_execute("DROP SUBSCRIPTION sub_a").await?;
    println!("(a) subscription: {secs_a:.2}s, {rows_a} rows on the target");
    catchup.push(CatchUp {
        label: "(a) PostgreSQL subscription",
        target_rows: rows_a,
        secs: secs_a,
        figures: None,
        servers_cpu,
    });

    // (b) and (c): ours, resumed from the primed slots.
    for (label, spec, db, keys) in [
        (
            "(b) ours PG→PG, 50 of 50 tenants",
            &spec_b,
            "ours_b",
            &keys_all,
        ),
        (
            "(c) ours PG→PG, 5 of 50 tenants",
            &spec_c,
            "ours_c",
            &keys_some,
        ),
        (
            "(c') ours PG→PG, 5 of 50 tenants, filtered in our operator only",
            &spec_c_op,
            "ours_c_op",
            &keys_some,
        ),
    ] {
        let tgt = connect(&dsn(&target, db)).await?;
        tgt.batch_execute("CHECKPOINT").await?;
        let cpu_at = clusters_cpu(&source, &target, ticks);
        let t = Instant::now();
        let mut child = JobChild::spawn(spec).await?;
        let done = wait_for_keys(&tgt, "bench.t", keys).await?;
        let secs = done.duration_since(t).as_secs_f64();
        let servers_cpu = servers_since(cpu_at);
        let figures = child.stats().await?;
        child.stop().await?;
        let n = count(&tgt, "SELECT count(*) FROM bench.t").await?;
        drop_slot(&src, db).await;
        println!(
            "{label}: {secs:.2}s, {n} rows on the target, cpu {:.2}s, sink busy {:.0}%, peak RSS {} MiB, {}",
            figures.cpu_s,
            100.0 * figures.apply_s / secs,
            figures.hwm_kb / 1024,
            socket_reads(&figures)
        );
        catchup.push(CatchUp {
            label,
            target_rows: n,
            secs,
            figures: Some(figures),
            servers_cpu,
        });
    }
    // (d): ours into the cold tier only, resumed from its primed slot.
    let cold_note;
    {
        let cpu_at = clusters_cpu(&source, &target, ticks);
        let t = Instant::now();
        let mut child = JobChild::spawn(&spec_d).await?;
        let done = wait_for_cold_rows(&cold_d, "bench.t", rows as u64).await?;
        let secs = done.duration_since(t).as_secs_f64();
        let servers_cpu = servers_since(cpu_at);
        let figures = child.stats().await?;
        child.stop().await?;
        let n = cold_open_versions(&cold_d, "bench.t")?;
        let listed = cold_listed(&cold_d, "bench.t")?;
        drop_slot(&src, "ours_d").await;
        let label = "(d) ours PG→Parquet, 50 of 50 tenants";
        println!(
            "{label}: {secs:.2}s, {n} versions in the cold tier ({} files, {:.1} bytes per version), cpu {:.2}s, peak RSS {} MiB, {}",
            listed.files,
            listed.bytes as f64 / n.max(1) as f64,
            figures.cpu_s,
            figures.hwm_kb / 1024,
            socket_reads(&figures)
        );
        let (compact_secs, compacted) = compact_cold(&cold_d, "bench.t")?;
        let n_after = cold_open_versions(&cold_d, "bench.t")?;
        if n_after != n {
            bail!("compaction changed the cold tier's versions: {n} before, {n_after} after");
        }
        cold_note = format!(
            "\n(d) wrote {} Parquet files, {:.1} bytes per version ({} versions). \
             Compacting them afterwards (each run of small files merged, as the sink does once a directory \
             lists `compact_min_files` of them) took {compact_secs:.2} s: {} files, {:.1} bytes per version, the same versions read back.\n",
            listed.files,
            listed.bytes as f64 / n.max(1) as f64,
            n,
            compacted.files,
            compacted.bytes as f64 / n.max(1) as f64,
        );
        catchup.push(CatchUp {
            label,
            target_rows: n,
            secs,
            figures: Some(figures),
            servers_cpu,
        });
    }
    let expected_some: i64 = (1..=rows)
        .filter(|g| SOME_TENANTS.contains(&((g % TENANTS) as i32 + 1)))
        .count() as i64;
    let catchup_ok = catchup[0].target_rows == rows
        && catchup[1].target_rows == rows
        && catchup[2].target_rows == expected_some
        && catchup[3].target_rows == expected_some
        && catchup[4].target_rows == rows;

    // ---- the target round trip our sink pays per transaction at low rates ----
    target.create_database("rt")?;
    target.psql("rt", target_txn::SCHEMA)?;
    let round_trip = target_round_trip(&dsn(&target, "rt")).await?;

    // ---- lag under sustained load ----
    let lag = lag::run(&source, &target, &lag_loads, lag_secs, lag_rounds).await?;

    // ---- memory: one big transaction ----
    let tgt_big = connect(&dsn(&target, "big")).await?;
    let big_keys = last_ids(big_rows, &all_tenants);
    let big = big_transaction_run(&src_bench, &spec_big, "big", big_rows, rss_cap_mib, async {
        wait_for_keys(&tgt_big, "bench.big", &big_keys).await?;
        count(&tgt_big, "SELECT count(*) FROM bench.big").await
    })
    .await?;
    drop_slot(&src, "ours_big").await;
    // The same in a history job into the cold tier: versions kept in the books and
    // written as Parquet.
    let cold_h = dir.path().join("cold_h");
    let spec_h = cold_job_spec("ours_bigh", &src_bench, "bench.bigh", &cold_h);
    let history = big_transaction_run(
        &src_bench,
        &spec_h,
        "bigh",
        history_rows,
        rss_cap_mib,
        async {
            wait_for_cold_rows(&cold_h, "bench.bigh", history_rows as u64).await?;
            Ok(cold_listed(&cold_h, "bench.bigh")?.rows as i64)
        },
    )
    .await?;
    let history_files = cold_listed(&cold_h, "bench.bigh")?;
    drop_slot(&src, "ours_bigh").await;

    // ---- the table ----
    let mut out = String::new();
    let ref_a = rows as f64 / secs_a;
    let ref_e = rows as f64 / secs_e;
    writeln!(
        out,
        "Catch-up: {rows} rows (50 tenants, 1,000 rows per transaction) written while replication was stopped; timed until the target has them.\n"
    )?;
    writeln!(out, "| case | rows on target | seconds | source rows/s | target rows/s | vs (a) | vs (e) | CPU s / M source rows | source server CPU s / M | target server CPU s / M | peak RSS |")?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let per_m = |cpu: f64| format!("{:.2}", cpu / (rows as f64 / 1e6));
    for c in &catchup {
        let rate = rows as f64 / c.secs;
        let (cpu, rss) = match c.figures {
            Some(f) => (
                format!("{:.2}", f.cpu_s / (rows as f64 / 1e6)),
                format!("{} MiB", f.hwm_kb / 1024),
            ),
            None => ("n/a (server)".into(), "n/a (server)".into()),
        };
        writeln!(
            out,
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {cpu} | {} | {} | {rss} |",
            c.label,
            c.target_rows,
            c.secs,
            rate,
            c.target_rows as f64 / c.secs,
            rate / ref_a,
            rate / ref_e,
            per_m(c.servers_cpu.0),
            per_m(c.servers_cpu.1),
        )?;
    }
    writeln!(
        out,
        "| (e) pg_recvlogical → /dev/null | – | {secs_e:.2} | {ref_e:.0} | – | {:.2} | 1.00 | n/a | {} | – | n/a |",
        ref_e / ref_a,
        per_m(servers_e.0)
    )?;
    if let Some(floor) = servers_floor(&catchup, secs_a) {
        out.push_str(&floor);
    }
    out.push_str(&cold_note);
    if !catchup_ok {
        writeln!(
            out,
            "\n**Row counts wrong**: expected {rows} for (a)/(b)/(d) and {expected_some} for (c)."
        )?;
    }
    lag::write_tables(&mut out, &lag, lag_secs, lag_rounds)?;
    let [(b2b_50, b2b_99), (idle_50, idle_99)] = round_trip;
    write!(
        out,
        "\nRound trip of one 10-row target transaction sent as our sink sends it (pipelined, with the checkpoint), \
         measured on the target in this run, P50 / P99 ms: back to back {b2b_50:.2} / {b2b_99:.2}; \
         after 2 ms idle (the gap between transactions at 5k rows/s) {idle_50:.2} / {idle_99:.2}."
    )?;
    if let Some(a) = lag
        .iter()
        .find(|r| r.who.starts_with("(a)") && r.rate == LAG_LOADS[0].rate)
    {
        write!(
            out,
            " The subscription's whole lag at {} rows/s: {:.2} / {:.2} (its apply worker writes inside the target, with no round trip).",
            a.rate, a.p50, a.p99
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "\nMemory of ours (peak RSS, VmHWM of a fresh process per run):\n"
    )?;
    writeln!(out, "| run | rows | seconds | rows/s | peak RSS |")?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for c in &catchup[1..] {
        if let Some(f) = c.figures {
            writeln!(
                out,
                "| catch-up {} | {} | {:.2} | {:.0} | {} MiB |",
                c.label.split_inclusive(')').next().unwrap_or(c.label),
                rows,
                c.secs,
                rows as f64 / c.secs,
                f.hwm_kb / 1024
            )?;
        }
    }
    for (run, what) in [
        (&big, "into the target"),
        (&history, "with history, into the cold tier"),
    ] {
        let label = format!("one transaction of {} rows {what}", run.rows);
        match run.figures {
            Some(f) => writeln!(
                out,
                "| {label}{} | {} | {:.1} | {:.0} | {} MiB |",
                if run.landed == run.rows {
                    ""
                } else {
                    " (**count wrong**)"
                },
                run.landed,
                run.secs,
                run.rows as f64 / run.secs,
                f.hwm_kb / 1024
            )?,
            None => writeln!(
                out,
                "| {label} | not applied (stopped) | {:.1} | – | > {rss_cap_mib} MiB (cap) |",
                run.secs
            )?,
        }
    }
    writeln!(
        out,
        "\nThe history transaction landed in {} Parquet files over 50 tenants ({:.1} bytes per version).",
        history_files.files,
        history_files.bytes as f64 / history_files.rows.max(1) as f64
    )?;

    let header = run_header(
        &pg_version,
        rows,
        (lag_secs, lag_rounds),
        big_rows,
        history_rows,
        bench_started,
    )?;
    println!("\n{header}\n{out}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/e2e.md");
    let mut file_text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# End-to-end benchmark results\n\nAppended by `cargo bench --bench e2e` (see `benches/e2e.rs`); newest last.\n"
            .to_string()
    });
    write!(file_text, "\n{header}\n{out}")?;
    std::fs::write(path, file_text)?;
    println!("appended to {path}");
    Ok(())
}

fn run_header(
    pg_version: &str,
    rows: i64,
    (lag_secs, lag_rounds): (u64, u64),
    big_rows: i64,
    history_rows: i64,
    started: Instant,
) -> anyhow::Result<String> {
    let sh = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let mut commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    if !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" + uncommitted changes");
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Ok(format!(
        "## {date}\n\nMachine: {cores} cores, {:.1} GiB RAM; commit {commit}; PostgreSQL {pg_version}; \
         our workers {workers}, async threads {async_threads}; clients over {transport}; HELIOS_BENCH_ROWS={rows} HELIOS_BENCH_LAG_SECS={lag_secs} HELIOS_BENCH_LAG_ROUNDS={lag_rounds} HELIOS_BENCH_BIG_TXN_ROWS={big_rows} HELIOS_BENCH_HISTORY_TXN_ROWS={history_rows}; \
         whole run {:.0} s.\n",
        mem_kb / 1024.0 / 1024.0,
        started.elapsed().as_secs_f64(),
        workers = bench_workers(),
        async_threads = bench_async_threads(),
        transport = Transport::of_env()?.describe(),
    ))
}

/// Resolves once the process `pid` has more than `cap_kb` resident.
/// One big-transaction memory run: what landed, how long it took, the child's figures
/// (`None`: stopped above the RSS cap).
struct BigRun {
    rows: i64,
    landed: i64,
    secs: f64,
    figures: Option<Figures>,
}

/// Primes `spec`'s job, writes one transaction of `rows` rows into `bench.<table>`, runs
/// the job until `landed` (which returns the rows that landed) or until its RSS passes the
/// cap, and stops it.
async fn big_transaction_run(
    src_dsn: &str,
    spec: &str,
    table: &str,
    rows: i64,
    rss_cap_mib: u64,
    landed: impl std::future::Future<Output = anyhow::Result<i64>>,
) -> anyhow::Result<BigRun> {
    prime(spec)
        .await
        .with_context(|| format!("priming the bench.{table} job"))?;
    let t = Instant::now();
    connect(src_dsn)
        .await?
        .execute(&INSERT_ROWS.replace("{table}", table), &[&1i64, &rows])
        .await?;
    println!(
        "wrote one transaction of {rows} rows into bench.{table} in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut child = JobChild::spawn(spec).await?;
    let pid = child.child.id().unwrap_or(0);
    let outcome = tokio::select! {
        n = landed => Some(n?),
        _ = rss_above(pid, rss_cap_mib * 1024) => None,
    };
    let secs = t.elapsed().as_secs_f64();
    let Some(n) = outcome else {
        let _ = child.child.kill().await;
        println!("bench.{table}: stopped after {secs:.1}s: RSS above {rss_cap_mib} MiB");
        return Ok(BigRun {
            rows,
            landed: 0,
            secs,
            figures: None,
        });
    };
    let f = child.stats().await?;
    child.stop().await?;
    println!(
        "bench.{table}: {secs:.1}s, {n} rows landed, peak RSS {} MiB",
        f.hwm_kb / 1024
    );
    Ok(BigRun {
        rows,
        landed: n,
        secs,
        figures: Some(f),
    })
}

async fn rss_above(pid: u32, cap_kb: u64) {
    loop {
        let rss: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        if rss > cap_kb {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the servers alone spent during (b): the source's walsender decoding and the
/// target's apply. Spread over every core with a replicator that costs nothing, (b) could
/// not finish sooner than that CPU time divided by the cores; the line compares this
/// floor with the target of twice (a)'s rate.
fn servers_floor(catchup: &[CatchUp], secs_a: f64) -> Option<String> {
    let b = catchup.iter().find(|c| c.label.starts_with("(b)"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let servers = b.servers_cpu.0 + b.servers_cpu.1;
    let floor = servers / cores;
    Some(format!(
        "
Floor for (b) on {cores:.0} cores: the source and the target server spent {servers:.2} CPU s during (b) \
         ({:.2} + {:.2}), so even a replicator using no CPU could not finish in under {floor:.2} s ({:.2}× (a)); \
         2× (a) needs {:.2} s.\n",
        b.servers_cpu.0,
        b.servers_cpu.1,
        secs_a / floor,
        secs_a / 2.0,
    ))
}

/// Transactions per case of [`target_round_trip`].
const ROUND_TRIPS: usize = 1000;

/// Round trips of one 10-row target transaction sent as our sink sends it (pipelined,
/// with the checkpoint upsert), back to back and after 2 ms idle (the gap between
/// transactions at 5k rows/s), alternating in blocks of 100: (P50, P99) ms of each.
async fn target_round_trip(dsn: &str) -> anyhow::Result<[(f64, f64); 2]> {
    let client = connect(dsn).await?;
    let insert = client.prepare(target_txn::INSERT).await?;
    let checkpoint = client.prepare(target_txn::CHECKPOINT).await?;
    let mut times = [Vec::new(), Vec::new()];
    let mut next_id = 0;
    for block in 0..2 * ROUND_TRIPS / 100 {
        let idle = block % 2 == 1;
        for _ in 0..100 {
            let rows = target_txn::Rows::new(next_id);
            next_id += target_txn::ROWS;
            if idle {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let (job, scopes, lsns) = ("j", vec!["w0"], vec![rows.lsn.as_str()]);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&job, &scopes, &lsns];
            let started = Instant::now();
            target_txn::pipelined(&client, &insert, Some((&checkpoint, &params)), &rows).await?;
            times[usize::from(idle)].push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        let at = |p: f64| t[((t.len() - 1) as f64 * p) as usize];
        (at(0.5), at(0.99))
    }))
}
