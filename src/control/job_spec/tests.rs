//! Unit tests of the parent module.
use super::*;
use proptest::prelude::*;
use std::path::Path;

const TENANTS_3_7: &str = include_str!("../../../dataflows/tenants_3_7.toml");
const ALL_TENANTS: &str = include_str!("../../../dataflows/all_tenants.toml");
const DEMO: &str = include_str!("../../../dataflows/demo.toml");

const VALID: &str = super::MINIMAL_SPEC;

/// `VALID` with `from` replaced by `to` (which must occur exactly once).
fn valid_with(from: &str, to: &str) -> String {
    assert_eq!(VALID.matches(from).count(), 1, "{from}");
    VALID.replace(from, to)
}

#[track_caller]
fn expect_err(doc: &str, field: &str) -> JobSpecError {
    let err = JobSpec::from_toml_str(doc).expect_err("document should be rejected");
    assert_eq!(err.field(), field, "{err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("job spec: {field}: ")),
        "Display should name {field}: {shown}"
    );
    err
}

#[test]
fn example_tenants_3_7() {
    let spec = JobSpec::from_toml_str(TENANTS_3_7).unwrap();
    assert_eq!(spec.name, "tenants-3-7");
    assert_eq!(spec.tables.len(), 2);
    assert_eq!(spec.sinks.len(), 1);
    assert!(spec.includes_tenant("3"));
    assert!(spec.includes_tenant("7"));
    assert!(!spec.includes_tenant("4"));
    assert_eq!(
        spec.tenants.include,
        TenantFilter::Only(["3".to_owned(), "7".to_owned()].into())
    );
    let SinkSpec::Postgres(pg) = &spec.sinks[0] else {
        panic!("the first sink is a postgres sink")
    };
    assert_eq!(pg.batch_max_rows, DEFAULT_BATCH_MAX_ROWS);
}

#[test]
fn example_all_tenants() {
    let spec = JobSpec::from_toml_str(ALL_TENANTS).unwrap();
    assert_eq!(spec.tenants.include, TenantFilter::All);
    assert!(spec.includes_tenant("anything"));
    let overridden = spec
        .tables
        .iter()
        .filter(|t| t.tenant_column.is_some())
        .count();
    assert_eq!(overridden, 1);
    assert_eq!(
        spec.tenant_key_for("public", "invoices"),
        Some(TenantKey::Column("org_id".to_string()))
    );
    assert_eq!(
        spec.tenant_key_for("public", "customers"),
        Some(TenantKey::Column(DEFAULT_TENANT_COLUMN.to_string()))
    );
    assert_eq!(spec.tenant_key_for("public", "nope"), None);
}

#[test]
fn example_demo() {
    let spec = JobSpec::from_toml_str(DEMO).unwrap();
    let names: Vec<_> = spec.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["app.accounts", "app.orders", "app.events"]);
    let TenantFilter::Only(ids) = &spec.tenants.include else {
        panic!("demo lists tenants");
    };
    assert_eq!(ids.len(), 5);
    assert!(ids
        .iter()
        .all(|id| (1..=24).contains(&id.parse::<u32>().unwrap())));
    assert!(spec.source.dsn.expose().contains("localhost"));
    let SinkSpec::Postgres(pg) = &spec.sinks[0] else {
        panic!("the first sink is a postgres sink")
    };
    assert!(pg.dsn.expose().contains("localhost"));
}

#[test]
fn examples_round_trip_through_toml_and_json() {
    for doc in [TENANTS_3_7, ALL_TENANTS, DEMO, VALID] {
        let spec = JobSpec::from_toml_str(doc).unwrap();
        let toml = spec.to_toml_string();
        assert_eq!(JobSpec::from_toml_str(&toml).unwrap(), spec, "{toml}");
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec, "{json}");
    }
}

#[test]
fn defaults_apply() {
    let spec = JobSpec::from_toml_str(VALID).unwrap();
    assert_eq!(spec.tenants.column, DEFAULT_TENANT_COLUMN);
    assert_eq!(spec.tables[0].tenant_column, None);
    assert_eq!(spec.tables[0].schema(), "public");
    assert_eq!(spec.tables[0].table(), "orders");
    assert_eq!(
        spec.tenant_key_for("public", "orders"),
        Some(TenantKey::Column("tenant_id".to_string()))
    );
    let SinkSpec::Postgres(pg) = &spec.sinks[0] else {
        panic!("the first sink is a postgres sink")
    };
    assert_eq!(pg.batch_max_rows, DEFAULT_BATCH_MAX_ROWS);
    assert_eq!(spec.sinks[0].kind(), "postgres");
}

#[test]
fn json_form_parses() {
    let json = r#"{
        "name": "t",
        "source": {"dsn": "postgresql://u:pw@h/db", "publication": "p", "slot": "s"},
        "tenants": {"column": "org", "include": ["acme", 12]},
        "tables": [{"name": "s.t", "tenant_column": "org_id"}],
        "sinks": [{"batch_max_rows": 10, "dsn": "host=h", "kind": "postgres"}]
    }"#;
    let spec = JobSpec::from_json_str(json).unwrap();
    assert!(spec.includes_tenant("acme"));
    assert!(spec.includes_tenant("12"));
    assert_eq!(
        spec.tenant_key_for("s", "t"),
        Some(TenantKey::Column("org_id".to_string()))
    );
    let SinkSpec::Postgres(pg) = &spec.sinks[0] else {
        panic!("the first sink is a postgres sink")
    };
    assert_eq!(pg.batch_max_rows, 10);
}

