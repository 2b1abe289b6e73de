//! The frame envelope (see `schemas/frame.md`): version, flags, sequence number, schema id,
//! the schema announcement in key frames, the row count, and the CRC-32 trailer.

use arrow_schema::SchemaRef;

use super::error::FrameError;
use super::schema::decode_schema;
use super::wire::{corrupt, put_varint, Reader, MAX_ROWS};

/// The frame format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Flag: a key frame (announces the schema; no state from earlier frames is used).
const KEY: u8 = 1;

/// The bytes of the CRC-32 trailer.
const CRC_BYTES: usize = 4;

/// The fields before the columns.
pub(crate) struct Header {
    pub key: bool,
    pub seq: u64,
    pub schema_id: u64,
    /// The announced schema (key frames only).
    pub schema: Option<SchemaRef>,
    pub rows: usize,
}

/// Appends the header; `schema` is the announcement's bytes in key frames.
pub(crate) fn put_header(
    out: &mut Vec<u8>,
    seq: u64,
    schema_id: u64,
    schema: Option<&[u8]>,
    rows: usize,
) {
    out.push(FORMAT_VERSION);
    out.push(if schema.is_some() { KEY } else { 0 });
    put_varint(out, seq);
    put_varint(out, schema_id);
    if let Some(s) = schema {
        out.extend_from_slice(s);
    }
    put_varint(out, rows as u64);
}

/// Appends the checksum of everything before it.
pub(crate) fn seal(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The frame's body (without the trailer) once its checksum is verified.
pub(crate) fn open(frame: &[u8]) -> Result<&[u8], FrameError> {
    if frame.len() < 2 + CRC_BYTES {
        return Err(FrameError::Truncated);
    }
    if frame[0] != FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion(frame[0]));
    }
    let (body, trailer) = frame.split_at(frame.len() - CRC_BYTES);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    if crc32fast::hash(body) != stored {
        return Err(FrameError::Checksum);
    }
    Ok(body)
}

/// Reads the header of a body returned by [`open`] (or of an unchecked one, in tests).
pub(crate) fn read_header(r: &mut Reader<'_>) -> Result<Header, FrameError> {
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let flags = r.u8()?;
    if flags & !KEY != 0 {
        return Err(corrupt(&format!("unknown frame flags {flags:#x}")));
    }
    let key = flags & KEY != 0;
    let seq = r.varint()?;
    let schema_id = r.varint()?;
    let schema = if key { Some(decode_schema(r)?) } else { None };
    let rows = r.varint_max(MAX_ROWS, "row count")?;
    Ok(Header {
        key,
        seq,
        schema_id,
        schema,
        rows,
    })
}
