//! Compaction of one cold-tier table directory: runs of small files merged into one file.
//!
//! A job that keeps up publishes a file per tenant and table each time its sink applies
//! (every second or so while rows flow), each a few thousand rows or fewer: a day of them
//! is tens of thousands of files, each with its own footer, open and seek for a reader,
//! and row groups too small to compress well. Once a table directory holds
//! [`CompactionPolicy::min_files`] small files, each run of consecutive small files (in
//! manifest order, one date directory and one schema) is rewritten as one file of up to
//! [`CompactionPolicy::max_rows`] rows, its rows in the same order.
//! While the job is behind the source the sink waits for eight times as many
//! (`sink::BUSY_COMPACTION_FACTOR`), so a catch-up is compacted once it is over, in one pass;
//! a directory that has gone quiet is compacted by the sink's idle upkeep once it lists
//! two (`sink::SETTLED`). The sink compacts after an apply has been reported durable,
//! never inside it.
//!
//! The same three steps as a write ([`ColdTableWriter`]):
//! 1. the merged file is staged under `_tmp/` and fsynced, every input verified against
//!    its size and SHA-256 first;
//! 2. the manifest lists it in place of the run: **the commit point**;
//! 3. it is renamed into its `date=` directory and the run's files are deleted.
//!
//! A crash before step 2 leaves a staged file, which recovery deletes; after it, recovery
//! renames the merged file into place and deletes the run's files, which the manifest no
//! longer lists. A reader through the manifest sees the run or the merged file, never both
//! and never neither; one that loaded the manifest before the swap finds a file gone and
//! reads again from the new manifest ([`super::read_table`]). A reader of the directory
//! itself may see both for the moment between the rename and the deletes.

use std::fs::{self, File};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{Fields, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use super::{
    close_file, crash_point, ensure_dir, open_writer, parent_of, parquet_error, ColdTableWriter,
    HashingWriter,
};
use crate::change::Lsn;
use crate::sinks::parquet::layout::{
    file_name, parse_relative_path, table_dir, temp_path, TEMP_DIR,
};
use crate::sinks::parquet::manifest::{sync_dir, verify_open_file, FileEntry};
use crate::sinks::parquet::{list_tables, ColdColumn, Manifest, ParquetError};

/// When a table directory is compacted and how large its merged files get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// A file of fewer rows is small.
    pub small_rows: u64,
    /// Compact once the directory lists this many small files (0: never).
    pub min_files: usize,
    /// Most rows in a merged file.
    pub max_rows: u64,
}

/// The policy by default: 16 files under 100,000 rows each are merged into files of up
/// to a million rows.
pub const COMPACTION: CompactionPolicy = CompactionPolicy {
    small_rows: 100_000,
    min_files: 16,
    max_rows: 1_000_000,
};

/// What a sink's compactions did so far, for the metrics (shared by its tasks).
#[derive(Debug, Default)]
pub struct CompactionStats {
    /// Small files merged away.
    pub files_merged: AtomicU64,
    /// Merged files written.
    pub files_written: AtomicU64,
    /// Bytes of the files merged away.
    pub bytes_merged: AtomicU64,
    /// Bytes of the merged files.
    pub bytes_written: AtomicU64,
}

impl CompactionStats {
    /// Adds one compaction's figures.
    pub fn record(&self, done: &Compacted) {
        self.files_merged
            .fetch_add(done.files_in as u64, Ordering::Relaxed);
        self.files_written
            .fetch_add(done.files_out as u64, Ordering::Relaxed);
        self.bytes_merged
            .fetch_add(done.bytes_in, Ordering::Relaxed);
        self.bytes_written
            .fetch_add(done.bytes_out, Ordering::Relaxed);
    }
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Files merged away.
    pub files_in: usize,
    /// Merged files written.
    pub files_out: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Bytes of the files merged away.
    pub bytes_in: u64,
    /// Bytes of the merged files.
    pub bytes_out: u64,
}

impl Compacted {
    /// Adds another compaction's figures.
    fn add(&mut self, other: &Compacted) {
        self.files_in += other.files_in;
        self.files_out += other.files_out;
        self.rows += other.rows;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
    }
}

/// A table directory found on disk that [`quiet_directories`] found worth compacting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuietDirectory {
    /// Its tenant (unescaped).
    pub tenant: String,
    /// Its table, `schema.table` (unescaped).
    pub table: String,
    /// The manifest's latest column list, to open its writer with.
    pub columns: Vec<ColdColumn>,
}

