//! The copy-both replication stream: `START_REPLICATION`, XLogData and keepalive frames
//! in, standby status updates out, and an orderly end.

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use postgres_protocol::message::backend::Message;

use super::connection::ReplicationConnection;
use super::read_batching::ReadCounts;
use super::TransportError;
use crate::change::{format_lsn, pg_now_micros, Lsn};
use crate::sql_text::quote_ident;

/// First server version whose pgoutput speaks protocol version 2 (streaming).
const STREAMING_SINCE_MAJOR: u32 = 14;
/// Longest an orderly end waits for the server to finish the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What to ask of pgoutput.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The publication whose tables are streamed.
    pub publication: String,
    /// Ask for protocol version 2 and streaming of in-progress transactions when the
    /// server has it.
    pub streaming: bool,
}

/// One frame of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// `'w'`: one pgoutput message starting at `wal_start`.
    XLogData {
        /// WAL position of the message's start (0 for some messages).
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// When the server sent it (µs since 2000-01-01, the server's clock).
        send_time: i64,
        /// The pgoutput message.
        data: Bytes,
    },
    /// `'k'`: the server's position; answer at once when `reply_requested`.
    KeepAlive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server wants a status update now (or it times the session out).
        reply_requested: bool,
    },
}

/// A started logical replication stream.
pub struct ReplicationStream {
    conn: ReplicationConnection,
    /// Whether pgoutput was started with `streaming 'on'` (protocol version 2).
    streaming: bool,
    /// The position reported as written, flushed and applied.
    applied: Lsn,
    /// What the last status update reported, and when it went.
    reported: Option<(Lsn, Instant)>,
}

impl ReplicationConnection {
    /// Starts pgoutput on `slot` from `start` (0: the slot's confirmed position).
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &StreamOptions,
    ) -> Result<ReplicationStream, TransportError> {
        let streaming = options.streaming && self.server_major() >= STREAMING_SINCE_MAJOR;
        let sql = start_replication_sql(slot, start, &options.publication, streaming);
        self.start_copy_both(&sql).await?;
        Ok(ReplicationStream {
            conn: self,
            streaming,
            applied: start,
            reported: None,
        })
    }
}

/// The `START_REPLICATION` command.
fn start_replication_sql(slot: &str, start: Lsn, publication: &str, streaming: bool) -> String {
    // publication_names is a string literal holding a list of identifiers.
    let publications = quote_ident(publication).replace('\'', "''");
    let protocol = if streaming {
        "proto_version '2', streaming 'on'"
    } else {
        "proto_version '1'"
    };
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} ({protocol}, publication_names '{publications}')",
        quote_ident(slot),
        format_lsn(start)
    )
}

impl ReplicationStream {
    /// Whether in-progress transactions may arrive in stream blocks (protocol version 2).
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// The next frame. Cancellation safe: a frame is never lost when the future is
    /// dropped (bytes read stay buffered).
    pub async fn recv(&mut self) -> Result<StreamFrame, TransportError> {
        loop {
            match self.conn.try_message()? {
                Some(Message::CopyData(body)) => return parse_copy_data(body.into_bytes()),
                Some(Message::CopyDone) => return Err(TransportError::Closed),
                Some(Message::ErrorResponse(body)) => {
                    return Err(super::connection::server_error(body.fields())?)
                }
                Some(Message::NoticeResponse(_) | Message::ParameterStatus(_)) => {}
                Some(_) => {
                    return Err(TransportError::Protocol(
                        "a message other than copy data inside the replication stream".into(),
                    ))
                }
                None => self.conn.fill().await?,
            }
        }
    }

    /// A transaction's `BEGIN` the server sent `server_lag` µs after the commit: reads
    /// are batched while that is long (see `read_batching`).
    pub fn saw_begin(&mut self, server_lag: i64) {
        self.conn.batching().on_begin(server_lag);
    }

    /// A streamed transaction's block starts: its changes come at once, reads are batched.
    pub fn saw_block_start(&mut self) {
        self.conn.batching().on_block_start();
    }

    /// A streamed transaction's block ended.
    pub fn saw_block_end(&mut self) {
        self.conn.batching().on_block_end();
    }

    /// How the socket was read so far.
    pub fn read_counts(&self) -> ReadCounts {
        self.conn.read_counts()
    }

    /// Sets the position the next status updates report (it never moves back).
    pub fn set_applied(&mut self, lsn: Lsn) {
        self.applied = self.applied.max(lsn);
    }

    /// The position status updates report.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Sends a standby status update now.
    pub async fn send_status(&mut self, reply_requested: bool) -> Result<(), TransportError> {
        let update = standby_status_update(self.applied, pg_now_micros(), reply_requested);
        self.conn.queue_copy_data(&update)?;
        self.conn.flush().await?;
        self.reported = Some((self.applied, Instant::now()));
        Ok(())
    }

    /// Sends a status update if the position moved since the last one or `every` has
    /// passed (the server times out a silent client).
    pub async fn send_status_if_due(&mut self, every: Duration) -> Result<(), TransportError> {
        let due = match self.reported {
            Some((lsn, at)) => lsn != self.applied || at.elapsed() >= every,
            None => true,
        };
        if due {
            self.send_status(false).await?;
        }
        Ok(())
    }

