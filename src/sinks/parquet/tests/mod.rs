//! Tests of the cold tier: value conversions, path escaping, layout, checksum
//! verification and schema errors. Recovery of the commit protocol (crash states built by
//! hand, real aborts in a child process) is in `recovery.rs`; the helpers here serve both.

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

fn values(vals: &[Option<&str>]) -> Vec<Option<Text>> {
    vals.iter().map(|v| v.map(Text::from)).collect()
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
        tombstone: false,
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

/// Runs the test `child` (a path below this module, e.g. `recovery::crash_child_process`)
/// in a child process of this test binary with `root_env` set to `root` and
/// [`CRASH_ENV`] to `point`, and checks that it aborted there.
fn run_crash_child(child: &str, root_env: &str, root: &Path, point: &str) {
    let module = module_path!();
    let test_name = format!(
        "{}::{child}",
        module.split_once("::").map_or(module, |(_, rest)| rest)
    );
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            test_name.as_str(),
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(root_env, root)
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
        // Only `id` differs between the rows: every other column is uniform (one value
        // or all NULL) and stays uncompressed.
        if name == "id" {
            assert!(
                matches!(chunk.compression(), Compression::ZSTD(_)),
                "{name}"
            );
        } else {
            assert_eq!(chunk.compression(), Compression::UNCOMPRESSED, "{name}");
        }
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

mod compaction;
mod large;
mod recovery;
mod round_trip;
mod values;

#[test]
fn uniform_columns_are_told_apart() {
    use crate::sinks::parquet::writer::is_uniform;
    use arrow_array::{BooleanArray, Float64Array, Int32Array, StringArray, UInt64Array};
    assert!(is_uniform(&Int32Array::from(vec![7, 7, 7])));
    assert!(!is_uniform(&Int32Array::from(vec![7, 7, 8])));
    assert!(is_uniform(&Int32Array::from(vec![None::<i32>, None])));
    assert!(!is_uniform(&Int32Array::from(vec![Some(7), None])));
    assert!(is_uniform(&Int32Array::from(Vec::<i32>::new())));
    assert!(is_uniform(&UInt64Array::from(vec![u64::MAX; 4])));
    assert!(!is_uniform(&UInt64Array::from(vec![1, 2])));
    assert!(is_uniform(&StringArray::from(vec!["t1", "t1"])));
    assert!(!is_uniform(&StringArray::from(vec!["t1", "t2"])));
    assert!(is_uniform(&BooleanArray::from(vec![false, false])));
    assert!(!is_uniform(&BooleanArray::from(vec![false, true])));
    assert!(is_uniform(&Float64Array::from(vec![0.5, 0.5])));
    assert!(!is_uniform(&Float64Array::from(vec![0.5, -0.5])));
}