#[test]
fn table_patterns_parse_and_bad_ones_name_the_field() {
    let table = "name = \"public.orders\"\n";
    let spec = JobSpec::from_toml_str(&valid_with(
        table,
        "name = \"public.order_*\"\nexclude = [\"order_log\", \"public.order_?x\"]\n",
    ))
    .unwrap();
    assert!(spec.has_table_patterns() && spec.tables[0].is_pattern());
    assert_eq!(spec.tables[0].exclude, ["order_log", "public.order_?x"]);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
    assert!(!JobSpec::from_toml_str(VALID).unwrap().has_table_patterns());

    let e = expect_err(
        &valid_with(table, "name = \"public.orders\"\nexclude = [\"x\"]\n"),
        "tables[0].exclude",
    );
    assert!(e.to_string().contains("`public.*`"), "{e}");
    expect_err(
        &valid_with(table, "name = \"pu-b*.orders\"\n"),
        "tables[0].name",
    );
    // A schema pattern is a pattern too.
    let spec = JobSpec::from_toml_str(&valid_with(table, "name = \"app_*.orders\"\n")).unwrap();
    assert!(spec.tables[0].is_pattern());
    expect_err(
        &valid_with(table, "name = \"public.or-*\"\n"),
        "tables[0].name",
    );
    expect_err(
        &valid_with(table, "name = \"public.*\"\nexclude = [\"app.x\"]\n"),
        "tables[0].exclude[0]",
    );
}

#[test]
fn one_tenant_tables_name_their_tenant_or_take_it_from_the_schema() {
    let table = "name = \"public.orders\"\n";
    // A table named outright, one tenant's whole: an integer or a string id.
    let spec = JobSpec::from_toml_str(&valid_with(
        table,
        "name = \"tenant_7.orders\"\ntenant = 7\n",
    ))
    .unwrap();
    assert_eq!(
        spec.tenant_key_for("tenant_7", "orders"),
        Some(TenantKey::Table("7".into()))
    );
    let toml = spec.to_toml_string();
    assert!(toml.contains("tenant = 7"), "{toml}");
    assert_eq!(JobSpec::from_toml_str(&toml).unwrap(), spec);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
    // A pattern taking each table's tenant from its schema.
    let spec = JobSpec::from_toml_str(&valid_with(
        table,
        "name = \"tenant_*.orders\"\ntenant_from = \"schema\"\n",
    ))
    .unwrap();
    assert_eq!(spec.tables[0].tenant_from, Some(TenantFrom::Schema));
    assert_eq!(
        JobSpec::from_toml_str(&spec.to_toml_string()).unwrap(),
        spec
    );

    let not_carried = expect_err(
        &valid_with(table, "name = \"tenant_5.orders\"\ntenant = \"5\"\n"),
        "tables[0].tenant",
    );
    assert!(
        not_carried.to_string().contains("not in `tenants.include`"),
        "{not_carried}"
    );
    expect_err(
        &valid_with(table, "name = \"t7.orders\"\ntenant = \"\"\n"),
        "tables[0].tenant",
    );
    expect_err(
        &valid_with(
            table,
            "name = \"t7.orders\"\ntenant = 7\ntenant_column = \"x\"\n",
        ),
        "tables[0].tenant",
    );
    expect_err(
        &valid_with(table, "name = \"t*.orders\"\ntenant = 7\n"),
        "tables[0].tenant",
    );
    for name in ["public.*", "t*_*.orders", "t?*.orders", "tenant_7.orders"] {
        let e = expect_err(
            &valid_with(
                table,
                &format!("name = \"{name}\"\ntenant_from = \"schema\"\n"),
            ),
            "tables[0].tenant_from",
        );
        assert!(e.to_string().contains("one `*`"), "{name}: {e}");
    }
    expect_err(
        &valid_with(
            table,
            "name = \"t_*.orders\"\ntenant_from = \"schema\"\ntenant_column = \"x\"\n",
        ),
        "tables[0].tenant_from",
    );
    expect_err(
        &valid_with(table, "name = \"t_*.orders\"\ntenant_from = \"table\"\n"),
        "tables[0].tenant_from",
    );
    // A removed tenant's own tables are emptied with `removed = "delete"`.
    JobSpec::from_toml_str(
        &valid_with(table, "name = \"t_*.orders\"\ntenant_from = \"schema\"\n")
            .replace("include = [3, 7]", "include = [3, 7]\nremoved = \"delete\""),
    )
    .expect("delete goes with one-tenant tables");
}

#[test]
fn missing_source_dsn() {
    let err = expect_err(
        &valid_with(
            "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"\n",
            "",
        ),
        "source.dsn",
    );
    assert!(err.to_string().contains("missing field `dsn`"), "{err}");
    assert!(matches!(err, JobSpecError::Parse { .. }));
}

#[test]
fn missing_sink_dsn_and_kind_and_top_level_fields() {
    expect_err(
        &valid_with(
            "dsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
            "",
        ),
        "sinks[0].dsn",
    );
    expect_err(&valid_with("kind = \"postgres\"\n", ""), "sinks[0].kind");
    expect_err(&valid_with("name = \"t\"\n", ""), "name");
    expect_err(&valid_with("include = [3, 7]\n", ""), "tenants.include");
}

#[test]
fn empty_dsn() {
    let err = expect_err(
        &valid_with(
            "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
            "dsn = \"\"",
        ),
        "source.dsn",
    );
    assert_eq!(err.to_string(), "job spec: source.dsn: must not be empty");
    expect_err(
        &valid_with("host=127.0.0.1 port=5433", "not a dsn"),
        "sinks[0].dsn",
    );
}

#[test]
fn tls_settings_no_connection_could_meet_are_named() {
    let err = expect_err(
        &valid_with(
            "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
            "dsn = \"host=h password=hunter2 sslmode=verify\"",
        ),
        "source.dsn",
    );
    assert_eq!(
        err.to_string(),
        "job spec: source.dsn: sslmode `verify` is not one of disable, allow, prefer, require, verify-ca, verify-full"
    );
    let err = expect_err(
        &valid_with(
            "host=127.0.0.1 port=5433",
            "host=127.0.0.1 port=5433 sslcert=/etc/c.pem",
        ),
        "sinks[0].dsn",
    );
    assert!(
        err.to_string()
            .contains("`sslcert` is given without `sslkey`"),
        "{err}"
    );
    // What libpq takes, the spec takes.
    let doc = valid_with(
        "host=127.0.0.1 port=5433",
        "host=127.0.0.1 port=5433 sslmode=verify-full sslrootcert=system",
    );
    assert!(JobSpec::from_toml_str(&doc).is_ok());
}

