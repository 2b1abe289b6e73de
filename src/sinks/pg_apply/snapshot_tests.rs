//! Loading a table's initial copy into a real PostgreSQL: in COPY's binary format when
//! both ends read every value the same way, in text otherwise, and the same rows either
//! way (compared through their text forms on both sides).

use crate::cdc::{catalog, snapshot::copy_out_sql};
use crate::control::job_spec::{TenantFilter, TenantKey};
use crate::embedded::pg_cluster::PgCluster;
use crate::sinks::pg_apply::sink::connect;
use crate::sinks::pg_apply::snapshot::load_table;

/// A cluster with databases `src` (holding `ddl`) and `dst`.
/// The tables' tenant column.
fn tid() -> TenantKey {
    TenantKey::Column("tenant_id".into())
}

fn cluster(dir: &std::path::Path, ddl: &str) -> PgCluster {
    use std::os::unix::fs::PermissionsExt;
    // The server may run as another user (we are root): let it reach its directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cluster = PgCluster::start(&dir.join("pg")).expect("start cluster");
    cluster.create_database("src").expect("create src");
    cluster.create_database("dst").expect("create dst");
    cluster.psql("src", ddl).expect("source table");
    cluster
}

/// Every row of `app.t` in `database`, each value in its text form, in key order.
fn rows_as_text(cluster: &PgCluster, database: &str) -> String {
    cluster
        .psql(
            database,
            "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY id), '') FROM app.t AS t",
        )
        .expect("read rows")
}

/// The ids of `app.t` in `database`, in order.
fn ids(cluster: &PgCluster, database: &str) -> String {
    cluster
        .psql(
            database,
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM app.t",
        )
        .expect("read ids")
        .trim()
        .to_string()
}

/// A session on `src` and its `app.t` as the catalog reads it.
async fn source_table(cluster: &PgCluster) -> (tokio_postgres::Client, crate::change::TableInfo) {
    let copier = catalog::connect(&cluster.dsn("src"))
        .await
        .expect("connect source");
    let info = catalog::table_info(&copier, "app", "t")
        .await
        .expect("source table info");
    (copier, info)
}

/// Loads `app.t` from `src` into `dst` as the job runner does.
async fn load(
    cluster: &PgCluster,
    include: &TenantFilter,
) -> Result<crate::sinks::pg_apply::snapshot::Loaded, crate::sinks::SinkError> {
    load_with(cluster, include, false).await
}

/// [`load`], with the binary copy's signature damaged on its way if `damage_binary`
/// (data the target refuses, to exercise the fallback to text).
async fn load_with(
    cluster: &PgCluster,
    include: &TenantFilter,
    damage_binary: bool,
) -> Result<crate::sinks::pg_apply::snapshot::Loaded, crate::sinks::SinkError> {
    let (copier, info) = source_table(cluster).await;
    let mut target = connect(&cluster.dsn("dst")).await.expect("connect target");
    crate::sinks::pg_apply::store::migrate(&target)
        .await
        .expect("bookkeeping tables");
    let (copier_ref, info_ref) = (&copier, &info);
    let streamed = std::sync::atomic::AtomicU64::new(0);
    let open_source = move |binary: bool| {
        let sql = copy_out_sql(info_ref, &tid(), include, None, binary);
        let damage = binary && damage_binary;
        async move {
            use futures_util::StreamExt;
            let copy = copier_ref.copy_out(&sql).await?;
            Ok(copy.map(move |chunk| {
                chunk.map(|b| match b.strip_prefix(b"PGCOPY".as_slice()) {
                    Some(rest) if damage => [b"XXCOPY".as_slice(), rest].concat().into(),
                    _ => b,
                })
            }))
        }
    };
    let loaded = load_table(
        &mut target,
        &info,
        &tid(),
        include,
        true,
        None,
        open_source,
        &streamed,
    )
    .await;
    if let Ok(l) = &loaded {
        assert_eq!(
            streamed.into_inner(),
            l.bytes,
            "every byte counted as it went"
        );
    }
    // The source's session is fine afterwards, even after a copy the target refused.
    let one: i32 = copier
        .query_one("SELECT 1", &[])
        .await
        .expect("source session usable")
        .get(0);
    assert_eq!(one, 1);
    loaded
}

