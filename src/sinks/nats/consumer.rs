//! Reads a job's JetStream stream back and decodes its frames: what `helios-repl tail`
//! prints and what tests check. An ordered consumer (no acks, no state left on the server)
//! delivers the messages in stream order; one decoder per subject turns each frame back
//! into the Arrow batch the sink encoded. A consumer that starts mid-stream skips a
//! subject's frames until its next key frame (and says how many it skipped).

use std::collections::HashMap;
use std::time::Duration;

use arrow_array::RecordBatch;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures_util::StreamExt;

use super::subjects::{
    FIRST_LSN_HEADER, LAST_LSN_HEADER, PARTIAL_ROWS_HEADER, TABLE_HEADER, TENANT_HEADER,
};
use crate::change::Lsn;
use crate::codec::{FrameError, StreamDecoder};

/// Reading the stream failed.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The server could not be reached or refused a request.
    #[error("nats: {0}")]
    Nats(String),
    /// A message is not a frame of ours.
    #[error("message {sequence} on {subject}: {reason}")]
    BadMessage {
        /// Stream sequence.
        sequence: u64,
        /// Its subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
}

/// One decoded message.
#[derive(Debug, Clone)]
pub struct DecodedFrame {
    /// The subject it was published on.
    pub subject: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// The tenant (from its header).
    pub tenant: String,
    /// The table, `schema.name` (from its header).
    pub table: String,
    /// Commit LSN of its first transaction.
    pub first_lsn: Lsn,
    /// Commit LSN of its last transaction.
    pub last_lsn: Lsn,
    /// When its last transaction goes on in the subject's next message: that
    /// transaction's rows in this and earlier messages.
    pub partial_rows: Option<usize>,
    /// Bytes of the frame.
    pub frame_bytes: usize,
    /// The rows.
    pub batch: RecordBatch,
}

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The stream's first message.
    First,
    /// Only messages published from now on.
    New,
}

/// A decoding reader of a stream.
pub struct StreamTail {
    messages: jetstream::consumer::pull::Ordered,
    decoders: HashMap<String, StreamDecoder>,
    /// Frames skipped because their subject's key frame was not seen yet.
    pub skipped_before_key_frame: u64,
}

impl StreamTail {
    /// Opens `stream` on the server at `url`, reading the subjects matching `filter` (all
    /// when empty).
    pub async fn open(
        url: &str,
        access: &super::access::NatsAccess,
        stream: &str,
        filter: &str,
        start: StartAt,
    ) -> Result<StreamTail, TailError> {
        let nats = |what: &str, e: &dyn std::fmt::Display| TailError::Nats(format!("{what}: {e}"));
        let client = access
            .connect(url, Duration::from_secs(5))
            .await
            .map_err(|e| TailError::Nats(e.to_string()))?;
        let js = jetstream::new(client);
        let stream = js
            .get_stream(stream)
            .await
            .map_err(|e| nats(&format!("stream {stream}"), &e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: match start {
                    StartAt::First => DeliverPolicy::All,
                    StartAt::New => DeliverPolicy::New,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats("create an ordered consumer", &e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| nats("read messages", &e))?;
        Ok(StreamTail {
            messages,
            decoders: HashMap::new(),
            skipped_before_key_frame: 0,
        })
    }

    /// The next decoded frame, or `None` when nothing arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<DecodedFrame>, TailError> {
        loop {
            let msg = match tokio::time::timeout(wait, self.messages.next()).await {
                Err(_) | Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(TailError::Nats(format!("read: {e}"))),
                Ok(Some(Ok(m))) => m,
            };
            let subject = msg.subject.to_string();
            let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
            let bad = |reason: String| TailError::BadMessage {
                sequence,
                subject: subject.clone(),
                reason,
            };
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
                    .ok_or_else(|| bad(format!("no {name} header")))
            };
            let lsn = |name: &str| {
                header(name).and_then(|v| {
                    super::subjects::lsn_header(&v)
                        .ok_or_else(|| bad(format!("{name} is not an LSN: {v:?}")))
                })
            };
            let (tenant, table) = (header(TENANT_HEADER)?, header(TABLE_HEADER)?);
            let (first_lsn, last_lsn) = (lsn(FIRST_LSN_HEADER)?, lsn(LAST_LSN_HEADER)?);
            let partial_rows = match msg
                .headers
                .as_ref()
                .and_then(|h| h.get(PARTIAL_ROWS_HEADER))
            {
                None => None,
                Some(v) => Some(v.as_str().parse::<usize>().map_err(|_| {
                    bad(format!(
                        "{PARTIAL_ROWS_HEADER} is not a row count: {:?}",
                        v.as_str()
                    ))
                })?),
            };
            let decoder = self.decoders.entry(subject.clone()).or_default();
            match decoder.decode(&msg.payload) {
                Ok(batch) => {
                    return Ok(Some(DecodedFrame {
                        subject,
                        sequence,
                        tenant,
                        table,
                        first_lsn,
                        last_lsn,
                        partial_rows,
                        frame_bytes: msg.payload.len(),
                        batch,
                    }))
                }
                Err(FrameError::MissingState { .. }) => self.skipped_before_key_frame += 1,
                Err(e) => return Err(bad(format!("frame does not decode: {e}"))),
            }
        }
    }
}
