//! A table the initial snapshot (or a later start's backfill of a table added to the job)
//! creates on a target (staged, or in place for a table without a key) gets the source's
//! column defaults, stored generated columns (which pgoutput does not
//! send: the target computes them) and secondary indexes (plain, unique, partial, on
//! expressions; a partitioned table's too; unique ones as plain ones, which the apply's
//! writes of each key's last row cannot trip) once its rows are loaded; one the target cannot build is left out with a warning; a table the target
//! already had is left as its owner made it.

use std::time::Duration;

use crate::harness::{Env, Replicator};

const WAIT: Duration = Duration::from_secs(60);

const SETUP: &str = "
CREATE FUNCTION public.shout(text) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT upper($1)';
CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, slug text NOT NULL, v text,
    search tsvector GENERATED ALWAYS AS (to_tsvector('simple', coalesce(v, ''))) STORED,
    loud text GENERATED ALWAYS AS (public.shout(v)) STORED,
    PRIMARY KEY (tenant_id, id));
CREATE INDEX items_search_idx ON public.items USING gin (search);
CREATE UNIQUE INDEX items_slug_key ON public.items (tenant_id, slug);
CREATE INDEX items_v_idx ON public.items (v) WHERE v IS NOT NULL;
CREATE INDEX items_lower_v_idx ON public.items (lower(v));
CREATE INDEX items_shout_idx ON public.items (public.shout(v));
CREATE TABLE public.events (tenant_id int NOT NULL, id int NOT NULL, at timestamptz,
    PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id);
CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES IN (1);
CREATE TABLE public.events_2 PARTITION OF public.events FOR VALUES IN (2);
CREATE INDEX events_at_idx ON public.events (at);
CREATE TABLE public.kept (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE INDEX kept_v_idx ON public.kept (v);
CREATE TABLE public.later (tenant_id int NOT NULL, id int NOT NULL, v text,
    len int GENERATED ALWAYS AS (length(v)) STORED, tag text DEFAULT 'x', PRIMARY KEY (tenant_id, id));
CREATE TABLE public.log (tenant_id int NOT NULL, at timestamptz DEFAULT now(), msg text,
    n int GENERATED ALWAYS AS (length(msg)) STORED);
CREATE INDEX log_at_idx ON public.log (at);
INSERT INTO public.log (tenant_id, msg) SELECT 1 + i % 2, 'm' || i FROM generate_series(1, 50) i;
CREATE INDEX later_v_idx ON public.later (v);
CREATE INDEX later_len_idx ON public.later (len);
INSERT INTO public.later SELECT 1 + i % 2, i, 'v' || i FROM generate_series(1, 100) i;
INSERT INTO public.items (tenant_id, id, slug, v) SELECT 1 + i % 2, i, 's' || i, 'v' || i FROM generate_series(1, 100) i;
INSERT INTO public.events SELECT 1 + i % 2, i, now() FROM generate_series(1, 100) i;
INSERT INTO public.kept SELECT 1 + i % 2, i, 'v' || i FROM generate_series(1, 100) i;
";

/// The target's indexes of `table`, by name, with `:u` for unique ones.
fn indexes(env: &Env, table: &str) -> String {
    env.on_target(&format!(
        "SELECT string_agg(c.relname || CASE WHEN i.indisunique THEN ':u' ELSE '' END, ',' ORDER BY c.relname)
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = '{table}'::regclass"
    ))
}

#[test]
fn tables_the_snapshot_creates_get_the_sources_indexes() {
    let env = Env::start(SETUP);
    env.on_target(
        "CREATE TABLE public.kept (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id))",
    );
    let job = env.job_file(
        "indexes",
        "[1]",
        &["public.items", "public.events", "public.kept", "public.log"],
    );
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(
        "SELECT tenant_id, id, slug, v FROM public.items WHERE tenant_id = 1 ORDER BY 2",
        WAIT,
    );
    assert_eq!(
        indexes(&env, "public.items"),
        "items_lower_v_idx,items_pkey:u,items_search_idx,items_slug_key,items_v_idx",
        "the source's indexes (a unique one as a plain one) but the one on a function only \
         the source has"
    );
    assert_eq!(
        env.on_target(
            "SELECT pg_get_indexdef('public.items_v_idx'::regclass) || ' / ' || pg_get_indexdef('public.items_lower_v_idx'::regclass)"
        ),
        "CREATE INDEX items_v_idx ON public.items USING btree (v) WHERE (v IS NOT NULL) / \
         CREATE INDEX items_lower_v_idx ON public.items USING btree (lower(v))"
    );
    assert_eq!(
        indexes(&env, "public.events"),
        "events_at_idx,events_pkey:u"
    );
    assert_eq!(
        indexes(&env, "public.kept"),
        "kept_pkey:u",
        "a table the target had keeps its own indexes"
    );
    // A table without a key, created in place rather than staged, gets them too.
    env.wait_converged(
        "SELECT at, msg, n FROM public.log WHERE tenant_id = 1 ORDER BY msg",
        WAIT,
    );
    assert_eq!(indexes(&env, "public.log"), "log_at_idx");
    assert_eq!(
        env.on_target(
            "SELECT column_default FROM information_schema.columns WHERE table_name = 'log' AND column_name = 'at'"
        ),
        "now()"
    );
    let out = repl.output();
    assert!(
        out.contains("the target cannot build one of the source's indexes")
            && out.contains("items_shout_idx"),
        "{out}"
    );
    // The generated column the target can compute, with the source's values; the one on
    // a function only the source has is left out.
    let searched = "SELECT id, search::text FROM public.items WHERE tenant_id = 1 ORDER BY id";
    env.wait_converged(searched, WAIT);
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'items' AND column_name = 'loud'"
        ),
        "0"
    );
    assert!(
        out.contains("the target cannot compute one of the source's generated columns"),
        "{out}"
    );
    // Two rows swapping a unique value through a third in one source transaction: the
    // apply writes each key's last row, which a unique index on the target would refuse.
    env.on_source(
        "BEGIN; UPDATE public.items SET slug = 'tmp' WHERE tenant_id = 1 AND id = 2; \
         UPDATE public.items SET slug = 's2' WHERE tenant_id = 1 AND id = 4; \
         UPDATE public.items SET slug = 's4' WHERE tenant_id = 1 AND id = 2; COMMIT",
    );
    env.on_source(
        "INSERT INTO public.items (tenant_id, id, slug, v) VALUES (1, 500, 's500', 'new')",
    );
    env.on_source("UPDATE public.items SET v = 'words here' WHERE tenant_id = 1 AND id = 6");
    env.wait_converged(
        "SELECT tenant_id, id, slug, v FROM public.items WHERE tenant_id = 1 ORDER BY 2",
        WAIT,
    );
    env.wait_converged(searched, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());

    // A table added to the job later is loaded by the start's backfill: it gets them too.
    let job = env.job_file(
        "indexes",
        "[1]",
        &[
            "public.items",
            "public.events",
            "public.kept",
            "public.log",
            "public.later",
        ],
    );
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(
        "SELECT tenant_id, id, v FROM public.later WHERE tenant_id = 1 ORDER BY 2",
        WAIT,
    );
    assert_eq!(
        indexes(&env, "public.later"),
        "later_len_idx,later_pkey:u,later_v_idx",
        "an index on a generated column too"
    );
    env.wait_converged(
        "SELECT id, len FROM public.later WHERE tenant_id = 1 ORDER BY id",
        WAIT,
    );
    assert_eq!(
        env.on_target(
            "SELECT column_default FROM information_schema.columns WHERE table_name = 'later' AND column_name = 'tag'"
        ),
        "'x'::text",
        "a backfilled table gets the source's defaults"
    );
    assert!(repl.stop().success(), "{}", repl.output());
}