#[test]
fn unknown_sink_kind() {
    let err = expect_err(
        &valid_with("kind = \"postgres\"", "kind = \"kafka\""),
        "sinks[0].kind",
    );
    let shown = err.to_string();
    assert!(
        shown.contains("kafka") && shown.contains("postgres"),
        "{shown}"
    );
    // Order of keys does not matter, and JSON reports the same path.
    let json = r#"{"name":"t","source":{"dsn":"host=h","publication":"p","slot":"s"},
        "tenants":{"include":"all"},"tables":[{"name":"a.b"}],
        "sinks":[{"kind":"postgres","dsn":"host=h"},{"dsn":"host=h","kind":"kafka"}]}"#;
    let err = JobSpec::from_json_str(json).unwrap_err();
    assert_eq!(err.field(), "sinks[1].kind", "{err}");
}

#[test]
fn wrong_types() {
    let doc = valid_with(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nbatch_max_rows = \"many\"",
    );
    let err = expect_err(&doc, "sinks[0].batch_max_rows");
    assert!(err.to_string().contains("many"), "{err}");
    expect_err(&valid_with("name = \"t\"", "name = 5"), "name");
    expect_err(
        &valid_with("publication = \"pub_t\"", "publication = true"),
        "source.publication",
    );
    expect_err(
        &valid_with("include = [3, 7]", "include = [3, true]"),
        "tenants.include[1]",
    );
    expect_err(
        &valid_with("include = [3, 7]", "include = \"ALL\""),
        "tenants.include",
    );
    expect_err(
        &valid_with("include = [3, 7]", "include = 3"),
        "tenants.include",
    );
    let doc = valid_with("[[tables]]\nname = \"public.orders\"\n", "")
        .replace("name = \"t\"\n", "name = \"t\"\ntables = \"x\"\n");
    expect_err(&doc, "tables");
    let err = JobSpec::from_json_str(r#"{"name": null}"#).unwrap_err();
    assert_eq!(err.field(), "name", "{err}");
}

#[test]
fn negative_batch_max_rows() {
    let doc = valid_with(
        "kind = \"postgres\"",
        "kind = \"postgres\"\nbatch_max_rows = -1",
    );
    expect_err(&doc, "sinks[0].batch_max_rows");
}

#[test]
fn max_in_flight_is_checked_and_only_for_postgres_sinks() {
    let with = |line: &str| {
        valid_with(
            "kind = \"postgres\"",
            &format!("kind = \"postgres\"\n{line}"),
        )
    };
    let spec = JobSpec::from_toml_str(&with("max_in_flight = 4")).expect("4 in flight");
    assert_eq!(spec.sinks[0].max_in_flight(), MaxInFlight::Fixed(4));
    let spec = JobSpec::from_toml_str(&with("max_in_flight = \"auto\"")).expect("auto");
    assert_eq!(spec.sinks[0].max_in_flight(), MaxInFlight::Auto);
    let spec = JobSpec::from_toml_str(VALID).expect("valid");
    assert_eq!(
        spec.sinks[0].max_in_flight(),
        MaxInFlight::Auto,
        "the default"
    );
    for bad in ["max_in_flight = 0", "max_in_flight = 65"] {
        let err = expect_err(&with(bad), "sinks[0].max_in_flight");
        assert!(err.to_string().contains("between 1 and 64"), "{err}");
    }
    for bad in [
        "max_in_flight = -1",
        "max_in_flight = \"many\"",
        "max_in_flight = 2.5",
    ] {
        let err = expect_err(&with(bad), "sinks[0].max_in_flight");
        assert!(err.to_string().contains("\"auto\""), "{bad}: {err}");
    }
    let nats =
        format!("{VALID}\n[[sinks]]\nkind = \"nats\"\nurl = \"nats://h:1\"\nmax_in_flight = 2\n");
    let err = JobSpec::from_toml_str(&nats).expect_err("max_in_flight belongs to postgres sinks");
    assert!(err.to_string().contains("max_in_flight"), "{err}");
}

#[test]
fn snapshot_parallel_tables_is_checked() {
    let with = |line: &str| valid_with("slot = \"slot_t\"", &format!("slot = \"slot_t\"\n{line}"));
    let spec = JobSpec::from_toml_str(&with("snapshot_parallel_tables = 3")).expect("3 at once");
    assert_eq!(spec.source.snapshot_parallel_tables, Some(3));
    let spec = JobSpec::from_toml_str(VALID).expect("valid");
    assert_eq!(spec.source.snapshot_parallel_tables, None, "the default");
    for bad in [
        "snapshot_parallel_tables = 0",
        "snapshot_parallel_tables = 17",
    ] {
        let err = expect_err(&with(bad), "source.snapshot_parallel_tables");
        assert!(err.to_string().contains("between 1 and 16"), "{err}");
    }
    for bad in [
        "snapshot_parallel_tables = -1",
        "snapshot_parallel_tables = \"many\"",
    ] {
        expect_err(&with(bad), "source.snapshot_parallel_tables");
    }
}

#[test]
fn snapshot_split_tables_is_checked_and_round_trips() {
    let with = |line: &str| valid_with("slot = \"slot_t\"", &format!("slot = \"slot_t\"\n{line}"));
    let spec = JobSpec::from_toml_str(VALID).expect("valid");
    assert!(spec.source.snapshot_split_tables, "the default");
    let off = JobSpec::from_toml_str(&with("snapshot_split_tables = false")).expect("off");
    assert!(!off.source.snapshot_split_tables);
    let json = serde_json::to_string(&off).expect("to JSON");
    assert_eq!(JobSpec::from_json_str(&json).expect("from JSON"), off);
    let toml_text = toml::to_string(&off).expect("to TOML");
    assert_eq!(JobSpec::from_toml_str(&toml_text).expect("from TOML"), off);
    assert!(
        !serde_json::to_string(&spec)
            .expect("to JSON")
            .contains("snapshot_split_tables"),
        "the default is left out"
    );
    for bad in [
        "snapshot_split_tables = \"no\"",
        "snapshot_split_tables = 1",
    ] {
        expect_err(&with(bad), "source.snapshot_split_tables");
    }
}

#[test]
fn row_memory_mib_is_checked() {
    let spec = JobSpec::from_toml_str(VALID).expect("valid");
    assert_eq!(
        spec.history.row_memory_mib, DEFAULT_ROW_MEMORY_MIB,
        "the default"
    );
    assert_eq!(spec.history.row_memory_bytes(), 128 << 20);
    let with = |line: &str| format!("{VALID}\n[history]\n{line}\n");
    let spec = JobSpec::from_toml_str(&with("row_memory_mib = 1")).expect("1");
    assert_eq!(spec.history.row_memory_bytes(), 1 << 20);
    let json = serde_json::to_string(&spec).expect("to JSON");
    assert_eq!(JobSpec::from_json_str(&json).expect("from JSON"), spec);
    for bad in ["row_memory_mib = 0", "row_memory_mib = 1048577"] {
        let err = expect_err(&with(bad), "history.row_memory_mib");
        assert!(err.to_string().contains("between 1 and 1048576"), "{err}");
    }
    for bad in ["row_memory_mib = -1", "row_memory_mib = \"lots\""] {
        expect_err(&with(bad), "history.row_memory_mib");
    }
}

#[test]
fn receive_buffer_kib_is_checked() {
    use crate::cdc::transport::ReceiveBuffer;
    let with = |line: &str| valid_with("slot = \"slot_t\"", &format!("slot = \"slot_t\"\n{line}"));
    let spec = JobSpec::from_toml_str(VALID).expect("valid");
    assert_eq!(
        spec.source.receive_buffer(),
        ReceiveBuffer::Auto,
        "the default"
    );
    let spec = JobSpec::from_toml_str(&with("receive_buffer_kib = 0")).expect("0");
    assert_eq!(spec.source.receive_buffer(), ReceiveBuffer::System);
    let spec = JobSpec::from_toml_str(&with("receive_buffer_kib = 256")).expect("256");
    assert_eq!(
        spec.source.receive_buffer(),
        ReceiveBuffer::Bytes(256 * 1024)
    );
    let json = serde_json::to_string(&spec).expect("to JSON");
    assert_eq!(JobSpec::from_json_str(&json).expect("from JSON"), spec);
    for bad in ["receive_buffer_kib = 8", "receive_buffer_kib = 65537"] {
        let err = expect_err(&with(bad), "source.receive_buffer_kib");
        assert!(
            err.to_string()
                .contains("0 (the system's autotuning) or between 16 and 65536"),
            "{err}"
        );
    }
    for bad in ["receive_buffer_kib = -1", "receive_buffer_kib = \"big\""] {
        expect_err(&with(bad), "source.receive_buffer_kib");
    }
}

#[test]
fn unknown_keys() {
    let err = expect_err(
        &valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\npasswd = \"x\""),
        "source.passwd",
    );
    assert!(
        err.to_string().contains("source.passwd: unknown field"),
        "{err}"
    );
    expect_err(
        &valid_with("name = \"t\"", "name = \"t\"\nverbose = true"),
        "verbose",
    );
    expect_err(
        &valid_with("slot = \"slot_t\"", "slot = \"slot_t\"\nsource = 1"),
        "source.source",
    );
    expect_err(
        &valid_with("kind = \"postgres\"", "kind = \"postgres\"\nbatch = 3"),
        "sinks[0].batch",
    );
    expect_err(
        &valid_with(
            "name = \"public.orders\"",
            "name = \"public.orders\"\nwhere = \"x\"",
        ),
        "tables[0].where",
    );
    let json = r#"{"name":"t","source":{"dsn":"host=h","publication":"p","slot":"s","extra":1},
        "tenants":{"include":"all"},"tables":[{"name":"a.b"}],"sinks":[{"kind":"postgres","dsn":"host=h"}]}"#;
    let err = JobSpec::from_json_str(json).unwrap_err();
    assert_eq!(err.field(), "source.extra", "{err}");
}

