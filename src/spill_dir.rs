//! Where the process spills: the sinks' large transactions, the reader's spool of streamed
//! transactions and the history books' rows go to unlinked temporary files in one
//! directory, `--spill-dir` or else `$TMPDIR`. Memory stays bounded only if that directory
//! is on a disk: a spill into a `tmpfs` stays in memory, so start-up names one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Why a spill directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpillDirError {
    /// Not a directory, missing, or not writable.
    #[error("spill directory {}: {reason}", path.display())]
    Unusable {
        /// The directory given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process already spills elsewhere (set once, at start).
    #[error("spill directory already set to {}", .0.display())]
    AlreadySet(PathBuf),
}

/// What start-up learned of the spill directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillDir {
    /// The directory.
    pub path: PathBuf,
    /// It is on a `tmpfs`: what is spilled there stays in memory.
    pub in_memory: bool,
}

/// Spills into `dir` from now on, once it proved a writable directory.
pub fn set(dir: &Path) -> Result<SpillDir, SpillDirError> {
    let checked = check(dir)?;
    DIR.set(checked.path.clone())
        .map_err(|_| SpillDirError::AlreadySet(current()))?;
    Ok(checked)
}

/// Checks that `dir` can take spill files.
pub fn check(dir: &Path) -> Result<SpillDir, SpillDirError> {
    let unusable = |reason: String| SpillDirError::Unusable {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(dir).map_err(|e| unusable(e.to_string()))?;
    if !meta.is_dir() {
        return Err(unusable("not a directory".into()));
    }
    tempfile::tempfile_in(dir).map_err(|e| unusable(format!("cannot create a file: {e}")))?;
    Ok(SpillDir {
        path: dir.to_path_buf(),
        in_memory: is_tmpfs(dir),
    })
}

/// The directory spill files go to.
pub fn current() -> PathBuf {
    DIR.get().cloned().unwrap_or_else(std::env::temp_dir)
}

/// A new unlinked spill file (gone when closed, whatever happens to the process).
pub fn spill_file() -> std::io::Result<File> {
    tempfile::tempfile_in(current())
}

/// Whether `dir` is on a `tmpfs` (Linux; `false` where that cannot be told).
fn is_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string and `stat` a zeroed struct statfs fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let done = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    done == 0 && stat.f_type as i64 == TMPFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_directory_is_accepted_and_garbage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checked = check(dir.path()).expect("usable");
        assert_eq!(checked.path, dir.path());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        let err = check(&file)
            .expect_err("a file is not a directory")
            .to_string();
        assert!(
            err.contains("not a directory") && err.contains("/f"),
            "{err}"
        );
        let err = check(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn spill_files_go_to_the_directory_set_once() {
        use std::os::fd::AsRawFd;
        // Kept for the whole test process: other tests may spill here from now on.
        let dir = tempfile::tempdir().expect("tempdir").keep();
        set(&dir).expect("usable");
        let file = spill_file().expect("spill file");
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("fd link");
        assert!(
            link.starts_with(&dir),
            "{} not in {}",
            link.display(),
            dir.display()
        );
        assert!(
            link.to_string_lossy().ends_with("(deleted)"),
            "unlinked: {}",
            link.display()
        );
        assert!(matches!(set(&dir), Err(SpillDirError::AlreadySet(_))));
    }

    #[test]
    fn a_tmpfs_is_told_from_a_disk() {
        // /dev/shm is a tmpfs on Linux, /proc is not (a path it cannot stat neither).
        if Path::new("/dev/shm").is_dir() {
            assert!(is_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!is_tmpfs(Path::new("/proc")));
        assert!(!is_tmpfs(Path::new("/no/such/dir")));
    }
}
