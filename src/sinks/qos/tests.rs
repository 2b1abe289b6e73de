//! The scheduler's guarantees over random schedules, its order on small cases, and the
//! token buckets' rates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::rate_limit::{SinkLimiter, SinkLimits, TokenBucket};
use super::scheduler::Scheduler;
use super::{QosPolicy, Tier};
use crate::change::{fixtures, Cell, Lsn, Scope, TenantAction, TenantChange};
use crate::sinks::ApplyBatch;

/// A batch of `rows` changes for each of `tenants` (`None`: one worker-scoped truncate).
fn batch(lsn: Lsn, tenants: &[&str], rows: usize) -> ApplyBatch {
    let table = Arc::new(fixtures::table(
        "t",
        &[("id", "int"), ("tenant_id", "text")],
        &[0],
    ));
    let mut changes = Vec::new();
    if tenants.is_empty() {
        changes.push(TenantChange {
            scope: Scope::Worker { index: 0, peers: 1 },
            seq: 0,
            table: table.clone(),
            action: TenantAction::Truncate,
        });
    }
    for t in tenants {
        for i in 0..rows {
            changes.push(TenantChange {
                scope: Scope::Tenant((*t).to_owned()),
                seq: changes.len() as u32,
                table: table.clone(),
                action: TenantAction::Upsert {
                    old: None,
                    new: vec![Cell::Text(i.to_string().into()), Cell::text(t)],
                    insert: true,
                },
            });
        }
    }
    ApplyBatch {
        commit_lsn: lsn,
        changes,
        history: Vec::new(),
    }
}

fn policy(tiers: &[(&str, Tier)]) -> Arc<QosPolicy> {
    Arc::new(QosPolicy {
        tenant_tiers: tiers
            .iter()
            .map(|(t, tier)| ((*t).to_owned(), *tier))
            .collect(),
        ..QosPolicy::default()
    })
}

fn lsns(group: &super::scheduler::Group) -> Vec<Lsn> {
    group.batches.iter().map(|b| b.commit_lsn).collect()
}

fn yes(_: &str, _: usize, _: u64) -> bool {
    true
}

#[test]
fn premium_goes_first_then_hotness_orders_a_tier() {
    let mut s = Scheduler::new(policy(&[("p", Tier::Premium)]));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &["b"], 1), 0, 5.0);
    s.push(batch(30, &["p"], 1), 0, 0.0);
    let mut order = Vec::new();
    while !s.is_empty() {
        order.extend(lsns(&s.next_group(1, 1, &mut yes)));
    }
    assert_eq!(
        order,
        vec![30, 20, 10],
        "premium, then the hot standard one, then the cold"
    );
    assert_eq!(s.durable_watermark(), 30);
}

#[test]
fn a_tenant_keeps_commit_order_whatever_its_hotness() {
    let mut s = Scheduler::new(policy(&[]));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &["a"], 1), 0, 100.0);
    s.push(batch(30, &["b"], 1), 0, 150.0);
    let first = s.next_group(1, 1, &mut yes);
    assert_eq!(
        lsns(&first),
        vec![30],
        "b, with more hot data waiting, may pass a's older batches"
    );
    assert_eq!(
        s.durable_watermark(),
        9,
        "nothing at or past 10 may be confirmed yet"
    );
    let second = s.next_group(1, 1, &mut yes);
    assert_eq!(lsns(&second), vec![10], "a's hot 20 waits for a's 10");
    assert_eq!(s.durable_watermark(), 19);
}

#[test]
fn a_tenant_with_hot_data_behind_a_cold_batch_goes_first() {
    // Hotness picks the tenant: a's cold head goes first because hot rows wait behind it.
    let mut s = Scheduler::new(policy(&[]));
    s.push(batch(10, &["b"], 1), 0, 1.0);
    s.push(batch(20, &["a"], 1), 0, 0.0);
    s.push(batch(30, &["a"], 1), 0, 5.0);
    assert_eq!(lsns(&s.next_group(1, 1, &mut yes)), vec![20]);
    assert_eq!(lsns(&s.next_group(1, 1, &mut yes)), vec![30]);
    assert_eq!(lsns(&s.next_group(1, 1, &mut yes)), vec![10]);
}