#[test]
fn bad_names() {
    for slot in ["Slot", "", "has-dash", "a.b", &"s".repeat(64)] {
        expect_err(
            &valid_with("slot = \"slot_t\"", &format!("slot = \"{slot}\"")),
            "source.slot",
        );
    }
    assert!(JobSpec::from_toml_str(&valid_with("slot = \"slot_t\"", "slot = \"9_slot\"")).is_ok());
    for publication in ["9pub", "Pub", "p-q", ""] {
        expect_err(
            &valid_with(
                "publication = \"pub_t\"",
                &format!("publication = \"{publication}\""),
            ),
            "source.publication",
        );
    }
    for name in ["T", "1abc", "-a", "", "a b", &"a".repeat(49)] {
        expect_err(
            &valid_with("name = \"t\"", &format!("name = \"{name}\"")),
            "name",
        );
    }
    assert!(JobSpec::from_toml_str(&valid_with(
        "name = \"t\"",
        &format!("name = \"{}\"", "a".repeat(48))
    ))
    .is_ok());
    for table in [
        "orders",
        "a.b.c",
        "\\\"public\\\".orders",
        "public. orders",
        "public.",
        ".x",
        "1s.t",
    ] {
        expect_err(
            &valid_with("name = \"public.orders\"", &format!("name = \"{table}\"")),
            "tables[0].name",
        );
    }
    assert!(JobSpec::from_toml_str(&valid_with(
        "name = \"public.orders\"",
        "name = \"App.Orders_2\""
    ))
    .is_ok());
    expect_err(
        &valid_with("include = [3, 7]", "column = \"org-id\"\ninclude = [3, 7]"),
        "tenants.column",
    );
    // Columns keep their case, as ORMs create them (`"organizationId"`).
    let spec = JobSpec::from_toml_str(&valid_with(
        "include = [3, 7]",
        "column = \"organizationId\"\ninclude = [3, 7]",
    ))
    .expect("a mixed-case column");
    assert_eq!(spec.tenants.column, "organizationId");
    expect_err(
        &valid_with(
            "name = \"public.orders\"",
            "name = \"public.orders\"\ntenant_column = \"a b\"",
        ),
        "tables[0].tenant_column",
    );
}