    /// Ends the stream in order: a last status update, then copy-done; waits (at most a
    /// few seconds) for the server to end its side, so the last position is processed
    /// before the connection closes.
    pub async fn close(mut self) -> Result<(), TransportError> {
        self.send_status(false).await?;
        self.conn.queue_copy_done();
        self.conn.flush().await?;
        let finish = async {
            loop {
                match self.conn.next_message().await? {
                    Message::ReadyForQuery(_) => return Ok(()),
                    Message::ErrorResponse(body) => {
                        return Err(super::connection::server_error(body.fields())?)
                    }
                    // Frames still in flight, copy-done, command-complete.
                    _ => {}
                }
            }
        };
        let ended = tokio::time::timeout(CLOSE_WAIT, finish).await;
        self.conn.queue_terminate();
        let _ = self.conn.flush().await;
        match ended {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(CLOSE_WAIT)),
        }
    }
}

/// Parses one copy-data payload of the replication stream.
pub fn parse_copy_data(mut data: Bytes) -> Result<StreamFrame, TransportError> {
    let truncated = |what: &str| TransportError::Protocol(format!("truncated {what} frame"));
    match data.first().copied() {
        Some(b'w') => {
            if data.len() < 25 {
                return Err(truncated("XLogData"));
            }
            data.advance(1);
            let wal_start = data.get_u64();
            let wal_end = data.get_u64();
            let send_time = data.get_i64();
            Ok(StreamFrame::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            })
        }
        Some(b'k') => {
            if data.len() < 18 {
                return Err(truncated("keepalive"));
            }
            data.advance(1);
            let wal_end = data.get_u64();
            let _send_time = data.get_i64();
            Ok(StreamFrame::KeepAlive {
                wal_end,
                reply_requested: data.get_u8() != 0,
            })
        }
        Some(tag) => Err(TransportError::Protocol(format!(
            "unknown replication frame tag {tag:#04x}"
        ))),
        None => Err(TransportError::Protocol("empty replication frame".into())),
    }
}

/// A standby status update (`'r'`): written, flushed and applied are all `lsn` (a logical
/// slot's confirmed position is the flushed one).
pub fn standby_status_update(lsn: Lsn, now_micros: i64, reply_requested: bool) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    for i in 0..3 {
        out[1 + 8 * i..9 + 8 * i].copy_from_slice(&lsn.to_be_bytes());
    }
    out[25..33].copy_from_slice(&now_micros.to_be_bytes());
    out[33] = u8::from(reply_requested);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlogdata_frames_keep_their_payload_without_the_header() {
        let mut f = vec![b'w'];
        f.extend_from_slice(&0x0000_0001_0000_0010u64.to_be_bytes());
        f.extend_from_slice(&0x0000_0001_0000_0020u64.to_be_bytes());
        f.extend_from_slice(&7i64.to_be_bytes());
        f.extend_from_slice(b"Bpayload");
        assert_eq!(
            parse_copy_data(Bytes::from(f)).unwrap(),
            StreamFrame::XLogData {
                wal_start: 0x1_0000_0010,
                wal_end: 0x1_0000_0020,
                send_time: 7,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
    }

    #[test]
    fn keepalives_say_whether_a_reply_is_due() {
        for (byte, reply) in [(0u8, false), (1, true)] {
            let mut f = vec![b'k'];
            f.extend_from_slice(&42u64.to_be_bytes());
            f.extend_from_slice(&0i64.to_be_bytes());
            f.push(byte);
            assert_eq!(
                parse_copy_data(Bytes::from(f)).unwrap(),
                StreamFrame::KeepAlive {
                    wal_end: 42,
                    reply_requested: reply
                }
            );
        }
    }

    #[test]
    fn short_and_unknown_frames_are_named_errors() {
        for (bytes, what) in [
            (&b"w\0\0"[..], "truncated XLogData frame"),
            (&b"k\0"[..], "truncated keepalive frame"),
            (&b"z"[..], "unknown replication frame tag 0x7a"),
            (&b""[..], "empty replication frame"),
        ] {
            let err = parse_copy_data(Bytes::copy_from_slice(bytes)).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn status_updates_report_one_position_three_times() {
        let u = standby_status_update(0x1234_5678_9ABC_DEF0, 99, true);
        assert_eq!(u[0], b'r');
        for i in 0..3 {
            assert_eq!(
                &u[1 + 8 * i..9 + 8 * i],
                &0x1234_5678_9ABC_DEF0u64.to_be_bytes()
            );
        }
        assert_eq!(&u[25..33], &99i64.to_be_bytes());
        assert_eq!(u[33], 1);
    }

    #[test]
    fn start_replication_quotes_names_and_picks_the_protocol() {
        assert_eq!(
            start_replication_sql("slot_a", 0x1_0000_00A0, "pub", true),
            "START_REPLICATION SLOT \"slot_a\" LOGICAL 1/A0 (proto_version '2', streaming 'on', publication_names '\"pub\"')"
        );
        assert_eq!(
            start_replication_sql("Odd\"Slot", 0, "it's", false),
            "START_REPLICATION SLOT \"Odd\"\"Slot\" LOGICAL 0/0 (proto_version '1', publication_names '\"it''s\"')"
        );
    }
}
