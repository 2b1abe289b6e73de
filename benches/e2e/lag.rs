//! The lag part of the end-to-end bench: paced load on the source, (a) and (b) taking
//! turns in rounds, percentiles over each replicator's rounds pooled, and the lag tables.
//!
//! Both replicators stay set up for the whole lag part, each on its own database, and each
//! rate runs in `rounds` rounds of `secs / rounds` seconds, (a) first in even rounds and
//! (b) first in odd ones. The machine's noise comes and goes over seconds (another VM on
//! the host, a stall of one server), and running (a) then (b) once each let one of them
//! meet a quiet spell and the other a loud one; taking turns spreads it over both. The
//! idle replicator's walsender still reads the other's WAL (and skips it): the same small
//! cost for both.
//!
//! `HELIOS_BENCH_LAG_VARIANT=K=V[,K=V]` sets up a second of ours (`(b')`, its process run
//! with those environment variables, e.g. `HELIOS_BENCH_ASYNC_THREADS=2` or
//! `HELIOS_BENCH_WORKER_PLACEMENT=own-thread`) that takes its turn in every round too, turns
//! rotating by round: a comparison of the setting within one run. Its slot adds a third walsender decoding
//! every row, so the machine is busier than in a plain run.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use helios_repl::embedded::pg_cluster::PgCluster;
use helios_repl::sinks::latency::LatencyStage;

use super::{connect, count, job_spec, pg_extra, JobChild, POLL};

/// The lag runs: row rate and client connections. The last is the fastest rate the source
/// sustains, from the 16 clients (`HELIOS_BENCH_LAG_TOP_RATE` overrides its rate;
/// 0 is unpaced).
pub(crate) const LAG_LOADS: [LagLoad; 3] = [
    LagLoad {
        rate: 5_000,
        clients: 8,
    },
    LagLoad {
        rate: 20_000,
        clients: 8,
    },
    LagLoad {
        rate: 35_000,
        clients: 16,
    },
];
/// Rounds per rate, each replicator once per round (`HELIOS_BENCH_LAG_ROUNDS`).
pub(crate) const DEFAULT_ROUNDS: u64 = 3;
const LAG_ROWS_PER_TXN: u64 = 10;
/// A lag row's lag in ms, as every lag query computes it: the later of the target's trigger
/// time and commit time, minus the source's `created_at`.
const LAG_MS: &str = "extract(epoch FROM greatest(applied_at, pg_xact_commit_timestamp(xmin)) - created_at)::float8 * 1000 AS lag";

const LAG_TABLE: &str = "CREATE SCHEMA bench;
CREATE TABLE bench.l (tenant_id int NOT NULL, id bigint NOT NULL, amount numeric(12,2),
    payload jsonb, note text, created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    applied_at timestamptz, PRIMARY KEY (tenant_id, id));";

const LAG_TRIGGER: &str = "CREATE FUNCTION bench.stamp() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER stamp BEFORE INSERT ON bench.l FOR EACH ROW EXECUTE FUNCTION bench.stamp();
ALTER TABLE bench.l ENABLE ALWAYS TRIGGER stamp;";

const LAG_INSERT: &str = "INSERT INTO bench.l (tenant_id, id, amount, payload, note)
    SELECT (g % 50) + 1, g, (g % 100000) / 100.0, jsonb_build_object('k', g), 'lag row ' || g
    FROM generate_series($1::bigint, $2::bigint) g";

/// The first id of the rows of rate `rate_index`, round `round`.
fn round_base(rate_index: usize, round: u64) -> i64 {
    (rate_index as i64 + 1) * 1_000_000_000 + round as i64 * 100_000_000
}

/// One lag run's load: rows per second (0: unpaced) from `clients` connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LagLoad {
    pub(crate) rate: u64,
    pub(crate) clients: u64,
}

