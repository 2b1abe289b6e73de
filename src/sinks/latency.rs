//! Where a transaction's replication lag comes from: each sink task records, per source
//! transaction, how long each stage of the data path took, for the metrics
//! (`helios_transaction_stage_seconds`) and the benchmarks.
//!
//! The stages, by the reader's and the sink's clock readings (the same machine clock as
//! the source's commit time when both run on one host; across hosts the first stage also
//! carries the clock skew):
//!
//! | stage | from | to |
//! |---|---|---|
//! | `source_to_reader` | the source's commit | the reader received the commit |
//! | `reader_to_sink` | the reader received the commit | the sink task took the transaction |
//! | `reader_to_durable` | the reader received the commit | the sink made it durable |

use std::sync::Mutex;

use crate::change::CommitSeen;

/// One stage of the data path (see the [module doc](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LatencyStage {
    /// The source's commit → the reader received it (the source's walsender and network).
    SourceToReader,
    /// The reader received the commit → the sink task took the transaction (decode,
    /// dataflow, hand-over between threads).
    ReaderToSink,
    /// The reader received the commit → the sink made the transaction durable.
    ReaderToDurable,
}

impl LatencyStage {
    /// Every stage, in data-path order.
    pub const ALL: [LatencyStage; 3] = [
        LatencyStage::SourceToReader,
        LatencyStage::ReaderToSink,
        LatencyStage::ReaderToDurable,
    ];

    /// The stage's label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyStage::SourceToReader => "source_to_reader",
            LatencyStage::ReaderToSink => "reader_to_sink",
            LatencyStage::ReaderToDurable => "reader_to_durable",
        }
    }

    /// Index into [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Most samples kept between two collections: a server nobody scrapes keeps only the
/// latest ones.
const MAX_SAMPLES: usize = 16_384;

/// Stage durations recorded by a sink's tasks and not yet collected (seconds).
#[derive(Debug, Default)]
pub struct StageSamples(Mutex<Vec<(LatencyStage, f64)>>);

impl StageSamples {
    /// Records the stages known when a sink task takes a transaction, `now` µs since
    /// 2000-01-01.
    pub fn taken(&self, seen: CommitSeen, now: i64) {
        self.push(&[
            (LatencyStage::SourceToReader, seen.received - seen.committed),
            (LatencyStage::ReaderToSink, now - seen.received),
        ]);
    }

    /// Records that a transaction became durable at `now`.
    pub fn durable(&self, seen: CommitSeen, now: i64) {
        self.push(&[(LatencyStage::ReaderToDurable, now - seen.received)]);
    }

    fn push(&self, stages: &[(LatencyStage, i64)]) {
        if let Ok(mut v) = self.0.lock() {
            if v.len() + stages.len() > MAX_SAMPLES {
                v.clear();
            }
            // A clock stepped backwards between two readings counts as no time.
            v.extend(stages.iter().map(|&(s, us)| (s, us.max(0) as f64 / 1e6)));
        }
    }

    /// Takes the samples recorded since the last call.
    pub fn take(&self) -> Vec<(LatencyStage, f64)> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_measured_from_the_readings() {
        let samples = StageSamples::default();
        let seen = CommitSeen {
            committed: 1_000,
            received: 1_300,
        };
        samples.taken(seen, 1_800);
        samples.durable(seen, 2_300);
        assert_eq!(
            samples.take(),
            vec![
                (LatencyStage::SourceToReader, 0.0003),
                (LatencyStage::ReaderToSink, 0.0005),
                (LatencyStage::ReaderToDurable, 0.001),
            ]
        );
        assert!(samples.take().is_empty(), "taken samples are gone");
    }

    #[test]
    fn a_clock_stepping_back_counts_as_no_time_and_samples_stay_bounded() {
        let samples = StageSamples::default();
        let seen = CommitSeen {
            committed: 5_000,
            received: 4_000,
        };
        samples.taken(seen, 3_000);
        assert!(samples.take().iter().all(|&(_, s)| s == 0.0));
        for _ in 0..MAX_SAMPLES {
            samples.durable(seen, 4_100);
        }
        samples.durable(seen, 4_100);
        let kept = samples.take().len();
        assert!((1..=MAX_SAMPLES).contains(&kept), "kept {kept}");
    }

    #[test]
    fn labels_follow_the_order_of_all() {
        for (i, s) in LatencyStage::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
        }
        let labels: Vec<_> = LatencyStage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            labels,
            ["source_to_reader", "reader_to_sink", "reader_to_durable"]
        );
    }
}
