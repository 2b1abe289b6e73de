//! One large transaction's history versions written to the cold tier piece by piece, so
//! the sink holds a part and a bounded buffer of rows, never the whole transaction.
//!
//! The parts are read back from the transaction's spill file, without the versions it
//! opens and closes itself ([`crate::sinks::versions::SameTxnVersions`]). Each part's
//! versions become cold rows per table directory, buffered; once the buffer
//! passes its bound ([`LARGE_BUFFER_ROWS`] by default), every directory's rows are staged as one piece
//! ([`ColdTableWriter::stage`], files `part-<lsn>-<lsn>-<piece>.parquet` under `_tmp/`,
//! not yet listed). After the last part each directory publishes all of its pieces with
//! one manifest update, the commit point: a reader sees the whole transaction in a table
//! or none of it, and a crash before the commit leaves only staged files, which the next
//! open deletes. A directory already covering the transaction (a replay) stages nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::sink::{by_table_directory, cold_columns, cold_rows, OpenWriter};
use super::{ColdColumn, ColdRow, ColdTableWriter, FileEntry, ParquetError};
use crate::change::Lsn;
use crate::sinks::{ApplyBatch, ApplyReport, SinkError, TenantApplied};

/// Cold rows buffered across table directories before they are staged, by default.
pub const LARGE_BUFFER_ROWS: usize = 100_000;

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
    /// Rows not yet staged.
    rows: Vec<ColdRow>,
    /// Staged pieces' files, published at the end.
    staged: Vec<FileEntry>,
    pieces: u32,
    /// Rows given (staged or skipped as covered).
    given: u64,
}

/// A large transaction being written.
pub struct LargeWrite<'a> {
    root: &'a Path,
    lsn: Lsn,
    dirs: BTreeMap<(String, String), LargeDirectory>,
    buffered: usize,
    buffer_rows: usize,
}

fn definite(e: ParquetError) -> SinkError {
    SinkError::Definite(format!("parquet cold tier: {e}"))
}

impl<'a> LargeWrite<'a> {
    /// A write of the transaction committing at `lsn` under `root`, staging once
    /// `buffer_rows` rows are buffered.
    pub fn new(root: &'a Path, lsn: Lsn, buffer_rows: usize) -> LargeWrite<'a> {
        LargeWrite {
            root,
            lsn,
            dirs: BTreeMap::new(),
            buffered: 0,
            buffer_rows: buffer_rows.max(1),
        }
    }

    /// Adds one part's history versions, taking each directory's writer from `writers`
    /// (or opening it); stages every directory's rows once the buffer is full.
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
            let columns = cold_columns(shape);
            let key = (tenant.to_owned(), table);
            let dir = match self.dirs.get_mut(&key) {
                Some(dir) => dir,
                None => {
                    let (columns, writer) = match writers.remove(&key) {
                        Some((cols, w)) if cols == columns => (cols, w),
                        _ => {
                            let w = ColdTableWriter::open(self.root, &key.0, &key.1, &columns)
                                .map_err(definite)?;
                            (columns.clone(), w)
                        }
                    };
                    self.dirs.entry(key.clone()).or_insert(LargeDirectory {
                        columns,
                        writer,
                        rows: Vec::new(),
                        staged: Vec::new(),
                        pieces: 0,
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
            let rows = cold_rows(shape, &events);
            self.buffered += rows.len();
            dir.given += rows.len() as u64;
            dir.rows.extend(rows.into_iter().map(|(_, row)| row));
        }
        if self.buffered >= self.buffer_rows {
            self.stage_all()?;
        }
        Ok(())
    }

    /// Stages every directory's buffered rows as its next piece.
    fn stage_all(&mut self) -> Result<(), SinkError> {
        for dir in self.dirs.values_mut() {
            if dir.rows.is_empty() {
                continue;
            }
            let rows = std::mem::take(&mut dir.rows);
            let entries = dir
                .writer
                .stage(&rows, self.lsn, self.lsn, Some(dir.pieces))
                .map_err(definite)?;
            dir.pieces += 1;
            dir.staged.extend(entries);
        }
        self.buffered = 0;
        Ok(())
    }

    /// Stages what is left, publishes every directory's pieces and hands the writers
    /// back to `writers`.
    pub fn finish(
        mut self,
        writers: &mut HashMap<(String, String), OpenWriter>,
    ) -> Result<ApplyReport, SinkError> {
        self.stage_all()?;
        let mut report = ApplyReport::default();
        for ((tenant, table), mut dir) in self.dirs {
            dir.writer.publish(&dir.staged).map_err(definite)?;
            let fresh: u64 = dir.staged.iter().map(|f| f.rows).sum();
            report.skipped += dir.given - fresh;
            report.upserted += fresh;
            report.bytes += dir.staged.iter().map(|f| f.bytes).sum::<u64>();
            if fresh > 0 {
                report.tenants.push(TenantApplied {
                    tenant: tenant.clone(),
                    lsn: self.lsn,
                    upserts: fresh,
                    deletes: 0,
                });
            }
            writers.insert((tenant, table), (dir.columns, dir.writer));
        }
        Ok(report)
    }
}
