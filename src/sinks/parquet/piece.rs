//! A large transaction's (or a snapshot's) files of one table directory, staged piece by
//! piece ([`super::writer::ColdTableWriter::stream_rows`]): each piece's rows wait in
//! memory as Arrow batches and are written a row group at a time, all at once, so that
//! only the row group being written holds the parquet crate's per-column codecs and
//! dictionaries, and the piece's file is created with its first row group.

use std::path::PathBuf;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::manifest::FileEntry;
use super::writer::{close_file, open_writer, parquet_error, HashingWriter};
use super::ParquetError;
use crate::change::Lsn;

/// The files of one LSN range staged a row group at a time (see
/// [`super::writer::ColdTableWriter::stream_rows`]).
pub struct PieceStream {
    pub(super) lsn_lo: Lsn,
    pub(super) lsn_hi: Lsn,
    /// Rows per file, at most (a file may pass it by the rows of one call).
    pub(super) file_rows: u64,
    /// The number of the next piece.
    pub(super) next: u32,
    pub(super) open: Option<OpenPiece>,
    pub(super) done: Vec<FileEntry>,
}

impl PieceStream {
    /// A stream of the write of `lsn_lo..=lsn_hi`, about `file_rows` rows per file.
    pub fn new(lsn_lo: Lsn, lsn_hi: Lsn, file_rows: u64) -> PieceStream {
        PieceStream {
            lsn_lo,
            lsn_hi,
            file_rows: file_rows.max(1),
            next: 0,
            open: None,
            done: Vec::new(),
        }
    }

    /// Bytes the open file's rows not yet written hold in memory (their Arrow arrays).
    pub fn buffered_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |p| p.pending_bytes)
    }

    /// Whether the open file has a row group in progress (column writers with their
    /// codecs): only while [`Self::flush`] or a close writes one.
    #[cfg(test)]
    pub(crate) fn row_group_in_progress(&self) -> bool {
        self.open
            .as_ref()
            .and_then(|p| p.writer.as_ref())
            .is_some_and(|w| w.in_progress_rows() > 0)
    }

    /// Whether the open piece's file exists (a row group of it was written).
    #[cfg(test)]
    pub(crate) fn file_open(&self) -> bool {
        self.open.as_ref().is_some_and(|p| p.writer.is_some())
    }

    /// How many batches the open file's pending rows are in.
    #[cfg(test)]
    pub(crate) fn pending_batches(&self) -> usize {
        self.open.as_ref().map_or(0, |p| p.pending.len())
    }

    /// Writes the open file's pending rows out as one row group, so they no longer hold
    /// memory.
    pub fn flush(&mut self) -> Result<(), ParquetError> {
        match &mut self.open {
            Some(piece) => piece.write_row_group(),
            None => Ok(()),
        }
    }
}

/// A staged file of a [`PieceStream`] still being written.
///
/// Its rows wait as Arrow batches until they are written out as one row group, all at
/// once: the parquet crate's row group in progress holds, per column, a zstd compressor
/// and a decompressor (about 100 KB each, the decompressor never used by a writer) and a
/// dictionary, so a large transaction over many tenants kept one per directory open
/// (78 MiB of zstd contexts for 50 tenants of 17 columns, `HELIOS_BENCH_HEAPTRACK`) that
/// the buffer limit never saw. Now only the row group being written holds them. The
/// file itself is created with its first row group, so a directory whose rows all fit
/// in memory holds no open file until its close writes it, one directory at a time.
pub(super) struct OpenPiece {
    /// Its path in the table directory once published.
    pub(super) relative: String,
    temp: PathBuf,
    /// The UTC date of its rows' `system_from`.
    pub(super) date: NaiveDate,
    /// The lowest commit LSN of its rows.
    pub(super) lo: Lsn,
    hi: Lsn,
    schema: SchemaRef,
    props: WriterProperties,
    /// The file's writer, once a row group was written.
    writer: Option<ArrowWriter<HashingWriter>>,
    /// Rows given to the file, written or pending.
    pub(super) rows: u64,
    /// Rows not yet written, and the bytes their arrays hold.
    pending: Vec<RecordBatch>,
    /// How many of the last `pending` batches are as given, not yet merged.
    loose: usize,
    pending_bytes: usize,
}

/// Pending batches as given are merged into one once this many wait with fewer than
/// [`MERGE_BELOW_ROWS`] rows between them: over many table directories a part or chunk
/// gives each only a few rows, and each batch's 17 arrays then cost more in buffers and
/// headers than its rows (the rows waiting over 500 tenants took about twice their size,
/// and their row groups were half as large). Larger batches are left as they are (a copy
/// for little).
const MERGE_LOOSE_BATCHES: usize = 8;
/// See [`MERGE_LOOSE_BATCHES`].
const MERGE_BELOW_ROWS: usize = 1024;

impl OpenPiece {
    /// A piece staged at `temp` (published as `relative`), of rows of one date from
    /// LSN `lo` on in a write up to `hi`, whose file is created with its first row group.
    pub(super) fn new(
        relative: String,
        temp: PathBuf,
        (date, lo, hi): (NaiveDate, Lsn, Lsn),
        schema: SchemaRef,
        props: WriterProperties,
    ) -> OpenPiece {
        OpenPiece {
            relative,
            temp,
            date,
            lo,
            hi,
            schema,
            props,
            writer: None,
            rows: 0,
            pending: Vec::new(),
            loose: 0,
            pending_bytes: 0,
        }
    }

    /// Keeps `batch` until the next row group, merging the loose batches once
    /// [`MERGE_LOOSE_BATCHES`] small ones wait.
    pub(super) fn hold(&mut self, batch: RecordBatch) -> Result<(), ParquetError> {
        self.rows += batch.num_rows() as u64;
        self.pending_bytes += batch.get_array_memory_size();
        self.pending.push(batch);
        self.loose += 1;
        if self.loose < MERGE_LOOSE_BATCHES {
            return Ok(());
        }
        let first = self.pending.len() - self.loose;
        self.loose = 0;
        let rows: usize = self.pending[first..].iter().map(|b| b.num_rows()).sum();
        if rows < MERGE_BELOW_ROWS {
            let loose = self.pending.split_off(first);
            let merged = arrow_select::concat::concat_batches(&loose[0].schema(), &loose).map_err(
                |source| ParquetError::Arrow {
                    path: self.temp.clone(),
                    source,
                },
            )?;
            self.pending_bytes -= loose
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum::<usize>();
            self.pending_bytes += merged.get_array_memory_size();
            self.pending.push(merged);
        }
        Ok(())
    }

    /// Writes the pending rows as one row group and closes it (its column writers, with
    /// their codecs and dictionaries, are dropped).
    fn write_row_group(&mut self) -> Result<(), ParquetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.loose = 0;
        let temp = &self.temp;
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => self
                .writer
                .insert(open_writer(temp, &self.schema, self.props.clone())?),
        };
        for batch in pending {
            writer.write(&batch).map_err(parquet_error(temp))?;
        }
        writer.flush().map_err(parquet_error(temp))
    }

    /// Writes the pending rows, finishes the file (footer, fsync) and returns its
    /// manifest entry.
    pub(super) fn close(mut self) -> Result<FileEntry, ParquetError> {
        self.write_row_group()?;
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => open_writer(&self.temp, &self.schema, self.props.clone())?,
        };
        let (bytes, sha256) = close_file(writer, &self.temp)?;
        Ok(FileEntry {
            path: self.relative,
            rows: self.rows,
            lsn_min: self.lo,
            lsn_max: self.hi,
            bytes,
            sha256,
        })
    }
}
