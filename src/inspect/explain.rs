//! `helios-repl explain-compression --input FILE --batch-rows N`: reads a CSV file (with a
//! header; column types inferred) or a Parquet file, cuts it into consecutive batches of N
//! rows, encodes them as one stream with the codec the NATS sink uses, decodes every frame
//! back to check it is identical, and reports per column the codec chosen and its bytes
//! before and after, and in total the bytes per row counting every byte of the frames.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_csv::reader::Format;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::codec::{EncoderConfig, StreamDecoder, StreamEncoder};

/// Rows of the input inferred at a time from a CSV file.
const CSV_INFER_ROWS: usize = 10_000;

/// Why a file could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file holds no rows.
    #[error("{0}: the file holds no rows")]
    Empty(PathBuf),
    /// `--batch-rows` is 0.
    #[error("--batch-rows must be at least 1")]
    BatchRows,
    /// The codec refused a batch.
    #[error("batch {batch}: encode: {message}")]
    Encode {
        /// Which batch (0-based).
        batch: usize,
        /// The codec's message.
        message: String,
    },
    /// A frame did not decode to the batch it was made from.
    #[error("batch {batch}: the frame does not decode to the same rows: {message}")]
    RoundTrip {
        /// Which batch (0-based).
        batch: usize,
        /// What differs.
        message: String,
    },
}

/// One column over every frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnSummary {
    /// Column name.
    pub column: String,
    /// Arrow type.
    pub data_type: String,
    /// Codec → frames it was chosen for.
    pub codecs: BTreeMap<String, usize>,
    /// Arrow bytes of the column.
    pub bytes_before: usize,
    /// Its bytes in the frames.
    pub bytes_after: usize,
}

/// What the codec did with a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExplainReport {
    /// Rows read.
    pub rows: usize,
    /// Frames (batches) made.
    pub frames: usize,
    /// Rows per batch asked for.
    pub batch_rows: usize,
    /// Every byte of every frame.
    pub frame_bytes: usize,
    /// Arrow bytes of the batches.
    pub arrow_bytes: usize,
    /// Per column.
    pub columns: Vec<ColumnSummary>,
    /// Seconds encoding.
    pub encode_secs: f64,
    /// Seconds decoding.
    pub decode_secs: f64,
}

impl ExplainReport {
    /// Frame bytes per row.
    pub fn bytes_per_row(&self) -> f64 {
        self.frame_bytes as f64 / self.rows.max(1) as f64
    }
}

fn read_error(path: &Path, message: impl fmt::Display) -> ExplainError {
    ExplainError::Read {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads `path`: Parquet when it starts with `PAR1`, CSV with a header otherwise.
pub fn read_table(path: &Path) -> Result<Vec<RecordBatch>, ExplainError> {
    let mut file = File::open(path).map_err(|e| read_error(path, e))?;
    let mut magic = [0u8; 4];
    let is_parquet = file.read_exact(&mut magic).is_ok() && &magic == b"PAR1";
    file.seek(SeekFrom::Start(0))
        .map_err(|e| read_error(path, e))?;
    let batches: Vec<RecordBatch> = if is_parquet {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| read_error(path, format!("not a readable Parquet file: {e}")))?;
        reader
            .collect::<Result<_, _>>()
            .map_err(|e| read_error(path, format!("Parquet: {e}")))?
    } else {
        let format = Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(&mut file, Some(CSV_INFER_ROWS))
            .map_err(|e| read_error(path, format!("CSV header/types: {e}")))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| read_error(path, e))?;
        let reader = arrow_csv::ReaderBuilder::new(Arc::new(schema))
            .with_format(format)
            .with_batch_size(65_536)
            .build(file)
            .map_err(|e| read_error(path, format!("CSV: {e}")))?;
        reader
            .collect::<Result<_, _>>()
            .map_err(|e| read_error(path, format!("CSV: {e}")))?
    };
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Err(ExplainError::Empty(path.to_path_buf()));
    }
    Ok(batches)
}

