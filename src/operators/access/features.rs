//! Per-bucket access history and the feature vector built from it.
//!
//! [`FeatureStore`] keeps a bounded history for every tracked [`BucketKey`]
//! (last ten window counts, two EWMAs, recency) and turns it, together with the
//! window context (time of day, tenant share, table read rate), into a row of
//! [`FEATURE_COUNT`] finite, roughly normalised `f32` values.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Identifies one bucket of rows: `bucket` is the row key divided by the bucket width.
///
/// Tenant and table names are shared (`Arc<str>`): the ledger, the feature store and the
/// predictions each hold up to a few hundred thousand keys naming a handful of tenants
/// and tables, so a clone is a reference count, not two string copies. Comparing two keys
/// whose names share one allocation (the observe operator interns them) skips the string
/// comparison; names in different allocations compare by content, as derived impls would.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketKey {
    /// Tenant that owns the rows.
    pub tenant: Arc<str>,
    /// Table the rows live in.
    pub table: Arc<str>,
    /// Bucket number within the table.
    pub bucket: i64,
}

/// Orders two shared names by content, without reading them when they are one allocation.
fn cmp_name(a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        a.cmp(b)
    }
}

impl PartialEq for BucketKey {
    fn eq(&self, other: &Self) -> bool {
        self.bucket == other.bucket
            && cmp_name(&self.tenant, &other.tenant).is_eq()
            && cmp_name(&self.table, &other.table).is_eq()
    }
}

impl Eq for BucketKey {}

impl Ord for BucketKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_name(&self.tenant, &other.tenant)
            .then_with(|| cmp_name(&self.table, &other.table))
            .then_with(|| self.bucket.cmp(&other.bucket))
    }
}

impl PartialOrd for BucketKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for BucketKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // By content, like `Eq`.
        self.tenant.hash(state);
        self.table.hash(state);
        self.bucket.hash(state);
    }
}

/// One window's counts per bucket. Hashed with foldhash: the observe operator adds to it
/// on every worker step and the predictor reads every entry at each window close, and
/// SipHash over two names per key showed in the lag profile.
pub type BucketCounts = HashMap<BucketKey, f64, foldhash::fast::RandomState>;

/// A window's positive counts (sanitised), sorted by key: what the store and the scorer
/// walk in step with their own key-ordered buckets.
pub fn sorted_counts<S>(counts: &HashMap<BucketKey, f64, S>) -> Vec<(&BucketKey, f64)> {
    let mut window: Vec<(&BucketKey, f64)> = counts
        .iter()
        .map(|(key, count)| (key, sanitize_count(*count)))
        .filter(|(_, count)| *count > 0.0)
        .collect();
    window.sort_unstable_by(|a, b| a.0.cmp(b.0));
    window
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
    tenant_share: HashMap<Arc<str>, f32, foldhash::fast::RandomState>,
    table_read_rate: HashMap<String, f32, foldhash::fast::RandomState>,
}

