//! The states a job entered, kept until the job's monitor records them in the metadata
//! store (`replication_events`, `GET /v1/jobs/{id}/events`): every change, not a sample,
//! so a state that lasted less than the monitor's period (streaming for a second before
//! a pause, a failure retried at once) still shows in the job's history.

use crate::control::job_control::JobState;

/// A state the job entered, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// When it entered it.
    pub at: std::time::SystemTime,
    /// The state.
    pub state: JobState,
    /// Why (a failed job's error; a retried error while streaming).
    pub reason: Option<String>,
}

/// State changes waiting to be recorded, oldest first, at most [`StateChanges::KEPT`].
#[derive(Debug, Default)]
pub(crate) struct StateChanges {
    pending: std::collections::VecDeque<StateChange>,
    dropped: u64,
}

impl StateChanges {
    /// The most kept between two takes (a job whose source keeps refusing it changes
    /// its reason at every retry).
    pub(crate) const KEPT: usize = 256;

    pub(crate) fn starting_with(state: JobState) -> StateChanges {
        let mut changes = StateChanges::default();
        changes.push(state, None);
        changes
    }

    pub(crate) fn push(&mut self, state: JobState, reason: Option<String>) {
        if self.pending.len() == Self::KEPT {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(StateChange {
            at: std::time::SystemTime::now(),
            state,
            reason,
        });
    }

    pub(crate) fn take(&mut self) -> (Vec<StateChange>, u64) {
        let dropped = std::mem::take(&mut self.dropped);
        (self.pending.drain(..).collect(), dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_come_out_once_in_order_and_overflow_is_counted() {
        let mut changes = StateChanges::starting_with(JobState::Snapshotting);
        changes.push(JobState::Streaming, None);
        changes.push(JobState::Paused, None);
        let (taken, dropped) = changes.take();
        let states: Vec<JobState> = taken.iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            [
                JobState::Snapshotting,
                JobState::Streaming,
                JobState::Paused
            ]
        );
        assert_eq!(dropped, 0);
        assert!(taken.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(changes.take(), (Vec::new(), 0));

        for i in 0..StateChanges::KEPT + 3 {
            changes.push(JobState::Streaming, Some(format!("retry {i}")));
        }
        let (taken, dropped) = changes.take();
        assert_eq!((taken.len(), dropped), (StateChanges::KEPT, 3));
        assert_eq!(
            taken[0].reason.as_deref(),
            Some("retry 3"),
            "the oldest go first"
        );
        assert_eq!(changes.take().1, 0, "counted once");
    }
}
