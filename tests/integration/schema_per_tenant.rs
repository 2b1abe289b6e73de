//! A schema-per-tenant source (`tenant_1.orders`, `tenant_2.orders`, … with no tenant
//! column): a pattern with `tenant_from = "schema"` carries the job's tenants' schemas,
//! each table as its tenant's whole, to a PostgreSQL target and a NATS stream; other
//! tenants' schemas are not published at all; a tenant's schema created while the job
//! runs joins; a TRUNCATE clears that tenant's table only. With history, each table's
//! versions go to its tenant's cold-tier directory, a tenant added later gets its tables
//! loaded alone, and a tenant resync mends its table only; with `removed = "delete"`, a
//! tenant leaving the job has its own tables emptied; as-of queries answer a table's
//! versions for its tenant only.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use helios_repl::embedded::pg_cluster::free_port;

use crate::harness::{output_of, wait_for, without_colours, Env, Replicator};
use crate::nats_sink::read_job_stream;
use crate::qos::Nats;
use crate::serve_api::{http_with_body, submit, Server, TOKEN};

const WAIT: Duration = Duration::from_secs(90);

/// Tenant `t`'s schema with its two tables and a few rows (ids differ per tenant).
fn tenant_schema(t: u32) -> String {
    format!(
        "CREATE SCHEMA tenant_{t};
         CREATE TABLE tenant_{t}.orders (id int PRIMARY KEY, v text);
         CREATE TABLE tenant_{t}.items (id int PRIMARY KEY, qty int);
         INSERT INTO tenant_{t}.orders SELECT {t}00 + i, 'o' || i FROM generate_series(1, 20) i;
         INSERT INTO tenant_{t}.items SELECT {t}00 + i, i FROM generate_series(1, 10) i;"
    )
}

fn rows(table: &str) -> String {
    format!("SELECT * FROM {table} ORDER BY 1")
}

fn wait_same(env: &Env, table: &str) {
    let expected = env.on_source(&rows(table));
    wait_for(&format!("{table} on the target"), WAIT, || {
        env.try_on_target(&rows(table)).as_deref() == Some(expected.as_str())
    });
}

/// The tables the first test's job carries (its tenants 1 and 2 have schemas at start).
const CARRIED: [&str; 4] = [
    "tenant_1.orders",
    "tenant_1.items",
    "tenant_2.orders",
    "tenant_2.items",
];

fn wait_all_same(env: &Env, tables: &[&str]) {
    for table in tables {
        wait_same(env, table);
    }
}

fn absent_on_target(env: &Env, table: &str) -> bool {
    env.on_target(&format!("SELECT to_regclass('{table}') IS NULL")) == "t"
}

