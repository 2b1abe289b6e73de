//! The CPU budget of encoding: when encoding takes more than its share of a sink task's
//! time, the task switches its encoders to the cheaper encodings ([`Effort::Fast`]) and
//! back once encoding is well under budget again (half the share), so the codec never
//! becomes the pipeline's bottleneck for long and does not flap.

use crate::codec::Effort;

/// Weight of the newest apply in the running share.
const SMOOTHING: f64 = 0.2;

/// Decides the effort from the share of time spent encoding.
#[derive(Debug, Clone)]
pub struct EffortGovernor {
    max_share: f64,
    share: Option<f64>,
    effort: Effort,
}

impl EffortGovernor {
    /// A governor allowing encoding `max_share` (0..=1) of the task's time.
    pub fn new(max_share: f64) -> Self {
        EffortGovernor {
            max_share,
            share: None,
            effort: Effort::Best,
        }
    }

    /// The effort in use.
    pub fn effort(&self) -> Effort {
        self.effort
    }

    /// The running share of time spent encoding.
    pub fn share(&self) -> f64 {
        self.share.unwrap_or(0.0)
    }

    /// Records one apply (`encode_secs` of `total_secs`); returns the new effort when it
    /// changes.
    pub fn record(&mut self, encode_secs: f64, total_secs: f64) -> Option<Effort> {
        if total_secs.is_nan() || total_secs <= 0.0 || !encode_secs.is_finite() {
            return None;
        }
        let now = (encode_secs / total_secs).clamp(0.0, 1.0);
        let share = match self.share {
            None => now,
            Some(s) => s * (1.0 - SMOOTHING) + now * SMOOTHING,
        };
        self.share = Some(share);
        let next = match self.effort {
            Effort::Best if share > self.max_share => Effort::Fast,
            Effort::Fast if share < self.max_share / 2.0 => Effort::Best,
            e => e,
        };
        (next != self.effort).then(|| {
            self.effort = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_to_fast_over_budget_and_back_well_under_it() {
        let mut g = EffortGovernor::new(0.5);
        assert_eq!(g.record(0.1, 1.0), None);
        assert_eq!(g.effort(), Effort::Best);
        let mut switched = None;
        for _ in 0..20 {
            switched = switched.or(g.record(0.9, 1.0));
        }
        assert_eq!(switched, Some(Effort::Fast));
        // Just under budget: stays fast (no flapping).
        for _ in 0..50 {
            assert_eq!(g.record(0.4, 1.0), None);
        }
        let mut back = None;
        for _ in 0..50 {
            back = back.or(g.record(0.05, 1.0));
        }
        assert_eq!(back, Some(Effort::Best));
    }

    #[test]
    fn ignores_empty_or_garbage_timings() {
        let mut g = EffortGovernor::new(0.5);
        assert_eq!(g.record(1.0, 0.0), None);
        assert_eq!(g.record(f64::NAN, 1.0), None);
        assert_eq!(g.share(), 0.0);
    }
}
