//! The pending transactions of one sink task and the order in which they are applied.
//!
//! # Order
//! A transaction is a *candidate* when it is the oldest pending transaction of every tenant
//! it touches and no transaction of worker scope (a TRUNCATE or tenant-less DELETE, which
//! touches every tenant of the worker) is pending before it; a worker-scoped transaction is
//! a candidate only when it is the oldest pending one. Among candidates the scheduler takes
//! the lowest tier first; within a tier the one whose tenant has the most predicted-hot data
//! pending (a tenant's transactions go in commit order, so hotness decides which tenant goes
//! next, not which of its rows); among equally hot
//! ones a transaction older than half its tier's lag budget goes first (oldest first), then
//! the tenant served longest ago (round robin), then commit order.
//!
//! # Starvation bound
//! While a transaction of the same or a lower tier is past its lag budget and something
//! else ranks first (a higher tier, or hotter rows), the overdue ones get
//! [`QosPolicy::min_share`] of the rows applied, most overdue first: a saturated sink
//! serves premium tenants and hot rows first, but never starves the others.
//!
//! # What never changes
//! A tenant's transactions are applied in commit order, whole, and
//! [`Scheduler::durable_watermark`] is one below the oldest transaction not yet applied, so
//! the source is never confirmed past a pending transaction (DESIGN.md invariants 1–3).
//! With [`QosPolicy::reorder`] off the order is plain commit order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::{QosPolicy, Tier};
use crate::change::{Cell, Lsn, Scope, TenantAction, TenantChange};
use crate::sinks::ApplyBatch;

/// Most bytes of values in one group besides its first transaction, by default: a group
/// of `batch_max_rows` (5,000) rows of 40 KB would make a 200 MB target transaction, and
/// the sink's encoding of it as much again. A cold-tier sink, whose groups are files of
/// 100,000 rows, sets its own ([`Scheduler::with_group_bytes`]).
pub const GROUP_BYTES: u64 = 16 << 20;

/// A transaction's weight, for one tenant, in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantShare {
    /// The tenant.
    pub tenant: String,
    /// Rows (changes and history events) of the tenant.
    pub rows: usize,
    /// Bytes of values of the tenant.
    pub bytes: u64,
}

/// What the scheduler hands the sink for one apply.
#[derive(Debug, Default)]
pub struct Group {
    /// Whole transactions, ascending commit LSN.
    pub batches: Vec<ApplyBatch>,
    /// Rows over all batches.
    pub rows: usize,
    /// Bytes of values over all batches.
    pub bytes: u64,
    /// What the batches hold in memory, estimated ([`crate::footprint`]).
    pub footprint: usize,
    /// Each tenant's share, summed over the group.
    pub tenants: Vec<TenantShare>,
    /// When each batch's transaction was committed (µs, PostgreSQL epoch), per tier.
    pub born: Vec<(Tier, i64)>,
}

impl Group {
    /// What the group takes off the job's backlog once applied: what the delivery
    /// operator added for its batches.
    pub fn load(&self) -> crate::sinks::backlog::Load {
        crate::sinks::backlog::Load {
            rows: self.rows,
            bytes: self.footprint,
        }
    }
}

/// One pending transaction.
#[derive(Debug)]
struct Pending {
    batch: ApplyBatch,
    /// Tenants touched, sorted, without duplicates (empty for a barrier).
    tenants: Vec<String>,
    shares: Vec<TenantShare>,
    /// Touches every tenant of the worker.
    barrier: bool,
    tier: Tier,
    hotness: f32,
    born: i64,
    rows: usize,
    bytes: u64,
    footprint: usize,
}

/// Heap key: smaller is served first.
/// (tier, minus hotness, 0 when past half the budget, born or last served, LSN).
type Rank = (usize, i64, u8, i64, Lsn);

