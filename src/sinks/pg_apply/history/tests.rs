use super::*;
use crate::change::fixtures::table;
use crate::change::Row;
use crate::operators::version::SysTime;
use crate::sinks::versions::{CloseRow, OpenRow};

fn prices() -> TableInfo {
    table(
        "prices",
        &[
            ("tenant_id", "integer"),
            ("id", "integer"),
            ("price", "numeric"),
        ],
        &[0, 1],
    )
}

#[test]
fn tables_that_cannot_keep_history_are_named() {
    assert_eq!(history_problem(&prices()), None);
    let keyless = table("log", &[("tenant_id", "integer"), ("msg", "text")], &[]);
    assert!(history_problem(&keyless)
        .unwrap()
        .contains("no primary key"));
    let clash = table("t", &[("id", "integer"), ("valid_from", "date")], &[0]);
    assert!(history_problem(&clash).unwrap().contains("`valid_from`"));
    let long = table(&"x".repeat(60), &[("id", "integer")], &[0]);
    assert!(history_problem(&long).unwrap().contains("63 bytes"));
}

#[test]
fn inserts_cast_every_column_and_the_times() {
    let row: Row = vec![Cell::Text("3".into()), Cell::Text("9".into()), Cell::Null];
    let open = OpenRow {
        row: &row,
        valid_from: 0,
        valid_to: None,
        system_from: SysTime {
            lsn: 0x1_0000_0010,
            micros: 1,
        },
        op: "insert",
        tombstone: false,
    };
    let stmt = insert_versions(&prices(), std::slice::from_ref(&open));
    assert!(
        stmt.text
            .starts_with("INSERT INTO \"app\".\"prices_history\""),
        "{}",
        stmt.text
    );
    assert!(stmt.text.contains("v.c2::numeric"));
    assert!(stmt.text.contains("v.c6::pg_lsn"));
    assert_eq!(stmt.params.len(), 3 + 6);
    assert_eq!(stmt.params[8], Param::Column(vec![Some("false".into())]));
    assert_eq!(stmt.params[2], Param::Cells(vec![None]));
    assert_eq!(
        stmt.params[4],
        Param::Column(vec![None]),
        "open-ended valid_to is NULL"
    );
    assert_eq!(stmt.params[6], Param::Column(vec![Some("1/10".into())]));
    assert!(!stmt.text.contains("NOT EXISTS"), "{}", stmt.text);

    let missing = insert_missing_versions(&prices(), &[open]);
    assert_eq!(missing.params, stmt.params);
    assert!(
        missing.text.starts_with(&stmt.text)
            && missing.text.ends_with(
                " WHERE NOT EXISTS (SELECT 1 FROM \"app\".\"prices_history\" AS h WHERE \
                 h.\"tenant_id\" IS NOT DISTINCT FROM v.c0::integer AND \
                 h.\"id\" IS NOT DISTINCT FROM v.c1::integer AND \
                 h.valid_from = v.c3::timestamptz AND h.system_from_lsn = v.c6::pg_lsn)"
            ),
        "{}",
        missing.text
    );
}

#[test]
fn closes_match_the_open_version_by_key_valid_start_and_system_start() {
    let key: Row = vec![Cell::Text("3".into()), Cell::Text("9".into())];
    let close = CloseRow {
        key: &key,
        value: &key,
        valid_to: None,
        valid_from: 0,
        system_from: SysTime { lsn: 16, micros: 1 },
        system_to: SysTime { lsn: 32, micros: 2 },
        op: "update",
        tombstone: false,
    };
    let stmt = close_versions(&prices(), &[close]);
    for part in [
        "h.\"tenant_id\" = v.c0::integer",
        "h.\"id\" = v.c1::integer",
        "h.valid_from = v.c2::timestamptz",
        "h.system_from_lsn = v.c3::pg_lsn",
        "h.system_to_lsn IS NULL",
        "SET system_to = v.c4::timestamptz, system_to_lsn = v.c5::pg_lsn",
    ] {
        assert!(stmt.text.contains(part), "{part} missing: {}", stmt.text);
    }
}

#[test]
fn tenant_predicates_quote_ids() {
    use std::collections::BTreeSet;
    assert_eq!(
        tenant_predicate(
            &crate::control::job_spec::TenantKey::Column("tenant_id".into()),
            &TenantFilter::All
        ),
        None
    );
    let only = TenantFilter::Only(BTreeSet::from(["3".to_string(), "o'k".to_string()]));
    assert_eq!(
        tenant_predicate(
            &crate::control::job_spec::TenantKey::Column("tenant_id".into()),
            &only
        )
        .as_deref(),
        Some("\"tenant_id\"::text IN ('3', 'o''k')")
    );
}
