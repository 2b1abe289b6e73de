//! The job's publication and what it carries.
//! - Partitioned source tables: a job names the partitioned table, and every partition's
//!   rows reach the target's table of that name (snapshot and stream, partitions nested
//!   or created mid-stream, rows moving between partitions), with the tenant filter pushed
//!   into the publication or not; a spec naming a partition of a table it carries, or a
//!   view, is refused at start with what to do.
//! - A publication made by hand under the job's name that leaves kinds of change out
//!   (`publish = 'insert'`) is set to publish every kind.

use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(60);

/// `events` is partitioned by tenant; tenant 2's partition is partitioned again by `id`;
/// a default partition takes the other tenants.
const PARTITIONED: &str = "
CREATE TABLE public.events (tenant_id int NOT NULL, id int NOT NULL, v text,
    PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id);
CREATE TABLE public.events_13 PARTITION OF public.events FOR VALUES IN (1, 3);
CREATE TABLE public.events_2 PARTITION OF public.events FOR VALUES IN (2) PARTITION BY RANGE (id);
CREATE TABLE public.events_2_low PARTITION OF public.events_2 FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE public.events_2_high PARTITION OF public.events_2 FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE TABLE public.events_rest PARTITION OF public.events DEFAULT;
INSERT INTO public.events SELECT 1 + i % 4, i, 'v' || i FROM generate_series(1, 40) i;
CREATE VIEW public.recent_events AS SELECT * FROM public.events WHERE id > 20;
";

const SOME_TENANTS: &str =
    "SELECT tenant_id, id, v FROM public.events WHERE tenant_id IN (1, 2, 5) ORDER BY 1, 2";
const EVERY_TENANT: &str = "SELECT tenant_id, id, v FROM public.events ORDER BY 1, 2";

/// A job of every tenant into the target's database `database` (no row filter: the
/// snapshot reads the partitioned table unfiltered).
fn every_tenant_job(env: &Env, database: &str, tables: &str) -> std::path::PathBuf {
    env.target
        .create_database(database)
        .expect("create database");
    let text = format!(
        "name = \"every\"\n[source]\ndsn = \"{}\"\npublication = \"pub_every\"\nslot = \"slot_every\"\n\
         [tenants]\ninclude = \"all\"\n{tables}[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.source_dsn(),
        env.target.dsn(database),
    );
    let path = env.dir.path().join("every.toml");
    std::fs::write(&path, text).expect("write job file");
    path
}

#[test]
fn every_partitions_rows_reach_the_partitioned_tables_target() {
    let env = Env::start(PARTITIONED);
    let some = env.job_file("parts", "[1, 2, 5]", &["public.events"]);
    let every = every_tenant_job(
        &env,
        "replica_all",
        "[[tables]]\nname = \"public.events\"\n",
    );
    let mut some_repl = Replicator::streaming(&some);
    let mut every_repl = Replicator::streaming(&every);
    let every_on_target = |query: &str| env.target.psql("replica_all", query).ok();
    env.wait_converged(SOME_TENANTS, WAIT);
    let expected = env.on_source(EVERY_TENANT);
    wait_for("every tenant's snapshot", WAIT, || {
        every_on_target(EVERY_TENANT).as_deref() == Some(expected.as_str())
    });

    env.on_source(
        "INSERT INTO public.events VALUES (1, 100, 'new'), (2, 101, 'new low'), (2, 2000, 'new high'); \
         UPDATE public.events SET v = 'updated' WHERE id IN (4, 5, 6); \
         DELETE FROM public.events WHERE id IN (8, 9); \
         UPDATE public.events SET id = id + 5000, v = 'moved up' WHERE tenant_id = 2 AND id = 10; \
         UPDATE public.events SET tenant_id = 2, v = 'from 1' WHERE tenant_id = 1 AND id = 12; \
         UPDATE public.events SET tenant_id = 3, v = 'from 1 out' WHERE tenant_id = 1 AND id = 16; \
         UPDATE public.events SET tenant_id = 2, v = 'from 4 in' WHERE tenant_id = 4 AND id = 19; \
         CREATE TABLE public.events_5 PARTITION OF public.events FOR VALUES IN (5); \
         INSERT INTO public.events VALUES (5, 1, 'in a new partition'), (4, 500, 'other tenant');",
    );
    env.wait_converged(SOME_TENANTS, WAIT);
    let expected = env.on_source(EVERY_TENANT);
    wait_for("every tenant's changes", WAIT, || {
        every_on_target(EVERY_TENANT).as_deref() == Some(expected.as_str())
    });
    assert!(
        env.on_target(SOME_TENANTS)
            .contains("5|1|in a new partition"),
        "a partition created mid-stream is carried"
    );
    assert_eq!(
        env.on_target(
            "SELECT string_agg(relname || ':' || relkind::text, ',' ORDER BY relname) FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'events%' AND relkind IN ('r', 'p')"
        ),
        "events:r",
        "the target holds one plain table of the job's name, no partitions"
    );
    for repl in [&mut some_repl, &mut every_repl] {
        let out = repl.output();
        assert!(!out.contains("ERROR"), "{out}");
        assert!(repl.stop().success(), "{out}");
    }

    // A restart resumes through the same publication (already publishing via the root).
    env.on_source("INSERT INTO public.events VALUES (2, 3000, 'while stopped')");
    let mut some_repl = Replicator::streaming(&some);
    env.wait_converged(SOME_TENANTS, WAIT);
    assert!(some_repl.stop().success(), "{}", some_repl.output());
}

