//! The progress of a job whose sinks keep no PostgreSQL target (a Parquet cold tier,
//! maybe with NATS): the same two positions as `helios.job_progress` (where the completed
//! snapshot was taken, the last position recorded before it was confirmed to the source),
//! kept in `<root>/_jobs/<job>.json` under the job's first Parquet root.
//!
//! The file is replaced atomically (temp file, fsync, rename, fsync the directory), so a
//! crash leaves the old or the new content, never a mix. A file that does not parse, or
//! belongs to another job, is an error naming it: the job does not guess its position.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::change::{format_lsn, parse_lsn, Lsn};
use crate::sinks::parquet::encode_path_value;
use crate::sinks::pg_apply::store::JobProgress;

/// The progress file format this code reads and writes.
pub const PROGRESS_FORMAT: u32 = 1;
/// Directory under the cold root holding the jobs' progress files (the readers list only
/// `tenant=` directories, so it is never taken for data).
pub const JOBS_DIR: &str = "_jobs";

/// Why the progress file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ColdProgressError {
    /// Reading or writing failed.
    #[error("job progress {}: {op}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file exists but its content is not a progress record of this job.
    #[error("job progress {}: {reason}; move it away to take a new snapshot", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The file's content: LSNs in PostgreSQL's text form, so that a person can read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressFile {
    format: u32,
    job: String,
    slot: String,
    snapshot_lsn: Option<String>,
    confirmed_lsn: Option<String>,
    /// What the snapshot loaded (`control::coverage::Coverage`); absent in files of a
    /// version that did not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coverage: Option<serde_json::Value>,
}

/// The progress file of `job` under `root`.
pub fn progress_path(root: &Path, job: &str) -> PathBuf {
    root.join(JOBS_DIR)
        .join(format!("{}.json", encode_path_value(job)))
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ColdProgressError {
    let path = path.to_owned();
    move |source| ColdProgressError::Io { op, path, source }
}

/// Reads the job's progress; no file means no snapshot yet.
pub fn load_progress(root: &Path, job: &str) -> Result<JobProgress, ColdProgressError> {
    Ok(match load_file(root, job)? {
        None => JobProgress::default(),
        Some((file, path)) => JobProgress {
            snapshot_lsn: lsn_field(&path, "snapshot_lsn", file.snapshot_lsn.as_deref())?,
            confirmed_lsn: lsn_field(&path, "confirmed_lsn", file.confirmed_lsn.as_deref())?,
        },
    })
}

fn load_file(root: &Path, job: &str) -> Result<Option<(ProgressFile, PathBuf)>, ColdProgressError> {
    let path = progress_path(root, job);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path)(e)),
    };
    let invalid = |reason: String| ColdProgressError::Invalid {
        path: path.clone(),
        reason,
    };
    let file: ProgressFile =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not a progress record: {e}")))?;
    if file.format != PROGRESS_FORMAT {
        return Err(invalid(format!(
            "format {} (this version reads {PROGRESS_FORMAT})",
            file.format
        )));
    }
    if file.job != job {
        return Err(invalid(format!(
            "belongs to job `{}`, not `{job}`",
            file.job
        )));
    }
    Ok(Some((file, path)))
}

fn lsn_field(
    path: &Path,
    field: &str,
    text: Option<&str>,
) -> Result<Option<Lsn>, ColdProgressError> {
    text.map(|t| {
        parse_lsn(t).ok_or_else(|| ColdProgressError::Invalid {
            path: path.to_owned(),
            reason: format!("{field} {t:?} is not an LSN (like 0/16B3748)"),
        })
    })
    .transpose()
}

/// Records a completed snapshot at `lsn` (both positions become `lsn`) that loaded
/// `coverage`.
pub fn record_snapshot(
    root: &Path,
    job: &str,
    slot: &str,
    lsn: Lsn,
    coverage: &serde_json::Value,
) -> Result<(), ColdProgressError> {
    store(
        root,
        &ProgressFile {
            format: PROGRESS_FORMAT,
            job: job.to_owned(),
            slot: slot.to_owned(),
            snapshot_lsn: Some(format_lsn(lsn)),
            confirmed_lsn: Some(format_lsn(lsn)),
            coverage: Some(coverage.clone()),
        },
    )
}

/// What the job's snapshot loaded, as recorded (`None`: no file, or a file of a version
/// that did not record it).
pub fn load_coverage(
    root: &Path,
    job: &str,
) -> Result<Option<serde_json::Value>, ColdProgressError> {
    Ok(load_file(root, job)?.and_then(|(file, _)| file.coverage))
}

/// Records what the job's cold tier holds (a job without a progress file has nothing
/// to record).
pub fn record_coverage(
    root: &Path,
    job: &str,
    coverage: &serde_json::Value,
) -> Result<(), ColdProgressError> {
    let Some((mut file, _)) = load_file(root, job)? else {
        return Ok(());
    };
    file.coverage = Some(coverage.clone());
    store(root, &file)
}

/// Forgets the snapshot (before a new one), keeping the slot's name.
pub fn clear_snapshot(root: &Path, job: &str) -> Result<(), ColdProgressError> {
    let Some((mut file, _)) = load_file(root, job)? else {
        return Ok(());
    };
    file.snapshot_lsn = None;
    file.confirmed_lsn = None;
    store(root, &file)
}

