//! Batched reads of the replication socket while the source works through a backlog.
//!
//! The walsender writes every pgoutput message with a `send()` of its own. A reader that
//! keeps up is woken for every few of them, and each wake-up is paid by the walsender
//! too (on a virtual machine an inter-processor interrupt). While the server is behind,
//! more data is certain to follow, so the socket's receive low-water mark
//! (`SO_RCVLOWAT`) can be raised to [`BATCH_BYTES`]: the kernel wakes the reader once
//! that much has arrived. Whenever less than that arrives within [`BATCH_WAIT`] (a
//! slower stream, the backlog's end, a pause), the read takes what is there (the mark is
//! lowered for it): the reader wakes once per [`BATCH_BYTES`] or per [`BATCH_WAIT`],
//! whichever comes first, and no message waits longer than that.
//!
//! What it does, measured on loopback (`benches/HISTORY.md`, 2026-12-06 evening): the
//! catch-up of a job over 5 of 50 tenants (its stream a tenth of what the walsender
//! decodes) took half of our process's CPU and a sixth of the walsender's, and ran about
//! a fifth faster; over all tenants our CPU fell by a third while the walsender's rose by a
//! fifth (the kernel's receive work that our many reads used to do now runs in its
//! sends), and the catch-up's time stayed within the machine's noise; a 2M-row
//! transaction, streamed while it ran, arrived about 20 % sooner.
//!
//! [`BatchPolicy`] batches only while both hold:
//! - the server is behind: a transaction's `BEGIN` left it [`ENTER_LAG`] or more after
//!   the commit (the server's clock on both sides, so clock skew between the hosts does
//!   not matter), until one leaves within [`LEAVE_LAG`]; or a streamed transaction's
//!   block is being sent (until its end);
//! - the reads are small: [`SAMPLE_READS`] unbatched reads averaged under [`SMALL_READ`]
//!   bytes (a reader already taking a KiB or more per wake-up has less to gain; the
//!   value is a guard, not tuned). Batched, the mark is lowered every [`PROBE_EVERY`]
//!   reads to sample again.
//!
//! Caught up, every read wakes on the first byte, as without batching; the first
//! transaction after a backlog may wait [`BATCH_WAIT`] once.
//!
//! TCP only (with or without TLS): a Unix-domain socket's readiness ignores the mark.

use std::os::fd::RawFd;
use std::time::Duration;

/// The low-water mark while batching: about 80 of the bench's 8-column rows.
pub const BATCH_BYTES: i32 = 16 * 1024;
/// Longest a batched read waits for [`BATCH_BYTES`] before taking what has arrived.
pub const BATCH_WAIT: Duration = Duration::from_millis(1);
/// A `BEGIN` sent this long (µs) or more after its commit: the server is behind. Above
/// the up to 3 × `wal_writer_delay` (600 ms by default) that a source committing with
/// `synchronous_commit = off` adds before the walsender sees a commit.
pub const ENTER_LAG: i64 = 1_000_000;
/// A `BEGIN` sent within this long (µs) of its commit: the server is caught up.
pub const LEAVE_LAG: i64 = 200_000;
/// Unbatched reads whose average size decides.
pub const SAMPLE_READS: u32 = 64;
/// Unbatched reads averaging fewer bytes than this are worth batching.
pub const SMALL_READ: u64 = 1024;
/// Batched reads between two samples.
pub const PROBE_EVERY: u32 = 1024;

/// When to batch reads, from what the stream says and how large the reads are (see the
/// module doc).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The server sends transactions long after their commit.
    behind: bool,
    /// Inside a streamed transaction's block.
    in_block: bool,
    /// Reads wait for a batch.
    batching: bool,
    /// Unbatched reads taken while behind, and their bytes.
    sampled: (u32, u64),
    /// Batched reads since the last sample.
    batched_since_sample: u32,
}

impl BatchPolicy {
    /// A `BEGIN` the server sent `server_lag` µs after the transaction committed; whether
    /// to batch now.
    pub fn on_begin(&mut self, server_lag: i64) -> bool {
        if server_lag >= ENTER_LAG {
            self.behind = true;
        } else if server_lag <= LEAVE_LAG {
            self.behind = false;
        }
        self.settle()
    }

    /// A streamed transaction's block starts; whether to batch now.
    pub fn on_block_start(&mut self) -> bool {
        self.in_block = true;
        self.settle()
    }

    /// A streamed transaction's block ends; whether to batch now.
    pub fn on_block_end(&mut self) -> bool {
        self.in_block = false;
        self.settle()
    }

