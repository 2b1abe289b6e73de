//! Publishing cold-tier files for one (tenant, table) with a crash-safe commit protocol.
//!
//! Per write:
//! 1. each file (one per UTC date of `system_from`) is written under `_tmp/` in the
//!    table directory and fsynced; `_tmp/` is fsynced;
//! 2. the new manifest listing the files' final paths, sizes and checksums replaces the
//!    old one atomically: **this is the commit point**;
//! 3. the staged files are renamed into their `date=` directories, which are fsynced.
//!
//! [`ColdTableWriter::open`] recovers whatever a crash left: listed files still staged
//! are verified and renamed into place, a listed file found nowhere is an error (data
//! lost), staged files not listed are deleted, and so are `*.parquet` files under a
//! `date=` directory that the manifest does not list. Readers therefore only ever see
//! listed files, each exactly once.
//!
//! [`crash_point`] lets tests kill the process between the steps.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_buffer::ToByteSlice;
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use super::layout::{
    relative_path, relative_piece_path, table_dir, temp_path, utc_date_of, MANIFEST_TMP_FILE,
    TEMP_DIR,
};
use super::manifest::{hex, sync_dir, verify_file, FileEntry, Manifest};
use super::piece::{OpenPiece, PieceStream};
use super::schema::{arrow_schema, build_batch};
use super::{ColdColumn, ColdRow, ParquetError};
use crate::change::Lsn;

/// Environment variable naming the [`crash_point`] at which to abort.
pub const CRASH_ENV: &str = "HELIOS_CRASH_AT";

/// Crash-injection hook for tests: aborts the process (no unwinding, no destructors,
/// like a power cut for everything not yet fsynced) when the environment variable
/// [`CRASH_ENV`] equals `name`. The writer calls it with `parquet-after-temp`,
/// `parquet-after-manifest` and `parquet-mid-rename`.
pub fn crash_point(name: &str) {
    if std::env::var_os(CRASH_ENV).is_some_and(|v| v == name) {
        tracing::warn!(crash_point = name, "aborting at crash point");
        std::process::abort();
    }
}

#[path = "compaction.rs"]
mod compaction;
pub use compaction::{
    quiet_directories, Compacted, CompactionPolicy, CompactionStats, QuietDirectory, COMPACTION,
};

/// A write's rows by the UTC date of `system_from`, each with its index in the write.
type DateGroups<'r> = BTreeMap<NaiveDate, Vec<(usize, &'r ColdRow)>>;

/// Writes cold-tier files for one (root, tenant, table). One writer per table
/// directory at a time.
#[derive(Debug)]
pub struct ColdTableWriter {
    table_dir: PathBuf,
    tenant: String,
    table: String,
    columns: Vec<ColdColumn>,
    schema: SchemaRef,
    manifest: Manifest,
    /// Set while a write is under way and left set if it fails: the next write first
    /// recovers from whatever state the failure left on disk.
    needs_recovery: bool,
    /// Small files listed after the last compaction (those it could not merge, or what
    /// it merged them into): the next one waits for as many new ones as its policy asks.
    small_after_compaction: usize,
}

impl ColdTableWriter {
    /// Opens (creating if needed) the table directory under `root` and recovers from any
    /// interrupted write (see the module doc). `columns` become the manifest's column
    /// list if they differ from it (a schema change); files already written keep their
    /// own schema.
    pub fn open(
        root: &Path,
        tenant: &str,
        table: &str,
        columns: &[ColdColumn],
    ) -> Result<Self, ParquetError> {
        let schema = arrow_schema(columns)?;
        let dir = table_dir(root, tenant, table);
        ensure_dir(&dir)?;
        let manifest = recover_or_init(&dir, tenant, table, columns)?;
        Ok(ColdTableWriter {
            table_dir: dir,
            tenant: tenant.to_string(),
            table: table.to_string(),
            columns: columns.to_vec(),
            schema,
            manifest,
            needs_recovery: false,
            small_after_compaction: 0,
        })
    }

    /// Everything with a commit LSN at or below this is published: callers skip it, so a
    /// replay after a crash never duplicates rows.
    pub fn covered_lsn(&self) -> Lsn {
        self.manifest.covered_lsn
    }

    /// The columns rows are written with.
    pub fn columns(&self) -> &[ColdColumn] {
        &self.columns
    }