#[test]
fn duplicate_tables() {
    let doc = valid_with(
        "[[tables]]\nname = \"public.orders\"",
        "[[tables]]\nname = \"public.orders\"\n[[tables]]\nname = \"public.items\"\n[[tables]]\nname = \"public.orders\"",
    );
    let err = expect_err(&doc, "tables[2].name");
    assert!(err.to_string().contains("duplicate"), "{err}");
    assert!(matches!(err, JobSpecError::Invalid { .. }));
}

#[test]
fn duplicate_tenant_ids() {
    for include in ["[3, 3]", "[3, \"3\"]", "[\"a\", \"b\", \"a\"]"] {
        let err = expect_err(
            &valid_with("include = [3, 7]", &format!("include = {include}")),
            "tenants.include",
        );
        assert!(err.to_string().contains("duplicate tenant id"), "{err}");
    }
}

#[test]
fn empty_include_and_empty_lists() {
    let err = expect_err(
        &valid_with("include = [3, 7]", "include = []"),
        "tenants.include",
    );
    assert!(matches!(err, JobSpecError::Invalid { .. }));
    expect_err(
        &valid_with("include = [3, 7]", "include = [\"\"]"),
        "tenants.include",
    );
    let doc = valid_with("[[tables]]\nname = \"public.orders\"\n", "")
        .replace("name = \"t\"\n", "name = \"t\"\ntables = []\n");
    expect_err(&doc, "tables");
    let doc = valid_with(
        "[[sinks]]\nkind = \"postgres\"\ndsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"\n",
        "",
    )
    .replace("name = \"t\"\n", "name = \"t\"\nsinks = []\n");
    expect_err(&doc, "sinks");
}

#[test]
fn batch_max_rows_range() {
    for bad in ["0", "1000001"] {
        let doc = valid_with(
            "kind = \"postgres\"",
            &format!("kind = \"postgres\"\nbatch_max_rows = {bad}"),
        );
        let err = expect_err(&doc, "sinks[0].batch_max_rows");
        assert!(matches!(err, JobSpecError::Invalid { .. }));
    }
    for good in ["1", "1000000"] {
        let doc = valid_with(
            "kind = \"postgres\"",
            &format!("kind = \"postgres\"\nbatch_max_rows = {good}"),
        );
        assert!(JobSpec::from_toml_str(&doc).is_ok(), "{good}");
    }
}

#[test]
fn syntax_errors_concern_the_document() {
    let err = JobSpec::from_toml_str("name = \n").unwrap_err();
    assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    let err = JobSpec::from_json_str("[]").unwrap_err();
    assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
    let err = JobSpec::from_json_str(&format!(
        "{} x",
        serde_json::to_string(&JobSpec::from_toml_str(VALID).unwrap()).unwrap()
    ))
    .unwrap_err();
    assert_eq!(err.field(), DOCUMENT_PATH, "{err}");
}

#[test]
fn debug_of_spec_hides_passwords() {
    let doc = valid_with(
        "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
        "dsn = \"host=h password='top secret' dbname=app\"",
    );
    let spec = JobSpec::from_toml_str(&doc).unwrap();
    assert!(!format!("{spec:?}").contains("secret"));
    assert!(spec.to_toml_string().contains("top secret"));
    let doc = valid_with(
        "dsn = \"host=127.0.0.1 port=5432 user=postgres dbname=app\"",
        "dsn = \"host=h password='hunter2\"",
    );
    let err = JobSpec::from_toml_str(&doc).unwrap_err();
    assert_eq!(err.field(), "source.dsn");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn toml_output_writes_integer_ids_as_integers() {
    let mut spec = JobSpec::from_toml_str(VALID).unwrap();
    spec.tenants.include =
        TenantFilter::Only(["7".into(), "acme".into(), "007".into(), "-2".into()].into());
    let toml = spec.to_toml_string();
    assert!(
        toml.contains(r#"include = [-2, "007", 7, "acme"]"#),
        "{toml}"
    );
    assert_eq!(JobSpec::from_toml_str(&toml).unwrap(), spec);
}

// --- property: parse(to_toml(spec)) == spec -------------------------------

fn identifier() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,62}"
}

fn column() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,62}"
}

fn dsn() -> impl Strategy<Value = Dsn> {
    prop_oneof![
        (identifier(), 1u16.., "[ -~]{0,12}").prop_map(|(db, port, password)| {
            let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
            Dsn::new(format!(
                "host=db.example port={port} dbname={db} password='{quoted}'"
            ))
        }),
        ("[a-z]{1,8}", "[A-Za-z0-9%]{1,10}", identifier()).prop_map(|(user, pass, db)| {
            Dsn::new(format!("postgresql://{user}:{pass}@localhost:5432/{db}"))
        }),
    ]
}

fn tenant_filter() -> impl Strategy<Value = TenantFilter> {
    let id = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "\\PC{1,12}",
        "[0-9]{1,4}",
    ];
    prop_oneof![
        Just(TenantFilter::All),
        proptest::collection::btree_set(id, 1..8).prop_map(TenantFilter::Only),
    ]
}

