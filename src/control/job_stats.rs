//! A job's live figures ([`JobStats`]): what its reader, sinks, snapshot, slot and
//! watchers report while it runs, and its state with every change of it. Shared by the
//! runner that fills them, and the monitor, the API and `run`'s progress lines that read
//! them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::cdc::slot_health::SlotHealth;
use crate::cdc::stream::ReaderStats;
use crate::control::access::AccessHub;
use crate::control::initial_snapshot::SnapshotProgress;
use crate::control::job_control::{JobState, LeftOutTable};
use crate::control::job_spec::JobSpec;
use crate::control::state_changes::{StateChange, StateChanges};
use crate::operators::access::SavedModel;
use crate::operators::history::HistoryBooks;
use crate::sinks::worker::SinkStats;
use crate::time_text::PG_EPOCH_UNIX_MICROS;

/// Live figures of a running job.
#[derive(Debug)]
pub struct JobStats {
    /// The reader's counters.
    pub reader: Arc<ReaderStats>,
    /// Per sink counters (summed over workers).
    pub sinks: Vec<Arc<SinkStats>>,
    /// Stream interruptions and failed start attempts.
    pub errors: AtomicU64,
    /// The job's bi-temporal version books (empty unless a table keeps history).
    pub books: Arc<HistoryBooks>,
    /// What the running dataflow handed its sinks and they have not applied (a fresh
    /// count each time the dataflow is installed).
    pub backlog: std::sync::Mutex<Arc<crate::sinks::backlog::Backlog>>,
    /// The initial snapshot's progress (this process's last one).
    pub snapshot: SnapshotProgress,
    /// The job's replication slot as the source last showed it while the job ran.
    pub slot: Arc<Mutex<Option<SlotHealth>>>,
    /// State and the reason for it (failure, or the last transient error).
    state: Mutex<(JobState, Option<String>)>,
    /// State changes the monitor has not recorded yet, oldest first.
    state_changes: Mutex<StateChanges>,
    /// Access signals and hotness predictions of the running job.
    access: Mutex<Option<Arc<AccessHub>>>,
    /// A model saved by an earlier run, for the next start.
    saved_model: Mutex<Option<SavedModel>>,
    /// The spec the job runs with: its table patterns resolved at the last start.
    carried: Mutex<Option<Arc<JobSpec>>>,
    /// Tables the patterns matched and left out at the last start.
    left_out: Mutex<Vec<LeftOutTable>>,
    /// Sequences the last sync round could not keep in step on the targets, with why.
    pub sequence_problems: Arc<Mutex<Vec<String>>>,
}

impl JobStats {
    /// Figures for a job with `sinks` sinks.
    pub fn new(sinks: usize) -> JobStats {
        JobStats {
            reader: Default::default(),
            sinks: (0..sinks).map(|_| Default::default()).collect(),
            errors: AtomicU64::new(0),
            books: Default::default(),
            backlog: Default::default(),
            snapshot: SnapshotProgress::default(),
            slot: Arc::default(),
            state: Mutex::new((JobState::Snapshotting, None)),
            state_changes: Mutex::new(StateChanges::starting_with(JobState::Snapshotting)),
            access: Mutex::new(None),
            saved_model: Mutex::new(None),
            carried: Mutex::new(None),
            left_out: Mutex::new(Vec::new()),
            sequence_problems: Arc::default(),
        }
    }

    /// The spec the job runs with, its table patterns resolved on the source at its last
    /// start (`None` before its first start got that far).
    pub fn carried(&self) -> Option<Arc<JobSpec>> {
        self.carried.lock().ok().and_then(|c| c.clone())
    }

    /// Sequences the job's last sync round could not keep in step on its targets.
    pub fn sequence_problems(&self) -> Vec<String> {
        self.sequence_problems
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Tables the job's patterns matched and left out at its last start.
    pub fn tables_left_out(&self) -> Vec<LeftOutTable> {
        self.left_out.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub(super) fn set_carried(&self, spec: Arc<JobSpec>, left_out: Vec<LeftOutTable>) {
        if let Ok(mut c) = self.carried.lock() {
            *c = Some(spec);
        }
        if let Ok(mut l) = self.left_out.lock() {
            *l = left_out;
        }
    }

    /// Gives the next start of the job a model saved earlier.
    pub fn set_saved_model(&self, model: SavedModel) {
        if let Ok(mut m) = self.saved_model.lock() {
            *m = Some(model);
        }
    }

    pub(super) fn take_saved_model(&self) -> Option<SavedModel> {
        self.saved_model.lock().ok().and_then(|mut m| m.take())
    }

    /// The running job's access signals and predictions.
    pub fn access(&self) -> Option<Arc<AccessHub>> {
        self.access.lock().ok().and_then(|a| a.clone())
    }

    pub(super) fn set_access(&self, hub: Option<Arc<AccessHub>>) {
        if let Ok(mut a) = self.access.lock() {
            *a = hub;
        }
    }

    /// Records the job's state.
    pub fn set_state(&self, state: JobState, reason: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            if s.0 != state || s.1 != reason {
                if let Ok(mut changes) = self.state_changes.lock() {
                    changes.push(state, reason.clone());
                }
            }
            *s = (state, reason);
        }
    }

    /// The state changes since the last call, oldest first, with how many were dropped
    /// because nobody took them (more than [`StateChanges::KEPT`] in between).
    pub fn take_state_changes(&self) -> (Vec<StateChange>, u64) {
        self.state_changes
            .lock()
            .map(|mut c| c.take())
            .unwrap_or_default()
    }

    /// The job's replication slot as the source last showed it.
    pub fn slot(&self) -> Option<SlotHealth> {
        self.slot.lock().ok().and_then(|s| s.clone())
    }

    /// The job's state and its reason.
    pub fn state(&self) -> (JobState, Option<String>) {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or((JobState::Failed, None))
    }

    /// Rows applied (upserted + deleted) over all sinks.
    pub fn rows_applied(&self) -> u64 {
        self.sinks
            .iter()
            .map(|s| s.upserted.load(Relaxed) + s.deleted.load(Relaxed))
            .sum()
    }

    /// Seconds the oldest not-yet-durable transaction has waited since its commit.
    pub fn lag_seconds(&self) -> f64 {
        let oldest = self.reader.oldest_pending_commit.load(Relaxed);
        if oldest == 0 {
            return 0.0;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        ((now - PG_EPOCH_UNIX_MICROS - oldest) as f64 / 1e6).max(0.0)
    }

    /// WAL bytes between the server's position and the confirmed one.
    pub fn lag_bytes(&self) -> u64 {
        let server = self.reader.server_wal_end.load(Relaxed);
        server.saturating_sub(self.reader.confirmed.load(Relaxed))
    }
}
