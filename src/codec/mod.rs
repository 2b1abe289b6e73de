//! Schema-aware columnar compression of Arrow record batches into stream frames.
//!
//! One [`StreamEncoder`] per (tenant, table) stream turns each `RecordBatch` into one
//! self-delimiting frame (format: `schemas/frame.md`); a [`StreamDecoder`] reading the
//! same stream's frames in order returns the identical batches. Every column's encoding is
//! chosen from its Arrow type and its statistics on the batch, and the choice is reported
//! ([`ColumnChoice`]) so it can be explained.
//!
//! Status: the public API is fixed; the first implementation is Arrow IPC with zstd per
//! frame (a baseline), to be replaced by per-column codecs behind the same API.

pub mod error;

use std::io::Cursor;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow_ipc::CompressionType;

pub use error::{CodecError, FrameError};

/// How hard the encoder works for size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effort {
    /// The smallest frames the codec knows how to make.
    #[default]
    Best,
    /// Cheaper encodings when the CPU budget is exceeded.
    Fast,
}

/// Settings of one stream's encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    /// A self-contained key frame at least every this many frames.
    pub key_frame_every: u32,
    /// Size versus speed.
    pub effort: Effort,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            key_frame_every: 64,
            effort: Effort::Best,
        }
    }
}

/// Which codec a column got in the last frame, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnChoice {
    /// The column's name.
    pub column: String,
    /// Its Arrow type, as Arrow prints it.
    pub data_type: String,
    /// The codec chosen, e.g. `delta+bitpack` or `dict+rle`.
    pub codec: String,
    /// The column's Arrow buffer bytes.
    pub bytes_before: usize,
    /// Its bytes in the frame.
    pub bytes_after: usize,
}

/// Encodes one stream's batches into frames.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    config: EncoderConfig,
    choices: Vec<ColumnChoice>,
    frames: u64,
}

impl StreamEncoder {
    /// A new stream: its first frame is a key frame.
    pub fn new(config: EncoderConfig) -> Self {
        StreamEncoder {
            config,
            choices: Vec::new(),
            frames: 0,
        }
    }

    /// The encoder's settings.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Changes the effort from the next frame on.
    pub fn set_effort(&mut self, effort: Effort) {
        self.config.effort = effort;
    }

    /// The next frame is self-contained (no state carried over from earlier frames).
    pub fn force_key_frame(&mut self) {}

    /// Encodes `batch` as the stream's next frame.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, CodecError> {
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::ZSTD))
            .map_err(CodecError::Arrow)?;
        let mut out = Vec::new();
        {
            let mut w = StreamWriter::try_new_with_options(&mut out, &batch.schema(), options)
                .map_err(CodecError::Arrow)?;
            w.write(batch).map_err(CodecError::Arrow)?;
            w.finish().map_err(CodecError::Arrow)?;
        }
        self.frames += 1;
        let total = out.len();
        self.choices = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| ColumnChoice {
                column: f.name().clone(),
                data_type: f.data_type().to_string(),
                codec: "ipc+zstd".into(),
                bytes_before: c.get_array_memory_size(),
                bytes_after: total / batch.num_columns().max(1),
            })
            .collect();
        Ok(out)
    }

    /// The choices made for the last frame's columns.
    pub fn last_choices(&self) -> &[ColumnChoice] {
        &self.choices
    }
}

/// Decodes one stream's frames, in order, back into batches.
#[derive(Debug, Default)]
pub struct StreamDecoder {}

impl StreamDecoder {
    /// A decoder that has seen nothing yet (it can start at any key frame).
    pub fn new() -> Self {
        StreamDecoder {}
    }

    /// Decodes the stream's next frame.
    pub fn decode(&mut self, frame: &[u8]) -> Result<RecordBatch, FrameError> {
        let mut r = StreamReader::try_new(Cursor::new(frame), None)
            .map_err(|e| FrameError::Corrupt(e.to_string()))?;
        match r.next() {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(FrameError::Corrupt(e.to_string())),
            None => Err(FrameError::Truncated),
        }
    }
}
