//! Tests of the cold tier: value conversions, path escaping, layout, the commit protocol
//! and its recovery (crash states built by hand and real aborts in a child process),
//! checksum verification and schema errors.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_schema::{DataType, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};
use proptest::prelude::*;

use super::layout::{
    parse_relative_path, relative_path, temp_path, utc_date_of, MANIFEST_FILE, MANIFEST_TMP_FILE,
    TEMP_DIR,
};
use super::manifest::{hash_file, verify_file};
use super::schema::{
    f32_to_text, f64_to_text, text_to_bool, text_to_f32, text_to_f64, text_to_i32, text_to_i64,
    PG_EPOCH_UNIX_MICROS,
};
use super::*;
use crate::change::Lsn;

const TENANT: &str = "acme/corp";
const TABLE: &str = "public.orders";

/// One column of every storage kind, plus text-stored types.
fn columns() -> Vec<ColdColumn> {
    [
        ("id", "integer"),
        ("small", "smallint"),
        ("big", "bigint"),
        ("r", "real"),
        ("d", "double precision"),
        ("flag", "boolean"),
        ("name", "text"),
        ("price", "numeric(10,2)"),
        ("at", "timestamp with time zone"),
        ("doc", "jsonb"),
        ("tags", "text[]"),
    ]
    .into_iter()
    .map(|(n, t)| ColdColumn::new(n, t))
    .collect()
}

/// PostgreSQL microseconds of a UTC date and hour.
fn pg_ts(y: i32, m: u32, d: u32, h: u32) -> i64 {
    let unix = NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|date| date.and_hms_opt(h, 0, 0))
        .expect("valid test date")
        .and_utc()
        .timestamp_micros();
    unix - PG_EPOCH_UNIX_MICROS
}

fn values(vals: &[Option<&str>]) -> Vec<Option<String>> {
    vals.iter().map(|v| v.map(str::to_string)).collect()
}

/// An open row with all values of [`columns`] given as text.
fn open_row(lsn: Lsn, system_from: i64, vals: &[Option<&str>]) -> ColdRow {
    ColdRow {
        event: ColdEvent::Open,
        op: ChangeOp::Insert,
        values: values(vals),
        valid_from: system_from,
        valid_to: None,
        system_from,
        system_from_lsn: lsn,
        system_to: None,
        system_to_lsn: None,
    }
}

/// A simple row of [`columns`] whose `id` is `id`.
fn simple_row(id: i32, lsn: Lsn, system_from: i64) -> ColdRow {
    let id = id.to_string();
    open_row(
        lsn,
        system_from,
        &[
            Some(&id),
            Some("1"),
            Some("2"),
            Some("1.5"),
            Some("2.5"),
            Some("t"),
            Some("name"),
            Some("9.99"),
            Some("2026-11-24 10:00:00+00"),
            Some("{}"),
            Some("{a,b}"),
        ],
    )
}

/// Rows with commit LSN `lsn` on two dates (2026-11-24 and 2026-11-25), interleaved.
fn two_date_batch(first_id: i32, lsn: Lsn) -> Vec<ColdRow> {
    vec![
        simple_row(first_id, lsn, pg_ts(2026, 11, 24, 10)),
        simple_row(first_id + 1, lsn, pg_ts(2026, 11, 25, 3)),
        simple_row(first_id + 2, lsn, pg_ts(2026, 11, 24, 23)),
    ]
}

/// What `read_table` must return for one write: rows grouped by date (ascending),
/// input order kept within a date.
fn expected_order(rows: &[ColdRow]) -> Vec<ColdRow> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|r| utc_date_of(r.system_from));
    sorted
}

fn tdir(root: &Path) -> PathBuf {
    table_dir(root, TENANT, TABLE)
}

/// `*.parquet` files under the `date=` directories, as manifest-relative paths.
fn visible_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in fs::read_dir(dir).expect("list table dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("date=") {
            continue;
        }
        for file in fs::read_dir(entry.path()).expect("list date dir") {
            let file = file
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .to_string();
            if file.ends_with(".parquet") {
                out.insert(format!("{name}/{file}"));
            }
        }
    }
    out
}

