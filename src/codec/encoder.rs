//! The encoding side of a stream: decides key versus delta frames, keeps the per-column
//! state the decoder will rebuild, and writes each frame.

use arrow_array::RecordBatch;
use arrow_data::ArrayData;
use arrow_schema::SchemaRef;

use super::column::{encode_column, ColumnState};
use super::error::CodecError;
use super::frame::{put_header, seal};
use super::schema::encode_schema;
use super::wire::MAX_ROWS;
use super::{ColumnChoice, Effort, EncoderConfig};

/// What the encoder carries from frame to frame.
#[derive(Debug)]
struct State {
    schema: SchemaRef,
    schema_id: u64,
    schema_bytes: Vec<u8>,
    columns: Vec<ColumnState>,
    /// Frames since the last key frame (that one included).
    since_key: u32,
}

/// Encodes one stream's batches into frames.
#[derive(Debug, Default)]
pub struct StreamEncoder {
    config: EncoderConfig,
    choices: Vec<ColumnChoice>,
    /// The next frame's sequence number.
    seq: u64,
    next_schema_id: u64,
    force_key: bool,
    state: Option<State>,
}

impl StreamEncoder {
    /// A new stream: its first frame is a key frame.
    pub fn new(config: EncoderConfig) -> Self {
        StreamEncoder {
            config,
            ..StreamEncoder::default()
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
    pub fn force_key_frame(&mut self) {
        self.force_key = true;
    }

    /// Encodes `batch` as the stream's next frame.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, CodecError> {
        if batch.num_rows() > MAX_ROWS {
            return Err(CodecError::TooManyRows {
                rows: batch.num_rows(),
                max: MAX_ROWS,
            });
        }
        let mut state = match self.state.take() {
            Some(s)
                if s.schema == batch.schema()
                    && !self.force_key
                    && s.since_key < self.config.key_frame_every.max(1) =>
            {
                s
            }
            Some(s) if s.schema == batch.schema() => State {
                columns: fresh(batch.num_columns()),
                since_key: 0,
                ..s
            },
            _ => {
                let schema = batch.schema();
                let schema_bytes = encode_schema(&schema).map_err(CodecError::Arrow)?;
                let id = self.next_schema_id;
                self.next_schema_id += 1;
                State {
                    schema,
                    schema_id: id,
                    schema_bytes,
                    columns: fresh(batch.num_columns()),
                    since_key: 0,
                }
            }
        };
        let key = state.since_key == 0;
        let mut out = Vec::new();
        put_header(
            &mut out,
            self.seq,
            state.schema_id,
            key.then_some(state.schema_bytes.as_slice()),
            batch.num_rows(),
        );
        let mut choices = Vec::with_capacity(batch.num_columns());
        for ((field, array), col) in state
            .schema
            .fields()
            .iter()
            .zip(batch.columns())
            .zip(state.columns.iter_mut())
        {
            let start = out.len();
            // On an error the state is dropped: the next frame is a key frame.
            let codec = encode_column(
                &mut out,
                field,
                array,
                &batch.columns()[..choices.len()],
                col,
                self.config.effort,
            )?;
            choices.push(ColumnChoice {
                column: field.name().clone(),
                data_type: field.data_type().to_string(),
                codec,
                bytes_before: data_bytes(&array.to_data()),
                bytes_after: out.len() - start,
            });
        }
        seal(&mut out);
        state.since_key += 1;
        self.state = Some(state);
        self.force_key = false;
        self.seq += 1;
        self.choices = choices;
        Ok(out)
    }

    /// The choices made for the last frame's columns.
    pub fn last_choices(&self) -> &[ColumnChoice] {
        &self.choices
    }
}

fn fresh(n: usize) -> Vec<ColumnState> {
    (0..n).map(|_| ColumnState::default()).collect()
}

/// The Arrow buffer bytes of a column: values, offsets, validity, children.
/// Bytes of Arrow data an array holds, counting only the part a slice covers (a sliced
/// string array shares its whole values buffer).
pub(crate) fn data_bytes(d: &ArrayData) -> usize {
    d.get_slice_memory_size().unwrap_or_else(|_| {
        d.buffers().iter().map(|b| b.len()).sum::<usize>()
            + d.nulls().map_or(0, |n| n.buffer().len())
            + d.child_data().iter().map(data_bytes).sum::<usize>()
    })
}
