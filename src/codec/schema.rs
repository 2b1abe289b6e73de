//! A stream's schema as announced in key frames: the Arrow IPC schema message (names,
//! types, nullability, metadata), zstd-compressed.

use std::io::Cursor;

use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, Schema, SchemaRef};

use super::error::FrameError;
use super::wire::{corrupt, put_sized_blob, read_sized_blob, Reader};

/// The announcement's bytes (a sized blob).
pub(crate) fn encode_schema(schema: &Schema) -> Result<Vec<u8>, ArrowError> {
    let mut ipc = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut ipc, schema)?;
        w.finish()?;
    }
    let mut out = Vec::new();
    put_sized_blob(&mut out, &ipc, Some(19));
    Ok(out)
}

/// Reads an announcement written by [`encode_schema`].
pub(crate) fn decode_schema(r: &mut Reader<'_>) -> Result<SchemaRef, FrameError> {
    let ipc = read_sized_blob(r)?;
    let reader = StreamReader::try_new(Cursor::new(ipc), None)
        .map_err(|e| corrupt(&format!("schema: {e}")))?;
    Ok(reader.schema())
}
