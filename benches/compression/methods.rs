//! The compression methods compared, each run over one table's batches, one batch at a time
//! (every method sees the same consecutive batches; nothing is shared across batches except
//! by our stream codec, whose encoder is one stream's).
//!
//! * CSV + zstd-3: the batch as CSV text, a header line per batch, compressed with zstd
//!   level 3.
//! * Arrow IPC + zstd: an IPC stream per batch (schema message, batch, end marker) with the
//!   IPC writer's ZSTD buffer compression; every byte.
//! * Parquet default: one file per batch from `ArrowWriter` with its defaults (dictionary
//!   on) and ZSTD(3); every byte of the file, footer included.
//! * Parquet best + zstd-19: per column the smallest of the Parquet encodings valid for its
//!   physical type (PLAIN, dictionary, DELTA_BINARY_PACKED, BYTE_STREAM_SPLIT,
//!   DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY, RLE for booleans) with ZSTD(19), chosen once
//!   per (table, batch size) on a sample of batches spread over the table and then used
//!   for every batch; counted as the column chunks' compressed sizes (page headers,
//!   dictionary pages and data pages), without the footer.
//! * pco + best: each numeric column (ints, floats, dates, timestamps, decimals that fit
//!   i64) compressed with pco's wrapped format (chunk metadata and pages, no file header)
//!   at its default level, its non-null values only plus, if it has nulls, its validity
//!   bitmap with zstd-19; per column the smaller of that and the column's Parquet-best
//!   bytes, Parquet-best for the other columns. Column data only.
//! * Ours: `helios_repl::codec::StreamEncoder`, one encoder and one decoder per stream,
//!   every byte of every frame, each decoded frame compared with its batch.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Date64Type, Decimal128Type, Decimal64Type, Float32Type,
    Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type,
    UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;
use arrow_schema::{DataType, TimeUnit};
use bytes::Bytes;
use helios_repl::codec::{EncoderConfig, StreamDecoder, StreamEncoder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, Type as PhysicalType, ZstdLevel};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Bytes written, and the time spent writing and reading them back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timed {
    pub bytes: u64,
    pub encode: Duration,
    pub decode: Duration,
}

/// CSV + zstd-3, per batch.
pub fn csv_zstd(batches: &[RecordBatch]) -> Result<u64> {
    let mut total = 0u64;
    let mut text = Vec::new();
    for batch in batches {
        text.clear();
        {
            let mut w = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut text);
            w.write(batch)?;
        }
        total += zstd::bulk::compress(&text, 3)?.len() as u64;
    }
    Ok(total)
}

/// Arrow IPC stream with ZSTD buffer compression, per batch, timed both ways.
pub fn ipc_zstd(batches: &[RecordBatch]) -> Result<Timed> {
    let options = IpcWriteOptions::default().try_with_compression(Some(CompressionType::ZSTD))?;
    let mut out = Timed::default();
    let mut streams = Vec::with_capacity(batches.len());
    let start = Instant::now();
    for batch in batches {
        let mut buf = Vec::new();
        let mut w = StreamWriter::try_new_with_options(&mut buf, &batch.schema(), options.clone())?;
        w.write(batch)?;
        w.finish()?;
        drop(w);
        out.bytes += buf.len() as u64;
        streams.push(buf);
    }
    out.encode = start.elapsed();
    let start = Instant::now();
    let mut rows = 0;
    for buf in &streams {
        for b in StreamReader::try_new(Cursor::new(buf), None)? {
            rows += b?.num_rows();
        }
    }
    out.decode = start.elapsed();
    check_rows(batches, rows, "Arrow IPC")?;
    Ok(out)
}

