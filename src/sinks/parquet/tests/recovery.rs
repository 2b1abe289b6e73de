//! Recovery of the commit protocol: crash states built by hand, and real aborts at each
//! crash point in a child process.

use super::*;

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
    run_crash_child(
        "recovery::crash_child_process",
        CHILD_ROOT_ENV,
        root.path(),
        point,
    );
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
