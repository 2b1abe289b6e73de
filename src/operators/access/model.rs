//! Small MLP (one hidden ReLU layer plus a linear skip path) predicting
//! `log1p(next window count)` from a bucket's features, trained online with
//! candle-core autograd and a hand-written Adam update.
//!
//! Weights live in one flat `Vec<f32>` (the source of truth, also what
//! [`SavedModel`] stores); tensors are built from it per batch, so forward and
//! training are one batched matmul chain regardless of the number of buckets.

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::features::FEATURE_COUNT;

/// Width of the hidden layer.
pub const HIDDEN: usize = 16;
/// Version written into [`SavedModel`].
pub const SAVED_MODEL_VERSION: u32 = 1;
/// Largest log1p output turned into a count (`expm1(30)` ≈ 1e13).
pub const MAX_LOG_OUTPUT: f32 = 30.0;

const LEARNING_RATE: f64 = 0.03;
/// Rows per forward pass of [`AccessModel::predict_log`].
const PREDICT_CHUNK_ROWS: usize = 4096;
const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Errors of the model: bad saved weights or a failing tensor operation.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The saved model was written by an incompatible version.
    #[error("saved model version {found} is not supported (expected {expected})")]
    Version {
        /// Version this code reads.
        expected: u32,
        /// Version found in the saved model.
        found: u32,
    },
    /// The saved parameter shapes differ from this model's.
    #[error("saved model shapes {found:?} do not match expected {expected:?}")]
    ShapeMismatch {
        /// Shapes this model uses.
        expected: Vec<Vec<usize>>,
        /// Shapes found in the saved model (with its feature count).
        found: Vec<Vec<usize>>,
    },
    /// The number of weights differs from the sum of the shapes.
    #[error("saved model has {found} weights, expected {expected}")]
    WeightCount {
        /// Number of weights this model uses.
        expected: usize,
        /// Number of weights found.
        found: usize,
    },
    /// A candle tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Serialisable snapshot of the model weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedModel {
    /// Format version ([`SAVED_MODEL_VERSION`]).
    pub version: u32,
    /// Number of input features.
    pub feature_count: usize,
    /// Shapes of the parameter tensors in storage order: `w1 [F,H]`, `b1 [H]`,
    /// `w2 [H,1]`, `b2 [1]`, `skip [F,1]`.
    pub layer_shapes: Vec<Vec<usize>>,
    /// All parameters concatenated, row-major.
    pub weights: Vec<f32>,
    /// Number of windows the model was trained on.
    pub windows_trained: u64,
}

fn param_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![FEATURE_COUNT, HIDDEN],
        vec![HIDDEN],
        vec![HIDDEN, 1],
        vec![1],
        vec![FEATURE_COUNT, 1],
    ]
}

/// A training batch: row-major features, log1p labels and per-row loss weights.
#[derive(Clone, Debug, Default)]
pub struct TrainingBatch {
    /// `rows * FEATURE_COUNT` features.
    pub features: Vec<f32>,
    /// `log1p(count)` targets, one per row.
    pub labels: Vec<f32>,
    /// Non-negative loss weights, one per row.
    pub weights: Vec<f32>,
}

impl TrainingBatch {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }
}

/// The online-trained access model.
#[derive(Clone, Debug)]
pub struct AccessModel {
    weights: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    adam_step: i32,
    windows_trained: u64,
    rng: StdRng,
}

