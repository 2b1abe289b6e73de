//! Errors of the codec: encoding failures and bad frames.

use thiserror::Error;

/// Encoding a batch failed.
#[derive(Debug, Error)]
pub enum CodecError {
    /// A column type the codec does not handle.
    #[error("column {column}: type {data_type} is not supported by the codec")]
    UnsupportedType {
        /// The column's name.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// The batch has more rows than one frame may hold.
    #[error("batch of {rows} rows exceeds the frame limit of {max} rows")]
    TooManyRows {
        /// The batch's rows.
        rows: usize,
        /// The limit.
        max: usize,
    },
    /// Arrow refused the batch.
    #[error("arrow: {0}")]
    Arrow(arrow_schema::ArrowError),
}

/// A frame that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The frame ends before its declared content.
    #[error("frame is truncated")]
    Truncated,
    /// The frame's bytes are inconsistent.
    #[error("frame is corrupt: {0}")]
    Corrupt(String),
    /// The frame's checksum does not match its bytes.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The frame was written by an unknown version of the format.
    #[error("frame format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A delta frame needs state (schema, dictionaries, history) from frames this decoder
    /// has not seen: start at a key frame.
    #[error("delta frame {seq} (schema {schema_id}) needs state this decoder lacks: {reason}")]
    MissingState {
        /// The frame's sequence number in its stream.
        seq: u64,
        /// The schema id it refers to.
        schema_id: u64,
        /// What is missing.
        reason: &'static str,
    },
}