fn tables() -> impl Strategy<Value = Vec<TableSpec>> {
    // Table names, and patterns (`*` or `?` in the table part) beside them.
    let name = (
        "[A-Za-z_][A-Za-z0-9_]{0,20}",
        "[A-Za-z_][A-Za-z0-9_]{0,20}",
        prop_oneof!["", "[*?][A-Za-z0-9_*?]{0,5}"],
    )
        .prop_map(|(s, t, glob)| format!("{s}.{t}{glob}"));
    proptest::collection::btree_set(name, 1..5).prop_flat_map(|names| {
        let n = names.len();
        let history = (any::<bool>(), proptest::option::of(column()));
        let exclude = proptest::collection::vec("[a-z_][a-z0-9_*]{0,6}", 0..3);
        proptest::collection::vec((proptest::option::of(column()), history, exclude), n).prop_map(
            move |columns| {
                names
                    .iter()
                    .zip(columns)
                    .map(|(name, (tenant_column, (history, valid), exclude))| {
                        let pattern = name.contains(['*', '?']);
                        TableSpec {
                            name: name.clone(),
                            exclude: if pattern { exclude } else { Vec::new() },
                            tenant_column,
                            tenant: None,
                            tenant_from: None,
                            history,
                            valid_time_column: valid.filter(|_| history),
                        }
                    })
                    .collect()
            },
        )
    })
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(1..=u64::from(u32::MAX))
}

fn qos() -> impl Strategy<Value = QosSpec> {
    use crate::sinks::qos::Tier;
    let tier = prop_oneof![Just(Tier::Premium), Just(Tier::Standard), Just(Tier::Batch)];
    let predictor = prop_oneof![
        Just(PredictorChoice::Auto),
        Just(PredictorChoice::Model),
        Just(PredictorChoice::Heuristic),
        Just(PredictorChoice::Off),
    ];
    (
        tier.clone(),
        predictor,
        (1..=3600u64, 1..=1_000_000u64, 0..=3600u64),
        (
            proptest::option::of(1000..=10_000_000usize),
            proptest::option::of(16..=65_536usize),
            prop_oneof![Just(0.0), Just(0.1), Just(0.25), Just(0.5)],
        ),
        (1..=86_400_000u64, 1..=86_400_000u64, 1..=86_400_000u64),
        proptest::collection::btree_map("[0-9]{1,3}", tier, 0..3),
    )
        .prop_map(
            |(
                default_tier,
                predictor,
                (window, width, poll),
                (buffered, mib, share),
                (p, s, b),
                tenants,
            )| {
                QosSpec {
                    default_tier,
                    tenants,
                    lag_budget_ms: LagBudgets {
                        premium: p,
                        standard: s,
                        batch: b,
                    },
                    predictor,
                    window_secs: window,
                    key_bucket_width: width,
                    source_stats_poll_secs: poll,
                    max_buffered_rows: buffered,
                    max_buffered_mib: mib,
                    min_share: share,
                }
            },
        )
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    let sink = (
        dsn(),
        1..=MAX_BATCH_MAX_ROWS,
        (limit(), limit(), limit(), limit()),
        prop_oneof![
            Just(MaxInFlight::Auto),
            (1..=MAX_MAX_IN_FLIGHT).prop_map(MaxInFlight::Fixed)
        ],
    )
        .prop_map(|(dsn, batch_max_rows, (a, b, c, d), max_in_flight)| {
            SinkSpec::Postgres(PostgresSinkSpec {
                dsn,
                batch_max_rows,
                max_in_flight,
                limits: SinkLimitsSpec {
                    max_rows_per_sec: a,
                    max_bytes_per_sec: b,
                    tenant_max_rows_per_sec: c,
                    tenant_max_bytes_per_sec: d,
                },
            })
        });
    (
        "[a-z][a-z0-9_-]{0,47}",
        (dsn(), identifier(), "[a-z0-9_]{1,63}"),
        (identifier(), tenant_filter()),
        tables(),
        proptest::collection::vec(sink, 1..3),
        (
            (1..=MAX_HOT_WINDOW_SECS, 1..=MAX_ROW_MEMORY_MIB),
            "/[a-z]{1,8}(/[a-z0-9_]{1,8}){0,2}",
            1..=MAX_BATCH_MAX_ROWS,
        ),
        qos(),
    )
        .prop_map(
            |(
                name,
                (dsn, publication, slot),
                (column, include),
                tables,
                mut sinks,
                ((hot, row_memory_mib), root, rows),
                mut qos,
            )| {
                // Tiers only for tenants the job includes.
                if let TenantFilter::Only(ids) = &include {
                    qos.tenants.retain(|t, _| ids.contains(t));
                }
                // A parquet sink exports history: only when every table keeps it.
                if tables.iter().all(|t| t.history) {
                    sinks.push(SinkSpec::Parquet(ParquetSinkSpec {
                        root,
                        batch_max_rows: rows,
                        compact_min_files: 16,
                        limits: SinkLimitsSpec::default(),
                    }));
                }
                JobSpec {
                    name,
                    source: SourceSpec {
                        dsn,
                        publication,
                        slot,
                        snapshot_parallel_tables: None,
                        snapshot_split_tables: true,
                        receive_buffer_kib: None,
                    },
                    tenants: TenantSpec {
                        column,
                        include,
                        removed: RemovedTenants::Keep,
                    },
                    tables,
                    sinks,
                    history: HistorySpec {
                        hot_window_secs: hot,
                        row_memory_mib,
                    },
                    qos,
                }
            },
        )
}

proptest! {
    #[test]
    fn toml_round_trip(spec in job_spec()) {
        prop_assert!(spec.validate().is_ok(), "{:?}", spec.validate());
        let toml = spec.to_toml_string();
        let back = JobSpec::from_toml_str(&toml);
        prop_assert!(back.is_ok(), "{:?}\n{}", back, toml);
        prop_assert_eq!(back.unwrap(), spec);
    }

    #[test]
    fn json_round_trip(spec in job_spec()) {
        let json = serde_json::to_string(&spec).unwrap();
        prop_assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
    }
}

/// `VALID` with a NATS sink after its postgres sink.
fn with_nats(fields: &str) -> String {
    format!("{VALID}[[sinks]]\nkind = \"nats\"\n{fields}\n")
}