/// One replicator at one rate, over all its rounds.
#[derive(Debug, Clone)]
pub(crate) struct LagRun {
    pub(crate) who: &'static str,
    pub(crate) rate: u64,
    achieved: f64,
    rows: i64,
    pub(crate) p50: f64,
    p95: f64,
    pub(crate) p99: f64,
    max: f64,
    /// The slowest round's drain.
    drain_s: f64,
    cpu_per_m: Option<f64>,
    /// Rows per transaction on the target (distinct `xmin`s of the run's rows).
    rows_per_target_txn: f64,
    /// Ours: where the lag goes and what a transaction costs the process.
    stages: Option<OurStages>,
    /// Each round's P99, in round order.
    round_p99: Vec<f64>,
}

/// Our process's view of a rate's rounds.
#[derive(Debug, Clone)]
pub(crate) struct OurStages {
    /// Each data-path stage's `P50/P99/max` ms, by `LatencyStage::ALL`.
    percentiles: Vec<String>,
    /// Context switches of the process's threads per source transaction: each hand-over
    /// between threads that finds the next one asleep costs one.
    switches_per_txn: f64,
}

/// What one round of one replicator wrote and measured.
struct Round {
    /// The ids it wrote: `first..=last`.
    first: i64,
    last: i64,
    /// Rows written (and verified on the target).
    rows: i64,
    load_secs: f64,
    drain_s: f64,
    p99: f64,
}

/// The two replicators of the lag part.
const SUBSCRIPTION: &str = "(a) PostgreSQL subscription";
const OURS: &str = "(b) ours PG→PG";

/// Sets up (a) and (b), runs every load in `rounds` rounds taking turns and returns one
/// row per replicator and load, (a)'s rows first.
pub(crate) async fn run(
    source: &PgCluster,
    target: &PgCluster,
    loads: &[LagLoad],
    secs: u64,
    rounds: u64,
) -> anyhow::Result<Vec<LagRun>> {
    source.psql("lag_a", LAG_TABLE)?;
    source.psql("lag_a", "CREATE PUBLICATION lag_pub FOR TABLE bench.l")?;
    target.psql("lag_a", LAG_TABLE)?;
    target.psql("lag_a", LAG_TRIGGER)?;
    target.psql(
        "lag_a",
        &format!(
            "CREATE SUBSCRIPTION lag_a CONNECTION '{}' PUBLICATION lag_pub WITH (copy_data = false)",
            super::dsn(source, "lag_a")
        ),
    )?;
    let tgt_a = connect(&super::dsn(target, "lag_a")).await?;
    // Wait until the apply worker streams: one row goes through.
    write_lag_probe(&super::dsn(source, "lag_a")).await?;
    wait_count(&tgt_a, 1, Duration::from_secs(60)).await?;

    let mut ours = vec![Ours::start(source, target, OURS, "lag_b", &[]).await?];
    // HELIOS_BENCH_LAG_VARIANT=K=V[,K=V]: a second of ours, its process run with that
    // environment, takes its turn in every round beside (a) and (b).
    if let Some(env) = variant_env()? {
        let settings: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let who: &'static str =
            Box::leak(format!("(b') ours PG→PG, {}", settings.join(" ")).into_boxed_str());
        ours.push(Ours::start(source, target, who, "lag_c", &env).await?);
    }

    let round_secs = secs as f64 / rounds as f64;
    let turns = 1 + ours.len() as u64;
    let (mut subscription, mut results) = (Vec::new(), Vec::new());
    for (i, &load) in loads.iter().enumerate() {
        // Each child's stage samples since this call are this load's.
        for o in &mut ours {
            o.child.latency().await?;
            o.rounds.clear();
            (o.cpu_s, o.switches) = (0.0, 0);
        }
        let mut rounds_a = Vec::new();
        for round in 0..rounds {
            let base = round_base(i, round);
            // Turn `k` of round `r` goes to replicator `(r + k) % turns`, (a) being 0.
            for turn in 0..turns {
                match ((round + turn) % turns) as usize {
                    0 => {
                        let r = lag_round(
                            SUBSCRIPTION,
                            &super::dsn(source, "lag_a"),
                            &tgt_a,
                            load,
                            round_secs,
                            base,
                            None,
                        )
                        .await?;
                        rounds_a.push(r);
                    }
                    k => ours[k - 1].round(source, load, round_secs, base).await?,
                }
            }
        }
        subscription.push(pooled(SUBSCRIPTION, load.rate, &tgt_a, &rounds_a, None, None).await?);
        for o in &mut ours {
            results.push(o.pooled(load).await?);
        }
    }
    tgt_a.batch_execute("DROP SUBSCRIPTION lag_a").await?;
    for o in ours {
        o.child.stop().await?;
    }
    subscription.extend(results);
    Ok(subscription)
}