    /// The manifest as last committed by this writer.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The table directory.
    pub fn table_dir(&self) -> &Path {
        &self.table_dir
    }

    /// Publishes `rows`, produced by the transactions with commit LSNs in
    /// `lsn_lo..=lsn_hi`, and returns the manifest entries of the new files (one per UTC
    /// date of `system_from`, in date order; within a file rows keep their order).
    ///
    /// A write with `lsn_hi <= covered_lsn()` is a no-op (a replay). When the range
    /// straddles `covered_lsn()`, rows whose commit LSN is covered are skipped. Every
    /// row's commit LSN ([`ColdRow::commit_lsn`]) must lie in the range. Nothing is
    /// published unless every row converts; a failure after the commit point is finished
    /// by the next write or `open`.
    pub fn write(
        &mut self,
        rows: &[ColdRow],
        lsn_lo: Lsn,
        lsn_hi: Lsn,
    ) -> Result<Vec<FileEntry>, ParquetError> {
        let entries = self.stage(rows, lsn_lo, lsn_hi, None)?;
        if !entries.is_empty() {
            self.publish(&entries)?;
        }
        Ok(entries)
    }

    /// Step 1 of a write: stages the files of `rows` (as [`Self::write`] takes them)
    /// under `_tmp/`, fsynced, and returns their entries, not yet listed: nothing is
    /// visible until [`Self::publish`] lists them. `piece` numbers the files of one
    /// range staged by several calls (a transaction too large to hold, written piece by
    /// piece and published once); `None` for a range staged in one call. Staged files
    /// not published are deleted by the next recovery (`open`, or a write after a failed
    /// one).
    pub fn stage(
        &mut self,
        rows: &[ColdRow],
        lsn_lo: Lsn,
        lsn_hi: Lsn,
        piece: Option<u32>,
    ) -> Result<Vec<FileEntry>, ParquetError> {
        let Some((lo, groups)) = self.checked_groups(rows, lsn_lo, lsn_hi)? else {
            return Ok(Vec::new());
        };

        // Convert everything before touching the disk: a bad value publishes nothing.
        let listed = self.listed_paths();
        let mut staged: Vec<(String, RecordBatch)> = Vec::with_capacity(groups.len());
        for (date, group) in &groups {
            let relative = match piece {
                None => relative_path(*date, lo, lsn_hi),
                Some(n) => relative_piece_path(*date, lo, lsn_hi, n),
            };
            if listed.contains(relative.as_str()) {
                return Err(ParquetError::BadFile {
                    path: self.table_dir.join(&relative),
                    reason: "already listed in the manifest".to_string(),
                });
            }
            let batch = build_batch(
                &self.schema,
                &self.columns,
                group,
                &self.table_dir.join(&relative),
            )?;
            staged.push((relative, batch));
        }

        self.needs_recovery = true;
        let temp_dir = self.table_dir.join(TEMP_DIR);
        ensure_dir(&temp_dir)?;

        // Step 1: stage every file under _tmp/, fsynced.
        let mut entries = Vec::with_capacity(staged.len());
        for (relative, batch) in &staged {
            let temp = temp_path(&self.table_dir, relative);
            let (bytes, sha256) = self.write_file(&temp, batch, lo, lsn_hi)?;
            entries.push(FileEntry {
                path: relative.clone(),
                rows: batch.num_rows() as u64,
                lsn_min: lo,
                lsn_max: lsn_hi,
                bytes,
                sha256,
            });
        }
        sync_dir(&temp_dir)?;
        crash_point("parquet-after-temp");
        self.needs_recovery = false;
        Ok(entries)
    }

