//! Compaction of a table directory: runs of small files merged in place, rows and their
//! order unchanged, runs cut at dates, schema changes and large files, and every crash
//! point recovered to a table that reads the same.

use super::*;
use crate::sinks::parquet::writer::{CompactionPolicy, COMPACTION};

const POLICY: CompactionPolicy = CompactionPolicy {
    small_rows: 10,
    min_files: 4,
    max_rows: 1_000,
};

/// `writes` writes of three rows on two dates each (LSN 0x100, 0x200, ...), then one of
/// 40 rows on the first date: every write but the last is small under [`POLICY`].
fn small_writes(root: &Path, writes: u32) -> Vec<ColdRow> {
    let mut writer = ColdTableWriter::open(root, TENANT, TABLE, &columns()).expect("open");
    let mut expected = Vec::new();
    for w in 0..writes {
        let lsn = Lsn::from(w + 1) * 0x100;
        let rows = two_date_batch(w as i32 * 3, lsn);
        writer.write(&rows, lsn, lsn).expect("small write");
        expected.extend(expected_order(&rows));
    }
    let lsn = Lsn::from(writes + 1) * 0x100;
    let big: Vec<ColdRow> = (0..40)
        .map(|i| simple_row(10_000 + i, lsn, pg_ts(2026, 11, 24, 12)))
        .collect();
    writer.write(&big, lsn, lsn).expect("large write");
    expected.extend(big);
    expected
}

fn manifest(root: &Path) -> Manifest {
    Manifest::load(&tdir(root)).expect("load").expect("exists")
}

#[test]
fn small_files_merge_in_place_and_the_table_reads_the_same() {
    let root = tempfile::tempdir().expect("tempdir");
    let expected = small_writes(root.path(), 6);
    let before = manifest(root.path());
    assert_eq!(before.files.len(), 13, "six writes of two dates, one large");
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read before");
    assert_eq!(rows, expected);

    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    assert!(writer.wants_compaction(&POLICY));
    assert!(
        !writer.wants_compaction(&COMPACTION),
        "13 files are fewer than 16"
    );
    let done = writer.compact(&POLICY).expect("compact");
    // Manifest order alternates the two dates, so every run is one file long and
    // nothing merges: the rows' order across files must not change.
    assert_eq!(done, Default::default());
    assert_eq!(manifest(root.path()), before);
    // Nothing it could merge: it waits for `min_files` new small files before it looks
    // again.
    assert!(!writer.wants_compaction(&POLICY));
    for w in 0..4u32 {
        let lsn = 0x1000 + Lsn::from(w);
        let rows = [simple_row(90 + w as i32, lsn, pg_ts(2026, 11, 24, 10))];
        assert!(!writer.wants_compaction(&POLICY), "after {w} new files");
        writer.write(&rows, lsn, lsn).expect("write");
    }
    assert!(writer.wants_compaction(&POLICY));
    let done = writer.compact(&POLICY).expect("compact");
    assert_eq!(
        (done.files_in, done.files_out),
        (4, 1),
        "the four new ones, in a run"
    );

    // One date per write: the writes form one run (the large file ends it).
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    let mut expected = Vec::new();
    for w in 0..6u32 {
        let lsn = Lsn::from(w + 1) * 0x100;
        let rows: Vec<ColdRow> = (0..3)
            .map(|i| simple_row((w * 3 + i) as i32, lsn, pg_ts(2026, 11, 24, 10)))
            .collect();
        writer.write(&rows, lsn, lsn).expect("write");
        expected.extend(rows);
    }
    let lsn = 0x700;
    let big: Vec<ColdRow> = (0..40)
        .map(|i| simple_row(1_000 + i, lsn, pg_ts(2026, 11, 24, 12)))
        .collect();
    writer.write(&big, lsn, lsn).expect("large write");
    expected.extend(big);
    let lsn = 0x800;
    let tail = vec![simple_row(5_000, lsn, pg_ts(2026, 11, 24, 13))];
    writer.write(&tail, lsn, lsn).expect("small write after");
    expected.extend(tail);
    let covered = writer.covered_lsn();

    let done = writer.compact(&POLICY).expect("compact");
    assert_eq!((done.files_in, done.files_out, done.rows), (6, 1, 18));
    assert!(done.bytes_out < done.bytes_in, "{done:?}");
    let after = manifest(root.path());
    let paths: Vec<&str> = after.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "date=2026-11-24/part-0000000000000100-0000000000000600.parquet",
            "date=2026-11-24/part-0000000000000700-0000000000000700.parquet",
            "date=2026-11-24/part-0000000000000800-0000000000000800.parquet",
        ]
    );
    assert_eq!(after.covered_lsn, covered);
    assert_clean(&tdir(root.path()));
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read after");
    assert_eq!(rows, expected, "same rows in the same order");

    // Writing on: replays of compacted LSNs are skipped, new rows land after.
    let replay = vec![simple_row(0, 0x300, pg_ts(2026, 11, 24, 10))];
    assert!(writer
        .write(&replay, 0x300, 0x300)
        .expect("replay")
        .is_empty());
    let next = vec![simple_row(6_000, 0x900, pg_ts(2026, 11, 24, 14))];
    writer.write(&next, 0x900, 0x900).expect("write after");
    let (_, rows) = read_table(root.path(), TENANT, TABLE).expect("read");
    assert_eq!(rows.len(), expected.len() + 1);
    // A second compaction merges the two small files after the large one.
    let again = writer.compact(&POLICY).expect("compact again");
    assert_eq!((again.files_in, again.files_out), (2, 1));
    assert_eq!(manifest(root.path()).files.len(), 3);
}