/// The state every recovery must leave: nothing staged, no uncommitted manifest, every
/// listed file in place with its checksum, and no unlisted file visible.
fn assert_clean(dir: &Path) {
    let temp = dir.join(TEMP_DIR);
    if temp.exists() {
        let left: Vec<_> = fs::read_dir(&temp)
            .expect("list _tmp")
            .map(|e| e.expect("entry").path())
            .collect();
        assert!(left.is_empty(), "staged files left behind: {left:?}");
    }
    assert!(
        !dir.join(MANIFEST_TMP_FILE).exists(),
        "uncommitted manifest left"
    );
    let manifest = Manifest::load(dir)
        .expect("manifest loads")
        .expect("manifest exists");
    let mut listed = BTreeSet::new();
    for entry in &manifest.files {
        verify_file(&dir.join(&entry.path), entry).expect("listed file matches its checksum");
        listed.insert(entry.path.clone());
    }
    assert_eq!(
        visible_files(dir),
        listed,
        "visible files differ from the manifest"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// What a write would commit, learnt by running it on a copy of `root`: the new
/// manifest's bytes and the new files (manifest-relative path, bytes).
struct Twin {
    manifest: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
}

fn twin_write(root: &Path, rows: &[ColdRow], lo: Lsn, hi: Lsn) -> Twin {
    let twin = tempfile::tempdir().expect("tempdir");
    copy_dir(root, twin.path());
    let mut writer =
        ColdTableWriter::open(twin.path(), TENANT, TABLE, &columns()).expect("open twin");
    let entries = writer.write(rows, lo, hi).expect("twin write");
    let dir = tdir(twin.path());
    Twin {
        manifest: fs::read(dir.join(MANIFEST_FILE)).expect("twin manifest"),
        files: entries
            .iter()
            .map(|e| {
                let bytes = fs::read(dir.join(&e.path)).expect("twin file");
                (e.path.clone(), bytes)
            })
            .collect(),
    }
}

/// A root with one published write (`batch1`, LSN 0x100, two dates); returns the rows.
fn setup_published(root: &Path) -> Vec<ColdRow> {
    let batch1 = two_date_batch(1, 0x100);
    let mut writer = ColdTableWriter::open(root, TENANT, TABLE, &columns()).expect("open");
    let entries = writer.write(&batch1, 0x100, 0x100).expect("write batch1");
    assert_eq!(entries.len(), 2);
    batch1
}

/// After recovery: the table is clean, reads `expected`, and replaying `batch2` (as a
/// sink would after the crash) ends with `batch1 + batch2`, each row exactly once.
fn assert_recovers(root: &Path, expected: &[ColdRow], batch1: &[ColdRow], batch2: &[ColdRow]) {
    let mut writer =
        ColdTableWriter::open(root, TENANT, TABLE, &columns()).expect("recovering open");
    assert_clean(&tdir(root));
    let (_, rows) = read_table(root, TENANT, TABLE).expect("read after recovery");
    assert_eq!(rows, expected);

    writer.write(batch2, 0x200, 0x200).expect("replay batch2");
    assert_clean(&tdir(root));
    let (_, rows) = read_table(root, TENANT, TABLE).expect("read after replay");
    let mut all = expected_order(batch1);
    all.extend(expected_order(batch2));
    assert_eq!(rows, all);
}

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
    rows[1].values[0] = Some("twelve".to_string());
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
        rows[0].values[col] = Some(text.to_string());
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
// Path escaping.
// ---------------------------------------------------------------------------------------

#[test]
fn path_escaping_examples() {
    for (raw, encoded) in [
        ("acme", "acme"),
        ("public.orders", "public.orders"),
        ("a-b_c.9", "a-b_c.9"),
        ("a/b", "a%2Fb"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("...", "..."),
        ("", "%"),
        ("%", "%25"),
        ("ü", "%C3%BC"),
        ("a b", "a%20b"),
        ("\\", "%5C"),
    ] {
        assert_eq!(encode_path_value(raw), encoded, "{raw:?}");
        assert_eq!(
            decode_path_value(encoded).as_deref(),
            Some(raw),
            "{encoded:?}"
        );
    }
    for bad in [
        "a/b", "%2f", "%2", "%G0", "%61", ".", "..", "%2E.", "a%", "%%", "%FF",
    ] {
        assert_eq!(decode_path_value(bad), None, "{bad:?} decoded");
    }
}

proptest! {
    #[test]
    fn prop_path_escaping_round_trips(value in any::<String>()) {
        let encoded = encode_path_value(&value);
        prop_assert!(!encoded.is_empty());
        prop_assert!(encoded != "." && encoded != "..");
        prop_assert!(encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%')));
        prop_assert_eq!(decode_path_value(&encoded), Some(value.clone()));
        // As a path component it is exactly one normal component under the parent.
        let dir = table_dir(Path::new("/root"), &value, &value);
        let parts: Vec<_> = dir.components().collect();
        prop_assert_eq!(parts.len(), 4);
        prop_assert!(dir.starts_with("/root"));
    }

    #[test]
    fn prop_decode_accepts_only_canonical(encoded in "[a-zA-Z0-9._%/ -]{0,12}") {
        if let Some(decoded) = decode_path_value(&encoded) {
            prop_assert_eq!(encode_path_value(&decoded), encoded);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Layout and covered LSN.
// ---------------------------------------------------------------------------------------

#[test]
fn layout_names_dates_and_covered_lsn() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    assert_eq!(writer.covered_lsn(), 0);
    let dir = root
        .path()
        .join("tenant=acme%2Fcorp")
        .join("table=public.orders");
    assert_eq!(writer.table_dir(), dir);

    let batch = two_date_batch(1, 0x1_0000_0010);
    let entries = writer
        .write(&batch, 0x1_0000_0001, 0x1_0000_0010)
        .expect("write");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "date=2026-11-24/part-0000000100000001-0000000100000010.parquet",
            "date=2026-11-25/part-0000000100000001-0000000100000010.parquet",
        ]
    );
    assert_eq!(entries.iter().map(|e| e.rows).collect::<Vec<_>>(), [2, 1]);
    for entry in &entries {
        let file = dir.join(&entry.path);
        assert_eq!(
            hash_file(&file).expect("hash"),
            (entry.bytes, entry.sha256.clone())
        );
        assert_eq!(
            parse_relative_path(&entry.path).map(|(_, lo, hi)| (lo, hi)),
            Some((0x1_0000_0001, 0x1_0000_0010))
        );
    }
    assert_eq!(writer.covered_lsn(), 0x1_0000_0010);
    assert_clean(&dir);

    // The manifest on disk says the same.
    let manifest = Manifest::load(&dir).expect("load").expect("exists");
    assert_eq!(manifest.format, 1);
    assert_eq!(
        (manifest.tenant.as_str(), manifest.table.as_str()),
        (TENANT, TABLE)
    );
    assert_eq!(manifest.files, entries);
    assert_eq!(manifest.covered_lsn, 0x1_0000_0010);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).expect("read")).expect("json");
    assert_eq!(json["files"][0]["lsn_max"], 0x1_0000_0010u64);
    assert_eq!(json["columns"][3]["pg_type"], "real");

    // Replays at or below covered_lsn write nothing.
    let before = fs::read(dir.join(MANIFEST_FILE)).expect("read");
    assert!(writer
        .write(&batch, 0x1_0000_0001, 0x1_0000_0010)
        .expect("replay")
        .is_empty());
    assert!(writer
        .write(&two_date_batch(9, 5), 5, 5)
        .expect("old")
        .is_empty());
    assert_eq!(fs::read(dir.join(MANIFEST_FILE)).expect("read"), before);
    assert_eq!(visible_files(&dir).len(), 2);

    // A later write advances covered_lsn, also across reopening.
    let later = vec![simple_row(7, 0x1_0000_0020, pg_ts(2026, 11, 24, 1))];
    let entries = writer
        .write(&later, 0x1_0000_0020, 0x1_0000_0020)
        .expect("later");
    assert_eq!(
        entries[0].path,
        "date=2026-11-24/part-0000000100000020-0000000100000020.parquet"
    );
    drop(writer);
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("reopen");
    assert_eq!(writer.covered_lsn(), 0x1_0000_0020);
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read");
    let mut expected = expected_order(&batch);
    expected.extend(later);
    assert_eq!(rows, expected);
    // Empty writes publish nothing.
    assert!(writer
        .write(&[], 0x1_0000_0030, 0x1_0000_0031)
        .expect("empty")
        .is_empty());
    assert_eq!(writer.covered_lsn(), 0x1_0000_0020);
}

#[test]
fn straddling_write_skips_covered_rows() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let day = pg_ts(2026, 5, 5, 5);
    let first = vec![simple_row(1, 10, day), simple_row(2, 20, day)];
    writer.write(&first, 10, 20).expect("first");
    // Re-batched after a crash: 15..30 holds the already published LSN 20 again.
    let second = vec![simple_row(2, 20, day), simple_row(3, 25, day)];
    let entries = writer.write(&second, 15, 30).expect("second");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].rows, 1);
    assert_eq!(entries[0].lsn_min, 21);
    assert_eq!(entries[0].lsn_max, 30);
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read");
    let ids: Vec<_> = rows
        .iter()
        .map(|r| r.values[0].clone().unwrap_or_default())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
}

