//! Streamed in-progress transactions, kept on local disk until their Stream Commit.
//!
//! With pgoutput protocol version 2 the server sends a transaction larger than its
//! `logical_decoding_work_mem` while it is still running, in stream blocks, interleaved
//! with other transactions, each change tagged with the (sub)transaction that made it.
//! Its commit LSN — our timestamp — is known only at Stream Commit. The reader therefore
//! appends each streamed message, as received, to the transaction's spool (an unlinked
//! temporary file: a crash leaves nothing behind and the server streams the transaction
//! again, since nothing of it was confirmed) and replays it at Stream Commit as one
//! ordinary transaction. A Stream Abort of the transaction drops its spool; one of a
//! subtransaction marks that subtransaction's changes to be skipped on replay. Memory
//! stays bounded by the write buffer, whatever the transaction's size.
//!
//! # What it never does
//! * No decoding: it stores and returns the messages' bytes with their WAL position.
//! * No network I/O and no decisions about what is confirmed.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use bytes::Bytes;

use crate::change::Lsn;

/// Longest message the spool takes back (pgoutput messages are bounded by the server's
/// 1 GiB allocation limit).
const MAX_MESSAGE: u32 = 1 << 30;
/// Bytes of a record's header: subtransaction xid, WAL position, message length.
const HEADER: usize = 4 + 8 + 4;

/// Why a spool could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The temporary file failed.
    #[error("stream spool file: {0}")]
    Io(#[from] std::io::Error),
    /// A record announced a length the file does not hold.
    #[error("stream spool record of {len} bytes at offset {offset} is damaged")]
    Damaged {
        /// Where the record starts.
        offset: u64,
        /// Its announced length.
        len: u32,
    },
}

/// One streamed transaction's spool.
struct Spooled {
    file: BufWriter<std::fs::File>,
    messages: u64,
    bytes: u64,
    /// Subtransactions that aborted: their messages are skipped on replay.
    aborted: HashSet<u32>,
}

/// The spools of every streamed transaction that has neither committed nor aborted.
#[derive(Default)]
pub struct StreamSpool {
    open: HashMap<u32, Spooled>,
}

impl StreamSpool {
    /// Transactions with a spool.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Forgets every spool (after a reconnect the server streams them again from their
    /// start).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// Appends one message of top-level transaction `xid`, made by (sub)transaction
    /// `subxid`, received at `wal_start`.
    pub fn append(
        &mut self,
        xid: u32,
        subxid: u32,
        wal_start: Lsn,
        message: &[u8],
    ) -> Result<(), SpoolError> {
        let spooled = match self.open.entry(xid) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Spooled {
                file: BufWriter::with_capacity(64 * 1024, crate::spill_dir::spill_file()?),
                messages: 0,
                bytes: 0,
                aborted: HashSet::new(),
            }),
        };
        let len = u32::try_from(message.len())
            .ok()
            .filter(|&l| l <= MAX_MESSAGE)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a streamed message larger than 1 GiB",
                )
            })?;
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&subxid.to_be_bytes());
        header[4..12].copy_from_slice(&wal_start.to_be_bytes());
        header[12..].copy_from_slice(&len.to_be_bytes());
        spooled.file.write_all(&header)?;
        spooled.file.write_all(message)?;
        spooled.messages += 1;
        spooled.bytes += (HEADER + message.len()) as u64;
        Ok(())
    }

    /// A Stream Abort: the whole transaction (`subxid == xid`) or one subtransaction.
    /// Returns whether the whole transaction was dropped.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> bool {
        if xid == subxid {
            return self.open.remove(&xid).is_some();
        }
        if let Some(s) = self.open.get_mut(&xid) {
            s.aborted.insert(subxid);
        }
        false
    }

    /// A Stream Commit: the transaction's messages in the order received, without those
    /// of aborted subtransactions. `None` when nothing of it was spooled.
    pub fn take(&mut self, xid: u32) -> Result<Option<SpoolReplay>, SpoolError> {
        let Some(spooled) = self.open.remove(&xid) else {
            return Ok(None);
        };
        let mut file = spooled.file.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Some(SpoolReplay {
            file: BufReader::with_capacity(64 * 1024, file),
            offset: 0,
            left: spooled.messages,
            bytes: spooled.bytes,
            aborted: spooled.aborted,
        }))
    }
}

/// Reads a committed transaction's spool back, message by message.
pub struct SpoolReplay {
    file: BufReader<std::fs::File>,
    offset: u64,
    left: u64,
    bytes: u64,
    aborted: HashSet<u32>,
}

