//! Bandwidth limits of a sink: rows/s and bytes/s, for the whole sink (shared by its tasks
//! on every worker) and for each tenant.
//!
//! Token buckets that may go into debt: a whole transaction is never split to fit the
//! tokens left, so a group may take more than is there, and the next one waits until the
//! bucket is back above zero. The long-run rate is the limit either way. Time is an
//! argument (µs on any monotonic clock), so the buckets are pure and testable.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::scheduler::Group;
use super::Tier;

/// How much a full bucket holds, in seconds of its rate: a sink idle for a while sends at
/// most this much at once.
pub const BURST_SECS: f64 = 0.1;

/// The limits a sink spec sets (all optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkLimits {
    /// Rows per second over the whole sink.
    pub rows_per_sec: Option<u64>,
    /// Bytes of values per second over the whole sink.
    pub bytes_per_sec: Option<u64>,
    /// Rows per second of each tenant.
    pub tenant_rows_per_sec: Option<u64>,
    /// Bytes of values per second of each tenant.
    pub tenant_bytes_per_sec: Option<u64>,
}

impl SinkLimits {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        *self == SinkLimits::default()
    }
}

/// A token bucket refilled at `rate` per second up to `burst`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: i64,
}

impl TokenBucket {
    /// A full bucket for `rate` tokens per second.
    pub fn new(rate: u64, now: i64) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate * BURST_SECS).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: i64) {
        if now > self.last {
            let gained = (now - self.last) as f64 / 1e6 * self.rate;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.last = now;
        }
    }

    /// Tokens available now (negative while in debt).
    pub fn available(&mut self, now: i64) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `n` tokens, going into debt if there are fewer.
    pub fn take(&mut self, n: f64, now: i64) {
        self.refill(now);
        self.tokens -= n;
    }

    /// Microseconds until the bucket has a token again (0: it has one).
    pub fn wait_micros(&mut self, now: i64) -> i64 {
        self.refill(now);
        if self.tokens > 0.0 {
            0
        } else {
            ((-self.tokens + 1e-3) / self.rate * 1e6).ceil() as i64
        }
    }
}

#[derive(Debug, Default)]
struct Buckets {
    rows: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Buckets {
    fn new(rows: Option<u64>, bytes: Option<u64>, now: i64) -> Self {
        Buckets {
            rows: rows.map(|r| TokenBucket::new(r, now)),
            bytes: bytes.map(|b| TokenBucket::new(b, now)),
        }
    }

    fn wait_micros(&mut self, now: i64) -> i64 {
        let rows = self.rows.as_mut().map_or(0, |b| b.wait_micros(now));
        let bytes = self.bytes.as_mut().map_or(0, |b| b.wait_micros(now));
        rows.max(bytes)
    }

    fn take(&mut self, rows: usize, bytes: u64, now: i64) {
        if let Some(b) = self.rows.as_mut() {
            b.take(rows as f64, now);
        }
        if let Some(b) = self.bytes.as_mut() {
            b.take(bytes as f64, now);
        }
    }
}

/// What one sink task would send next (see [`SinkLimiter::arbitrate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The best tier it has a candidate of.
    pub tier: Tier,
    /// Whether it has work past its tier's lag budget.
    pub overdue: bool,
}

#[derive(Debug, Default)]
struct Arbiter {
    /// Per sink task (worker index): what it waits to send.
    claims: HashMap<usize, Claim>,
    /// Rows owed to tasks whose overdue work yields to a better tier.
    credit: f64,
}

/// The limits of one sink, shared by its tasks on every worker.
#[derive(Debug)]
pub struct SinkLimiter {
    limits: SinkLimits,
    sink: Mutex<Buckets>,
    tenants: Mutex<HashMap<String, Buckets>>,
    arbiter: Mutex<Arbiter>,
}

impl SinkLimiter {
    /// A limiter for `limits`, buckets full at `now`.
    pub fn new(limits: SinkLimits, now: i64) -> Self {
        SinkLimiter {
            limits,
            sink: Mutex::new(Buckets::new(limits.rows_per_sec, limits.bytes_per_sec, now)),
            tenants: Mutex::new(HashMap::new()),
            arbiter: Mutex::new(Arbiter::default()),
        }
    }