#[test]
fn writer_properties_and_file_metadata() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let rows: Vec<ColdRow> = (0..50)
        .map(|i| simple_row(i, 0x77, pg_ts(2026, 2, 2, 2)))
        .collect();
    let entries = writer.write(&rows, 0x70, 0x77).expect("write");
    let file = fs::File::open(tdir(root.path()).join(&entries[0].path)).expect("open file");
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet");
    let meta = builder.metadata();
    let kv: Vec<(String, Option<String>)> = meta
        .file_metadata()
        .key_value_metadata()
        .expect("kv metadata")
        .iter()
        .filter(|kv| kv.key.starts_with("helios."))
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        kv,
        [
            ("helios.tenant".to_string(), Some(TENANT.to_string())),
            ("helios.table".to_string(), Some(TABLE.to_string())),
            ("helios.lsn_lo".to_string(), Some(0x70.to_string())),
            ("helios.lsn_hi".to_string(), Some(0x77.to_string())),
        ]
    );
    let schema = builder.schema().clone();
    assert_eq!(columns_from_schema(&schema), Ok(columns()));
    let meta = meta.clone();

    // Timestamps are stored as Unix microseconds in UTC, LSNs as plain integers.
    let batch = builder
        .build()
        .expect("reader")
        .next()
        .expect("a batch")
        .expect("batch reads");
    let system_from = batch
        .column_by_name("system_from")
        .expect("system_from")
        .as_primitive::<TimestampMicrosecondType>()
        .value(0);
    let expected_unix = NaiveDate::from_ymd_opt(2026, 2, 2)
        .and_then(|d| d.and_hms_opt(2, 0, 0))
        .expect("date")
        .and_utc()
        .timestamp_micros();
    assert_eq!(system_from, expected_unix);
    let lsn = batch
        .column_by_name("system_from_lsn")
        .expect("system_from_lsn")
        .as_primitive::<UInt64Type>()
        .value(0);
    assert_eq!(lsn, 0x77);
    for chunk in meta.row_group(0).columns() {
        let name = chunk.column_path().string();
        let field = schema.field_with_name(&name).expect("field");
        let encodings: Vec<Encoding> = chunk.encodings().collect();
        assert!(
            matches!(chunk.compression(), Compression::ZSTD(_)),
            "{name}"
        );
        assert!(chunk.statistics().is_some(), "{name} has no statistics");
        let dictionary = chunk.dictionary_page_offset().is_some();
        match field.data_type() {
            DataType::Utf8 => assert!(dictionary, "{name}: no dictionary"),
            DataType::Int32 | DataType::Int64 | DataType::UInt64 | DataType::Timestamp(..) => {
                assert!(!dictionary, "{name}: dictionary");
                assert!(
                    encodings.contains(&Encoding::DELTA_BINARY_PACKED),
                    "{name}: {encodings:?}"
                );
            }
            DataType::Float32 | DataType::Float64 => {
                assert!(!dictionary, "{name}: dictionary");
                assert!(
                    encodings.contains(&Encoding::BYTE_STREAM_SPLIT),
                    "{name}: {encodings:?}"
                );
            }
            _ => assert!(!dictionary, "{name}: dictionary"),
        }
    }
}