/// The table directories under `root` for which `owns(tenant, table)` holds and whose
/// manifest lists at least `min_files` files of fewer than `small_rows` rows: what a sink
/// that (re)started looks for, so directories nobody writes any more are still compacted.
/// A directory without a readable manifest is logged and left to the writer's recovery.
pub fn quiet_directories(
    root: &std::path::Path,
    owns: &dyn Fn(&str, &str) -> bool,
    small_rows: u64,
    min_files: usize,
) -> Result<Vec<QuietDirectory>, ParquetError> {
    let mut found = Vec::new();
    for (tenant, table) in list_tables(root)? {
        if !owns(&tenant, &table) {
            continue;
        }
        let dir = table_dir(root, &tenant, &table);
        let manifest = match Manifest::load(&dir) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(table_dir = %dir.display(), error = %e, "cold-tier directory skipped by the idle compaction");
                continue;
            }
        };
        if manifest.small_files(small_rows) >= min_files {
            found.push(QuietDirectory {
                tenant,
                table,
                columns: manifest.columns,
            });
        }
    }
    Ok(found)
}

impl ColdTableWriter {
    /// Whether the directory lists enough small files to compact under `policy`: at
    /// least `min_files` more than the last compaction left (so files it cannot merge,
    /// such as runs of one, do not make every write try again).
    pub fn wants_compaction(&self, policy: &CompactionPolicy) -> bool {
        policy.min_files > 0
            && self.small_files(policy) >= self.small_after_compaction + policy.min_files
    }

    /// The small files the manifest lists.
    fn small_files(&self, policy: &CompactionPolicy) -> usize {
        self.manifest.small_files(policy.small_rows)
    }

    /// Merges every run of at least two consecutive small files (see the module doc),
    /// each run committed on its own. Returns what it did; an error leaves the directory
    /// to the next recovery, with every row listed once.
    pub fn compact(&mut self, policy: &CompactionPolicy) -> Result<Compacted, ParquetError> {
        self.recover_if_needed()?;
        let runs = self.small_runs(policy)?;
        let mut done = Compacted::default();
        // From the last run back, so the earlier runs' positions stay valid.
        for run in runs.into_iter().rev() {
            if let Some(merged) = self.merge_run(run)? {
                done.add(&merged);
            }
        }
        self.small_after_compaction = self.small_files(policy);
        Ok(done)
    }

    /// The runs of consecutive small files (positions in the manifest), at least two
    /// files each, each within one date directory and one schema and at most
    /// `policy.max_rows` rows.
    fn small_runs(&self, policy: &CompactionPolicy) -> Result<Vec<Range<usize>>, ParquetError> {
        let mut runs = Vec::new();
        let mut run: Option<(Range<usize>, &str, Fields, u64)> = None;
        for (i, entry) in self.manifest.files.iter().enumerate() {
            let date = parse_relative_path(&entry.path).map(|(date, _, _)| date);
            let fields = if entry.rows < policy.small_rows {
                Some(file_fields(&self.table_dir.join(&entry.path))?)
            } else {
                None
            };
            let joins = match (&run, date, &fields) {
                (Some((_, run_date, run_fields, rows)), Some(date), Some(fields)) => {
                    *run_date == date
                        && run_fields == fields
                        && rows + entry.rows <= policy.max_rows
                }
                _ => false,
            };
            if joins {
                if let Some((range, _, _, rows)) = &mut run {
                    range.end = i + 1;
                    *rows += entry.rows;
                }
                continue;
            }
            if let Some((range, ..)) = run.take() {
                if range.len() >= 2 {
                    runs.push(range);
                }
            }
            if let (Some(date), Some(fields)) = (date, fields) {
                run = Some((i..i + 1, date, fields, entry.rows));
            }
        }
        if let Some((range, ..)) = run {
            if range.len() >= 2 {
                runs.push(range);
            }
        }
        Ok(runs)
    }

    /// Merges the files at `run` into one (the module doc's three steps), listed at the
    /// run's first position; `None` when the merged file's name is taken.
    fn merge_run(&mut self, run: Range<usize>) -> Result<Option<Compacted>, ParquetError> {
        let inputs: Vec<FileEntry> = self.manifest.files[run.clone()].to_vec();
        let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
            return Ok(None);
        };
        let Some((date_dir, _, _)) = parse_relative_path(&first.path) else {
            return Ok(None);
        };
        let (lo, hi) = (first.lsn_min, last.lsn_max.max(first.lsn_max));
        let relative = format!("{date_dir}/{}", file_name(lo, hi));
        let target = self.table_dir.join(&relative);
        if self.manifest.files.iter().any(|f| f.path == relative) || target.exists() {
            tracing::debug!(path = %target.display(), "compaction skipped: name taken");
            return Ok(None);
        }

