//! Per-bucket access history and the feature vector built from it.
//!
//! [`FeatureStore`] keeps a bounded history for every tracked [`BucketKey`]
//! (last ten window counts, two EWMAs, recency) and turns it, together with the
//! window context (time of day, tenant share, table read rate), into a row of
//! [`FEATURE_COUNT`] finite, roughly normalised `f32` values.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identifies one bucket of rows: `bucket` is the row key divided by the bucket width.
///
/// Tenant and table names are shared (`Arc<str>`): the ledger, the feature store and the
/// predictions each hold up to a few hundred thousand keys naming a handful of tenants
/// and tables, so a clone is a reference count, not two string copies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BucketKey {
    /// Tenant that owns the rows.
    pub tenant: Arc<str>,
    /// Table the rows live in.
    pub table: Arc<str>,
    /// Bucket number within the table.
    pub bucket: i64,
}

/// Number of features per bucket row.
pub const FEATURE_COUNT: usize = 12;
/// Smoothing factor of the fast EWMA (also the heuristic predictor).
pub const EWMA_FAST_ALPHA: f64 = 0.5;
/// Smoothing factor of the slow EWMA.
pub const EWMA_SLOW_ALPHA: f64 = 0.1;
/// Largest count accepted from a caller; larger (or non-finite) values are clamped.
pub const MAX_COUNT: f64 = 1e15;

const HISTORY: usize = 10;
const RECENCY_CAP: f64 = 64.0;
/// Scale applied to log1p features so they stay roughly within 0..~3.
const LOG_SCALE: f32 = 0.25;

/// Replaces negative, NaN and infinite counts by 0 and clamps huge ones.
pub fn sanitize_count(count: f64) -> f64 {
    if count.is_finite() && count > 0.0 {
        count.min(MAX_COUNT)
    } else {
        0.0
    }
}

/// History of one bucket.
#[derive(Clone, Debug, Default)]
pub struct BucketState {
    history: [f64; HISTORY],
    head: usize,
    ewma_fast: f64,
    ewma_slow: f64,
    windows_since_nonzero: u32,
}

impl BucketState {
    /// The state of a bucket first seen with `count` in its first window.
    fn first(count: f64) -> Self {
        let mut state = BucketState::default();
        state.push(count);
        state
    }

    fn push(&mut self, count: f64) {
        self.head = (self.head + 1) % HISTORY;
        self.history[self.head] = count;
        self.ewma_fast += EWMA_FAST_ALPHA * (count - self.ewma_fast);
        self.ewma_slow += EWMA_SLOW_ALPHA * (count - self.ewma_slow);
        self.windows_since_nonzero = if count > 0.0 {
            0
        } else {
            self.windows_since_nonzero.saturating_add(1)
        };
    }

    /// Count of the most recent window.
    pub fn last(&self) -> f64 {
        self.history[self.head]
    }

    /// Fast EWMA of the counts (the heuristic's prediction).
    pub fn ewma_fast(&self) -> f64 {
        self.ewma_fast
    }

    /// What eviction ranks buckets by: both EWMAs together.
    fn heat(&self) -> f64 {
        self.ewma_slow + self.ewma_fast
    }

    fn sum_last(&self, n: usize) -> f64 {
        (0..n.min(HISTORY))
            .map(|i| self.history[(self.head + HISTORY - i) % HISTORY])
            .sum()
    }
}

/// Context shared by every bucket of one window.
#[derive(Clone, Debug, Default)]
pub struct WindowContext {
    time_features: [f32; 4],
    tenant_share: HashMap<Arc<str>, f32>,
    table_read_rate: HashMap<String, f32>,
}