/// The variant's environment (`HELIOS_BENCH_LAG_VARIANT`), `None` when unset.
fn variant_env() -> anyhow::Result<Option<Vec<(String, String)>>> {
    let Ok(text) = std::env::var("HELIOS_BENCH_LAG_VARIANT") else {
        return Ok(None);
    };
    let pairs = text
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("HELIOS_BENCH_LAG_VARIANT: `{pair}` is not KEY=VALUE"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(pairs))
}

/// One of our replicators in the lag part: its child process, its own database on both
/// clusters, and what its rounds at the current load measured.
struct Ours {
    who: &'static str,
    db: &'static str,
    child: JobChild,
    target: tokio_postgres::Client,
    rounds: Vec<Round>,
    cpu_s: f64,
    switches: u64,
}

impl Ours {
    /// Starts a job replicating `db`'s lag table, its process with `env` set on top of
    /// the bench's, and waits until a row goes through.
    async fn start(
        source: &PgCluster,
        target: &PgCluster,
        who: &'static str,
        db: &'static str,
        env: &[(String, String)],
    ) -> anyhow::Result<Ours> {
        source.create_database(db)?;
        target.create_database(db)?;
        source.psql(db, LAG_TABLE)?;
        let mut spec = job_spec(
            db,
            &super::dsn(source, db),
            "bench.l",
            "\"all\"",
            &super::dsn(target, db),
        );
        if let Some((_, extra)) = env.iter().find(|(k, _)| k == "HELIOS_BENCH_PG_EXTRA") {
            spec.push_str(&pg_extra(Some(extra)));
        }
        if let Some((_, extra)) = env.iter().find(|(k, _)| k == "HELIOS_BENCH_SOURCE_EXTRA") {
            let slot = format!("slot = \"{db}\"\n");
            spec = spec.replacen(&slot, &format!("{slot}{}", pg_extra(Some(extra))), 1);
        }
        let mut child = JobChild::spawn_with_env(&spec, env).await?;
        child.expect("streaming", Duration::from_secs(120)).await?;
        target.psql(db, LAG_TRIGGER)?;
        let tgt = connect(&super::dsn(target, db)).await?;
        write_lag_probe(&super::dsn(source, db)).await?;
        wait_count(&tgt, 1, Duration::from_secs(60)).await?;
        Ok(Ours {
            who,
            db,
            child,
            target: tgt,
            rounds: Vec::new(),
            cpu_s: 0.0,
            switches: 0,
        })
    }

    /// One round of `load`, with the child's CPU and context switches around it.
    async fn round(
        &mut self,
        source: &PgCluster,
        load: LagLoad,
        secs: f64,
        base: i64,
    ) -> anyhow::Result<()> {
        let before = self.child.stats().await?;
        let r = lag_round(
            self.who,
            &super::dsn(source, self.db),
            &self.target,
            load,
            secs,
            base,
            Some(&mut self.child),
        )
        .await?;
        let after = self.child.stats().await?;
        self.cpu_s += after.cpu_s - before.cpu_s;
        self.switches += after.switches.saturating_sub(before.switches);
        self.rounds.push(r);
        Ok(())
    }

