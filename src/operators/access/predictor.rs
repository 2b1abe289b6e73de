//! [`Predictor`]: feature state + online model + two baselines (EWMA heuristic and
//! last window), scored against each other every window, with automatic fallback.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::features::{sorted_counts, BucketKey, FeatureStore, WindowContext, FEATURE_COUNT};
use super::model::{log_output_to_count, AccessModel, ModelError, SavedModel, TrainingBatch};

const TRAIN_STEPS_PER_WINDOW: usize = 16;
const MAX_TRAIN_ROWS: usize = 4096;
const MIN_ZERO_SAMPLES: usize = 256;

/// Which predictor the caller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictorMode {
    /// Model while it is trained, finite and more accurate than the heuristic; else heuristic.
    Auto,
    /// Model unless its output is non-finite.
    Model,
    /// EWMA heuristic only; the model is not trained.
    Heuristic,
    /// No predictions at all (round robin).
    Off,
}

/// Which predictor currently supplies [`Predictor::hotness`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictorKind {
    /// The online model.
    Model,
    /// EWMA of past counts.
    Heuristic,
    /// No data or predictions disabled: treat every bucket alike.
    RoundRobin,
}

/// Configuration of a [`Predictor`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictorConfig {
    /// Window length in seconds (used to turn table reads into rates).
    pub window_secs: u64,
    /// Predictor selection policy.
    pub mode: PredictorMode,
    /// Hard cap on tracked buckets; the coldest are evicted above it.
    pub max_buckets: usize,
    /// Buckets with no access for more than this many windows are evicted.
    pub idle_evict_windows: u32,
    /// Number of recent windows the rolling errors cover.
    pub error_windows: usize,
    /// Windows the model must have trained before Auto may use it.
    pub min_trained_windows: u64,
    /// Seed for weight initialisation and training-row sampling.
    pub seed: u64,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        Self {
            window_secs: 10,
            mode: PredictorMode::Auto,
            max_buckets: 100_000,
            idle_evict_windows: 120,
            error_windows: 10,
            min_trained_windows: 3,
            seed: 0x5eed,
        }
    }
}

/// Mean absolute errors of the three predictors (per window or rolling).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictionErrors {
    /// Online model (None when it made no usable prediction).
    pub model: Option<f64>,
    /// EWMA heuristic.
    pub heuristic: Option<f64>,
    /// Last window's count.
    pub last_window: Option<f64>,
}

/// Predictions of every predictor for one bucket's next window.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketPrediction {
    /// The bucket.
    pub key: BucketKey,
    /// Model prediction (None when the model is unused or its output was discarded).
    pub model: Option<f32>,
    /// EWMA heuristic prediction.
    pub heuristic: f32,
    /// Last window's count.
    pub last_window: f32,
}

/// What happened at one [`Predictor::close_window`].
#[derive(Clone, Debug, PartialEq)]
pub struct WindowReport {
    /// 1-based index of the closed window.
    pub window_index: u64,
    /// Buckets scored (predicted at the previous close or active now).
    pub scored_buckets: usize,
    /// Mean absolute errors of the previous predictions against this window.
    pub window_errors: PredictionErrors,
    /// Weighted training loss (log1p scale), if the model trained.
    pub training_loss: Option<f32>,
    /// True when the model was reset after a non-finite loss or output.
    pub model_reset: bool,
    /// Predictor used for the new predictions.
    pub in_use: PredictorKind,
    /// Buckets tracked after this window.
    pub tracked_buckets: usize,
    /// Buckets evicted at this window.
    pub evicted_buckets: usize,
}

/// Predicts per-bucket access counts of the next window.
#[derive(Clone, Debug)]
pub struct Predictor {
    config: PredictorConfig,
    store: FeatureStore,
    model: AccessModel,
    last_good_model: Option<SavedModel>,
    windows_closed: u64,
    /// Predictions for the next window, sorted by key, aligned with `features`.
    predictions: Vec<BucketPrediction>,
    features: Vec<f32>,
    model_outputs_finite: bool,
    recent_errors: VecDeque<PredictionErrors>,
    rng: StdRng,
}