    /// Whether the sink as a whole is limited (its tasks on different workers then share
    /// one bandwidth and must agree who sends).
    pub fn is_shared(&self) -> bool {
        self.limits.rows_per_sec.is_some() || self.limits.bytes_per_sec.is_some()
    }

    /// Decides whether sink task `task` may send now, given what every task waits to send:
    /// the best tier goes first; a task whose best work is of a lower tier yields, unless
    /// that work is past its lag budget and the `min_share` credit allows it. `claim` is
    /// `None` when the task has nothing pending. Call [`SinkLimiter::charge`] after sending.
    pub fn arbitrate(&self, task: usize, claim: Option<Claim>) -> bool {
        let Ok(mut a) = self.arbiter.lock() else {
            return true;
        };
        let Some(mine) = claim else {
            a.claims.remove(&task);
            return true;
        };
        a.claims.insert(task, mine);
        let best_other = a
            .claims
            .iter()
            .filter(|(t, _)| **t != task)
            .map(|(_, c)| c.tier)
            .min();
        match best_other {
            None => true,
            Some(other) if mine.tier <= other => true,
            Some(_) => mine.overdue && a.credit >= 0.0,
        }
    }

    /// Records that task `task` sent `rows` rows of `tier`: tasks with overdue work of a
    /// lower tier are owed `min_share` of them; a task that went on credit pays it back.
    pub fn charge(&self, task: usize, tier: Tier, rows: usize, min_share: f64) {
        let Ok(mut a) = self.arbiter.lock() else {
            return;
        };
        let share = min_share.clamp(0.0, 0.95);
        let better_waiting = a.claims.iter().any(|(t, c)| *t != task && c.tier < tier);
        let starving = a
            .claims
            .iter()
            .any(|(t, c)| *t != task && c.tier > tier && c.overdue);
        if better_waiting {
            a.credit -= rows as f64;
        } else if starving {
            a.credit = (a.credit + rows as f64 * share / (1.0 - share)).min(1e6);
        } else {
            a.credit = a.credit.min(0.0);
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> SinkLimits {
        self.limits
    }

    /// Microseconds until the sink as a whole may send again (0: now).
    pub fn sink_wait_micros(&self, now: i64) -> i64 {
        self.sink.lock().map_or(0, |mut b| b.wait_micros(now))
    }

    /// Most rows the next group should take: the rows the sink may send now (at least 1).
    pub fn sink_rows_budget(&self, now: i64) -> usize {
        self.sink
            .lock()
            .ok()
            .and_then(|mut b| b.rows.as_mut().map(|r| r.available(now)))
            .map_or(usize::MAX, |t| t.max(1.0) as usize)
    }

    /// Microseconds until `tenant` may send again (0: now).
    pub fn tenant_wait_micros(&self, tenant: &str, now: i64) -> i64 {
        if self.limits.tenant_rows_per_sec.is_none() && self.limits.tenant_bytes_per_sec.is_none() {
            return 0;
        }
        self.tenants.lock().map_or(0, |mut t| {
            t.get_mut(tenant).map_or(0, |b| b.wait_micros(now))
        })
    }

    /// Charges a group to the sink's and its tenants' buckets.
    pub fn take(&self, group: &Group, now: i64) {
        if let Ok(mut b) = self.sink.lock() {
            b.take(group.rows, group.bytes, now);
        }
        if self.limits.tenant_rows_per_sec.is_none() && self.limits.tenant_bytes_per_sec.is_none() {
            return;
        }
        if let Ok(mut tenants) = self.tenants.lock() {
            for s in &group.tenants {
                tenants
                    .entry(s.tenant.clone())
                    .or_insert_with(|| {
                        Buckets::new(
                            self.limits.tenant_rows_per_sec,
                            self.limits.tenant_bytes_per_sec,
                            now,
                        )
                    })
                    .take(s.rows, s.bytes, now);
            }
        }
    }
}