/// Parquet with the writer's defaults and ZSTD(3), one file per batch, timed both ways.
pub fn parquet_default(batches: &[RecordBatch]) -> Result<Timed> {
    let props = WriterProperties::builder()
        .set_dictionary_enabled(true)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut out = Timed::default();
    let mut files = Vec::with_capacity(batches.len());
    let start = Instant::now();
    for batch in batches {
        let (file, _) = write_parquet(batch, props.clone())?;
        out.bytes += file.len() as u64;
        files.push(Bytes::from(file));
    }
    out.encode = start.elapsed();
    let start = Instant::now();
    let mut rows = 0;
    for file in &files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file.clone())?
            .with_batch_size(batches[0].num_rows().max(1))
            .build()?;
        for b in reader {
            rows += b?.num_rows();
        }
    }
    out.decode = start.elapsed();
    check_rows(batches, rows, "Parquet")?;
    Ok(out)
}

fn check_rows(batches: &[RecordBatch], rows: usize, what: &str) -> Result<()> {
    let want: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows != want {
        bail!("{what} read back {rows} rows of {want}");
    }
    Ok(())
}

/// One batch as a Parquet file, and the file's metadata.
fn write_parquet(
    batch: &RecordBatch,
    props: WriterProperties,
) -> Result<(Vec<u8>, ParquetMetaData)> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(batch)?;
    let meta = w.close()?;
    Ok((buf, meta))
}

/// Per leaf column (top-level columns only here), the compressed bytes of its chunks.
fn column_chunk_bytes(meta: &ParquetMetaData, columns: usize) -> Vec<u64> {
    let mut out = vec![0u64; columns];
    for rg in meta.row_groups() {
        for (i, c) in rg.columns().iter().enumerate() {
            out[i] += c.compressed_size() as u64;
        }
    }
    out
}

/// A Parquet encoding tried for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PqEncoding {
    Plain,
    Dictionary,
    DeltaBinaryPacked,
    ByteStreamSplit,
    DeltaLengthByteArray,
    DeltaByteArray,
    Rle,
}

impl PqEncoding {
    pub fn name(self) -> &'static str {
        match self {
            PqEncoding::Plain => "PLAIN",
            PqEncoding::Dictionary => "DICT",
            PqEncoding::DeltaBinaryPacked => "DELTA_BINARY_PACKED",
            PqEncoding::ByteStreamSplit => "BYTE_STREAM_SPLIT",
            PqEncoding::DeltaLengthByteArray => "DELTA_LENGTH_BYTE_ARRAY",
            PqEncoding::DeltaByteArray => "DELTA_BYTE_ARRAY",
            PqEncoding::Rle => "RLE",
        }
    }

    /// The encodings valid for a physical type (as the `parquet` crate writes them).
    fn valid_for(t: PhysicalType) -> &'static [PqEncoding] {
        use PqEncoding::*;
        match t {
            PhysicalType::BOOLEAN => &[Plain, Rle],
            PhysicalType::INT32 | PhysicalType::INT64 => {
                &[Plain, Dictionary, DeltaBinaryPacked, ByteStreamSplit]
            }
            PhysicalType::FLOAT | PhysicalType::DOUBLE => &[Plain, Dictionary, ByteStreamSplit],
            PhysicalType::BYTE_ARRAY => &[Plain, Dictionary, DeltaLengthByteArray, DeltaByteArray],
            PhysicalType::FIXED_LEN_BYTE_ARRAY => {
                &[Plain, Dictionary, ByteStreamSplit, DeltaByteArray]
            }
            PhysicalType::INT96 => &[Plain, Dictionary],
        }
    }

    fn apply(
        self,
        b: parquet::file::properties::WriterPropertiesBuilder,
        path: ColumnPath,
    ) -> parquet::file::properties::WriterPropertiesBuilder {
        let enc = match self {
            PqEncoding::Dictionary => return b.set_column_dictionary_enabled(path, true),
            PqEncoding::Plain => Encoding::PLAIN,
            PqEncoding::DeltaBinaryPacked => Encoding::DELTA_BINARY_PACKED,
            PqEncoding::ByteStreamSplit => Encoding::BYTE_STREAM_SPLIT,
            PqEncoding::DeltaLengthByteArray => Encoding::DELTA_LENGTH_BYTE_ARRAY,
            PqEncoding::DeltaByteArray => Encoding::DELTA_BYTE_ARRAY,
            PqEncoding::Rle => Encoding::RLE,
        };
        b.set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, enc)
    }
}

