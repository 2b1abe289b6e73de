//! The generic encoding for every type without a dedicated codec (lists, structs, maps,
//! dictionaries, unions, Decimal256, Float16, intervals...): the column as a one-column
//! Arrow IPC stream, zstd-compressed. Correct for anything Arrow can write, never small.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, Field, Schema};

use super::error::FrameError;
use super::wire::{corrupt, put_sized_blob, read_sized_blob, Reader};

/// Appends `array` (of `field`) as a compressed IPC stream.
pub(crate) fn encode_fallback(
    out: &mut Vec<u8>,
    field: &Field,
    array: &ArrayRef,
    zstd: i32,
) -> Result<String, ArrowError> {
    let schema = Arc::new(Schema::new(vec![field.clone().with_name("")]));
    let batch = RecordBatch::try_new(schema.clone(), vec![array.clone()])?;
    let mut ipc = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut ipc, &schema)?;
        w.write(&batch)?;
        w.finish()?;
    }
    put_sized_blob(out, &ipc, Some(zstd));
    Ok("arrow-ipc+zstd".into())
}

/// Reads a column written by [`encode_fallback`]; it must be `n` rows of `field`'s type.
pub(crate) fn decode_fallback(
    r: &mut Reader<'_>,
    field: &Field,
    n: usize,
) -> Result<ArrayRef, FrameError> {
    let ipc = read_sized_blob(r)?;
    let bad = |e: ArrowError| corrupt(&format!("arrow ipc: {e}"));
    let mut reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(bad)?;
    let batch = reader
        .next()
        .ok_or_else(|| corrupt("arrow ipc stream without a batch"))?
        .map_err(bad)?;
    let column = batch
        .columns()
        .first()
        .ok_or_else(|| corrupt("arrow ipc batch without a column"))?;
    if column.len() != n || column.data_type() != field.data_type() {
        return Err(corrupt("arrow ipc column does not match the schema"));
    }
    Ok(column.clone())
}
