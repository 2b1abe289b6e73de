//! The decoding side of a stream: checks each frame, follows key and delta frames, and
//! rebuilds the per-column state exactly as the encoder kept it.

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;

use super::column::{decode_column, ColumnState};
use super::error::FrameError;
use super::frame::{open, read_header};
use super::wire::{corrupt, Reader};

/// What the decoder carries from frame to frame.
#[derive(Debug)]
struct State {
    schema: SchemaRef,
    schema_id: u64,
    columns: Vec<ColumnState>,
    /// The sequence number the next delta frame must have.
    next_seq: u64,
}

/// Decodes one stream's frames, in order, back into batches.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    state: Option<State>,
}

impl StreamDecoder {
    /// A decoder that has seen nothing yet (it can start at any key frame).
    pub fn new() -> Self {
        StreamDecoder { state: None }
    }

    /// Decodes the stream's next frame.
    pub fn decode(&mut self, frame: &[u8]) -> Result<RecordBatch, FrameError> {
        let body = open(frame)?;
        self.decode_body(body)
    }

    /// Decodes a frame body whose checksum was verified (or, in tests, skipped so that
    /// corruption reaches the parsers).
    pub(crate) fn decode_body(&mut self, body: &[u8]) -> Result<RecordBatch, FrameError> {
        let mut r = Reader::new(body);
        let header = read_header(&mut r)?;
        let mut state = match header.schema {
            Some(schema) => {
                self.state = None;
                State {
                    columns: (0..schema.fields().len())
                        .map(|_| ColumnState::default())
                        .collect(),
                    schema,
                    schema_id: header.schema_id,
                    next_seq: header.seq,
                }
            }
            None => {
                let missing = |reason| FrameError::MissingState {
                    seq: header.seq,
                    schema_id: header.schema_id,
                    reason,
                };
                match self.state.take() {
                    None => return Err(missing("no key frame seen")),
                    Some(s) if s.schema_id != header.schema_id => {
                        self.state = Some(s);
                        return Err(missing("another schema"));
                    }
                    Some(s) if s.next_seq != header.seq => {
                        self.state = Some(s);
                        return Err(missing("frames in between were not decoded"));
                    }
                    Some(s) => s,
                }
            }
        };
        // From here on a failure leaves the state half-updated: it is dropped.
        let mut columns = Vec::with_capacity(state.columns.len());
        for (field, col) in state.schema.fields().iter().zip(state.columns.iter_mut()) {
            columns.push(decode_column(&mut r, field, header.rows, &columns, col)?);
        }
        r.finish("the last column")?;
        let batch = RecordBatch::try_new_with_options(
            state.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(header.rows)),
        )
        .map_err(|e| corrupt(&format!("batch does not rebuild: {e}")))?;
        state.next_seq = header.seq.wrapping_add(1);
        debug_assert!(header.key || state.schema_id == header.schema_id);
        self.state = Some(state);
        Ok(batch)
    }
}