/// A table the target's owner made with an identity column `GENERATED ALWAYS` (as an
/// application's migrations often do) takes the source's ids: the snapshot's `COPY`, the
/// stream's plain inserts, a `COPY` of many rows and upserts. Without `OVERRIDING SYSTEM
/// VALUE` the stream's inserts were refused and the table put in error state.
#[test]
fn a_target_table_whose_identity_is_generated_always_takes_the_sources_ids() {
    const TABLE: &str = "CREATE TABLE public.accounts (tenant_id int NOT NULL,
        id bigint GENERATED ALWAYS AS IDENTITY, v text, PRIMARY KEY (tenant_id, id));";
    let env = Env::start(&format!(
        "{TABLE} INSERT INTO public.accounts (tenant_id, v) SELECT 1 + i % 2, 'v' || i FROM generate_series(1, 50) i;"
    ));
    env.on_target(TABLE);
    let job = env.job_file("identity", "[1]", &["public.accounts"]);
    let mut repl = Replicator::streaming(&job);
    let q = "SELECT id, v FROM public.accounts WHERE tenant_id = 1 ORDER BY id";
    env.wait_converged(q, WAIT);
    env.on_source("INSERT INTO public.accounts (tenant_id, v) VALUES (1, 'one')");
    env.on_source(
        "INSERT INTO public.accounts (tenant_id, v) SELECT 1, 'many' || i FROM generate_series(1, 700) i",
    );
    env.on_source(
        "BEGIN; INSERT INTO public.accounts (tenant_id, v) VALUES (1, 'then changed'); \
         UPDATE public.accounts SET v = 'changed' WHERE tenant_id = 1 AND id <= 10; COMMIT",
    );
    env.wait_converged(q, WAIT);
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.table_state"),
        "0",
        "{}",
        repl.output()
    );
    assert!(repl.is_running(), "{}", repl.output());
}

/// `check` names what the job's start would change in a table the target's owner made
/// (a column of another type, which the start retypes), the required columns only the
/// target has (each insert of the job would be refused) and an identity outside the key
/// made `GENERATED ALWAYS` (each update refused), before anything runs; an identity key
/// is fine.
#[test]
fn check_names_what_the_start_would_change_in_a_target_table_and_what_it_would_trip_on() {
    let env = Env::start(
        "CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, v text, seq bigint,
             PRIMARY KEY (tenant_id, id));
         INSERT INTO public.items SELECT 1, i, 'v' || i, i FROM generate_series(1, 10) i;",
    );
    env.on_target(
        "CREATE TABLE public.items (tenant_id int NOT NULL, id int GENERATED ALWAYS AS IDENTITY,
             v varchar(10), seq bigint GENERATED ALWAYS AS IDENTITY,
             must int NOT NULL, fine int NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, id))",
    );
    let job = env.job_file("shapes", "[1]", &["public.items"]);
    let check = || {
        crate::harness::output_of(
            std::process::Command::new(env!("CARGO_BIN_EXE_helios-repl"))
                .args(["check", "--job"])
                .arg(&job)
                .env("HELIOS_LOG", "warn"),
        )
    };
    let (ok, out) = check();
    assert!(ok, "warnings only:\n{out}");
    assert!(
        out.contains(
            "warn sinks[0] public.items: the target's table has other column types than the \
             source's: the job's start changes v from character varying(10) to text"
        ) && out.contains("required columns the source lacks (must: NOT NULL")
            && out.contains("columns outside the key `GENERATED ALWAYS AS IDENTITY` (seq)")
            && !out.contains("fine"),
        "{out}"
    );
    env.on_target(
        "ALTER TABLE public.items ALTER COLUMN must SET DEFAULT 0, ALTER COLUMN v TYPE text, \
         ALTER COLUMN seq SET GENERATED BY DEFAULT",
    );
    let (ok, out) = check();
    assert!(ok && !out.contains("warn sinks[0] public.items"), "{out}");
}
