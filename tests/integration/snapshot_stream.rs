//! Snapshot + stream: rows that exist before the job starts and rows written while the
//! snapshot is taken all arrive exactly once (no gap, no overlap).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator, SourceWriter};

const SETUP: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (tenant_id, id));
-- no key: duplicates would show up as extra rows
CREATE TABLE public.log (tenant_id int NOT NULL, n bigint NOT NULL, note text);
INSERT INTO public.items SELECT t, i, 'pre-' || i FROM generate_series(1, 6) t, generate_series(1, 500) i;
INSERT INTO public.log SELECT t, i, 'pre' FROM generate_series(1, 6) t, generate_series(1, 500) i;
";

#[test]
fn snapshot_then_stream_delivers_every_row_exactly_once() {
    let env = Arc::new(Env::start(SETUP));
    let job = env.job_file("snap", "[1, 2, 4]", &["public.items", "public.log"]);

    // A writer that keeps inserting while the replicator starts and snapshots.
    let writer = SourceWriter::start(&env, 1000, |n| {
        format!(
            "BEGIN; INSERT INTO public.items SELECT t, {n}, 'live' FROM generate_series(1, 6) t;
             INSERT INTO public.log SELECT t, {n}, 'live' FROM generate_series(1, 6) t; COMMIT;"
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    std::thread::sleep(Duration::from_millis(800));
    let written = writer.stop();
    assert!(written > 0, "the writer wrote during the snapshot");

    let per_tenant =
        "SELECT tenant_id, count(*), count(DISTINCT n), min(n), max(n) FROM public.log \
                      WHERE tenant_id IN (1, 2, 4) GROUP BY 1 ORDER BY 1";
    env.wait_converged(per_tenant, Duration::from_secs(60));
    env.wait_converged(
        "SELECT tenant_id, count(*), md5(string_agg(v, ',' ORDER BY id)) FROM public.items WHERE tenant_id IN (1, 2, 4) GROUP BY 1 ORDER BY 1",
        Duration::from_secs(30),
    );
    let dupes = env.on_target("SELECT count(*) - count(DISTINCT (tenant_id, n)) FROM public.log");
    assert_eq!(dupes, "0", "no row arrives twice");
    let others = env.on_target("SELECT count(*) FROM public.log WHERE tenant_id NOT IN (1, 2, 4)");
    assert_eq!(others, "0", "no other tenant's rows");
    // `items` was missing on the target: loaded under a staging name, then published
    // with the key CREATE TABLE would have given it; nothing staged is left.
    assert_eq!(
        env.on_target(
            "SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'public.items'::regclass"
        ),
        "items_pkey PRIMARY KEY (tenant_id, id)"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'"),
        "0"
    );
    assert_eq!(
        repl.stop().code(),
        Some(0),
        "clean stop:\n{}",
        repl.output()
    );
    // `run` prints a progress line (rows/s, lag, LSN) every --progress-secs.
    let out = repl.output();
    let progress = out
        .lines()
        .find(|l| l.starts_with("[snap] rows/s="))
        .unwrap_or_default();
    assert!(
        progress.contains(" lag=") && progress.contains(" confirmed=") && progress.contains('/'),
        "progress line with rate, lag and LSN:\n{out}"
    );
    // A clean stop confirms what it made durable: the slot is where the job recorded.
    let recorded =
        env.on_target("SELECT confirmed_lsn FROM helios.job_progress WHERE job = 'snap'");
    let slot = env.on_source(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'slot_snap'",
    );
    assert_eq!(slot, recorded, "slot confirmed position after a clean stop");
    let written = env.on_source("SELECT pg_current_wal_lsn()");
    let behind = env.on_source(&format!(
        "SELECT pg_wal_lsn_diff('{written}', '{slot}') < 1024 * 1024"
    ));
    assert_eq!(
        behind, "t",
        "the slot is close to the end of WAL ({slot} vs {written})"
    );
}

/// Several tables load side by side, each on a session of its own that imports the
/// exported snapshot; tables sharing a schema and a user type the target lacks are
/// created one at a time first, so the loads do not race to create them.
#[test]
fn tables_that_share_a_new_schema_and_type_load_side_by_side() {
    let env = Env::start(
        "CREATE SCHEMA shop;
         CREATE TYPE shop.state AS ENUM ('new', 'paid', 'sent');
         CREATE TABLE shop.orders (tenant_id int NOT NULL, id bigint NOT NULL, s shop.state, PRIMARY KEY (tenant_id, id));
         CREATE TABLE shop.parcels (tenant_id int NOT NULL, id bigint NOT NULL, s shop.state, at timestamptz, PRIMARY KEY (tenant_id, id));
         CREATE TABLE shop.notes (tenant_id int NOT NULL, id bigint NOT NULL, body text, PRIMARY KEY (tenant_id, id));
         INSERT INTO shop.orders SELECT t, i, (ARRAY['new', 'paid', 'sent'])[1 + i % 3]::shop.state FROM generate_series(1, 4) t, generate_series(1, 3000) i;
         INSERT INTO shop.parcels SELECT t, i, 'sent', timestamptz '2024-01-01 00:00+00' + i * interval '1 minute' FROM generate_series(1, 4) t, generate_series(1, 2000) i;
         INSERT INTO shop.notes SELECT t, i, 'note ' || i FROM generate_series(1, 4) t, generate_series(1, 1000) i;",
    );
    let job = env.job_file(
        "lanes",
        "[1, 3]",
        &["shop.orders", "shop.parcels", "shop.notes"],
    );
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    for (table, digest) in [
        (
            "shop.orders",
            "md5(string_agg(id || ':' || s, ',' ORDER BY id))",
        ),
        (
            "shop.parcels",
            "md5(string_agg(id || ':' || s || ':' || at, ',' ORDER BY id))",
        ),
        (
            "shop.notes",
            "md5(string_agg(id || ':' || body, ',' ORDER BY id))",
        ),
    ] {
        env.wait_converged(
            &format!("SELECT tenant_id, count(*), {digest} FROM {table} WHERE tenant_id IN (1, 3) GROUP BY 1 ORDER BY 1"),
            Duration::from_secs(30),
        );
        let others = env.on_target(&format!(
            "SELECT count(*) FROM {table} WHERE tenant_id NOT IN (1, 3)"
        ));
        assert_eq!(others, "0", "{table}: no other tenant's rows");
    }
    assert_eq!(
        repl.stop().code(),
        Some(0),
        "clean stop:\n{}",
        repl.output()
    );
}

/// A large table's initial copy is split into ranges of pages that load side by side
/// when the target lacks the table (`fresh`, staged) or holds none of the job's tenants'
/// rows in it (`shared`): every row of the job's tenants arrives once, another tenant's
/// stay, and changes made while it loads follow in the stream. A table that already holds
/// the tenants' rows (`events`, a re-sync with a stale row) loads in one transaction
/// instead: a reader polling it throughout never sees those rows missing.
#[test]
fn a_large_table_loads_in_parts_side_by_side() {
    let env = Arc::new(Env::start(
        "CREATE TABLE public.events (tenant_id int NOT NULL, id bigint NOT NULL, pad text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.events SELECT g % 4, g, repeat('p', 200) || g FROM generate_series(1, 100000) g;
         CREATE TABLE public.fresh (LIKE public.events INCLUDING ALL);
         INSERT INTO public.fresh SELECT * FROM public.events;
         CREATE TABLE public.shared (LIKE public.events INCLUDING ALL);
         INSERT INTO public.shared SELECT * FROM public.events;",
    ));
    env.on_target(
        "CREATE TABLE public.events (tenant_id int NOT NULL, id bigint NOT NULL, pad text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.events SELECT g % 4, g, 'synced before' FROM generate_series(1, 100000) g WHERE g % 4 IN (0, 1);
         INSERT INTO public.events VALUES (1, 999999, 'stale'), (2, 2, 'not this job''s tenant');
         CREATE TABLE public.shared (LIKE public.events INCLUDING ALL);
         INSERT INTO public.shared VALUES (2, 2, 'not this job''s tenant');",
    );
    let job = env.job_file(
        "parts",
        "[0, 1]",
        &["public.events", "public.fresh", "public.shared"],
    );
    let text = std::fs::read_to_string(&job).expect("job file");
    std::fs::write(
        &job,
        text.replace("[source]\n", "[source]\nsnapshot_parallel_tables = 2\n"),
    )
    .expect("job file with two lanes");

    // The job's tenants' rows of `events` as a reader sees them while the job loads.
    let fewest = {
        let (env, reading) = (env.clone(), Arc::new(AtomicBool::new(true)));
        let handle = {
            let reading = reading.clone();
            std::thread::spawn(move || {
                let mut fewest = i64::MAX;
                while reading.load(Ordering::Relaxed) {
                    let n = env
                        .on_target("SELECT count(*) FROM public.events WHERE tenant_id IN (0, 1)");
                    fewest = fewest.min(n.parse().expect("a count"));
                }
                fewest
            })
        };
        (reading, handle)
    };
    let writer = SourceWriter::start(&env, 1, |n| {
        format!(
            "UPDATE public.events SET pad = 'updated {n}' WHERE tenant_id = 1 AND id = {};",
            4 * n + 1
        )
    });
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(90), || {
        repl.output().contains("streaming")
    });
    let updated = writer.stop();
    assert!(updated > 0, "updates while it loaded");
    fewest.0.store(false, Ordering::Relaxed);
    let fewest = fewest.1.join().expect("reader");
    assert!(
        fewest >= 50_000,
        "a reader saw {fewest} of the 50,000 rows of tenants 0 and 1 in `events` during the re-sync"
    );
    for table in ["events", "fresh", "shared"] {
        env.wait_converged(
            &format!(
                "SELECT tenant_id, count(*), md5(string_agg(id || ':' || pad, ',' ORDER BY id)) \
                 FROM public.{table} WHERE tenant_id IN (0, 1) GROUP BY 1 ORDER BY 1"
            ),
            Duration::from_secs(60),
        );
    }
    // `fresh` was missing on the target: its parts went into a staging table published
    // with its key once loaded.
    assert_eq!(
        env.on_target(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'public.fresh'::regclass"
        ),
        "fresh_pkey"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'"),
        "0"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.events WHERE id = 999999"),
        "0",
        "a stale row of the job's tenant is removed"
    );
    for table in ["events", "shared"] {
        assert_eq!(
            env.on_target(&format!(
                "SELECT pad FROM public.{table} WHERE tenant_id = 2"
            )),
            "not this job's tenant",
            "another tenant's rows stay in {table}"
        );
    }
    // The log lines, without their colours.
    let out = repl.output();
    let plain = crate::harness::without_colours;
    let splits: Vec<String> = out
        .lines()
        .filter(|l| l.contains("split into parts"))
        .map(plain)
        .collect();
    assert_eq!(splits.len(), 3, "all three tables split:\n{out}");
    assert!(
        splits.iter().all(|l| l.contains("parts=2")),
        "each in two:\n{out}"
    );
    let whole: Vec<String> = out
        .lines()
        .filter(|l| l.contains("not in parts"))
        .map(plain)
        .collect();
    assert_eq!(whole.len(), 1, "one table loaded whole:\n{out}");
    assert!(
        whole[0].contains("public.events"),
        "the one holding the tenants' rows:\n{out}"
    );
    assert_eq!(
        repl.stop().code(),
        Some(0),
        "clean stop:\n{}",
        repl.output()
    );
}

/// A job killed while its snapshot loads a table the target lacks leaves no half-loaded
/// table behind (the rows went to a staging table), and its next start loads the table
/// whole, with its key, and drops what the killed attempt staged.
#[test]
fn a_snapshot_killed_mid_load_leaves_no_half_table_and_restarts_cleanly() {
    let env = Env::start(
        "CREATE TABLE public.big (tenant_id int NOT NULL, id bigint NOT NULL, pad text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.big SELECT g % 4, g, repeat('b', 300) || g FROM generate_series(1, 400000) g;",
    );
    let job = env.job_file("killed", "[1, 2]", &["public.big"]);
    let mut first = Replicator::start_inline(&job);
    let staged = "SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'";
    let started = std::time::Instant::now();
    while env.try_on_target(staged).as_deref() != Some("1") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no staging table:\n{}",
            first.output()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill();
    assert!(
        !first.output().contains("streaming"),
        "killed before the load ended:\n{}",
        first.output()
    );
    assert_eq!(
        env.on_target("SELECT to_regclass('public.big') IS NULL"),
        "t",
        "no half-loaded table under the real name"
    );

    let mut second = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(90), || {
        second.output().contains("streaming")
    });
    env.wait_converged(
        "SELECT tenant_id, count(*), md5(string_agg(id || pad, ',' ORDER BY id)) FROM public.big \
         WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1",
        Duration::from_secs(60),
    );
    assert_eq!(
        env.on_target("SELECT conname FROM pg_constraint WHERE conrelid = 'public.big'::regclass"),
        "big_pkey"
    );
    assert_eq!(
        env.on_target(staged),
        "0",
        "the killed attempt's staging table is gone"
    );
    assert_eq!(
        second.stop().code(),
        Some(0),
        "clean stop:\n{}",
        second.output()
    );
}
