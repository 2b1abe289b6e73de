//! Table patterns (`[[tables]] name = "public.*"`): a job carries every table of the schema
//! that matches and has the tenant column, leaves out (and says so) the ones without it and
//! the excluded ones and ones whose names a spec cannot write, takes tables created while it runs (it restarts and loads them) or
//! while it is stopped, and gives a table an entry names outright that entry's settings.
//! `check` lists what a pattern carries and leaves out.

use std::process::Command;
use std::time::Duration;

use crate::harness::{wait_for, without_colours, Env, Replicator};

const WAIT: Duration = Duration::from_secs(90);

const SETUP: &str = "
CREATE TABLE public.orders (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.order_items (tenant_id int NOT NULL, id int NOT NULL, qty int, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.countries (code text PRIMARY KEY, name text);
CREATE TABLE public.schema_migrations (tenant_id int, version text PRIMARY KEY);
CREATE TABLE public.\"Audit\" (tenant_id int NOT NULL, id int PRIMARY KEY, what text);
CREATE TABLE public.\"audit-log\" (tenant_id int NOT NULL, id int PRIMARY KEY);
CREATE SCHEMA other;
CREATE TABLE other.orders (tenant_id int NOT NULL, id int PRIMARY KEY);
INSERT INTO public.orders SELECT 1 + i % 3, i, 'o' || i FROM generate_series(1, 30) i;
INSERT INTO public.order_items SELECT 1 + i % 3, i, i FROM generate_series(1, 30) i;
INSERT INTO public.countries VALUES ('fr', 'France');
INSERT INTO public.schema_migrations VALUES (1, '001');
INSERT INTO public.\"Audit\" SELECT 1 + i % 3, i, 'a' || i FROM generate_series(1, 9) i;
INSERT INTO other.orders SELECT 1 + i % 3, i FROM generate_series(1, 9) i;
";

/// The rows of tenants 1 and 2 of `table`, in order.
fn tenants_rows(table: &str) -> String {
    format!("SELECT * FROM {table} WHERE tenant_id IN (1, 2) ORDER BY 1, 2")
}

fn job(env: &Env) -> std::path::PathBuf {
    let text = format!(
        "name = \"patterns\"\n[source]\ndsn = \"{}\"\npublication = \"pub_patterns\"\nslot = \"slot_patterns\"\n\
         [tenants]\ninclude = [1, 2]\n\
         [[tables]]\nname = \"public.*\"\nexclude = [\"schema_migrations\"]\n\
         [[tables]]\nname = \"public.order_items\"\nhistory = true\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
    );
    let path = env.dir.path().join("patterns.toml");
    std::fs::write(&path, text).expect("write job file");
    path
}

fn on_target_or_none(env: &Env, query: &str) -> Option<String> {
    env.try_on_target(query)
}

fn wait_table(env: &Env, table: &str) {
    let expected = env.on_source(&tenants_rows(table));
    wait_for(&format!("{table} on the target"), WAIT, || {
        on_target_or_none(env, &tenants_rows(table)).as_deref() == Some(expected.as_str())
    });
}

#[test]
fn a_pattern_carries_its_schemas_tenant_tables_including_ones_created_later() {
    let env = Env::start(SETUP);
    let job = job(&env);

    // `check` lists what the pattern carries and leaves out, and creates nothing.
    let check = |job: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["check", "--job"])
            .arg(job)
            .env("HELIOS_LOG", "warn")
            .output()
            .expect("run check");
        let text = without_colours(&format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        (out.status.success(), text)
    };
    let (ok, text) = check(&job);
    assert!(ok, "{text}");
    for expected in [
        "public.orders",
        "public.order_items",
        "public.countries",
        "matches public.* but is not carried: it has no tenant column `tenant_id`",
        "public.Audit",
        "public.audit-log",
        "its name is not",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    assert!(!text.contains("schema_migrations"), "excluded: {text}");
    assert!(!text.contains("other.orders"), "another schema: {text}");
    // A role without rights on some tables: the pattern leaves them out, with a warning
    // naming the right it lacks.
    env.on_source("CREATE ROLE limited LOGIN; GRANT SELECT ON public.orders TO limited;");
    let limited = env.dir.path().join("limited.toml");
    let spec = std::fs::read_to_string(&job).expect("job file");
    assert!(spec.contains("user=postgres"), "{spec}");
    std::fs::write(&limited, spec.replacen("user=postgres", "user=limited", 1)).expect("job file");
    let (_, text) = check(&limited);
    let line = |table: &str| {
        text.lines()
            .find(|l| l.contains(table) && l.contains("not carried"))
            .unwrap_or_else(|| panic!("no line for {table} in:\n{text}"))
            .to_string()
    };
    let items = line("public.order_items:");
    assert!(
        items.contains("warn") && items.contains("GRANT SELECT"),
        "{items}"
    );
    let orders = line("public.orders:");
    assert!(
        orders.contains("warn") && orders.contains("owner"),
        "{orders}"
    );

    let mut repl = Replicator::streaming(&job);
    wait_table(&env, "public.orders");
    wait_table(&env, "public.order_items");
    wait_table(&env, "public.\"Audit\"");
    let absent =
        |table: &str| env.on_target(&format!("SELECT to_regclass('{table}') IS NULL")) == "t";
    for table in [
        "public.countries",
        "public.schema_migrations",
        "other.orders",
        "public.\"audit-log\"",
    ] {
        assert!(absent(table), "{table} is not carried");
    }
    // The entry naming order_items outright gives it history; the pattern's orders has none.
    assert!(
        !absent("public.order_items_history"),
        "order_items keeps history"
    );
    assert!(absent("public.orders_history"), "orders keeps no history");
    let out = without_colours(&repl.output());
    assert!(
        out.contains("public.countries") && out.contains("no tenant column `tenant_id`"),
        "the start says which tables the pattern left out:\n{out}"
    );

    // Tables created while the job runs join: the job restarts once for the two (created
    // a second apart, as a migration would), loads them, then streams their changes.
    env.on_source(
        "CREATE TABLE public.notes (tenant_id int NOT NULL, id int PRIMARY KEY, body text); \
         INSERT INTO public.notes SELECT 1 + i % 3, i, 'n' || i FROM generate_series(1, 12) i; \
         INSERT INTO public.orders VALUES (1, 100, 'while the table came');",
    );
    std::thread::sleep(Duration::from_secs(1));
    env.on_source(
        "CREATE TABLE public.note_tags (tenant_id int NOT NULL, id int PRIMARY KEY, tag text); \
         INSERT INTO public.note_tags SELECT 1 + i % 3, i, 't' || i FROM generate_series(1, 6) i;",
    );
    wait_table(&env, "public.notes");
    wait_table(&env, "public.note_tags");
    env.on_source(
        "UPDATE public.notes SET body = 'changed' WHERE id < 5; DELETE FROM public.notes WHERE id = 6; \
         INSERT INTO public.orders VALUES (2, 101, 'after');",
    );
    wait_table(&env, "public.notes");
    wait_table(&env, "public.orders");
    let out = without_colours(&repl.output());
    assert!(
        out.contains("new tables match the job's patterns: public.note_tags, public.notes"),
        "the restart says why:\n{out}"
    );
    assert_eq!(
        out.matches("restarting the job to carry them").count(),
        1,
        "one restart for both:\n{out}"
    );
    assert!(!out.contains("ERROR"), "{out}");
    assert!(repl.stop().success(), "{}", repl.output());

    // One created while the job is stopped joins at its next start, as does a table that
    // gains the tenant column.
    env.on_source(
        "CREATE TABLE public.tags (tenant_id int NOT NULL, id int PRIMARY KEY, tag text); \
         INSERT INTO public.tags SELECT 1 + i % 3, i, 't' || i FROM generate_series(1, 6) i; \
         ALTER TABLE public.countries ADD COLUMN tenant_id int NOT NULL DEFAULT 2; \
         INSERT INTO public.orders VALUES (1, 102, 'while stopped');",
    );
    let mut repl = Replicator::streaming(&job);
    wait_table(&env, "public.tags");
    wait_table(&env, "public.orders");
    let expected = env.on_source("SELECT code, name, tenant_id FROM public.countries ORDER BY 1");
    wait_for("countries on the target", WAIT, || {
        on_target_or_none(
            &env,
            "SELECT code, name, tenant_id FROM public.countries ORDER BY 1",
        )
        .as_deref()
            == Some(expected.as_str())
    });
    assert!(repl.stop().success(), "{}", repl.output());
}

/// Tenant tables of the same name in several schemas (one per region, say).
const REGIONS: &str = "
CREATE SCHEMA app_eu;
CREATE SCHEMA app_us;
CREATE SCHEMA other;
CREATE TABLE app_eu.orders (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE app_us.orders (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
CREATE TABLE app_us.items (tenant_id int NOT NULL, id int PRIMARY KEY);
CREATE TABLE other.orders (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id));
INSERT INTO app_eu.orders SELECT 1 + i % 3, i, 'eu' || i FROM generate_series(1, 20) i;
INSERT INTO app_us.orders SELECT 1 + i % 3, i, 'us' || i FROM generate_series(1, 20) i;
INSERT INTO app_us.items SELECT 1 + i % 3, i FROM generate_series(1, 5) i;
INSERT INTO other.orders SELECT 1 + i % 3, i, 'o' || i FROM generate_series(1, 5) i;
";

#[test]
fn a_schema_pattern_carries_the_table_of_every_matching_schema_including_one_created_later() {
    let env = Env::start(REGIONS);
    let text = format!(
        "name = \"regions\"\n[source]\ndsn = \"{}\"\npublication = \"pub_regions\"\nslot = \"slot_regions\"\n\
         [tenants]\ninclude = [1, 2]\n\
         [[tables]]\nname = \"app_*.orders\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
    );
    let job = env.dir.path().join("regions.toml");
    std::fs::write(&job, text).expect("write job file");
    let (ok, check) = crate::harness::output_of(
        Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["check", "--job"])
            .arg(&job)
            .env("HELIOS_LOG", "warn"),
    );
    assert!(ok, "{check}");
    assert!(
        check.contains("app_eu.orders") && check.contains("app_us.orders"),
        "{check}"
    );
    assert!(
        !check.contains("other.orders") && !check.contains("app_us.items"),
        "{check}"
    );

    let mut repl = Replicator::streaming(&job);
    wait_table(&env, "app_eu.orders");
    wait_table(&env, "app_us.orders");
    for table in ["other.orders", "app_us.items"] {
        assert_eq!(
            env.on_target(&format!("SELECT to_regclass('{table}') IS NULL")),
            "t",
            "{table} is not carried"
        );
    }
    // A schema created while the job runs joins with its table.
    env.on_source(
        "CREATE SCHEMA app_ap; \
         CREATE TABLE app_ap.orders (tenant_id int NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id)); \
         INSERT INTO app_ap.orders SELECT 1 + i % 3, i, 'ap' || i FROM generate_series(1, 9) i;",
    );
    wait_table(&env, "app_ap.orders");
    env.on_source(
        "UPDATE app_eu.orders SET v = 'changed' WHERE id < 4; INSERT INTO app_ap.orders VALUES (1, 100, 'after');",
    );
    wait_table(&env, "app_eu.orders");
    wait_table(&env, "app_ap.orders");
    let out = without_colours(&repl.output());
    assert!(
        out.contains("new tables match the job's patterns: app_ap.orders"),
        "{out}"
    );
    assert!(!out.contains("ERROR"), "{out}");
    assert!(repl.stop().success(), "{}", repl.output());
}