const VALUES_DDL: &str = "CREATE SCHEMA app;
CREATE TABLE app.t (tenant_id int NOT NULL, id bigint PRIMARY KEY, amount numeric(12,2),
    at timestamptz, day date, span interval, payload jsonb, note text, flag bool,
    ratio float8, tags text[], counts int[], blob bytea, uid uuid, code varchar(8));
INSERT INTO app.t VALUES
 (1, 1, 1234567890.12, '2024-02-29 23:59:59.999999+05:30', '0001-01-01 BC', '1 year 2 mons -3 days 04:05:06.7',
  '{\"k\": [1, 2.50, null], \"s\": \"tab\\tnl\\n\"}', E'tab\\tnewline\\nback\\\\slash', true,
  'NaN', ARRAY['a', NULL, 'c\"q'], ARRAY[1, -2, NULL], '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'abc'),
 (2, 2, -0.01, 'infinity', 'infinity', '-178000000 years', 'null', '', false,
  '-Infinity', '{}', '{}', '', NULL, ''),
 (3, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (2, 4, 0, '1999-01-08 04:05:06.5-08', '2000-01-01', '0', '[]', 'ünïcødé ✓', true,
  1e-300, ARRAY[''], ARRAY[2147483647], '\\x', '00000000-0000-0000-0000-000000000000', 'xyzxyzxy');";

#[tokio::test]
async fn built_in_values_go_binary_and_arrive_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(dir.path(), VALUES_DDL);
    let loaded = load(&cluster, &TenantFilter::All).await.expect("loaded");
    assert!(loaded.binary, "every column is binary-safe: {loaded:?}");
    assert!(loaded.bytes > 0);
    assert_eq!(loaded.rows, 4);
    assert_eq!(ids(&cluster, "dst"), "1,2,3,4");
    assert_eq!(rows_as_text(&cluster, "dst"), rows_as_text(&cluster, "src"));

    // Again, for two tenants only: the other rows stay, the tenants' are replaced.
    cluster
        .psql("dst", "UPDATE app.t SET note = 'stale' WHERE id IN (2, 3)")
        .expect("make the target differ");
    let only = TenantFilter::Only(["2".to_string()].into_iter().collect());
    let reloaded = load(&cluster, &only).await.expect("reloaded");
    assert!(reloaded.binary);
    assert_eq!(reloaded.rows, 2, "tenant 2's rows");
    let after = rows_as_text(&cluster, "dst");
    assert!(after.contains(",stale,"), "tenant 3 kept: {after}");
    assert_eq!(after.matches("stale").count(), 1, "{after}");
}

#[tokio::test]
async fn a_user_type_or_another_target_type_goes_as_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(
        dir.path(),
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE SCHEMA app;
         CREATE TABLE app.t (tenant_id int NOT NULL, id bigint PRIMARY KEY, m mood, at timestamptz);
         INSERT INTO app.t VALUES (1, 1, 'ok', '2024-01-01 10:00+00'), (1, 2, NULL, NULL);",
    );
    let loaded = load(&cluster, &TenantFilter::All).await.expect("loaded");
    assert!(!loaded.binary, "an enum's binary form differs by cluster");
    assert_eq!(rows_as_text(&cluster, "dst"), rows_as_text(&cluster, "src"));
}

#[tokio::test]
async fn binary_data_the_target_refuses_goes_again_as_text_and_is_counted_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(dir.path(), VALUES_DDL);
    // `load_with` checks that the bytes counted equal the bytes of the text copy alone.
    let loaded = load_with(&cluster, &TenantFilter::All, true)
        .await
        .expect("loaded as text");
    assert!(!loaded.binary, "the refused binary copy was rolled back");
    assert_eq!(loaded.rows, 4);
    assert_eq!(rows_as_text(&cluster, "dst"), rows_as_text(&cluster, "src"));
}