#[test]
fn a_nats_sink_parses_with_defaults_and_its_settings() {
    let spec = JobSpec::from_toml_str(&with_nats("url = \"nats://127.0.0.1:4222\"")).unwrap();
    let SinkSpec::Nats(n) = &spec.sinks[1] else {
        panic!("nats sink expected");
    };
    assert_eq!(n.batch_max_rows, nats::DEFAULT_NATS_BATCH_MAX_ROWS);
    let config = n.config(&spec.name);
    assert_eq!(config.stream, "HELIOS_t");
    assert_eq!(config.subject_prefix, "helios");
    assert_eq!(config.key_frame_every, 64);
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
}

#[test]
fn bad_nats_settings_name_the_field() {
    expect_err(&with_nats("url = \"http://x\""), "sinks[1].url");
    expect_err(
        &with_nats("url = \"nats://h:1\"\nstream = \"a.b\""),
        "sinks[1].stream",
    );
    expect_err(
        &with_nats("url = \"nats://h:1\"\nsubject_prefix = \"a.>\""),
        "sinks[1].subject_prefix",
    );
    expect_err(
        &with_nats("url = \"nats://h:1\"\nbatch_max_bytes = 10"),
        "sinks[1].batch_max_bytes",
    );
    expect_err(
        &with_nats("url = \"nats://h:1\"\nkey_frame_every = 0"),
        "sinks[1].key_frame_every",
    );
    expect_err(
        &with_nats("url = \"nats://h:1\"\nmax_encode_share = 1.5"),
        "sinks[1].max_encode_share",
    );
    let err = JobSpec::from_toml_str(&with_nats("url = \"nats://h:1\"\nroot = \"/tmp\""))
        .expect_err("root belongs to parquet sinks");
    assert!(err.to_string().contains("root"), "{err}");
    let err = JobSpec::from_toml_str(&with_nats("")).expect_err("url is required");
    assert!(err.to_string().contains("url"), "{err}");
}

#[test]
fn a_nats_sink_takes_tls_files_and_credentials() {
    let fields = "url = \"tls://nats.example:4222\"\ntls_ca_file = \"/etc/ca.pem\"\n\
                  tls_cert_file = \"/etc/c.pem\"\ntls_key_file = \"/etc/c.key\"\n\
                  credentials_file = \"/etc/u.creds\"";
    let spec = JobSpec::from_toml_str(&with_nats(fields)).unwrap();
    let SinkSpec::Nats(n) = &spec.sinks[1] else {
        panic!("nats sink expected");
    };
    assert_eq!(
        n.access.tls_ca_file.as_deref(),
        Some(Path::new("/etc/ca.pem"))
    );
    assert_eq!(
        n.access.tls_key_file.as_deref(),
        Some(Path::new("/etc/c.key"))
    );
    assert_eq!(n.config(&spec.name).access, n.access);
    // Both ways round.
    assert_eq!(
        JobSpec::from_toml_str(&spec.to_toml_string()).unwrap(),
        spec
    );
    let json = serde_json::to_string(&spec).unwrap();
    assert_eq!(JobSpec::from_json_str(&json).unwrap(), spec);
    // A certificate without its key, an empty path, and the fields on a postgres sink.
    let err = expect_err(
        &with_nats("url = \"tls://h:1\"\ntls_cert_file = \"/c.pem\""),
        "sinks[1].tls_cert_file",
    );
    assert!(err.to_string().contains("without `tls_key_file`"), "{err}");
    expect_err(
        &with_nats("url = \"nats://h:1\"\ncredentials_file = \"\""),
        "sinks[1].credentials_file",
    );
    let pg = valid_with(
        "dbname=replica\"",
        "dbname=replica\"\ntls_ca_file = \"/etc/ca.pem\"",
    );
    let err = JobSpec::from_toml_str(&pg).expect_err("a nats field");
    assert!(
        err.to_string()
            .contains("unknown field `tls_ca_file` for a postgres sink"),
        "{err}"
    );
}

#[test]
fn a_job_without_postgres_sinks_keeps_its_progress_in_the_first_parquet_sink() {
    let history = valid_with(
        "name = \"public.orders\"",
        "name = \"public.orders\"\nhistory = true",
    );
    let pg = "kind = \"postgres\"\ndsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"";
    let parquet_only = history.replace(pg, "kind = \"parquet\"\nroot = \"/tmp/cold\"");
    let spec = JobSpec::from_toml_str(&parquet_only).expect("a cold-tier-only job");
    assert_eq!(spec.sinks[0].kind(), "parquet");
    let with_nats = format!("{parquet_only}[[sinks]]\nkind = \"nats\"\nurl = \"nats://h:1\"\n");
    JobSpec::from_toml_str(&with_nats).expect("parquet first, then nats");
    // With a postgres sink, that one must come first.
    let pg_second = format!("{parquet_only}[[sinks]]\n{pg}\n");
    let err = expect_err(&pg_second, "sinks[0].kind");
    assert!(err.to_string().contains("must be a postgres sink"), "{err}");
    // Without history there is nothing a parquet sink could export.
    let no_history = VALID.replace(pg, "kind = \"parquet\"\nroot = \"/tmp/cold\"");
    expect_err(&no_history, "sinks[0].kind");
}

#[test]
fn a_nats_sink_cannot_come_first() {
    let only_nats = VALID.replace(
        "kind = \"postgres\"\ndsn = \"host=127.0.0.1 port=5433 user=postgres dbname=replica\"",
        "kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"",
    );
    expect_err(&only_nats, "sinks[0].kind");
}