    /// A read returned `bytes` (`batched`: after waiting for a batch); whether to batch
    /// the next.
    pub fn on_read(&mut self, batched: bool, bytes: usize) -> bool {
        if batched {
            self.batched_since_sample += 1;
            if self.batched_since_sample >= PROBE_EVERY {
                // Sample again: the stream may have become denser.
                self.batching = false;
                self.sampled = (0, 0);
            }
        } else if self.behind || self.in_block {
            self.sampled.0 += 1;
            self.sampled.1 += bytes as u64;
            if self.sampled.0 >= SAMPLE_READS {
                self.batching = self.sampled.1 < SMALL_READ * u64::from(self.sampled.0);
                self.sampled = (0, 0);
                self.batched_since_sample = 0;
            }
        }
        self.batching
    }

    /// Without a reason to batch, stops batching and forgets the sample.
    fn settle(&mut self) -> bool {
        if !(self.behind || self.in_block) {
            self.batching = false;
            self.sampled = (0, 0);
        }
        self.batching
    }
}

/// How the socket was read, for the job's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadCounts {
    /// Reads that returned data.
    pub reads: u64,
    /// Of them, reads that waited for a batch.
    pub batched: u64,
    /// Of those, waits that ran out before a whole batch came (the read then took what had
    /// arrived).
    pub waits_ran_out: u64,
}

/// A connection's batching: its socket's mark (none on a Unix-domain socket, or after
/// the kernel refused it), the policy and the counts.
#[derive(Debug, Default)]
pub(super) struct ReadBatching {
    mark: Option<LowWater>,
    policy: BatchPolicy,
    counts: ReadCounts,
}

impl ReadBatching {
    /// Batching for the TCP socket `fd`, or none.
    pub(super) fn new(fd: Option<RawFd>) -> ReadBatching {
        ReadBatching {
            mark: fd.map(LowWater::new),
            ..ReadBatching::default()
        }
    }

    /// Whether the next read waits for a batch.
    pub(super) fn waits(&self) -> bool {
        self.mark.as_ref().is_some_and(LowWater::is_on)
    }

    /// A read returned `bytes` (`batched`: after waiting for a batch).
    pub(super) fn read_done(&mut self, batched: bool, bytes: usize) {
        self.counts.reads += 1;
        self.counts.batched += u64::from(batched);
        let wanted = self.policy.on_read(batched, bytes);
        self.apply(wanted);
    }

    /// A batched wait ran out: the mark is lowered for the read that takes what has
    /// arrived (the read's end raises it again if still batching).
    pub(super) fn wait_ran_out(&mut self) {
        self.counts.waits_ran_out += 1;
        self.apply(false);
    }

    pub(super) fn on_begin(&mut self, server_lag: i64) {
        let wanted = self.policy.on_begin(server_lag);
        self.apply(wanted);
    }

    pub(super) fn on_block_start(&mut self) {
        let wanted = self.policy.on_block_start();
        self.apply(wanted);
    }

    pub(super) fn on_block_end(&mut self) {
        let wanted = self.policy.on_block_end();
        self.apply(wanted);
    }

    pub(super) fn counts(&self) -> ReadCounts {
        self.counts
    }

    /// Sets the mark. A kernel that refuses to raise it leaves the socket unbatched for
    /// good. Lowering it cannot fail on an open TCP socket (Linux takes any value there);
    /// were it refused, the mark would stay raised and a read after a wait that ran out
    /// would wait for a whole batch, so the failure is logged.
    fn apply(&mut self, on: bool) {
        let Some(mark) = &mut self.mark else {
            return;
        };
        if let Err(e) = mark.set(on) {
            tracing::warn!(
                error = %e,
                raise = on,
                "cannot set the replication socket's SO_RCVLOWAT"
            );
            if on {
                self.mark = None;
            }
        }
    }
}

/// The receive low-water mark of a TCP socket, raised while batching.
#[derive(Debug)]
pub(super) struct LowWater {
    /// The socket, owned by the connection that owns this (valid while it lives).
    fd: RawFd,
    on: bool,
}

impl LowWater {
    /// The mark of `fd`, at the kernel's default (one byte).
    pub(super) fn new(fd: RawFd) -> LowWater {
        LowWater { fd, on: false }
    }

    /// Whether reads wait for a batch.
    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// Raises the mark to [`BATCH_BYTES`] or lowers it to one byte.
    pub(super) fn set(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.on {
            return Ok(());
        }
        set_receive_low_water(self.fd, if on { BATCH_BYTES } else { 1 })?;
        self.on = on;
        Ok(())
    }
}