#[test]
fn schema_change_maps_old_files_by_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let old_cols = vec![
        ColdColumn::new("id", "integer"),
        ColdColumn::new("name", "text"),
    ];
    let day = pg_ts(2026, 7, 1, 0);
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &old_cols).expect("open");
    let old_row = open_row(1, day, &[Some("1"), Some("one")]);
    writer
        .write(std::slice::from_ref(&old_row), 1, 1)
        .expect("old write");
    drop(writer);

    // id widened to bigint, column added in front, name kept.
    let new_cols = vec![
        ColdColumn::new("email", "text"),
        ColdColumn::new("id", "bigint"),
        ColdColumn::new("name", "text"),
    ];
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &new_cols).expect("reopen");
    let new_row = open_row(2, day, &[Some("a@b"), Some("9223372036854775807"), None]);
    writer
        .write(std::slice::from_ref(&new_row), 2, 2)
        .expect("new write");

    let (cols, rows) = read_table(root.path(), TENANT, TABLE).expect("read");
    assert_eq!(cols, new_cols);
    assert_eq!(rows[0].values, values(&[None, Some("1"), Some("one")]));
    assert_eq!(rows[1], new_row);
    let manifest = Manifest::load(&tdir(root.path()))
        .expect("load")
        .expect("exists");
    assert_eq!(manifest.columns, new_cols);
}

