//! `helios-repl tail`: prints a job's NATS stream decoded, one table per frame, for a
//! person to read.

use std::time::Duration;

use crate::change::format_lsn;
use crate::sinks::nats::consumer::{DecodedFrame, StartAt, StreamTail, TailError};

/// What to print.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// NATS server URL.
    pub url: String,
    /// TLS files and credentials for it.
    pub access: crate::sinks::nats::access::NatsAccess,
    /// The stream.
    pub stream: String,
    /// Subject filter (`helios.orders.>`); empty for all.
    pub subject: String,
    /// Start at the stream's first message instead of new ones.
    pub from_start: bool,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle_exit: Option<Duration>,
}

/// The heading and rows of one frame as text.
pub fn render_frame(frame: &DecodedFrame) -> String {
    let table = arrow_cast::pretty::pretty_format_batches(std::slice::from_ref(&frame.batch))
        .map(|t| t.to_string())
        .unwrap_or_else(|e| format!("(cannot print the rows: {e})"));
    format!(
        "{} #{} tenant {} table {} LSN {}..{} — {} rows in {} bytes{}\n{table}\n",
        frame.subject,
        frame.sequence,
        frame.tenant,
        frame.table,
        format_lsn(frame.first_lsn),
        format_lsn(frame.last_lsn),
        frame.batch.num_rows(),
        frame.frame_bytes,
        frame.partial_rows.map_or(String::new(), |p| format!(
            " (its last transaction goes on: {p} of its rows so far)"
        ))
    )
}

/// Prints frames to stdout until stopped (or the limits of `options`).
pub async fn run(options: TailOptions) -> Result<u64, TailError> {
    let start = if options.from_start {
        StartAt::First
    } else {
        StartAt::New
    };
    let mut tail = StreamTail::open(
        &options.url,
        &options.access,
        &options.stream,
        &options.subject,
        start,
    )
    .await?;
    let mut printed = 0u64;
    let wait = options.idle_exit.unwrap_or(Duration::from_secs(3600));
    loop {
        if options.max_frames.is_some_and(|m| printed >= m) {
            break;
        }
        match tail.next(wait).await? {
            Some(frame) => {
                println!("{}", render_frame(&frame));
                printed += 1;
            }
            None if options.idle_exit.is_some() => break,
            None => {}
        }
    }
    if tail.skipped_before_key_frame > 0 {
        eprintln!(
            "skipped {} frames that came before their subject's first key frame",
            tail.skipped_before_key_frame
        );
    }
    Ok(printed)
}