/// `setsockopt(SO_RCVLOWAT)`: neither `socket2` nor `rustix` wraps it.
fn set_receive_low_water(fd: RawFd, bytes: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller's connection, and the option's
    // value is a live `c_int` of the length given.
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A connected loopback TCP pair (client, server side), for tests.
#[cfg(test)]
pub(super) async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// `getsockopt(SO_RCVLOWAT)`, for tests.
#[cfg(test)]
pub(super) fn receive_low_water(fd: RawFd) -> i32 {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: as above, with `value` and `len` live for the call.
    let done = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut value as *mut i32).cast(),
            &mut len,
        )
    };
    assert_eq!(done, 0, "getsockopt: {}", std::io::Error::last_os_error());
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` unbatched reads of `bytes` each; whether batching is then wanted.
    fn reads(p: &mut BatchPolicy, n: u32, bytes: usize) -> bool {
        (0..n).fold(false, |_, _| p.on_read(false, bytes))
    }

    #[test]
    fn small_reads_while_behind_turn_batching_on_and_catching_up_turns_it_off() {
        let mut p = BatchPolicy::default();
        assert!(!p.on_begin(300), "a live transaction");
        assert!(!reads(&mut p, SAMPLE_READS, 200), "not behind: no sample");
        assert!(!p.on_begin(ENTER_LAG), "behind, nothing sampled yet");
        assert!(
            !reads(&mut p, SAMPLE_READS - 1, 200),
            "the sample is not complete"
        );
        assert!(reads(&mut p, 1, 200), "small reads while behind");
        assert!(
            p.on_begin(500_000),
            "between the two marks it stays as it was"
        );
        assert!(!p.on_begin(LEAVE_LAG), "caught up");
        assert!(!p.on_begin(ENTER_LAG), "behind again: a new sample decides");
        assert!(reads(&mut p, SAMPLE_READS, 200));
    }

    #[test]
    fn large_reads_are_left_alone() {
        let mut p = BatchPolicy::default();
        p.on_begin(ENTER_LAG * 10);
        assert!(!reads(&mut p, SAMPLE_READS, 1800), "a dense stream");
        assert!(
            !reads(&mut p, SAMPLE_READS, SMALL_READ as usize),
            "the mark itself is not small"
        );
        assert!(reads(&mut p, SAMPLE_READS, SMALL_READ as usize - 1));
    }

    #[test]
    fn batching_samples_again_every_probe_and_follows_the_stream() {
        let mut p = BatchPolicy::default();
        p.on_begin(ENTER_LAG);
        assert!(reads(&mut p, SAMPLE_READS, 300));
        for _ in 0..PROBE_EVERY - 1 {
            assert!(p.on_read(true, 20_000));
        }
        assert!(!p.on_read(true, 20_000), "the probe lowers the mark");
        assert!(!reads(&mut p, SAMPLE_READS, 4000), "the stream got dense");
        assert!(reads(&mut p, SAMPLE_READS, 100), "and sparse again");
    }

    #[test]
    fn a_streamed_block_is_a_reason_until_its_end_unless_behind() {
        let mut p = BatchPolicy::default();
        assert!(!p.on_block_start(), "a sample decides");
        assert!(reads(&mut p, SAMPLE_READS, 100));
        assert!(!p.on_block_end());
        p.on_begin(2 * ENTER_LAG);
        p.on_block_start();
        assert!(reads(&mut p, SAMPLE_READS, 100));
        assert!(p.on_block_end(), "still behind");
    }

    #[test]
    fn a_wait_that_ran_out_lowers_the_mark_for_one_read_only() {
        let mut batching = ReadBatching::new(None);
        batching.on_begin(ENTER_LAG);
        for _ in 0..SAMPLE_READS {
            batching.read_done(false, 100);
        }
        assert!(batching.policy.batching);
        batching.wait_ran_out();
        batching.read_done(true, 100);
        assert!(
            batching.policy.batching,
            "still behind: the next read waits again"
        );
        assert_eq!(
            batching.counts(),
            ReadCounts {
                reads: SAMPLE_READS as u64 + 1,
                batched: 1,
                waits_ran_out: 1
            }
        );
    }

    #[tokio::test]
    async fn the_mark_is_set_and_lowered_on_a_tcp_socket() {
        use std::os::fd::AsRawFd;
        let (client, _server) = tcp_pair().await;
        let mut mark = LowWater::new(client.as_raw_fd());
        assert_eq!(receive_low_water(client.as_raw_fd()), 1);
        mark.set(true).unwrap();
        assert!(mark.is_on());
        assert_eq!(receive_low_water(client.as_raw_fd()), BATCH_BYTES);
        mark.set(false).unwrap();
        assert_eq!(receive_low_water(client.as_raw_fd()), 1);
    }

    #[test]
    fn a_failed_setsockopt_is_an_error_not_a_panic() {
        let mut mark = LowWater::new(-1);
        assert!(mark.set(true).is_err());
        assert!(!mark.is_on(), "the mark is not believed set");
        let mut batching = ReadBatching::new(Some(-1));
        batching.on_begin(ENTER_LAG);
        for _ in 0..SAMPLE_READS {
            batching.read_done(false, 10);
        }
        assert!(
            !batching.waits(),
            "a socket that refuses the mark is read unbatched"
        );
    }
}