#[test]
fn a_schema_per_tenant_source_replicates_the_jobs_tenants_schemas_each_as_its_tenant() {
    let setup = format!(
        "CREATE TABLE public.plans (id int PRIMARY KEY, name text);
         INSERT INTO public.plans VALUES (1, 'free');
         {}{}{}",
        tenant_schema(1),
        tenant_schema(2),
        tenant_schema(3)
    );
    let env = Env::start(&setup);
    let nats = Nats::start(&env);
    let text = format!(
        "name = \"spt\"\n[source]\ndsn = \"{}\"\npublication = \"pub_spt\"\nslot = \"slot_spt\"\n\
         [tenants]\ninclude = [1, 2, 4]\n\
         [[tables]]\nname = \"tenant_*.*\"\ntenant_from = \"schema\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n\
         [[sinks]]\nkind = \"nats\"\nurl = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
        nats.url,
    );
    let job = env.dir.path().join("spt.toml");
    std::fs::write(&job, text).expect("write job file");

    // `check` lists the job's tenants' tables, not tenant 3's nor the shared one.
    let (ok, check) = output_of(
        Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["check", "--job"])
            .arg(&job)
            .env("HELIOS_LOG", "warn"),
    );
    let check = without_colours(&check);
    assert!(ok, "{check}");
    for carried in CARRIED {
        assert!(check.contains(carried), "{carried}: {check}");
    }
    assert!(
        !check.contains("tenant_3.") && !check.contains("public.plans"),
        "{check}"
    );

    let mut repl = Replicator::streaming(&job);
    wait_all_same(&env, &CARRIED);
    for t in ["tenant_3.orders", "tenant_3.items", "public.plans"] {
        assert!(absent_on_target(&env, t), "{t} is not carried");
    }
    // The publication holds the job's tenants' tables only, with no row filter: other
    // tenants' changes never leave the source.
    let published = env.on_source(
        "SELECT string_agg(schemaname || '.' || tablename || ':' || coalesce(rowfilter, '-'), ' ' \
         ORDER BY schemaname, tablename) FROM pg_publication_tables WHERE pubname = 'pub_spt'",
    );
    assert_eq!(
        published,
        "tenant_1.items:- tenant_1.orders:- tenant_2.items:- tenant_2.orders:-"
    );

    // Changes, in every tenant's schema; a TRUNCATE clears tenant 2's items only.
    env.on_source(
        "BEGIN;
         UPDATE tenant_1.orders SET v = 'changed' WHERE id < 105;
         DELETE FROM tenant_2.orders WHERE id > 215;
         INSERT INTO tenant_2.orders VALUES (250, 'new');
         UPDATE tenant_3.orders SET v = 'not carried';
         COMMIT;
         TRUNCATE tenant_2.items;
         INSERT INTO tenant_1.items VALUES (150, 5);",
    );
    wait_all_same(&env, &CARRIED);
    assert_eq!(env.on_target("SELECT count(*) FROM tenant_2.items"), "0");
    assert_eq!(env.on_target("SELECT count(*) FROM tenant_1.items"), "11");

    // Tenant 4's schema, created while the job runs, joins with its tables.
    env.on_source(&tenant_schema(4));
    wait_same(&env, "tenant_4.orders");
    wait_same(&env, "tenant_4.items");
    env.on_source("UPDATE tenant_4.orders SET v = 'after' WHERE id = 401;");
    wait_same(&env, "tenant_4.orders");
    assert!(absent_on_target(&env, "tenant_3.orders"));
    let out = without_colours(&repl.output());
    assert!(!out.contains("ERROR"), "{out}");
    assert!(repl.stop().success(), "{}", repl.output());

    // On the stream, each table's rows are its schema's tenant's, and only the job's.
    let frames = read_job_stream(&nats.url, "spt");
    assert!(!frames.is_empty());
    let mut tenants = BTreeSet::new();
    for f in &frames {
        let schema_tenant = f
            .table
            .strip_prefix("tenant_")
            .and_then(|rest| rest.split_once('.'))
            .map(|(t, _)| t);
        assert_eq!(
            schema_tenant,
            Some(f.tenant.as_str()),
            "{} on {}",
            f.table,
            f.subject
        );
        tenants.insert(f.tenant.clone());
    }
    assert_eq!(
        tenants,
        BTreeSet::from(["1".to_string(), "2".to_string(), "4".to_string()])
    );
}

/// A job on the tenants' `orders` with history, on the PostgreSQL target and the cold
/// tier (`cold/` of the test's directory).
fn history_job(env: &Env, include: &str) -> std::path::PathBuf {
    let text = format!(
        "name = \"spth\"\n[source]\ndsn = \"{}\"\npublication = \"pub_spth\"\nslot = \"slot_spth\"\n\
         [tenants]\ninclude = {include}\n\
         [[tables]]\nname = \"tenant_*.orders\"\ntenant_from = \"schema\"\nhistory = true\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n\
         [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
        env.dir.path().join("cold").display(),
    );
    let job = env.dir.path().join("spth.toml");
    std::fs::write(&job, text).expect("write job file");
    job
}

/// The ids of `table`'s versions in `tenant`'s directory of the cold tier (none when it
/// has no directory).
fn cold_ids(env: &Env, tenant: &str, table: &str) -> BTreeSet<String> {
    let root = env.dir.path().join("cold");
    match helios_repl::sinks::parquet::read_table(&root, tenant, table) {
        Ok((_, rows)) => rows
            .iter()
            .filter_map(|r| r.values[0].as_ref().map(|v| v.to_string()))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// `from..=to` as text.
fn ids(from: u32, to: u32) -> BTreeSet<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

/// Keys of `table`'s history with more than one current version, and current versions
/// whose value differs from the target's row (or whose row is gone): `0` when the
/// history agrees with the table.
fn history_disagreements(env: &Env, table: &str) -> String {
    env.on_target(&format!(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM {table}_history \
                 WHERE system_to_lsn IS NULL AND valid_to IS NULL AND NOT tombstone \
                 GROUP BY id HAVING count(*) > 1) d) \
              + (SELECT count(*) FROM {table} t FULL JOIN \
                   (SELECT * FROM {table}_history \
                    WHERE system_to_lsn IS NULL AND valid_to IS NULL AND NOT tombstone) h \
                   USING (id) \
                 WHERE t.id IS NULL OR h.id IS NULL OR t.v IS DISTINCT FROM h.v)"
    ))
}

