//! The transaction the reader has handed to the dataflow in part: its Begin and some of
//! its changes, not yet its Commit.
//!
//! The dataflow cannot take changes back, so a transaction cut short by a reconnect (a
//! dropped connection, a pause) must not be fed twice: the server streams it again from
//! its Begin, and the changes the dataflow already has are skipped, counted, so it gets
//! the rest once. The server sends a transaction the same way every time (the same WAL,
//! decoded in the same order), so the first `fed` changes of the resent one are the ones
//! fed. What happens to a partly fed transaction when the reader stops for good is the
//! dataflow's side (`dataflow::worker`: its time never completes).
//!
//! Fault points for tests of exactly that (as `HELIOS_CRASH_AT` is for crashes): with
//! `HELIOS_FAULT_AT` set to [`STALL_MID_TRANSACTION`] or [`CUT_MID_TRANSACTION`], the
//! reader, once per process, stalls (until told to stop or pause) or cuts its connection
//! after handing over [`FAULT_AFTER_CHANGES`] changes of a transaction (or as many as
//! [`FAULT_AFTER_ENV`] says: past a part of a large one, say).

use crate::change::{format_lsn, Lsn};
use crate::operators::row_spill::FAULT_ENV;

/// [`FAULT_ENV`] value: the reader stops reading inside a transaction until told to stop
/// or pause.
pub const STALL_MID_TRANSACTION: &str = "reader-stall-mid-transaction";
/// [`FAULT_ENV`] value: the reader's connection is cut inside a transaction (a transient
/// error: the reader reconnects).
pub const CUT_MID_TRANSACTION: &str = "reader-cut-mid-transaction";
/// Changes of a transaction handed over before a fault point fires, by default.
pub const FAULT_AFTER_CHANGES: u64 = 50;
/// Environment variable with another count of changes before a fault point fires.
pub const FAULT_AFTER_ENV: &str = "HELIOS_FAULT_AFTER_CHANGES";

/// What the reader does at a fault point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderFault {
    /// Stops reading until told to stop or pause.
    Stall,
    /// Fails with a transient error.
    Cut,
}

/// The transaction handed over in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHandOver {
    /// Its commit LSN (known from its Begin).
    pub commit_lsn: Lsn,
    /// Changes of it the dataflow has.
    fed: u64,
    /// Changes of its resending still to skip (the dataflow has them).
    to_skip: u64,
}

/// What to do with a Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginAction {
    /// A new transaction: hand its Begin over.
    Feed,
    /// The transaction handed over in part, sent again: its Begin is in the dataflow,
    /// and its first `skip` changes too.
    Resume {
        /// Changes to skip.
        skip: u64,
    },
}

/// Tracks the transaction handed over in part, across reconnects.
#[derive(Debug, Default)]
pub struct HandOver {
    open: Option<OpenHandOver>,
    fault: Option<ReaderFault>,
    /// Changes of a transaction before the fault fires ([`FAULT_AFTER_CHANGES`] unless
    /// [`FAULT_AFTER_ENV`] says otherwise).
    fault_after: u64,
    fault_fired: bool,
}

/// The stream did not send again, as it was, the transaction the dataflow holds in part:
/// going on would complete that one with only its first changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotResent {
    /// Another transaction came first.
    #[error(
        "the replication stream sent transaction {got} where it had to send again transaction \
         {open}, of which {fed} changes were read before the reconnect; stopping rather than \
         applying that one in part"
    )]
    Other {
        /// The commit LSN of the transaction sent.
        got: String,
        /// The commit LSN of the transaction handed over in part.
        open: String,
        /// Its changes handed over.
        fed: u64,
    },
    /// It came again with fewer changes than were read of it.
    #[error(
        "the replication stream sent transaction {open} again with fewer changes than the \
         {fed} read of it before the reconnect; stopping rather than applying it in part"
    )]
    Shorter {
        /// The commit LSN of the transaction handed over in part.
        open: String,
        /// Its changes handed over.
        fed: u64,
    },
}

