//! A schema-per-tenant source (`tenant_1.orders`, `tenant_2.orders`, … with no tenant
//! column): a pattern with `tenant_from = "schema"` carries the job's tenants' schemas,
//! each table as its tenant's whole, to a PostgreSQL target and a NATS stream; other
//! tenants' schemas are not published at all; a tenant's schema created while the job
//! runs joins; a TRUNCATE clears that tenant's table only.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::harness::{output_of, wait_for, without_colours, Env, Replicator};
use crate::nats_sink::read_job_stream;
use crate::qos::Nats;

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
    for carried in [
        "tenant_1.orders",
        "tenant_1.items",
        "tenant_2.orders",
        "tenant_2.items",
    ] {
        assert!(check.contains(carried), "{carried}: {check}");
    }
    assert!(
        !check.contains("tenant_3.") && !check.contains("public.plans"),
        "{check}"
    );

    let mut repl = Replicator::streaming(&job);
    for t in [
        "tenant_1.orders",
        "tenant_1.items",
        "tenant_2.orders",
        "tenant_2.items",
    ] {
        wait_same(&env, t);
    }
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
    for t in [
        "tenant_1.orders",
        "tenant_1.items",
        "tenant_2.orders",
        "tenant_2.items",
    ] {
        wait_same(&env, t);
    }
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
