//! Transactions much larger than what a worker stashes (`deliver::PART_ROWS`): handed to
//! the sinks in parts, each spilled to local disk and applied as it comes inside one
//! target transaction (applied again whole from the spill file if that attempt fails);
//! with bounded memory, under SIGKILL, and with a table the target refuses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(240);

const TABLES: &str = "CREATE TABLE public.items (tenant_id int NOT NULL, id bigint NOT NULL,
        v text, n numeric(12,2), PRIMARY KEY (tenant_id, id));
    CREATE TABLE public.notes (tenant_id int NOT NULL, id bigint NOT NULL, body text,
        PRIMARY KEY (tenant_id, id));
    INSERT INTO public.items SELECT g % 8, g, 'before ' || g, g FROM generate_series(1, 4000) g;";

/// One source transaction: `rows` inserts over 8 tenants, updates and deletes of rows of
/// the initial copy, and a few notes.
fn big_transaction(first: i64, rows: i64) -> String {
    let last = first + rows - 1;
    format!(
        "BEGIN;
         INSERT INTO public.items SELECT g % 8, g, 'big ' || g || repeat('x', 40), g / 100.0
             FROM generate_series({first}, {last}) g;
         UPDATE public.items SET v = 'updated in the big one' WHERE id BETWEEN 1 AND 1000;
         DELETE FROM public.items WHERE id BETWEEN 1001 AND 1500;
         INSERT INTO public.notes SELECT g % 8, g, 'note ' || g FROM generate_series(1, 50) g;
         COMMIT;"
    )
}

/// The replicator (one worker) on `job`, once its initial copy is loaded.
fn started_with_copy(job: &std::path::Path) -> Replicator {
    let repl = Replicator::start_inline(job);
    wait_for("the initial copy", WAIT, || {
        repl.output().contains("initial snapshot loaded")
    });
    repl
}

const PER_TENANT: &str = "SELECT tenant_id, count(*), md5(string_agg(id || ':' || v || ':' || n, ',' ORDER BY id)) FROM public.items GROUP BY 1 ORDER BY 1";