/// ZSTD(19), no statistics (they go to the footer, which is not counted anyway).
fn best_base() -> Result<parquet::file::properties::WriterPropertiesBuilder> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(19)?))
        .set_statistics_enabled(EnabledStatistics::None)
        .set_dictionary_enabled(false))
}

/// What Parquet-best chose and what it cost, per column.
#[derive(Debug, Clone)]
pub struct ParquetBest {
    pub encodings: Vec<PqEncoding>,
    pub column_bytes: Vec<u64>,
}

impl ParquetBest {
    pub fn total(&self) -> u64 {
        self.column_bytes.iter().sum()
    }
}

/// Parquet-best: per column the encoding smallest over `sample` (ZSTD(19)), then every
/// batch written with those encodings.
pub fn parquet_best(batches: &[RecordBatch], sample: &[RecordBatch]) -> Result<ParquetBest> {
    let schema = batches[0].schema();
    let descr = ArrowSchemaConverter::new().convert(&schema)?;
    if descr.num_columns() != schema.fields().len() {
        bail!("nested columns are not supported by this benchmark");
    }
    let physical: Vec<PhysicalType> = (0..descr.num_columns())
        .map(|i| descr.column(i).physical_type())
        .collect();
    let paths: Vec<ColumnPath> = (0..descr.num_columns())
        .map(|i| descr.column(i).path().clone())
        .collect();

    // Every candidate encoding, on the columns it is valid for, over the sample.
    let mut sizes: Vec<BTreeMap<PqEncoding, u64>> = vec![BTreeMap::new(); physical.len()];
    let all = [
        PqEncoding::Plain,
        PqEncoding::Dictionary,
        PqEncoding::DeltaBinaryPacked,
        PqEncoding::ByteStreamSplit,
        PqEncoding::DeltaLengthByteArray,
        PqEncoding::DeltaByteArray,
        PqEncoding::Rle,
    ];
    for enc in all {
        let cols: Vec<usize> = (0..physical.len())
            .filter(|&i| PqEncoding::valid_for(physical[i]).contains(&enc))
            .collect();
        if cols.is_empty() {
            continue;
        }
        let mut b = best_base()?;
        for &i in &cols {
            b = enc.apply(b, paths[i].clone());
        }
        let props = b.build();
        for batch in sample {
            let part = batch.project(&cols)?;
            let (_, meta) = write_parquet(&part, props.clone())
                .with_context(|| format!("Parquet {} on a sample", enc.name()))?;
            for (k, bytes) in column_chunk_bytes(&meta, cols.len())
                .into_iter()
                .enumerate()
            {
                *sizes[cols[k]].entry(enc).or_default() += bytes;
            }
        }
    }
    let encodings: Vec<PqEncoding> = sizes
        .iter()
        .map(|m| {
            m.iter()
                .min_by_key(|(_, &b)| b)
                .map(|(&e, _)| e)
                .unwrap_or(PqEncoding::Plain)
        })
        .collect();

    let mut b = best_base()?;
    for (i, enc) in encodings.iter().enumerate() {
        b = enc.apply(b, paths[i].clone());
    }
    let props = b.build();
    let mut column_bytes = vec![0u64; physical.len()];
    for batch in batches {
        let (_, meta) = write_parquet(batch, props.clone())?;
        for (i, bytes) in column_chunk_bytes(&meta, physical.len())
            .into_iter()
            .enumerate()
        {
            column_bytes[i] += bytes;
        }
    }
    Ok(ParquetBest {
        encodings,
        column_bytes,
    })
}

