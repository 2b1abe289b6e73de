//! The access counts of the current prediction window, per key bucket: writes counted by
//! the [`observe`](super::observe) operator on every worker, reads reported by users
//! (`POST /v1/access`, a NATS subject) and table-level reads polled from the source.
//! Whoever closes the window takes the counts with [`AccessLedger::take`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::features::BucketCounts;
use super::BucketKey;

/// Most buckets one window keeps; counts for further buckets are dropped (and counted).
pub const MAX_WINDOW_BUCKETS: usize = 200_000;

/// One window's counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WindowCounts {
    /// Writes and reads per bucket.
    pub buckets: BucketCounts,
    /// Reads per table that no bucket can be named for (`schema.table`).
    pub table_reads: HashMap<String, f64>,
}

/// The counts of the window in progress, shared by the job's workers and signal sources.
#[derive(Debug, Default)]
pub struct AccessLedger {
    current: Mutex<WindowCounts>,
    /// Writes counted since the job started.
    pub writes: AtomicU64,
    /// Read events accepted since the job started.
    pub reads: AtomicU64,
    /// Counts dropped because the window had too many buckets.
    pub dropped: AtomicU64,
}

impl AccessLedger {
    /// Adds counts of buckets (from one worker step or one access event).
    pub fn add(&self, counts: impl IntoIterator<Item = (BucketKey, f64)>, reads: bool) {
        let Ok(mut w) = self.current.lock() else {
            return;
        };
        for (key, n) in counts {
            if !(n.is_finite() && n > 0.0) {
                continue;
            }
            let full = w.buckets.len() >= MAX_WINDOW_BUCKETS;
            match w.buckets.get_mut(&key) {
                Some(c) => *c += n,
                None if full => {
                    self.dropped.fetch_add(1, Relaxed);
                    continue;
                }
                None => {
                    w.buckets.insert(key, n);
                }
            }
            let counter = if reads { &self.reads } else { &self.writes };
            counter.fetch_add(n as u64, Relaxed);
        }
    }

    /// Adds reads of a whole table.
    pub fn add_table_reads(&self, table: &str, n: f64) {
        if !(n.is_finite() && n > 0.0) {
            return;
        }
        if let Ok(mut w) = self.current.lock() {
            *w.table_reads.entry(table.to_owned()).or_default() += n;
        }
    }

    /// Takes the window's counts and starts a new window.
    pub fn take(&self) -> WindowCounts {
        self.current
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }
}