#[tokio::test]
async fn rows_the_target_refuses_fail_the_load_and_leave_its_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(dir.path(), VALUES_DDL);
    load(&cluster, &TenantFilter::All)
        .await
        .expect("first load");
    let before = rows_as_text(&cluster, "dst");
    cluster
        .psql(
            "dst",
            "ALTER TABLE app.t ADD CONSTRAINT no_4 CHECK (id <> 4) NOT VALID; DELETE FROM app.t WHERE id = 4",
        )
        .expect("constraint on the target");
    cluster
        .psql("src", "UPDATE app.t SET note = 'new'")
        .expect("change the source");
    // The binary copy fails on the CHECK, is rolled back, goes again as text and fails
    // the same way: the error names the constraint, and the target keeps what it had.
    let err = load(&cluster, &TenantFilter::All)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("no_4"), "{err}");
    assert_eq!(ids(&cluster, "dst"), "1,2,3");
    let kept = rows_as_text(&cluster, "dst");
    assert!(
        !kept.contains(",new,"),
        "nothing of the failed load: {kept}"
    );
    cluster
        .psql("dst", "ALTER TABLE app.t DROP CONSTRAINT no_4")
        .expect("drop constraint");
    load(&cluster, &TenantFilter::All)
        .await
        .expect("loads once allowed");
    assert_eq!(ids(&cluster, "dst"), "1,2,3,4");
    let reloaded = rows_as_text(&cluster, "dst");
    assert_ne!(reloaded, before);
    assert_eq!(reloaded, rows_as_text(&cluster, "src"));
}

/// Loads each of `parts` of `info` from `copier` into `target` in a transaction of its own,
/// as the snapshot's lanes do (into a table holding none of `include`'s rows); the rows
/// each loaded.
async fn load_parts(
    copier: &tokio_postgres::Client,
    target: &mut tokio_postgres::Client,
    info: &crate::change::TableInfo,
    include: &TenantFilter,
    parts: &[crate::cdc::table_parts::TablePart],
) -> Vec<u64> {
    let streamed = std::sync::atomic::AtomicU64::new(0);
    let mut rows = Vec::new();
    for part in parts {
        let open_source = move |binary| {
            let sql = copy_out_sql(info, &tid(), include, Some(part), binary);
            async move { copier.copy_out(&sql).await }
        };
        let loaded = load_table(
            target,
            info,
            &tid(),
            include,
            false,
            None,
            open_source,
            &streamed,
        )
        .await
        .expect("part loaded");
        rows.push(loaded.rows);
    }
    rows
}