/// Per column, pco's bytes over all batches, or `None` for a column pco does not take.
pub fn pco_columns(batches: &[RecordBatch]) -> Result<Vec<Option<u64>>> {
    let n = batches[0].num_columns();
    let mut out: Vec<Option<u64>> = vec![Some(0); n];
    for batch in batches {
        for (i, column) in batch.columns().iter().enumerate() {
            if out[i].is_none() {
                continue;
            }
            match pco_column(column)? {
                Some(bytes) => *out[i].as_mut().expect("checked") += bytes,
                None => out[i] = None,
            }
        }
    }
    Ok(out)
}

/// One column's pco bytes (plus its validity bitmap with zstd-19 if it has nulls).
fn pco_column(a: &ArrayRef) -> Result<Option<u64>> {
    let values = match a.data_type() {
        DataType::Int8 => pco_prim::<Int8Type, i16>(a, |v| v as i16)?,
        DataType::Int16 => pco_prim::<Int16Type, i16>(a, |v| v)?,
        DataType::Int32 => pco_prim::<Int32Type, i32>(a, |v| v)?,
        DataType::Int64 => pco_prim::<Int64Type, i64>(a, |v| v)?,
        DataType::UInt8 => pco_prim::<UInt8Type, u16>(a, |v| v as u16)?,
        DataType::UInt16 => pco_prim::<UInt16Type, u16>(a, |v| v)?,
        DataType::UInt32 => pco_prim::<UInt32Type, u32>(a, |v| v)?,
        DataType::UInt64 => pco_prim::<UInt64Type, u64>(a, |v| v)?,
        DataType::Float32 => pco_prim::<Float32Type, f32>(a, |v| v)?,
        DataType::Float64 => pco_prim::<Float64Type, f64>(a, |v| v)?,
        DataType::Date32 => pco_prim::<Date32Type, i32>(a, |v| v)?,
        DataType::Date64 => pco_prim::<Date64Type, i64>(a, |v| v)?,
        DataType::Decimal64(..) => pco_prim::<Decimal64Type, i64>(a, |v| v)?,
        DataType::Decimal128(..) => {
            let p = a.as_primitive::<Decimal128Type>();
            let fits = p.iter().flatten().all(|v| i64::try_from(v).is_ok());
            if !fits {
                return Ok(None);
            }
            pco_prim::<Decimal128Type, i64>(a, |v| v as i64)?
        }
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => pco_prim::<arrow_array::types::TimestampSecondType, i64>(a, |v| v)?,
            TimeUnit::Millisecond => {
                pco_prim::<arrow_array::types::TimestampMillisecondType, i64>(a, |v| v)?
            }
            TimeUnit::Microsecond => {
                pco_prim::<arrow_array::types::TimestampMicrosecondType, i64>(a, |v| v)?
            }
            TimeUnit::Nanosecond => {
                pco_prim::<arrow_array::types::TimestampNanosecondType, i64>(a, |v| v)?
            }
        },
        _ => return Ok(None),
    };
    let validity = if a.null_count() > 0 {
        // Bit i of the bitmap is row i (a copy, so a sliced array's bitmap starts at bit 0).
        let mut bits = vec![0u8; a.len().div_ceil(8)];
        for row in 0..a.len() {
            if a.is_valid(row) {
                bits[row / 8] |= 1 << (row % 8);
            }
        }
        zstd::bulk::compress(&bits, 19)?.len() as u64
    } else {
        0
    };
    Ok(Some(values + validity))
}

