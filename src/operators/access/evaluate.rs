//! Offline quality check: replays a [`ZipfDriftTrace`] through a [`Predictor`] and
//! compares the model with the EWMA heuristic and the last-window baseline.

use std::collections::HashMap;
use std::fmt;

use super::features::BucketKey;
use super::predictor::{Predictor, PredictorConfig, PredictorKind, PredictorMode};
use super::trace::{TraceConfig, ZipfDriftTrace};

/// Windows at the start that are not averaged.
pub const WARMUP_WINDOWS: u64 = 6;

/// Quality of one predictor, averaged over the windows after warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PredictorQuality {
    /// Mean absolute error per bucket, averaged over windows.
    pub mae: Option<f64>,
    /// Spearman rank correlation of predicted vs actual counts, averaged over windows.
    pub spearman: Option<f64>,
}

/// Result of [`evaluate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QualityReport {
    /// Windows replayed.
    pub windows: u64,
    /// Windows averaged (after warm-up).
    pub scored_windows: u64,
    /// The online model.
    pub model: PredictorQuality,
    /// EWMA heuristic.
    pub heuristic: PredictorQuality,
    /// Last window's count.
    pub last_window: PredictorQuality,
    /// Scored windows whose predictions came from the model in Auto mode.
    pub model_in_use_windows: u64,
    /// Mean number of buckets with accesses per window.
    pub mean_active_buckets: f64,
}

#[derive(Default)]
struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.sum += v;
            self.n += 1;
        }
    }
    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Average ranks (ties share the mean rank).
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0;
        order[i..=j].iter().for_each(|&k| out[k] = rank);
        i = j + 1;
    }
    out
}

/// Spearman rank correlation; None when either side is constant or lengths differ.
pub fn spearman(predicted: &[f64], actual: &[f64]) -> Option<f64> {
    if predicted.len() != actual.len() || predicted.len() < 2 {
        return None;
    }
    let (rp, ra) = (ranks(predicted), ranks(actual));
    let n = rp.len() as f64;
    let (mp, ma) = (rp.iter().sum::<f64>() / n, ra.iter().sum::<f64>() / n);
    let (mut cov, mut vp, mut va) = (0.0, 0.0, 0.0);
    for (p, a) in rp.iter().zip(&ra) {
        cov += (p - mp) * (a - ma);
        vp += (p - mp) * (p - mp);
        va += (a - ma) * (a - ma);
    }
    (vp > 0.0 && va > 0.0).then(|| cov / (vp * va).sqrt())
}

/// Replays `duration_secs` of the trace in windows of `window_secs` with buckets of
/// `bucket_width` keys through a default Auto-mode [`Predictor`].
pub fn evaluate(
    trace_config: &TraceConfig,
    duration_secs: u64,
    window_secs: u64,
    bucket_width: i64,
) -> QualityReport {
    let config = PredictorConfig {
        window_secs,
        mode: PredictorMode::Auto,
        seed: trace_config.seed,
        ..PredictorConfig::default()
    };
    evaluate_with(trace_config, duration_secs, bucket_width, config)
}

/// [`evaluate`] with an explicit predictor configuration (its `window_secs` is used).
pub fn evaluate_with(
    trace_config: &TraceConfig,
    duration_secs: u64,
    bucket_width: i64,
    config: PredictorConfig,
) -> QualityReport {
    let trace = ZipfDriftTrace::new(trace_config.clone());
    let window_secs = config.window_secs.max(1);
    let width = bucket_width.max(1);
    let mut predictor = Predictor::new(config);
    let mut report = QualityReport::default();
    let (mut mae, mut rho) = (<[Mean; 3]>::default(), <[Mean; 3]>::default());
    let mut active = Mean::default();
    for window in 0..duration_secs / window_secs {
        let start = window * window_secs;
        let mut counts: HashMap<BucketKey, f64> = HashMap::new();
        let mut table_reads: HashMap<String, f64> = HashMap::new();
        for event in trace.events(start..start + window_secs) {
            *table_reads.entry(event.table.clone()).or_default() += 1.0;
            let key = BucketKey {
                tenant: event.tenant.into(),
                table: event.table.into(),
                bucket: event.key.div_euclid(width),
            };
            *counts.entry(key).or_default() += 1.0;
        }
        let scored = window >= WARMUP_WINDOWS;
        if scored {
            let rows = predictor.prediction_rows();
            let mut columns: [Vec<f64>; 4] = Default::default();
            for row in rows {
                columns[0].push(row.model.map_or(f64::NAN, f64::from));
                columns[1].push(f64::from(row.heuristic));
                columns[2].push(f64::from(row.last_window));
                columns[3].push(counts.get(&row.key).copied().unwrap_or(0.0));
            }
            for (key, count) in &counts {
                if rows.binary_search_by(|r| r.key.cmp(key)).is_err() {
                    (0..3).for_each(|c| columns[c].push(0.0));
                    columns[3].push(*count);
                }
            }
            let model_complete = columns[0].iter().all(|v| v.is_finite());
            for c in 0..3 {
                if c > 0 || model_complete {
                    rho[c].add(spearman(&columns[c], &columns[3]));
                }
            }
            active.add(Some(counts.len() as f64));
        }
        let window_end =
            trace_config.start_unix_secs + i64::try_from(start + window_secs).unwrap_or(i64::MAX);
        let close = predictor.close_window(window_end, &counts, &table_reads);
        report.windows += 1;
        if scored {
            report.scored_windows += 1;
            mae[0].add(close.window_errors.model);
            mae[1].add(close.window_errors.heuristic);
            mae[2].add(close.window_errors.last_window);
        }
        if scored && close.in_use == PredictorKind::Model {
            report.model_in_use_windows += 1;
        }
    }
    let quality = |i: usize| PredictorQuality {
        mae: mae[i].get(),
        spearman: rho[i].get(),
    };
    report.model = quality(0);
    report.heuristic = quality(1);
    report.last_window = quality(2);
    report.mean_active_buckets = active.get().unwrap_or(0.0);
    report
}

impl fmt::Display for QualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
        writeln!(f, "| predictor | MAE / bucket / window | Spearman ρ |")?;
        writeln!(f, "|---|---:|---:|")?;
        for (name, q) in [
            ("model (MLP)", self.model),
            ("EWMA heuristic", self.heuristic),
            ("last window", self.last_window),
        ] {
            writeln!(f, "| {name} | {} | {} |", cell(q.mae), cell(q.spearman))?;
        }
        writeln!(
            f,
            "\n{} windows ({} scored after {} warm-up), Auto used the model in {} of them; {:.0} active buckets/window",
            self.windows, self.scored_windows, WARMUP_WINDOWS, self.model_in_use_windows, self.mean_active_buckets
        )
    }
}