#[test]
fn one_tenant_tables_keep_history_take_a_tenant_added_later_and_resync_one_tenant() {
    let env = Env::start(&format!(
        "{}{}{}",
        tenant_schema(1),
        tenant_schema(2),
        tenant_schema(3)
    ));
    let mut repl = Replicator::streaming(&history_job(&env, "[1, 2]"));
    env.on_source(
        "UPDATE tenant_1.orders SET v = 'u1' WHERE id <= 103;
         DELETE FROM tenant_2.orders WHERE id = 201;",
    );
    wait_same(&env, "tenant_1.orders");
    wait_same(&env, "tenant_2.orders");
    for t in ["tenant_1.orders", "tenant_2.orders"] {
        assert_eq!(history_disagreements(&env, t), "0", "{t}");
    }
    assert!(absent_on_target(&env, "tenant_3.orders"));
    // The cold tier keeps each table's versions in its tenant's directory.
    wait_for("tenant 1's versions in the cold tier", WAIT, || {
        cold_ids(&env, "1", "tenant_1.orders") == ids(101, 120)
    });
    wait_for("tenant 2's versions in the cold tier", WAIT, || {
        cold_ids(&env, "2", "tenant_2.orders") == ids(201, 220)
    });
    assert!(cold_ids(&env, "2", "tenant_1.orders").is_empty());
    assert!(cold_ids(&env, "3", "tenant_3.orders").is_empty());
    assert!(repl.stop().success(), "{}", repl.output());

    // Tenant 3 added: its schema's table is loaded whole, the others are not reloaded, and
    // the books (restored from the history tables) go on closing the right versions.
    let job = history_job(&env, "[1, 2, 3]");
    let mut repl = Replicator::streaming(&job);
    wait_same(&env, "tenant_3.orders");
    let out = without_colours(&repl.output());
    assert!(
        out.contains("tenant_3.orders (the whole table)"),
        "tenant 3's table is a gap: {out}"
    );
    assert!(
        !out.contains("tenant_1.orders (") && !out.contains("tenant_2.orders ("),
        "no other tenant's table is a gap: {out}"
    );
    env.on_source(
        "UPDATE tenant_1.orders SET v = 'u2' WHERE id <= 102;
         UPDATE tenant_3.orders SET v = 'u3' WHERE id = 305;",
    );
    wait_same(&env, "tenant_1.orders");
    wait_same(&env, "tenant_3.orders");
    for t in ["tenant_1.orders", "tenant_2.orders", "tenant_3.orders"] {
        assert_eq!(history_disagreements(&env, t), "0", "{t}");
    }
    wait_for("tenant 3's versions in the cold tier", WAIT, || {
        cold_ids(&env, "3", "tenant_3.orders") == ids(301, 320)
    });
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM tenant_1.orders_history WHERE id = 101 AND system_to_lsn IS NOT NULL"
        ),
        "2",
        "id 101's first two versions were closed, one per update"
    );
    assert!(repl.stop().success(), "{}", repl.output());

    // Both tables drift on the target; a resync of tenant 1 mends its table only.
    env.on_target(
        "UPDATE tenant_1.orders SET v = 'drifted' WHERE id = 110;
         UPDATE tenant_2.orders SET v = 'drifted' WHERE id = 210;",
    );
    let mut repl = Replicator::start_with_args(
        &job,
        2,
        &["--resync", "tenant_1.orders", "--resync-tenant", "1"],
    );
    wait_same(&env, "tenant_1.orders");
    assert_eq!(
        env.on_target("SELECT v FROM tenant_2.orders WHERE id = 210"),
        "drifted",
        "tenant 2's table is not touched"
    );
    let out = without_colours(&repl.output());
    assert!(!out.contains("ERROR"), "{out}");
    assert!(repl.stop().success(), "{}", repl.output());
}