/// Records the position about to be confirmed to the source; never moves it back. A job
/// without a snapshot has nothing to record.
pub fn record_confirmed(root: &Path, job: &str, lsn: Lsn) -> Result<(), ColdProgressError> {
    let Some((mut file, path)) = load_file(root, job)? else {
        return Ok(());
    };
    let recorded = lsn_field(&path, "confirmed_lsn", file.confirmed_lsn.as_deref())?;
    if recorded.is_some_and(|r| r >= lsn) {
        return Ok(());
    }
    file.confirmed_lsn = Some(format_lsn(lsn));
    store(root, &file)
}

fn store(root: &Path, file: &ProgressFile) -> Result<(), ColdProgressError> {
    let path = progress_path(root, &file.job);
    let dir = root.join(JOBS_DIR);
    fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
    let tmp = path.with_extension("json.tmp");
    let mut json = serde_json::to_vec_pretty(file).map_err(|e| ColdProgressError::Invalid {
        path: path.clone(),
        reason: format!("cannot serialise: {e}"),
    })?;
    json.push(b'\n');
    let mut out = File::create(&tmp).map_err(io_error("create", &tmp))?;
    out.write_all(&json).map_err(io_error("write", &tmp))?;
    out.sync_all().map_err(io_error("fsync", &tmp))?;
    drop(out);
    fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", &dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_is_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load_progress(dir.path(), "j").unwrap(),
            JobProgress::default()
        );
        // Nothing to confirm before a snapshot, and no file appears.
        record_confirmed(dir.path(), "j", 10).unwrap();
        assert!(!progress_path(dir.path(), "j").exists());
    }

    #[test]
    fn snapshot_then_confirmed_positions_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        record_snapshot(
            dir.path(),
            "j",
            "slot_j",
            0x100,
            &serde_json::json!({"tables": {}}),
        )
        .unwrap();
        let p = load_progress(dir.path(), "j").unwrap();
        assert_eq!(
            (p.snapshot_lsn, p.confirmed_lsn),
            (Some(0x100), Some(0x100))
        );
        record_confirmed(dir.path(), "j", 0x2_0000_0300).unwrap();
        record_confirmed(dir.path(), "j", 0x200).unwrap();
        let p = load_progress(dir.path(), "j").unwrap();
        assert_eq!(
            (p.snapshot_lsn, p.confirmed_lsn),
            (Some(0x100), Some(0x2_0000_0300))
        );
        let text = fs::read_to_string(progress_path(dir.path(), "j")).unwrap();
        assert!(text.contains("\"2/300\""), "{text}");
        clear_snapshot(dir.path(), "j").unwrap();
        assert_eq!(
            load_progress(dir.path(), "j").unwrap(),
            JobProgress::default()
        );
    }

    #[test]
    fn coverage_is_kept_with_the_positions_and_older_files_have_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_coverage(dir.path(), "j").unwrap(), None);
        let path = progress_path(dir.path(), "j");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A file written before coverage was kept.
        fs::write(
            &path,
            r#"{"format":1,"job":"j","slot":"s","snapshot_lsn":"0/1","confirmed_lsn":"0/2"}"#,
        )
        .unwrap();
        assert_eq!(load_coverage(dir.path(), "j").unwrap(), None);
        let c = serde_json::json!({"tables": {"public.t": {"column": "t", "include": [1]}}});
        record_coverage(dir.path(), "j", &c).unwrap();
        record_confirmed(dir.path(), "j", 0x300).unwrap();
        assert_eq!(load_coverage(dir.path(), "j").unwrap(), Some(c));
        assert_eq!(
            load_progress(dir.path(), "j").unwrap().confirmed_lsn,
            Some(0x300)
        );
    }

    #[test]
    fn jobs_keep_separate_files() {
        let dir = tempfile::tempdir().unwrap();
        record_snapshot(dir.path(), "a/b", "s1", 1, &serde_json::json!({})).unwrap();
        record_snapshot(dir.path(), "a", "s2", 2, &serde_json::json!({})).unwrap();
        assert_eq!(
            load_progress(dir.path(), "a/b").unwrap().snapshot_lsn,
            Some(1)
        );
        assert_eq!(
            load_progress(dir.path(), "a").unwrap().snapshot_lsn,
            Some(2)
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = progress_path(dir.path(), "j");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (content, wanted) in [
            ("{not json", "not a progress record"),
            (
                r#"{"format":1,"job":"other","slot":"s","snapshot_lsn":null,"confirmed_lsn":null}"#,
                "belongs to job `other`",
            ),
            (
                r#"{"format":9,"job":"j","slot":"s","snapshot_lsn":null,"confirmed_lsn":null}"#,
                "format 9",
            ),
            (
                r#"{"format":1,"job":"j","slot":"s","snapshot_lsn":"0/1","confirmed_lsn":"zz"}"#,
                "confirmed_lsn \"zz\" is not an LSN",
            ),
        ] {
            fs::write(&path, content).unwrap();
            let err = load_progress(dir.path(), "j").unwrap_err().to_string();
            assert!(err.contains(wanted), "{content}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            // Nothing overwrites a file it cannot read.
            assert!(record_confirmed(dir.path(), "j", 5).is_err());
            assert_eq!(fs::read_to_string(&path).unwrap(), content);
        }
    }
}
