//! Staging a table the target lacks, against a real PostgreSQL: a cut-short attempt's
//! staging table is replaced, the published table has the key `CREATE TABLE` would have
//! given it (named as it would name it), and a table another job created meanwhile takes
//! the staged rows.

use crate::change::fixtures;
use crate::embedded::pg_cluster::PgCluster;
use crate::sinks::pg_apply::sink::connect;
use crate::sinks::pg_apply::staged_table::{
    drop_leftovers, publish, stage_if_missing, staging_name,
};

fn target(dir: &std::path::Path) -> PgCluster {
    use std::os::unix::fs::PermissionsExt;
    // The server may run as another user (we are root): let it reach its directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cluster = PgCluster::start(&dir.join("pg")).expect("start cluster");
    cluster.create_database("dst").expect("create dst");
    cluster
}

#[tokio::test]
async fn a_missing_table_is_staged_then_published_with_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = target(dir.path());
    let mut client = connect(&cluster.dsn("dst")).await.expect("connect");
    crate::sinks::pg_apply::store::migrate(&client)
        .await
        .expect("bookkeeping tables");
    let table = fixtures::table(
        "orders",
        &[("tenant_id", "integer"), ("id", "bigint"), ("note", "text")],
        &[0, 1],
    );
    let staging_of = staging_name(&table, "job");

    // A first attempt staged rows and was cut short.
    let first = stage_if_missing(&client, &table, "job")
        .await
        .expect("staged")
        .expect("missing, so staged");
    assert_eq!(first.name, staging_of);
    cluster
        .psql(
            "dst",
            &format!("INSERT INTO app.{staging_of} VALUES (1, 1, 'cut short')"),
        )
        .expect("rows of the first attempt");
    // The next attempt starts from an empty staging table.
    let staging = stage_if_missing(&client, &table, "job")
        .await
        .expect("staged")
        .expect("still missing");
    let count = |sql: &str| cluster.psql("dst", sql).expect("query").trim().to_string();
    assert_eq!(
        count(&format!("SELECT count(*) FROM app.{staging_of}")),
        "0"
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'app.{staging_of}'::regclass"
        )),
        "0",
        "staged without its key"
    );
    cluster
        .psql(
            "dst",
            &format!("INSERT INTO app.{staging_of} VALUES (1, 1, 'a'), (1, 2, 'b')"),
        )
        .expect("load");
    publish(&mut client, &staging, &table)
        .await
        .expect("published");
    assert_eq!(
        count("SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'app.orders'::regclass"),
        "orders_pkey PRIMARY KEY (tenant_id, id)"
    );
    assert_eq!(
        count("SELECT string_agg(note, ',' ORDER BY id) FROM app.orders"),
        "a,b"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'"),
        "0"
    );
    // Now the table exists: nothing to stage.
    assert!(stage_if_missing(&client, &table, "job")
        .await
        .expect("checked")
        .is_none());
}

#[tokio::test]
async fn a_table_created_meanwhile_takes_the_staged_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = target(dir.path());
    let mut client = connect(&cluster.dsn("dst")).await.expect("connect");
    crate::sinks::pg_apply::store::migrate(&client)
        .await
        .expect("bookkeeping tables");
    let table = fixtures::table(
        "orders",
        &[("tenant_id", "integer"), ("id", "bigint")],
        &[0, 1],
    );
    let staging = stage_if_missing(&client, &table, "job-a")
        .await
        .expect("staged")
        .expect("missing");
    cluster
        .psql(
            "dst",
            &format!("INSERT INTO app.{} VALUES (1, 1), (1, 2)", staging.name),
        )
        .expect("load");
    // Another job published the table first, with its tenant's rows.
    cluster
        .psql("dst", "CREATE TABLE app.orders (tenant_id integer, id bigint, PRIMARY KEY (tenant_id, id)); INSERT INTO app.orders VALUES (2, 1)")
        .expect("the other job's table");
    publish(&mut client, &staging, &table)
        .await
        .expect("published into it");
    let count = |sql: &str| cluster.psql("dst", sql).expect("query").trim().to_string();
    assert_eq!(
        count(
            "SELECT string_agg(tenant_id || ':' || id, ',' ORDER BY tenant_id, id) FROM app.orders"
        ),
        "1:1,1:2,2:1"
    );
    assert_eq!(
        count("SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'"),
        "0"
    );
}