impl SpoolReplay {
    /// Bytes the spool holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next message and its WAL position; `None` at the end.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Bytes)>, SpoolError> {
        while self.left > 0 {
            self.left -= 1;
            let mut header = [0u8; HEADER];
            self.file.read_exact(&mut header)?;
            let subxid = u32::from_be_bytes(header[..4].try_into().unwrap_or_default());
            let wal_start = u64::from_be_bytes(header[4..12].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(header[12..].try_into().unwrap_or_default());
            if len > MAX_MESSAGE || self.offset + (HEADER as u64) + u64::from(len) > self.bytes {
                return Err(SpoolError::Damaged {
                    offset: self.offset,
                    len,
                });
            }
            self.offset += HEADER as u64 + u64::from(len);
            if self.aborted.contains(&subxid) {
                self.file.seek_relative(i64::from(len))?;
                continue;
            }
            let mut message = vec![0u8; len as usize];
            self.file.read_exact(&mut message)?;
            return Ok(Some((wal_start, Bytes::from(message))));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn replay_all(spool: &mut StreamSpool, xid: u32) -> Vec<(Lsn, Vec<u8>)> {
        let mut r = spool.take(xid).unwrap().expect("spooled");
        let mut out = Vec::new();
        while let Some((lsn, m)) = r.next_message().unwrap() {
            out.push((lsn, m.to_vec()));
        }
        out
    }

    #[test]
    fn interleaved_transactions_replay_their_own_messages_in_order() {
        let mut spool = StreamSpool::default();
        spool.append(10, 10, 1, b"a1").unwrap();
        spool.append(20, 20, 2, b"b1").unwrap();
        spool
            .append(10, 11, 3, b"a2 from a subtransaction")
            .unwrap();
        spool.append(10, 10, 4, b"").unwrap();
        assert_eq!(spool.open_count(), 2);
        assert_eq!(
            replay_all(&mut spool, 10),
            vec![
                (1, b"a1".to_vec()),
                (3, b"a2 from a subtransaction".to_vec()),
                (4, Vec::new())
            ]
        );
        assert_eq!(replay_all(&mut spool, 20), vec![(2, b"b1".to_vec())]);
        assert_eq!(spool.open_count(), 0);
        assert!(spool.take(10).unwrap().is_none());
    }

    #[test]
    fn aborts_drop_a_transaction_or_skip_a_subtransaction() {
        let mut spool = StreamSpool::default();
        spool.append(10, 10, 1, b"keep").unwrap();
        spool.append(10, 12, 2, b"rolled back").unwrap();
        spool.append(10, 10, 3, b"keep too").unwrap();
        spool.append(30, 30, 4, b"gone").unwrap();
        assert!(!spool.abort(10, 12));
        assert!(spool.abort(30, 30));
        assert!(!spool.abort(99, 99), "an unknown transaction is no error");
        assert_eq!(
            replay_all(&mut spool, 10),
            vec![(1, b"keep".to_vec()), (3, b"keep too".to_vec())]
        );
        assert!(spool.take(30).unwrap().is_none());
    }

    proptest! {
        /// Whatever the interleaving and aborts, a committed transaction replays exactly
        /// its messages of subtransactions that did not abort, in arrival order.
        #[test]
        fn replay_is_the_committed_subsequence(
            ops in prop::collection::vec((0u32..3, 0u32..4, prop::collection::vec(any::<u8>(), 0..40)), 0..60),
            aborted in prop::collection::hash_set((0u32..3, 1u32..4), 0..4),
        ) {
            let mut spool = StreamSpool::default();
            for (i, (top, sub, bytes)) in ops.iter().enumerate() {
                // Subtransaction 0 stands for the top-level transaction itself.
                let subxid = if *sub == 0 { *top } else { 100 + top * 10 + sub };
                spool.append(*top, subxid, i as u64, bytes).unwrap();
            }
            for (top, sub) in &aborted {
                spool.abort(*top, 100 + top * 10 + sub);
            }
            for top in 0..3u32 {
                let expected: Vec<(Lsn, Vec<u8>)> = ops
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, s, _))| *t == top && (*s == 0 || !aborted.contains(&(top, *s))))
                    .map(|(i, (_, _, b))| (i as u64, b.clone()))
                    .collect();
                let got = match spool.take(top).unwrap() {
                    Some(mut r) => {
                        let mut out = Vec::new();
                        while let Some((lsn, m)) = r.next_message().unwrap() {
                            out.push((lsn, m.to_vec()));
                        }
                        out
                    }
                    None => Vec::new(),
                };
                prop_assert_eq!(got, expected);
            }
        }
    }
}
