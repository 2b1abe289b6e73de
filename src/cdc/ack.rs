//! Which LSN the source may confirm to PostgreSQL: the acknowledgement rules in one place.
//!
//! Rules (each has a regression test below, see `notes/cdc-pitfalls.md`):
//! 1. **Ack only what is durable.** A transaction counts once the durable frontier (every
//!    sink of the job, on every worker) has passed its commit LSN.
//! 2. **Confirm the end LSN** of a durable transaction (the byte after its commit record),
//!    never its start: the server resends transactions whose commit is at or after the
//!    confirmed position.
//! 3. **Idle slots advance.** When nothing received is still in flight and no transaction is
//!    open, confirm the position the server's keepalive reported, so WAL does not pile up
//!    while the published tables are quiet.
//! 4. **Never go backwards**, and never past anything not yet durable.
//!
//! This module is pure bookkeeping: it neither reads the network nor a clock.

use std::collections::BTreeMap;

use crate::change::Lsn;

/// Tracks received transactions and decides the position to confirm.
#[derive(Debug, Clone)]
pub struct AckTracker {
    /// commit LSN → (end LSN, commit time) of every received transaction not yet durable.
    pending: BTreeMap<Lsn, (Lsn, i64)>,
    /// A Begin was received without its Commit.
    in_transaction: bool,
    /// The highest keepalive position received while idle.
    keepalive_wal_end: Lsn,
    /// Every commit LSN strictly below this is durable at every sink.
    durable_frontier: Lsn,
    /// The position confirmed so far.
    confirmed: Lsn,
}

impl AckTracker {
    /// Starts at the position the slot has already confirmed.
    pub fn new(confirmed: Lsn) -> AckTracker {
        AckTracker {
            pending: BTreeMap::new(),
            in_transaction: false,
            keepalive_wal_end: confirmed,
            durable_frontier: 0,
            confirmed,
        }
    }

    /// A transaction began.
    pub fn on_begin(&mut self) {
        self.in_transaction = true;
    }

    /// A transaction committed at `commit_lsn` (at `commit_time`, microseconds since
    /// 2000-01-01 as the server counts); its record ends at `end_lsn`.
    pub fn on_commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64) {
        self.in_transaction = false;
        if end_lsn > self.confirmed {
            self.pending.insert(commit_lsn, (end_lsn, commit_time));
        }
    }

    /// The commit time of the oldest transaction not yet durable (replication lag).
    pub fn oldest_pending_commit_time(&self) -> Option<i64> {
        self.pending.first_key_value().map(|(_, &(_, time))| time)
    }

    /// The server reported its WAL position in a keepalive.
    pub fn on_keepalive(&mut self, wal_end: Lsn) {
        self.keepalive_wal_end = self.keepalive_wal_end.max(wal_end);
    }

    /// Every transaction with commit LSN `< frontier` is durable at every sink.
    pub fn on_durable(&mut self, frontier: Lsn) {
        self.durable_frontier = self.durable_frontier.max(frontier);
    }

    /// Transactions received but not yet durable.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The position confirmed so far.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The position that may be confirmed now; `Some` only when it moved forward.
    pub fn advance(&mut self) -> Option<Lsn> {
        let mut candidate = self.confirmed;
        while let Some((&commit, &(end, _))) = self.pending.first_key_value() {
            if commit >= self.durable_frontier {
                break;
            }
            candidate = candidate.max(end);
            self.pending.remove(&commit);
        }
        if self.pending.is_empty() && !self.in_transaction {
            candidate = candidate.max(self.keepalive_wal_end);
        }
        if candidate > self.confirmed {
            self.confirmed = candidate;
            Some(candidate)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn acks_only_durable_transactions() {
        let mut t = AckTracker::new(100);
        t.on_begin();
        t.on_commit(200, 210, 0);
        t.on_begin();
        t.on_commit(300, 310, 0);
        assert_eq!(t.advance(), None, "nothing durable yet");
        t.on_durable(200);
        assert_eq!(t.advance(), None, "frontier 200 does not cover commit 200");
        t.on_durable(201);
        assert_eq!(
            t.advance(),
            Some(210),
            "confirms the end LSN, not the commit LSN"
        );
        t.on_durable(301);
        assert_eq!(t.advance(), Some(310));
    }

    #[test]
    fn idle_slot_confirms_keepalive_position() {
        // Regression: confirming only received changes pins the slot while other tables
        // or databases write WAL.
        let mut t = AckTracker::new(100);
        t.on_keepalive(5000);
        assert_eq!(t.advance(), Some(5000));
        t.on_keepalive(7000);
        assert_eq!(t.advance(), Some(7000));
    }

    #[test]
    fn keepalive_does_not_skip_in_flight_transactions() {
        let mut t = AckTracker::new(100);
        t.on_begin();
        t.on_commit(200, 210, 0);
        t.on_keepalive(5000);
        assert_eq!(t.advance(), None, "commit 200 is not durable yet");
        t.on_durable(201);
        assert_eq!(
            t.advance(),
            Some(5000),
            "once durable, the idle position is safe"
        );
    }

    #[test]
    fn keepalive_inside_open_transaction_is_not_confirmed() {
        let mut t = AckTracker::new(100);
        t.on_begin();
        t.on_keepalive(5000);
        assert_eq!(t.advance(), None);
        t.on_commit(6000, 6010, 0);
        t.on_durable(6001);
        assert_eq!(t.advance(), Some(6010));
    }

    #[test]
    fn never_goes_backwards() {
        let mut t = AckTracker::new(1000);
        t.on_commit(500, 510, 0); // a replayed transaction below the confirmed position
        t.on_durable(600);
        assert_eq!(t.advance(), None);
        assert_eq!(t.confirmed(), 1000);
        t.on_keepalive(900);
        assert_eq!(t.advance(), None);
    }

    proptest! {
        /// Whatever the interleaving, the confirmed position never exceeds the end of a
        /// transaction that is not durable, and never decreases.
        #[test]
        fn confirmed_never_passes_a_non_durable_commit(
            steps in proptest::collection::vec((0u8..4, 1u64..50), 1..60)
        ) {
            let mut t = AckTracker::new(0);
            let mut lsn = 10u64;
            let mut open = false;
            let mut commits: Vec<(u64, u64)> = vec![];
            let mut durable = 0u64;
            let mut last = 0u64;
            for (kind, step) in steps {
                match kind {
                    0 if !open => { t.on_begin(); open = true; }
                    1 if open => {
                        lsn += step;
                        t.on_commit(lsn, lsn + 5, 0);
                        commits.push((lsn, lsn + 5));
                        lsn += 5;
                        open = false;
                    }
                    2 => { durable = durable.max(lsn.saturating_sub(step)); t.on_durable(durable); }
                    _ => { if !open { t.on_keepalive(lsn); } }
                }
                if let Some(c) = t.advance() {
                    prop_assert!(c > last);
                    last = c;
                }
                for &(commit, end) in &commits {
                    if commit >= durable {
                        prop_assert!(t.confirmed() <= commit && t.confirmed() < end, "confirmed {} passes non-durable commit {}", t.confirmed(), commit);
                    }
                }
            }
        }
    }
}