impl AccessModel {
    /// Creates a model initialised deterministically from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut model = Self {
            weights: Vec::new(),
            adam_m: Vec::new(),
            adam_v: Vec::new(),
            adam_step: 0,
            windows_trained: 0,
            rng: StdRng::seed_from_u64(seed),
        };
        model.reinitialise();
        model
    }

    /// Draws fresh weights (the skip path starts as "predict the fast EWMA") and
    /// forgets the optimiser state and training count.
    pub fn reinitialise(&mut self) {
        let total: usize = param_shapes()
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum();
        let mut w = Vec::with_capacity(total);
        let bound1 = (6.0 / FEATURE_COUNT as f32).sqrt();
        w.extend((0..FEATURE_COUNT * HIDDEN).map(|_| self.rng.gen_range(-bound1..bound1)));
        w.extend(std::iter::repeat_n(0.05, HIDDEN));
        let bound2 = 0.1 * (6.0 / HIDDEN as f32).sqrt();
        w.extend((0..HIDDEN).map(|_| self.rng.gen_range(-bound2..bound2)));
        w.push(0.0);
        let mut skip = vec![0.0; FEATURE_COUNT];
        // Feature 3 is 0.25 * log1p(ewma_fast): undo the scale.
        skip[3] = 4.0;
        w.extend(skip);
        self.weights = w;
        self.adam_m = vec![0.0; total];
        self.adam_v = vec![0.0; total];
        self.adam_step = 0;
        self.windows_trained = 0;
    }

    /// Number of windows trained since creation, restore or re-initialisation.
    pub fn windows_trained(&self) -> u64 {
        self.windows_trained
    }

    /// Current flat weights.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// True when every weight is finite.
    pub fn is_finite(&self) -> bool {
        self.weights.iter().all(|w| w.is_finite())
    }

    fn params(&self, device: &Device) -> Result<Vec<Tensor>, ModelError> {
        let mut offset = 0;
        let mut out = Vec::with_capacity(5);
        for shape in param_shapes() {
            let len: usize = shape.iter().product();
            let slice = self.weights.get(offset..offset + len).unwrap_or(&[]);
            out.push(Tensor::from_slice(slice, shape, device)?);
            offset += len;
        }
        Ok(out)
    }

    fn forward(x: &Tensor, p: &[Tensor]) -> Result<Tensor, ModelError> {
        let [w1, b1, w2, b2, skip] = p else {
            return Err(candle_core::Error::Msg("expected 5 parameter tensors".into()).into());
        };
        let hidden = x.matmul(w1)?.broadcast_add(b1)?.relu()?;
        let raw = hidden
            .matmul(w2)?
            .broadcast_add(b2)?
            .add(&x.matmul(skip)?)?;
        // softplus keeps the log1p output positive yet strictly monotone, so cold
        // buckets keep their order instead of all collapsing onto 0.
        let softplus = raw
            .relu()?
            .add(&raw.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
        Ok(softplus)
    }

    /// `log1p(count)` outputs (≥ 0) for `features.len() / FEATURE_COUNT` rows; may contain
    /// non-finite values if the weights are corrupt (the caller checks).
    pub fn predict_log(&self, features: &[f32]) -> Result<Vec<f32>, ModelError> {
        let rows = features.len() / FEATURE_COUNT;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let device = Device::Cpu;
        let params = self.params(&device)?;
        // In chunks: the hidden layer of 100,000 buckets at once would be several MiB
        // per intermediate tensor; each row's output depends on that row alone.
        let mut outputs = Vec::with_capacity(rows);
        for chunk in features[..rows * FEATURE_COUNT].chunks(PREDICT_CHUNK_ROWS * FEATURE_COUNT) {
            let x =
                Tensor::from_slice(chunk, (chunk.len() / FEATURE_COUNT, FEATURE_COUNT), &device)?;
            let out = Self::forward(&x, &params)?;
            outputs.extend(out.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(outputs)
    }

    /// Runs `steps` Adam steps of weighted mean squared error on the batch and counts
    /// one trained window. Returns the loss before the last step (may be non-finite).
    pub fn train(&mut self, batch: &TrainingBatch, steps: usize) -> Result<f32, ModelError> {
        let rows = batch.rows();
        if rows == 0 || batch.features.len() < rows * FEATURE_COUNT || batch.weights.len() < rows {
            return Ok(0.0);
        }
        let device = Device::Cpu;
        let x = Tensor::from_slice(
            &batch.features[..rows * FEATURE_COUNT],
            (rows, FEATURE_COUNT),
            &device,
        )?;
        let y = Tensor::from_slice(&batch.labels, (rows, 1), &device)?;
        let weight_sum: f32 = batch.weights[..rows].iter().sum();
        let norm = if weight_sum > 0.0 {
            1.0 / weight_sum
        } else {
            0.0
        };
        let w: Vec<f32> = batch.weights[..rows].iter().map(|w| w * norm).collect();
        let w = Tensor::from_slice(&w, (rows, 1), &device)?;
        let mut loss_value = 0.0;
        for _ in 0..steps {
            let vars = self
                .params(&device)?
                .iter()
                .map(Var::from_tensor)
                .collect::<Result<Vec<_>, _>>()?;
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let pred = Self::forward(&x, &tensors)?;
            // Weighted L1 on log1p: its minimiser is the conditional median, which is also
            // the count-space MAE minimiser (log1p is monotone).
            let loss = pred.sub(&y)?.abs()?.mul(&w)?.sum_all()?;
            loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !loss_value.is_finite() {
                return Ok(loss_value);
            }
            let grads = loss.backward()?;
            let mut flat_grad = Vec::with_capacity(self.weights.len());
            for (var, tensor) in vars.iter().zip(&tensors) {
                match grads.get(var.as_tensor()) {
                    Some(g) => flat_grad.extend(g.flatten_all()?.to_vec1::<f32>()?),
                    None => flat_grad.extend(std::iter::repeat_n(0.0, tensor.elem_count())),
                }
            }
            self.adam_update(&flat_grad);
        }
        self.windows_trained += 1;
        Ok(loss_value)
    }

    fn adam_update(&mut self, grad: &[f32]) {
        self.adam_step = self.adam_step.saturating_add(1);
        let bias1 = 1.0 - ADAM_BETA1.powi(self.adam_step);
        let bias2 = 1.0 - ADAM_BETA2.powi(self.adam_step);
        let params = self
            .weights
            .iter_mut()
            .zip(self.adam_m.iter_mut().zip(self.adam_v.iter_mut()));
        for ((p, (m, v)), g) in params.zip(grad) {
            let g = f64::from(*g);
            let m_new = ADAM_BETA1 * f64::from(*m) + (1.0 - ADAM_BETA1) * g;
            let v_new = ADAM_BETA2 * f64::from(*v) + (1.0 - ADAM_BETA2) * g * g;
            *m = m_new as f32;
            *v = v_new as f32;
            let step = LEARNING_RATE * (m_new / bias1) / ((v_new / bias2).sqrt() + ADAM_EPS);
            *p = (f64::from(*p) - step) as f32;
        }
    }

    /// Snapshot of the weights.
    pub fn save(&self) -> SavedModel {
        SavedModel {
            version: SAVED_MODEL_VERSION,
            feature_count: FEATURE_COUNT,
            layer_shapes: param_shapes(),
            weights: self.weights.clone(),
            windows_trained: self.windows_trained,
        }
    }

    /// Loads saved weights after checking version and shapes. Non-finite weights are
    /// accepted here; the predictor detects non-finite outputs and falls back.
    pub fn restore(&mut self, saved: SavedModel) -> Result<(), ModelError> {
        if saved.version != SAVED_MODEL_VERSION {
            return Err(ModelError::Version {
                expected: SAVED_MODEL_VERSION,
                found: saved.version,
            });
        }
        let expected = param_shapes();
        if saved.feature_count != FEATURE_COUNT || saved.layer_shapes != expected {
            let mut found = saved.layer_shapes;
            found.push(vec![saved.feature_count]);
            let mut expected = expected;
            expected.push(vec![FEATURE_COUNT]);
            return Err(ModelError::ShapeMismatch { expected, found });
        }
        if saved.weights.len() != self.weights.len() {
            return Err(ModelError::WeightCount {
                expected: self.weights.len(),
                found: saved.weights.len(),
            });
        }
        self.weights = saved.weights;
        self.adam_m.iter_mut().for_each(|m| *m = 0.0);
        self.adam_v.iter_mut().for_each(|v| *v = 0.0);
        self.adam_step = 0;
        self.windows_trained = saved.windows_trained;
        Ok(())
    }
}

/// Turns a raw log1p output into a non-negative finite count.
pub fn log_output_to_count(log_count: f32) -> f32 {
    log_count.clamp(0.0, MAX_LOG_OUTPUT).exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_in_chunks_match_row_by_row() {
        let model = AccessModel::new(7);
        let rows = PREDICT_CHUNK_ROWS * 2 + 3;
        let features: Vec<f32> = (0..rows * FEATURE_COUNT)
            .map(|i| ((i * 37) % 101) as f32 / 50.0)
            .collect();
        let all = model.predict_log(&features).unwrap();
        assert_eq!(all.len(), rows);
        for row in [0, PREDICT_CHUNK_ROWS - 1, PREDICT_CHUNK_ROWS, rows - 1] {
            let one = model
                .predict_log(&features[row * FEATURE_COUNT..(row + 1) * FEATURE_COUNT])
                .unwrap();
            assert_eq!(one.len(), 1);
            // The same row gives the same output up to float summation order.
            assert!(
                (one[0] - all[row]).abs() <= 1e-5 * (1.0 + all[row].abs()),
                "row {row}"
            );
        }
    }
}