impl Predictor {
    /// Creates a cold predictor.
    pub fn new(config: PredictorConfig) -> Self {
        Self {
            store: FeatureStore::new(config.max_buckets, config.idle_evict_windows),
            model: AccessModel::new(config.seed),
            last_good_model: None,
            windows_closed: 0,
            predictions: Vec::new(),
            features: Vec::new(),
            model_outputs_finite: true,
            recent_errors: VecDeque::new(),
            rng: StdRng::seed_from_u64(config.seed ^ 0x9e37_79b9_7f4a_7c15),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PredictorConfig {
        &self.config
    }

    /// Number of tracked buckets.
    pub fn tracked_buckets(&self) -> usize {
        self.store.len()
    }

    fn model_enabled(&self) -> bool {
        matches!(self.config.mode, PredictorMode::Auto | PredictorMode::Model)
    }

    /// Closes a window: scores the previous predictions against `counts`, trains the
    /// model on (previous features → these counts), updates the history and predicts
    /// the next window. `window_end_unix_secs` is the window's end time.
    pub fn close_window<S>(
        &mut self,
        window_end_unix_secs: i64,
        counts: &HashMap<BucketKey, f64, S>,
        table_reads: &HashMap<String, f64>,
    ) -> WindowReport {
        self.windows_closed += 1;
        let mut report = WindowReport {
            window_index: self.windows_closed,
            scored_buckets: 0,
            window_errors: PredictionErrors::default(),
            training_loss: None,
            model_reset: false,
            in_use: PredictorKind::RoundRobin,
            tracked_buckets: 0,
            evicted_buckets: 0,
        };
        if self.config.mode == PredictorMode::Off {
            return report;
        }
        let window = sorted_counts(counts);
        let (actual, unpredicted) = match_window(&self.predictions, &window);
        self.score(&actual, &unpredicted, &mut report);
        if self.model_enabled() && !self.predictions.is_empty() {
            let batch = self.training_batch(&actual);
            match self.model.train(&batch, TRAIN_STEPS_PER_WINDOW) {
                Ok(loss) if loss.is_finite() => report.training_loss = Some(loss),
                _ => {
                    self.reset_model();
                    report.model_reset = true;
                }
            }
        }
        report.evicted_buckets = self.store.record_sorted_window(&window);
        let ctx = WindowContext::new(
            window_end_unix_secs,
            self.config.window_secs,
            counts,
            table_reads,
        );
        // Refilled in place: the last window's matrix and predictions are not needed past
        // the training above, and holding both generations at once added to the memory
        // peak of every window close.
        self.store.feature_matrix_into(&ctx, &mut self.features);
        self.predictions.clear();
        self.predictions
            .extend(self.store.iter().map(|(key, state)| BucketPrediction {
                key: key.clone(),
                model: None,
                heuristic: state.ewma_fast() as f32,
                last_window: state.last() as f32,
            }));
        if self.model_enabled() && !self.predict_with_model() {
            report.model_reset = true;
        }
        report.tracked_buckets = self.store.len();
        report.in_use = self.in_use();
        report
    }

    /// Scores the last forecast against the closing window: every predicted bucket by its
    /// error (`actual[i]` is prediction `i`'s count), and every counted bucket without a
    /// prediction (`unpredicted`) as predicted 0.
    fn score(&mut self, actual: &[f64], unpredicted: &[f64], report: &mut WindowReport) {
        let mut sums = [0.0_f64; 3];
        let mut model_seen = false;
        let mut scored = 0_usize;
        for (p, a) in self.predictions.iter().zip(actual) {
            if let Some(m) = p.model {
                sums[0] += (f64::from(m) - a).abs();
                model_seen = true;
            }
            sums[1] += (f64::from(p.heuristic) - a).abs();
            sums[2] += (f64::from(p.last_window) - a).abs();
            scored += 1;
        }
        for count in unpredicted {
            sums.iter_mut().for_each(|s| *s += count);
            scored += 1;
        }
        if scored == 0 {
            return;
        }
        let n = scored as f64;
        let errors = PredictionErrors {
            model: model_seen.then_some(sums[0] / n),
            heuristic: Some(sums[1] / n),
            last_window: Some(sums[2] / n),
        };
        report.scored_buckets = scored;
        report.window_errors = errors;
        self.recent_errors.push_back(errors);
        while self.recent_errors.len() > self.config.error_windows.max(1) {
            self.recent_errors.pop_front();
        }
    }

    /// All active rows plus a weighted sample of zero rows (capped at `MAX_TRAIN_ROWS`).
    fn training_batch(&mut self, actual: &[f64]) -> TrainingBatch {
        let (active, zero): (Vec<usize>, Vec<usize>) =
            (0..actual.len()).partition(|&i| actual[i] > 0.0);
        let active_take = active.len().min(MAX_TRAIN_ROWS / 2);
        let zero_take = zero
            .len()
            .min(active.len().max(MIN_ZERO_SAMPLES))
            .min(MAX_TRAIN_ROWS / 2);
        let mut batch = TrainingBatch::default();
        for (rows, take) in [(&active, active_take), (&zero, zero_take)] {
            if take == 0 {
                continue;
            }
            let importance = rows.len() as f32 / take as f32;
            for pick in sample(&mut self.rng, rows.len(), take).iter() {
                let row = rows[pick];
                let start = row * FEATURE_COUNT;
                if let (Some(f), Some(p)) = (
                    self.features.get(start..start + FEATURE_COUNT),
                    self.predictions.get(row),
                ) {
                    batch.features.extend_from_slice(f);
                    batch.labels.push(actual[row].ln_1p() as f32);
                    // L1 on log1p ≈ relative error; scaling by the expected size (known before
                    // the label) makes the loss approximate absolute error on counts.
                    batch
                        .weights
                        .push(importance * (1.0 + p.heuristic.max(p.last_window)));
                }
            }
        }
        batch
    }

    /// Fills model predictions from the current features. Returns false (and resets the
    /// model) when the output was non-finite or the forward pass failed.
    fn predict_with_model(&mut self) -> bool {
        let outputs = match self.model.predict_log(&self.features) {
            Ok(out) if out.len() == self.predictions.len() && out.iter().all(|v| v.is_finite()) => {
                out
            }
            _ => {
                self.model_outputs_finite = false;
                self.predictions.iter_mut().for_each(|p| p.model = None);
                self.reset_model();
                return false;
            }
        };
        for (p, out) in self.predictions.iter_mut().zip(outputs) {
            p.model = Some(log_output_to_count(out));
        }
        self.model_outputs_finite = true;
        if self.model.is_finite() {
            self.last_good_model = Some(self.model.save());
        }
        true
    }

    /// Back to the last weights that gave finite output, else fresh weights.
    fn reset_model(&mut self) {
        let restored = match self.last_good_model.clone() {
            Some(good) => self.model.restore(good).is_ok(),
            None => false,
        };
        if !restored {
            self.model.reinitialise();
            self.last_good_model = None;
            self.recent_errors.iter_mut().for_each(|e| e.model = None);
        }
    }

    /// Predictor that supplies [`hotness`](Self::hotness) now.
    pub fn in_use(&self) -> PredictorKind {
        if self.config.mode == PredictorMode::Off
            || self.windows_closed == 0
            || self.predictions.is_empty()
        {
            return PredictorKind::RoundRobin;
        }
        let model_ok = self.model_outputs_finite && self.model_enabled();
        match self.config.mode {
            PredictorMode::Model if model_ok => PredictorKind::Model,
            PredictorMode::Auto
                if model_ok && self.model.windows_trained() >= self.config.min_trained_windows =>
            {
                let errors = self.errors();
                match (errors.model, errors.heuristic) {
                    (Some(m), Some(h)) if m < h => PredictorKind::Model,
                    _ => PredictorKind::Heuristic,
                }
            }
            _ => PredictorKind::Heuristic,
        }
    }

    fn value(p: &BucketPrediction, kind: PredictorKind) -> f32 {
        match kind {
            PredictorKind::Model => p.model.unwrap_or(p.heuristic),
            _ => p.heuristic,
        }
    }

    /// Predicted next-window count of `key` from the predictor in use.
    pub fn hotness(&self, key: &BucketKey) -> Option<f32> {
        let kind = self.in_use();
        if kind == PredictorKind::RoundRobin {
            return None;
        }
        let idx = self.predictions.binary_search_by(|p| p.key.cmp(key)).ok()?;
        self.predictions.get(idx).map(|p| Self::value(p, kind))
    }

    /// `(bucket, predicted count)` from the predictor in use, in key order; empty under round robin.
    pub fn predictions(&self) -> impl Iterator<Item = (&BucketKey, f32)> {
        let kind = self.in_use();
        let len = if kind == PredictorKind::RoundRobin {
            0
        } else {
            self.predictions.len()
        };
        self.predictions[..len]
            .iter()
            .map(move |p| (&p.key, Self::value(p, kind)))
    }

    /// Every predictor's prediction per bucket, in key order (for evaluation).
    pub fn prediction_rows(&self) -> &[BucketPrediction] {
        &self.predictions
    }

    /// The `n` hottest buckets, hottest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<(BucketKey, f32)> {
        let mut all: Vec<(&BucketKey, f32)> = self.predictions().collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter()
            .take(n)
            .map(|(k, v)| (k.clone(), v))
            .collect()
    }

    /// Sum of predicted counts per tenant (for metrics).
    pub fn tenant_hotness(&self) -> HashMap<String, f32> {
        let mut out: HashMap<String, f32> = HashMap::new();
        for (key, value) in self.predictions() {
            *out.entry(key.tenant.to_string()).or_default() += value;
        }
        out
    }

    /// Rolling mean absolute errors over the last `error_windows` windows.
    pub fn errors(&self) -> PredictionErrors {
        fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
            let (sum, n) = values
                .flatten()
                .fold((0.0, 0_usize), |(s, n), v| (s + v, n + 1));
            (n > 0).then(|| sum / n as f64)
        }
        let e = &self.recent_errors;
        PredictionErrors {
            model: mean(e.iter().map(|x| x.model)),
            heuristic: mean(e.iter().map(|x| x.heuristic)),
            last_window: mean(e.iter().map(|x| x.last_window)),
        }
    }

