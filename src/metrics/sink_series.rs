//! A job's per-sink series beyond the data path's counters (`with_sink`): time waited for
//! bandwidth, time spent encoding, the cheaper-encodings flag, and for a sink with a
//! target connection its round trip and the transactions it may have in flight.

use prometheus_client::metrics::family::{Family, MetricConstructor};

use super::{JobMetrics, SinkLabels, Slots};

impl JobMetrics {
    /// Calls `f` on `sink`'s series in `slots`, created in `family` on first use.
    fn with_sink_series<M, C>(
        &self,
        slots: &Slots<&'static str, M>,
        family: &Family<SinkLabels, M, C>,
        sink: &'static str,
        f: impl FnOnce(&M),
    ) where
        M: Clone + Send + Sync + 'static,
        C: MetricConstructor<M> + Clone + Send + Sync + 'static,
    {
        let labels = || SinkLabels {
            job: self.job.clone(),
            sink,
        };
        slots.with(sink, || self.create(family, labels()), f);
    }

    /// Counts `seconds` a sink waited for bandwidth.
    pub fn throttled(&self, sink: &'static str, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.with_sink_series(&self.throttled, &self.families.throttled, sink, |c| {
                c.inc_by(seconds);
            });
        }
    }

    /// Counts `seconds` a sink spent encoding frames.
    pub fn encode_seconds(&self, sink: &'static str, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            let family = &self.families.encode_seconds;
            self.with_sink_series(&self.encode_seconds, family, sink, |c| {
                c.inc_by(seconds);
            });
        }
    }

    /// Whether a sink uses its cheaper encodings.
    pub fn set_codec_fast_mode(&self, sink: &'static str, fast: bool) {
        self.with_sink_series(&self.codec_fast, &self.families.codec_fast, sink, |g| {
            g.set(i64::from(fast));
        });
    }

    /// The round trip to a sink's target as last measured, in seconds (NaN and negative
    /// values are ignored).
    pub fn set_sink_round_trip(&self, sink: &'static str, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.with_sink_series(&self.round_trip, &self.families.round_trip, sink, |g| {
                g.set(seconds);
            });
        }
    }

    /// How many target transactions a sink may have in flight now.
    pub fn set_sink_max_in_flight(&self, sink: &'static str, groups: u64) {
        let family = &self.families.max_in_flight;
        self.with_sink_series(&self.max_in_flight, family, sink, |g| {
            g.set(i64::try_from(groups).unwrap_or(i64::MAX));
        });
    }

    /// How many tables the sinks of one kind keep in error state.
    pub fn set_sink_tables_in_error(&self, sink: &'static str, tables: usize) {
        let family = &self.families.tables_in_error;
        self.with_sink_series(&self.tables_in_error, family, sink, |g| {
            g.set(i64::try_from(tables).unwrap_or(i64::MAX));
        });
    }
}
