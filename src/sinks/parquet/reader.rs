//! Reading the cold tier back: every file the manifest lists, in manifest order, each
//! checked against its recorded size and SHA-256 before it is decoded with the Parquet
//! crate's Arrow reader, and converted back into [`ColdRow`]s.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::layout::{decode_path_value, table_dir};
use super::manifest::{verify_open_file, FileEntry, Manifest};
use super::schema::{
    arrow_to_pg_micros, bool_to_text, column_plan, columns_from_schema, f32_to_text, f64_to_text,
    FIXED_COLUMNS,
};
use super::{ColdColumn, ColdRow, ParquetError};
use crate::change::Text;

/// Reads every published row of a table: the manifest's (latest) column list and the
/// rows of all listed files, in manifest order and, within a file, in stored order.
///
/// Each file's user columns are mapped by name onto the latest column list; a column an
/// older file lacks reads as `None`. A file whose size or SHA-256 differs from the
/// manifest, or that is missing, is an error naming it; a missing file is first read
/// again a few times, from the manifest as it is then (a compaction may have replaced
/// the file, or a write not have moved it into place yet).
pub fn read_table(
    root: &Path,
    tenant: &str,
    table: &str,
) -> Result<(Vec<ColdColumn>, Vec<ColdRow>), ParquetError> {
    let dir = table_dir(root, tenant, table);
    let mut attempts = 0;
    loop {
        let manifest = load_manifest(&dir, tenant, table)?;
        match read_listed(&dir, &manifest) {
            // A writer lists its files before it moves them into place and deletes the
            // files a compaction replaced after: a reader between the two steps waits a
            // moment and reads again.
            Err(ParquetError::MissingFile { .. }) if attempts < 3 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20 * attempts));
            }
            Err(e) => return Err(e),
            Ok(rows) => return Ok((manifest.columns, rows)),
        }
    }
}

/// The rows of every file `manifest` lists.
fn read_listed(dir: &Path, manifest: &Manifest) -> Result<Vec<ColdRow>, ParquetError> {
    let mut rows = Vec::new();
    for entry in &manifest.files {
        rows.extend(read_file(&dir.join(&entry.path), entry, &manifest.columns)?);
    }
    Ok(rows)
}

/// Hands every published row of a table to `each`, a batch at a time (up to the Parquet
/// reader's batch size), in manifest order: what [`read_table`] returns, never held
/// whole. For readers no writer of the table runs beside (a job's own start-up): a file
/// a compaction replaced is an error, not read again, since `each` has seen rows.
pub fn for_each_batch(
    root: &Path,
    tenant: &str,
    table: &str,
    mut each: impl FnMut(Vec<ColdRow>) -> Result<(), ParquetError>,
) -> Result<(), ParquetError> {
    let dir = table_dir(root, tenant, table);
    let manifest = load_manifest(&dir, tenant, table)?;
    for entry in &manifest.files {
        read_file_batches(&dir.join(&entry.path), entry, &manifest.columns, &mut each)?;
    }
    Ok(())
}

/// The manifest of `tenant`'s `table` in `dir`, which must exist and name them.
fn load_manifest(dir: &Path, tenant: &str, table: &str) -> Result<Manifest, ParquetError> {
    let manifest = Manifest::load(dir)?.ok_or_else(|| ParquetError::Manifest {
        path: Manifest::path(dir),
        reason: "not found".to_string(),
    })?;
    if manifest.tenant != tenant || manifest.table != table {
        return Err(ParquetError::Manifest {
            path: Manifest::path(dir),
            reason: format!(
                "belongs to tenant {:?} table {:?}, not tenant {tenant:?} table {table:?}",
                manifest.tenant, manifest.table
            ),
        });
    }
    Ok(manifest)
}

/// Reads one data file after verifying it against its manifest entry, mapping its user
/// columns by name onto `columns`.
pub fn read_file(
    path: &Path,
    entry: &FileEntry,
    columns: &[ColdColumn],
) -> Result<Vec<ColdRow>, ParquetError> {
    let mut rows = Vec::new();
    read_file_batches(path, entry, columns, &mut |mut batch| {
        rows.append(&mut batch);
        Ok(())
    })?;
    Ok(rows)
}

