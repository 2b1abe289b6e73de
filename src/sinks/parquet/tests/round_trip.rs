//! Round trips: written rows read back exactly, edge values and random batches.

use super::*;

// ---------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------

#[test]
fn round_trip_edge_values() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let d1 = pg_ts(2026, 11, 24, 12);
    let mut rows = vec![
        open_row(
            0x42,
            d1,
            &[
                Some("-2147483648"),
                Some("-32768"),
                Some("-9223372036854775808"),
                Some("NaN"),
                Some("-0"),
                Some("f"),
                Some(""),
                Some("-0.00"),
                Some("infinity"),
                Some("{\"k\": \"ü\"}"),
                Some("{}"),
            ],
        ),
        open_row(
            0x42,
            pg_ts(1, 1, 1, 0),
            &[
                Some("2147483647"),
                Some("32767"),
                Some("9223372036854775807"),
                Some("-Infinity"),
                Some("1.7976931348623157e+308"),
                Some("t"),
                Some("日本語 🦀 \u{0} \n\t\\"),
                Some("NaN"),
                None,
                Some("null"),
                Some("{NULL,\"\"}"),
            ],
        ),
        open_row(
            0x42,
            pg_ts(9999, 12, 31, 23),
            &[
                Some("0"),
                None,
                None,
                Some("3.4028235e+38"),
                Some("5e-324"),
                None,
                None,
                None,
                None,
                None,
                None,
            ],
        ),
        open_row(0x42, d1, &[None; 11]),
    ];
    rows[0].op = ChangeOp::Update;
    rows[0].valid_from = i64::MIN;
    rows[0].valid_to = Some(i64::MAX - PG_EPOCH_UNIX_MICROS);
    rows[1].event = ColdEvent::Close;
    rows[1].op = ChangeOp::Delete;
    rows[1].system_from_lsn = 1;
    rows[1].system_to = Some(d1);
    rows[1].system_to_lsn = Some(0x42);
    rows[2].system_from_lsn = 0x42;
    rows[2].valid_to = Some(-1);

    let entries = writer.write(&rows, 0x40, 0x42).expect("write");
    assert_eq!(entries.len(), 3, "three dates, three files");
    let (cols, read) = read_table(root.path(), TENANT, TABLE).expect("read");
    assert_eq!(cols, columns());
    assert_eq!(read, expected_order(&rows));
    assert_eq!(read[0], rows[1], "year 1 sorts first");
    assert_eq!(read[3], rows[2], "year 9999 sorts last");
}

/// Text for a value of the given column kind.
fn value_strategy(kind: usize) -> BoxedStrategy<Option<String>> {
    let value: BoxedStrategy<String> = match kind {
        0 => any::<i32>().prop_map(|v| v.to_string()).boxed(),
        1 => any::<i16>().prop_map(|v| v.to_string()).boxed(),
        2 => any::<i64>().prop_map(|v| v.to_string()).boxed(),
        3 => prop_oneof![
            any::<u32>().prop_map(f32::from_bits),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(-0.0f32),
        ]
        .prop_map(f32_to_text)
        .boxed(),
        4 => prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0f64),
        ]
        .prop_map(f64_to_text)
        .boxed(),
        5 => any::<bool>()
            .prop_map(|b| if b { "t" } else { "f" }.to_string())
            .boxed(),
        _ => prop_oneof![Just(String::new()), any::<String>()].boxed(),
    };
    proptest::option::weighted(0.8, value).boxed()
}

fn time_strategy() -> BoxedStrategy<i64> {
    prop_oneof![
        // Years 1 to 9999.
        (pg_ts(1, 1, 1, 0)..pg_ts(9999, 12, 31, 23)),
        // Around 2026, many rows per date.
        (pg_ts(2026, 11, 20, 0)..pg_ts(2026, 11, 28, 0)),
    ]
    .boxed()
}

fn row_strategy(lsn_lo: Lsn, lsn_hi: Lsn) -> BoxedStrategy<ColdRow> {
    let vals: Vec<BoxedStrategy<Option<String>>> =
        (0..columns().len()).map(value_strategy).collect();
    let extreme = prop_oneof![
        any::<i64>().prop_map(|v| v.min(i64::MAX - PG_EPOCH_UNIX_MICROS)),
        Just(i64::MIN),
        Just(i64::MAX - PG_EPOCH_UNIX_MICROS),
    ];
    (
        vals,
        any::<bool>(),
        0..3usize,
        extreme,
        proptest::option::of(time_strategy()),
        time_strategy(),
        lsn_lo..=lsn_hi,
        any::<u64>(),
        time_strategy(),
    )
        .prop_map(
            move |(
                values,
                close,
                op,
                valid_from,
                valid_to,
                system_from,
                lsn,
                other_lsn,
                system_to,
            )| {
                let op = [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete][op];
                let values: Vec<Option<Text>> =
                    values.into_iter().map(|v| v.map(Text::from)).collect();
                if close {
                    ColdRow {
                        event: ColdEvent::Close,
                        op,
                        values,
                        valid_from,
                        valid_to,
                        system_from,
                        system_from_lsn: other_lsn,
                        system_to: Some(system_to),
                        system_to_lsn: Some(lsn),
                        tombstone: op == ChangeOp::Delete,
                    }
                } else {
                    ColdRow {
                        event: ColdEvent::Open,
                        op,
                        values,
                        valid_from,
                        valid_to,
                        system_from,
                        system_from_lsn: lsn,
                        system_to: None,
                        system_to_lsn: None,
                        tombstone: op == ChangeOp::Delete,
                    }
                }
            },
        )
        .boxed()
}

