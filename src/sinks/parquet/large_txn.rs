//! One large transaction's history versions written to the cold tier as they arrive, so
//! the sink holds a part and a bounded buffer, never the whole transaction.
//!
//! The parts are read back from the transaction's spill file, without the versions it
//! opens and closes itself ([`crate::sinks::versions::SameTxnVersions`]). Each part's
//! versions become cold rows per table directory and go straight into that directory's
//! open file (staged under `_tmp/`, not yet listed: [`ColdTableWriter::stream_rows`]),
//! where they wait as Arrow arrays for their row group. Once the waiting rows pass
//! [`LargeLimits::buffer_bytes`] across directories, the largest directories' are written
//! out as a row group each (only then does a row group hold the parquet crate's codecs
//! and dictionaries, one directory at a time), and a
//! file is closed and the next piece begun past [`LargeLimits::file_rows`] rows: files
//! `part-<lsn>-<lsn>-<piece>.parquet`, one per directory unless it is larger than that.
//! After the last part each directory publishes its files with one manifest update, the
//! commit point: a reader sees the whole transaction in a table or none of it, and a
//! crash before the commit leaves only staged files, which the next open deletes. A
//! directory already covering the transaction (a replay) stages nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::piece::PieceStream;
use super::sink::{by_table_directory, cold_columns, cold_rows, OpenWriter};
use super::{ColdColumn, ColdRow, ColdTableWriter, ParquetError};
use crate::change::Lsn;
use crate::sinks::{ApplyBatch, ApplyReport, SinkError, TenantApplied};

/// How a large transaction is cut into files and how much of it is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargeLimits {
    /// Bytes the rows waiting for their row group may hold across the transaction's
    /// table directories; past it the largest are written out (smaller row groups).
    pub buffer_bytes: usize,
    /// Rows per file; past it a directory's file is closed and its next piece begun.
    pub file_rows: u64,
}

/// The limits by default: 64 MiB of rows waiting for their row groups, a million rows
/// per file.
pub const LARGE_LIMITS: LargeLimits = LargeLimits {
    buffer_bytes: 64 << 20,
    file_rows: 1_000_000,
};

/// Why a large transaction could not be written piece by piece.
#[derive(Debug, thiserror::Error)]
pub enum LargeWriteError {
    /// A table's columns changed inside the transaction: its pieces would not share one
    /// shape. The caller writes the transaction whole instead.
    #[error("the columns of {table} changed inside large transaction {lsn}")]
    ShapeChanged {
        /// `schema.table`.
        table: String,
        /// The transaction's commit LSN.
        lsn: Lsn,
    },
    /// Writing failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One table directory's share of the transaction.
struct LargeDirectory {
    columns: Vec<ColdColumn>,
    writer: ColdTableWriter,
    /// Its staged files, the last one open.
    stream: PieceStream,
    /// Rows given (staged or skipped as covered).
    given: u64,
}

/// A large transaction being written.
pub struct LargeWrite<'a> {
    root: &'a Path,
    /// The lowest commit LSN its rows may have (`lsn` for one transaction).
    lsn_lo: Lsn,
    lsn: Lsn,
    dirs: BTreeMap<(String, String), LargeDirectory>,
    limits: LargeLimits,
}

fn definite(e: ParquetError) -> SinkError {
    SinkError::Definite(format!("parquet cold tier: {e}"))
}