/// [`read_file`], handing the rows to `each` a batch at a time. A file holding another
/// number of rows than its entry says is an error after its last batch.
fn read_file_batches(
    path: &Path,
    entry: &FileEntry,
    columns: &[ColdColumn],
    each: &mut dyn FnMut(Vec<ColdRow>) -> Result<(), ParquetError>,
) -> Result<(), ParquetError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ParquetError::MissingFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(ParquetError::io("open", path, e)),
    };
    verify_open_file(&mut file, path, entry)?;

    let bad = |reason: String| ParquetError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| ParquetError::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let schema = builder.schema().clone();
    columns_from_schema(&schema).map_err(bad)?;
    let mut fixed = [0usize; FIXED_COLUMNS.len()];
    for (slot, name) in fixed.iter_mut().zip(FIXED_COLUMNS) {
        *slot = schema
            .index_of(name)
            .map_err(|_| bad(format!("fixed column {name:?} is missing")))?;
    }
    // Where each wanted column is in the file, if it is there.
    let plan = column_plan(&schema, columns);

    let reader = builder.build().map_err(|source| ParquetError::Parquet {
        path: path.to_path_buf(),
        source,
    })?;
    let mut read = 0usize;
    for batch in reader {
        let batch = batch.map_err(|source| ParquetError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        convert_batch(&batch, &plan, &fixed, read, path, &mut rows)?;
        read += rows.len();
        each(rows)?;
    }
    if read as u64 != entry.rows {
        return Err(bad(format!(
            "holds {read} rows, the manifest says {}",
            entry.rows
        )));
    }
    Ok(())
}