impl WindowContext {
    /// Builds the context of a window ending at `window_end_unix_secs`.
    pub fn new(
        window_end_unix_secs: i64,
        window_secs: u64,
        counts: &HashMap<BucketKey, f64>,
        table_reads: &HashMap<String, f64>,
    ) -> Self {
        let day = 86_400_i64;
        let tod = window_end_unix_secs.rem_euclid(day) as f64 / day as f64;
        // 1970-01-01 was a Thursday; shift so that Monday is 0.
        let dow = (window_end_unix_secs.div_euclid(day) + 3).rem_euclid(7) as f64 / 7.0;
        let tau = std::f64::consts::TAU;
        let time_features = [
            (tau * tod).sin() as f32,
            (tau * tod).cos() as f32,
            (tau * dow).sin() as f32,
            (tau * dow).cos() as f32,
        ];
        let mut tenant_totals: HashMap<Arc<str>, f64> = HashMap::new();
        let mut total = 0.0;
        for (key, count) in counts {
            let count = sanitize_count(*count);
            total += count;
            *tenant_totals.entry(key.tenant.clone()).or_default() += count;
        }
        let tenant_share = tenant_totals
            .into_iter()
            .map(|(tenant, sum)| {
                let share = if total > 0.0 { sum / total } else { 0.0 };
                (tenant, share as f32)
            })
            .collect();
        let secs = window_secs.max(1) as f64;
        let table_read_rate = table_reads
            .iter()
            .map(|(table, reads)| (table.clone(), log_feature(sanitize_count(*reads) / secs)))
            .collect();
        Self {
            time_features,
            tenant_share,
            table_read_rate,
        }
    }
}

fn log_feature(value: f64) -> f32 {
    (value.max(0.0).ln_1p() as f32) * LOG_SCALE
}

/// Tracked buckets with their history, bounded in number.
#[derive(Clone, Debug)]
pub struct FeatureStore {
    buckets: BTreeMap<BucketKey, BucketState>,
    max_buckets: usize,
    idle_evict_windows: u32,
}

impl FeatureStore {
    /// Creates an empty store holding at most `max_buckets` buckets, dropping buckets
    /// that stayed at zero for more than `idle_evict_windows` windows.
    pub fn new(max_buckets: usize, idle_evict_windows: u32) -> Self {
        Self {
            buckets: BTreeMap::new(),
            max_buckets: max_buckets.max(1),
            idle_evict_windows,
        }
    }

