//! A job restarted with a wider spec (tenants or tables added) loads what its target
//! lacks before the stream resumes, and the stream neither doubles nor drops a row of it;
//! a narrower spec leaves the dropped rows in place; tables that keep history get the
//! loaded rows as versions from the backfill on; a wider spec the job cannot load (a job
//! whose progress lives in the cold tier, a target added to a job with history) stops it
//! with a message saying what to do.

use std::sync::Arc;
use std::time::Duration;

use helios_repl::sinks::parquet::layout::{table_dir, MANIFEST_FILE};

use crate::harness::{wait_for, Env, Replicator, SourceWriter};

const SETUP: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (tenant_id, id));
-- no key and no replica identity: the publication cannot filter it by tenant, so every
-- tenant's inserts reach the job, and a row applied twice shows up as an extra row
CREATE TABLE public.log (tenant_id int NOT NULL, n bigint NOT NULL, note text);
CREATE TABLE public.notes (tenant_id int NOT NULL, id int PRIMARY KEY, body text);
INSERT INTO public.items SELECT t, i, 'pre-' || i FROM generate_series(1, 5) t, generate_series(1, 300) i;
INSERT INTO public.log SELECT t, i, 'pre' FROM generate_series(1, 5) t, generate_series(1, 300) i;
INSERT INTO public.notes SELECT t, t * 1000 + i, 'note' FROM generate_series(1, 5) t, generate_series(1, 50) i;
";

const ITEMS: &str =
    "SELECT tenant_id, count(*), md5(string_agg(v, ',' ORDER BY id)) FROM public.items \
                     WHERE tenant_id IN (1, 2, 3) GROUP BY 1 ORDER BY 1";
const LOG: &str = "SELECT tenant_id, count(*), count(DISTINCT n), max(n) FROM public.log \
                   WHERE tenant_id IN (1, 2, 3) GROUP BY 1 ORDER BY 1";
const NOTES: &str =
    "SELECT tenant_id, count(*), md5(string_agg(body, ',' ORDER BY id)) FROM public.notes \
                     WHERE tenant_id IN (1, 2, 3) GROUP BY 1 ORDER BY 1";