        // Step 1: stage the merged file.
        self.needs_recovery = true;
        let temp_dir = self.table_dir.join(TEMP_DIR);
        ensure_dir(&temp_dir)?;
        let temp = temp_path(&self.table_dir, &relative);
        let mut writer: Option<ArrowWriter<HashingWriter>> = None;
        let mut rows = 0u64;
        for entry in &inputs {
            let path = self.table_dir.join(&entry.path);
            let mut file = File::open(&path).map_err(|e| ParquetError::io("open", &path, e))?;
            verify_open_file(&mut file, &path, entry)?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(parquet_error(&path))?;
            let schema = Arc::new(Schema::new(reader.schema().fields().clone()));
            let mut from_file = 0u64;
            for batch in reader {
                let batch = batch
                    .and_then(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec()))
                    .map_err(|source| ParquetError::Arrow {
                        path: path.clone(),
                        source,
                    })?;
                let out = match &mut writer {
                    Some(w) => w,
                    None => writer.insert(self.create_compacted(&temp, &schema, lo, hi)?),
                };
                out.write(&batch).map_err(parquet_error(&temp))?;
                from_file += batch.num_rows() as u64;
            }
            if from_file != entry.rows {
                return Err(ParquetError::BadFile {
                    path,
                    reason: format!("holds {from_file} rows, the manifest says {}", entry.rows),
                });
            }
            rows += from_file;
        }
        let Some(writer) = writer else {
            self.needs_recovery = false;
            return Ok(None);
        };
        let (bytes, sha256) = close_file(writer, &temp)?;
        sync_dir(&temp_dir)?;
        crash_point("parquet-compact-staged");
        let merged = FileEntry {
            path: relative.clone(),
            rows,
            lsn_min: lo,
            lsn_max: hi,
            bytes,
            sha256,
        };

        // Step 2: the commit point.
        let mut next = self.manifest.clone();
        next.files.splice(run, [merged.clone()]);
        next.covered_lsn = next.max_lsn();
        next.store(&self.table_dir)?;
        self.manifest = next;
        crash_point("parquet-compact-after-manifest");

        // Step 3: the merged file into place, the run's files away.
        let date_path = parent_of(&target)?;
        ensure_dir(&date_path)?;
        fs::rename(&temp, &target).map_err(|e| ParquetError::io("rename", &temp, e))?;
        sync_dir(&date_path)?;
        for (i, entry) in inputs.iter().enumerate() {
            let path = self.table_dir.join(&entry.path);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ParquetError::io("remove", &path, e)),
            }
            if i == 0 {
                crash_point("parquet-compact-mid-delete");
            }
        }
        sync_dir(&date_path)?;
        sync_dir(&temp_dir)?;
        self.needs_recovery = false;
        tracing::debug!(
            table_dir = %self.table_dir.display(),
            files = inputs.len(),
            rows,
            merged = %relative,
            "cold files compacted"
        );
        Ok(Some(Compacted {
            files_in: inputs.len(),
            files_out: 1,
            rows,
            bytes_in: inputs.iter().map(|f| f.bytes).sum(),
            bytes_out: merged.bytes,
        }))
    }

    /// Creates the merged file `path` with the inputs' schema.
    fn create_compacted(
        &self,
        path: &std::path::Path,
        schema: &Arc<Schema>,
        lsn_lo: Lsn,
        lsn_hi: Lsn,
    ) -> Result<ArrowWriter<HashingWriter>, ParquetError> {
        // Every column compressed: whether one is uniform is only known once all is read.
        let props = self
            .compressed_properties(schema.fields(), lsn_lo, lsn_hi)
            .map_err(parquet_error(path))?;
        open_writer(path, schema, props)
    }
}

/// The Arrow fields of a Parquet file, read from its footer.
fn file_fields(path: &std::path::Path) -> Result<Fields, ParquetError> {
    let file = File::open(path).map_err(|e| ParquetError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error(path))?;
    Ok(builder.schema().fields().clone())
}