impl WindowContext {
    /// Builds the context of a window ending at `window_end_unix_secs`.
    pub fn new<S>(
        window_end_unix_secs: i64,
        window_secs: u64,
        counts: &HashMap<BucketKey, f64, S>,
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
        let mut tenant_totals: HashMap<Arc<str>, f64, foldhash::fast::RandomState> =
            HashMap::default();
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
    /// Sorted by key, keys unique: a window's sorted counts are merged in one pass.
    buckets: Vec<(BucketKey, BucketState)>,
    max_buckets: usize,
    idle_evict_windows: u32,
}

impl FeatureStore {
    /// Creates an empty store holding at most `max_buckets` buckets, dropping buckets
    /// that stayed at zero for more than `idle_evict_windows` windows.
    pub fn new(max_buckets: usize, idle_evict_windows: u32) -> Self {
        Self {
            buckets: Vec::new(),
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
        self.buckets.iter().map(|(k, s)| (k, s))
    }

    /// Appends one window of counts (absent buckets count 0), then evicts idle buckets
    /// and, above the cap, the coldest ones. Returns how many buckets were evicted.
    ///
    /// Buckets first seen in this window compete with the tracked ones for the cap before
    /// they are inserted, so the store never holds more than `max_buckets` (a window may
    /// name 200,000 new buckets).
    pub fn record_window<S>(&mut self, counts: &HashMap<BucketKey, f64, S>) -> usize {
        self.record_sorted_window(&sorted_counts(counts))
    }

    /// [`FeatureStore::record_window`] for a window already in [`sorted_counts`] form.
    pub fn record_sorted_window(&mut self, window: &[(&BucketKey, f64)]) -> usize {
        // One merge of the tracked buckets with the window: each tracked bucket gets its
        // count (or 0); window keys not tracked are new (their state is built on insertion).
        let mut fresh: Vec<(&BucketKey, f64)> = Vec::new();
        let mut next = window.iter().peekable();
        for (key, state) in self.buckets.iter_mut() {
            while let Some(&&(k, count)) = next.peek() {
                if k >= key {
                    break;
                }
                fresh.push((k, count));
                next.next();
            }
            let count = match next.peek() {
                Some(&&(k, count)) if k == key => {
                    next.next();
                    count
                }
                _ => 0.0,
            };
            state.push(count);
        }
        fresh.extend(next.copied());
        let tracked = self.buckets.len();
        let idle = self.idle_evict_windows;
        self.buckets
            .retain(|(_, s)| s.windows_since_nonzero <= idle);
        let idle_evicted = tracked - self.buckets.len();
        let excess = (self.buckets.len() + fresh.len()).saturating_sub(self.max_buckets);
        let mut admitted = vec![true; fresh.len()];
        if excess > 0 {
            // The coldest `excess` of tracked and fresh buckets together, by heat then key;
            // `u32::MAX` marks a tracked bucket (by its index), any other a fresh one.
            let mut heat: Vec<(f64, &BucketKey, u32, u32)> =
                self.buckets
                    .iter()
                    .enumerate()
                    .map(|(i, (k, s))| (s.heat(), k, u32::MAX, i as u32))
                    .chain(fresh.iter().enumerate().map(|(i, (k, count))| {
                        (BucketState::first(*count).heat(), *k, i as u32, 0)
                    }))
                    .collect();
            heat.select_nth_unstable_by(excess - 1, |a, b| {
                a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1))
            });
            let mut kept = vec![true; self.buckets.len()];
            for (_, _, fresh_index, tracked_index) in &heat[..excess] {
                match admitted.get_mut(*fresh_index as usize) {
                    Some(admit) => *admit = false,
                    None => kept[*tracked_index as usize] = false,
                }
            }
            let mut keep = kept.into_iter();
            self.buckets.retain(|_| keep.next().unwrap_or(true));
        }
        let kept = self.buckets.len();
        self.buckets.extend(
            fresh
                .into_iter()
                .zip(admitted)
                .filter(|(_, admit)| *admit)
                .map(|((key, count), _)| (key.clone(), BucketState::first(count))),
        );
        if self.buckets.len() > kept {
            // Two sorted, disjoint runs: the stable sort finds them and merges them in one
            // pass, with a scratch buffer of at most half the store. A merge into a new
            // vector held the whole store twice (~15 MB at its cap) at every window close,
            // which showed in the peak RSS of a job applying a large transaction.
            self.buckets.sort_by(|a, b| a.0.cmp(&b.0));
        }
        idle_evicted + excess
    }

    /// Feature rows (row-major, `len() * FEATURE_COUNT`) for every tracked bucket in key order.
    /// `out` is cleared first and its allocation reused, so a window close does not hold
    /// the old matrix beside the new one.
    pub fn feature_matrix_into(&self, ctx: &WindowContext, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(self.buckets.len() * FEATURE_COUNT);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

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
            // The matrix is refilled in one vector window after window, as the predictor does.
            let mut reused = vec![123.0_f32; 7];
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
                let ctx = WindowContext::new(1_700_000_000, 10, &counts, &HashMap::new());
                let mut fresh = Vec::new();
                store.feature_matrix_into(&ctx, &mut fresh);
                store.feature_matrix_into(&ctx, &mut reused);
                prop_assert_eq!(fresh.len(), store.len() * FEATURE_COUNT);
                prop_assert_eq!(&reused, &fresh);
            }
        }

        /// Keys order, compare and hash by content whether or not their names share an
        /// allocation.
        #[test]
        fn bucket_keys_compare_by_content(
            a in (0..3_u8, 0..3_u8, -2..3_i64),
            b in (0..3_u8, 0..3_u8, -2..3_i64),
            share in any::<bool>(),
        ) {
            use std::hash::BuildHasher;
            let names: Vec<std::sync::Arc<str>> = (0..3).map(|i| format!("n{i}").into()).collect();
            let make = |(t, tb, bucket): (u8, u8, i64), shared: bool| BucketKey {
                tenant: if shared { names[t as usize].clone() } else { format!("n{t}").into() },
                table: if shared { names[tb as usize].clone() } else { format!("n{tb}").into() },
                bucket,
            };
            let (ka, kb) = (make(a, share), make(b, true));
            let content = |(t, tb, bucket): (u8, u8, i64)| (format!("n{t}"), format!("n{tb}"), bucket);
            prop_assert_eq!(ka.cmp(&kb), content(a).cmp(&content(b)));
            prop_assert_eq!(ka == kb, a == b);
            let hasher = foldhash::fast::FixedState::with_seed(7);
            if a == b {
                prop_assert_eq!(hasher.hash_one(&ka), hasher.hash_one(&kb));
            }
        }
    }
}
