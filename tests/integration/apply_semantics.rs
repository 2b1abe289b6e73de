//! What the apply sink must get right: every listed type's text form, TOAST values kept
//! across updates, replica identity DEFAULT and FULL, key changes, deletes, TRUNCATE of a
//! shared target table, and ALTER TABLE mid-stream.

use std::time::Duration;

use helios_repl::sinks::parquet::{read_table, ColdEvent};

use crate::harness::{wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(60);

fn streaming(env: &Env, job: &std::path::Path) -> Replicator {
    let repl = Replicator::start(job);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    let _ = env;
    repl
}

const TYPES: &str = "
CREATE TABLE public.typed (
    tenant_id int NOT NULL, id int NOT NULL, i int, b bigint, n numeric, t text, flag bool,
    ts timestamptz, j jsonb, u uuid, raw bytea, f float8, arr text[], PRIMARY KEY (tenant_id, id));
";

const TYPED_ROWS: &str = "
INSERT INTO public.typed VALUES
 ({t}, {base} + 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 ({t}, {base} + 2, 0, 0, 'NaN', '', false, 'infinity', '{{}}', '00000000-0000-0000-0000-000000000000', '', 'NaN', '{{}}'),
 ({t}, {base} + 3, -2147483648, 9223372036854775807, 'Infinity', 'ünïcødé ✓ 🦀 \"q\" ''s'' \\ back', true,
     '-infinity', '{{\"a\": [1, 2, {{\"b\": null}}], \"é\": \"✓\"}}', gen_random_uuid(),
     decode((SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g), 'hex'), 'Infinity',
     ARRAY['a,b', 'c\"d', NULL, '', 'ünï']),
 ({t}, {base} + 4, 2147483647, -9223372036854775808, '-Infinity', repeat('x', 10000), true,
     '2024-02-29 12:34:56.789123+05:30', '[1, \"two\", 3.5e10, true]', gen_random_uuid(), '\\x00ff00', '-Infinity', ARRAY['x']),
 ({t}, {base} + 5, 1, 1, '123456789012345678901234567890.123456789012345678901', 'tab\there
newline', NULL,
     '1970-01-01 00:00:00+00', 'null', gen_random_uuid(), '\\x', '-0', '{{NULL}}'),
 ({t}, {base} + 6, 1, 1, '-0.000000000000000000001', 'x', NULL, now(), '\"just a string\"', NULL, NULL, '1e-308', '{{\"\"}}');
";

#[test]
fn every_listed_type_round_trips_through_snapshot_and_stream() {
    let env = Env::start(TYPES);
    // Rows the snapshot copies…
    env.on_source(
        &TYPED_ROWS
            .replace("{t}", "1")
            .replace("{base}", "0")
            .replace("{{", "{")
            .replace("}}", "}"),
    );
    env.on_source(
        &TYPED_ROWS
            .replace("{t}", "9")
            .replace("{base}", "0")
            .replace("{{", "{")
            .replace("}}", "}"),
    );
    let job = env.job_file("types", "[1]", &["public.typed"]);
    let mut repl = streaming(&env, &job);
    // …and rows and updates the stream carries.
    env.on_source(
        &TYPED_ROWS
            .replace("{t}", "1")
            .replace("{base}", "100")
            .replace("{{", "{")
            .replace("}}", "}"),
    );
    env.on_source("UPDATE public.typed SET n = n * 2, f = -f, arr = arr || ARRAY['more'], j = j || '{\"u\": 1}'::jsonb WHERE id IN (104, 106)");
    // A transaction large enough to be applied with COPY, with every character COPY's
    // text format reserves in text, json and array values.
    env.on_source(
        "INSERT INTO public.typed SELECT 1, 1000 + g, g, g::bigint * 1000000000, g / 7.0, \
         E'tab\\t nl\\n cr\\r bs\\\\ dot\\\\. null\\\\N \u{fc} ' || g, g % 2 = 0, \
         timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', \
         jsonb_build_object('k', E'a\\tb\\\\c\\n', 'n', g), gen_random_uuid(), \
         decode(md5(g::text), 'hex'), g / 3.0, ARRAY[E'x\\ty', NULL, E'back\\\\slash', 'q\"uote'] \
         FROM generate_series(1, 700) g",
    );
    let q = "SELECT t::text FROM public.typed t WHERE tenant_id = 1 ORDER BY id";
    env.wait_converged(q, WAIT);
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.typed").trim(),
        "712"
    );
    assert_eq!(
        env.on_target(
            "SELECT strpos(t, 'bs' || chr(92) || ' dot') > 0 AND strpos(t, chr(92) || chr(92)) = 0 \
             AND strpos(t, chr(9)) > 0 AND strpos(t, chr(10)) > 0 FROM public.typed WHERE id = 1001"
        ),
        "t",
        "tab, newline and single backslashes arrived as themselves"
    );
    let out = repl.output();
    assert!(
        !out.contains("applying it again table by table"),
        "every group applied on the first try (COPY included):\n{out}"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.typed WHERE tenant_id = 9")
            .trim(),
        "0"
    );
    // Spot checks that the comparison means what it should.
    assert_eq!(
        env.on_target("SELECT n::text || ',' || f::text FROM public.typed WHERE id = 102"),
        "NaN,NaN"
    );
    assert_eq!(
        env.on_target("SELECT length(raw) FROM public.typed WHERE id = 103"),
        "320000"
    );
    assert_eq!(
        env.on_target("SELECT cardinality(arr) FROM public.typed WHERE id = 102"),
        "0"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

const DOCS: &str = "
CREATE TABLE public.docs (tenant_id int NOT NULL, id int NOT NULL, big text, counter int, PRIMARY KEY (tenant_id, id));
ALTER TABLE public.docs ALTER COLUMN big SET STORAGE EXTERNAL;
";

#[test]
fn unchanged_toast_value_is_kept_across_updates() {
    let env = Env::start(DOCS);
    let job = env.job_file("toast", "[1]", &["public.docs"]);
    let mut repl = streaming(&env, &job);
    env.on_source(
        "INSERT INTO public.docs SELECT 1, 1, string_agg(md5(g::text), '') , 0 FROM generate_series(1, 32768) g",
    );
    for _ in 0..3 {
        env.on_source("UPDATE public.docs SET counter = counter + 1 WHERE id = 1");
    }
    // Insert and update in one transaction: the sink fills the unchanged value from the run.
    env.on_source(
        "BEGIN; INSERT INTO public.docs SELECT 1, 2, string_agg(md5((g * 7)::text), ''), 0 FROM generate_series(1, 32768) g;
         UPDATE public.docs SET counter = 10 WHERE id = 2; COMMIT;",
    );
    let q = "SELECT id, length(big), md5(big), counter FROM public.docs ORDER BY id";
    env.wait_converged(q, WAIT);
    assert_eq!(
        env.on_target("SELECT length(big) || ',' || counter FROM public.docs WHERE id = 1"),
        "1048576,3"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

const IDENTITY: &str = "
CREATE TABLE public.keyed (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.fullrows (tenant_id int NOT NULL, k int, v text);
ALTER TABLE public.fullrows REPLICA IDENTITY FULL;
CREATE TABLE public.appendonly (tenant_id int NOT NULL, n int);
CREATE TABLE public.bykey (id int PRIMARY KEY, tenant_id int NOT NULL, v text);
INSERT INTO public.keyed SELECT t, i, 'v' || i FROM generate_series(1, 3) t, generate_series(1, 20) i;
INSERT INTO public.bykey SELECT i, 1 + i % 3, 'b' || i FROM generate_series(1, 30) i;
";

#[test]
fn replica_identities_key_changes_deletes_and_truncate() {
    let env = Env::start(IDENTITY);
    let job = env.job_file(
        "ident",
        "[1, 2]",
        &[
            "public.keyed",
            "public.fullrows",
            "public.appendonly",
            "public.bykey",
        ],
    );
    let mut repl = streaming(&env, &job);
    env.on_source(
        "INSERT INTO public.fullrows VALUES (1, 1, 'a'), (1, 1, 'a'), (1, 2, 'b'), (2, 3, NULL), (3, 4, 'x');
         INSERT INTO public.appendonly SELECT t, g FROM generate_series(1, 3) t, generate_series(1, 5) g;
         UPDATE public.keyed SET id = id + 100 WHERE id <= 5;                -- primary key changes
         UPDATE public.keyed SET v = 'changed' WHERE id BETWEEN 106 AND 110;
         DELETE FROM public.keyed WHERE id BETWEEN 11 AND 15;
         UPDATE public.fullrows SET v = 'b2' WHERE k = 2;
         DELETE FROM public.fullrows WHERE ctid = (SELECT ctid FROM public.fullrows WHERE k = 1 LIMIT 1);
         UPDATE public.fullrows SET v = 'now set' WHERE k = 3;
         DELETE FROM public.bykey WHERE id % 4 = 0;                          -- old key lacks the tenant",
    );
    for q in [
        "SELECT tenant_id, id, v FROM public.keyed WHERE tenant_id IN (1, 2) ORDER BY 1, 2",
        "SELECT tenant_id, k, v FROM public.fullrows WHERE tenant_id IN (1, 2) ORDER BY 1, 2, 3",
        "SELECT tenant_id, n FROM public.appendonly WHERE tenant_id IN (1, 2) ORDER BY 1, 2",
        "SELECT id, tenant_id, v FROM public.bykey WHERE tenant_id IN (1, 2) ORDER BY 1",
    ] {
        env.wait_converged(q, WAIT);
    }
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.fullrows WHERE k = 1"),
        "1",
        "one of two equal rows deleted"
    );
    assert!(
        repl.output().contains(
            "public.appendonly has no primary key (REPLICA IDENTITY DEFAULT): while the job's \
             publication carries it, the source refuses UPDATE and DELETE on it"
        ),
        "the start warns that writers of a keyless table cannot update it"
    );

    // TRUNCATE of a target table shared with rows another job wrote: only our tenants go.
    env.on_target("INSERT INTO public.keyed VALUES (99, 1, 'other job'); INSERT INTO public.bykey VALUES (1000, 99, 'other job')");
    env.on_source("TRUNCATE public.keyed, public.bykey");
    env.on_source(
        "INSERT INTO public.keyed VALUES (1, 500, 'after truncate'), (3, 500, 'not ours')",
    );
    wait_for("truncate applied", WAIT, || {
        env.on_target(
            "SELECT string_agg(tenant_id || ':' || id, ',' ORDER BY tenant_id) FROM public.keyed",
        ) == "1:500,99:1"
    });
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.bykey WHERE tenant_id <> 99"),
        "0"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.bykey WHERE tenant_id = 99"),
        "1"
    );
    let out = repl.output();
    assert!(
        out.contains("source TRUNCATE applied"),
        "the log says so:\n{out}"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

const ALTER: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.other (tenant_id int NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
INSERT INTO public.items SELECT 1, i, 'v' || i FROM generate_series(1, 10) i;
";

#[test]
fn alter_table_mid_stream_flows_through_and_failures_are_visible() {
    let env = Env::start(ALTER);
    let job = env.job_file("alter", "[1]", &["public.items", "public.other"]);
    let mut repl = streaming(&env, &job);
    env.on_source("INSERT INTO public.items VALUES (1, 11, 'before')");
    env.on_source(
        "ALTER TABLE public.items ADD COLUMN extra numeric(10,2) DEFAULT 1.5, ADD COLUMN tags text[];
         INSERT INTO public.items VALUES (1, 12, 'after', 2.25, ARRAY['a']);
         UPDATE public.items SET extra = 9.99 WHERE id = 3;",
    );
    let q = "SELECT id, v, extra, tags FROM public.items ORDER BY id";
    env.wait_converged(q, WAIT);
    env.on_source("ALTER TABLE public.items DROP COLUMN tags; INSERT INTO public.items VALUES (1, 13, 'dropped', 3)");
    env.wait_converged("SELECT id, v, extra FROM public.items ORDER BY id", WAIT);
    env.on_source("ALTER TABLE public.items ALTER COLUMN extra TYPE numeric(12,4); UPDATE public.items SET extra = 1.2345 WHERE id = 4");
    env.wait_converged("SELECT id, v, extra FROM public.items ORDER BY id", WAIT);
    assert_eq!(
        env.on_target("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'extra'"),
        "numeric(12,4)"
    );

    // A change the target cannot take puts the table in error; others keep flowing.
    env.on_target("ALTER TABLE public.items ADD CONSTRAINT no_bad CHECK (v <> 'bad')");
    env.on_source(
        "INSERT INTO public.items VALUES (1, 14, 'bad', 0); INSERT INTO public.other VALUES (1, 1)",
    );
    wait_for("the table error to be recorded", WAIT, || {
        env.try_on_target("SELECT state FROM helios.table_state WHERE table_name = 'public.items'")
            .as_deref()
            == Some("error")
    });
    env.on_source("INSERT INTO public.other VALUES (1, 2); INSERT INTO public.items VALUES (1, 15, 'kept', 0)");
    env.wait_converged("SELECT count(*) FROM public.other", WAIT);
    wait_for(
        "changes of the failed table kept as dead letters",
        WAIT,
        || {
            env.on_target(
                "SELECT count(*) FROM helios.dead_letters WHERE table_name = 'public.items'",
            ) == "2"
        },
    );
    assert!(repl.is_running(), "no crash:\n{}", repl.output());
    assert_eq!(repl.stop().code(), Some(0));
}

/// A table renamed on the source while the job runs (the publication and the OID stay)
/// keeps going to the target's table of the job's name, with a warning, instead of its
/// changes being dropped as a table the job does not carry; a start whose spec still
/// names the old table stops, saying why.
#[test]
fn a_table_renamed_on_the_source_keeps_replicating_under_the_jobs_name() {
    let env = Env::start(ALTER);
    let job = env.job_file("tablerename", "[1]", &["public.items"]);
    let mut repl = streaming(&env, &job);
    env.wait_converged("SELECT id, v FROM public.items ORDER BY id", WAIT);
    env.on_source(
        "ALTER TABLE public.items RENAME TO items_v2; \
         INSERT INTO public.items_v2 VALUES (1, 50, 'after'); \
         UPDATE public.items_v2 SET v = 'changed' WHERE id = 2; \
         DELETE FROM public.items_v2 WHERE id = 3",
    );
    let source = env.on_source("SELECT id, v FROM public.items_v2 ORDER BY id");
    wait_for("the renamed table's changes on the target", WAIT, || {
        env.try_on_target("SELECT id, v FROM public.items ORDER BY id")
            .as_deref()
            == Some(source.as_str())
    });
    assert_eq!(
        env.on_target("SELECT to_regclass('public.items_v2') IS NULL"),
        "t",
        "no table of the new name on the target"
    );
    wait_for("the progress line to name the renamed table", WAIT, || {
        repl.output()
            .contains("renamed_on_source=public.items->public.items_v2")
    });
    let out = repl.output();
    assert!(out.contains("renamed on the source"), "{out}");
    assert!(repl.stop().success(), "{out}");

    let mut repl = Replicator::start(&job);
    wait_for("the start to stop", WAIT, || !repl.is_running());
    let out = repl.output();
    assert!(
        out.contains("table public.items does not exist on the source (dropped, or renamed"),
        "{out}"
    );
}

const RENAMES: &str = "
CREATE TABLE public.labels (tenant_id int NOT NULL, id int NOT NULL, v text, note text, w int,
    PRIMARY KEY (tenant_id, id));
INSERT INTO public.labels SELECT 1 + i % 2, i, 'v' || i, 'n' || i, i FROM generate_series(1, 20) i;
";

/// Columns renamed on the source are renamed on the target and in its history table,
/// with their values (not added beside the old ones, empty for the rows already there):
/// one rename, two columns swapping names in one transaction, and one renamed while the
/// job was stopped.
#[test]
fn columns_renamed_on_the_source_are_renamed_on_the_target_with_their_values() {
    let env = Env::start(RENAMES);
    let job = env.job_file("renames", "[1, 2]", &["public.labels"]);
    let cold = env.dir.path().join("cold");
    let spec = std::fs::read_to_string(&job).expect("job file");
    std::fs::write(
        &job,
        spec.replace(
            "name = \"public.labels\"\n",
            "name = \"public.labels\"\nhistory = true\n",
        ) + &format!(
            "[[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n",
            cold.display()
        ),
    )
    .expect("job file");
    let columns = |table: &str| {
        env.on_target(&format!(
            "SELECT string_agg(attname, ',' ORDER BY attname) FROM pg_attribute \
             WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ))
    };
    let mut repl = streaming(&env, &job);
    env.wait_converged("SELECT id, v, note, w FROM public.labels ORDER BY id", WAIT);

    env.on_source("ALTER TABLE public.labels RENAME COLUMN v TO label; UPDATE public.labels SET w = w + 100 WHERE id = 3");
    let q = "SELECT id, label, note, w FROM public.labels ORDER BY id";
    env.wait_converged(q, WAIT);
    assert_eq!(columns("public.labels"), "id,label,note,tenant_id,w");

    env.on_source(
        "BEGIN; ALTER TABLE public.labels RENAME COLUMN label TO x; \
         ALTER TABLE public.labels RENAME COLUMN note TO label; \
         ALTER TABLE public.labels RENAME COLUMN x TO note; \
         INSERT INTO public.labels VALUES (1, 21, 'n21', 'l21', 21); COMMIT",
    );
    env.wait_converged(q, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());

    env.on_source("ALTER TABLE public.labels RENAME COLUMN note TO memo; UPDATE public.labels SET w = w + 1000 WHERE id = 4");
    let mut repl = streaming(&env, &job);
    let q = "SELECT id, label, memo, w FROM public.labels ORDER BY id";
    env.wait_converged(q, WAIT);
    assert_eq!(columns("public.labels"), "id,label,memo,tenant_id,w");
    let history = columns("public.labels_history");
    assert!(
        history.starts_with("id,label,memo,op,")
            && !history.contains("note")
            && !history.contains(",v,"),
        "the history table's columns are renamed too: {history}"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FILTER (WHERE memo IS NULL OR label IS NULL) FROM public.labels_history"),
        "0",
        "every version keeps its values under the new names"
    );
    // The cold tier reads every version, written before the renames or after, under the
    // new names (the values as the history table has them).
    let mut history: Vec<String> = env
        .on_target(
            "SELECT string_agg(concat_ws('|', id, label, memo), E'\\n' ORDER BY id, label, memo) \
             FROM public.labels_history WHERE tenant_id = 1",
        )
        .lines()
        .map(str::to_string)
        .collect();
    history.sort();
    wait_for("the cold tier to hold every version", WAIT, || {
        cold_versions(&cold).len() == history.len()
    });
    let mut tier = cold_versions(&cold);
    tier.sort();
    assert_eq!(tier, history, "tenant 1's versions in the cold tier");

    // A column dropped from the middle (`memo`, before `label` and `w`): the versions held
    // from before move to the new shape, so the close of id 5's version reaches the cold
    // tier with its values in place (not shifted into the wrong columns, or refused).
    let tenant_rows = || {
        read_table(&cold, "2", "public.labels")
            .map(|(_, rows)| rows.len())
            .unwrap_or(0)
    };
    let before = tenant_rows();
    env.on_source(
        "ALTER TABLE public.labels DROP COLUMN memo; UPDATE public.labels SET w = w + 1 WHERE id = 5",
    );
    env.wait_converged("SELECT id, label, w FROM public.labels ORDER BY id", WAIT);
    let waited = std::time::Instant::now();
    while tenant_rows() < before + 2 && waited.elapsed() < WAIT {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let read = read_table(&cold, "2", "public.labels").map(|(c, r)| (c.len(), r.len()));
    assert!(
        tenant_rows() >= before + 2,
        "the close and the new versions in the cold tier: {before} before, now {read:?}"
    );
    let out = repl.output();
    assert!(!out.contains("cold-tier write failed"), "{out}");

    // `w` dropped on the source (the target keeps it), then `label` renamed to `w`: the
    // target cannot take the name, so the table goes into error state saying so, and the
    // job streams on.
    env.on_source(
        "ALTER TABLE public.labels DROP COLUMN w; \
         ALTER TABLE public.labels RENAME COLUMN label TO w; \
         UPDATE public.labels SET w = 'x' WHERE id = 6",
    );
    wait_for("the refused rename to put the table in error", WAIT, || {
        env.try_on_target(
            "SELECT error FROM helios.table_state WHERE table_name = 'public.labels' AND state = 'error'",
        )
        .is_some_and(|e| e.contains("was renamed to \"w\", a name the target table already has"))
    });
    assert!(repl.is_running(), "{}", repl.output());
    let out = repl.output();
    assert!(repl.stop().success(), "{out}");
}

/// Tenant 1's open versions of `public.labels` in the cold tier under `root`, as
/// `id|label|memo`.
fn cold_versions(root: &std::path::Path) -> Vec<String> {
    let Ok((columns, rows)) = read_table(root, "1", "public.labels") else {
        return Vec::new();
    };
    let at = |name: &str| columns.iter().position(|c| c.name == name);
    let (Some(id), Some(label), Some(memo)) = (at("id"), at("label"), at("memo")) else {
        return Vec::new();
    };
    rows.iter()
        .filter(|r| r.event == ColdEvent::Open)
        .map(|r| {
            [id, label, memo]
                .map(|i| r.values[i].as_deref().unwrap_or("NULL").to_string())
                .join("|")
        })
        .collect()
}

#[test]
fn all_tenants_job_applies_tenantless_deletes_and_truncate_on_every_worker() {
    let env = Env::start(
        "CREATE TABLE public.bykey (id int PRIMARY KEY, tenant_id int NOT NULL, v text);
         INSERT INTO public.bykey SELECT i, 1 + i % 17, 'b' || i FROM generate_series(1, 400) i;",
    );
    let job = env.job_file("alltenants", "\"all\"", &["public.bykey"]);
    let mut repl = streaming(&env, &job);
    let q = "SELECT id, tenant_id, v FROM public.bykey ORDER BY id";
    env.wait_converged(q, WAIT);
    // The old key carries no tenant: each worker deletes among the tenants it owns, which
    // only works if PostgreSQL's route (md5 in SQL) agrees with the dataflow's exchange.
    env.on_source("DELETE FROM public.bykey WHERE id % 3 = 0; UPDATE public.bykey SET v = 'u' WHERE id % 5 = 0");
    env.wait_converged(q, WAIT);
    env.on_source("TRUNCATE public.bykey; INSERT INTO public.bykey VALUES (1, 4, 'after')");
    env.wait_converged(q, WAIT);
    assert_eq!(env.on_target("SELECT count(*) FROM public.bykey"), "1");
    assert_eq!(repl.stop().code(), Some(0));
}

const FANCY: &str = "
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE money_amount AS (currency char(3), cents bigint);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE SCHEMA app;
CREATE TYPE app.level AS ENUM ('low', 'high');
CREATE TABLE public.fancy (
    tenant_id int NOT NULL, id int NOT NULL, m mood, moods mood[], p posint, amt money_amount,
    r floatrange, ir int4range, email citext, lvl app.level, PRIMARY KEY (tenant_id, id));
INSERT INTO public.fancy VALUES
  (1, 1, 'ok', '{sad,happy}', 5, ('EUR', 1234), '[1.5,2.5)', '[1,10)', 'Ann@Example.com', 'low'),
  (1, 2, NULL, '{}', NULL, NULL, 'empty', NULL, NULL, NULL);
";

#[test]
fn user_defined_types_are_created_on_the_target() {
    let env = Env::start(FANCY);
    let job = env.job_file("fancy", "[1]", &["public.fancy"]);
    let mut repl = streaming(&env, &job);
    env.on_source(
        "INSERT INTO public.fancy VALUES (1, 3, 'happy', '{ok}', 7, ('USD', -5), '(,3]', '[2,3]', 'BOB@x.org', 'high');
         CREATE TYPE color AS ENUM ('red', 'green');
         ALTER TABLE public.fancy ADD COLUMN c color;
         INSERT INTO public.fancy VALUES (1, 4, 'sad', NULL, 1, NULL, NULL, NULL, 'c@d', NULL, 'green');
         UPDATE public.fancy SET amt = ('GBP', 1), c = 'red' WHERE id = 1;",
    );
    let q = "SELECT t::text FROM public.fancy t ORDER BY id";
    env.wait_converged(q, WAIT);
    assert_eq!(
        env.on_target("SELECT pg_typeof(email)::text FROM public.fancy WHERE id = 1"),
        "citext"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.table_state"),
        "0"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// Inserted keys go to the target as plain inserts (no `ON CONFLICT`), 500 rows and more
/// through `COPY`. A target that already holds such a key (a row written there by hand)
/// must still end equal to the source, without putting the table in error state: the
/// sink applies the group again with upserts, and keeps doing so. Two tenants on the two
/// workers' sinks: one meets the key in a `COPY`, the other in a plain `INSERT`.
#[test]
fn an_insert_of_a_key_the_target_already_holds_is_applied_as_an_upsert() {
    use helios_repl::operators::partition::tenant_route;
    let worker_of = |t: i32| tenant_route(&t.to_string()) % 2;
    let other = (2..100)
        .find(|&t| worker_of(t) != worker_of(1))
        .expect("a tenant of the other worker");
    let env = Env::start(&format!(
        "CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, v text,
             PRIMARY KEY (tenant_id, id));
         INSERT INTO public.items SELECT t, g, 'copied' FROM generate_series(1, 10) g,
             unnest(ARRAY[1, {other}]) t;"
    ));
    let job = env.job_file("plain_inserts", &format!("[1, {other}]"), &["public.items"]);
    let mut repl = streaming(&env, &job);
    let q = "SELECT tenant_id, count(*), md5(string_agg(id || ':' || v, ',' ORDER BY id)) \
             FROM public.items GROUP BY 1 ORDER BY 1";
    env.wait_converged(q, WAIT);
    // Plain inserts (a COPY), an insert updated and one deleted again in the same
    // transaction.
    env.on_source(
        "BEGIN; INSERT INTO public.items SELECT 1, g, 'new' FROM generate_series(11, 700) g;
         UPDATE public.items SET v = 'changed' WHERE id = 12; DELETE FROM public.items WHERE id = 13;
         COMMIT;",
    );
    env.wait_converged(q, WAIT);
    // Someone wrote rows into the target that the source inserts next.
    env.on_target(&format!(
        "INSERT INTO public.items VALUES (1, 1000, 'written by hand'), ({other}, 1000, 'by hand')"
    ));
    env.on_source(
        "INSERT INTO public.items SELECT 1, g, 'after' FROM generate_series(990, 1700) g",
    );
    env.on_source(&format!(
        "INSERT INTO public.items SELECT {other}, g, 'after' FROM generate_series(990, 1010) g"
    ));
    env.wait_converged(q, WAIT);
    env.on_source(&format!(
        "INSERT INTO public.items SELECT t, 2000, 'later' FROM unnest(ARRAY[1, {other}]) t"
    ));
    env.wait_converged(q, WAIT);
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.table_state WHERE state = 'error'"),
        "0",
        "no table in error state"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.dead_letters"),
        "0",
        "nothing kept as a dead letter"
    );
    let out = repl.output();
    assert_eq!(
        out.matches("the target already held a key the source inserted")
            .count(),
        2,
        "both sinks met the key (in a COPY and in an INSERT):\n{out}"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// With `max_in_flight = 4` the sink sends small target transactions while earlier ones
/// are still in flight: a stream of single-statement transactions (inserts, updates, key
/// changes, deletes over two tenants) still converges to the source.
#[test]
fn small_transactions_sent_with_several_in_flight_converge() {
    let env = Env::start(
        "CREATE TABLE public.ticks (tenant_id int NOT NULL, id int NOT NULL, v text, \
         PRIMARY KEY (tenant_id, id));",
    );
    let job = env.job_file("ticks", "[1, 2]", &["public.ticks"]);
    let mut text = std::fs::read_to_string(&job).expect("job file");
    text.push_str("max_in_flight = 4\n");
    std::fs::write(&job, text).expect("job file");
    let mut repl = streaming(&env, &job);
    let mut sql = String::new();
    for i in 0..400 {
        let t = 1 + i % 3;
        sql.push_str(&match i % 5 {
            0 | 1 => format!("INSERT INTO public.ticks VALUES ({t}, {i}, 'v{i}');\n"),
            2 => format!(
                "UPDATE public.ticks SET v = v || '+' WHERE id = {};\n",
                i - 2
            ),
            3 => format!(
                "UPDATE public.ticks SET id = id + 1000 WHERE id = {};\n",
                i - 3
            ),
            _ => format!("DELETE FROM public.ticks WHERE id = {};\n", i - 4),
        });
    }
    env.on_source(&sql);
    env.wait_converged(
        "SELECT tenant_id, id, v FROM public.ticks WHERE tenant_id IN (1, 2) ORDER BY 1, 2",
        WAIT,
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.ticks WHERE tenant_id = 3"),
        "0"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// Tables and columns named with capitals, as ORMs such as Prisma create them
/// (`"Task"`, `"organizationId"`): the tenant column and the valid-time column name them
/// as the catalog spells them, and every statement quotes them.
#[test]
fn mixed_case_tables_and_tenant_columns_replicate_with_history() {
    let env = Env::start(
        "CREATE TABLE public.\"Task\" (\"organizationId\" int NOT NULL, id int NOT NULL, \"Title\" text,
             \"createdAt\" timestamptz NOT NULL DEFAULT '2026-01-01', PRIMARY KEY (\"organizationId\", id));
         INSERT INTO public.\"Task\" SELECT 1 + i % 2, i, 't' || i FROM generate_series(1, 10) i;",
    );
    let text = format!(
        "name = \"prisma\"\n[source]\ndsn = \"{}\"\npublication = \"pub_prisma\"\nslot = \"slot_prisma\"\n\
         [tenants]\ncolumn = \"organizationId\"\ninclude = [1]\n\
         [[tables]]\nname = \"public.Task\"\nhistory = true\nvalid_time_column = \"createdAt\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
    );
    let job = env.dir.path().join("prisma.toml");
    std::fs::write(&job, text).expect("write job file");
    let mut repl = streaming(&env, &job);
    let query =
        "SELECT \"organizationId\", id, \"Title\" FROM public.\"Task\" WHERE \"organizationId\" = 1 ORDER BY id";
    env.wait_converged(query, WAIT);
    env.on_source(
        "INSERT INTO public.\"Task\" VALUES (1, 100, 'new', '2026-02-01'), (2, 101, 'other', '2026-02-01'); \
         UPDATE public.\"Task\" SET \"Title\" = 'changed' WHERE id = 4; \
         DELETE FROM public.\"Task\" WHERE id = 6",
    );
    env.wait_converged(query, WAIT);
    // The update: its first version closed, the new one open; the delete: its version
    // closed, the valid-time remainder, the tombstone; no other tenant's rows.
    wait_for("the history table's versions", WAIT, || {
        env.try_on_target(
            "SELECT count(*) FILTER (WHERE id = 4), count(*) FILTER (WHERE id = 6), \
             count(*) FILTER (WHERE \"organizationId\" = 2) FROM public.\"Task_history\"",
        )
        .as_deref()
            == Some("2|3|0")
    });
    let out = repl.output();
    assert!(!out.contains("ERROR"), "{out}");
    assert!(repl.stop().success(), "{out}");
}