/// The pending transactions of one sink task.
#[derive(Debug)]
pub struct Scheduler {
    policy: Arc<QosPolicy>,
    pending: BTreeMap<Lsn, Pending>,
    /// Per tenant, its pending transactions in commit order.
    queues: HashMap<String, VecDeque<Lsn>>,
    /// Pending worker-scoped transactions.
    barriers: BTreeSet<Lsn>,
    /// Rows owed to tiers past their budget (the starvation bound).
    credit: f64,
    /// Picks so far (round-robin clock).
    picks: u64,
    last_served: HashMap<String, u64>,
    /// Per tenant, the predicted hotness of all its pending transactions (summed): how
    /// much hot data waits behind its oldest transaction.
    tenant_hot: HashMap<String, f64>,
    /// Highest commit LSN pushed.
    max_seen: Lsn,
    rows: usize,
    /// What the pending batches hold in memory, estimated.
    footprint: usize,
    /// Most bytes of values in a group besides its first transaction.
    group_bytes: u64,
}

impl Scheduler {
    /// An empty scheduler following `policy`.
    pub fn new(policy: Arc<QosPolicy>) -> Self {
        Scheduler {
            policy,
            pending: BTreeMap::new(),
            queues: HashMap::new(),
            barriers: BTreeSet::new(),
            credit: 0.0,
            picks: 0,
            last_served: HashMap::new(),
            tenant_hot: HashMap::new(),
            max_seen: 0,
            rows: 0,
            footprint: 0,
            group_bytes: GROUP_BYTES,
        }
    }