impl<'a> LargeWrite<'a> {
    /// A write of the transaction committing at `lsn` under `root`.
    pub fn new(root: &'a Path, lsn: Lsn, limits: LargeLimits) -> LargeWrite<'a> {
        LargeWrite::spanning(root, lsn, lsn, limits)
    }

    /// A write of rows committed from `lsn_lo` to `lsn` (a snapshot bringing the tier up
    /// to the history table); each directory skips the rows its manifest covers and
    /// publishes the rest as one commit at `lsn`.
    pub fn spanning(root: &'a Path, lsn_lo: Lsn, lsn: Lsn, limits: LargeLimits) -> LargeWrite<'a> {
        LargeWrite {
            root,
            lsn_lo,
            lsn,
            dirs: BTreeMap::new(),
            limits,
        }
    }

    /// Adds one part's history versions to each directory's open file, taking the
    /// directory's writer from `writers` (or opening it); writes the largest directories'
    /// waiting rows out while they hold more than the limit.
    pub fn add(
        &mut self,
        part: &ApplyBatch,
        writers: &mut HashMap<(String, String), OpenWriter>,
    ) -> Result<(), LargeWriteError> {
        for ((tenant, table), events) in by_table_directory(std::slice::from_ref(part)) {
            let Some((_, last)) = events.last() else {
                continue;
            };
            let shape = last.table.as_ref();
            let rows: Vec<_> = cold_rows(shape, &events)
                .into_iter()
                .map(|(_, row)| row)
                .collect();
            self.add_rows(tenant, &table, &cold_columns(shape), &rows, writers)?;
        }
        Ok(())
    }

    /// Adds cold rows of one table directory (`columns` its shape, every row's commit
    /// LSN the transaction's) as [`LargeWrite::add`] adds a part's, then bounds the rows
    /// waiting for their row groups.
    pub fn add_rows(
        &mut self,
        tenant: &str,
        table: &str,
        columns: &[ColdColumn],
        rows: &[ColdRow],
        writers: &mut HashMap<(String, String), OpenWriter>,
    ) -> Result<(), LargeWriteError> {
        let key = (tenant.to_owned(), table.to_owned());
        let dir = match self.dirs.get_mut(&key) {
            Some(dir) => dir,
            None => {
                let (columns, writer) = match writers.remove(&key) {
                    Some((cols, w)) if cols == columns => (cols, w),
                    _ => {
                        let w = ColdTableWriter::open(self.root, &key.0, &key.1, columns)
                            .map_err(definite)?;
                        (columns.to_vec(), w)
                    }
                };
                self.dirs.entry(key.clone()).or_insert(LargeDirectory {
                    columns,
                    writer,
                    stream: PieceStream::new(self.lsn_lo, self.lsn, self.limits.file_rows),
                    given: 0,
                })
            }
        };
        if dir.columns != columns {
            return Err(LargeWriteError::ShapeChanged {
                table: key.1,
                lsn: self.lsn,
            });
        }
        dir.given += rows.len() as u64;
        dir.writer
            .stream_rows(&mut dir.stream, rows)
            .map_err(definite)?;
        self.bound_buffers()?;
        Ok(())
    }

    /// Directories with a row group in progress (none between calls).
    #[cfg(test)]
    pub(crate) fn row_groups_in_progress(&self) -> usize {
        self.dirs
            .values()
            .filter(|d| d.stream.row_group_in_progress())
            .count()
    }

    /// Directories whose staged file is open (a row group of it was written).
    #[cfg(test)]
    pub(crate) fn files_open(&self) -> usize {
        self.dirs.values().filter(|d| d.stream.file_open()).count()
    }

    /// How many batches the waiting rows are in, across the directories.
    #[cfg(test)]
    pub(crate) fn pending_batches(&self) -> usize {
        self.dirs.values().map(|d| d.stream.pending_batches()).sum()
    }

    /// Bytes the rows waiting for their row groups hold across the directories.
    pub fn buffered_bytes(&self) -> usize {
        self.dirs.values().map(|d| d.stream.buffered_bytes()).sum()
    }

    /// Writes the largest directories' waiting rows out (a row group each) until at most
    /// half the limit waits, once more than it does.
    fn bound_buffers(&mut self) -> Result<(), SinkError> {
        let mut sizes: Vec<(usize, &mut LargeDirectory)> = self
            .dirs
            .values_mut()
            .map(|dir| (dir.stream.buffered_bytes(), dir))
            .collect();
        let mut total: usize = sizes.iter().map(|(bytes, _)| bytes).sum();
        if total <= self.limits.buffer_bytes {
            return Ok(());
        }
        sizes.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (bytes, dir) in sizes {
            if total <= self.limits.buffer_bytes / 2 {
                break;
            }
            dir.stream.flush().map_err(definite)?;
            total -= bytes;
        }
        Ok(())
    }

    /// Closes every directory's last file, publishes its files and hands the writers
    /// back to `writers`.
    pub fn finish(
        self,
        writers: &mut HashMap<(String, String), OpenWriter>,
    ) -> Result<ApplyReport, SinkError> {
        let mut staged = Vec::with_capacity(self.dirs.len());
        for (key, mut dir) in self.dirs {
            let files = dir.writer.finish_stream(dir.stream).map_err(definite)?;
            staged.push((key, dir.columns, dir.writer, files, dir.given));
        }
        let mut report = ApplyReport::default();
        for ((tenant, table), columns, mut writer, files, given) in staged {
            writer.publish(&files).map_err(definite)?;
            let fresh: u64 = files.iter().map(|f| f.rows).sum();
            report.skipped += given - fresh;
            report.upserted += fresh;
            report.bytes += files.iter().map(|f| f.bytes).sum::<u64>();
            if fresh > 0 {
                report.tenants.push(TenantApplied {
                    tenant: tenant.clone(),
                    lsn: self.lsn,
                    upserts: fresh,
                    deletes: 0,
                });
            }
            writers.insert((tenant, table), (columns, writer));
        }
        Ok(report)
    }
}
