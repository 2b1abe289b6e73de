//! Schema-aware columnar compression of Arrow record batches into stream frames.
//!
//! One [`StreamEncoder`] per (tenant, table) stream turns each `RecordBatch` into one
//! self-delimiting frame (format: `schemas/frame.md`); a [`StreamDecoder`] reading the
//! same stream's frames in order returns the identical batches. Every column's encoding is
//! chosen from its Arrow type and its statistics on the batch, and the choice is reported
//! ([`ColumnChoice`], [`explain`]) so it can be explained.
//!
//! # Streams
//! The first frame, every `key_frame_every`-th frame, a frame after
//! [`StreamEncoder::force_key_frame`] and a frame whose schema changed are key frames:
//! they announce the schema and use no state. Other frames are delta frames: they refer to
//! the schema by id and reuse per-column state (string dictionaries, the text history zstd
//! matches against) built by the frames since the last key frame. A decoder can start at
//! any key frame; given a delta frame it cannot follow it returns
//! [`FrameError::MissingState`].
//!
//! # Code map
//! `encoder`/`decoder` drive a frame, `frame` its envelope, `column` the per-column
//! choice; the codecs are `primitive` (+ `numbers`: pco), `strings`, `bits`, `fallback`;
//! `schema` and `wire` are the serialisation underneath. Decoding never panics on bad
//! bytes: every failure is a [`FrameError`].

mod bits;
mod column;
mod decoder;
mod encoder;
pub mod error;
mod fallback;
mod frame;
mod numbers;
mod primitive;
mod schema;
mod strings;
mod wire;

#[cfg(test)]
mod tests;

pub use decoder::StreamDecoder;
pub use encoder::StreamEncoder;
pub use error::{CodecError, FrameError};
pub use frame::FORMAT_VERSION;

/// Bytes of Arrow data in `batch` (the part its slices cover, not buffer capacity): the
/// "before" of every compression figure.
pub fn batch_data_bytes(batch: &arrow_array::RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| encoder::data_bytes(&c.to_data()))
        .sum()
}

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
    /// The codec chosen, e.g. `pco[delta1]` or `dict(3)+pco`.
    pub codec: String,
    /// The column's Arrow buffer bytes.
    pub bytes_before: usize,
    /// Its bytes in the frame.
    pub bytes_after: usize,
}

/// A table of the choices, one line per column, for logs and the CLI.
pub fn explain(choices: &[ColumnChoice]) -> String {
    let mut s = String::new();
    for c in choices {
        let ratio = c.bytes_before as f64 / c.bytes_after.max(1) as f64;
        s.push_str(&format!(
            "{:<20} {:<28} {:<40} {:>10} -> {:>9} ({ratio:.1}x)\n",
            c.column, c.data_type, c.codec, c.bytes_before, c.bytes_after
        ));
    }
    s
}