    /// Snapshot of the model weights.
    pub fn save(&self) -> SavedModel {
        self.model.save()
    }

    /// Replaces the model weights and re-predicts the current window with them. Weights
    /// with NaN/inf are accepted; their non-finite output makes the predictor fall back.
    pub fn restore_model(&mut self, saved: SavedModel) -> Result<(), ModelError> {
        self.model.restore(saved)?;
        self.recent_errors.iter_mut().for_each(|e| e.model = None);
        if self.model_enabled() && !self.predictions.is_empty() {
            self.predict_with_model();
        }
        Ok(())
    }
}

/// Walks the predictions (in key order) and a window's sorted positive counts together:
/// each prediction's actual count (0 when its bucket was not counted), and the counts of
/// buckets no prediction names. One merge, no lookups.
fn match_window(
    predictions: &[BucketPrediction],
    window: &[(&BucketKey, f64)],
) -> (Vec<f64>, Vec<f64>) {
    let mut unpredicted = Vec::new();
    let mut next = window.iter().peekable();
    let actual = predictions
        .iter()
        .map(|p| {
            while let Some((_, count)) = next.next_if(|(k, _)| **k < p.key) {
                unpredicted.push(*count);
            }
            next.next_if(|(k, _)| **k == p.key).map_or(0.0, |(_, c)| *c)
        })
        .collect();
    unpredicted.extend(next.map(|(_, c)| *c));
    (actual, unpredicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(tenant: u8, bucket: i64) -> BucketKey {
        // A fresh allocation per key: equal names compare by content.
        BucketKey {
            tenant: format!("t{tenant}").into(),
            table: "s.t".into(),
            bucket,
        }
    }

    proptest! {
        /// The merge gives what looking each key up would: every prediction its count (0
        /// when not counted), and the counts of every counted bucket with no prediction.
        #[test]
        fn match_window_agrees_with_lookups(
            predicted in prop::collection::btree_set((0..3_u8, 0..40_i64), 0..60),
            counted in prop::collection::hash_map((0..3_u8, 0..40_i64), prop_oneof![Just(0.0), 0.5..50.0_f64, Just(f64::NAN)], 0..60),
        ) {
            let predictions: Vec<BucketPrediction> = predicted
                .iter()
                .map(|(t, b)| BucketPrediction { key: key(*t, *b), model: None, heuristic: 0.0, last_window: 0.0 })
                .collect();
            let counts: HashMap<BucketKey, f64> =
                counted.iter().map(|((t, b), c)| (key(*t, *b), *c)).collect();
            let window = sorted_counts(&counts);
            let (actual, mut unpredicted) = match_window(&predictions, &window);
            let want_actual: Vec<f64> = predictions
                .iter()
                .map(|p| counts.get(&p.key).copied().map_or(0.0, super::super::features::sanitize_count))
                .collect();
            prop_assert_eq!(actual, want_actual);
            let mut want_unpredicted: Vec<f64> = counted
                .iter()
                .filter(|(k, _)| !predicted.contains(k))
                .map(|(_, c)| super::super::features::sanitize_count(*c))
                .filter(|c| *c > 0.0)
                .collect();
            unpredicted.sort_by(f64::total_cmp);
            want_unpredicted.sort_by(f64::total_cmp);
            prop_assert_eq!(unpredicted, want_unpredicted);
        }
    }
}