#[test]
fn a_spec_naming_a_partition_of_a_carried_table_or_a_view_is_refused() {
    let env = Env::start(PARTITIONED);
    let refused = |tables: &[&str], expected: &str| {
        let job = env.job_file("refused", "[1]", tables);
        let mut repl = Replicator::start(&job);
        wait_for("the start to stop", WAIT, || !repl.is_running());
        let out = repl.output();
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    };
    refused(
        &["public.events", "public.events_2_low"],
        "tables[public.events_2_low]: public.events_2_low is a partition of public.events, which \
         the job also carries",
    );
    refused(
        &["public.recent_events"],
        "public.recent_events is a view, not a table: only tables (plain or partitioned) replicate",
    );
    assert_eq!(
        env.on_source("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "a refused start takes no slot"
    );

    // A partition alone is a table like any other.
    let job = env.job_file("leaf", "[2]", &["public.events_2_low"]);
    let mut repl = Replicator::streaming(&job);
    env.on_source("INSERT INTO public.events VALUES (2, 7, 'new in the low partition')");
    let query = "SELECT tenant_id, id, v FROM public.events_2_low ORDER BY 1, 2";
    env.wait_converged(query, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
}

#[test]
fn a_publication_made_by_hand_without_deletes_is_set_to_publish_every_change() {
    let env = Env::start(PARTITIONED);
    env.on_source(
        "CREATE TABLE public.plain (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id)); \
         INSERT INTO public.plain SELECT 1, i, 'v' || i FROM generate_series(1, 10) i; \
         CREATE PUBLICATION pub_narrow FOR TABLE public.plain WITH (publish = 'insert')",
    );
    let job = env.job_file("narrow", "[1]", &["public.plain"]);
    let mut repl = Replicator::streaming(&job);
    let query = "SELECT tenant_id, id, v FROM public.plain ORDER BY 1, 2";
    env.wait_converged(query, WAIT);
    env.on_source(
        "DELETE FROM public.plain WHERE id IN (1, 2); UPDATE public.plain SET v = 'changed' WHERE id = 3",
    );
    env.on_source("INSERT INTO public.plain VALUES (1, 11, 'last')");
    env.wait_converged(query, WAIT);
    assert_eq!(
        env.on_source(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication \
             WHERE pubname = 'pub_narrow'"
        ),
        "t"
    );
    assert!(
        repl.output()
            .contains("the job's publication did not publish every kind of change"),
        "{}",
        repl.output()
    );
    assert!(repl.stop().success(), "{}", repl.output());
}

/// A partition detached from a carried partitioned table: its rows leave the table on the
/// source without a delete in the stream, so the target keeps them, and the job says so,
/// naming the resync that would drop them.
#[test]
fn a_detached_partition_is_warned_about_with_the_resync_that_drops_its_rows() {
    let env = Env::start(PARTITIONED);
    let job = env.job_file("detach", "[1, 2, 5]", &["public.events"]);
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(SOME_TENANTS, WAIT);
    let tenant_1 = "SELECT count(*) FROM public.events WHERE tenant_id = 1";
    assert_eq!(env.on_target(tenant_1), "10");
    // Past the watch's first read of the partitions.
    std::thread::sleep(Duration::from_secs(1));
    env.on_source("ALTER TABLE public.events DETACH PARTITION public.events_13");
    wait_for("the warning", WAIT, || {
        repl.output().contains(
            "partition public.events_13 of public.events was detached or dropped on the source",
        )
    });
    let out = repl.output();
    assert!(out.contains("jobs resync detach public.events"), "{out}");
    assert_eq!(env.on_source(tenant_1), "0");
    assert_eq!(env.on_target(tenant_1), "10", "the target keeps them");
    assert!(repl.stop().success(), "{}", repl.output());
}
