//! The `[qos]` section of a job spec: tenant tiers and their lag budgets, the hotness
//! predictor, and the access signals it learns from.
//!
//! ```toml
//! [qos]
//! default_tier = "standard"        # premium | standard | batch
//! predictor = "auto"               # auto | model | heuristic | off
//! window_secs = 10                 # prediction window
//! key_bucket_width = 1000          # integer keys: ranges of this width; others hashed
//! source_stats_poll_secs = 0       # poll pg_stat_user_tables (0: off)
//! max_buffered_rows = 100000       # rows read ahead of the sinks (the scheduler's horizon;
//!                                  # default 100000, or twice the largest Parquet group)
//! max_buffered_mib = 128           # and at most this much memory of them (wide rows;
//!                                  # default 128, or 1 KiB per row read ahead if more)
//! min_share = 0.1                  # share of a saturated sink for tenants past budget
//! [qos.tenants]
//! "3" = "premium"
//! [qos.lag_budget_ms]
//! premium = 1000
//! standard = 10000
//! batch = 300000
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobSpecError;
use crate::sinks::qos::{QosPolicy, Tier, DEFAULT_LAG_BUDGETS, DEFAULT_MIN_SHARE};

/// Default `qos.window_secs`.
pub const DEFAULT_WINDOW_SECS: u64 = 10;
/// Default `qos.key_bucket_width`.
pub const DEFAULT_KEY_BUCKET_WIDTH: u64 = 1000;
/// Least default `qos.max_buffered_rows` (the dataflow's read-ahead; see
/// `JobSpec::read_ahead_rows`).
pub const DEFAULT_MAX_BUFFERED_ROWS: usize = 100_000;
/// Largest accepted `qos.max_buffered_rows`.
pub const MAX_MAX_BUFFERED_ROWS: usize = 10_000_000;
/// Default `qos.max_buffered_mib`: memory of the rows read ahead of the sinks (estimated,
/// `crate::footprint`). The e2e bench's rows take about 0.5 KB each, so the default rows
/// (twice a Parquet group of 100,000) fit within it; rows of 20 KB are read ahead by
/// about 6,500.
pub const DEFAULT_MAX_BUFFERED_MIB: usize = 128;
/// Bytes per row read ahead the default `qos.max_buffered_mib` allows at least: a cold-tier
/// job's 200,000 rows (about 0.65 KB each as versions in the e2e bench) came within a few
/// percent of 128 MiB, and its groups were then cut by bytes (600 files against 550).
pub const DEFAULT_BYTES_PER_ROW: usize = 1024;
/// Accepted `qos.max_buffered_mib`.
pub const MAX_BUFFERED_MIB_RANGE: std::ops::RangeInclusive<usize> = 16..=65_536;
/// Largest accepted `qos.window_secs`.
pub const MAX_WINDOW_SECS: u64 = 3600;
/// Largest accepted lag budget (one day).
pub const MAX_LAG_BUDGET_MS: u64 = 86_400_000;

/// Which predictor orders transactions within a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PredictorChoice {
    /// The model while its recent error is lower than the heuristic's, else the heuristic.
    #[default]
    Auto,
    /// The model unless it produces no usable output.
    Model,
    /// The EWMA heuristic only.
    Heuristic,
    /// No prediction: round robin between tenants of a tier.
    Off,
}

/// Lag budgets per tier, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LagBudgets {
    #[serde(default = "default_premium_ms")]
    pub premium: u64,
    #[serde(default = "default_standard_ms")]
    pub standard: u64,
    #[serde(default = "default_batch_ms")]
    pub batch: u64,
}

impl Default for LagBudgets {
    fn default() -> Self {
        LagBudgets {
            premium: default_premium_ms(),
            standard: default_standard_ms(),
            batch: default_batch_ms(),
        }
    }
}

fn default_premium_ms() -> u64 {
    DEFAULT_LAG_BUDGETS[0].as_millis() as u64
}
fn default_standard_ms() -> u64 {
    DEFAULT_LAG_BUDGETS[1].as_millis() as u64
}
fn default_batch_ms() -> u64 {
    DEFAULT_LAG_BUDGETS[2].as_millis() as u64
}