    /// Checks the rows of a write of `lsn_lo..=lsn_hi` (first finishing a failed write's
    /// recovery) and groups them by the UTC date of `system_from`, without the rows the
    /// manifest already covers. Returns the write's low LSN (past what is covered) and the
    /// groups, or `None` when nothing is left to write.
    fn checked_groups<'r>(
        &mut self,
        rows: &'r [ColdRow],
        lsn_lo: Lsn,
        lsn_hi: Lsn,
    ) -> Result<Option<(Lsn, DateGroups<'r>)>, ParquetError> {
        if lsn_lo > lsn_hi {
            return Err(ParquetError::InvalidRange {
                lo: lsn_lo,
                hi: lsn_hi,
            });
        }
        self.recover_if_needed()?;
        let covered = self.covered_lsn();
        if lsn_hi <= covered {
            tracing::debug!(
                table_dir = %self.table_dir.display(),
                lsn_hi,
                covered,
                "cold write already covered, skipped"
            );
            return Ok(None);
        }

        let mut groups = DateGroups::new();
        let mut skipped = 0usize;
        for (index, row) in rows.iter().enumerate() {
            let commit = check_row(index, row, lsn_lo, lsn_hi)?;
            if commit <= covered {
                skipped += 1;
                continue;
            }
            let date = utc_date_of(row.system_from).ok_or_else(|| ParquetError::BadRow {
                row: index,
                reason: format!(
                    "system_from {} has no calendar date in range",
                    row.system_from
                ),
            })?;
            groups.entry(date).or_default().push((index, row));
        }
        if skipped > 0 {
            tracing::info!(
                table_dir = %self.table_dir.display(),
                skipped,
                covered,
                "skipped rows already covered"
            );
        }
        if groups.is_empty() {
            return Ok(None);
        }
        // `covered < lsn_hi`, so `covered + 1` cannot overflow.
        Ok(Some((lsn_lo.max(covered + 1), groups)))
    }

    /// Finishes what a failed write or compaction left on disk (see [`recover`]) before
    /// the next one.
    fn recover_if_needed(&mut self) -> Result<(), ParquetError> {
        if self.needs_recovery {
            self.manifest =
                recover_or_init(&self.table_dir, &self.tenant, &self.table, &self.columns)?;
            self.needs_recovery = false;
        }
        Ok(())
    }

    /// The paths the manifest lists.
    fn listed_paths(&self) -> HashSet<&str> {
        self.manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect()
    }

    /// Steps 2 and 3 of a write: lists staged `entries` (from [`Self::stage`], of LSNs
    /// above what the manifest covers) in the manifest, the commit point, then moves them
    /// into their `date=` directories.
    pub fn publish(&mut self, entries: &[FileEntry]) -> Result<(), ParquetError> {
        if entries.is_empty() {
            return Ok(());
        }
        let listed = self.listed_paths();
        let mut paths = HashSet::new();
        for entry in entries {
            let temp = temp_path(&self.table_dir, &entry.path);
            let reason = if entry.lsn_min <= self.manifest.covered_lsn {
                Some("its LSNs are already covered")
            } else if listed.contains(entry.path.as_str()) || !paths.insert(entry.path.as_str()) {
                Some("listed twice")
            } else if !temp.is_file() {
                Some("not staged (a recovery removed it)")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ParquetError::BadFile {
                    path: self.table_dir.join(&entry.path),
                    reason: format!("cannot publish: {reason}"),
                });
            }
        }
        self.needs_recovery = true;
        let temp_dir = self.table_dir.join(TEMP_DIR);
        // Step 2: the commit point.
        let mut next = self.manifest.clone();
        next.columns = ColdColumn::with_former_names(&next.columns, &self.columns);
        next.files.extend(entries.iter().cloned());
        next.covered_lsn = next.max_lsn();
        next.store(&self.table_dir)?;
        self.manifest = next;
        crash_point("parquet-after-manifest");

        // Step 3: move the files into place.
        let mut date_dirs = BTreeSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let temp = temp_path(&self.table_dir, &entry.path);
            let target = self.table_dir.join(&entry.path);
            let date_dir = parent_of(&target)?;
            ensure_dir(&date_dir)?;
            fs::rename(&temp, &target).map_err(|e| ParquetError::io("rename", &temp, e))?;
            date_dirs.insert(date_dir);
            if i == 0 {
                // After the first rename, before the others and the directory fsyncs.
                crash_point("parquet-mid-rename");
            }
        }
        for dir in &date_dirs {
            sync_dir(dir)?;
        }
        sync_dir(&temp_dir)?;
        self.needs_recovery = false;
        tracing::debug!(
            table_dir = %self.table_dir.display(),
            files = entries.len(),
            covered = self.manifest.covered_lsn,
            "cold files published"
        );
        Ok(())
    }

    /// Writes one Parquet file to `path`, fsynced; returns its size and SHA-256. `batch`
    /// is the whole file, so its uniform columns stay uncompressed ([`writer_properties`]).
    fn write_file(
        &self,
        path: &Path,
        batch: &RecordBatch,
        lsn_lo: Lsn,
        lsn_hi: Lsn,
    ) -> Result<(u64, String), ParquetError> {
        let props = writer_properties(batch, &self.tenant, &self.table, lsn_lo, lsn_hi)
            .map_err(parquet_error(path))?;
        let mut writer = open_writer(path, &self.schema, props)?;
        writer.write(batch).map_err(parquet_error(path))?;
        close_file(writer, path)
    }

    /// This directory's file properties ([`writer_properties`]) with every column
    /// compressed: for a streamed file, whose later rows are not known when it is
    /// created (a column uniform in its first rows need not be in the rest).
    fn compressed_properties(
        &self,
        fields: &arrow_schema::Fields,
        lsn_lo: Lsn,
        lsn_hi: Lsn,
    ) -> Result<WriterProperties, parquet::errors::ParquetError> {
        properties(fields, |_| false, &self.tenant, &self.table, lsn_lo, lsn_hi)
    }

    /// Appends `rows` to `stream`'s files: a large transaction's rows of this table
    /// directory, given part by part. The rows go to the stream's open file (staged under
    /// `_tmp/`, not listed; they wait in memory until [`PieceStream::flush`] or the file's
    /// close writes them as a row group) until it holds
    /// [`PieceStream::file_rows`] rows or the rows' date differs; then the next piece is
    /// begun. Nothing is visible until [`Self::finish_stream`] and [`Self::publish`]. A
    /// failure leaves the staged files to the next recovery, which deletes them.
    pub fn stream_rows(
        &mut self,
        stream: &mut PieceStream,
        rows: &[ColdRow],
    ) -> Result<(), ParquetError> {
        let Some((lo, groups)) = self.checked_groups(rows, stream.lsn_lo, stream.lsn_hi)? else {
            return Ok(());
        };
        for (date, group) in &groups {
            let full = |p: &OpenPiece| p.date != *date || p.lo != lo || p.rows >= stream.file_rows;
            if let Some(piece) = stream.open.take_if(|p| full(p)) {
                stream.done.push(piece.close()?);
            }
            let relative = match &stream.open {
                Some(piece) => piece.relative.clone(),
                None => relative_piece_path(*date, lo, stream.lsn_hi, stream.next),
            };
            let path = self.table_dir.join(&relative);
            let batch = build_batch(&self.schema, &self.columns, group, &path)?;
            let piece = match &mut stream.open {
                Some(piece) => piece,
                None => {
                    if self.listed_paths().contains(relative.as_str()) {
                        return Err(ParquetError::BadFile {
                            path,
                            reason: "already listed in the manifest".to_string(),
                        });
                    }
                    self.needs_recovery = true;
                    ensure_dir(&self.table_dir.join(TEMP_DIR))?;
                    let temp = temp_path(&self.table_dir, &relative);
                    let props = self
                        .compressed_properties(batch.schema().fields(), lo, stream.lsn_hi)
                        .map_err(parquet_error(&temp))?;
                    stream.next += 1;
                    let piece = OpenPiece::new(
                        relative,
                        temp,
                        (*date, lo, stream.lsn_hi),
                        self.schema.clone(),
                        props,
                    );
                    stream.open.insert(piece)
                }
            };
            piece.hold(batch)?;
        }
        // The staged files are meant to be published: a later call must not recover
        // (delete) them.
        self.needs_recovery = false;
        Ok(())
    }

    /// Closes `stream`'s open file and fsyncs `_tmp/`; returns the entries of every file
    /// the stream staged, to [`Self::publish`].
    pub fn finish_stream(
        &mut self,
        mut stream: PieceStream,
    ) -> Result<Vec<FileEntry>, ParquetError> {
        if let Some(piece) = stream.open.take() {
            self.needs_recovery = true;
            stream.done.push(piece.close()?);
        }
        if !stream.done.is_empty() {
            self.needs_recovery = true;
            sync_dir(&self.table_dir.join(TEMP_DIR))?;
            crash_point("parquet-after-temp");
        }
        self.needs_recovery = false;
        Ok(stream.done)
    }
}