#[tokio::test]
async fn a_keyless_table_is_not_staged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = target(dir.path());
    let client = connect(&cluster.dsn("dst")).await.expect("connect");
    crate::sinks::pg_apply::store::migrate(&client)
        .await
        .expect("bookkeeping tables");
    let table = fixtures::table("log", &[("tenant_id", "integer"), ("n", "bigint")], &[]);
    assert!(stage_if_missing(&client, &table, "job")
        .await
        .expect("checked")
        .is_none());
}

/// A job's staging tables left by earlier attempts go, whatever table they were for;
/// another job's and the job's other tables stay.
#[tokio::test]
async fn a_job_s_leftover_staging_tables_are_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = target(dir.path());
    let client = connect(&cluster.dsn("dst")).await.expect("connect");
    crate::sinks::pg_apply::store::migrate(&client)
        .await
        .expect("bookkeeping tables");
    let mut table = fixtures::table("orders", &[("id", "bigint")], &[0]);
    let mut names = Vec::new();
    for (oid, job) in [(100, "job"), (200, "job"), (100, "other")] {
        table.oid = oid;
        names.push(staging_name(&table, job));
    }
    let ddl: Vec<String> = names
        .iter()
        .map(|n| format!("CREATE TABLE app.{n} (id bigint);"))
        .collect();
    cluster
        .psql(
            "dst",
            &format!(
                "CREATE SCHEMA app; {} CREATE TABLE app.helios_loader_job (id bigint);",
                ddl.join(" ")
            ),
        )
        .expect("leftovers");
    let dropped = drop_leftovers(&client, "job", &["app", "elsewhere"])
        .await
        .expect("dropped");
    assert_eq!(dropped, 2);
    let left = cluster
        .psql(
            "dst",
            "SELECT string_agg(relname, ',' ORDER BY relname COLLATE \"C\") FROM pg_class \
             WHERE relnamespace = 'app'::regnamespace AND relkind = 'r'",
        )
        .expect("tables")
        .trim()
        .to_string();
    assert_eq!(left, format!("{},helios_loader_job", names[2]));
}

/// The published key takes the name `CREATE TABLE` would have given it, also when the
/// plain name is taken (a table renamed away keeps its key's name, a constraint elsewhere
/// in the schema may hold the next) and when the table's name is long: compared with
/// `CREATE TABLE` itself in a schema where the same names are taken.
#[tokio::test]
async fn the_key_is_named_as_create_table_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = target(dir.path());
    let mut client = connect(&cluster.dsn("dst")).await.expect("connect");
    crate::sinks::pg_apply::store::migrate(&client)
        .await
        .expect("bookkeeping tables");
    for schema in ["app", "oracle"] {
        cluster
            .psql(
                "dst",
                &format!(
                    "CREATE SCHEMA {schema};
                     CREATE TABLE {schema}.orders_old (id bigint CONSTRAINT orders_pkey PRIMARY KEY);
                     CREATE TABLE {schema}.other (id bigint CONSTRAINT orders_pkey1 CHECK (id > 0));"
                ),
            )
            .expect("names taken");
    }
    let key_of = |schema: &str, name: &str| {
        cluster
            .psql(
                "dst",
                &format!("SELECT conname FROM pg_constraint WHERE conrelid = '{schema}.{name}'::regclass AND contype = 'p'"),
            )
            .expect("key name")
            .trim()
            .to_string()
    };
    let long = "l".repeat(63);
    for name in ["orders", long.as_str()] {
        let table = fixtures::table(name, &[("tenant_id", "integer"), ("id", "bigint")], &[0, 1]);
        let staging = stage_if_missing(&client, &table, "job")
            .await
            .expect("staged")
            .expect("missing");
        publish(&mut client, &staging, &table)
            .await
            .expect("published");
        cluster
            .psql(
                "dst",
                &format!("CREATE TABLE oracle.{name} (tenant_id integer, id bigint, PRIMARY KEY (tenant_id, id))"),
            )
            .expect("the same table by CREATE TABLE");
        assert_eq!(key_of("app", name), key_of("oracle", name), "{name}");
    }
    assert_eq!(key_of("app", "orders"), "orders_pkey2");
    assert_eq!(key_of("app", &long), format!("{}_pkey", "l".repeat(58)));
}