/// Appends the rows of one batch; `first_row` is the file-wide index of its first row.
fn convert_batch(
    batch: &RecordBatch,
    plan: &[Option<usize>],
    fixed: &[usize; FIXED_COLUMNS.len()],
    first_row: usize,
    path: &Path,
    out: &mut Vec<ColdRow>,
) -> Result<(), ParquetError> {
    let bad = |reason: String| ParquetError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let schema = batch.schema();
    let name_of = |index: usize| schema.field(index).name().clone();

    let user: Vec<Option<Vec<Option<Text>>>> = plan
        .iter()
        .map(|index| {
            index
                .map(|i| texts(batch.column(i), &name_of(i)).map_err(&bad))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    let [event, op, valid_from, valid_to, system_from, system_to, from_lsn, to_lsn, tombstone] =
        fixed.map(|i| batch.column(i).clone());
    let event = strings(&event, "event").map_err(&bad)?;
    let op = strings(&op, "op").map_err(&bad)?;
    let valid_from = timestamps(&valid_from, "valid_from").map_err(&bad)?;
    let valid_to = timestamps(&valid_to, "valid_to").map_err(&bad)?;
    let system_from = timestamps(&system_from, "system_from").map_err(&bad)?;
    let system_to = timestamps(&system_to, "system_to").map_err(&bad)?;
    let from_lsn = lsns(&from_lsn, "system_from_lsn").map_err(&bad)?;
    let to_lsn = lsns(&to_lsn, "system_to_lsn").map_err(&bad)?;
    let tombstone = tombstone
        .as_boolean_opt()
        .ok_or_else(|| bad(wrong_type("tombstone", &tombstone)))?;

    for i in 0..batch.num_rows() {
        let row_no = first_row + i;
        let required = |value: Option<i64>, name: &str| {
            value.ok_or_else(|| bad(format!("row {row_no}: {name} is NULL")))
        };
        let event = event[i]
            .as_deref()
            .ok_or_else(|| bad(format!("row {row_no}: event is NULL")))?
            .parse()
            .map_err(|e| bad(format!("row {row_no}: {e}")))?;
        let op = op[i]
            .as_deref()
            .ok_or_else(|| bad(format!("row {row_no}: op is NULL")))?
            .parse()
            .map_err(|e| bad(format!("row {row_no}: {e}")))?;
        out.push(ColdRow {
            event,
            op,
            values: user
                .iter()
                .map(|column| column.as_ref().and_then(|texts| texts[i].clone()))
                .collect(),
            valid_from: required(valid_from[i], "valid_from")?,
            valid_to: valid_to[i],
            system_from: required(system_from[i], "system_from")?,
            system_from_lsn: from_lsn[i]
                .ok_or_else(|| bad(format!("row {row_no}: system_from_lsn is NULL")))?,
            system_to: system_to[i],
            system_to_lsn: to_lsn[i],
            tombstone: tombstone.is_valid(i) && tombstone.value(i),
        });
    }
    Ok(())
}

fn wrong_type(name: &str, array: &ArrayRef) -> String {
    format!("column {name:?} has unexpected type {}", array.data_type())
}

/// A user column's values in PostgreSQL's text form.
fn texts(array: &ArrayRef, name: &str) -> Result<Vec<Option<Text>>, String> {
    let out = match array.data_type() {
        DataType::Int32 => array
            .as_primitive_opt::<Int32Type>()
            .map(|a| a.iter().map(|v| v.map(|v| v.to_string().into())).collect()),
        DataType::Int64 => array
            .as_primitive_opt::<Int64Type>()
            .map(|a| a.iter().map(|v| v.map(|v| v.to_string().into())).collect()),
        DataType::Float32 => array
            .as_primitive_opt::<Float32Type>()
            .map(|a| a.iter().map(|v| v.map(|v| f32_to_text(v).into())).collect()),
        DataType::Float64 => array
            .as_primitive_opt::<Float64Type>()
            .map(|a| a.iter().map(|v| v.map(|v| f64_to_text(v).into())).collect()),
        DataType::Boolean => array.as_boolean_opt().map(|a| {
            a.iter()
                .map(|v| v.map(|b| Text::from(bool_to_text(b))))
                .collect()
        }),
        DataType::Utf8 | DataType::LargeUtf8 => return strings(array, name),
        _ => None,
    };
    out.ok_or_else(|| wrong_type(name, array))
}

fn strings(array: &ArrayRef, name: &str) -> Result<Vec<Option<Text>>, String> {
    let out = match array.data_type() {
        DataType::Utf8 => array
            .as_string_opt::<i32>()
            .map(|a| a.iter().map(|v| v.map(Text::from)).collect()),
        DataType::LargeUtf8 => array
            .as_string_opt::<i64>()
            .map(|a| a.iter().map(|v| v.map(Text::from)).collect()),
        _ => None,
    };
    out.ok_or_else(|| wrong_type(name, array))
}

/// Timestamp values as PostgreSQL microseconds.
fn timestamps(array: &ArrayRef, name: &str) -> Result<Vec<Option<i64>>, String> {
    if !matches!(
        array.data_type(),
        DataType::Timestamp(TimeUnit::Microsecond, _)
    ) {
        return Err(wrong_type(name, array));
    }
    let typed = array
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| wrong_type(name, array))?;
    typed
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.map(|arrow| {
                arrow_to_pg_micros(arrow)
                    .ok_or_else(|| format!("row {row}: {name} {arrow} is out of range"))
            })
            .transpose()
        })
        .collect()
}

fn lsns(array: &ArrayRef, name: &str) -> Result<Vec<Option<u64>>, String> {
    array
        .as_primitive_opt::<UInt64Type>()
        .map(|a| a.iter().collect())
        .ok_or_else(|| wrong_type(name, array))
}

/// Every (tenant, table) with a directory under `root`, decoded and sorted. Directory
/// names that are not valid escaped values are skipped. A missing `root` has none.
pub fn list_tables(root: &Path) -> Result<Vec<(String, String)>, ParquetError> {
    let mut tables = Vec::new();
    for (tenant, tenant_dir) in decoded_dirs(root, "tenant=")? {
        for (table, _) in decoded_dirs(&tenant_dir, "table=")? {
            tables.push((tenant.clone(), table));
        }
    }
    tables.sort();
    Ok(tables)
}

/// Sub-directories of `dir` named `<prefix><escaped value>`, with the decoded values.
fn decoded_dirs(
    dir: &Path,
    prefix: &str,
) -> Result<Vec<(String, std::path::PathBuf)>, ParquetError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ParquetError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ParquetError::io("list", dir, e))?;
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let name = entry.file_name();
        let Some(encoded) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        match decode_path_value(encoded) {
            Some(value) => out.push((value, entry.path())),
            None => tracing::warn!(
                path = %entry.path().display(),
                "skipping directory whose name is not a valid escaped value"
            ),
        }
    }
    Ok(out)
}