#[test]
fn a_tenant_removed_from_the_job_has_its_own_tables_emptied_with_removed_delete() {
    let env = Env::start(&format!(
        "{}{}{}",
        tenant_schema(1),
        tenant_schema(2),
        tenant_schema(3)
    ));
    let job = |include: &str| {
        let text = format!(
            "name = \"sptd\"\n[source]\ndsn = \"{}\"\npublication = \"pub_sptd\"\nslot = \"slot_sptd\"\n\
             [tenants]\ninclude = {include}\nremoved = \"delete\"\n\
             [[tables]]\nname = \"tenant_*.*\"\ntenant_from = \"schema\"\n\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
            env.source_dsn(),
            env.target_dsn(),
        );
        let path = env.dir.path().join("sptd.toml");
        std::fs::write(&path, text).expect("write job file");
        path
    };
    let mut repl = Replicator::streaming(&job("[1, 2, 3]"));
    let all = [
        "tenant_1.orders",
        "tenant_2.orders",
        "tenant_3.orders",
        "tenant_1.items",
        "tenant_2.items",
        "tenant_3.items",
    ];
    wait_all_same(&env, &all);
    assert!(repl.stop().success(), "{}", repl.output());

    // Tenant 3's schema is dropped on the source (tenant 3 stays in the job), tenant 2
    // leaves the job: only tenant 2's tables are emptied.
    env.on_source("DROP SCHEMA tenant_3 CASCADE");
    let mut repl = Replicator::streaming(&job("[1, 3]"));
    let out = without_colours(&repl.output());
    assert!(
        out.contains("tenant_2.orders (the whole table)"),
        "the log names what is no longer carried: {out}"
    );
    for t in ["tenant_2.orders", "tenant_2.items"] {
        assert_eq!(
            env.on_target(&format!("SELECT count(*) FROM {t}")),
            "0",
            "{t}"
        );
    }
    assert_eq!(env.on_target("SELECT count(*) FROM tenant_3.orders"), "20");
    env.on_source("INSERT INTO tenant_1.orders VALUES (199, 'after')");
    wait_all_same(&env, &["tenant_1.orders", "tenant_1.items"]);
    assert!(repl.stop().success(), "{}", repl.output());
}