/// Peak RSS (VmHWM) of a running replicator, in MiB (0 when unreadable).
pub(crate) fn peak_rss_mib(repl: &Replicator) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", repl.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[test]
fn a_large_transaction_streams_in_bounded_memory_and_lands_whole_per_tenant() {
    let env = Arc::new(Env::start(TABLES));
    let job = env.job_file("large", "\"all\"", &["public.items", "public.notes"]);
    let mut repl = started_with_copy(&job);
    env.wait_converged(PER_TENANT, WAIT);
    // The target refuses one note: that table goes into error state with all of the big
    // transaction's notes kept as dead letters, while the items land.
    env.on_target("ALTER TABLE public.notes ADD CONSTRAINT no_seven CHECK (body <> 'note 7')");
    let before: Vec<(String, String)> = env
        .on_target("SELECT tenant_id, count(*) FROM public.items GROUP BY 1 ORDER BY 1")
        .lines()
        .filter_map(|l| {
            l.split_once('|')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();

    // Watch the target while the transaction is applied: every tenant shows its count
    // from before or its final count, never one in between.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(out) = env.try_on_target(
                    "SELECT tenant_id, count(*) FROM public.items GROUP BY 1 ORDER BY 1",
                ) {
                    for l in out.lines() {
                        seen.insert(l.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let rows = 300_000;
    env.on_source(&big_transaction(10_000, rows));
    env.wait_converged(PER_TENANT, WAIT);
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    let after = env.on_source("SELECT tenant_id, count(*) FROM public.items GROUP BY 1 ORDER BY 1");
    for line in &seen {
        let (tenant, count) = line.split_once('|').expect("tenant|count");
        let was = before
            .iter()
            .find(|(t, _)| t == tenant)
            .map(|(_, c)| c.as_str());
        let is_final = after.lines().any(|l| l == line);
        assert!(
            is_final || was == Some(count),
            "tenant {tenant} showed {count} rows: neither before ({was:?}) nor after the transaction\n{after}"
        );
    }
    let peak = peak_rss_mib(&repl);
    eprintln!("peak RSS {peak} MiB");
    assert!(
        peak > 0 && peak < 256,
        "peak RSS {peak} MiB while replicating a {rows}-row transaction (bound 256 MiB)"
    );
    let out = repl.output();
    assert!(
        out.contains("large transaction spilled to local disk"),
        "the live attempt failed on the refused table and the transaction was applied again from its spill file:\n{out}"
    );
    wait_for("the refused table's error state", WAIT, || {
        env.try_on_target("SELECT state FROM helios.table_state WHERE table_name = 'public.notes'")
            .as_deref()
            == Some("error")
    });
    // Each worker's sink applies its own tenants: the worker that owns tenant 7 keeps all
    // of its tenants' notes as dead letters, the other applies its notes; no tenant has
    // some notes applied and some kept.
    let letters: u64 = env
        .on_target("SELECT count(*) FROM helios.dead_letters WHERE table_name = 'public.notes'")
        .parse()
        .expect("count");
    let applied: u64 = env
        .on_target("SELECT count(*) FROM public.notes")
        .parse()
        .expect("count");
    assert!(letters >= 1, "the refused note is a dead letter");
    assert_eq!(letters + applied, 50, "every note applied or kept, once");
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.notes WHERE tenant_id = 7"),
        "0"
    );
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM public.notes n WHERE EXISTS (SELECT 1 FROM helios.dead_letters d \
             WHERE d.table_name = 'public.notes' AND d.scope = 'tenant:' || n.tenant_id)"
        ),
        "0",
        "no tenant's notes are half applied, half kept"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

#[test]
fn a_large_transaction_killed_while_spilling_is_applied_once_after_restart() {
    let env = Env::start(TABLES);
    let job = env.job_file("large_kill", "[1, 2, 5]", &["public.items", "public.notes"]);
    let mut repl = started_with_copy(&job);
    env.on_source(&big_transaction(10_000, 200_000));
    env.on_source("INSERT INTO public.items VALUES (1, 1, 'after the big one', 1) ON CONFLICT (tenant_id, id) DO UPDATE SET v = excluded.v");
    // Killed while the transaction's parts arrive, are spilled and applied.
    wait_for("the large transaction to arrive in parts", WAIT, || {
        repl.output()
            .contains("large transaction arriving in parts")
    });
    repl.kill();
    let mut repl = Replicator::start_inline(&job);
    let q = "SELECT tenant_id, count(*), md5(string_agg(id || ':' || v || ':' || n, ',' ORDER BY id)) FROM public.items WHERE tenant_id IN (1, 2, 5) GROUP BY 1 ORDER BY 1";
    env.wait_converged(q, WAIT);
    env.wait_converged(
        "SELECT count(*) FROM public.notes WHERE tenant_id IN (1, 2, 5)",
        WAIT,
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.items WHERE tenant_id NOT IN (1, 2, 5)"),
        "0"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// A bulk load's parts go out as `COPY`s whose answers are read after the next part is
/// prepared (`pg_apply::bulk_copy`). A copy that meets a key the target holds makes the
/// transaction apply again with upserts; one the target refuses puts its table in error
/// state with the transaction's rows of it kept as dead letters, and the other table lands.
#[test]
fn a_bulk_load_whose_copy_fails_is_applied_again_without_losing_a_row() {
    let env = Env::start(TABLES);
    let job = env.job_file("bulk_fail", "\"all\"", &["public.items", "public.notes"]);
    let repl = started_with_copy(&job);
    env.wait_converged(PER_TENANT, WAIT);
    // Written on the target by hand: a key the load inserts in its third part.
    env.on_target("INSERT INTO public.items VALUES (3, 50003, 'by hand', 0)");
    env.on_source(
        "INSERT INTO public.items SELECT g % 8, g, 'bulk ' || g, g FROM generate_series(10000, 99999) g",
    );
    env.wait_converged(PER_TENANT, WAIT);
    assert_eq!(
        env.on_target("SELECT v FROM public.items WHERE tenant_id = 3 AND id = 50003"),
        "bulk 50003"
    );
    let out = repl.output();
    assert!(
        out.contains("a plain insert met a key the target holds; applying again with upserts"),
        "{out}"
    );

    // The target refuses one note, in the notes' third part; the items after them land.
    env.on_target("ALTER TABLE public.notes ADD CONSTRAINT no_note CHECK (body <> 'note 40007')");
    env.on_source(
        "BEGIN;
         INSERT INTO public.notes SELECT g % 8, g, 'note ' || g FROM generate_series(1, 60000) g;
         INSERT INTO public.items SELECT g % 8, g, 'later ' || g, g FROM generate_series(100000, 159999) g;
         COMMIT;",
    );
    env.wait_converged(PER_TENANT, WAIT);
    wait_for("the refused table's error state", WAIT, || {
        env.try_on_target("SELECT state FROM helios.table_state WHERE table_name = 'public.notes'")
            .as_deref()
            == Some("error")
    });
    assert_eq!(env.on_target("SELECT count(*) FROM public.notes"), "0");
    assert_eq!(
        env.on_target(
            "SELECT count(*), count(DISTINCT (commit_lsn, seq)) FROM helios.dead_letters WHERE table_name = 'public.notes'"
        ),
        "60000|60000",
        "every note of the transaction kept, once"
    );
    let mut repl = repl;
    assert_eq!(repl.stop().code(), Some(0));
}

/// Rows of about `kb` KB each (md5 text repeated: the source compresses it, the stream
/// carries it whole) for ids `first..first + rows`, over 8 tenants.
fn wide_rows(first: i64, rows: i64, kb: i64) -> String {
    format!(
        "INSERT INTO public.items SELECT g % 8, g, repeat(md5(g::text), {}), g
             FROM generate_series({first}, {}) g;",
        kb * 32,
        first + rows - 1
    )
}

#[test]
fn a_transaction_of_wide_rows_is_handed_over_in_parts_by_bytes() {
    let env = Env::start(TABLES);
    let job = env.job_file("wide_large", "\"all\"", &["public.items", "public.notes"]);
    let mut repl = started_with_copy(&job);
    // 10,000 rows of 40 KB: 400 MB in one transaction, half a part's rows
    // (deliver::PART_ROWS); before parts were cut by bytes too, the worker held it whole
    // (1,291 MiB peak RSS for 20,000 rows of 20 KB).
    env.on_source(&format!("BEGIN; {} COMMIT;", wide_rows(10_000, 10_000, 40)));
    env.wait_converged(PER_TENANT, WAIT);
    let peak = peak_rss_mib(&repl);
    eprintln!("peak RSS {peak} MiB");
    assert!(
        peak > 0 && peak < 256,
        "peak RSS {peak} MiB while replicating a 400 MB transaction (bound 256 MiB)"
    );
    assert!(
        repl.output()
            .contains("large transaction arriving in parts"),
        "the transaction was handed over in parts"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

#[test]
fn wide_rows_are_read_ahead_by_bytes() {
    let env = Env::start(TABLES);
    let job = env.job_file("wide_ahead", "\"all\"", &["public.items", "public.notes"]);
    let text = std::fs::read_to_string(&job).expect("job file") + "[qos]\nmax_buffered_mib = 16\n";
    std::fs::write(&job, text).expect("job file");
    let mut repl = started_with_copy(&job);
    env.wait_converged(PER_TENANT, WAIT);
    assert_eq!(repl.stop().code(), Some(0));
    // While the replicator is stopped: 400 transactions of 50 rows of 20 KB (400 MB), all
    // far below a part, then caught up at once. Without the bytes bound the job read
    // 100,000 rows ahead, all of these (441 MiB peak RSS; 194 MiB with it).
    let writes: String = (0..400)
        .map(|i| format!("BEGIN; {} COMMIT;\n", wide_rows(10_000 + i * 50, 50, 20)))
        .collect();
    env.on_source(&writes);
    let mut repl = Replicator::start_inline(&job);
    env.wait_converged(PER_TENANT, WAIT);
    let peak = peak_rss_mib(&repl);
    eprintln!("peak RSS {peak} MiB");
    assert!(
        peak > 0 && peak < 256,
        "peak RSS {peak} MiB while catching up on 400 MB of wide rows (bound 256 MiB)"
    );
    assert_eq!(repl.stop().code(), Some(0));
}
