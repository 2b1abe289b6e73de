//! The cold tier of bi-temporal history: versions of source rows kept as Parquet files.
//!
//! Each row is one *version* of a source row (or the record that a version was closed)
//! with four time columns: `valid_from`/`valid_to` (application time) and
//! `system_from`/`system_to` (when the replicator learnt it, with the commit LSNs).
//!
//! Files live under
//! `<root>/tenant=<t>/table=<table>/date=<yyyy-mm-dd>/part-<lsn_lo>-<lsn_hi>.parquet`
//! (`part-<lsn>-<lsn>-<piece>.parquet` for the pieces of a large transaction,
//! [`large_txn`]) ([`layout`]); a per-table `_manifest.json` ([`manifest`]) lists every published file
//! with its checksum and is the only source of truth: a file not in it does not exist for
//! readers. [`writer::ColdTableWriter`] publishes files with a crash-safe commit protocol
//! (temp files, then the manifest as the commit point, then renames) and recovers any
//! interrupted write when it opens; [`reader::read_table`] reads everything back,
//! verifying sizes and checksums.
//!
//! Values travel in PostgreSQL's text form; a few types are stored typed ([`schema`])
//! and converted back to exactly the same text.

pub mod large_txn;
pub mod layout;
pub mod manifest;
pub mod piece;
pub mod reader;
pub mod schema;
pub mod sink;
pub mod writer;

#[cfg(test)]
mod tests;

/// Cold rows for tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{ChangeOp, ColdEvent, ColdRow};
    use crate::change::Lsn;

    /// A row of `values` (all set) opening a version at `from`, or closing it at `to`;
    /// valid from 0, system times equal to the LSNs.
    pub(crate) fn version_row(values: &[&str], from: Lsn, to: Option<Lsn>) -> ColdRow {
        ColdRow {
            event: if to.is_some() {
                ColdEvent::Close
            } else {
                ColdEvent::Open
            },
            op: ChangeOp::Insert,
            values: values.iter().map(|v| Some((*v).into())).collect(),
            valid_from: 0,
            valid_to: None,
            system_from: from as i64,
            system_from_lsn: from,
            system_to: to.map(|l| l as i64),
            system_to_lsn: to,
            tombstone: false,
        }
    }
}

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::change::{Lsn, Text};

pub use layout::{decode_path_value, encode_path_value, table_dir};
pub use manifest::{FileEntry, Manifest, MANIFEST_FORMAT};
pub use reader::{for_each_batch, list_tables, read_table};
pub use schema::{arrow_schema, columns_from_schema, FIXED_COLUMNS};
pub use sink::ParquetSink;
pub use writer::{
    crash_point, ColdTableWriter, Compacted, CompactionPolicy, CompactionStats, COMPACTION,
    CRASH_ENV,
};

/// One column of the source table: name and PostgreSQL type name (`format_type` output,
/// e.g. `integer`, `numeric(10,2)`, `timestamp with time zone`, `text[]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ColdColumn {
    /// The column's name in the source table.
    pub name: String,
    /// The column's PostgreSQL type as `format_type` prints it.
    pub pg_type: String,
    /// The column's number in the source's catalog (`ColumnInfo::attnum`), which a
    /// rename keeps; written into each file's field metadata, so a file's columns are
    /// found by it whatever they were called then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attnum: Option<i16>,
    /// The names the column had before, oldest first (in the manifest only): files
    /// written before a rename, without numbers, hold its values under one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_names: Vec<String>,
}

impl ColdColumn {
    /// A column from its name and PostgreSQL type name.
    pub fn new(name: impl Into<String>, pg_type: impl Into<String>) -> Self {
        ColdColumn {
            name: name.into(),
            pg_type: pg_type.into(),
            attnum: None,
            former_names: Vec::new(),
        }
    }

    /// `new`'s columns as a manifest keeps them: each with the former names of the column
    /// of `old` it continues (the one of the same number, or without numbers the one of
    /// the same name), and that column's name if it was renamed.
    pub fn with_former_names(old: &[ColdColumn], new: &[ColdColumn]) -> Vec<ColdColumn> {
        new.iter()
            .map(|c| {
                let before = old.iter().find(|o| match (o.attnum, c.attnum) {
                    (Some(a), Some(b)) => a == b,
                    _ => o.name == c.name,
                });
                let mut column = c.clone();
                if let Some(before) = before {
                    column.former_names = before.former_names.clone();
                    if before.name != c.name {
                        column.former_names.push(before.name.clone());
                    }
                    column.former_names.retain(|n| *n != c.name);
                }
                column
            })
            .collect()
    }
}

/// Whether a row opens a version or records that one was closed (stored as
/// `"open"`/`"close"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdEvent {
    /// The row opens a version: it became current at `system_from`.
    Open,
    /// The row records that a version stopped being current at `system_to`.
    Close,
}

impl ColdEvent {
    /// The stored text form: `"open"` or `"close"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ColdEvent::Open => "open",
            ColdEvent::Close => "close",
        }
    }
}

impl fmt::Display for ColdEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ColdEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(ColdEvent::Open),
            "close" => Ok(ColdEvent::Close),
            other => Err(format!(
                "unknown event {other:?} (expected \"open\" or \"close\")"
            )),
        }
    }
}