    /// The figures of this load's rounds, with the child's stage percentiles.
    async fn pooled(&mut self, load: LagLoad) -> anyhow::Result<LagRun> {
        let who = self.who;
        let text = self.child.latency().await?;
        println!(
            "stages of {who} at {} rows/s, P50/P99/max ms: {text}",
            rate_label(load.rate)
        );
        let percentiles = LatencyStage::ALL
            .iter()
            .map(|s| {
                text.split_whitespace()
                    .find_map(|p| p.strip_prefix(s.as_str())?.strip_prefix('='))
                    .unwrap_or("–")
                    .replace('/', " / ")
            })
            .collect();
        let rows: i64 = self.rounds.iter().map(|r| r.rows).sum();
        let cpu_per_m = Some(self.cpu_s / (rows as f64 / 1e6));
        let stages = OurStages {
            percentiles,
            switches_per_txn: self.switches as f64
                / (rows as f64 / LAG_ROWS_PER_TXN as f64).max(1.0),
        };
        println!(
            "{who} at {} rows/s: {:.1} context switches of our threads per source transaction",
            rate_label(load.rate),
            stages.switches_per_txn
        );
        pooled(
            who,
            load.rate,
            &self.target,
            &self.rounds,
            cpu_per_m,
            Some(stages),
        )
        .await
    }
}

async fn write_lag_probe(dsn: &str) -> anyhow::Result<()> {
    let client = connect(dsn).await?;
    client.execute(LAG_INSERT, &[&1i64, &1i64]).await?;
    Ok(())
}

