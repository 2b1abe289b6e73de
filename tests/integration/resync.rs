//! `run --resync <table>` reloads a table in error state from the source once the target
//! is mended: the job's tenants' rows of it are replaced (no other tenant's row is
//! touched), the error state goes, and its changes apply again, with the source written
//! all along (no gap, no overlap). A reload the target still refuses leaves the table in
//! error with the reason while the rest of the job streams on; a bad table name is
//! refused before anything connects. A new snapshot clears error states as well. A table
//! with history gets versions from the reload where rows changed, and keeps the rest.
//! `--resync-tenant` reloads only the named tenants' rows.

use std::sync::Arc;
use std::time::Duration;

use crate::harness::{wait_for, Env, Replicator, SourceWriter};

const WAIT: Duration = Duration::from_secs(60);

const SETUP: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id bigint NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.other (tenant_id int NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO public.items SELECT t, i, 'pre-' || i FROM generate_series(1, 3) t, generate_series(1, 200) i;
";

/// The job's tenants' rows of `public.items`, compared on source and target.
const ITEMS: &str = "SELECT tenant_id, count(*), md5(string_agg(id || '=' || v, ',' ORDER BY id)) \
                     FROM public.items WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1";
const OTHER: &str = "SELECT count(*), max(id) FROM public.other WHERE tenant_id IN (1, 2)";

fn items_state(env: &Env) -> Option<String> {
    env.try_on_target(
        "SELECT state || ': ' || coalesce(error, '') FROM helios.table_state \
         WHERE table_name = 'public.items'",
    )
}

/// Waits for `public.items` to be in error state.
fn wait_for_items_error(env: &Env) {
    wait_for("the table error to be recorded", WAIT, || {
        items_state(env).is_some_and(|s| s.starts_with("error: "))
    });
}

/// Waits for more than one change of `public.items` kept as a dead letter.
fn wait_for_dead_letters(env: &Env) {
    wait_for(
        "the failed table's changes kept as dead letters",
        WAIT,
        || {
            env.on_target(
                "SELECT count(*) > 1 FROM helios.dead_letters WHERE table_name = 'public.items'",
            ) == "t"
        },
    );
}

fn streaming(job: &std::path::Path, extra: &[&str]) -> Replicator {
    let repl = Replicator::start_with_args(job, 2, extra);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    repl
}

#[test]
fn a_table_in_error_is_reloaded_by_a_resync_once_the_target_is_mended() {
    let env = Arc::new(Env::start(SETUP));
    let job = env.job_file("resync", "[1, 2]", &["public.items", "public.other"]);

    // A name that is not one of the job's tables: refused before anything connects.
    let mut bad = Replicator::start_with_args(&job, 2, &["--resync", "public.nope"]);
    wait_for("the bad resync to be refused", WAIT, || !bad.is_running());
    assert!(
        bad.output()
            .contains("`public.nope` is not a table of job `resync`"),
        "{}",
        bad.output()
    );
    assert_eq!(
        env.try_on_target("SELECT to_regclass('helios.table_state')::text"),
        Some(String::new())
    );

    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    // A row of a tenant the job does not carry, on the shared target table.
    env.on_target("INSERT INTO public.items VALUES (9, 1, 'not the job''s')");

    // The target refuses a change: the table goes into error, its changes into dead letters.
    env.on_target("ALTER TABLE public.items ADD CONSTRAINT no_bad CHECK (v <> 'bad')");
    env.on_source("INSERT INTO public.items VALUES (1, 500, 'bad')");
    wait_for_items_error(&env);
    env.on_source(
        "UPDATE public.items SET v = 'changed' WHERE id = 7; DELETE FROM public.items WHERE id = 8; \
         INSERT INTO public.other VALUES (1, 1)",
    );
    env.wait_converged(OTHER, WAIT);
    wait_for_dead_letters(&env);
    assert_eq!(repl.stop().code(), Some(0));
    let dead_letters =
        env.on_target("SELECT count(*) FROM helios.dead_letters WHERE table_name = 'public.items'");

    // Resynced while the target still refuses the row: back in error with the reason,
    // and the rest of the job streams on.
    let mut repl = streaming(&job, &["--resync", "items"]);
    wait_for("the refused reload to be recorded", WAIT, || {
        items_state(&env)
            .is_some_and(|s| s.starts_with("error: resync failed") && s.contains("no_bad"))
    });
    env.on_source("INSERT INTO public.other VALUES (2, 2)");
    env.wait_converged(OTHER, WAIT);
    assert!(repl.is_running(), "{}", repl.output());
    assert_eq!(repl.stop().code(), Some(0));
    assert_eq!(
        pending_dead_letters(&env),
        dead_letters,
        "nothing reloaded: all pending"
    );

    // Mended, and drifted besides (a row of the job deleted by hand): the resync loads
    // the table again while the source is written.
    env.on_target("ALTER TABLE public.items DROP CONSTRAINT no_bad; DELETE FROM public.items WHERE tenant_id = 2 AND id = 5");
    let writer = SourceWriter::start(&env, 1000, |n| {
        format!(
            "INSERT INTO public.items VALUES (1 + {n} % 3, {n}, 'w{n}'); \
             UPDATE public.items SET v = 'u{n}' WHERE id = {n} - 300 OR id = {n} % 200"
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut repl = streaming(&job, &["--resync", "public.items"]);
    std::thread::sleep(Duration::from_millis(1000));
    let written = writer.stop();
    assert!(written > 0);
    env.on_source("INSERT INTO public.items VALUES (2, 9000, 'after the resync')");
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(
        items_state(&env),
        Some(String::new()),
        "the error state is gone"
    );
    assert_eq!(
        env.on_target("SELECT v FROM public.items WHERE tenant_id = 9"),
        "not the job's",
        "other tenants' rows are not touched"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.dead_letters WHERE table_name = 'public.items'"),
        dead_letters,
        "the dead letters stay as a record, and no new ones"
    );
    // Each marked superseded by the reload, at its floor.
    assert_eq!(pending_dead_letters(&env), "0");
    assert_eq!(
        env.on_target(
            "SELECT count(DISTINCT superseded_lsn) = 1 AND min(superseded_lsn) = \
               (SELECT max(floor_lsn) FROM helios.backfill_floors WHERE table_name = 'public.items') \
             FROM helios.dead_letters WHERE table_name = 'public.items'"
        ),
        "t"
    );
    let log = repl.output();
    assert!(log.contains("resync requested"), "{log}");
    assert!(repl.is_running(), "{log}");

    // In error again; the slot dropped: the new snapshot loads every table whole, which
    // clears the error state too.
    env.on_target("ALTER TABLE public.items ADD CONSTRAINT no_worse CHECK (v <> 'worse')");
    env.on_source("INSERT INTO public.items VALUES (2, 501, 'worse')");
    wait_for_items_error(&env);
    assert_eq!(repl.stop().code(), Some(0));
    env.on_target("ALTER TABLE public.items DROP CONSTRAINT no_worse");
    env.on_source("SELECT pg_drop_replication_slot('slot_resync')");
    assert_eq!(pending_dead_letters(&env), "1", "the refused insert");
    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(items_state(&env), Some(String::new()), "{}", repl.output());
    assert_eq!(
        pending_dead_letters(&env),
        "0",
        "superseded by the new snapshot"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// Tenant 2's rows of `public.items`, compared on source and target.
const TENANT_2_ITEMS: &str = "SELECT count(*), md5(string_agg(id || '=' || v, ',' ORDER BY id)) \
                              FROM public.items WHERE tenant_id = 2";

/// The job's pending tenant resync requests, as `table:tenant` lines.
fn tenant_requests(env: &Env) -> String {
    env.on_target(
        "SELECT coalesce(string_agg(table_name || ':' || tenant, ',' ORDER BY 1), '') \
         FROM helios.tenant_resync",
    )
}

/// `run --resync items --resync-tenant 2` reloads only tenant 2's rows of the table, with
/// the source written all along: rows of tenant 2 that drifted on the target are mended,
/// tenant 1's drift and another tenant's row stay as they are (only what was asked is
/// touched), and the table keeps no error state. A tenant the job does not carry is
/// refused before anything connects; a reload the target refuses leaves the rows as they
/// were while the job streams on; a tenants' reload of a table in error is refused (a
/// whole reload takes it out of error). A new snapshot drops a pending request.
#[test]
fn a_tenants_rows_that_drifted_are_reloaded_by_a_tenant_resync() {
    let env = Arc::new(Env::start(SETUP));
    let job = env.job_file("tenant-resync", "[1, 2]", &["public.items", "public.other"]);
    let resync_tenant =
        |tenant: &str| ["--resync", "items", "--resync-tenant", tenant].map(String::from);

    let mut bad =
        Replicator::start_with_args(&job, 2, &resync_tenant("3").each_ref().map(String::as_str));
    wait_for("the bad tenant to be refused", WAIT, || !bad.is_running());
    assert!(
        bad.output()
            .contains("tenant `3` is not one of job `tenant-resync`'s tenants (1, 2)"),
        "{}",
        bad.output()
    );

    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(repl.stop().code(), Some(0));
    env.on_target(
        "UPDATE public.items SET v = 'drifted' WHERE id = 3; DELETE FROM public.items WHERE id = 4; \
         INSERT INTO public.items VALUES (9, 1, 'not the job''s')",
    );
    let writer = SourceWriter::start(&env, 1000, |n| {
        format!(
            "INSERT INTO public.items VALUES (1 + {n} % 2, {n}, 'w{n}'); \
             UPDATE public.items SET v = 'u{n}' WHERE id = {n} - 5"
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut repl = streaming(&job, &resync_tenant("2").each_ref().map(String::as_str));
    std::thread::sleep(Duration::from_millis(1000));
    assert!(writer.stop() > 0);
    env.on_source("INSERT INTO public.items VALUES (2, 9000, 'after the resync')");
    env.wait_converged(TENANT_2_ITEMS, WAIT);
    assert_eq!(
        env.on_target(
            "SELECT string_agg(tenant_id || ':' || id || '=' || v, ',' ORDER BY 1, 2) \
             FROM public.items WHERE id IN (1, 3, 4) AND tenant_id <> 2"
        ),
        "1:1=pre-1,1:3=drifted,9:1=not the job's",
        "tenant 1's drift and another tenant's row are not touched"
    );
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM public.items WHERE tenant_id = 1 AND id >= 1000 AND v LIKE 'w%'"
        ),
        env.on_source(
            "SELECT count(*) FROM public.items WHERE tenant_id = 1 AND id >= 1000 AND v LIKE 'w%'"
        ),
        "tenant 1's changes stream on"
    );
    assert_eq!(items_state(&env), Some(String::new()), "no table state");
    assert_eq!(tenant_requests(&env), "", "the request is done");
    assert_eq!(
        env.on_target("SELECT string_agg(scope, ',') FROM helios.backfill_floors"),
        "tenant:2"
    );
    let log = repl.output();
    assert!(
        log.contains("these tenants' rows of the table are loaded again"),
        "{log}"
    );
    assert_eq!(repl.stop().code(), Some(0));

    // A reload the target refuses (a constraint its current rows were not checked
    // against): tenant 2's rows stay as they were, the request goes, the job streams on.
    env.on_target(
        "UPDATE public.items SET v = 'drifted' WHERE tenant_id = 2 AND id = 3; \
         ALTER TABLE public.items ADD CONSTRAINT no_pre_7 CHECK (v <> 'pre-7') NOT VALID",
    );
    let mut repl = streaming(&job, &resync_tenant("2").each_ref().map(String::as_str));
    wait_for("the refused reload to be logged", WAIT, || {
        repl.output()
            .contains("the target refused the reload of these tenants' rows")
    });
    env.on_source("INSERT INTO public.other VALUES (2, 2)");
    env.wait_converged(OTHER, WAIT);
    assert!(repl.is_running(), "{}", repl.output());
    assert_eq!(
        env.on_target("SELECT v FROM public.items WHERE tenant_id = 2 AND id = 3"),
        "drifted"
    );
    assert_eq!(items_state(&env), Some(String::new()), "no table state");
    assert_eq!(tenant_requests(&env), "", "the request is dropped");

    // A table in error: a tenants' reload is refused, naming what to do.
    env.on_source("INSERT INTO public.items VALUES (1, 501, 'pre-7')");
    wait_for_items_error(&env);
    assert_eq!(repl.stop().code(), Some(0));
    let mut refused =
        Replicator::start_with_args(&job, 2, &resync_tenant("1").each_ref().map(String::as_str));
    wait_for(
        "the tenants' reload of a table in error to be refused",
        WAIT,
        || !refused.is_running(),
    );
    assert!(
        refused
            .output()
            .contains("public.items is in error state on a target; reload the whole table"),
        "{}",
        refused.output()
    );
    assert_eq!(tenant_requests(&env), "");

    // A new snapshot (the slot dropped) loads every table whole: a pending tenants'
    // request goes with the error state.
    env.on_target(
        "ALTER TABLE public.items DROP CONSTRAINT no_pre_7; \
         INSERT INTO helios.tenant_resync (job, table_name, tenant) \
         VALUES ('tenant-resync', 'public.items', '1')",
    );
    env.on_source("SELECT pg_drop_replication_slot('slot_tenant_resync')");
    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(items_state(&env), Some(String::new()), "{}", repl.output());
    assert_eq!(tenant_requests(&env), "", "{}", repl.output());
    assert_eq!(repl.stop().code(), Some(0));
}

/// Dead letters of `public.items` no whole load has superseded.
fn pending_dead_letters(env: &Env) -> String {
    env.on_target(
        "SELECT count(*) FROM helios.dead_letters \
         WHERE table_name = 'public.items' AND superseded_lsn IS NULL",
    )
}

/// A job over `public.items` with history and `public.other`, tenants 1 and 2.
fn history_job(env: &Env) -> std::path::PathBuf {
    let path = env.dir.path().join("hresync.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"hresync\"\n[source]\ndsn = \"{}\"\npublication = \"pub_hresync\"\nslot = \"slot_hresync\"\n\
             [tenants]\ninclude = [1, 2]\n[[tables]]\nname = \"public.items\"\nhistory = true\n\
             [[tables]]\nname = \"public.other\"\n[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
            env.source_dsn(),
            env.target_dsn(),
        ),
    )
    .expect("write job file");
    path
}

#[test]
fn a_table_with_history_in_error_is_resynced_with_versions_from_the_reload() {
    let env = Env::start(SETUP);
    let job = history_job(&env);
    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    env.on_source("UPDATE public.items SET v = 'streamed' WHERE id <= 5");
    wait_for("the streamed versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.items_history WHERE v = 'streamed' AND tenant_id IN (1, 2)")
            .as_deref()
            == Some("10")
    });

    // In error; changes meanwhile are dead letters, and versions in the history table.
    env.on_target("ALTER TABLE public.items ADD CONSTRAINT no_bad CHECK (v <> 'bad')");
    env.on_source("UPDATE public.items SET v = 'bad' WHERE tenant_id = 1 AND id = 6");
    wait_for_items_error(&env);
    env.on_source("UPDATE public.items SET v = 'during' WHERE id IN (7, 8)");
    wait_for_dead_letters(&env);
    assert_eq!(repl.stop().code(), Some(0));
    env.on_target("ALTER TABLE public.items DROP CONSTRAINT no_bad");
    env.on_source("UPDATE public.items SET v = 'stopped' WHERE id = 9");

    let repl = streaming(&job, &["--resync", "public.items"]);
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(items_state(&env), Some(String::new()), "{}", repl.output());
    assert_eq!(
        crate::backfill::history_disagreements(&env, "items", "v", "1, 2"),
        "0",
        "one current version per row, equal to the row"
    );
    let floor = env.on_target(
        "SELECT max(floor_lsn) FROM helios.backfill_floors WHERE job = 'hresync' AND table_name = 'public.items'",
    );
    assert!(!floor.is_empty(), "{}", repl.output());
    // The changes made while the table was in error got their versions from the stream
    // (the history table records them while the table refuses them); only the change made
    // while the job was stopped got one from the reload, for both tenants.
    assert_eq!(
        env.on_target(&format!(
            "SELECT string_agg(tenant_id || ':' || id || '=' || v, ',' ORDER BY tenant_id, id) \
             FROM public.items_history WHERE system_from_lsn = '{floor}'"
        )),
        "1:9=stopped,2:9=stopped"
    );
    assert_eq!(
        env.on_target(&format!(
            "SELECT string_agg(tenant_id || ':' || id || '=' || v, ',' ORDER BY tenant_id, id) \
             FROM public.items_history WHERE system_from_lsn < '{floor}' \
             AND v IN ('bad', 'during')"
        )),
        "1:6=bad,1:7=during,1:8=during,2:7=during,2:8=during"
    );
    // One version per change, none of them twice.
    assert_eq!(
        env.on_target(
            "SELECT count(*) = count(DISTINCT (tenant_id, id)) FROM public.items_history \
             WHERE v IN ('bad', 'during', 'stopped')"
        ),
        "t"
    );
    // Rows that did not change keep the versions the stream wrote.
    assert_eq!(
        env.on_target(&format!(
            "SELECT count(*) FROM public.items_history WHERE v = 'streamed' \
             AND system_to_lsn IS NULL AND system_from_lsn < '{floor}'"
        )),
        "10"
    );

    streams_on_after_the_reload(&env, repl, &floor);
}

/// The stream goes on version by version after a reload at `floor`: a change of both
/// tenants' row 6 gets versions past it, and each row's current version equals the row.
fn streams_on_after_the_reload(env: &Env, mut repl: Replicator, floor: &str) {
    env.on_source("UPDATE public.items SET v = 'after' WHERE id = 6");
    wait_for("the versions after the resync", WAIT, || {
        env.on_target(&format!(
            "SELECT string_agg(tenant_id || ':' || id, ',' ORDER BY tenant_id) \
             FROM public.items_history WHERE v = 'after' AND system_from_lsn > '{floor}'"
        )) == "1:6,2:6"
    });
    env.wait_converged(ITEMS, WAIT);
    assert_eq!(
        crate::backfill::history_disagreements(env, "items", "v", "1, 2"),
        "0"
    );
    assert!(repl.is_running(), "{}", repl.output());
    assert_eq!(repl.stop().code(), Some(0));
}

/// A tenants' resync of a table with history: only that tenant's rows are reloaded, and
/// they get versions from the reload where they differ from their open versions (the
/// change made while the job was stopped), while the other tenant's change of that time
/// gets its version from the stream. A row that drifted on the target alone is mended
/// with no version (the history records the source).
#[test]
fn a_tenant_of_a_table_with_history_is_resynced_with_versions_from_the_reload() {
    let env = Env::start(SETUP);
    let job = history_job(&env);
    let mut repl = streaming(&job, &[]);
    env.wait_converged(ITEMS, WAIT);
    wait_for("the snapshot's versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.items_history WHERE tenant_id IN (1, 2)")
            .as_deref()
            == Some("400")
    });
    assert_eq!(repl.stop().code(), Some(0));
    env.on_target("UPDATE public.items SET v = 'drifted' WHERE tenant_id = 2 AND id = 3");
    env.on_source("UPDATE public.items SET v = 'stopped' WHERE id = 9");

    let repl = streaming(&job, &["--resync", "items", "--resync-tenant", "2"]);
    env.wait_converged(ITEMS, WAIT);
    let floor = env.on_target(
        "SELECT max(floor_lsn) FROM helios.backfill_floors WHERE job = 'hresync' AND scope = 'tenant:2'",
    );
    assert!(!floor.is_empty(), "{}", repl.output());
    let versions = |condition: &str| {
        env.on_target(&format!(
            "SELECT coalesce(string_agg(tenant_id || ':' || id || '=' || v, ',' ORDER BY tenant_id, id), '') \
             FROM public.items_history WHERE {condition}"
        ))
    };
    assert_eq!(
        versions(&format!("system_from_lsn = '{floor}'")),
        "2:9=stopped"
    );
    assert_eq!(
        versions(&format!("v = 'stopped' AND system_from_lsn < '{floor}'")),
        "1:9=stopped"
    );
    assert_eq!(versions("v = 'drifted'"), "", "no version of the drift");
    assert_eq!(
        env.on_target("SELECT v FROM public.items WHERE tenant_id = 2 AND id = 3"),
        "pre-3"
    );
    assert_eq!(
        crate::backfill::history_disagreements(&env, "items", "v", "1, 2"),
        "0"
    );

    streams_on_after_the_reload(&env, repl, &floor);
}