/// Maps a parquet crate error on the file `path`.
pub(super) fn parquet_error(
    path: &Path,
) -> impl Fn(parquet::errors::ParquetError) -> ParquetError + '_ {
    move |source| ParquetError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the file `path` and a Parquet writer of `schema` with `props` into it.
pub(super) fn open_writer(
    path: &Path,
    schema: &SchemaRef,
    props: WriterProperties,
) -> Result<ArrowWriter<HashingWriter>, ParquetError> {
    let file = File::create(path).map_err(|e| ParquetError::io("create", path, e))?;
    ArrowWriter::try_new(HashingWriter::new(file), schema.clone(), Some(props))
        .map_err(parquet_error(path))
}

/// Writes the footer of the file `writer` writes to `path`, fsyncs it and returns its
/// size and SHA-256.
pub(super) fn close_file(
    writer: ArrowWriter<HashingWriter>,
    path: &Path,
) -> Result<(u64, String), ParquetError> {
    let mut sink = writer.into_inner().map_err(parquet_error(path))?;
    sink.file
        .flush()
        .and_then(|()| sink.file.sync_all())
        .map_err(|e| ParquetError::io("fsync", path, e))?;
    Ok((sink.bytes, hex(&sink.hasher.finalize())))
}

/// Checks a row's invariants and returns its commit LSN.
fn check_row(index: usize, row: &ColdRow, lsn_lo: Lsn, lsn_hi: Lsn) -> Result<Lsn, ParquetError> {
    let bad = |reason: String| ParquetError::BadRow { row: index, reason };
    if row.system_to.is_some() != row.system_to_lsn.is_some() {
        return Err(bad(
            "system_to and system_to_lsn must both be set or both be unset".to_string(),
        ));
    }
    let commit = row
        .commit_lsn()
        .ok_or_else(|| bad("a close row needs system_to and system_to_lsn".to_string()))?;
    if commit < lsn_lo || commit > lsn_hi {
        return Err(bad(format!(
            "commit LSN {commit:016X} is outside the write's range {lsn_lo:016X}..{lsn_hi:016X}"
        )));
    }
    Ok(commit)
}

