//! Time limits an operator sets for applications on the source's or the target's database
//! or role (`statement_timeout`, `idle_in_transaction_session_timeout`, `lock_timeout`)
//! do not cut the replicator's own work short: a snapshot's `COPY` that reads and loads
//! for longer than the limit, a snapshot session waiting while other sessions load, and a
//! large source transaction applied in one target transaction.

use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(120);

const ROWS: &str = "
CREATE TABLE public.big (tenant_id int NOT NULL, id int NOT NULL, pad text, PRIMARY KEY (tenant_id, id));
INSERT INTO public.big SELECT 1 + i % 2, i, repeat('p', 100) || i FROM generate_series(1, 300000) i;
";
/// The test's own reads lift the limit for themselves.
const CHECK: &str = "SET statement_timeout = 0; \
     SELECT count(*), md5(string_agg(id::text || pad, ',' ORDER BY id)) FROM public.big WHERE tenant_id = 1";

/// The limits on database `db`, each new session's unless it sets its own.
fn limits(db: &str) -> Vec<String> {
    [
        "statement_timeout = '50ms'",
        "lock_timeout = '50ms'",
        "idle_in_transaction_session_timeout = '100ms'",
    ]
    .iter()
    .map(|setting| format!("ALTER DATABASE {db} SET {setting}"))
    .collect()
}

#[test]
fn application_time_limits_on_the_servers_do_not_cut_replication_short() {
    let env = Env::start(ROWS);
    for statement in limits("app") {
        env.on_source(&statement);
    }
    for statement in limits("replica") {
        env.on_target(&statement);
    }
    assert_eq!(
        env.on_source("SHOW statement_timeout"),
        "50ms",
        "a new session on the source gets the limit"
    );
    let job = env.job_file("limits", "[1]", &["public.big"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    // One source transaction of 150,000 changed rows: one target transaction.
    env.on_source("SET statement_timeout = 0; UPDATE public.big SET pad = pad || 'x'");
    env.wait_converged(CHECK, WAIT);
    let out = repl.output();
    assert!(
        !out.contains("canceling statement due to statement timeout"),
        "{out}"
    );
    assert!(!out.contains("idle-in-transaction timeout"), "{out}");
    wait_for("the job to keep running", WAIT, || repl.is_running());
    assert!(repl.stop().success(), "{}", repl.output());
}
