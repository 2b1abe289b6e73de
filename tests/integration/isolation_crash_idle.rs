//! Tenant isolation under a random workload, crash safety under SIGKILL, and an idle slot
//! that keeps advancing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(90);

const SHOP: &str = "
CREATE TABLE public.accounts (tenant_id int NOT NULL, id int NOT NULL, balance numeric NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.ledger (tenant_id int NOT NULL, n bigint NOT NULL, amount numeric);
INSERT INTO public.accounts SELECT t, a, 100 FROM generate_series(1, 40) t, generate_series(1, 20) a;
";

/// One random transaction over all 40 tenants: inserts, updates, deletes, and rows that
/// move between tenants.
fn random_transaction(rng: &mut impl Rng, n: &mut u64) -> String {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.gen_range(1..6) {
        let t = rng.gen_range(1..=40);
        let a = rng.gen_range(1..=20);
        *n += 1;
        match rng.gen_range(0..10) {
            0..=3 => sql.push_str(&format!(
                "UPDATE public.accounts SET balance = balance + {} WHERE tenant_id = {t} AND id = {a};
                 INSERT INTO public.ledger VALUES ({t}, {n}, {});",
                rng.gen_range(-50..50),
                rng.gen_range(1..1000)
            )),
            4..=5 => sql.push_str(&format!(
                "INSERT INTO public.accounts VALUES ({t}, {}, 1) ON CONFLICT DO NOTHING;",
                100 + (*n % 500)
            )),
            6 => sql.push_str(&format!("DELETE FROM public.accounts WHERE tenant_id = {t} AND id = {a};")),
            7 => {
                // Move an account to another tenant (the key carries the tenant).
                let to = rng.gen_range(1..=40);
                sql.push_str(&format!(
                    "UPDATE public.accounts SET tenant_id = {to}, id = id + 1000 * {to} WHERE tenant_id = {t} AND id = {a}
                       AND NOT EXISTS (SELECT 1 FROM public.accounts WHERE tenant_id = {to} AND id = {a} + 1000 * {to});"
                ))
            }
            _ => sql.push_str(&format!("INSERT INTO public.ledger VALUES ({t}, {n}, NULL);")),
        }
    }
    sql.push_str("COMMIT;");
    sql
}

fn compare_queries(tenants: &str) -> [String; 2] {
    [
        format!("SELECT tenant_id, id, balance FROM public.accounts WHERE tenant_id IN ({tenants}) ORDER BY 1, 2"),
        format!("SELECT tenant_id, count(*), count(DISTINCT n), sum(amount) FROM public.ledger WHERE tenant_id IN ({tenants}) GROUP BY 1 ORDER BY 1"),
    ]
}

#[test]
fn a_job_for_tenants_3_and_7_never_carries_another_tenant() {
    let env = Env::start(SHOP);
    let job = env.job_file("iso", "[3, 7]", &["public.accounts", "public.ledger"]);
    let mut repl = Replicator::start(&job);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut n = 0;
    for _ in 0..150 {
        env.on_source(&random_transaction(&mut rng, &mut n));
    }
    for q in compare_queries("3, 7") {
        env.wait_converged(&q, WAIT);
    }
    for table in ["accounts", "ledger"] {
        let foreign = env.on_target(&format!(
            "SELECT count(*) FROM public.{table} WHERE tenant_id NOT IN (3, 7)"
        ));
        assert_eq!(foreign, "0", "rows of other tenants in {table}");
    }
    // The tenant filter is pushed into the publication where PostgreSQL allows it (the
    // tenant column is in the replica identity of accounts, not of the keyless ledger).
    let filters = env.on_source(
        "SELECT string_agg(tablename || '=' || coalesce(rowfilter, '-'), ' ' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'pub_iso'",
    );
    assert!(
        filters.starts_with("accounts=(tenant_id = ANY"),
        "{filters}"
    );
    assert!(filters.ends_with("ledger=-"), "{filters}");
    let letters = env.on_target("SELECT count(*) FROM helios.dead_letters");
    assert_eq!(letters, "0");
    let out = repl.output();
    for other in [1, 2, 4, 5, 6, 8, 11, 12, 13, 40] {
        assert!(
            !out.contains(&format!("tenant={other} ")),
            "log names tenant {other}:\n{out}"
        );
    }
    assert_eq!(repl.stop().code(), Some(0));
}

/// Random transactions go to the source while `job` runs once per entry of `workers`
/// (that many dataflow workers), each run killed with SIGKILL after a random pause in
/// `pause_ms`; then a last run with 2 workers catches up. Checks that the target converges
/// on `tenants` with no ledger row applied twice; returns the last run, still going.
fn crash_runs(
    env: &Arc<Env>,
    job: &std::path::Path,
    (writer_seed, pause_seed): (u64, u64),
    workers: &[usize],
    pause_ms: std::ops::Range<u64>,
    tenants: &str,
) -> Replicator {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer_seed);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                env.on_source(&random_transaction(&mut rng, &mut n));
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(pause_seed);
    for (round, &count) in workers.iter().enumerate() {
        let mut repl = Replicator::start_with_workers(job, count);
        if round == 0 {
            wait_for("the first job to start", WAIT, || {
                repl.output().contains("initial snapshot loaded")
            });
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(pause_ms.clone())));
        repl.kill();
    }
    let repl = Replicator::start_with_workers(job, 2);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for q in compare_queries(tenants) {
        env.wait_converged(&q, WAIT);
    }
    let dupes =
        env.on_target("SELECT count(*) - count(DISTINCT (tenant_id, n)) FROM public.ledger");
    assert_eq!(dupes, "0", "no ledger row applied twice");
    repl
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_duplicates_nothing() {
    let env = Arc::new(Env::start(SHOP));
    let job = env.job_file(
        "crash",
        "[2, 5, 9, 31]",
        &["public.accounts", "public.ledger"],
    );
    let mut repl = crash_runs(&env, &job, (42, 1234), &[2, 2], 500..2500, "2, 5, 9, 31");
    let out = repl.output();
    assert!(
        out.contains("resuming from the slot's confirmed position"),
        "the restart resumed:\n{out}"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// A sink records one watermark per group instead of a checkpoint per tenant; which
/// worker owns a tenant depends on the worker count. Killed runs with 2, 1 and 3 workers
/// must still skip exactly what was applied (the keyless ledger shows any duplicate).
#[test]
fn sigkill_with_changing_worker_counts_loses_nothing_and_duplicates_nothing() {
    let env = Arc::new(Env::start(SHOP));
    let job = env.job_file(
        "crash_workers",
        "\"all\"",
        &["public.accounts", "public.ledger"],
    );
    let all: Vec<String> = (1..=40).map(|t| t.to_string()).collect();
    let mut repl = crash_runs(&env, &job, (7, 99), &[2, 1, 3], 800..2500, &all.join(", "));
    let watermarks: i64 = env
        .on_target("SELECT count(*) FROM helios.checkpoints WHERE scope LIKE 'applied:%'")
        .parse()
        .expect("count");
    assert!(
        watermarks >= 3,
        "the sinks recorded watermarks ({watermarks})"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

#[test]
fn idle_slot_advances_while_other_tables_write() {
    let env = Env::start(&format!(
        "{SHOP} CREATE TABLE public.unrelated (id serial PRIMARY KEY, payload text);"
    ));
    let job = env.job_file("idle", "[1]", &["public.accounts"]);
    let mut repl = Replicator::start(&job);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    let slot_lsn = || {
        env.on_source(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'slot_idle'",
        )
    };
    let before = slot_lsn();
    env.on_source("INSERT INTO public.unrelated (payload) SELECT repeat('x', 200) FROM generate_series(1, 20000)");
    let written = env.on_source("SELECT pg_current_wal_lsn()");
    wait_for("the slot to pass the unrelated writes", WAIT, || {
        env.on_source(&format!(
            "SELECT confirmed_flush_lsn >= '{written}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'slot_idle'"
        )) == "t"
    });
    let after = slot_lsn();
    assert_ne!(before, after, "confirmed_flush_lsn moved");
    // The WAL the slot retains stays small.
    let retained = env.on_source(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) < 16 * 1024 * 1024 FROM pg_replication_slots WHERE slot_name = 'slot_idle'",
    );
    assert_eq!(retained, "t");
    assert_eq!(repl.stop().code(), Some(0));
}