/// The source change that produced a row (stored as `"insert"`/`"update"`/`"delete"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// An `INSERT` on the source.
    Insert,
    /// An `UPDATE` on the source.
    Update,
    /// A `DELETE` on the source.
    Delete,
}

impl ChangeOp {
    /// The stored text form: `"insert"`, `"update"` or `"delete"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Update => "update",
            ChangeOp::Delete => "delete",
        }
    }
}

impl fmt::Display for ChangeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChangeOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insert" => Ok(ChangeOp::Insert),
            "update" => Ok(ChangeOp::Update),
            "delete" => Ok(ChangeOp::Delete),
            other => Err(format!(
                "unknown op {other:?} (expected \"insert\", \"update\" or \"delete\")"
            )),
        }
    }
}

/// One version row of the cold tier.
///
/// Times are microseconds since 2000-01-01 00:00 UTC (PostgreSQL's epoch). The row's
/// *commit LSN* is `system_from_lsn` for an [`ColdEvent::Open`] row and `system_to_lsn`
/// (which must be set) for a [`ColdEvent::Close`] row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdRow {
    /// Whether the row opens or closes a version.
    pub event: ColdEvent,
    /// The source change that produced it.
    pub op: ChangeOp,
    /// One value per [`ColdColumn`], in PostgreSQL's text form; `None` is SQL NULL.
    pub values: Vec<Option<Text>>,
    /// Start of the version's validity (application time).
    pub valid_from: i64,
    /// End of the version's validity; `None` while open-ended.
    pub valid_to: Option<i64>,
    /// When the version became current (the commit time of its change).
    pub system_from: i64,
    /// The commit LSN of the change that opened the version.
    pub system_from_lsn: Lsn,
    /// When the version stopped being current; `None` while it still is.
    pub system_to: Option<i64>,
    /// The commit LSN of the change that closed the version.
    pub system_to_lsn: Option<Lsn>,
    /// A deletion: no row is valid over the version's intervals (`values` holds the key
    /// and tenant).
    pub tombstone: bool,
}

impl ColdRow {
    /// The LSN of the transaction that produced this row: `system_from_lsn` for an open,
    /// `system_to_lsn` for a close (`None` if a close lacks it, which is invalid).
    pub fn commit_lsn(&self) -> Option<Lsn> {
        match self.event {
            ColdEvent::Open => Some(self.system_from_lsn),
            ColdEvent::Close => self.system_to_lsn,
        }
    }
}

/// Errors of the cold tier. Each names the file, column and/or row it is about.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// A file-system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"create"`, `"rename"`, `"fsync"`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet library failed to write or read a file.
    #[error("parquet file {}: {source}", path.display())]
    Parquet {
        /// The file being written or read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow failed to assemble a record batch.
    #[error("arrow batch for {}: {source}", path.display())]
    Arrow {
        /// The file the batch was for.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// A user column's name is one of the fixed columns.
    #[error("column {column:?} collides with the fixed cold-tier column of the same name")]
    ReservedColumn {
        /// The offending column name.
        column: String,
    },
    /// Two user columns share a name.
    #[error("column {column:?} appears more than once")]
    DuplicateColumn {
        /// The repeated column name.
        column: String,
    },
    /// A value does not convert to its column's stored type.
    #[error("row {row}, column {column:?} ({pg_type}): {reason}")]
    BadValue {
        /// Index of the row in the write (or in the file, when reading).
        row: usize,
        /// The column's name.
        column: String,
        /// The column's PostgreSQL type.
        pg_type: String,
        /// Why the value was refused.
        reason: String,
    },
    /// A row is malformed as a whole (wrong value count, timestamp out of range, LSN
    /// outside the write's range, ...).
    #[error("row {row}: {reason}")]
    BadRow {
        /// Index of the row in the write.
        row: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A reader's consumer stopped taking rows ([`reader::for_each_batch`]'s `each` gave
    /// up, its own reason given).
    #[error("reading stopped: {reason}")]
    Stopped {
        /// Why the consumer stopped.
        reason: String,
    },
    /// A write's LSN range is empty (`lsn_lo > lsn_hi`).
    #[error("invalid LSN range {lo:016X}..{hi:016X}")]
    InvalidRange {
        /// The range's low end.
        lo: Lsn,
        /// The range's high end.
        hi: Lsn,
    },
    /// A manifest is unreadable, of an unknown format, or inconsistent.
    #[error("manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file listed in the manifest is gone (neither published nor staged): data lost.
    #[error("{}: listed in the manifest but missing (data lost)", path.display())]
    MissingFile {
        /// The file's final path.
        path: PathBuf,
    },
    /// A file's size differs from the manifest's.
    #[error("{}: size {actual} bytes, the manifest says {expected}", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Size recorded in the manifest.
        expected: u64,
        /// Size found on disk.
        actual: u64,
    },
    /// A file's SHA-256 differs from the manifest's.
    #[error("{}: sha256 {actual}, the manifest says {expected}", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Checksum recorded in the manifest.
        expected: String,
        /// Checksum of the bytes on disk.
        actual: String,
    },
    /// A Parquet file's content does not have the cold-tier shape.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl ParquetError {
    /// An [`ParquetError::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ParquetError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