/// Runs the codec over `input` cut into batches of `batch_rows` rows.
pub fn explain(input: &[RecordBatch], batch_rows: usize) -> Result<ExplainReport, ExplainError> {
    if batch_rows == 0 {
        return Err(ExplainError::BatchRows);
    }
    let Some(first) = input.first() else {
        return Ok(ExplainReport::default());
    };
    let all = arrow_select::concat::concat_batches(&first.schema(), input).map_err(|e| {
        ExplainError::Encode {
            batch: 0,
            message: e.to_string(),
        }
    })?;
    let mut encoder = StreamEncoder::new(EncoderConfig::default());
    let mut decoder = StreamDecoder::new();
    let mut report = ExplainReport {
        rows: all.num_rows(),
        batch_rows,
        ..ExplainReport::default()
    };
    let mut columns: Vec<ColumnSummary> = Vec::new();
    let mut start = 0;
    while start < all.num_rows() {
        let len = batch_rows.min(all.num_rows() - start);
        let batch = all.slice(start, len);
        let index = report.frames;
        let began = Instant::now();
        let frame = encoder.encode(&batch).map_err(|e| ExplainError::Encode {
            batch: index,
            message: e.to_string(),
        })?;
        report.encode_secs += began.elapsed().as_secs_f64();
        let began = Instant::now();
        let decoded = decoder
            .decode(&frame)
            .map_err(|e| ExplainError::RoundTrip {
                batch: index,
                message: e.to_string(),
            })?;
        report.decode_secs += began.elapsed().as_secs_f64();
        if decoded != batch {
            return Err(ExplainError::RoundTrip {
                batch: index,
                message: "the decoded rows differ".into(),
            });
        }
        report.frames += 1;
        report.frame_bytes += frame.len();
        report.arrow_bytes += crate::codec::batch_data_bytes(&batch);
        for (i, c) in encoder.last_choices().iter().enumerate() {
            if columns.len() <= i {
                columns.push(ColumnSummary {
                    column: c.column.clone(),
                    data_type: c.data_type.clone(),
                    ..ColumnSummary::default()
                });
            }
            let s = &mut columns[i];
            *s.codecs.entry(c.codec.clone()).or_default() += 1;
            s.bytes_before += c.bytes_before;
            s.bytes_after += c.bytes_after;
        }
        start += len;
    }
    report.columns = columns;
    Ok(report)
}

impl fmt::Display for ExplainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} rows in {} frames of up to {} rows",
            self.rows, self.frames, self.batch_rows
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| column | type | codec (frames) | bytes before | bytes after | B/row | ratio |"
        )?;
        writeln!(f, "|---|---|---|---:|---:|---:|---:|")?;
        for c in &self.columns {
            let codecs: Vec<String> = c.codecs.iter().map(|(k, n)| format!("{k} ({n})")).collect();
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {:.2} | {:.1}× |",
                c.column,
                c.data_type,
                codecs.join(", "),
                c.bytes_before,
                c.bytes_after,
                c.bytes_after as f64 / self.rows.max(1) as f64,
                c.bytes_before as f64 / c.bytes_after.max(1) as f64
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "total: {} frame bytes = {:.2} bytes/row (every byte of the frames; Arrow {} bytes, {:.1}×)",
            self.frame_bytes,
            self.bytes_per_row(),
            self.arrow_bytes,
            self.arrow_bytes as f64 / self.frame_bytes.max(1) as f64
        )?;
        let mb = self.arrow_bytes as f64 / 1e6;
        write!(
            f,
            "encode {:.0} MB/s, decode {:.0} MB/s (Arrow bytes, this machine, one core)",
            mb / self.encode_secs.max(1e-9),
            mb / self.decode_secs.max(1e-9)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_file_is_explained_per_column_and_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.csv");
        let mut text = String::from("id,city,price\n");
        for i in 0..2500 {
            text.push_str(&format!("{i},{},{}.25\n", ["Oslo", "Lima"][i % 2], i % 70));
        }
        std::fs::write(&path, text).expect("write");
        let batches = read_table(&path).expect("read");
        let report = explain(&batches, 1000).expect("explain");
        assert_eq!((report.rows, report.frames), (2500, 3));
        assert_eq!(report.columns.len(), 3);
        assert_eq!(report.columns[0].column, "id");
        assert!(report.frame_bytes > 0 && report.bytes_per_row() < 24.0);
        let text = report.to_string();
        assert!(text.contains("bytes/row"), "{text}");
    }

    #[test]
    fn a_parquet_file_is_explained_too() {
        use arrow_array::{Int64Array, StringArray};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.parquet");
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..3000)) as arrow_array::ArrayRef,
            ),
            (
                "city",
                Arc::new(StringArray::from_iter_values(
                    (0..3000).map(|i| ["Oslo", "Lima", "Pune"][i % 3]),
                )),
            ),
        ])
        .expect("batch");
        let file = File::create(&path).expect("create");
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let report = explain(&read_table(&path).expect("read"), 1000).expect("explain");
        assert_eq!((report.rows, report.frames), (3000, 3));
        assert_eq!(report.columns[1].column, "city");
        assert!(report.bytes_per_row() < 4.0, "{report}");
    }

    #[test]
    fn garbage_and_empty_files_are_named_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "a,b\n").expect("write");
        assert!(matches!(read_table(&empty), Err(ExplainError::Empty(_))));
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, b"PAR1 not really").expect("write");
        let err = read_table(&bad).expect_err("garbage");
        assert!(err.to_string().contains("bad.parquet"), "{err}");
        let missing = dir.path().join("missing.csv");
        assert!(read_table(&missing).is_err());
        assert!(matches!(explain(&[], 0), Err(ExplainError::BatchRows)));
    }
}