impl HandOver {
    /// With the fault point `HELIOS_FAULT_AT` names, if any.
    pub fn from_env() -> HandOver {
        let fault = match std::env::var(FAULT_ENV).as_deref() {
            Ok(STALL_MID_TRANSACTION) => Some(ReaderFault::Stall),
            Ok(CUT_MID_TRANSACTION) => Some(ReaderFault::Cut),
            _ => None,
        };
        let fault_after = std::env::var(FAULT_AFTER_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(FAULT_AFTER_CHANGES);
        HandOver {
            fault,
            fault_after,
            ..HandOver::default()
        }
    }

    /// A Begin of a transaction committing at `commit_lsn` (one not handed over whole).
    pub fn begin(&mut self, commit_lsn: Lsn) -> Result<BeginAction, NotResent> {
        match &mut self.open {
            Some(open) if open.commit_lsn == commit_lsn => {
                open.to_skip = open.fed;
                Ok(BeginAction::Resume { skip: open.fed })
            }
            Some(open) => Err(NotResent::Other {
                got: format_lsn(commit_lsn),
                open: format_lsn(open.commit_lsn),
                fed: open.fed,
            }),
            None => {
                self.open = Some(OpenHandOver {
                    commit_lsn,
                    fed: 0,
                    to_skip: 0,
                });
                Ok(BeginAction::Feed)
            }
        }
    }

    /// Whether the next change is to be handed over (`false`: the dataflow has it).
    pub fn take_change(&mut self) -> bool {
        match &mut self.open {
            Some(open) if open.to_skip > 0 => {
                open.to_skip -= 1;
                false
            }
            _ => true,
        }
    }

    /// A change was handed over.
    pub fn fed_change(&mut self) {
        if let Some(open) = self.open.as_mut() {
            open.fed += 1;
        }
    }

    /// The fault to act on now, if one is set and the open transaction has just had
    /// its fault point's count of changes handed over (once per process).
    pub fn fault_due(&mut self) -> Option<ReaderFault> {
        // Called per change: without a fault point set, nothing else is looked at.
        self.fault?;
        let due = self
            .open
            .as_ref()
            .is_some_and(|o| o.fed == self.fault_after && o.to_skip == 0);
        if !due || self.fault_fired {
            return None;
        }
        self.fault_fired = self.fault.is_some();
        self.fault
    }

    /// The transaction committed (and its Commit is handed over). Fails if its resending
    /// had fewer changes than were fed before.
    pub fn commit(&mut self) -> Result<(), NotResent> {
        match self.open.take() {
            Some(open) if open.to_skip > 0 => Err(NotResent::Shorter {
                open: format_lsn(open.commit_lsn),
                fed: open.fed,
            }),
            _ => Ok(()),
        }
    }

    /// The transaction handed over in part, if any.
    pub fn open(&self) -> Option<&OpenHandOver> {
        self.open.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `changes` changes of transaction `lsn` through `h` (as the reader does),
    /// stopping after `cut_after` of them if given; returns how many were handed over.
    fn read(h: &mut HandOver, lsn: Lsn, changes: u64, cut_after: Option<u64>) -> u64 {
        let skip = match h.begin(lsn).expect("resent") {
            BeginAction::Feed => 0,
            BeginAction::Resume { skip } => skip,
        };
        let mut handed = 0;
        for i in 0..changes {
            if cut_after == Some(i) {
                return handed;
            }
            if h.take_change() {
                h.fed_change();
                handed += 1;
            } else {
                assert!(i < skip, "only the first {skip} are skipped");
            }
        }
        h.commit().expect("whole");
        handed
    }

    #[test]
    fn a_transaction_cut_and_sent_again_is_fed_once() {
        let mut h = HandOver::default();
        assert_eq!(read(&mut h, 100, 10, None), 10);
        assert!(h.open().is_none());
        assert_eq!(read(&mut h, 200, 10, Some(4)), 4);
        assert_eq!(h.open().map(|o| o.commit_lsn), Some(200));
        // Cut again while skipping: still only what is past the first four.
        assert_eq!(read(&mut h, 200, 10, Some(2)), 0);
        assert_eq!(read(&mut h, 200, 10, None), 6, "the rest, once");
        assert!(h.open().is_none());
        assert_eq!(read(&mut h, 300, 3, None), 3, "the next is new");
    }

    #[test]
    fn another_transaction_where_the_open_one_was_due_is_refused() {
        let mut h = HandOver::default();
        read(&mut h, 200, 10, Some(4));
        let err = h.begin(300).expect_err("not the open one");
        assert!(matches!(&err, NotResent::Other { fed: 4, .. }), "{err:?}");
        assert!(err.to_string().contains("0/12C"), "{err}");
        // A resending shorter than what was fed is refused at its commit.
        let mut h = HandOver::default();
        read(&mut h, 200, 10, Some(4));
        assert_eq!(h.begin(200), Ok(BeginAction::Resume { skip: 4 }));
        assert!(!h.take_change());
        assert!(matches!(h.commit(), Err(NotResent::Shorter { fed: 4, .. })));
    }

    #[test]
    fn a_fault_point_fires_once_after_its_changes() {
        let mut h = HandOver {
            fault: Some(ReaderFault::Cut),
            fault_after: FAULT_AFTER_CHANGES,
            ..HandOver::default()
        };
        let feed = |h: &mut HandOver| {
            h.fed_change();
            h.fault_due()
        };
        h.begin(100).unwrap();
        let fired: Vec<u64> = (1..=FAULT_AFTER_CHANGES + 5)
            .filter(|_| feed(&mut h).is_some())
            .collect();
        assert_eq!(fired, vec![FAULT_AFTER_CHANGES]);
        h.commit().unwrap();
        h.begin(200).unwrap();
        assert!((0..2 * FAULT_AFTER_CHANGES).all(|_| feed(&mut h).is_none()));
        let mut none = HandOver::default();
        none.begin(100).unwrap();
        assert!((0..2 * FAULT_AFTER_CHANGES).all(|_| feed(&mut none).is_none()));
    }

    proptest! {
        /// However often a transaction is cut, the changes handed over are each of its
        /// changes exactly once.
        #[test]
        fn every_change_is_handed_over_once_whatever_the_cuts(
            changes in 1u64..40,
            cuts in proptest::collection::vec(0u64..40, 0..5),
        ) {
            let mut h = HandOver::default();
            let mut handed = 0;
            for cut in cuts {
                handed += read(&mut h, 500, changes, Some(cut % changes));
                prop_assert!(h.open().is_some(), "a read cut short does not commit");
            }
            handed += read(&mut h, 500, changes, None);
            prop_assert_eq!(handed, changes);
        }
    }
}