#[test]
fn a_restarted_job_loads_the_tenants_and_tables_added_to_its_spec() {
    let env = Arc::new(Env::start(SETUP));
    let job = env.job_file("grow", "[1, 2]", &["public.items", "public.log"]);
    let mut repl = Replicator::start_inline(&job);
    env.wait_converged(
        "SELECT tenant_id, count(*) FROM public.log WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1",
        Duration::from_secs(60),
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // While the job is stopped: tenant 3 (not carried yet) changes in both tables. Its
    // `log` rows reach the stream (no row filter on a table without identity); they are
    // in the backfill's snapshot as well, so applying them again would double them.
    env.on_source(
        "INSERT INTO public.log SELECT 3, i, 'while stopped' FROM generate_series(301, 400) i;
         UPDATE public.items SET v = 'changed while stopped' WHERE tenant_id = 3 AND id <= 100;
         DELETE FROM public.items WHERE tenant_id = 3 AND id > 250;
         UPDATE public.items SET v = 'tenant 1 changed' WHERE tenant_id = 1 AND id <= 10;",
    );
    // Tenant 3 and table `notes` are added to the spec (same name, slot and publication).
    let job = env.job_file(
        "grow",
        "[1, 2, 3]",
        &["public.items", "public.log", "public.notes"],
    );
    // A writer keeps changing every tenant while the job restarts and backfills: its
    // transactions commit before, during and after the backfill's snapshot.
    let writer = SourceWriter::start(&env, 1000, |n| {
        format!(
            "BEGIN;
             INSERT INTO public.log SELECT t, {n}, 'live' FROM generate_series(1, 5) t;
             UPDATE public.items SET v = 'live {n}' WHERE id = {n} % 250 + 1;
             INSERT INTO public.notes SELECT t, 100000 + t * 10000 + {n}, 'live' FROM generate_series(1, 5) t;
             COMMIT;"
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    std::thread::sleep(Duration::from_millis(800));
    let written = writer.stop();
    assert!(written > 5, "the writer wrote while the job restarted");

    env.wait_converged(LOG, Duration::from_secs(60));
    env.wait_converged(ITEMS, Duration::from_secs(30));
    env.wait_converged(NOTES, Duration::from_secs(30));
    let dupes = env.on_target("SELECT count(*) - count(DISTINCT (tenant_id, n)) FROM public.log");
    assert_eq!(dupes, "0", "no row arrives twice");
    for table in ["items", "log", "notes"] {
        assert_eq!(
            env.on_target(&format!(
                "SELECT count(*) FROM public.{table} WHERE tenant_id NOT IN (1, 2, 3)"
            )),
            "0",
            "{table}: no other tenant's rows"
        );
    }
    let out = repl.output();
    assert!(out.contains("backfill loaded"), "{out}");
    assert!(
        out.contains("public.items (tenants 3)") && out.contains("public.notes (the whole table)"),
        "the log names what was missing:\n{out}"
    );
    // Each load recorded its floor with its rows, and the coverage says what the target
    // holds now.
    assert_eq!(
        env.on_target(
            "SELECT string_agg(table_name || ' ' || scope, ', ' ORDER BY table_name, scope) \
             FROM helios.backfill_floors WHERE job = 'grow'"
        ),
        "public.items tenant:3, public.log tenant:3, public.notes *"
    );
    assert_eq!(
        env.on_target(
            "SELECT coverage->'tables'->'public.notes'->>'include' FROM helios.job_coverage WHERE job = 'grow'"
        ),
        "[1, 2, 3]"
    );
    // Later changes to the new tenant and table stream as any other.
    env.on_source(
        "INSERT INTO public.log VALUES (3, 99999, 'after');
         UPDATE public.notes SET body = 'after' WHERE tenant_id = 3;",
    );
    env.wait_converged(LOG, Duration::from_secs(30));
    env.wait_converged(NOTES, Duration::from_secs(30));
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // Narrower: tenant 2 is dropped. Its rows stay; the log says it is no longer carried;
    // floors the stream has passed are forgotten.
    let job = env.job_file(
        "grow",
        "[1, 3]",
        &["public.items", "public.log", "public.notes"],
    );
    let before = env.on_target("SELECT count(*) FROM public.items WHERE tenant_id = 2");
    let value_before = env.on_target("SELECT v FROM public.items WHERE tenant_id = 2 AND id = 1");
    assert_eq!(
        value_before,
        env.on_source("SELECT v FROM public.items WHERE tenant_id = 2 AND id = 1")
    );
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    env.on_source(
        "UPDATE public.items SET v = 'tenant 2 after' WHERE tenant_id = 2 AND id = 1;
                   INSERT INTO public.log VALUES (1, 123456, 'marker');",
    );
    wait_for("the marker row", Duration::from_secs(30), || {
        env.try_on_target("SELECT count(*) FROM public.log WHERE n = 123456")
            .as_deref()
            == Some("1")
    });
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.items WHERE tenant_id = 2"),
        before
    );
    assert_eq!(
        env.on_target("SELECT v FROM public.items WHERE tenant_id = 2 AND id = 1"),
        value_before,
        "tenant 2 is no longer kept up to date"
    );
    let out = repl.output();
    assert!(
        out.contains("no longer carries") && out.contains("public.items (tenants 2)"),
        "{out}"
    );
    assert!(!out.contains("backfill loaded"), "nothing to load:\n{out}");
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.backfill_floors WHERE job = 'grow'"),
        "0",
        "the stream had passed the floors"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // With `tenants.removed = "delete"`, dropping tenant 1 (and the table `log`) deletes
    // tenant 1's rows of the tables still carried; `log` keeps its rows.
    let job = env.job_file("grow", "[3]", &["public.items", "public.notes"]);
    let text = std::fs::read_to_string(&job).expect("job file");
    std::fs::write(
        &job,
        text.replace("include = [3]\n", "include = [3]\nremoved = \"delete\"\n"),
    )
    .expect("job file");
    let log_before = env.on_target("SELECT count(*) FROM public.log");
    let mut repl = Replicator::start_inline(&job);
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    for table in ["items", "notes"] {
        assert_eq!(
            env.on_target(&format!(
                "SELECT count(*) FROM public.{table} WHERE tenant_id = 1"
            )),
            "0",
            "{table}: tenant 1's rows deleted"
        );
    }
    assert_ne!(
        env.on_target("SELECT count(*) FROM public.items WHERE tenant_id = 3"),
        "0",
        "tenant 3's rows stay"
    );
    assert_eq!(env.on_target("SELECT count(*) FROM public.log"), log_before);
    let out = repl.output();
    assert!(
        out.contains("rows of tenants the job no longer carries deleted"),
        "{out}"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
}

#[test]
fn a_target_added_to_a_job_has_every_table_loaded_before_it_streams() {
    let env = Arc::new(Env::start(SETUP));
    env.target
        .create_database("replica2")
        .expect("create replica2");
    let spec = |targets: &[&str]| {
        let sinks: String = targets
            .iter()
            .map(|db| {
                format!(
                    "[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
                    env.target.dsn(db)
                )
            })
            .collect();
        let path = env.dir.path().join("fanout.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"fanout\"\n[source]\ndsn = \"{}\"\npublication = \"pub_fanout\"\nslot = \"slot_fanout\"\n\
                 [tenants]\ninclude = [1, 2]\n[[tables]]\nname = \"public.items\"\n[[tables]]\nname = \"public.log\"\n{sinks}",
                env.source_dsn(),
            ),
        )
        .expect("write job file");
        path
    };
    let mut repl = Replicator::start_inline(&spec(&["replica"]));
    env.wait_converged(
        "SELECT tenant_id, count(*) FROM public.log WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1",
        Duration::from_secs(60),
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
    // Written while stopped: in the stream, and in the new target's load.
    env.on_source("INSERT INTO public.log SELECT t, i, 'while stopped' FROM generate_series(1, 2) t, generate_series(301, 350) i;");
    let mut repl = Replicator::start_inline(&spec(&["replica", "replica2"]));
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    env.on_source("INSERT INTO public.log VALUES (1, 5000, 'after');");
    let on = |db: &str, sql: &str| env.target.psql(db, sql).ok();
    for query in [
        "SELECT tenant_id, count(*), count(DISTINCT n), max(n) FROM public.log WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1",
        "SELECT tenant_id, count(*), md5(string_agg(v, ',' ORDER BY id)) FROM public.items WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1",
    ] {
        let expected = env.on_source(query);
        for db in ["replica", "replica2"] {
            wait_for(&format!("{db} to match the source: {query}"), Duration::from_secs(30), || {
                on(db, query).as_deref() == Some(expected.as_str())
            });
        }
    }
    assert_eq!(
        on(
            "replica2",
            "SELECT count(*) FROM public.log WHERE tenant_id NOT IN (1, 2)"
        )
        .as_deref(),
        Some("0")
    );
    let out = repl.output();
    assert!(out.contains("a target new to the job"), "{out}");
    assert!(
        out.contains("target 1: public.items (the whole table); public.log (the whole table)")
            && !out.contains("target 0:"),
        "only the new target loads:\n{out}"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
}

#[test]
fn a_wider_spec_the_job_cannot_load_stops_it_naming_what_to_do() {
    // A job whose only sink is the cold tier keeps its progress there, with no history
    // table to record loaded rows in.
    let env = Env::start(SETUP);
    let cold = env.dir.path().join("cold");
    let spec = |tenants: &str| {
        let path = env.dir.path().join("cold-only.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"cold-only\"\n[source]\ndsn = \"{}\"\npublication = \"pub_cold\"\nslot = \"slot_cold\"\n\
                 [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.items\"\nhistory = true\n\
                 [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n",
                env.source_dsn(),
                cold.display()
            ),
        )
        .expect("write job file");
        path
    };
    let tenant_dir = |t: &str| table_dir(&cold, t, "public.items");
    let mut repl = Replicator::start_inline(&spec("[1]"));
    wait_for("tenant 1 in the cold tier", Duration::from_secs(60), || {
        tenant_dir("1").join(MANIFEST_FILE).exists()
    });
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    let mut repl = Replicator::start_inline(&spec("[1, 2]"));
    wait_for("the job to stop", Duration::from_secs(60), || {
        !repl.is_running()
    });
    let out = repl.output();
    assert!(
        out.contains("public.items (tenants 2)")
            && out.contains("needs a PostgreSQL sink")
            && out.contains("this job has a parquet sink only")
            && out.contains("--drop-slot"),
        "{out}"
    );
    assert!(
        !tenant_dir("2").exists(),
        "nothing streamed as if the cold tier held tenant 2"
    );
}

const ITEMS_1_2: &str = "SELECT tenant_id, count(*), md5(string_agg(v, ',' ORDER BY id)) \
                         FROM public.items WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1";
const NOTES_1_2: &str = "SELECT tenant_id, count(*), md5(string_agg(body, ',' ORDER BY id)) \
                         FROM public.notes WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1";

/// A job whose `items` and `notes` keep history, into the target only, carrying `tenants`
/// of `items` (and `notes` when `with_notes`); `extra_sink` is appended to its sinks.
fn history_job(env: &Env, tenants: &str, with_notes: bool, extra_sink: &str) -> std::path::PathBuf {
    let notes = if with_notes {
        "[[tables]]\nname = \"public.notes\"\nhistory = true\n"
    } else {
        ""
    };
    let path = env.dir.path().join("versions.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"versions\"\n[source]\ndsn = \"{}\"\npublication = \"pub_versions\"\nslot = \"slot_versions\"\n\
             [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.items\"\nhistory = true\n{notes}\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n{extra_sink}",
            env.source_dsn(),
            env.target_dsn(),
        ),
    )
    .expect("write job file");
    path
}

/// Keys of `table`'s history with more than one current version (open in system time,
/// valid with no end), and current versions whose values differ from the target's row
/// (or whose row is gone), for `tenants`. (An update also leaves the old value open for
/// the valid time before it: those versions have an end.)
pub(crate) fn history_disagreements(env: &Env, table: &str, value: &str, tenants: &str) -> String {
    env.on_target(&format!(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM public.{table}_history \
                 WHERE system_to_lsn IS NULL AND valid_to IS NULL AND NOT tombstone \
                   AND tenant_id IN ({tenants}) \
                 GROUP BY tenant_id, id HAVING count(*) > 1) d) \
              + (SELECT count(*) FROM public.{table} t FULL JOIN \
                   (SELECT * FROM public.{table}_history \
                    WHERE system_to_lsn IS NULL AND valid_to IS NULL AND NOT tombstone) h \
                   USING (tenant_id, id) \
                 WHERE coalesce(t.tenant_id, h.tenant_id) IN ({tenants}) \
                   AND (t.id IS NULL OR h.id IS NULL OR t.{value} IS DISTINCT FROM h.{value}))"
    ))
}

#[test]
fn tenants_and_tables_added_to_a_job_with_history_get_versions_from_the_backfill() {
    let env = Arc::new(Env::start(SETUP));
    let mut repl = Replicator::start_inline(&history_job(&env, "[1]", false, ""));
    env.wait_converged(
        "SELECT count(*) FROM public.items WHERE tenant_id = 1",
        Duration::from_secs(60),
    );
    env.on_source("UPDATE public.items SET v = 'streamed' WHERE tenant_id = 1 AND id <= 5");
    wait_for("the streamed versions", Duration::from_secs(30), || {
        env.try_on_target("SELECT count(*) FROM public.items_history WHERE v = 'streamed'")
            .as_deref()
            == Some("5")
    });
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // While the job is stopped: tenant 1 (carried) and tenant 2 (not yet) change.
    env.on_source(
        "UPDATE public.items SET v = 'stopped' WHERE tenant_id = 1 AND id <= 5;
         UPDATE public.items SET v = 'stopped' WHERE tenant_id = 2 AND id <= 20;
         DELETE FROM public.items WHERE tenant_id = 2 AND id > 290;",
    );
    // Tenant 2 and table `notes` (with history) added. A writer changes both tenants
    // while the job restarts: its transactions commit before, during and after the
    // backfill's snapshot, once the publication carries tenant 2.
    let writer = SourceWriter::start(&env, 0, |n| {
        format!(
            "BEGIN;
             UPDATE public.items SET v = 'live {n}' WHERE tenant_id IN (1, 2) AND id = {n} % 280 + 1;
             UPDATE public.notes SET body = 'live {n}' WHERE tenant_id = 2 AND id = 2000 + {n} % 50 + 1;
             COMMIT;"
        )
    });
    let mut repl = Replicator::start_inline(&history_job(&env, "[1, 2]", true, ""));
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    std::thread::sleep(Duration::from_millis(800));
    let written = writer.stop();
    assert!(written > 5, "the writer wrote while the job restarted");
    env.wait_converged(ITEMS_1_2, Duration::from_secs(60));
    env.wait_converged(NOTES_1_2, Duration::from_secs(30));
    let out = repl.output();
    assert!(
        out.contains("public.items (tenants 2)")
            && out.contains("public.notes (the whole table)")
            && out.contains("backfilled rows recorded as history versions"),
        "{out}"
    );

    // Tenant 2's history starts at the backfill: one version per row it loaded, all
    // known from the same point, none from before (the changes made while the job was
    // stopped are folded into the load), then the writer's later changes.
    let floor = env.on_target(
        "SELECT floor_lsn FROM helios.backfill_floors WHERE job = 'versions' AND table_name = 'public.items'",
    );
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(*) FROM public.items_history WHERE tenant_id = 2 AND system_from_lsn < '{floor}'"
        )),
        "0",
        "no version of tenant 2 from before the backfill"
    );
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(*) FROM public.items_history WHERE tenant_id = 2 AND system_from_lsn = '{floor}'"
        )),
        "290",
        "one version per row the backfill loaded"
    );
    // The loaded versions are known from before anything the stream applied after the
    // floor (by the source's clock, which stamps the commits), so no later change of
    // theirs is stamped earlier.
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(*) FROM public.items_history a JOIN public.items_history b \
             USING (tenant_id, id) WHERE a.system_from_lsn = '{floor}' \
             AND b.system_from_lsn > '{floor}' AND b.system_from < a.system_from"
        )),
        "0"
    );
    // Tenant 1's history goes on version by version: its change while the job was
    // stopped is a version of its own, known from its commit (before the floor), and it
    // closed the version the job streamed before it stopped.
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(DISTINCT id) FROM public.items_history WHERE tenant_id = 1 \
             AND v = 'stopped' AND system_from_lsn < '{floor}'"
        )),
        "5"
    );
    assert_eq!(
        env.on_target(
            "SELECT count(DISTINCT id) FROM public.items_history WHERE tenant_id = 1 \
             AND v = 'streamed' AND valid_to IS NULL AND system_to_lsn IS NOT NULL"
        ),
        "5"
    );
    assert_eq!(history_disagreements(&env, "items", "v", "1, 2"), "0");
    assert_eq!(history_disagreements(&env, "notes", "body", "1, 2"), "0");

    // Later changes close the backfilled versions (the books hold them from the floor).
    env.on_source(
        "UPDATE public.items SET v = 'after' WHERE tenant_id = 2 AND id BETWEEN 281 AND 285;
         DELETE FROM public.items WHERE tenant_id = 2 AND id = 286;
         UPDATE public.notes SET body = 'after' WHERE tenant_id = 1;",
    );
    env.wait_converged(ITEMS_1_2, Duration::from_secs(30));
    env.wait_converged(NOTES_1_2, Duration::from_secs(30));
    wait_for("the later versions", Duration::from_secs(30), || {
        history_disagreements(&env, "items", "v", "1, 2") == "0"
            && history_disagreements(&env, "notes", "body", "1, 2") == "0"
    });
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(*) FROM public.items_history WHERE tenant_id = 2 AND id BETWEEN 281 AND 286 \
             AND system_from_lsn = '{floor}' AND system_to_lsn IS NOT NULL"
        )),
        "6",
        "the backfilled versions of the changed rows are closed"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // A restart past the floor restores the books from the history table as usual.
    let mut repl = Replicator::start_inline(&history_job(&env, "[1, 2]", true, ""));
    wait_for("the job to stream", Duration::from_secs(60), || {
        repl.output().contains("streaming")
    });
    env.on_source("UPDATE public.items SET v = 'restarted' WHERE tenant_id = 2 AND id <= 3");
    env.wait_converged(ITEMS_1_2, Duration::from_secs(30));
    wait_for("the restarted versions", Duration::from_secs(30), || {
        history_disagreements(&env, "items", "v", "1, 2") == "0"
    });
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // A PostgreSQL target added to the job would hold a history starting at its load
    // while the first one's goes on: refused, naming what to do.
    env.target
        .psql("postgres", "CREATE DATABASE second")
        .expect("create database");
    let second = format!(
        "[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.target.dsn("second")
    );
    let mut repl = Replicator::start_inline(&history_job(&env, "[1, 2]", true, &second));
    wait_for("the job to stop", Duration::from_secs(60), || {
        !repl.is_running()
    });
    let out = repl.output();
    assert!(
        out.contains("keeps history; its targets lack different rows of it")
            && out.contains("--drop-slot"),
        "{out}"
    );
    let _ = repl.stop();
}