/// Job-wide quality of service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosSpec {
    /// Tier of tenants not listed in `tenants`. Default `standard`.
    #[serde(default)]
    pub default_tier: Tier,
    /// Tier per tenant id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, Tier>,
    /// Lag budget per tier.
    #[serde(default)]
    pub lag_budget_ms: LagBudgets,
    /// Which predictor orders work within a tier. Default `auto`.
    #[serde(default)]
    pub predictor: PredictorChoice,
    /// Length of a prediction window, `1..=3600` s. Default 10.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Width of a key bucket for single-integer keys (other keys are hashed), `>= 1`.
    #[serde(default = "default_key_bucket_width")]
    pub key_bucket_width: u64,
    /// Seconds between polls of the source's `pg_stat_user_tables` (0: no polling).
    #[serde(default)]
    pub source_stats_poll_secs: u64,
    /// Rows read ahead of the sinks, `1000..=10_000_000`. Default (`None`): 100000, or
    /// twice the largest Parquet sink's `batch_max_rows` if more, so a cold-tier sink
    /// writes whole groups while the next one is read (`JobSpec::read_ahead_rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_rows: Option<usize>,
    /// Memory of the rows read ahead of the sinks, in MiB (estimated), `16..=65536`.
    /// Default (`None`): 128, or 1 KiB per row of the rows' read-ahead if more. Whichever of the two bounds is reached first pauses the reader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffered_mib: Option<usize>,
    /// Share of a saturated sink kept for tenants past their lag budget, `0..=0.5`.
    #[serde(default = "default_min_share")]
    pub min_share: f64,
}

impl Eq for QosSpec {}

impl Default for QosSpec {
    fn default() -> Self {
        QosSpec {
            default_tier: Tier::default(),
            tenants: BTreeMap::new(),
            lag_budget_ms: LagBudgets::default(),
            predictor: PredictorChoice::default(),
            window_secs: DEFAULT_WINDOW_SECS,
            key_bucket_width: DEFAULT_KEY_BUCKET_WIDTH,
            source_stats_poll_secs: 0,
            max_buffered_rows: None,
            max_buffered_mib: None,
            min_share: DEFAULT_MIN_SHARE,
        }
    }
}

fn default_window_secs() -> u64 {
    DEFAULT_WINDOW_SECS
}
fn default_key_bucket_width() -> u64 {
    DEFAULT_KEY_BUCKET_WIDTH
}
fn default_min_share() -> f64 {
    DEFAULT_MIN_SHARE
}

impl QosSpec {
    pub(super) fn is_default(&self) -> bool {
        *self == QosSpec::default()
    }

    /// Checks ranges; names the field.
    pub(super) fn validate(&self) -> Result<(), JobSpecError> {
        let invalid = |field: &str, reason: String| JobSpecError::Invalid {
            field: format!("qos.{field}"),
            reason,
        };
        if !(1..=MAX_WINDOW_SECS).contains(&self.window_secs) {
            return Err(invalid(
                "window_secs",
                format!(
                    "must be between 1 and {MAX_WINDOW_SECS}, got {}",
                    self.window_secs
                ),
            ));
        }
        if self.key_bucket_width == 0 {
            return Err(invalid("key_bucket_width", "must be at least 1".into()));
        }
        if self.source_stats_poll_secs > MAX_WINDOW_SECS {
            return Err(invalid(
                "source_stats_poll_secs",
                format!(
                    "must be between 0 (off) and {MAX_WINDOW_SECS}, got {}",
                    self.source_stats_poll_secs
                ),
            ));
        }
        if let Some(rows) = self.max_buffered_rows {
            if !(1000..=MAX_MAX_BUFFERED_ROWS).contains(&rows) {
                return Err(invalid(
                    "max_buffered_rows",
                    format!("must be between 1000 and {MAX_MAX_BUFFERED_ROWS}, got {rows}"),
                ));
            }
        }
        if let Some(mib) = self.max_buffered_mib {
            if !MAX_BUFFERED_MIB_RANGE.contains(&mib) {
                return Err(invalid(
                    "max_buffered_mib",
                    format!(
                        "must be between {} and {}, got {mib}",
                        MAX_BUFFERED_MIB_RANGE.start(),
                        MAX_BUFFERED_MIB_RANGE.end()
                    ),
                ));
            }
        }
        if !(0.0..=0.5).contains(&self.min_share) {
            return Err(invalid(
                "min_share",
                format!("must be between 0 and 0.5, got {}", self.min_share),
            ));
        }
        let b = &self.lag_budget_ms;
        for (name, ms) in [
            ("premium", b.premium),
            ("standard", b.standard),
            ("batch", b.batch),
        ] {
            if !(1..=MAX_LAG_BUDGET_MS).contains(&ms) {
                return Err(invalid(
                    &format!("lag_budget_ms.{name}"),
                    format!("must be between 1 and {MAX_LAG_BUDGET_MS}, got {ms}"),
                ));
            }
        }
        if self.tenants.contains_key("") {
            return Err(invalid(
                "tenants",
                "tenant ids must not be empty strings".into(),
            ));
        }
        Ok(())
    }

    /// The scheduling policy of the job's postgres sinks.
    pub fn policy(&self) -> QosPolicy {
        let b = &self.lag_budget_ms;
        QosPolicy {
            reorder: true,
            use_hotness: self.predictor != PredictorChoice::Off,
            tenant_tiers: self.tenants.clone().into_iter().collect(),
            default_tier: self.default_tier,
            lag_budgets: [
                Duration::from_millis(b.premium),
                Duration::from_millis(b.standard),
                Duration::from_millis(b.batch),
            ],
            min_share: self.min_share,
        }
    }
}
