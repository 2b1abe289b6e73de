//! A replication slot the source invalidated (`max_slot_wal_keep_size`: it removed WAL the
//! slot still needed) cannot be read again, and the changes since its confirmed position
//! are gone from the stream. The job starts over with a new slot and snapshot, whether it
//! finds the slot invalidated at its start or loses it while it runs, and the target
//! converges; before, the job failed with "cannot read from logical replication slot" at
//! every start until someone dropped the slot by hand. A slot about to be invalidated
//! (`unreserved`) is warned about while the job runs.

use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(90);

const ITEMS: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
INSERT INTO public.items SELECT 1 + i % 2, i, 'v' || i FROM generate_series(1, 20) i;
CREATE TABLE public.filler (x text);
";
const ROWS: &str = "SELECT tenant_id, id, v FROM public.items WHERE tenant_id = 1 ORDER BY 2";

/// Writes WAL (into a table the job does not carry), with a checkpoint after each step
/// if `checkpoint`, until the job's slot has the status `status`.
fn until_the_slot_is(env: &Env, slot: &str, status: &str, checkpoint: bool) {
    let query = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND wal_status = '{status}'"
    );
    wait_for(&format!("the slot's status to be {status}"), WAIT, || {
        env.on_source(
            "INSERT INTO public.filler SELECT repeat('x', 1000) FROM generate_series(1, 5000)",
        );
        env.on_source("SELECT pg_switch_wal()");
        if checkpoint {
            env.on_source("CHECKPOINT");
        }
        env.on_source(&query) == "1"
    });
}

#[test]
fn a_slot_the_source_invalidated_is_replaced_with_a_new_snapshot() {
    let env = Env::start(ITEMS);
    env.on_source("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'");
    env.on_source("SELECT pg_reload_conf()");
    let job = env.job_file("lost", "[1]", &["public.items"]);
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(ROWS, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());

    // Found invalidated at the start: the changes made meanwhile come with the snapshot.
    env.on_source(
        "INSERT INTO public.items SELECT 1, i, 'while stopped' FROM generate_series(101, 110) i; \
         UPDATE public.items SET v = 'changed' WHERE tenant_id = 1 AND id < 6; \
         DELETE FROM public.items WHERE tenant_id = 1 AND id = 7",
    );
    until_the_slot_is(&env, "slot_lost", "lost", true);
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(ROWS, WAIT);
    assert!(
        repl.output()
            .contains("the source invalidated the replication slot"),
        "{}",
        repl.output()
    );

    // Lost while the job runs: the target is held (a lock) so the slot cannot advance,
    // the source invalidates it (ending the job's session), the job starts over.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (holder, connection) = runtime
        .block_on(tokio_postgres::connect(
            &env.target_dsn(),
            tokio_postgres::NoTls,
        ))
        .expect("connect to the target");
    runtime.spawn(connection);
    runtime
        .block_on(holder.batch_execute("BEGIN; LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE"))
        .expect("lock the target table");
    env.on_source(
        "INSERT INTO public.items SELECT 1, i, 'while held' FROM generate_series(201, 210) i",
    );
    // Past max_slot_wal_keep_size before a checkpoint: the job warns.
    until_the_slot_is(&env, "slot_lost", "unreserved", false);
    wait_for("the warning that the slot is about to go", WAIT, || {
        repl.output()
            .contains("its next checkpoint invalidates the slot unless the job catches up")
    });
    until_the_slot_is(&env, "slot_lost", "lost", true);
    runtime
        .block_on(holder.batch_execute("ROLLBACK"))
        .expect("release the lock");
    env.on_source("INSERT INTO public.items VALUES (1, 300, 'after')");
    env.wait_converged(ROWS, WAIT);
    wait_for("the job to say it started over", WAIT, || {
        repl.output()
            .contains("invalidated the replication slot while the job ran")
    });
    assert_eq!(
        env.on_source(
            "SELECT wal_status <> 'lost' FROM pg_replication_slots WHERE slot_name = 'slot_lost'"
        ),
        "t",
        "a new slot"
    );
    assert!(repl.is_running(), "{}", repl.output());
    assert!(repl.stop().success(), "{}", repl.output());
}
