//! What a compressed-stream sink reports about its codec: per (tenant, table) stream the
//! codec chosen for each column of the latest frame and the bytes it cost, and totals for
//! metrics (frames, rows, Arrow bytes in, frame bytes out, time spent encoding, whether the
//! sink fell back to cheaper encodings).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::codec::ColumnChoice;

/// One column of a stream's latest frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnReport {
    /// Column name.
    pub column: String,
    /// Arrow type.
    pub data_type: String,
    /// The codec chosen.
    pub codec: String,
    /// Arrow bytes of the column.
    pub bytes_before: usize,
    /// Bytes in the frame.
    pub bytes_after: usize,
}

impl From<&ColumnChoice> for ColumnReport {
    fn from(c: &ColumnChoice) -> Self {
        ColumnReport {
            column: c.column.clone(),
            data_type: c.data_type.clone(),
            codec: c.codec.clone(),
            bytes_before: c.bytes_before,
            bytes_after: c.bytes_after,
        }
    }
}

/// One (tenant, table) stream of a sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// The NATS subject.
    pub subject: String,
    /// Frames published since the sink started.
    pub frames: u64,
    /// Rows in them.
    pub rows: u64,
    /// Bytes of the frames.
    pub frame_bytes: u64,
    /// Rows of the latest frame.
    pub last_frame_rows: usize,
    /// Bytes of the latest frame.
    pub last_frame_bytes: usize,
    /// Per column, the latest frame's codec.
    pub columns: Vec<ColumnReport>,
}

/// Codec figures of one sink, shared by its tasks on every worker.
#[derive(Debug, Default)]
pub struct CompressionStats {
    /// Per stream, keyed by subject.
    pub streams: Mutex<BTreeMap<String, StreamReport>>,
    /// Frames published.
    pub frames: AtomicU64,
    /// Rows in them.
    pub rows: AtomicU64,
    /// Arrow bytes encoded.
    pub arrow_bytes: AtomicU64,
    /// Frame bytes produced.
    pub frame_bytes: AtomicU64,
    /// Microseconds spent encoding.
    pub encode_micros: AtomicU64,
    /// True while the sink uses the cheaper encodings (CPU budget exceeded).
    pub fast_mode: AtomicBool,
    /// Times the sink switched to the cheaper encodings.
    pub fallbacks: AtomicU64,
}

impl CompressionStats {
    /// Records a published frame of `subject`.
    pub fn record_frame(
        &self,
        subject: &str,
        rows: usize,
        arrow_bytes: usize,
        frame_bytes: usize,
        choices: &[ColumnChoice],
    ) {
        self.frames.fetch_add(1, Relaxed);
        self.rows.fetch_add(rows as u64, Relaxed);
        self.arrow_bytes.fetch_add(arrow_bytes as u64, Relaxed);
        self.frame_bytes.fetch_add(frame_bytes as u64, Relaxed);
        if let Ok(mut streams) = self.streams.lock() {
            let s = streams.entry(subject.to_string()).or_default();
            s.subject = subject.to_string();
            s.frames += 1;
            s.rows += rows as u64;
            s.frame_bytes += frame_bytes as u64;
            s.last_frame_rows = rows;
            s.last_frame_bytes = frame_bytes;
            s.columns = choices.iter().map(ColumnReport::from).collect();
        }
    }

    /// Every stream's report, by subject.
    pub fn streams(&self) -> Vec<StreamReport> {
        self.streams
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }
}