#[test]
fn runs_stop_at_a_schema_change_and_at_the_row_limit() {
    let root = tempfile::tempdir().expect("tempdir");
    let day = pg_ts(2026, 7, 1, 0);
    let old_cols = vec![ColdColumn::new("id", "integer")];
    let new_cols = vec![
        ColdColumn::new("id", "integer"),
        ColdColumn::new("name", "text"),
    ];
    let mut lsn = 0;
    let mut write = |cols: &[ColdColumn], vals: &[Option<&str>]| {
        lsn += 1;
        let mut w = ColdTableWriter::open(root.path(), TENANT, TABLE, cols).expect("open");
        w.write(&[open_row(lsn, day, vals)], lsn, lsn)
            .expect("write");
    };
    for _ in 0..3 {
        write(&old_cols, &[Some("1")]);
    }
    for _ in 0..3 {
        write(&new_cols, &[Some("2"), Some("two")]);
    }
    let (_, before) = read_table(root.path(), TENANT, TABLE).expect("read");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &new_cols).expect("open");
    let done = writer
        .compact(&CompactionPolicy {
            max_rows: 2,
            ..POLICY
        })
        .expect("compact");
    // Runs of at most two rows on each side of the schema change: 3 → 2 + 1 and 3 → 2 + 1.
    assert_eq!((done.files_in, done.files_out), (4, 2));
    assert_eq!(manifest(root.path()).files.len(), 4);
    let (_, after) = read_table(root.path(), TENANT, TABLE).expect("read");
    assert_eq!(after, before);
    assert_eq!(after[0].values, values(&[Some("1"), None]));
    assert_eq!(after[5].values, values(&[Some("2"), Some("two")]));
}

#[test]
fn a_damaged_input_stops_the_compaction_and_loses_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut writer = ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("open");
    for w in 1..=4u32 {
        let lsn = Lsn::from(w);
        let rows = [simple_row(w as i32, lsn, pg_ts(2026, 11, 24, 10))];
        writer.write(&rows, lsn, lsn).expect("write");
    }
    let before = manifest(root.path());
    let victim = tdir(root.path()).join(&before.files[2].path);
    let mut bytes = fs::read(&victim).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    fs::write(&victim, &bytes).expect("damage");
    let err = writer.compact(&POLICY).expect_err("a damaged input");
    assert!(
        err.to_string().contains(&before.files[2].path),
        "the error names the file: {err}"
    );
    assert_eq!(manifest(root.path()), before, "nothing was committed");
    // The next write recovers: nothing staged is left, every file still listed.
    let lsn = 5;
    writer
        .write(&[simple_row(5, lsn, pg_ts(2026, 11, 24, 10))], lsn, lsn)
        .expect("write after");
    assert!(fs::read_dir(tdir(root.path()).join(TEMP_DIR))
        .expect("tmp")
        .next()
        .is_none());
    assert_eq!(manifest(root.path()).files.len(), 5);
}

// ---------------------------------------------------------------------------------------
// Real crashes: a child process aborts at each compaction crash point.
// ---------------------------------------------------------------------------------------

const CHILD_ROOT_ENV: &str = "COLDTIER_TEST_COMPACT_ROOT";

/// Five small writes of one date each, the rows in order.
fn five_small(root: &Path) -> Vec<ColdRow> {
    let mut writer = ColdTableWriter::open(root, TENANT, TABLE, &columns()).expect("open");
    let mut all = Vec::new();
    for w in 1..=5u32 {
        let lsn = Lsn::from(w);
        let rows = [simple_row(w as i32, lsn, pg_ts(2026, 11, 24, 10))];
        writer.write(&rows, lsn, lsn).expect("write");
        all.extend(rows);
    }
    all
}

/// Body of the child process: compacts the root it is given under [`CRASH_ENV`].
#[test]
fn compaction_crash_child_process() {
    let Some(root) = std::env::var_os(CHILD_ROOT_ENV) else {
        return;
    };
    let mut writer =
        ColdTableWriter::open(Path::new(&root), TENANT, TABLE, &columns()).expect("child open");
    writer.compact(&POLICY).expect("child compact");
}

fn crash_compaction_at(point: &str) -> (tempfile::TempDir, Vec<ColdRow>) {
    let root = tempfile::tempdir().expect("tempdir");
    let rows = five_small(root.path());
    run_crash_child(
        "compaction::compaction_crash_child_process",
        CHILD_ROOT_ENV,
        root.path(),
        point,
    );
    (root, rows)
}

#[test]
fn a_crash_at_any_compaction_step_recovers_to_the_same_rows() {
    for (point, files_after) in [
        ("parquet-compact-staged", 5),
        ("parquet-compact-after-manifest", 1),
        ("parquet-compact-mid-delete", 1),
    ] {
        let (root, rows) = crash_compaction_at(point);
        let listed = manifest(root.path()).files.len();
        assert_eq!(listed, files_after, "{point}: files listed after the crash");
        let writer =
            ColdTableWriter::open(root.path(), TENANT, TABLE, &columns()).expect("recovering");
        assert_clean(&tdir(root.path()));
        let (_, read) = read_table(root.path(), TENANT, TABLE).expect("read");
        assert_eq!(read, rows, "{point}");
        assert_eq!(writer.covered_lsn(), 5, "{point}");
    }
}
