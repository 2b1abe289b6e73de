//! Value conversions (PostgreSQL text ↔ Arrow) and the Arrow schema: exact round trips
//! and errors that name the column and row.

use super::*;

// ---------------------------------------------------------------------------------------
// Value conversions.
// ---------------------------------------------------------------------------------------

#[test]
fn float_text_matches_postgres_output() {
    let f64_cases: &[(f64, &str)] = &[
        (0.1, "0.1"),
        (-1.5, "-1.5"),
        (100.0, "100"),
        (1e14, "100000000000000"),
        (123_456_789_012_345.0, "123456789012345"),
        (1e15, "1e+15"),
        (1_234_567_890_123_456.0, "1.234567890123456e+15"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e22, "1e+22"),
        (1e100, "1e+100"),
        (12345.678, "12345.678"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.0 / 3.0, "0.3333333333333333"),
        (std::f64::consts::PI, "3.141592653589793"),
        (f64::MAX, "1.7976931348623157e+308"),
        (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
        (5e-324, "5e-324"),
        (0.0, "0"),
        (-0.0, "-0"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
    ];
    for &(value, text) in f64_cases {
        assert_eq!(f64_to_text(value), text, "f64 {value:e}");
        let parsed = text_to_f64(text).expect(text);
        assert_eq!(f64_to_text(parsed), text);
        if !value.is_nan() {
            assert_eq!(parsed.to_bits(), value.to_bits(), "{text}");
        }
    }
    let f32_cases: &[(f32, &str)] = &[
        (0.1, "0.1"),
        (123_456.0, "123456"),
        (1e6, "1e+06"),
        (1_234_567.0, "1.234567e+06"),
        (16_777_216.0, "1.6777216e+07"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (std::f32::consts::PI, "3.1415927"),
        (f32::MAX, "3.4028235e+38"),
        (f32::from_bits(1), "1e-45"),
        (-0.0, "-0"),
        (f32::NAN, "NaN"),
        (f32::NEG_INFINITY, "-Infinity"),
    ];
    for &(value, text) in f32_cases {
        assert_eq!(f32_to_text(value), text, "f32 {value:e}");
        let parsed = text_to_f32(text).expect(text);
        if !value.is_nan() {
            assert_eq!(parsed.to_bits(), value.to_bits(), "{text}");
        }
    }
}

#[test]
fn non_canonical_text_is_refused() {
    for text in [
        "1.0",
        "+1",
        "1e5",
        "1E+20",
        "nan",
        "inf",
        "infinity",
        " 1",
        "",
        ".5",
        "00",
        "0.10000000000000001",
        "1e+5",
    ] {
        assert!(text_to_f64(text).is_err(), "f64 accepted {text:?}");
    }
    for text in ["1e6", "1000000.0", "NAN"] {
        assert!(text_to_f32(text).is_err(), "f32 accepted {text:?}");
    }
    for text in ["+5", "05", "-0", " 5", "5.0", "", "2147483648", "1e3"] {
        assert!(text_to_i32(text, false).is_err(), "i32 accepted {text:?}");
    }
    assert!(text_to_i32("32768", true).is_err());
    assert_eq!(text_to_i32("-32768", true), Ok(-32768));
    assert_eq!(text_to_i32("-2147483648", false), Ok(i32::MIN));
    assert_eq!(text_to_i64("9223372036854775807"), Ok(i64::MAX));
    assert!(text_to_i64("9223372036854775808").is_err());
    for text in ["true", "false", "T", "1", "yes", ""] {
        assert!(text_to_bool(text).is_err(), "bool accepted {text:?}");
    }
}

proptest! {
    #[test]
    fn prop_float_text_round_trips(bits in any::<u64>(), bits32 in any::<u32>()) {
        let value = f64::from_bits(bits);
        let text = f64_to_text(value);
        let parsed = text_to_f64(&text).map_err(TestCaseError::fail)?;
        if value.is_nan() {
            prop_assert!(parsed.is_nan());
        } else {
            prop_assert_eq!(parsed.to_bits(), bits);
        }
        let value = f32::from_bits(bits32);
        let text = f32_to_text(value);
        let parsed = text_to_f32(&text).map_err(TestCaseError::fail)?;
        if value.is_nan() {
            prop_assert!(parsed.is_nan());
        } else {
            prop_assert_eq!(parsed.to_bits(), bits32);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Schema.
// ---------------------------------------------------------------------------------------

#[test]
fn arrow_schema_types_and_metadata() {
    let schema = arrow_schema(&columns()).expect("schema");
    let types: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let expected = vec![
        ("id", DataType::Int32, true),
        ("small", DataType::Int32, true),
        ("big", DataType::Int64, true),
        ("r", DataType::Float32, true),
        ("d", DataType::Float64, true),
        ("flag", DataType::Boolean, true),
        ("name", DataType::Utf8, true),
        ("price", DataType::Utf8, true),
        ("at", DataType::Utf8, true),
        ("doc", DataType::Utf8, true),
        ("tags", DataType::Utf8, true),
        ("event", DataType::Utf8, false),
        ("op", DataType::Utf8, false),
        ("valid_from", ts.clone(), false),
        ("valid_to", ts.clone(), true),
        ("system_from", ts.clone(), false),
        ("system_to", ts.clone(), true),
        ("system_from_lsn", DataType::UInt64, false),
        ("system_to_lsn", DataType::UInt64, true),
        ("tombstone", DataType::Boolean, false),
    ];
    let expected: Vec<(String, DataType, bool)> = expected
        .into_iter()
        .map(|(n, t, null)| (n.to_string(), t, null))
        .collect();
    assert_eq!(types, expected);
    assert_eq!(columns_from_schema(&schema), Ok(columns()));
}

#[test]
fn reserved_and_duplicate_columns_are_refused() {
    let mut cols = columns();
    cols.push(ColdColumn::new("valid_from", "date"));
    let err = arrow_schema(&cols).expect_err("reserved name accepted");
    assert!(matches!(&err, ParquetError::ReservedColumn { column } if column == "valid_from"));
    assert!(err.to_string().contains("valid_from"), "{err}");

    let root = tempfile::tempdir().expect("tempdir");
    let err = ColdTableWriter::open(root.path(), TENANT, TABLE, &cols).expect_err("open accepted");
    assert!(err.to_string().contains("valid_from"), "{err}");

    let mut cols = columns();
    cols.push(ColdColumn::new("name", "text"));
    let err = arrow_schema(&cols).expect_err("duplicate accepted");
    assert!(err.to_string().contains("\"name\""), "{err}");
}

#[test]
fn bad_value_names_column_and_row_and_publishes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let mut rows = two_date_batch(1, 0x10);
    rows[1].values[0] = Some("twelve".into());
    let err = writer
        .write(&rows, 0x10, 0x10)
        .expect_err("bad integer accepted");
    match &err {
        ParquetError::BadValue { row, column, .. } => {
            assert_eq!((*row, column.as_str()), (1, "id"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("row 1") && message.contains("\"id\""),
        "{message}"
    );

    for (col, text) in [(5, "true"), (4, "1.50"), (1, "40000"), (2, "1.0")] {
        let mut rows = vec![simple_row(1, 0x10, pg_ts(2026, 1, 1, 0))];
        rows[0].values[col] = Some(text.into());
        let err = writer.write(&rows, 0x10, 0x10).expect_err(text);
        assert!(
            err.to_string()
                .contains(&format!("{:?}", columns()[col].name)),
            "{err}"
        );
    }
    assert_eq!(writer.covered_lsn(), 0);
    assert_clean(&tdir(root.path()));
    assert!(visible_files(&tdir(root.path())).is_empty());
    let (_, read) = read_table(root.path(), TENANT, TABLE).expect("read");
    assert!(read.is_empty());
}

#[test]
fn malformed_rows_are_errors_not_panics() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let day = pg_ts(2026, 3, 1, 0);

    let mut short = simple_row(1, 5, day);
    short.values.pop();
    let err = writer.write(&[short], 5, 5).expect_err("short row");
    assert!(matches!(err, ParquetError::BadRow { row: 0, .. }), "{err}");

    let mut overflow = simple_row(1, 5, day);
    overflow.valid_to = Some(i64::MAX);
    let err = writer
        .write(&[simple_row(0, 5, day), overflow], 5, 5)
        .expect_err("overflow");
    assert!(matches!(err, ParquetError::BadRow { row: 1, .. }), "{err}");
    assert!(err.to_string().contains("valid_to"), "{err}");

    let err = writer
        .write(&[simple_row(1, 9, day)], 5, 6)
        .expect_err("commit LSN outside range");
    assert!(err.to_string().contains("outside"), "{err}");

    let mut close = simple_row(1, 5, day);
    close.event = ColdEvent::Close;
    let err = writer
        .write(&[close], 5, 5)
        .expect_err("close without system_to");
    assert!(matches!(err, ParquetError::BadRow { row: 0, .. }), "{err}");

    let mut far = simple_row(1, 5, day);
    far.system_from = i64::MAX - PG_EPOCH_UNIX_MICROS;
    let err = writer.write(&[far], 5, 5).expect_err("no date");
    assert!(matches!(err, ParquetError::BadRow { row: 0, .. }), "{err}");

    let err = writer.write(&[], 7, 6).expect_err("empty range");
    assert!(matches!(err, ParquetError::InvalidRange { .. }), "{err}");
    assert_eq!(writer.covered_lsn(), 0);
    assert_clean(&tdir(root.path()));
}

proptest::proptest! {
    /// An integer is accepted exactly when printing it back gives the same text.
    #[test]
    fn integers_are_accepted_only_in_printed_form(text in "[-+0-9 ]{0,21}") {
        let printed_i32 = text.parse::<i32>().ok().filter(|v| v.to_string() == text);
        proptest::prop_assert_eq!(text_to_i32(&text, false).ok(), printed_i32);
        let printed_i64 = text.parse::<i64>().ok().filter(|v| v.to_string() == text);
        proptest::prop_assert_eq!(text_to_i64(&text).ok(), printed_i64);
    }
}