/// The Parquet properties of a cold-tier file holding `batch`: zstd level 3 except for
/// uniform columns ([`is_uniform`]), page statistics, dictionaries only for Utf8 columns,
/// DELTA_BINARY_PACKED for integer and timestamp columns, BYTE_STREAM_SPLIT for floats,
/// and `helios.*` key-value metadata.
///
/// A uniform column (all NULL, or one value throughout: the tenant, a transaction's commit
/// time, the event of an insert-only batch) encodes to a few bytes that zstd cannot shrink,
/// while the parquet crate creates a zstd compressor and decompressor for every compressed
/// column chunk (each probing the CPU with `cpuid`, which traps under virtualisation: 7 %
/// of a cold-tier catch-up's CPU in `HELIOS_BENCH_PERF` profiles), so it stays
/// uncompressed.
pub fn writer_properties(
    batch: &RecordBatch,
    tenant: &str,
    table: &str,
    lsn_lo: Lsn,
    lsn_hi: Lsn,
) -> Result<WriterProperties, parquet::errors::ParquetError> {
    let columns = batch.columns();
    let schema = batch.schema();
    properties(
        schema.fields(),
        |i| columns.get(i).is_some_and(|a| is_uniform(a.as_ref())),
        tenant,
        table,
        lsn_lo,
        lsn_hi,
    )
}

/// The properties [`writer_properties`] describes, for columns `fields`, the `i`-th
/// left uncompressed when `uniform(i)`.
fn properties(
    fields: &arrow_schema::Fields,
    uniform: impl Fn(usize) -> bool,
    tenant: &str,
    table: &str,
    lsn_lo: Lsn,
    lsn_hi: Lsn,
) -> Result<WriterProperties, parquet::errors::ParquetError> {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(false)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("helios.tenant".to_string(), tenant.to_string()),
            KeyValue::new("helios.table".to_string(), table.to_string()),
            KeyValue::new("helios.lsn_lo".to_string(), lsn_lo.to_string()),
            KeyValue::new("helios.lsn_hi".to_string(), lsn_hi.to_string()),
        ]));
    for (i, field) in fields.iter().enumerate() {
        let column = ColumnPath::from(field.name().clone());
        if uniform(i) {
            builder = builder.set_column_compression(column.clone(), Compression::UNCOMPRESSED);
        }
        builder = match field.data_type() {
            DataType::Utf8 => builder.set_column_dictionary_enabled(column, true),
            DataType::Int32 | DataType::Int64 | DataType::UInt64 | DataType::Timestamp(..) => {
                builder.set_column_encoding(column, Encoding::DELTA_BINARY_PACKED)
            }
            DataType::Float32 | DataType::Float64 => {
                builder.set_column_encoding(column, Encoding::BYTE_STREAM_SPLIT)
            }
            _ => builder,
        };
    }
    Ok(builder.build())
}

