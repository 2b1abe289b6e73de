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
    /// A delta frame refers to state (schema, dictionaries) from a frame this decoder has
    /// not seen: start at a key frame.
    #[error("frame needs state from an earlier frame: {0}")]
    MissingState(String),
    /// The frame's bytes are inconsistent.
    #[error("frame is corrupt: {0}")]
    Corrupt(String),
}