fn writes_strategy() -> BoxedStrategy<Vec<Vec<ColdRow>>> {
    (1..4usize)
        .prop_flat_map(|n| {
            (0..n)
                .map(|k| {
                    let lo = 100 * (k as Lsn + 1);
                    proptest::collection::vec(row_strategy(lo, lo + 50), 0..10)
                })
                .collect::<Vec<_>>()
        })
        .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn prop_round_trip(writes in writes_strategy()) {
        let root = tempfile::tempdir().expect("tempdir");
        let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = Vec::new();
        for (k, rows) in writes.iter().enumerate() {
            let lo = 100 * (k as Lsn + 1);
            writer.write(rows, lo, lo + 50).map_err(|e| TestCaseError::fail(e.to_string()))?;
            expected.extend(expected_order(rows));
        }
        let (cols, read) = read_table(root.path(), TENANT, TABLE)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(cols, columns());
        prop_assert_eq!(read, expected);
        assert_clean(&tdir(root.path()));
    }
}

// ---------------------------------------------------------------------------------------
// Renamed columns.
// ---------------------------------------------------------------------------------------

/// A column numbered `attnum` in the source's catalog.
fn numbered(name: &str, attnum: i16) -> ColdColumn {
    ColdColumn {
        attnum: Some(attnum),
        ..ColdColumn::new(name, "text")
    }
}

/// Writes one row of `values` under `columns` at `lsn`.
fn write_one(root: &Path, columns: &[ColdColumn], lsn: Lsn, values: &[&str]) {
    let mut writer = ColdTableWriter::open(root, TENANT, TABLE, columns).expect("open");
    let vals: Vec<Option<&str>> = values.iter().map(|v| Some(*v)).collect();
    writer
        .write(&[open_row(lsn, pg_ts(2026, 11, 24, 1), &vals)], lsn, lsn)
        .expect("write");
}

/// Every row read back, its values joined by `|`.
fn read_back(root: &Path) -> (Vec<String>, Vec<String>) {
    let (columns, rows) = read_table(root, TENANT, TABLE).expect("read");
    let names = columns.iter().map(|c| c.name.clone()).collect();
    let rows = rows
        .iter()
        .map(|r| {
            r.values
                .iter()
                .map(|v| v.as_deref().unwrap_or("NULL"))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    (names, rows)
}

#[test]
fn a_renamed_column_is_read_from_files_written_under_its_former_name() {
    let root = tempfile::tempdir().expect("tempdir");
    write_one(
        root.path(),
        &[numbered("id", 1), numbered("v", 2)],
        10,
        &["1", "a"],
    );
    write_one(
        root.path(),
        &[numbered("id", 1), numbered("label", 2)],
        20,
        &["2", "b"],
    );
    assert_eq!(
        read_back(root.path()),
        (
            vec!["id".into(), "label".into()],
            vec!["1|a".into(), "2|b".into()]
        )
    );
    let manifest = Manifest::load(&tdir(root.path()))
        .expect("load")
        .expect("manifest");
    assert_eq!(manifest.columns[1].former_names, ["v"]);

    // Renamed back: no former name of its own; renamed again: both kept, oldest first.
    let back =
        ColdColumn::with_former_names(&manifest.columns, &[numbered("id", 1), numbered("v", 2)]);
    assert_eq!(back[1].former_names, ["label"].map(String::from));
    let again =
        ColdColumn::with_former_names(&manifest.columns, &[numbered("id", 1), numbered("w", 2)]);
    assert_eq!(again[1].former_names, ["v", "label"].map(String::from));
}

#[test]
fn columns_that_swapped_names_are_told_apart_by_their_numbers() {
    let root = tempfile::tempdir().expect("tempdir");
    write_one(
        root.path(),
        &[numbered("a", 2), numbered("b", 3)],
        10,
        &["a1", "b1"],
    );
    // Column 2 is now called `b`, column 3 `a`.
    write_one(
        root.path(),
        &[numbered("b", 2), numbered("a", 3)],
        20,
        &["a2", "b2"],
    );
    assert_eq!(
        read_back(root.path()),
        (
            vec!["b".into(), "a".into()],
            vec!["a1|b1".into(), "a2|b2".into()]
        )
    );
}

#[test]
fn files_without_numbers_are_read_by_name_then_by_former_name() {
    let root = tempfile::tempdir().expect("tempdir");
    // Written before columns had numbers.
    write_one(
        root.path(),
        &[ColdColumn::new("id", "text"), ColdColumn::new("v", "text")],
        10,
        &["1", "a"],
    );
    // The first write with numbers learns them by name; the next renames.
    write_one(
        root.path(),
        &[numbered("id", 1), numbered("v", 2)],
        20,
        &["2", "b"],
    );
    write_one(
        root.path(),
        &[numbered("id", 1), numbered("label", 2)],
        30,
        &["3", "c"],
    );
    assert_eq!(
        read_back(root.path()).1,
        ["1|a", "2|b", "3|c"].map(String::from)
    );
}
