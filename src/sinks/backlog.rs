//! What a job's sinks were handed and have not applied yet, in rows and in estimated bytes
//! ([`crate::footprint`]). The delivery operator adds each batch it hands over, the sink
//! task takes it off once applied, and worker 0 stops feeding the job while either count
//! is past the job's read-ahead: rows bound the scheduler's horizon, bytes bound memory
//! when rows are wide.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::sinks::ApplyBatch;

/// Rows and estimated bytes of some batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Changes plus history events.
    pub rows: usize,
    /// What they hold in memory, estimated.
    pub bytes: usize,
}

impl Load {
    /// The load of one batch.
    pub fn of(batch: &ApplyBatch) -> Load {
        Load {
            rows: batch.rows(),
            bytes: batch.footprint(),
        }
    }

    /// The load of several batches.
    pub fn of_all(batches: &[ApplyBatch]) -> Load {
        batches
            .iter()
            .map(Load::of)
            .fold(Load::default(), Load::plus)
    }

    /// Whether neither count passes `limit`'s.
    pub fn within(self, limit: Load) -> bool {
        self.rows <= limit.rows && self.bytes <= limit.bytes
    }

    /// Both loads together.
    pub fn plus(self, other: Load) -> Load {
        Load {
            rows: self.rows + other.rows,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// A job's backlog, shared by its delivery operators and sink tasks on every worker.
#[derive(Debug, Default)]
pub struct Backlog {
    rows: AtomicUsize,
    bytes: AtomicUsize,
}

impl Backlog {
    /// Handed to a sink.
    pub fn add(&self, load: Load) {
        self.rows.fetch_add(load.rows, Relaxed);
        self.bytes.fetch_add(load.bytes, Relaxed);
    }

    /// Applied by a sink (never below zero).
    pub fn take(&self, load: Load) {
        let sub = |count: &AtomicUsize, n: usize| {
            let _ = count.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        };
        sub(&self.rows, load.rows);
        sub(&self.bytes, load.bytes);
    }

    /// What waits now.
    pub fn load(&self) -> Load {
        Load {
            rows: self.rows.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures::inserts;

    #[test]
    fn what_is_added_is_taken_off_and_never_below_zero() {
        let backlog = Backlog::default();
        let one = inserts(10, 0..3);
        let two = inserts(20, 3..10);
        let load = Load::of(&one);
        assert_eq!(load.rows, 3);
        assert!(load.bytes >= 3 * std::mem::size_of::<crate::change::Cell>());
        backlog.add(load);
        backlog.add(Load::of(&two));
        assert_eq!(
            backlog.load(),
            Load::of_all(&[one.clone(), two.clone()]),
            "the sum of both"
        );
        assert_eq!(backlog.load().rows, 10);
        backlog.take(Load::of(&one));
        assert_eq!(backlog.load(), Load::of(&two));
        backlog.take(Load::of_all(&[one, two]));
        assert_eq!(backlog.load(), Load::default());
    }
}
