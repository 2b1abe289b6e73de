//! Quality of service in front of the sinks: which pending transaction a sink task applies
//! next, and how fast a sink may write.
//!
//! - [`scheduler`]: the pending transactions of one sink task, ordered by the tenant's tier
//!   (premium, standard, batch), then by predicted hotness, with a starvation bound; the
//!   order never breaks DESIGN.md invariants 1–3 (a tenant's transactions in commit order,
//!   whole transactions, and the durable LSN reported is one below which *every*
//!   transaction is applied).
//! - [`rate_limit`]: token buckets for a sink's rows/s and bytes/s, sink-wide and per tenant.
//!
//! Both are pure (time is an argument): the sink task in `sinks::worker` drives them.

pub mod rate_limit;
pub mod scheduler;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A tenant's service tier: it decides the order in which a saturated sink serves
/// tenants and the lag budget each is held to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Served first.
    Premium,
    /// Served after premium.
    #[default]
    Standard,
    /// Served last: bulk loads, analytics copies.
    Batch,
}

impl Tier {
    /// Every tier, first served first.
    pub const ALL: [Tier; 3] = [Tier::Premium, Tier::Standard, Tier::Batch];

    /// 0 for premium, 1 standard, 2 batch (lower is served first).
    pub fn rank(self) -> usize {
        self as usize
    }

    /// The name used in job specs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Premium => "premium",
            Tier::Standard => "standard",
            Tier::Batch => "batch",
        }
    }
}

/// Default lag budgets: premium 1 s, standard 10 s, batch 5 min.
pub const DEFAULT_LAG_BUDGETS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(300),
];
/// Default share of a saturated sink kept for tenants past their lag budget.
pub const DEFAULT_MIN_SHARE: f64 = 0.1;

/// How one job's sinks order their work.
#[derive(Debug, Clone, PartialEq)]
pub struct QosPolicy {
    /// Whether pending transactions of different tenants may be reordered at all (`false`:
    /// strict commit order, for sinks whose checkpoint is not per tenant).
    pub reorder: bool,
    /// Whether predicted hotness orders transactions within a tier.
    pub use_hotness: bool,
    /// Tier of each named tenant.
    pub tenant_tiers: HashMap<String, Tier>,
    /// Tier of every other tenant.
    pub default_tier: Tier,
    /// Lag budget per tier, indexed by [`Tier::rank`].
    pub lag_budgets: [Duration; 3],
    /// Share (0..1) of a saturated sink's rows that goes to transactions past their tier's
    /// lag budget when a higher tier has work waiting: the starvation bound.
    pub min_share: f64,
}

impl Default for QosPolicy {
    fn default() -> Self {
        QosPolicy {
            reorder: true,
            use_hotness: true,
            tenant_tiers: HashMap::new(),
            default_tier: Tier::Standard,
            lag_budgets: DEFAULT_LAG_BUDGETS,
            min_share: DEFAULT_MIN_SHARE,
        }
    }
}

impl QosPolicy {
    /// Strict commit order, no tiers: what a sink without per-tenant checkpoints needs.
    pub fn fifo() -> Self {
        QosPolicy {
            reorder: false,
            use_hotness: false,
            ..QosPolicy::default()
        }
    }

    /// The tier of `tenant`.
    pub fn tier_of(&self, tenant: &str) -> Tier {
        self.tenant_tiers
            .get(tenant)
            .copied()
            .unwrap_or(self.default_tier)
    }

    /// The lag budget of `tier` in microseconds.
    pub fn budget_micros(&self, tier: Tier) -> i64 {
        self.lag_budgets[tier.rank()].as_micros() as i64
    }
}