/// Whether every value of `array` is NULL, or none is and all are equal (bit for bit).
/// Types the cold tier does not write count as not uniform.
pub fn is_uniform(array: &dyn Array) -> bool {
    fn same<T: PartialEq>(mut values: impl Iterator<Item = T>) -> bool {
        match values.next() {
            Some(first) => values.all(|v| v == first),
            None => true,
        }
    }
    fn primitive<T: ArrowPrimitiveType>(array: &dyn Array) -> bool
    where
        T::Native: PartialEq,
    {
        array
            .as_primitive_opt::<T>()
            .is_some_and(|a| same(a.values().iter().map(|v| v.to_byte_slice())))
    }
    if array.null_count() == array.len() {
        return true;
    }
    if array.null_count() > 0 {
        return false;
    }
    match array.data_type() {
        DataType::Utf8 => array.as_string_opt::<i32>().is_some_and(|a| same(a.iter())),
        DataType::Boolean => array
            .as_boolean_opt()
            .is_some_and(|a| a.true_count() == 0 || a.true_count() == a.len()),
        DataType::Int32 => primitive::<Int32Type>(array),
        DataType::Int64 => primitive::<Int64Type>(array),
        DataType::UInt64 => primitive::<UInt64Type>(array),
        DataType::Float32 => primitive::<Float32Type>(array),
        DataType::Float64 => primitive::<Float64Type>(array),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            primitive::<TimestampMicrosecondType>(array)
        }
        _ => false,
    }
}

