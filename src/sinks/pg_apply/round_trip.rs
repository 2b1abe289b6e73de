//! The round trip to the target, which `max_in_flight = "auto"` decides from
//! (`sinks::worker::auto_in_flight`).
//!
//! Measured when the sink connects (the shortest of a few empty queries), then sampled
//! again on the live connection every [`SAMPLE_EVERY`] (one empty query, only while no
//! group is in flight on it, so a sample never waits behind a transaction; a pipeline
//! kept full by a backlog is settled once for it, `Sink::upkeep_due`). The figure
//! used is the shortest of the last [`WINDOW`] samples: a sample taken while the machine
//! is busy only reads long, never short, so the minimum ignores such noise; a round trip
//! that falls shows at once, one that rises once the window holds only later samples
//! (about a minute). A target that moved (a failover to another zone, a new network path)
//! is thus followed without a reconnect.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;

/// How often a connected sink samples its round trip again.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How many recent samples the round trip is the shortest of.
pub const WINDOW: usize = 6;
/// Empty queries when the sink connects; the shortest is the first sample.
const CONNECT_QUERIES: usize = 5;
/// Longest a sample on a live connection is waited for: a target that answers no faster
/// is recorded as this far away, and the sink task goes back to its work.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The recent round-trip samples of one connection.
#[derive(Debug, Clone)]
pub struct RoundTripWindow {
    samples: VecDeque<Duration>,
    sampled_at: Option<Instant>,
    every: Duration,
}

impl RoundTripWindow {
    /// An empty window (not connected) sampling every `every`.
    pub fn new(every: Duration) -> RoundTripWindow {
        RoundTripWindow {
            samples: VecDeque::with_capacity(WINDOW),
            sampled_at: None,
            every,
        }
    }

    /// A new connection: its first sample replaces everything the old one measured.
    pub fn connected(&mut self, first: Duration, now: Instant) {
        self.samples.clear();
        self.record(first, now);
    }

    /// Adds a sample, dropping the oldest beyond [`WINDOW`].
    pub fn record(&mut self, sample: Duration, now: Instant) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.sampled_at = Some(now);
    }

    /// A sample that could not be taken at `now`: the next is due an interval later.
    pub fn skipped(&mut self, now: Instant) {
        if self.sampled_at.is_some() {
            self.sampled_at = Some(now);
        }
    }

    /// Whether a connected window is due for another sample at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.sampled_at
            .is_some_and(|at| now.saturating_duration_since(at) >= self.every)
    }

    /// The round trip: the shortest recent sample (`None` before the first).
    pub fn current(&self) -> Option<Duration> {
        self.samples.iter().min().copied()
    }
}

/// The round trip to the server on `client` when it connects: the shortest of a few
/// empty queries (next to no work on the server).
pub async fn measure_on_connect(client: &Client) -> Result<Duration, SinkError> {
    let mut best = Duration::MAX;
    for _ in 0..CONNECT_QUERIES {
        best = best.min(sample(client).await?);
    }
    Ok(best)
}

/// One empty query's round trip on `client` while it is connected, at most
/// [`SAMPLE_TIMEOUT`] (an unanswered query's answer is discarded when it comes).
pub async fn sample_live(client: &Client) -> Result<Duration, SinkError> {
    match tokio::time::timeout(SAMPLE_TIMEOUT, sample(client)).await {
        Ok(sampled) => sampled,
        Err(_) => Ok(SAMPLE_TIMEOUT),
    }
}

/// One empty query's round trip on `client`.
async fn sample(client: &Client) -> Result<Duration, SinkError> {
    let started = Instant::now();
    client
        .batch_execute("")
        .await
        .map_err(|e| sink_error("measure the round trip", &e))?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn not_due_before_it_connects_nor_before_its_interval() {
        let t0 = Instant::now();
        let mut w = RoundTripWindow::new(ms(100));
        assert!(!w.due(t0 + ms(1000)), "not connected: nothing to sample");
        assert_eq!(w.current(), None);
        w.connected(ms(1), t0);
        assert!(!w.due(t0 + ms(99)));
        assert!(w.due(t0 + ms(100)));
        w.record(ms(2), t0 + ms(100));
        assert!(
            !w.due(t0 + ms(150)),
            "the interval runs from the last sample"
        );
    }

    #[test]
    fn a_skipped_sample_is_due_again_an_interval_later() {
        let t0 = Instant::now();
        let mut w = RoundTripWindow::new(ms(100));
        w.skipped(t0);
        assert!(!w.due(t0 + ms(1000)), "still not connected");
        w.connected(ms(1), t0);
        w.skipped(t0 + ms(150));
        assert!(!w.due(t0 + ms(200)), "not retried before the interval");
        assert!(w.due(t0 + ms(250)));
        assert_eq!(w.current(), Some(ms(1)), "a skip is not a sample");
    }

    #[test]
    fn a_falling_round_trip_shows_at_once_a_rising_one_after_a_full_window() {
        let t0 = Instant::now();
        let mut w = RoundTripWindow::new(ms(10));
        w.connected(Duration::from_micros(200), t0);
        for i in 1..WINDOW {
            w.record(ms(10), t0 + ms(10 * i as u64));
            assert_eq!(w.current(), Some(Duration::from_micros(200)), "sample {i}");
        }
        w.record(ms(10), t0 + ms(100));
        assert_eq!(w.current(), Some(ms(10)), "the fast sample left the window");
        w.record(Duration::from_micros(300), t0 + ms(110));
        assert_eq!(w.current(), Some(Duration::from_micros(300)));
    }

    #[test]
    fn a_new_connection_forgets_the_old_ones_samples() {
        let t0 = Instant::now();
        let mut w = RoundTripWindow::new(ms(10));
        w.connected(Duration::from_micros(100), t0);
        w.connected(ms(20), t0 + ms(5));
        assert_eq!(w.current(), Some(ms(20)));
    }

    proptest! {
        #[test]
        fn the_round_trip_is_the_shortest_of_the_last_window(
            samples in proptest::collection::vec(0u64..100_000, 1..40),
        ) {
            let t0 = Instant::now();
            let mut w = RoundTripWindow::new(ms(1));
            w.connected(Duration::from_micros(samples[0]), t0);
            for (i, s) in samples.iter().enumerate().skip(1) {
                w.record(Duration::from_micros(*s), t0 + ms(i as u64));
            }
            let last = &samples[samples.len().saturating_sub(WINDOW)..];
            let expected = last.iter().min().map(|m| Duration::from_micros(*m));
            prop_assert_eq!(w.current(), expected);
        }
    }
}
