//! Transactions the source streams while they are still running (pgoutput protocol
//! version 2, `streaming 'on'`): with `logical_decoding_work_mem` at its minimum every
//! transaction of a few thousand rows is streamed in blocks, interleaved with others. They
//! must land whole at their commit, without the changes of rolled-back savepoints, and an
//! aborted one must leave nothing; a replicator killed while one is half streamed must
//! apply it once after the restart.

use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(180);

const TABLES: &str = "CREATE TABLE public.items (tenant_id int NOT NULL, id bigint NOT NULL,
        v text, PRIMARY KEY (tenant_id, id));
    INSERT INTO public.items SELECT g % 8, g, 'before ' || g FROM generate_series(1, 1000) g;";

const PER_TENANT: &str = "SELECT tenant_id, count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM public.items WHERE tenant_id IN (1, 2, 5) GROUP BY 1 ORDER BY 1";

/// The source streams any transaction past 64 kB of changes.
fn stream_early(env: &Env) {
    env.on_source("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
    env.on_source("SELECT pg_reload_conf()");
}

/// Transactions of `slot` the source has streamed so far.
fn streamed_txns(env: &Env, slot: &str) -> u64 {
    env.on_source(&format!(
        "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = '{slot}'"
    ))
    .parse()
    .unwrap_or(0)
}

/// A transaction that is streamed while it runs: inserts, a savepoint rolled back (its
/// inserts and updates must not land), one released, a pause of `pause_s` while others
/// commit, then deletes and more inserts.
fn long_transaction(pause_s: f64) -> String {
    format!(
        "BEGIN;
         INSERT INTO public.items SELECT g % 8, g, 'first ' || g || repeat('x', 60) FROM generate_series(10001, 20000) g;
         SAVEPOINT a;
         INSERT INTO public.items SELECT g % 8, g, 'rolled back ' || g FROM generate_series(20001, 25000) g;
         UPDATE public.items SET v = 'rolled back update' WHERE id BETWEEN 1 AND 500;
         ROLLBACK TO a;
         SAVEPOINT b;
         UPDATE public.items SET v = 'released update ' || id WHERE id BETWEEN 1 AND 300;
         RELEASE b;
         SELECT pg_sleep({pause_s});
         DELETE FROM public.items WHERE id BETWEEN 301 AND 400;
         INSERT INTO public.items SELECT g % 8, g, 'last ' || g || repeat('y', 60) FROM generate_series(30001, 40000) g;
         COMMIT;"
    )
}

#[test]
fn streamed_transactions_land_whole_without_rolled_back_savepoints_or_aborts() {
    let env = std::sync::Arc::new(Env::start(TABLES));
    stream_early(&env);
    let job = env.job_file("streamed", "[1, 2, 5]", &["public.items"]);
    let mut repl = Replicator::start_inline(&job);
    wait_for("the initial copy", WAIT, || {
        repl.output().contains("initial snapshot loaded")
    });
    let long = {
        let env = env.clone();
        std::thread::spawn(move || env.on_source(&long_transaction(2.0)))
    };
    // While it is open: small transactions commit (and are applied before it), and a
    // large one is streamed and then rolled back.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        env.on_source(&format!(
            "INSERT INTO public.items SELECT g % 8, g, 'small {i}' FROM generate_series({}, {}) g",
            50_000 + i * 10,
            50_009 + i * 10
        ));
    }
    env.on_source(
        "BEGIN; INSERT INTO public.items SELECT g % 8, g, 'aborted ' || g || repeat('z', 60) \
         FROM generate_series(60001, 80000) g; ROLLBACK;",
    );
    wait_for(
        "a small transaction applied while the long one is open",
        WAIT,
        || {
            env.try_on_target("SELECT count(*) FROM public.items WHERE id BETWEEN 50000 AND 50049")
                .is_some_and(|n| n != "0")
        },
    );
    long.join().expect("long transaction");
    env.wait_converged(PER_TENANT, WAIT);
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM public.items WHERE id BETWEEN 20001 AND 25000 \
             OR id BETWEEN 60001 AND 80000 OR v LIKE 'rolled back%'"
        ),
        "0",
        "nothing of a rolled-back savepoint or an aborted transaction"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.items WHERE tenant_id NOT IN (1, 2, 5)"),
        "0"
    );
    assert!(
        streamed_txns(&env, "slot_streamed") >= 2,
        "the source streamed the long and the aborted transaction"
    );
    let out = repl.output();
    assert!(
        out.contains("streamed transaction committed; replaying it from its spool"),
        "{out}"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

#[test]
fn a_replicator_killed_inside_a_streamed_transaction_applies_it_once_after_restart() {
    let env = std::sync::Arc::new(Env::start(TABLES));
    stream_early(&env);
    let job = env.job_file("streamed_kill", "\"all\"", &["public.items"]);
    let mut repl = Replicator::start_inline(&job);
    wait_for("the initial copy", WAIT, || {
        repl.output().contains("initial snapshot loaded")
    });
    let long = {
        let env = env.clone();
        std::thread::spawn(move || env.on_source(&long_transaction(4.0)))
    };
    // Killed once part of it was streamed to us, while it is still open.
    wait_for("the long transaction to be streamed", WAIT, || {
        streamed_txns(&env, "slot_streamed_kill") >= 1
    });
    repl.kill();
    let mut repl = Replicator::start_inline(&job);
    long.join().expect("long transaction");
    let all = "SELECT tenant_id, count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM public.items GROUP BY 1 ORDER BY 1";
    env.wait_converged(all, WAIT);
    assert_eq!(repl.stop().code(), Some(0));
}