    /// Number of tracked buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Iterates tracked buckets in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&BucketKey, &BucketState)> {
        self.buckets.iter()
    }

    /// Appends one window of counts (absent buckets count 0), then evicts idle buckets
    /// and, above the cap, the coldest ones. Returns how many buckets were evicted.
    ///
    /// Buckets first seen in this window compete with the tracked ones for the cap before
    /// they are inserted, so the store never holds more than `max_buckets` (a window may
    /// name 200,000 new buckets).
    pub fn record_window(&mut self, counts: &HashMap<BucketKey, f64>) -> usize {
        for (key, state) in self.buckets.iter_mut() {
            state.push(counts.get(key).copied().map_or(0.0, sanitize_count));
        }
        let tracked = self.buckets.len();
        let idle = self.idle_evict_windows;
        self.buckets.retain(|_, s| s.windows_since_nonzero <= idle);
        let idle_evicted = tracked - self.buckets.len();
        // Buckets first seen now, with their count (their state is built on insertion).
        let fresh: Vec<(&BucketKey, f64)> = counts
            .iter()
            .map(|(key, count)| (key, sanitize_count(*count)))
            .filter(|(key, count)| *count > 0.0 && !self.buckets.contains_key(*key))
            .collect();
        let excess = (self.buckets.len() + fresh.len()).saturating_sub(self.max_buckets);
        let mut admitted = vec![true; fresh.len()];
        if excess > 0 {
            // The coldest `excess` of tracked and fresh buckets together, by heat then key;
            // `u32::MAX` marks a tracked bucket, any other index a fresh one.
            let mut heat: Vec<(f64, &BucketKey, u32)> =
                self.buckets
                    .iter()
                    .map(|(k, s)| (s.heat(), k, u32::MAX))
                    .chain(
                        fresh.iter().enumerate().map(|(i, (k, count))| {
                            (BucketState::first(*count).heat(), *k, i as u32)
                        }),
                    )
                    .collect();
            heat.select_nth_unstable_by(excess - 1, |a, b| {
                a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
            });
            let mut victims = Vec::new();
            for (_, key, fresh_index) in &heat[..excess] {
                match admitted.get_mut(*fresh_index as usize) {
                    Some(admit) => *admit = false,
                    None => victims.push((*key).clone()),
                }
            }
            for key in victims {
                self.buckets.remove(&key);
            }
        }
        for ((key, count), admit) in fresh.into_iter().zip(admitted) {
            if admit {
                self.buckets.insert(key.clone(), BucketState::first(count));
            }
        }
        idle_evicted + excess
    }

    /// Feature rows (row-major, `len() * FEATURE_COUNT`) for every tracked bucket in key order.
    pub fn feature_matrix(&self, ctx: &WindowContext) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.buckets.len() * FEATURE_COUNT);
        for (key, s) in &self.buckets {
            let recency =
                (f64::from(s.windows_since_nonzero).min(RECENCY_CAP)).ln_1p() / RECENCY_CAP.ln_1p();
            out.extend_from_slice(&[
                log_feature(s.last()),
                log_feature(s.sum_last(3)),
                log_feature(s.sum_last(HISTORY)),
                log_feature(s.ewma_fast),
                log_feature(s.ewma_slow),
                recency as f32,
                ctx.time_features[0],
                ctx.time_features[1],
                ctx.time_features[2],
                ctx.time_features[3],
                ctx.tenant_share.get(&key.tenant).copied().unwrap_or(0.0),
                ctx.table_read_rate.get(&*key.table).copied().unwrap_or(0.0),
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain rule the store implements: push, drop idle buckets, insert every new
    /// bucket, then evict the coldest (by heat, then key) down to the cap.
    fn reference_window(
        tracked: &mut BTreeMap<BucketKey, BucketState>,
        counts: &HashMap<BucketKey, f64>,
        max_buckets: usize,
        idle: u32,
    ) -> usize {
        for (key, state) in tracked.iter_mut() {
            state.push(counts.get(key).copied().map_or(0.0, sanitize_count));
        }
        let before = tracked.len();
        tracked.retain(|_, s| s.windows_since_nonzero <= idle);
        let mut evicted = before - tracked.len();
        for (key, count) in counts {
            let count = sanitize_count(*count);
            if count > 0.0 && !tracked.contains_key(key) {
                let mut state = BucketState::default();
                state.push(count);
                tracked.insert(key.clone(), state);
            }
        }
        while tracked.len() > max_buckets {
            let coldest = tracked
                .iter()
                .min_by(|a, b| a.1.heat().total_cmp(&b.1.heat()).then_with(|| a.0.cmp(b.0)))
                .map(|(k, _)| k.clone())
                .expect("not empty");
            tracked.remove(&coldest);
            evicted += 1;
        }
        evicted
    }

    proptest! {
        #[test]
        fn new_buckets_compete_for_the_cap_like_insert_then_evict(
            windows in prop::collection::vec(
                prop::collection::vec((0..3_u8, 0..60_i64, prop_oneof![Just(0.0), 0.0..50.0_f64, Just(7.0)]), 0..80),
                1..10,
            ),
            max_buckets in 1..40_usize,
            idle in 0..4_u32,
        ) {
            let mut store = FeatureStore::new(max_buckets, idle);
            let mut reference = BTreeMap::new();
            for window in &windows {
                let counts: HashMap<BucketKey, f64> = window
                    .iter()
                    .map(|(t, b, c)| (BucketKey { tenant: format!("t{t}").into(), table: "s.t".into(), bucket: *b }, *c))
                    .collect();
                let evicted = store.record_window(&counts);
                let expected = reference_window(&mut reference, &counts, max_buckets, idle);
                prop_assert_eq!(evicted, expected);
                prop_assert!(store.len() <= max_buckets);
                let got: Vec<(&BucketKey, f64, f64)> = store.iter().map(|(k, s)| (k, s.heat(), s.last())).collect();
                let want: Vec<(&BucketKey, f64, f64)> = reference.iter().map(|(k, s)| (k, s.heat(), s.last())).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