#[test]
fn hot_work_goes_first_until_old_work_is_overdue() {
    // Standard budget 10 s.
    let mut s = Scheduler::new(policy(&[]));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &["b"], 1), 5_900_000, 99.0);
    assert_eq!(lsns(&s.next_group(6_000_000, 1, &mut yes)), vec![20]);
    let mut s = Scheduler::new(policy(&[]));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &["b"], 1), 5_900_000, 99.0);
    assert_eq!(
        lsns(&s.next_group(11_000_000, 1, &mut yes)),
        vec![10],
        "past its budget, a gets its share"
    );
}

#[test]
fn tenants_take_turns_when_nothing_is_known() {
    let mut s = Scheduler::new(policy(&[]));
    for (i, t) in ["a", "a", "a", "b", "b", "b"].iter().enumerate() {
        s.push(batch(10 + i as Lsn, &[t], 1), 0, 0.0);
    }
    let g = s.next_group(1, 4, &mut yes);
    let tenants: Vec<String> = g
        .batches
        .iter()
        .map(|b| match &b.changes[0].scope {
            Scope::Tenant(t) => t.clone(),
            Scope::Worker { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(
        tenants.iter().filter(|t| *t == "a").count(),
        2,
        "{tenants:?}"
    );
    assert_eq!(
        tenants.iter().filter(|t| *t == "b").count(),
        2,
        "{tenants:?}"
    );
}

#[test]
fn a_worker_scoped_change_waits_for_all_before_it_and_holds_back_all_after_it() {
    let mut s = Scheduler::new(policy(&[("p", Tier::Premium)]));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &[], 0), 0, 0.0);
    s.push(batch(30, &["p"], 1), 0, 0.0);
    assert_eq!(
        lsns(&s.next_group(1, 10, &mut yes)),
        vec![10],
        "premium 30 must not pass the truncate"
    );
    assert_eq!(lsns(&s.next_group(1, 10, &mut yes)), vec![20]);
    assert_eq!(lsns(&s.next_group(1, 10, &mut yes)), vec![30]);
}

#[test]
fn a_refused_tenant_does_not_block_others() {
    let mut s = Scheduler::new(policy(&[("p", Tier::Premium)]));
    s.push(batch(10, &["p"], 1), 0, 0.0);
    s.push(batch(20, &["p"], 1), 0, 0.0);
    s.push(batch(30, &["a"], 1), 0, 0.0);
    let g = s.next_group(1, 10, &mut |t, _, _| t != "p");
    assert_eq!(lsns(&g), vec![30]);
    assert_eq!(s.durable_watermark(), 9);
    assert_eq!(lsns(&s.next_group(1, 10, &mut yes)), vec![10, 20]);
}

/// A batch of one row of tenant `tenant` whose text is `kb` KB.
fn wide_batch(lsn: Lsn, tenant: &str, kb: usize) -> ApplyBatch {
    let mut b = batch(lsn, &[tenant], 1);
    if let TenantAction::Upsert { new, .. } = &mut b.changes[0].action {
        new.push(Cell::text(&"x".repeat(kb << 10)));
    }
    b
}

#[test]
fn a_group_stops_at_its_bytes_as_well_as_its_rows() {
    use super::scheduler::GROUP_BYTES;
    let per_batch_kb = 4096;
    let fits = (GROUP_BYTES as usize) / (per_batch_kb << 10);
    for policy in [Arc::new(QosPolicy::fifo()), policy(&[])] {
        let mut s = Scheduler::new(policy);
        for lsn in 1..=20 {
            s.push(
                wide_batch(lsn, ["a", "b"][lsn as usize % 2], per_batch_kb),
                0,
                0.0,
            );
        }
        // 5,000 rows allowed, but 4 MB a transaction: the group closes at 16 MiB.
        let group = s.next_group(1, 5000, &mut yes);
        assert_eq!(group.batches.len(), fits, "{:?}", lsns(&group));
        assert!(group.bytes >= GROUP_BYTES);
        // What it takes off the backlog is what its batches added; the rest is pending.
        let load = crate::sinks::backlog::Load::of_all(&group.batches);
        assert_eq!(group.load(), load);
        assert!(s.pending_footprint() >= (20 - fits) * (per_batch_kb << 10));
        // A sink that sets its own bytes (the cold tier) takes the rest at once.
        let mut s = Scheduler::new(Arc::new(QosPolicy::fifo())).with_group_bytes(u64::MAX);
        for lsn in 1..=20 {
            s.push(wide_batch(lsn, "a", per_batch_kb), 0, 0.0);
        }
        assert_eq!(s.next_group(1, 5000, &mut yes).batches.len(), 20);
        // One transaction larger than the bytes still goes, alone.
        let mut s = Scheduler::new(Arc::new(QosPolicy::fifo()));
        s.push(wide_batch(1, "a", 20 << 10), 0, 0.0);
        s.push(wide_batch(2, "a", 1), 0, 0.0);
        assert_eq!(lsns(&s.next_group(1, 5000, &mut yes)), vec![1]);
        assert_eq!(lsns(&s.next_group(1, 5000, &mut yes)), vec![2]);
    }
}

#[test]
fn a_transaction_pushed_twice_is_kept_once_and_the_copy_handed_back() {
    let mut s = Scheduler::new(policy(&[]));
    assert!(s.push(batch(10, &["a"], 3), 0, 0.0).is_none());
    let copy = s
        .push(batch(10, &["a"], 3), 0, 0.0)
        .expect("the copy comes back");
    assert_eq!(copy.commit_lsn, 10);
    assert_eq!(s.pending_rows(), 3);
    assert_eq!(lsns(&s.next_group(1, 100, &mut yes)), vec![10]);
    assert!(s.is_empty());
}

#[test]
fn fifo_keeps_commit_order_across_tenants() {
    let mut s = Scheduler::new(Arc::new(QosPolicy::fifo()));
    s.push(batch(10, &["a"], 1), 0, 0.0);
    s.push(batch(20, &["b"], 1), 0, 9.0);
    assert_eq!(lsns(&s.next_group(1, 1, &mut yes)), vec![10]);
    assert_eq!(lsns(&s.next_group(1, 1, &mut yes)), vec![20]);
}

#[test]
fn overdue_lower_tiers_get_their_share_of_a_saturated_sink() {
    // Premium keeps 1000 batches waiting; standard's are past budget. With min_share 0.2,
    // standard gets about a fifth of the rows; without overdue work it would get none.
    let p = Arc::new(QosPolicy {
        min_share: 0.2,
        tenant_tiers: HashMap::from([("p".to_owned(), Tier::Premium)]),
        ..QosPolicy::default()
    });
    let mut s = Scheduler::new(p);
    let budget = 10_000_000;
    let mut lsn = 0;
    for _ in 0..1000 {
        lsn += 1;
        s.push(batch(lsn, &["p"], 1), 0, 0.0);
        lsn += 1;
        s.push(batch(lsn, &["s"], 1), 0, 0.0);
    }
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..100 {
        let g = s.next_group(budget + 1, 10, &mut yes);
        for t in g.tenants {
            *served.entry(t.tenant).or_default() += t.rows;
        }
    }
    let standard = served.get("s").copied().unwrap_or(0) as f64;
    let total = served.values().sum::<usize>() as f64;
    assert!(
        (0.15..=0.25).contains(&(standard / total)),
        "standard got {standard} of {total}"
    );
}

#[test]
fn buckets_hold_their_rate_and_go_into_debt() {
    let mut b = TokenBucket::new(1000, 0);
    assert!(b.available(0) >= 99.0, "full: 0.1 s worth");
    b.take(500.0, 0);
    assert!(b.wait_micros(0) > 390_000, "400 rows of debt take 0.4 s");
    assert_eq!(b.wait_micros(500_000), 0);
    // Over 10 s at most rate × 10 + burst tokens are handed out.
    let mut given = 0.0;
    let mut b = TokenBucket::new(1000, 0);
    for ms in 0..10_000 {
        let now = ms * 1000;
        if b.wait_micros(now) == 0 {
            b.take(7.0, now);
            given += 7.0;
        }
    }
    assert!((9_900.0..=10_200.0).contains(&given), "{given}");
}

#[test]
fn tenant_limits_charge_only_the_tenants_of_a_group() {
    let limiter = SinkLimiter::new(
        SinkLimits {
            tenant_rows_per_sec: Some(100),
            ..SinkLimits::default()
        },
        0,
    );
    let mut s = Scheduler::new(policy(&[]));
    s.push(batch(1, &["a"], 50), 0, 0.0);
    let g = s.next_group(0, 1000, &mut yes);
    limiter.take(&g, 0);
    assert!(limiter.tenant_wait_micros("a", 0) > 0);
    assert_eq!(limiter.tenant_wait_micros("b", 0), 0);
    assert_eq!(
        limiter.sink_rows_budget(0),
        usize::MAX,
        "no sink-wide limit"
    );
}

#[test]
fn tasks_sharing_a_limited_sink_let_the_best_tier_send_first() {
    use super::rate_limit::Claim;
    let limiter = SinkLimiter::new(
        SinkLimits {
            rows_per_sec: Some(1000),
            ..SinkLimits::default()
        },
        0,
    );
    assert!(limiter.is_shared());
    let premium = Claim {
        tier: Tier::Premium,
        overdue: false,
    };
    let standard = Claim {
        tier: Tier::Standard,
        overdue: false,
    };
    assert!(limiter.arbitrate(0, Some(premium)));
    assert!(
        !limiter.arbitrate(1, Some(standard)),
        "standard yields to premium"
    );
    // Past its budget, standard gets min_share (0.2) of what premium sends.
    let late = Claim {
        overdue: true,
        ..standard
    };
    assert!(
        limiter.arbitrate(1, Some(late)),
        "no debt yet: overdue work may go"
    );
    limiter.charge(1, Tier::Standard, 100, 0.2);
    assert!(!limiter.arbitrate(1, Some(late)), "it owes 100 rows now");
    limiter.charge(0, Tier::Premium, 400, 0.2);
    assert!(
        limiter.arbitrate(1, Some(late)),
        "400 premium rows pay for 100"
    );
    // Premium has nothing left: standard goes freely.
    assert!(limiter.arbitrate(0, None));
    assert!(limiter.arbitrate(1, Some(standard)));
}

/// One step of a random schedule.
#[derive(Debug, Clone)]
enum Step {
    /// A transaction of these tenants (empty: worker-scoped), rows each, hotness, age.
    Push(Vec<u8>, usize, f32, i64),
    /// Take a group of at most this many rows; tenants in the set are refused.
    Take(usize, BTreeSet<u8>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (
            prop_oneof![
                8 => proptest::collection::vec(0u8..6, 1..2),
                2 => proptest::collection::vec(0u8..6, 2..4),
                1 => Just(Vec::new()),
            ],
            1usize..5,
            prop_oneof![Just(0.0f32), 0.0f32..100.0, Just(f32::NAN), Just(f32::INFINITY)],
            0i64..20_000_000,
        )
            .prop_map(|(t, r, h, a)| Step::Push(t, r, h, a)),
        2 => (1usize..12, proptest::collection::btree_set(0u8..6, 0..3))
            .prop_map(|(m, refused)| Step::Take(m, refused)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Over any schedule: every transaction leaves exactly once; a tenant's transactions
    /// leave in commit order; a worker-scoped one leaves after everything before it and
    /// before everything after it; groups are ascending; the watermark never passes a
    /// pending transaction and never goes back.
    #[test]
    fn no_schedule_breaks_the_invariants(
        steps in proptest::collection::vec(step(), 1..80),
        premium in proptest::collection::btree_set(0u8..6, 0..3),
        reorder in any::<bool>(),
        share in prop_oneof![Just(0.0), Just(0.1), Just(0.5)],
    ) {
        let names = ["t0", "t1", "t2", "t3", "t4", "t5"];
        let p = Arc::new(QosPolicy {
            reorder,
            min_share: share,
            tenant_tiers: premium.iter().map(|&t| (names[t as usize].to_owned(), Tier::Premium)).collect(),
            ..QosPolicy::default()
        });
        let mut s = Scheduler::new(p);
        let mut pushed: BTreeMap<Lsn, Vec<u8>> = BTreeMap::new();
        let mut emitted: Vec<Lsn> = Vec::new();
        let mut watermark = 0;
        let now = 20_000_000;
        let mut lsn = 0;
        let check = |s: &Scheduler, emitted: &[Lsn], pushed: &BTreeMap<Lsn, Vec<u8>>, watermark: &mut Lsn| -> Result<(), TestCaseError> {
            let w = s.durable_watermark();
            prop_assert!(w >= *watermark, "watermark went back: {} -> {}", watermark, w);
            *watermark = w;
            let out: BTreeSet<Lsn> = emitted.iter().copied().collect();
            for l in pushed.keys().filter(|&&l| l <= w) {
                prop_assert!(out.contains(l), "watermark {} passes pending {}", w, l);
            }
            Ok(())
        };
        let run = |s: &mut Scheduler, max: usize, refused: &BTreeSet<u8>, emitted: &mut Vec<Lsn>| -> Result<(), TestCaseError> {
            let g = s.next_group(now, max, &mut |t, _, _| {
                !refused.iter().any(|&r| names[r as usize] == t)
            });
            let l = lsns(&g);
            prop_assert!(l.windows(2).all(|w| w[0] < w[1]), "group not ascending: {:?}", l);
            let rows: usize = g.batches.iter().map(ApplyBatch::rows).sum();
            prop_assert_eq!(rows, g.rows);
            if l.len() > 1 {
                // Batches are added while the group is under budget: without its largest
                // batch, a group is under budget.
                let largest = g.batches.iter().map(ApplyBatch::rows).max().unwrap_or(0);
                prop_assert!(rows - largest < max, "group over budget before its last batch");
            }
            emitted.extend(l);
            Ok(())
        };
        for st in steps {
            match st {
                Step::Push(tenants, rows, hot, age) => {
                    lsn += 10;
                    let t: Vec<&str> = tenants.iter().map(|&i| names[i as usize]).collect::<BTreeSet<_>>().into_iter().collect();
                    pushed.insert(lsn, tenants.clone());
                    s.push(batch(lsn, &t, rows), now - age, hot);
                }
                Step::Take(max, refused) => {
                    run(&mut s, max, &refused, &mut emitted)?;
                    check(&s, &emitted, &pushed, &mut watermark)?;
                }
            }
        }
        let mut rounds = 0;
        while !s.is_empty() {
            run(&mut s, 5, &BTreeSet::new(), &mut emitted)?;
            check(&s, &emitted, &pushed, &mut watermark)?;
            rounds += 1;
            prop_assert!(rounds < 1000, "scheduler does not drain");
        }
        // Exactly once.
        let mut sorted = emitted.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, pushed.keys().copied().collect::<Vec<_>>());
        // Per tenant commit order; barriers in place.
        let position: HashMap<Lsn, usize> = emitted.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        for (a, ta) in &pushed {
            for (b, tb) in pushed.range(a + 1..) {
                let shared = ta.iter().any(|t| tb.contains(t));
                let barrier = ta.is_empty() || tb.is_empty();
                if shared || barrier || !reorder {
                    prop_assert!(position[a] < position[b], "{} ({:?}) left after {} ({:?})", a, ta, b, tb);
                }
            }
        }
        prop_assert_eq!(s.durable_watermark(), lsn);
    }
}
