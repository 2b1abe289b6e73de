//! Settings an operator makes on the source's or the target's database for applications
//! change neither how long the replicator's work may take nor what arrives. Time limits
//! (`statement_timeout`, `idle_in_transaction_session_timeout`, `lock_timeout`,
//! `idle_session_timeout`) do not cut a snapshot's `COPY`, a snapshot session waiting
//! while others load, a large source transaction applied in one target transaction, or a
//! session idle between changes; value styles, input settings and a `search_path` do not
//! change the values, types and names that reach the target.

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

/// The job's long-lived sessions on a server (its sinks' on a target, its watch on the
/// source): their process ids.
const SESSIONS: &str = "SET statement_timeout = 0; SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity \
     WHERE application_name IN ('helios-repl target', 'helios-repl job watch')";

/// The limits on database `db`, each new session's unless it sets its own.
fn limits(db: &str) -> Vec<String> {
    [
        "statement_timeout = '50ms'",
        "lock_timeout = '50ms'",
        "idle_in_transaction_session_timeout = '100ms'",
        "idle_session_timeout = '300ms'",
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
    // The job's sessions outlive idle spells far longer than the idle-session limit.
    let target_sessions = env.on_target(SESSIONS);
    let source_sessions = env.on_source(SESSIONS);
    assert!(!target_sessions.is_empty() && !source_sessions.is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    // Each one still there (the job may have opened others meanwhile).
    for (side, before, now) in [
        ("target", target_sessions, env.on_target(SESSIONS)),
        ("source", source_sessions, env.on_source(SESSIONS)),
    ] {
        let now: Vec<&str> = now.split(',').collect();
        for pid in before.split(',') {
            assert!(now.contains(&pid), "{side} session {pid} ended: {now:?}");
        }
    }
    env.on_source(
        "SET statement_timeout = 0; UPDATE public.big SET pad = 'after idle' WHERE id < 100",
    );
    env.wait_converged(CHECK, WAIT);
    wait_for("the job to keep running", WAIT, || repl.is_running());
    assert!(repl.stop().success(), "{}", repl.output());
}

/// Date, interval and float output styles an operator set on the source's database
/// (`datestyle`, `intervalstyle`, `extra_float_digits`), and input styles set on the
/// target's, change nothing in what arrives: `01/03/2026` means 1 March under the source's
/// `SQL, DMY` and 3 January under the target's `SQL, MDY`, an interval printed in the SQL
/// standard's style reads otherwise in PostgreSQL's, floats printed with fewer digits
/// lose their last ones, and `money` printed under `lc_monetary = 'de_DE.UTF-8'`
/// (`1.234,56 €`) is refused under C. Rows of the initial snapshot and of the stream, and a column
/// default, are compared.
#[test]
fn output_styles_set_on_the_servers_do_not_change_replicated_values() {
    const TABLE: &str = "
    CREATE TABLE public.styled (
        tenant_id int NOT NULL, id int NOT NULL, at timestamptz, day date, local timestamp,
        span interval, ratio float8, small float4, born date DEFAULT '2026-03-01', price money,
        PRIMARY KEY (tenant_id, id));
    ";
    const ROWS: &str =
        "INSERT INTO public.styled (tenant_id, id, at, day, local, span, ratio, small, price)
        SELECT 1, i + {base}, timestamptz '2026-03-01 12:00:00.25+00' + i * interval '1 day 1 hour',
               date '2026-02-01' + i, timestamp '2026-04-05 06:07:08.5' - i * interval '1 day',
               interval '-1 year 2 mons' + i * interval '1 day -02:03:04.5',
               (0.1 + 0.2) * i + 1.0 / 3, (0.1 + i)::float4, (i * 1234.56)::numeric::money
        FROM generate_series(1, 40) i";
    const CHECK: &str = "SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; \
         SET timezone = UTC; \
         SELECT count(*), md5(string_agg(concat_ws('|', tenant_id, id, at, day, local, span, ratio, small, born, price::numeric), \
         ',' ORDER BY tenant_id, id)) FROM public.styled";
    let env = Env::start(TABLE);
    env.on_source(&ROWS.replace("{base}", "0"));
    for statement in [
        "ALTER DATABASE app SET datestyle = 'SQL, DMY'",
        "ALTER DATABASE app SET intervalstyle = 'sql_standard'",
        "ALTER DATABASE app SET extra_float_digits = -3",
        "ALTER DATABASE app SET timezone = 'Europe/Berlin'",
        // scripts/install-deps.sh makes the locale.
        "ALTER DATABASE app SET lc_monetary = 'de_DE.UTF-8'",
    ] {
        env.on_source(statement);
    }
    for statement in [
        "ALTER DATABASE replica SET datestyle = 'SQL, MDY'",
        "ALTER DATABASE replica SET intervalstyle = 'sql_standard'",
        "ALTER DATABASE replica SET timezone = 'America/New_York'",
    ] {
        env.on_target(statement);
    }
    assert_eq!(
        env.on_source("SELECT date '2026-03-01'"),
        "01/03/2026",
        "a new session on the source prints dates day first"
    );
    let job = env.job_file("styles", "[1]", &["public.styled"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    env.on_source(&ROWS.replace("{base}", "1000"));
    env.on_source(
        "UPDATE public.styled SET span = span * 2, ratio = ratio / 7, price = price * 3 WHERE id % 3 = 0",
    );
    env.wait_converged(CHECK, WAIT);
    let default = "SET datestyle = ISO; \
        SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'public.styled'::regclass";
    assert_eq!(env.on_target(default), env.on_source(default));
    assert!(repl.stop().success(), "{}", repl.output());
}

/// Settings on the target's database that change how text reads
/// (`standard_conforming_strings = off`, `xmloption = document`) change nothing in what
/// arrives: with the first off, a backslash in a quoted literal is an escape, so an enum
/// label or a default the job writes as a literal (`'back\slash'`, `'C:\temp'`) would
/// lose it; with the second, an XML value that is content rather than one document
/// (`<a/><b/>`, plain text, both valid in a source column under the default
/// `xmloption = content`) would be refused.
#[test]
fn input_settings_on_the_target_do_not_change_replicated_values() {
    const TABLE: &str = r"
    CREATE TYPE public.flag AS ENUM ('plain', 'back\slash');
    CREATE TABLE public.marked (tenant_id int NOT NULL, id int NOT NULL, doc xml,
        path text DEFAULT 'C:\temp', tag public.flag, PRIMARY KEY (tenant_id, id));
    INSERT INTO public.marked VALUES (1, 1, '<a/><b/>', 'D:\x', 'back\slash'), (1, 2, 'just text', NULL, 'plain');
    ";
    const CHECK: &str = "SET standard_conforming_strings = on; \
         SELECT count(*), string_agg(concat_ws('|', id, doc::text, path, tag), ',' ORDER BY id) FROM public.marked";
    const LABELS: &str = "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum \
         WHERE enumtypid = 'public.flag'::regtype";
    const DEFAULT: &str = "SET standard_conforming_strings = on; \
         SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'public.marked'::regclass";
    let env = Env::start(TABLE);
    assert_eq!(env.on_source(LABELS), r"plain,back\slash");
    env.on_target("ALTER DATABASE replica SET standard_conforming_strings = off");
    env.on_target("ALTER DATABASE replica SET xmloption = document");
    let job = env.job_file("inputs", "[1]", &["public.marked"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    env.on_source(r"INSERT INTO public.marked (tenant_id, id, doc, tag) VALUES (1, 3, '<c/>tail', 'back\slash')");
    env.on_source("UPDATE public.marked SET doc = 'more text' WHERE id = 1");
    env.wait_converged(CHECK, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    assert_eq!(env.on_target(LABELS), env.on_source(LABELS));
    assert_eq!(env.on_target(DEFAULT), env.on_source(DEFAULT));
}

/// A `search_path` an operator set on the source's database does not leave names in what
/// the job reads from the source's catalog that only resolve there: with the database's
/// path on `shop`, PostgreSQL prints a type or a sequence of `shop` without its schema
/// (`status`, `nextval('orders_id_seq'::regclass)`), which a target session on the
/// default path cannot find. The target gets the table with its enum column, default,
/// partial index and rows, and takes an insert of its own once the rows are there (a
/// tenant cut over); a restart leaves the table as it is (a column of `public.mood` is
/// not taken for one of another type and altered, which would rewrite the table).
#[test]
fn a_search_path_set_on_the_source_does_not_leave_names_unqualified_on_the_target() {
    const SETUP: &str = "
    CREATE SCHEMA shop;
    CREATE TYPE shop.status AS ENUM ('new', 'paid');
    CREATE TYPE public.mood AS ENUM ('calm', 'glad');
    CREATE TABLE shop.orders (tenant_id int NOT NULL, id serial, state shop.status NOT NULL DEFAULT 'new',
        feel public.mood, feels public.mood[], note text, PRIMARY KEY (tenant_id, id));
    CREATE INDEX orders_paid ON shop.orders (note) WHERE state = 'paid';
    INSERT INTO shop.orders (tenant_id, state, feel, feels, note)
        SELECT 1 + i % 2, 'paid', 'glad', '{calm,glad}', 'n' || i FROM generate_series(1, 20) i;
    ALTER DATABASE app SET search_path = shop, public;
    ";
    const CHECK: &str = "SELECT count(*), string_agg(concat_ws(':', id, state, feel, feels, note), ',' ORDER BY id) \
         FROM shop.orders WHERE tenant_id = 1";
    const FILE: &str = "SELECT relfilenode FROM pg_class WHERE oid = 'shop.orders'::regclass";
    let env = Env::start(SETUP);
    assert_eq!(
        env.on_source("SELECT format_type('shop.status'::regtype, NULL)"),
        "status",
        "a new session on the source prints shop's names bare"
    );
    let job = env.job_file("paths", "[1]", &["shop.orders"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    env.on_source("INSERT INTO shop.orders (tenant_id, note) VALUES (1, 'late')");
    env.wait_converged(CHECK, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    let index =
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'shop' AND indexname = 'orders_paid'";
    assert_eq!(env.on_target(index), "1", "{}", repl.output());
    let file = env.on_target(FILE);
    let mut repl = Replicator::start(&job);
    env.on_source(
        "INSERT INTO shop.orders (tenant_id, feel, note) VALUES (1, 'calm', 'after restart')",
    );
    env.wait_converged(CHECK, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    assert_eq!(env.on_target(FILE), file, "a restart rewrote the table");
    // The tenant writes on the target: the id and the state come from the defaults.
    env.on_target("SELECT setval('shop.orders_id_seq', (SELECT max(id) FROM shop.orders))");
    assert_eq!(
        env.on_target(
            "INSERT INTO shop.orders (tenant_id, note) VALUES (1, 'cut over') RETURNING state"
        ),
        "new"
    );
}

/// An extension's types reach a target that keeps the extension in another schema than
/// the source (as Supabase keeps every extension in `extensions`, off a plain role's
/// `search_path` here), and one the target lacks is created in the source's schema for
/// it, which the job's sessions then find; so are a default and an index that call an
/// extension's function and operator class.
#[test]
fn extension_types_resolve_where_the_target_keeps_the_extension() {
    const SETUP: &str = "
    CREATE SCHEMA ext1;
    CREATE EXTENSION citext;
    CREATE EXTENSION \"uuid-ossp\";
    CREATE EXTENSION pg_trgm;
    CREATE EXTENSION hstore SCHEMA ext1;
    CREATE TABLE public.people (tenant_id int NOT NULL, id int NOT NULL, email citext,
        emails citext[], attrs ext1.hstore, uid uuid NOT NULL DEFAULT uuid_generate_v4(),
        PRIMARY KEY (tenant_id, id));
    CREATE INDEX people_email_trgm ON public.people USING gin ((email::text) gin_trgm_ops);
    INSERT INTO public.people SELECT 1 + i % 2, i, 'P' || i || '@X.org', ARRAY['a' || i]::citext[],
        ext1.hstore('k', i::text) FROM generate_series(1, 20) i;
    ";
    const CHECK: &str =
        "SELECT count(*), string_agg(concat_ws(':', id, email, emails, attrs), ',' ORDER BY id) \
         FROM public.people WHERE tenant_id = 1";
    const FILE: &str = "SELECT relfilenode FROM pg_class WHERE oid = 'public.people'::regclass";
    let env = Env::start(SETUP);
    env.on_target(
        "CREATE SCHEMA extensions; CREATE EXTENSION citext SCHEMA extensions; \
         CREATE EXTENSION \"uuid-ossp\" SCHEMA extensions; CREATE EXTENSION pg_trgm SCHEMA extensions",
    );
    let job = env.job_file("extensions", "[1]", &["public.people"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    env.on_source(
        "INSERT INTO public.people VALUES (1, 100, 'Late@X.org', '{b}', ext1.hstore('k', 'late'))",
    );
    env.wait_converged(CHECK, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    assert_eq!(
        env.on_target(
            "SELECT string_agg(a.attname || ':' || n.nspname, ',' ORDER BY a.attnum) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typelem <> 0 AND t.typcategory = 'A' THEN t.typelem ELSE t.oid END \
             JOIN pg_namespace n ON n.oid = b.typnamespace \
             WHERE a.attrelid = 'public.people'::regclass AND a.attname IN ('email', 'emails', 'attrs')"
        ),
        "email:extensions,emails:extensions,attrs:ext1",
        "the target's own citext, and hstore created in the source's schema for it"
    );
    // The default and the index that call the extensions' function and operator class.
    assert_eq!(
        env.on_target(
            "SELECT column_default FROM information_schema.columns \
             WHERE table_name = 'people' AND column_name = 'uid'"
        ),
        "extensions.uuid_generate_v4()"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM pg_indexes WHERE indexname = 'people_email_trgm'"),
        "1",
        "{}",
        repl.output()
    );
    let file = env.on_target(FILE);
    let mut repl = Replicator::start(&job);
    env.on_source("UPDATE public.people SET email = 'Changed@X.org' WHERE id = 2");
    env.wait_converged(CHECK, WAIT);
    // A column added while the job streams takes its type's name from the stream.
    env.on_source(
        "ALTER TABLE public.people ADD COLUMN alias citext; \
         UPDATE public.people SET alias = 'Al' || id WHERE id < 5",
    );
    env.wait_converged(
        "SELECT string_agg(id || ':' || alias, ',' ORDER BY id) FROM public.people WHERE tenant_id = 1",
        WAIT,
    );
    assert!(repl.stop().success(), "{}", repl.output());
    assert_eq!(env.on_target(FILE), file, "a restart rewrote the table");
}

/// `synchronous_commit = off` on the target's database does not let a target crash lose
/// what the job confirmed to the source: off, a commit returns before its WAL leaves the
/// server's memory, the job confirms the source position, the source drops that WAL, and
/// a crash then loses the commit (the next start, finding the slot ahead of the target's
/// checkpoint, took it for a recreated slot and loaded every table again). The WAL writer
/// is held to its slowest pace so that unwritten commits stay in memory until the crash
/// (`pg_ctl stop -m immediate`).
#[test]
fn a_target_crash_loses_nothing_the_job_confirmed_under_asynchronous_commit() {
    const CHECK: &str =
        "SELECT count(*), string_agg(id || ':' || v, ',' ORDER BY id) FROM public.kept";
    let mut env = Env::start(
        "CREATE TABLE public.kept (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));",
    );
    env.on_target("ALTER DATABASE replica SET synchronous_commit = off");
    env.on_target("ALTER SYSTEM SET wal_writer_delay = '10s'");
    env.on_target("SELECT pg_reload_conf()");
    let job = env.job_file("durable", "[1]", &["public.kept"]);
    let mut repl = Replicator::start(&job);
    env.wait_converged(CHECK, WAIT);
    // Everything so far written out: the rows' commit is what the WAL writer holds back.
    env.on_target("SELECT pg_switch_wal()");
    env.on_source("INSERT INTO public.kept SELECT 1, i, 'row ' || i FROM generate_series(1, 5) i");
    let written = env.on_source("SELECT pg_current_wal_insert_lsn()");
    let confirmed = format!(
        "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = 'slot_durable'"
    );
    wait_for("the job to confirm the rows", WAIT, || {
        env.on_source(&confirmed) == "t"
    });
    repl.kill();
    env.target.stop().expect("crash the target");
    env.target.restart().expect("restart the target");
    assert_eq!(
        env.on_target(CHECK),
        env.on_source(CHECK),
        "the target lost commits the job had confirmed"
    );
    // The next start goes on from where the job left off: no new snapshot.
    let mut repl = Replicator::start(&job);
    env.on_source("INSERT INTO public.kept VALUES (1, 6, 'after the crash')");
    env.wait_converged(CHECK, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    assert!(
        !repl.output().contains("taking a new snapshot"),
        "{}",
        repl.output()
    );
}