#[test]
fn list_tables_decodes_directory_names() {
    let root = tempfile::tempdir().expect("tempdir");
    assert!(list_tables(&root.path().join("missing"))
        .expect("missing root")
        .is_empty());
    for (tenant, table) in [("..", "a/b"), ("t1", "."), ("t1", "public.x"), ("", "ü")] {
        let mut w = ColdTableWriter::open(root.path(), tenant, table, &columns()).expect("open");
        w.write(&[simple_row(1, 1, pg_ts(2026, 1, 1, 0))], 1, 1)
            .expect("write");
        let (_, rows) = read_table(root.path(), tenant, table).expect("read");
        assert_eq!(rows.len(), 1);
    }
    fs::create_dir_all(root.path().join("tenant=bad%zz").join("table=x")).expect("mkdir");
    fs::create_dir_all(root.path().join("not-a-tenant")).expect("mkdir");
    let tables = list_tables(root.path()).expect("list");
    let expected: Vec<(String, String)> =
        [("", "ü"), ("..", "a/b"), ("t1", "."), ("t1", "public.x")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
    assert_eq!(tables, expected);
    // Nothing was created outside root's tenant directories.
    for entry in fs::read_dir(root.path()).expect("list") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .to_string();
        assert!(
            name.starts_with("tenant=") || name == "not-a-tenant",
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Verification on read.
// ---------------------------------------------------------------------------------------

#[test]
fn corrupted_file_is_detected_and_named() {
    let root = tempfile::tempdir().expect("tempdir");
    setup_published(root.path());
    let manifest = Manifest::load(&tdir(root.path()))
        .expect("load")
        .expect("exists");
    let victim = tdir(root.path()).join(&manifest.files[1].path);
    let mut bytes = fs::read(&victim).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&victim, &bytes).expect("write");
    let err = read_table(root.path(), TENANT, TABLE).expect_err("corruption missed");
    assert!(
        matches!(err, ParquetError::ChecksumMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&manifest.files[1].path), "{err}");

    bytes.truncate(middle);
    fs::write(&victim, &bytes).expect("write");
    let err = read_table(root.path(), TENANT, TABLE).expect_err("truncation missed");
    assert!(matches!(err, ParquetError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&manifest.files[1].path), "{err}");

    fs::remove_file(&victim).expect("remove");
    let err = read_table(root.path(), TENANT, TABLE).expect_err("missing file");
    assert!(matches!(err, ParquetError::MissingFile { .. }), "{err}");
}

#[test]
fn bad_manifests_are_typed_errors_naming_the_file() {
    let root = tempfile::tempdir().expect("tempdir");
    setup_published(root.path());
    let path = tdir(root.path()).join(MANIFEST_FILE);
    let good = fs::read_to_string(&path).expect("read");

    fs::write(&path, "{ not json").expect("write");
    for err in [
        read_table(root.path(), TENANT, TABLE).expect_err("garbage read"),
        ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect_err("garbage open"),
    ] {
        assert!(matches!(err, ParquetError::Manifest { .. }), "{err}");
        assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
    }

    fs::write(&path, good.replacen("\"format\": 1", "\"format\": 2", 1)).expect("write");
    let err = read_table(root.path(), TENANT, TABLE).expect_err("format 2");
    assert!(err.to_string().contains("format 2"), "{err}");

    let escaping = good.replacen("date=2026-11-24/", "date=../../", 1);
    fs::write(&path, escaping).expect("write");
    let err = read_table(root.path(), TENANT, TABLE).expect_err("escaping path");
    assert!(matches!(err, ParquetError::Manifest { .. }), "{err}");

    fs::write(&path, good).expect("restore");
    read_table(root.path(), TENANT, TABLE).expect("restored manifest reads");
}

// ---------------------------------------------------------------------------------------
// Recovery from hand-made crash states.
// ---------------------------------------------------------------------------------------

#[test]
fn recovery_temp_files_only() {
    // Crash after step 1: staged files, manifest not yet written.
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    for (relative, bytes) in &twin.files {
        fs::write(temp_path(&dir, relative), bytes).expect("stage");
    }
    assert_recovers(root.path(), &expected_order(&batch1), &batch1, &batch2);
}

#[test]
fn recovery_uncommitted_manifest_tmp() {
    // Crash while writing the manifest: `_manifest.json.tmp` exists, the rename did not.
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    for (relative, bytes) in &twin.files {
        fs::write(temp_path(&dir, relative), bytes).expect("stage");
    }
    fs::write(dir.join(MANIFEST_TMP_FILE), &twin.manifest).expect("manifest tmp");
    assert_recovers(root.path(), &expected_order(&batch1), &batch1, &batch2);
}

#[test]
fn recovery_manifest_committed_nothing_renamed() {
    // Crash after step 2: the manifest lists files still staged.
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    for (relative, bytes) in &twin.files {
        fs::write(temp_path(&dir, relative), bytes).expect("stage");
    }
    fs::write(dir.join(MANIFEST_FILE), &twin.manifest).expect("commit");
    let mut expected = expected_order(&batch1);
    expected.extend(expected_order(&batch2));
    assert_recovers(root.path(), &expected, &batch1, &batch2);
}

#[test]
fn recovery_half_renamed() {
    // Crash in step 3 after the first of two renames.
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    assert_eq!(twin.files.len(), 2);
    let dir = tdir(root.path());
    let (first, first_bytes) = &twin.files[0];
    fs::write(dir.join(first), first_bytes).expect("renamed");
    let (second, second_bytes) = &twin.files[1];
    fs::write(temp_path(&dir, second), second_bytes).expect("staged");
    fs::write(dir.join(MANIFEST_FILE), &twin.manifest).expect("commit");
    let mut expected = expected_order(&batch1);
    expected.extend(expected_order(&batch2));
    assert_recovers(root.path(), &expected, &batch1, &batch2);
}

#[test]
fn recovery_removes_stray_parquet_files() {
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    // An unlisted file with valid content in an existing and in a new date directory.
    fs::write(dir.join(&twin.files[0].0), &twin.files[0].1).expect("stray");
    fs::create_dir_all(dir.join("date=2030-01-01")).expect("mkdir");
    fs::write(
        dir.join("date=2030-01-01/part-0000000000000300-0000000000000300.parquet"),
        &twin.files[1].1,
    )
    .expect("stray");
    // Not a data file: left alone.
    fs::write(dir.join("date=2030-01-01/notes.txt"), "keep").expect("notes");
    assert_recovers(root.path(), &expected_order(&batch1), &batch1, &batch2);
    assert!(dir.join("date=2030-01-01/notes.txt").exists());
}

#[test]
fn recovery_removes_truncated_unlisted_temp() {
    // Crash in the middle of step 1: a staged file cut short.
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    let (relative, bytes) = &twin.files[0];
    fs::write(temp_path(&dir, relative), &bytes[..bytes.len() / 3]).expect("stage");
    assert_recovers(root.path(), &expected_order(&batch1), &batch1, &batch2);
}

#[test]
fn recovery_refuses_truncated_committed_temp() {
    // Cannot come from a crash (files are fsynced before the commit), but a damaged
    // staged file must never be published.
    let root = tempfile::tempdir().expect("tempdir");
    setup_published(root.path());
    let batch2 = two_date_batch(10, 0x200);
    let twin = twin_write(root.path(), &batch2, 0x200, 0x200);
    let dir = tdir(root.path());
    for (relative, bytes) in &twin.files {
        fs::write(temp_path(&dir, relative), &bytes[..bytes.len() - 1]).expect("stage");
    }
    fs::write(dir.join(MANIFEST_FILE), &twin.manifest).expect("commit");
    let err = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns())
        .expect_err("damaged staged file published");
    assert!(matches!(err, ParquetError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains(TEMP_DIR), "{err}");
    assert!(visible_files(&dir)
        .iter()
        .all(|p| !p.contains("0000000000000200")));
}

#[test]
fn recovery_reports_lost_files() {
    let root = tempfile::tempdir().expect("tempdir");
    setup_published(root.path());
    let manifest = Manifest::load(&tdir(root.path()))
        .expect("load")
        .expect("exists");
    let lost = &manifest.files[0].path;
    fs::remove_file(tdir(root.path()).join(lost)).expect("remove");
    let err = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect_err("lost");
    assert!(matches!(err, ParquetError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains(lost.as_str()), "{err}");
}

#[test]
fn data_without_manifest_is_never_deleted() {
    let root = tempfile::tempdir().expect("tempdir");
    setup_published(root.path());
    let dir = tdir(root.path());
    fs::remove_file(dir.join(MANIFEST_FILE)).expect("remove manifest");
    let files = visible_files(&dir);
    let err = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect_err("open");
    assert!(matches!(err, ParquetError::Manifest { .. }), "{err}");
    assert_eq!(visible_files(&dir), files, "data files were touched");
}

#[test]
fn failed_write_is_recovered_by_the_next_write() {
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let dir = tdir(root.path());
    // Make step 3 fail: a directory where the second file must go.
    let batch2 = two_date_batch(10, 0x200);
    let blocked = dir.join(relative_path(
        NaiveDate::from_ymd_opt(2026, 11, 25).expect("date"),
        0x200,
        0x200,
    ));
    fs::create_dir_all(blocked.join("x")).expect("block");
    writer
        .write(&batch2, 0x200, 0x200)
        .expect_err("rename onto a directory");
    fs::remove_dir_all(&blocked).expect("unblock");
    // The retry finishes the committed write instead of writing it twice.
    assert!(writer
        .write(&batch2, 0x200, 0x200)
        .expect("retry")
        .is_empty());
    assert_eq!(writer.covered_lsn(), 0x200);
    assert_clean(&dir);
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read");
    let mut expected = expected_order(&batch1);
    expected.extend(expected_order(&batch2));
    assert_eq!(rows, expected);
}

// ---------------------------------------------------------------------------------------
// Real crashes: a child process aborts at a crash point.
// ---------------------------------------------------------------------------------------

const CHILD_ROOT_ENV: &str = "COLDTIER_TEST_CRASH_ROOT";

/// Body of the child process of the crash tests: a no-op unless the crash tests run it
/// with [`CHILD_ROOT_ENV`] set, then it writes batch 2 under [`CRASH_ENV`].
#[test]
fn crash_child_process() {
    let Some(root) = std::env::var_os(CHILD_ROOT_ENV) else {
        return;
    };
    let mut writer =
        ColdTableWriter::open(Path::new(&root), TENANT, TABLE, &columns()).expect("child open");
    writer
        .write(&two_date_batch(10, 0x200), 0x200, 0x200)
        .expect("child write");
}

fn crash_at(point: &str) -> (tempfile::TempDir, Vec<ColdRow>) {
    let root = tempfile::tempdir().expect("tempdir");
    let batch1 = setup_published(root.path());
    let module = module_path!();
    let test_name = format!(
        "{}::crash_child_process",
        module.split_once("::").map_or(module, |(_, rest)| rest)
    );
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            test_name.as_str(),
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ROOT_ENV, root.path())
        .env(CRASH_ENV, point)
        .output()
        .expect("spawn child");
    assert!(!output.status.success(), "child did not crash at {point}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(6),
            "child did not abort at {point}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    (root, batch1)
}

#[test]
fn crash_after_temp_loses_the_uncommitted_write() {
    let (root, batch1) = crash_at("parquet-after-temp");
    let batch2 = two_date_batch(10, 0x200);
    assert!(
        fs::read_dir(tdir(root.path()).join(TEMP_DIR))
            .expect("tmp")
            .count()
            == 2
    );
    assert_recovers(root.path(), &expected_order(&batch1), &batch1, &batch2);
}

#[test]
fn crash_after_manifest_keeps_the_committed_write() {
    let (root, batch1) = crash_at("parquet-after-manifest");
    let batch2 = two_date_batch(10, 0x200);
    let mut expected = expected_order(&batch1);
    expected.extend(expected_order(&batch2));
    assert_recovers(root.path(), &expected, &batch1, &batch2);
}

#[test]
fn crash_mid_rename_keeps_the_committed_write() {
    let (root, batch1) = crash_at("parquet-mid-rename");
    let batch2 = two_date_batch(10, 0x200);
    assert_eq!(
        fs::read_dir(tdir(root.path()).join(TEMP_DIR))
            .expect("tmp")
            .count(),
        1,
        "exactly one rename done"
    );
    let mut expected = expected_order(&batch1);
    expected.extend(expected_order(&batch2));
    assert_recovers(root.path(), &expected, &batch1, &batch2);
}