    /// The same, closing a group at `bytes` of values instead of [`GROUP_BYTES`].
    pub fn with_group_bytes(mut self, bytes: u64) -> Self {
        self.group_bytes = bytes.max(1);
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &QosPolicy {
        &self.policy
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Transactions pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Rows pending.
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// What the pending batches hold in memory, estimated ([`crate::footprint`]).
    pub fn pending_footprint(&self) -> usize {
        self.footprint
    }

    /// Adds a transaction. Transactions arrive in ascending commit LSN (the dataflow's
    /// order); `born` is its commit time (µs), `hotness` its predicted hotness (≥ 0).
    /// Hands back a transaction already pending (a replay), which it keeps once: the
    /// caller takes the copy's load off the backlog.
    pub fn push(&mut self, batch: ApplyBatch, born: i64, hotness: f32) -> Option<ApplyBatch> {
        let lsn = batch.commit_lsn;
        if self.pending.contains_key(&lsn) {
            // The same transaction twice (a replay): applying it twice is harmless, but
            // it must not hide the first copy's place in the queues.
            tracing::warn!(
                lsn,
                "transaction delivered twice to one sink task; kept once"
            );
            return Some(batch);
        }
        self.max_seen = self.max_seen.max(lsn);
        let (shares, barrier) = shares_of(&batch);
        let tenants: Vec<String> = shares.iter().map(|s| s.tenant.clone()).collect();
        let barrier = barrier || tenants.is_empty();
        let tier = tenants
            .iter()
            .map(|t| self.policy.tier_of(t))
            .min()
            .unwrap_or(Tier::Premium);
        if barrier {
            self.barriers.insert(lsn);
        } else {
            for t in &tenants {
                self.queues.entry(t.clone()).or_default().push_back(lsn);
            }
        }
        let rows = batch.rows();
        let bytes = shares.iter().map(|s| s.bytes).sum();
        let footprint = batch.footprint();
        self.rows += rows;
        self.footprint += footprint;
        let hotness = if hotness.is_finite() && hotness > 0.0 {
            hotness
        } else {
            0.0
        };
        if hotness > 0.0 {
            for t in &tenants {
                *self.tenant_hot.entry(t.clone()).or_default() += f64::from(hotness);
            }
        }
        self.pending.insert(
            lsn,
            Pending {
                batch,
                tenants,
                shares,
                barrier,
                tier,
                hotness,
                born,
                rows,
                bytes,
                footprint,
            },
        );
        None
    }

    /// The LSN at or below which every transaction pushed so far has left the scheduler
    /// (for the sink: is durable once the last group handed out is).
    pub fn durable_watermark(&self) -> Lsn {
        match self.pending.first_key_value() {
            Some((&first, _)) => first.saturating_sub(1),
            None => self.max_seen,
        }
    }

    /// Takes the next group of whole transactions: at least one transaction when any is a
    /// candidate and allowed, then more while the group has fewer than `max_rows` rows and
    /// [`GROUP_BYTES`] (or [`Scheduler::with_group_bytes`]) of values.
    /// `allow(tenant, rows, bytes)` says whether a tenant may send that much now (its
    /// bandwidth limit); a refused transaction stays pending, and so does everything of its
    /// tenants after it. The group's batches are in ascending commit LSN.
    pub fn next_group(
        &mut self,
        now: i64,
        max_rows: usize,
        allow: &mut dyn FnMut(&str, usize, u64) -> bool,
    ) -> Group {
        let mut taken: Vec<Pending> = Vec::new();
        let mut rows = 0usize;
        let mut bytes = 0u64;
        let group_bytes = self.group_bytes;
        let full = |rows: usize, bytes: u64| rows >= max_rows.max(1) || bytes >= group_bytes;
        if !self.policy.reorder {
            while !full(rows, bytes) || taken.is_empty() {
                let Some((&lsn, p)) = self.pending.first_key_value() else {
                    break;
                };
                if !allowed(p, allow) {
                    break;
                }
                let Some(p) = self.remove(lsn) else { break };
                rows += p.rows;
                bytes += p.bytes;
                taken.push(p);
                if full(rows, bytes) {
                    break;
                }
            }
            return self.group_of(taken);
        }
        let first_barrier = self.barriers.first().copied();
        if let Some(b) = first_barrier {
            if self.pending.first_key_value().map(|(&l, _)| l) == Some(b) {
                // Everything waits for the worker-scoped transaction, and it goes alone.
                if let Some(p) = self.pending.get(&b) {
                    if allowed(p, allow) {
                        taken.extend(self.remove(b));
                    }
                }
                return self.group_of(taken);
            }
        }
        let mut best: BinaryHeap<Reverse<(Rank, Lsn)>> = BinaryHeap::new();
        let mut overdue: [BinaryHeap<Reverse<(i64, Lsn)>>; 3] = Default::default();
        let mut queued: HashSet<Lsn> = HashSet::new();
        let heads: Vec<Lsn> = self
            .queues
            .values()
            .filter_map(|q| q.front().copied())
            .collect();
        for lsn in heads {
            self.offer(
                lsn,
                now,
                first_barrier,
                &mut queued,
                &mut best,
                &mut overdue,
            );
        }
        let share = self.policy.min_share.clamp(0.0, 0.95);
        let mut blocked: HashSet<Lsn> = HashSet::new();
        loop {
            if full(rows, bytes) && !taken.is_empty() {
                break;
            }
            // The best candidate by rank (skipping ones already taken or refused).
            let top = loop {
                match best.peek() {
                    Some(Reverse((_, l)))
                        if !self.pending.contains_key(l) || blocked.contains(l) =>
                    {
                        best.pop();
                    }
                    Some(Reverse((_, l))) => break Some(*l),
                    None => break None,
                }
            };
            let Some(top) = top else { break };
            let top_tier = self.pending.get(&top).map_or(Tier::Batch, |p| p.tier);
            // The most overdue candidate of a lower tier, if any.
            let mut starving: Option<(i64, Lsn, usize)> = None;
            for tier in Tier::ALL.iter().filter(|t| t.rank() >= top_tier.rank()) {
                let heap = &mut overdue[tier.rank()];
                // The top itself is not owed a share: look past it.
                let mut held = None;
                loop {
                    match heap.peek() {
                        Some(Reverse((_, l)))
                            if !self.pending.contains_key(l) || blocked.contains(l) =>
                        {
                            heap.pop();
                        }
                        Some(Reverse((_, l))) if *l == top && held.is_none() => {
                            held = heap.pop();
                        }
                        _ => break,
                    }
                }
                if let Some(Reverse((deadline, l))) = heap.peek() {
                    if starving.is_none_or(|(d, _, _)| *deadline < d) {
                        starving = Some((*deadline, *l, tier.rank()));
                    }
                }
                if let Some(h) = held {
                    heap.push(h);
                }
            }
            let pick = match starving {
                Some((_, l, _)) if self.credit >= 0.0 => l,
                _ => top,
            };
            let Some(p) = self.pending.get(&pick) else {
                break;
            };
            if !allowed(p, allow) {
                blocked.insert(pick);
                continue;
            }
            let Some(p) = self.remove(pick) else { break };
            match starving {
                Some((_, l, _)) if l == pick => self.credit -= p.rows as f64,
                Some(_) => {
                    self.credit = (self.credit + p.rows as f64 * share / (1.0 - share))
                        .min(max_rows.max(1) as f64)
                }
                None => self.credit = self.credit.min(0.0),
            }
            self.picks += 1;
            for t in &p.tenants {
                self.last_served.insert(t.clone(), self.picks);
            }
            rows += p.rows;
            bytes += p.bytes;
            let next: Vec<Lsn> = p
                .tenants
                .iter()
                .filter_map(|t| self.queues.get(t).and_then(|q| q.front().copied()))
                .collect();
            taken.push(p);
            for lsn in next {
                self.offer(
                    lsn,
                    now,
                    first_barrier,
                    &mut queued,
                    &mut best,
                    &mut overdue,
                );
            }
        }
        taken.sort_by_key(|p| p.batch.commit_lsn);
        self.group_of(taken)
    }

    /// What this task would send next, for arbitration between the tasks of one sink: the
    /// best tier among the candidates, and whether any candidate is past its tier's lag
    /// budget. Candidates of tenants `allow` refuses (their own bandwidth is used up) do
    /// not count. `None` when nothing could be sent.
    pub fn claim(&self, now: i64, allow: &mut dyn FnMut(&str) -> bool) -> Option<(Tier, bool)> {
        let first_barrier = self.barriers.first().copied();
        let mut best: Option<Tier> = None;
        let mut overdue = false;
        let mut consider = |p: &Pending| {
            if !p.tenants.iter().all(|t| allow(t)) {
                return;
            }
            best = Some(best.map_or(p.tier, |b| b.min(p.tier)));
            overdue |= now.saturating_sub(p.born) >= self.policy.budget_micros(p.tier);
        };
        if first_barrier.is_some()
            && self.pending.first_key_value().map(|(&l, _)| l) == first_barrier
            || !self.policy.reorder
        {
            if let Some((_, p)) = self.pending.first_key_value() {
                consider(p);
            }
            return best.map(|b| (b, overdue));
        }
        for q in self.queues.values() {
            let Some(&lsn) = q.front() else { continue };
            if first_barrier.is_some_and(|b| b < lsn) {
                continue;
            }
            if let Some(p) = self.pending.get(&lsn) {
                consider(p);
            }
        }
        best.map(|b| (b, overdue))
    }

    /// Puts `lsn` among the candidates if it is one.
    fn offer(
        &self,
        lsn: Lsn,
        now: i64,
        first_barrier: Option<Lsn>,
        queued: &mut HashSet<Lsn>,
        best: &mut BinaryHeap<Reverse<(Rank, Lsn)>>,
        overdue: &mut [BinaryHeap<Reverse<(i64, Lsn)>>; 3],
    ) {
        if queued.contains(&lsn) || first_barrier.is_some_and(|b| b < lsn) {
            return;
        }
        let Some(p) = self.pending.get(&lsn) else {
            return;
        };
        let heads = p.tenants.iter().all(|t| {
            self.queues
                .get(t)
                .and_then(|q| q.front())
                .is_some_and(|&f| f == lsn)
        });
        if !heads {
            return;
        }
        queued.insert(lsn);
        let budget = self.policy.budget_micros(p.tier);
        let age = now.saturating_sub(p.born);
        // A tenant's transactions go in commit order, so what hotness can decide is which
        // tenant goes next: the one with the most predicted-hot data waiting.
        let hot = if self.policy.use_hotness {
            // Each pending transaction's hotness is in its tenants' sums.
            let waiting = p
                .tenants
                .iter()
                .map(|t| self.tenant_hot.get(t).copied().unwrap_or(0.0))
                .fold(0.0f64, f64::max);
            (waiting * 1000.0).round() as i64
        } else {
            0
        };
        let rank: Rank = if age.saturating_mul(2) >= budget {
            (p.tier.rank(), -hot, 0, p.born, lsn)
        } else {
            let served = p
                .tenants
                .iter()
                .map(|t| self.last_served.get(t).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            (p.tier.rank(), -hot, 1, served as i64, lsn)
        };
        best.push(Reverse((rank, lsn)));
        if age >= budget {
            overdue[p.tier.rank()].push(Reverse((p.born.saturating_add(budget), lsn)));
        }
    }

    /// Removes a pending transaction and its place in the queues.
    fn remove(&mut self, lsn: Lsn) -> Option<Pending> {
        let p = self.pending.remove(&lsn)?;
        self.rows -= p.rows;
        self.footprint -= p.footprint;
        if p.barrier {
            self.barriers.remove(&lsn);
        }
        for t in &p.tenants {
            if p.hotness > 0.0 {
                if let Some(h) = self.tenant_hot.get_mut(t) {
                    *h -= f64::from(p.hotness);
                }
            }
            if let Some(q) = self.queues.get_mut(t) {
                if q.front() == Some(&lsn) {
                    q.pop_front();
                } else {
                    q.retain(|&l| l != lsn);
                }
                if q.is_empty() {
                    self.queues.remove(t);
                    self.tenant_hot.remove(t);
                }
            }
        }
        Some(p)
    }

    fn group_of(&self, taken: Vec<Pending>) -> Group {
        let mut group = Group::default();
        let mut tenants: BTreeMap<String, TenantShare> = BTreeMap::new();
        for p in taken {
            group.rows += p.rows;
            group.bytes += p.bytes;
            group.footprint += p.footprint;
            group.born.push((p.tier, p.born));
            for s in p.shares {
                let e = tenants.entry(s.tenant.clone()).or_insert(TenantShare {
                    tenant: s.tenant,
                    rows: 0,
                    bytes: 0,
                });
                e.rows += s.rows;
                e.bytes += s.bytes;
            }
            group.batches.push(p.batch);
        }
        group.tenants = tenants.into_values().collect();
        group
    }
}

/// Whether every tenant of `p` may send its share now.
fn allowed(p: &Pending, allow: &mut dyn FnMut(&str, usize, u64) -> bool) -> bool {
    p.shares.iter().all(|s| allow(&s.tenant, s.rows, s.bytes))
}

/// Each tenant's rows and bytes in a batch, and whether it has worker-scoped changes.
fn shares_of(batch: &ApplyBatch) -> (Vec<TenantShare>, bool) {
    let mut shares: Vec<TenantShare> = Vec::new();
    let mut barrier = false;
    let mut add = |tenant: &str, bytes: u64| match shares.iter_mut().find(|s| s.tenant == tenant) {
        Some(s) => {
            s.rows += 1;
            s.bytes += bytes;
        }
        None => shares.push(TenantShare {
            tenant: tenant.to_owned(),
            rows: 1,
            bytes,
        }),
    };
    for c in &batch.changes {
        match &c.scope {
            Scope::Tenant(t) => add(t, change_bytes(c)),
            Scope::Worker { .. } => barrier = true,
        }
    }
    for h in &batch.history {
        add(&h.tenant, 0);
    }
    shares.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    (shares, barrier)
}

/// Bytes of the values a change carries (text forms).
pub fn change_bytes(change: &TenantChange) -> u64 {
    let cells = |row: &[Cell]| -> u64 {
        row.iter()
            .map(|c| c.as_text().map_or(0, |t| t.len() as u64))
            .sum()
    };
    match &change.action {
        TenantAction::Upsert { old, new, .. } => cells(new) + old.as_deref().map_or(0, cells),
        TenantAction::Delete { old } => cells(old),
        TenantAction::Truncate | TenantAction::Unroutable { .. } => 0,
    }
}