/// The rows `query` answers for `tenant`'s `table` (as of `system`, when given), as
/// `id=v` in id order.
fn queried(server: &Server, tenant: &str, table: &str, system: Option<&str>) -> String {
    let mut args = vec!["query", "--tenant", tenant, "--table", table, "--json"];
    if let Some(point) = system {
        args.extend(["--as-of-system", point]);
    }
    let (ok, out) = server.cli(&args);
    assert!(ok, "query: {out}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    let mut rows: Vec<(i64, String)> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let id = r[0].as_str().and_then(|s| s.parse().ok()).expect("id");
            (id, r[1].as_str().unwrap_or_default().to_string())
        })
        .collect();
    rows.sort();
    rows.iter()
        .map(|(id, v)| format!("{id}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn as_of_queries_answer_a_one_tenant_tables_versions_for_its_tenant_only() {
    let env = Env::start(&format!("{}{}", tenant_schema(1), tenant_schema(2)));
    env.target.create_database("meta").expect("meta db");
    let port = free_port().expect("port");
    let server = Server::spawn(&env, port, &["--retention-every-secs", "1"], &[]);
    server.wait_healthy();
    submit(&server, &history_job(&env, "[1, 2]"));
    wait_same(&env, "tenant_1.orders");
    wait_for("the snapshot's versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM tenant_1.orders_history")
            .as_deref()
            == Some("20")
    });
    let before = env.on_source("SELECT pg_current_wal_insert_lsn()");
    env.on_source("UPDATE tenant_1.orders SET v = 'later' WHERE id = 101");
    wait_same(&env, "tenant_1.orders");
    wait_for("the update's version", WAIT, || {
        queried(&server, "1", "tenant_1.orders", None).starts_with("101=later,")
    });
    let then = queried(&server, "1", "tenant_1.orders", Some(before.trim()));
    assert!(then.starts_with("101=o1,102=o2,"), "{then}");
    assert_eq!(then.split(',').count(), 20, "{then}");
    let (ok, out) = server.cli(&["query", "--tenant", "2", "--table", "tenant_1.orders"]);
    assert!(
        !ok && out.contains("422") && out.contains("tenant_1.orders holds tenant `1`'s rows only"),
        "tenant 2 has no rows in tenant 1's table: {out}"
    );
    assert_eq!(
        queried(&server, "2", "tenant_2.orders", None)
            .split(',')
            .count(),
        20
    );

    // Retention of 0 days for tenant 1's table (a policy or an export naming tenant 2 for
    // it is refused): its closed versions leave the history table once the cold tier
    // holds them, tenant 2's table keeps its own, and the point before the update is
    // answered from the cold tier as it was.
    env.on_source("UPDATE tenant_2.orders SET v = 'later' WHERE id = 201");
    wait_for("tenant 2's update's version", WAIT, || {
        queried(&server, "2", "tenant_2.orders", None).starts_with("201=later,")
    });
    let policy = |tenant: &str| {
        http_with_body(
            &server.url,
            "PUT",
            "/v1/retention-policies",
            Some(TOKEN),
            "application/json",
            format!(r#"{{"tenant": "{tenant}", "table": "tenant_1.orders", "days": 0}}"#)
                .as_bytes(),
        )
    };
    let (status, answer) = policy("2");
    assert_eq!(
        status, 422,
        "tenant 2 has no history in tenant 1's table: {answer}"
    );
    assert!(answer.contains("holds tenant `1`'s rows only"), "{answer}");
    let (status, answer) = http_with_body(
        &server.url,
        "POST",
        "/v1/exports",
        Some(TOKEN),
        "application/json",
        format!(
            r#"{{"tenant": "2", "table": "tenant_1.orders", "output": "{}"}}"#,
            env.dir.path().join("export").display()
        )
        .as_bytes(),
    );
    assert_eq!(status, 422, "nor an export of it: {answer}");
    let (status, answer) = policy("1");
    assert_eq!(status, 200, "{answer}");
    let closed = |table: &str| {
        env.on_target(&format!(
            "SELECT count(*) FROM {table}_history WHERE system_to IS NOT NULL"
        ))
    };
    wait_for("retention to move tenant 1's closed versions", WAIT, || {
        closed("tenant_1.orders") == "0"
    });
    assert_eq!(
        closed("tenant_2.orders"),
        "1",
        "tenant 2's table keeps its history"
    );
    let (ok, out) = server.cli(&[
        "query",
        "--tenant",
        "1",
        "--table",
        "tenant_1.orders",
        "--as-of-system",
        before.trim(),
        "--json",
    ]);
    assert!(ok, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(answer["source"], "cold_tier", "{answer}");
    assert_eq!(
        queried(&server, "1", "tenant_1.orders", Some(before.trim())),
        then
    );
}

/// A tenant's schema renamed while the job runs (include "all"): its changes go on to the
/// table of the old name at first (with the warning), then the job's watch finds the
/// table under its new name, as the tenant that name gives, restarts and loads it whole;
/// the old name's table on the target keeps its rows.
#[test]
fn a_tenant_schema_renamed_while_the_job_runs_is_carried_as_the_tenant_its_new_name_gives() {
    let env = Env::start(&format!("{}{}", tenant_schema(1), tenant_schema(2)));
    let job = env.dir.path().join("rename.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"spt-rename\"\n[source]\ndsn = \"{}\"\npublication = \"pub_spt_rename\"\n\
             slot = \"slot_spt_rename\"\n[tenants]\ninclude = \"all\"\n\
             [[tables]]\nname = \"tenant_*.orders\"\ntenant_from = \"schema\"\n\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
            env.source_dsn(),
            env.target_dsn()
        ),
    )
    .expect("write job file");
    let mut repl = Replicator::streaming(&job);
    wait_same(&env, "tenant_2.orders");
    env.on_source(
        "ALTER SCHEMA tenant_2 RENAME TO tenant_7;
         UPDATE tenant_7.orders SET v = 'after the rename' WHERE id = 201;",
    );
    wait_for("the job carrying tenant_7.orders", WAIT, || {
        env.try_on_target(&rows("tenant_7.orders")).as_deref()
            == Some(env.on_source(&rows("tenant_7.orders")).as_str())
    });
    env.on_source("INSERT INTO tenant_7.orders VALUES (299, 'after the restart')");
    wait_same(&env, "tenant_7.orders");
    let out = without_colours(&repl.output());
    assert!(
        out.contains("a table of the job was renamed on the source")
            && out.contains("new tables match the job's patterns: tenant_7.orders")
            && out.contains("no_longer_carried=tenant_2.orders (the whole table)"),
        "{out}"
    );
    // The old name's table keeps its rows, with the change made before the restart.
    assert_eq!(
        env.on_target("SELECT count(*), max(v) FILTER (WHERE id = 201) FROM tenant_2.orders"),
        "20|after the rename"
    );
    assert!(
        absent_on_target(&env, "tenant_7.items"),
        "only orders match"
    );
    assert!(repl.stop().success(), "{}", repl.output());
}
