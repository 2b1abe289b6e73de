//! `[history]` of a job spec: job-wide settings of bi-temporal history (tables opt in
//! with `history = true`).

use serde::{Deserialize, Serialize};

use super::JobSpecError;

/// Default `history.hot_window_secs`.
pub const DEFAULT_HOT_WINDOW_SECS: u64 = 3600;
/// Largest accepted `history.hot_window_secs` (30 days).
pub const MAX_HOT_WINDOW_SECS: u64 = 30 * 24 * 3600;
/// Default `history.row_memory_mib`.
pub const DEFAULT_ROW_MEMORY_MIB: u64 = 128;
/// Largest accepted `history.row_memory_mib` (1 TiB).
pub const MAX_ROW_MEMORY_MIB: u64 = 1 << 20;

/// Job-wide settings of bi-temporal history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySpec {
    /// Seconds of closed versions kept in memory for as-of queries (older ones are read
    /// from the history table). `1..=2592000`, default 3600.
    #[serde(default = "default_hot_window_secs")]
    pub hot_window_secs: u64,
    /// MiB of rows the version books keep in memory; beyond it they go to an unlinked
    /// local file and are read back when their version closes. `1..=1048576`, default 128.
    #[serde(default = "default_row_memory_mib")]
    pub row_memory_mib: u64,
}

impl Default for HistorySpec {
    fn default() -> Self {
        HistorySpec {
            hot_window_secs: DEFAULT_HOT_WINDOW_SECS,
            row_memory_mib: DEFAULT_ROW_MEMORY_MIB,
        }
    }
}

impl HistorySpec {
    /// Bytes of rows the version books keep in memory.
    pub fn row_memory_bytes(&self) -> u64 {
        self.row_memory_mib << 20
    }

    pub(super) fn is_default(&self) -> bool {
        *self == HistorySpec::default()
    }

    /// Checks the ranges, naming the field that is out of its.
    pub(super) fn validate(&self) -> Result<(), JobSpecError> {
        if !(1..=MAX_HOT_WINDOW_SECS).contains(&self.hot_window_secs) {
            return Err(JobSpecError::invalid(
                "history.hot_window_secs",
                format!(
                    "must be between 1 and {MAX_HOT_WINDOW_SECS}, got {}",
                    self.hot_window_secs
                ),
            ));
        }
        if !(1..=MAX_ROW_MEMORY_MIB).contains(&self.row_memory_mib) {
            return Err(JobSpecError::invalid(
                "history.row_memory_mib",
                format!(
                    "must be between 1 and {MAX_ROW_MEMORY_MIB}, got {}",
                    self.row_memory_mib
                ),
            ));
        }
        Ok(())
    }
}

fn default_hot_window_secs() -> u64 {
    DEFAULT_HOT_WINDOW_SECS
}

fn default_row_memory_mib() -> u64 {
    DEFAULT_ROW_MEMORY_MIB
}