#[test]
fn the_read_ahead_defaults_to_twice_the_largest_parquet_group() {
    let spec = |extra: &str| {
        let history = valid_with(
            "name = \"public.orders\"",
            "name = \"public.orders\"\nhistory = true",
        );
        JobSpec::from_toml_str(&format!("{history}{extra}")).expect("valid spec")
    };
    let cold = |rows: usize| {
        format!("[[sinks]]\nkind = \"parquet\"\nroot = \"/c\"\nbatch_max_rows = {rows}\n")
    };
    assert_eq!(spec("").qos.max_buffered_rows, None);
    assert_eq!(spec("").read_ahead_rows(), 100_000, "postgres only");
    assert_eq!(
        spec("[[sinks]]\nkind = \"parquet\"\nroot = \"/c\"\n").read_ahead_rows(),
        2 * DEFAULT_PARQUET_BATCH_MAX_ROWS
    );
    assert_eq!(
        spec(&cold(10)).read_ahead_rows(),
        100_000,
        "never below the least default"
    );
    assert_eq!(spec(&cold(1_000_000)).read_ahead_rows(), 2_000_000);
    let set = format!("{}[qos]\nmax_buffered_rows = 5000\n", cold(1_000_000));
    let explicit = spec(&set);
    assert_eq!(explicit.read_ahead_rows(), 5000, "a set value wins");
    let back = JobSpec::from_toml_str(&explicit.to_toml_string()).expect("reads back");
    assert_eq!(back.qos.max_buffered_rows, Some(5000));
    assert!(
        !spec("").to_toml_string().contains("max_buffered_rows"),
        "an unset read-ahead stays unset"
    );
}

#[test]
fn the_read_ahead_in_bytes_defaults_to_128_mib_and_is_checked() {
    let with = |qos: &str| format!("{VALID}[qos]\n{qos}\n");
    let default = JobSpec::from_toml_str(VALID).expect("valid");
    assert_eq!(default.read_ahead_bytes(), 128 << 20);
    assert!(!default.to_toml_string().contains("max_buffered_mib"));
    let history = valid_with(
        "name = \"public.orders\"",
        "name = \"public.orders\"\nhistory = true",
    );
    let cold = format!("{history}[[sinks]]\nkind = \"parquet\"\nroot = \"/c\"\n");
    let cold = JobSpec::from_toml_str(&cold).expect("valid");
    assert_eq!(
        cold.read_ahead_bytes(),
        2 * DEFAULT_PARQUET_BATCH_MAX_ROWS * 1024,
        "1 KiB per row of a cold-tier sink's larger read-ahead"
    );
    let set = JobSpec::from_toml_str(&with("max_buffered_mib = 64")).expect("valid");
    assert_eq!(set.read_ahead_bytes(), 64 << 20);
    let back = JobSpec::from_toml_str(&set.to_toml_string()).expect("reads back");
    assert_eq!(back.qos.max_buffered_mib, Some(64));
    for bad in ["max_buffered_mib = 8", "max_buffered_mib = 100000"] {
        expect_err(&with(bad), "qos.max_buffered_mib");
    }
}

#[test]
fn compaction_of_a_parquet_sink_is_on_by_default_and_can_be_turned_off() {
    let history = valid_with(
        "name = \"public.orders\"",
        "name = \"public.orders\"\nhistory = true",
    );
    let with_cold =
        |extra: &str| format!("{history}[[sinks]]\nkind = \"parquet\"\nroot = \"/c\"\n{extra}");
    let min_files = |spec: &JobSpec| match &spec.sinks[1] {
        SinkSpec::Parquet(p) => p.compact_min_files,
        other => panic!("not a parquet sink: {other:?}"),
    };
    let spec = JobSpec::from_toml_str(&with_cold("")).expect("default");
    assert_eq!(min_files(&spec), 16);
    let spec = JobSpec::from_toml_str(&with_cold("compact_min_files = 0")).expect("off");
    assert_eq!(min_files(&spec), 0);
    let spec = JobSpec::from_toml_str(&with_cold("compact_min_files = 64")).expect("64");
    assert_eq!(min_files(&spec), 64);
    for bad in ["compact_min_files = 1", "compact_min_files = 100001"] {
        let err = expect_err(&with_cold(bad), "sinks[1].compact_min_files");
        assert!(err.to_string().contains("never compact"), "{err}");
    }
    let err = JobSpec::from_toml_str(&valid_with(
        "dbname=replica\"",
        "dbname=replica\"\ncompact_min_files = 4",
    ))
    .expect_err("a postgres sink does not compact");
    assert!(err.to_string().contains("compact_min_files"), "{err}");
}

#[test]
fn a_replacing_spec_keeps_name_slot_and_publication() {
    let current = JobSpec::from_toml_str(TENANTS_3_7).unwrap();
    let mut wider = current.clone();
    wider.tenants.include = TenantFilter::Only(["3", "7", "9"].map(String::from).into());
    wider.tables.truncate(1);
    assert!(wider.check_replaces(&current).is_ok());
    for (field, change) in [
        (
            "name",
            (|s: &mut JobSpec| s.name = "other".into()) as fn(&mut JobSpec),
        ),
        ("source.slot", |s| s.source.slot = "other_slot".into()),
        ("source.publication", |s| {
            s.source.publication = "other_pub".into()
        }),
    ] {
        let mut next = current.clone();
        change(&mut next);
        let err = next.check_replaces(&current).expect_err(field);
        assert_eq!(err.field(), field);
        assert!(err.message().contains("`other"), "{err}");
    }
}

#[test]
fn removed_tenants_are_kept_by_default_and_deleted_only_from_postgres_targets() {
    let spec = JobSpec::from_toml_str(VALID).unwrap();
    assert_eq!(spec.tenants.removed, RemovedTenants::Keep);
    assert!(!spec.to_toml_string().contains("removed"));
    let delete = valid_with("include = [3, 7]", "include = [3, 7]\nremoved = \"delete\"");
    let spec = JobSpec::from_toml_str(&delete).unwrap();
    assert_eq!(spec.tenants.removed, RemovedTenants::Delete);
    expect_err(
        &valid_with("include = [3, 7]", "include = [3, 7]\nremoved = \"purge\""),
        "tenants.removed",
    );
    let with_nats =
        format!("{delete}[[sinks]]\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n");
    let err = expect_err(&with_nats, "tenants.removed");
    assert!(err.message().contains("sinks[1] is a nats sink"), "{err}");
    let with_history = delete.replace(
        "name = \"public.orders\"",
        "name = \"public.orders\"\nhistory = true",
    );
    let err = expect_err(&with_history, "tenants.removed");
    assert!(err.message().contains("public.orders"), "{err}");
}