/// A file writer that hashes and counts what goes through it.
pub(super) struct HashingWriter {
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl HashingWriter {
    fn new(file: File) -> HashingWriter {
        HashingWriter {
            file,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn parent_of(path: &Path) -> Result<PathBuf, ParquetError> {
    path.parent().map(Path::to_path_buf).ok_or_else(|| {
        ParquetError::io(
            "locate parent of",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"),
        )
    })
}

/// Creates a directory and any missing parents, fsyncing each parent that gained an
/// entry so the creation is durable.
fn ensure_dir(dir: &Path) -> Result<(), ParquetError> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        ensure_dir(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(ParquetError::io("create directory", dir, e)),
    }
    match parent {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Runs recovery, then makes sure a manifest with `columns` exists.
fn recover_or_init(
    dir: &Path,
    tenant: &str,
    table: &str,
    columns: &[ColdColumn],
) -> Result<Manifest, ParquetError> {
    let mut manifest = match recover(dir, tenant, table)? {
        Some(manifest) => manifest,
        None => {
            let manifest = Manifest::new(tenant, table, columns);
            manifest.store(dir)?;
            return Ok(manifest);
        }
    };
    let columns = ColdColumn::with_former_names(&manifest.columns, columns);
    if manifest.columns != columns {
        tracing::info!(
            table_dir = %dir.display(),
            "cold table columns changed; new files use the new column list"
        );
        manifest.columns = columns;
        manifest.store(dir)?;
    }
    Ok(manifest)
}

/// Brings a table directory to a clean state after a crash (see the module doc) and
/// returns its manifest, or `None` if it has none yet.
pub fn recover(dir: &Path, tenant: &str, table: &str) -> Result<Option<Manifest>, ParquetError> {
    // A manifest that was being written when the process died was never committed.
    let manifest_tmp = dir.join(MANIFEST_TMP_FILE);
    match fs::remove_file(&manifest_tmp) {
        Ok(()) => tracing::warn!(path = %manifest_tmp.display(), "removed uncommitted manifest"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ParquetError::io("remove", &manifest_tmp, e)),
    }

    let manifest = Manifest::load(dir)?;
    let manifest_path = Manifest::path(dir);
    if let Some(m) = &manifest {
        if m.tenant != tenant || m.table != table {
            return Err(ParquetError::Manifest {
                path: manifest_path,
                reason: format!(
                    "belongs to tenant {:?} table {:?}, not tenant {tenant:?} table {table:?}",
                    m.tenant, m.table
                ),
            });
        }
    }
    let listed: HashSet<&str> = manifest
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.path.as_str()))
        .collect();

    // Unlisted data files can only come from outside this protocol. Without a manifest
    // they may be all the table's data: refuse rather than delete them.
    let unlisted = unlisted_data_files(dir, &listed)?;
    if manifest.is_none() && !unlisted.is_empty() {
        return Err(ParquetError::Manifest {
            path: manifest_path,
            reason: format!(
                "missing, but {} data file(s) exist under the table directory, e.g. {}",
                unlisted.len(),
                unlisted[0].display()
            ),
        });
    }

    // Finish the renames of committed files still staged.
    let mut synced_dirs = BTreeSet::new();
    if let Some(m) = &manifest {
        for entry in &m.files {
            let target = dir.join(&entry.path);
            if target.exists() {
                let size = fs::metadata(&target)
                    .map_err(|e| ParquetError::io("stat", &target, e))?
                    .len();
                if size != entry.bytes {
                    return Err(ParquetError::SizeMismatch {
                        path: target,
                        expected: entry.bytes,
                        actual: size,
                    });
                }
                continue;
            }
            let temp = temp_path(dir, &entry.path);
            if !temp.exists() {
                return Err(ParquetError::MissingFile { path: target });
            }
            verify_file(&temp, entry)?;
            let date_dir = parent_of(&target)?;
            ensure_dir(&date_dir)?;
            fs::rename(&temp, &target).map_err(|e| ParquetError::io("rename", &temp, e))?;
            tracing::warn!(path = %target.display(), "recovery published a committed file");
            synced_dirs.insert(date_dir);
        }
    }
    for date_dir in &synced_dirs {
        sync_dir(date_dir)?;
    }

    // Whatever is still staged was never committed.
    let temp_dir = dir.join(TEMP_DIR);
    let mut removed_temp = false;
    match fs::read_dir(&temp_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| ParquetError::io("list", &temp_dir, e))?;
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let removed = if is_dir {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| ParquetError::io("remove", &path, e))?;
                tracing::warn!(path = %path.display(), "removed uncommitted staged file");
                removed_temp = true;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ParquetError::io("list", &temp_dir, e)),
    }
    if removed_temp {
        sync_dir(&temp_dir)?;
    }

    // Never expose a data file the manifest does not list.
    let mut cleaned_dirs = BTreeSet::new();
    for path in unlisted {
        fs::remove_file(&path).map_err(|e| ParquetError::io("remove", &path, e))?;
        tracing::warn!(path = %path.display(), "removed data file not listed in the manifest");
        if let Some(parent) = path.parent() {
            cleaned_dirs.insert(parent.to_path_buf());
        }
    }
    for date_dir in &cleaned_dirs {
        sync_dir(date_dir)?;
    }
    Ok(manifest)
}

/// `*.parquet` files under the table's `date=` directories that `listed` does not name.
fn unlisted_data_files(dir: &Path, listed: &HashSet<&str>) -> Result<Vec<PathBuf>, ParquetError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(ParquetError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| ParquetError::io("list", dir, e))?;
        let date_name = entry.file_name();
        let date_name = date_name.to_string_lossy();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if !is_dir || !date_name.starts_with("date=") {
            continue;
        }
        let date_dir = entry.path();
        let files = fs::read_dir(&date_dir).map_err(|e| ParquetError::io("list", &date_dir, e))?;
        for file in files {
            let file = file.map_err(|e| ParquetError::io("list", &date_dir, e))?;
            if !file.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            let name = file.file_name();
            let Some(name) = name.to_str() else {
                // A name that is not UTF-8 can't be in the manifest.
                if name.to_string_lossy().ends_with(".parquet") {
                    found.push(file.path());
                }
                continue;
            };
            if !name.ends_with(".parquet") {
                continue;
            }
            if !listed.contains(format!("{date_name}/{name}").as_str()) {
                found.push(file.path());
            }
        }
    }
    found.sort();
    Ok(found)
}