async fn wait_count(
    target: &tokio_postgres::Client,
    at_least: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(n) = count(target, "SELECT count(*) FROM bench.l").await {
            if n >= at_least {
                return Ok(());
            }
        }
        if start.elapsed() > limit {
            bail!("the lag table did not reach {at_least} rows within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Paced inserts at the load's rate for `secs`, ids from `base`; waits for the target to
/// drain, verifies the round's row count and computes its P99. With
/// `HELIOS_BENCH_LAG_TIMELINE`, `child` (ours) is asked for its stages every second of the
/// load.
async fn lag_round(
    who: &'static str,
    source_dsn: &str,
    target: &tokio_postgres::Client,
    load: LagLoad,
    secs: f64,
    base: i64,
    child: Option<&mut JobChild>,
) -> anyhow::Result<Round> {
    let LagLoad {
        rate,
        clients: n_clients,
    } = load;
    let paced = rate > 0;
    let txns_per_s = rate as f64 / LAG_ROWS_PER_TXN as f64;
    let total_txns = if paced {
        (txns_per_s * secs) as u64
    } else {
        u64::MAX
    };
    let mut clients = Vec::new();
    for _ in 0..n_clients {
        let c = connect(source_dsn).await?;
        // The clusters run with `synchronous_commit = off`, where a commit reaches the WAL
        // (and so the walsenders) only at the WAL writer's next round (up to 3 x 200 ms):
        // that, not replication, would be the lag. The load commits synchronously
        // (fsync is off, so this costs no disk flush).
        c.batch_execute("SET synchronous_commit = on").await?;
        let stmt = c.prepare(LAG_INSERT).await?;
        clients.push((c, stmt));
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let deadline = start + Duration::from_secs_f64(secs);
    let began = Instant::now() + Duration::from_millis(50);
    // Transaction `i` writes ids `base + 10 i ..`; each client takes the next `i`.
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (client, stmt) in clients {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut done: Vec<u64> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if paced {
                    if i >= total_txns {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / txns_per_s);
                    tokio::time::sleep_until(due).await;
                } else if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let first = base + (i * LAG_ROWS_PER_TXN) as i64;
                let last = first + LAG_ROWS_PER_TXN as i64 - 1;
                client.execute(&stmt, &[&first, &last]).await?;
                done.push(i);
            }
            anyhow::Ok(done)
        }));
    }
    let load = async {
        let mut done: Vec<u64> = Vec::new();
        let mut tail_txns: Vec<u64> = Vec::new();
        for t in tasks {
            let mine = t.await??;
            tail_txns.extend(mine.last().copied());
            done.extend(mine);
        }
        anyhow::Ok((done, tail_txns))
    };
    let timeline = std::env::var_os("HELIOS_BENCH_LAG_TIMELINE").is_some();
    let (done, tail_txns) = match child {
        Some(child) if timeline => {
            tokio::pin!(load);
            let mut second = 0;
            loop {
                tokio::select! {
                    r = &mut load => break r?,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let text = child.latency_slice().await?;
                        println!("  stages of {who}, second {second}: {text}");
                        second += 1;
                    }
                }
            }
        }
        _ => load.await?,
    };
    let load_end = Instant::now();
    let load_secs = load_end.duration_since(began).as_secs_f64();
    let expected = (done.len() as u64 * LAG_ROWS_PER_TXN) as i64;
    let last_id =
        base + ((done.iter().max().copied().unwrap_or(0) + 1) * LAG_ROWS_PER_TXN) as i64 - 1;
    // Drained: the last transaction of every client is on the target (an index lookup per
    // row, cheap enough to poll every 10 ms), then the whole round's count is verified.
    let ids: Vec<i64> = tail_txns
        .iter()
        .flat_map(|&i| {
            let first = base + (i * LAG_ROWS_PER_TXN) as i64;
            first..first + LAG_ROWS_PER_TXN as i64
        })
        .collect();
    let tenants: Vec<i32> = ids.iter().map(|g| (g % 50) as i32 + 1).collect();
    let tail_sql = "SELECT count(*) FROM bench.l WHERE (tenant_id, id) IN \
                    (SELECT * FROM unnest($1::int[], $2::bigint[]))";
    let count_sql = format!("SELECT count(*) FROM bench.l WHERE id BETWEEN {base} AND {last_id}");
    let drained_at = loop {
        let n: i64 = target
            .query_one(tail_sql, &[&tenants, &ids])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == tenants.len() as i64 {
            break Instant::now();
        }
        if load_end.elapsed() > Duration::from_secs(300) {
            bail!(
                "{who} at {} rows/s: the last transactions are not on the target after 300 s",
                rate_label(rate)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        let n = count(target, &count_sql).await?;
        if n >= expected {
            break;
        }
        if load_end.elapsed() > Duration::from_secs(300) {
            bail!(
                "{who} at {} rows/s: only {n} of {expected} rows after 300 s",
                rate_label(rate)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p99: f64 = target
        .query_one(
            &format!(
                "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)
                 FROM (SELECT {LAG_MS} FROM bench.l WHERE id BETWEEN {base} AND {last_id}) s"
            ),
            &[],
        )
        .await?
        .get(0);
    if std::env::var_os("HELIOS_BENCH_LAG_TIMELINE").is_some() {
        print_lag_timeline(who, target, base, last_id).await?;
    }
    let drain_s = drained_at.duration_since(load_end).as_secs_f64();
    println!(
        "lag {who} at {} rows/s, one round: achieved {:.0}, P99 {p99:.1} ms, drained {drain_s:.2}s after the load",
        rate_label(rate),
        expected as f64 / load_secs,
    );
    Ok(Round {
        first: base,
        last: last_id,
        rows: expected,
        load_secs,
        drain_s,
        p99,
    })
}

/// One replicator's figures at one rate over all its rounds' rows.
async fn pooled(
    who: &'static str,
    rate: u64,
    target: &tokio_postgres::Client,
    rounds: &[Round],
    cpu_per_m: Option<f64>,
    stages: Option<OurStages>,
) -> anyhow::Result<LagRun> {
    let ranges: Vec<String> = rounds
        .iter()
        .map(|r| format!("id BETWEEN {} AND {}", r.first, r.last))
        .collect();
    let row = target
        .query_one(
            &format!(
                "SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag),
                        count(*)::float8 / greatest(count(DISTINCT xid), 1)
                 FROM (SELECT {LAG_MS},
                              xmin::text AS xid
                       FROM bench.l WHERE {}) s",
                ranges.join(" OR ")
            ),
            &[],
        )
        .await?;
    let p: Vec<f64> = row.get(1);
    let rows: i64 = rounds.iter().map(|r| r.rows).sum();
    let load_secs: f64 = rounds.iter().map(|r| r.load_secs).sum();
    let r = LagRun {
        who,
        rate,
        achieved: rows as f64 / load_secs,
        rows: row.get(0),
        p50: p[0],
        p95: p[1],
        p99: p[2],
        max: row.get(2),
        drain_s: rounds.iter().map(|r| r.drain_s).fold(0.0, f64::max),
        cpu_per_m,
        rows_per_target_txn: row.get(3),
        stages,
        round_p99: rounds.iter().map(|r| r.p99).collect(),
    };
    println!(
        "lag {who} at {} rows/s: achieved {:.0}, P50 {:.1} ms, P99 {:.1} ms, max {:.1} ms, drained {:.2}s after the load",
        rate_label(rate), r.achieved, r.p50, r.p99, r.max, r.drain_s
    );
    Ok(r)
}

/// `HELIOS_BENCH_LAG_TIMELINE=1`: per second of the load, the rows, target transactions,
/// P50/P99/max lag, to see whether the tail is steady or comes in stalls.
async fn print_lag_timeline(
    who: &str,
    target: &tokio_postgres::Client,
    base: i64,
    last_id: i64,
) -> anyhow::Result<()> {
    let rows = target
        .query(
            &format!(
                "SELECT s, count(*), count(DISTINCT xid), percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag)
                 FROM (SELECT extract(epoch FROM created_at - min(created_at) OVER ())::int AS s,
                              xmin::text AS xid,
                              {LAG_MS}
                       FROM bench.l WHERE id BETWEEN {base} AND {last_id}) t
                 GROUP BY s ORDER BY s"
            ),
            &[],
        )
        .await?;
    println!("lag timeline of {who}: second, rows, target txns, P50 / P99 / max ms");
    for r in rows {
        let (s, n, txns, p50, p99, max): (i32, i64, i64, f64, f64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        println!("  {s:>3}s {n:>7} {txns:>6}  {p50:>7.1} / {p99:>7.1} / {max:>7.1}");
    }
    Ok(())
}

/// The lag table and the table of where our lag goes, as the results file shows them.
pub(crate) fn write_tables(
    out: &mut String,
    lag: &[LagRun],
    secs: u64,
    rounds: u64,
) -> std::fmt::Result {
    writeln!(
        out,
        "\nLag under sustained load: {secs} s per rate and replicator, in {rounds} rounds of {:.0} s taking turns ((a) first in odd rounds, (b) in even ones); \
         10 rows per transaction, {} client connections ({} for the fastest rate); \
         lag = later of target trigger time and target commit time − source `created_at`, percentiles over all rounds' rows.\n",
        secs as f64 / rounds as f64,
        LAG_LOADS[0].clients,
        LAG_LOADS[2].clients
    )?;
    writeln!(out, "| replicator | target rows/s | achieved rows/s | rows | P50 ms | P95 ms | P99 ms | max ms | P99 by round ms | drained s after load | CPU s / M rows | rows per target txn |")?;
    writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in lag {
        let by_round: Vec<String> = r.round_p99.iter().map(|p| format!("{p:.1}")).collect();
        writeln!(
            out,
            "| {} | {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.2} | {} | {:.1} |",
            r.who,
            rate_label(r.rate),
            r.achieved,
            r.rows,
            r.p50,
            r.p95,
            r.p99,
            r.max,
            by_round.join(", "),
            r.drain_s,
            r.cpu_per_m
                .map(|c| format!("{c:.2}"))
                .unwrap_or("n/a (server)".into()),
            r.rows_per_target_txn
        )?;
    }
    writeln!(
        out,
        "\nWhere our lag goes, per source transaction (P50 / P99 / max ms; `helios_transaction_stage_seconds`): \
         source commit → our reader has the commit; reader → the sink task takes it; reader → durable on the target; \
         context switches of our threads per source transaction (its thread hand-overs).\n"
    )?;
    writeln!(
        out,
        "| target rows/s | source → reader | reader → sink | reader → durable | our switches / source txn |"
    )?;
    writeln!(out, "|---:|---|---|---|---:|")?;
    for r in lag {
        if let Some(stages) = &r.stages {
            let rate = match r.who {
                OURS => rate_label(r.rate),
                who => format!("{} {who}", rate_label(r.rate)),
            };
            writeln!(
                out,
                "| {rate} | {} | {:.1} |",
                stages.percentiles.join(" | "),
                stages.switches_per_txn
            )?;
        }
    }
    Ok(())
}

/// A lag run's target rate as the table shows it.
pub(crate) fn rate_label(rate: u64) -> String {
    if rate == 0 {
        "max".into()
    } else {
        rate.to_string()
    }
}