/// pco bytes of a primitive array's non-null values, converted with `f`.
fn pco_prim<T, N>(a: &ArrayRef, f: impl Fn(T::Native) -> N) -> Result<u64>
where
    T: ArrowPrimitiveType,
    N: pco::data_types::Number,
{
    let p = a.as_primitive::<T>();
    let values: Vec<N> = if p.null_count() == 0 {
        p.values().iter().map(|&v| f(v)).collect()
    } else {
        p.iter().flatten().map(f).collect()
    };
    if values.is_empty() {
        return Ok(0);
    }
    let fc = pco::wrapped::FileCompressor::default();
    let mut cc = fc.chunk_compressor(&values, &pco::ChunkConfig::default())?;
    let mut buf = cc.write_meta(Vec::new())?;
    for page in 0..cc.n_per_page().len() {
        buf = cc.write_page(page, buf)?;
    }
    Ok(buf.len() as u64)
}

/// Our codec's result on one stream.
#[derive(Debug, Clone, Default)]
pub struct Ours {
    pub timed: Timed,
    /// Why the result is not a size: an encoding error or a round-trip mismatch.
    pub failure: Option<String>,
    /// Per column (in schema order): its type, the codecs chosen (with how many frames),
    /// and its bytes before and after over all frames.
    pub columns: Vec<OursColumn>,
}

/// One column's choices over the stream.
#[derive(Debug, Clone, Default)]
pub struct OursColumn {
    pub name: String,
    pub data_type: String,
    pub codecs: BTreeMap<String, usize>,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Our stream codec over the batches: one encoder, one decoder, every frame checked.
pub fn ours(batches: &[RecordBatch]) -> Ours {
    let mut out = Ours::default();
    let mut enc = StreamEncoder::new(EncoderConfig::default());
    let mut frames = Vec::with_capacity(batches.len());
    for batch in batches {
        let start = Instant::now();
        let frame = enc.encode(batch);
        out.timed.encode += start.elapsed();
        match frame {
            Ok(f) => {
                out.timed.bytes += f.len() as u64;
                frames.push(f);
            }
            Err(e) => {
                out.failure = Some(format!("ENCODE ERROR: {e}"));
                return out;
            }
        }
        let choices = enc.last_choices();
        if out.columns.is_empty() {
            out.columns = choices
                .iter()
                .map(|c| OursColumn {
                    name: c.column.clone(),
                    data_type: c.data_type.clone(),
                    ..OursColumn::default()
                })
                .collect();
        }
        for c in choices {
            if let Some(col) = out.columns.iter_mut().find(|k| k.name == c.column) {
                *col.codecs.entry(c.codec.clone()).or_default() += 1;
                col.bytes_before += c.bytes_before as u64;
                col.bytes_after += c.bytes_after as u64;
            }
        }
    }
    let mut dec = StreamDecoder::new();
    let mut decoded = Vec::with_capacity(frames.len());
    let start = Instant::now();
    for (i, f) in frames.iter().enumerate() {
        match dec.decode(f) {
            Ok(b) => decoded.push(b),
            Err(e) => {
                out.failure = Some(format!(
                    "ROUND-TRIP MISMATCH (frame {i}: decode error: {e})"
                ));
                return out;
            }
        }
    }
    out.timed.decode = start.elapsed();
    for (i, (a, b)) in batches.iter().zip(&decoded).enumerate() {
        if a != b {
            out.failure = Some(format!(
                "ROUND-TRIP MISMATCH (frame {i}: {})",
                mismatch(a, b)
            ));
            return out;
        }
    }
    out
}

/// What differs between a batch and its decoded copy, briefly.
fn mismatch(a: &RecordBatch, b: &RecordBatch) -> String {
    if a.schema() != b.schema() {
        return format!("schema {:?} became {:?}", a.schema(), b.schema());
    }
    if a.num_rows() != b.num_rows() {
        return format!("{} rows became {}", a.num_rows(), b.num_rows());
    }
    for (f, (x, y)) in a
        .schema()
        .fields()
        .iter()
        .zip(a.columns().iter().zip(b.columns()))
    {
        if x != y {
            let row = (0..x.len()).find(|&r| x.slice(r, 1) != y.slice(r, 1));
            return format!("column {} differs (first at row {row:?})", f.name());
        }
    }
    "batches differ".into()
}
