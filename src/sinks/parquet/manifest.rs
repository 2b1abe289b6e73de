//! The per-table manifest `_manifest.json`: the list of published files with their row
//! counts, LSN ranges, sizes and SHA-256 checksums, the latest column list, and the
//! covered LSN. Writing it (atomically: temp file, fsync, rename, fsync the directory)
//! is the commit point of every write; a file it does not list does not exist for
//! readers.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::{parse_relative_path, MANIFEST_FILE, MANIFEST_TMP_FILE};
use super::{ColdColumn, ParquetError};
use crate::change::Lsn;

/// The manifest format this code reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// One published file, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the table directory: `date=yyyy-mm-dd/part-<lo>-<hi>.parquet`.
    pub path: String,
    /// Number of rows in the file.
    pub rows: u64,
    /// Low end of the LSN range of the write that produced the file.
    pub lsn_min: Lsn,
    /// High end of that range: everything up to it is covered once the file is listed.
    pub lsn_max: Lsn,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// The content of `_manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The tenant (unescaped).
    pub tenant: String,
    /// The table (unescaped).
    pub table: String,
    /// The latest column list; each file keeps its own schema.
    pub columns: Vec<ColdColumn>,
    /// Published files in publication order.
    pub files: Vec<FileEntry>,
    /// The largest `lsn_max` over `files` (0 if none).
    pub covered_lsn: Lsn,
}

impl Manifest {
    /// An empty manifest for a table.
    pub fn new(tenant: &str, table: &str, columns: &[ColdColumn]) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            tenant: tenant.to_string(),
            table: table.to_string(),
            columns: columns.to_vec(),
            files: Vec::new(),
            covered_lsn: 0,
        }
    }

    /// How many of the listed files hold fewer than `small_rows` rows.
    pub fn small_files(&self, small_rows: u64) -> usize {
        self.files.iter().filter(|f| f.rows < small_rows).count()
    }

    /// The manifest's path in a table directory.
    pub fn path(table_dir: &Path) -> PathBuf {
        table_dir.join(MANIFEST_FILE)
    }

    /// The largest `lsn_max` over the files (0 if none).
    pub fn max_lsn(&self) -> Lsn {
        self.files.iter().map(|f| f.lsn_max).max().unwrap_or(0)
    }

    /// Loads the manifest of a table directory: `Ok(None)` if there is none; an error
    /// naming the file if it is unreadable, not JSON of the expected shape, of another
    /// format number, or inconsistent (unsafe paths, duplicates, wrong `covered_lsn`).
    pub fn load(table_dir: &Path) -> Result<Option<Manifest>, ParquetError> {
        let path = Self::path(table_dir);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ParquetError::io("read", &path, e)),
        };
        let bad = |reason: String| ParquetError::Manifest {
            path: path.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match value.get("format").and_then(serde_json::Value::as_u64) {
            Some(n) if n == u64::from(MANIFEST_FORMAT) => {}
            Some(n) => {
                return Err(bad(format!(
                    "format {n} is not supported (expected {MANIFEST_FORMAT})"
                )))
            }
            None => return Err(bad("no numeric \"format\" field".to_string())),
        }
        let manifest: Manifest =
            serde_json::from_value(value).map_err(|e| bad(format!("unexpected content: {e}")))?;
        manifest.check().map_err(bad)?;
        Ok(Some(manifest))
    }

    /// Checks the invariants `load` relies on; the error is the reason.
    fn check(&self) -> Result<(), String> {
        let mut seen = HashSet::new();
        for entry in &self.files {
            let Some((_, lo, hi)) = parse_relative_path(&entry.path) else {
                return Err(format!(
                    "file path {:?} is not a data-file path",
                    entry.path
                ));
            };
            if lo != entry.lsn_min || hi != entry.lsn_max || lo > hi {
                return Err(format!(
                    "file {:?} does not match its LSN range {:016X}..{:016X}",
                    entry.path, entry.lsn_min, entry.lsn_max
                ));
            }
            if !seen.insert(entry.path.as_str()) {
                return Err(format!("file {:?} is listed twice", entry.path));
            }
        }
        if self.covered_lsn != self.max_lsn() {
            return Err(format!(
                "covered_lsn {} is not the largest lsn_max {}",
                self.covered_lsn,
                self.max_lsn()
            ));
        }
        Ok(())
    }

    /// Writes the manifest atomically into a table directory: `_manifest.json.tmp`,
    /// fsync, rename over `_manifest.json`, fsync the directory. Once this returns, the
    /// new manifest is durable.
    pub fn store(&self, table_dir: &Path) -> Result<(), ParquetError> {
        let tmp = table_dir.join(MANIFEST_TMP_FILE);
        let path = Self::path(table_dir);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| ParquetError::Manifest {
            path: path.clone(),
            reason: format!("cannot serialise: {e}"),
        })?;
        json.push(b'\n');
        let mut file = File::create(&tmp).map_err(|e| ParquetError::io("create", &tmp, e))?;
        file.write_all(&json)
            .map_err(|e| ParquetError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| ParquetError::io("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| ParquetError::io("rename", &tmp, e))?;
        sync_dir(table_dir)
    }
}

/// Fsyncs a directory, making the creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), ParquetError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ParquetError::io("fsync", dir, e))
}

/// Size and SHA-256 (lowercase hex) of everything readable from `file` (from its current
/// position); `path` is only for the error.
pub fn hash_reader(file: &mut impl Read, path: &Path) -> Result<(u64, String), ParquetError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ParquetError::io("read", path, e)),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Size and SHA-256 of a file on disk.
pub fn hash_file(path: &Path) -> Result<(u64, String), ParquetError> {
    let mut file = File::open(path).map_err(|e| ParquetError::io("open", path, e))?;
    hash_reader(&mut file, path)
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 0x0F)]));
    }
    out
}

/// Checks a file against its manifest entry: the size first, then the SHA-256.
pub fn verify_file(path: &Path, entry: &FileEntry) -> Result<(), ParquetError> {
    let mut file = File::open(path).map_err(|e| ParquetError::io("open", path, e))?;
    verify_open_file(&mut file, path, entry)
}

/// Like [`verify_file`] on an already open file, read from its current position.
pub fn verify_open_file(
    file: &mut File,
    path: &Path,
    entry: &FileEntry,
) -> Result<(), ParquetError> {
    let size = file
        .metadata()
        .map_err(|e| ParquetError::io("stat", path, e))?
        .len();
    if size != entry.bytes {
        return Err(ParquetError::SizeMismatch {
            path: path.to_path_buf(),
            expected: entry.bytes,
            actual: size,
        });
    }
    let (read, sha) = hash_reader(file, path)?;
    if read != entry.bytes {
        return Err(ParquetError::SizeMismatch {
            path: path.to_path_buf(),
            expected: entry.bytes,
            actual: read,
        });
    }
    if sha != entry.sha256 {
        return Err(ParquetError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: entry.sha256.clone(),
            actual: sha,
        });
    }
    Ok(())
}
