//! Access-frequency prediction for QoS scheduling of tenant replication.
//!
//! The write signal is counted by the [`observe`] operator into the job's [`ledger`]
//! (bucketed by [`bucket`]); predictions reach the sink tasks through [`hotness_map`].
//!
//! This module owns the per-bucket access history ([`features`]), a small online
//! model ([`model`]), the [`Predictor`] that compares the model with an EWMA
//! heuristic and a last-window baseline and picks which one to trust, a synthetic
//! workload ([`trace`]) and an offline evaluation ([`evaluate()`]).
//!
//! Everything here is pure: no clocks, no I/O, no threads. The caller closes a
//! window every `window_secs`, passing the window's end time as unix seconds and the
//! counts seen in it; the predictor then answers which buckets will be hot next.

pub mod bucket;
pub mod evaluate;
pub mod features;
pub mod hotness_map;
pub mod ledger;
pub mod model;
pub mod observe;
pub mod predictor;
pub mod trace;

#[cfg(test)]
mod tests;

pub use evaluate::{evaluate, evaluate_with, PredictorQuality, QualityReport};
pub use features::{BucketKey, FEATURE_COUNT};
pub use model::{ModelError, SavedModel};
pub use predictor::{
    BucketPrediction, PredictionErrors, Predictor, PredictorConfig, PredictorKind, PredictorMode,
    WindowReport,
};
pub use trace::{AccessEvent, TraceConfig, ZipfDriftTrace};