/// A table loaded in parts (ranges of pages, each in a transaction of its own, into a
/// target table holding none of the job's tenants' rows) arrives whole, each row once;
/// rows on pages the table grew by after its size was read are in the open-ended last
/// part. Whether the target holds the tenants' rows is what decides parts.
#[tokio::test]
async fn a_table_loaded_in_parts_arrives_whole() {
    use crate::cdc::table_parts::{split_pages, table_pages, TablePart, MIN_PART_PAGES};
    use crate::sinks::pg_apply::snapshot::holds_tenant_rows;

    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(
        dir.path(),
        "CREATE SCHEMA app;
         CREATE TABLE app.t (tenant_id int NOT NULL, id bigint PRIMARY KEY, pad text);
         INSERT INTO app.t SELECT g % 3, g, repeat('x', 200) FROM generate_series(1, 110000) g;",
    );
    cluster
        .psql("dst", "CREATE SCHEMA app; CREATE TABLE app.t (tenant_id int NOT NULL, id bigint PRIMARY KEY, pad text);
                      INSERT INTO app.t VALUES (2, 2, 'other tenant');")
        .expect("target rows");
    let (copier, info) = source_table(&cluster).await;
    let pages = table_pages(&copier, &info).await.expect("pages");
    assert!(
        pages >= 3 * MIN_PART_PAGES,
        "big enough for three parts: {pages}"
    );
    let parts: Vec<TablePart> = split_pages(pages, 3)
        .into_iter()
        .map(TablePart::Pages)
        .collect();
    assert_eq!(parts.len(), 3);
    // Rows the table gains after its size was read land on new pages: the last part's.
    cluster
        .psql("src", "INSERT INTO app.t SELECT g % 3, g, repeat('y', 200) FROM generate_series(110001, 115000) g")
        .expect("grow the source");

    let include = TenantFilter::Only(["0".to_string(), "1".to_string()].into_iter().collect());
    let mut target = connect(&cluster.dsn("dst")).await.expect("connect target");
    crate::sinks::pg_apply::store::migrate(&target)
        .await
        .expect("bookkeeping tables");
    let held = |tenant: &str| {
        let only = TenantFilter::Only([tenant.to_string()].into_iter().collect());
        let (target, info) = (&target, &info);
        async move {
            holds_tenant_rows(target, info, &tid(), &only)
                .await
                .expect("looked")
        }
    };
    assert!(held("2").await, "tenant 2 has a row");
    assert!(!held("1").await, "tenant 1 has none");
    assert!(
        !holds_tenant_rows(&target, &info, &tid(), &include)
            .await
            .expect("looked"),
        "none of tenants 0 and 1"
    );
    let loaded = load_parts(&copier, &mut target, &info, &include, &parts).await;
    assert!(
        loaded.iter().all(|&rows| rows > 0),
        "{loaded:?} of {parts:?}"
    );
    let rows: u64 = loaded.iter().sum();
    // Ids 1..=115,000 with id % 3 in (0, 1): 38,333 + 38,334.
    assert_eq!(rows, 76_667, "tenants 0 and 1, each row once");
    let of_tenants = "SELECT count(*), count(DISTINCT id), md5(string_agg(id || pad, ',' ORDER BY id)) FROM app.t WHERE tenant_id IN (0, 1)";
    assert_eq!(
        cluster.psql("dst", of_tenants).expect("target"),
        cluster.psql("src", of_tenants).expect("source")
    );
    assert_eq!(
        cluster
            .psql(
                "dst",
                "SELECT pad FROM app.t WHERE tenant_id = 2 ORDER BY id"
            )
            .expect("other")
            .trim(),
        "other tenant",
        "another tenant's rows stay"
    );
}

/// A partitioned table's initial copy splits into groups of its leaf partitions (nested
/// ones included), each group read whole in one part and loaded in a transaction of its
/// own; together they bring every row of the job's tenants once.
#[tokio::test]
async fn a_partitioned_table_loads_in_groups_of_its_partitions() {
    use crate::cdc::table_parts::{plan_parts, TablePart, MIN_PART_PAGES};

    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(
        dir.path(),
        "CREATE SCHEMA app;
         CREATE TABLE app.t (tenant_id int NOT NULL, id bigint NOT NULL, pad text,
             PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id);
         CREATE TABLE app.t_0 PARTITION OF app.t FOR VALUES IN (0);
         CREATE TABLE app.t_1 PARTITION OF app.t FOR VALUES IN (1) PARTITION BY RANGE (id);
         CREATE TABLE app.t_1a PARTITION OF app.t_1 FOR VALUES FROM (MINVALUE) TO (60000);
         CREATE TABLE app.t_1b PARTITION OF app.t_1 FOR VALUES FROM (60000) TO (MAXVALUE);
         CREATE TABLE app.t_2 PARTITION OF app.t FOR VALUES IN (2);
         CREATE TABLE app.t_empty PARTITION OF app.t FOR VALUES IN (3);
         INSERT INTO app.t SELECT g % 3, g, repeat('x', 200) FROM generate_series(1, 110000) g;",
    );
    cluster
        .psql("dst", "CREATE SCHEMA app; CREATE TABLE app.t (tenant_id int NOT NULL, id bigint NOT NULL, pad text,
                      PRIMARY KEY (tenant_id, id));")
        .expect("target table");
    let (copier, info) = source_table(&cluster).await;
    let (pages, parts) = plan_parts(&copier, &info, 3).await.expect("parts");
    assert!(
        pages >= 3 * MIN_PART_PAGES,
        "big enough for three parts: {pages}"
    );
    assert_eq!(parts.len(), 3, "{parts:?}");
    let mut leaves: Vec<String> = parts
        .iter()
        .flat_map(|part| match part {
            TablePart::Partitions(leaves) => leaves.iter().map(|l| l.name.clone()).collect(),
            TablePart::Pages(_) => Vec::new(),
        })
        .collect();
    leaves.sort();
    assert_eq!(leaves, ["t_0", "t_1a", "t_1b", "t_2", "t_empty"]);

    let include = TenantFilter::Only(["1".to_string(), "2".to_string()].into_iter().collect());
    let mut target = connect(&cluster.dsn("dst")).await.expect("connect target");
    let rows: u64 = load_parts(&copier, &mut target, &info, &include, &parts)
        .await
        .iter()
        .sum();
    assert_eq!(rows, 73_334, "tenants 1 and 2 (36,667 each), each row once");
    let of_tenants = "SELECT count(*), count(DISTINCT id), md5(string_agg(id || pad, ',' ORDER BY id)) FROM app.t WHERE tenant_id IN (1, 2)";
    assert_eq!(
        cluster.psql("dst", of_tenants).expect("target"),
        cluster.psql("src", of_tenants).expect("source")
    );
    assert_eq!(
        cluster
            .psql("dst", "SELECT count(*) FROM app.t WHERE tenant_id = 0")
            .expect("other"),
        "0",
        "no other tenant's rows"
    );
}

/// The tenant condition on an integer or UUID column compares values, so an index on the
/// column serves it, and keeps the same rows as comparing text forms, whatever the ids.
#[tokio::test]
async fn a_typed_tenant_condition_keeps_the_same_rows_and_uses_the_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = cluster(
        dir.path(),
        "CREATE SCHEMA app;
         CREATE TABLE app.t (tenant_id int NOT NULL, id bigint NOT NULL, u uuid, PRIMARY KEY (tenant_id, id));
         INSERT INTO app.t SELECT g % 1000 - 5, g, md5((g % 7)::text)::uuid FROM generate_series(1, 100000) g;
         CREATE INDEX ON app.t (u);
         ANALYZE app.t;",
    );
    let (copier, info) = source_table(&cluster).await;
    let ids = |list: &[&str]| TenantFilter::Only(list.iter().map(|s| s.to_string()).collect());
    let count = |condition: String| {
        let copier = &copier;
        async move {
            let row = copier
                .query_one(
                    &format!("SELECT count(*) FROM app.t WHERE {condition}"),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("{condition}: {e}"));
            row.get::<_, i64>(0)
        }
    };
    let u3 = cluster
        .psql("src", "SELECT md5('3')::uuid")
        .expect("a uuid")
        .trim()
        .to_string();
    for (column, list) in [
        (
            "tenant_id",
            vec![
                "7",
                "03",
                "+3",
                " 3",
                "3.0",
                "-0",
                "0",
                "-5",
                "99999999999",
                "abc",
            ],
        ),
        ("tenant_id", vec!["x"]),
        ("u", vec![u3.as_str(), &u3.to_uppercase(), "{abc}", "3"]),
    ] {
        let include = ids(&list);
        let column = TenantKey::Column(column.to_string());
        let typed = include.condition_on(&info, &column).expect("a condition");
        let as_text = include.sql_condition(&column).expect("a condition");
        assert_eq!(
            count(typed.clone()).await,
            count(as_text).await,
            "{column:?} {list:?}: {typed}"
        );
    }
    let plan = |condition: String| {
        let copier = &copier;
        async move {
            let rows = copier
                .query(
                    &format!("EXPLAIN SELECT * FROM app.t WHERE {condition}"),
                    &[],
                )
                .await
                .expect("explain");
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let one = ids(&["42"]);
    let typed = plan(one.condition_on(&info, &tid()).expect("condition")).await;
    assert!(
        typed.contains("Index"),
        "served by the primary key: {typed}"
    );
    let as_text = plan(one.sql_condition(&tid()).expect("condition")).await;
    assert!(
        !as_text.contains("Index"),
        "the text form reads every row: {as_text}"
    );
}
