//! Tenant partition: finds each change's tenant (its tenant column's value, or the
//! tenant of a one-tenant table), drops tenants outside the job and sends each tenant's
//! changes to the one worker that owns it.
//!
//! Ownership is `tenant_route(tenant) % peers`, the same rule timely's exchange applies to
//! the route we give it; [`owned_tenants_sql`] states the same rule in SQL, so a sink worker
//! can touch exactly the rows it owns when the stream does not say whose a change is (a
//! TRUNCATE, or a DELETE whose old key lacks the tenant column): such changes go to every
//! worker with a [`Scope::Worker`].
//!
//! Pure and synchronous: no I/O, no clocks. A change that cannot be routed (its table lost
//! the tenant column) is not dropped silently: it becomes a [`TenantAction::Unroutable`]
//! record for worker 0, which the sink records without its values.

use std::collections::HashMap;
use std::sync::Arc;

use md5::{Digest, Md5};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Exchange, Operator};
use timely::dataflow::StreamVec;

use crate::change::{
    Lsn, OldRow, RowOp, Scope, SourceRecord, TableInfo, TenantAction, TenantChange,
};
use crate::control::job_spec::{TenantAt, TenantFilter, TenantKey};
use crate::sql_text::quote_literal;

/// What the partition needs to know of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPlan {
    /// Which tenants the job carries.
    pub include: TenantFilter,
    /// Where each job table's rows keep their tenant (`schema.table` → key).
    pub tenant_keys: HashMap<String, TenantKey>,
    /// Number of dataflow workers.
    pub peers: u32,
}

impl TenantPlan {
    /// Whether the job carries `tenant`.
    pub fn includes(&self, tenant: &str) -> bool {
        self.include.includes(tenant)
    }

    /// The worker that owns `tenant`.
    pub fn worker_of(&self, tenant: &str) -> u32 {
        (tenant_route(tenant) % u64::from(self.peers.max(1))) as u32
    }
}

/// A stable route for a tenant id: the first four bytes of its MD5, big-endian.
/// PostgreSQL computes the same number with [`owned_tenants_sql`].
pub fn tenant_route(tenant: &str) -> u64 {
    let digest = Md5::digest(tenant.as_bytes());
    u64::from(u32::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

/// The exchange route of `tenant`: [`tenant_route`], remembered per thread (an MD5 per
/// change was a tenth of the partition's time); 0 with one worker, where it decides
/// nothing.
fn route_of(plan: &TenantPlan, tenant: &str) -> u64 {
    /// Tenants remembered before the cache starts over.
    const MAX_REMEMBERED: usize = 100_000;
    thread_local! {
        static ROUTES: std::cell::RefCell<HashMap<Box<str>, u64, foldhash::fast::RandomState>> =
            std::cell::RefCell::new(HashMap::default());
    }
    if plan.peers <= 1 {
        return 0;
    }
    ROUTES.with_borrow_mut(|routes| {
        if let Some(&r) = routes.get(tenant) {
            return r;
        }
        if routes.len() >= MAX_REMEMBERED {
            routes.clear();
        }
        let r = tenant_route(tenant);
        routes.insert(tenant.into(), r);
        r
    })
}

/// A SQL predicate true for rows whose tenant (by `key`) worker `index` owns; `None`
/// when it owns none.
pub fn owned_tenants_sql(plan: &TenantPlan, key: &TenantKey, index: u32) -> Option<String> {
    let col = key.sql();
    match &plan.include {
        TenantFilter::All => Some(format!(
            "(('x' || substr(md5({col}::text), 1, 8))::bit(32)::bigint % {}) = {index}",
            plan.peers.max(1)
        )),
        TenantFilter::Only(set) => {
            let mine: Vec<String> = set
                .iter()
                .filter(|t| plan.worker_of(t) == index)
                .map(|t| quote_literal(t))
                .collect();
            if mine.is_empty() {
                None
            } else {
                Some(format!("{col}::text IN ({})", mine.join(", ")))
            }
        }
    }
}

/// A routed change: the route timely's exchange uses, and the change.
pub type Routed = (u64, TenantChange);

/// Splits one source record into per-tenant (or per-worker) changes for the job.
pub fn partition_record(plan: &TenantPlan, record: SourceRecord) -> Vec<Routed> {
    let mut out = Vec::new();
    partition_record_into(plan, record, &mut out);
    out
}

/// [`partition_record`] into `out` (the operator reuses one buffer for a whole batch).
pub fn partition_record_into(plan: &TenantPlan, record: SourceRecord, out: &mut Vec<Routed>) {
    match record {
        SourceRecord::Change { seq, table, op } => {
            let Some(key) = tenant_key_of(plan, &table) else {
                return;
            };
            let Some(at) = key.at(&table) else {
                let reason = format!("table has no {} any more", key.describe());
                let change = TenantChange {
                    scope: Scope::Worker {
                        index: 0,
                        peers: plan.peers,
                    },
                    seq,
                    table,
                    action: TenantAction::Unroutable { reason },
                };
                out.push((0, change));
                return;
            };
            route_op(plan, seq, &table, at, op, out);
        }
        SourceRecord::Truncate { seq, tables } => {
            for table in tables {
                match tenant_key_of(plan, &table) {
                    Some(TenantKey::Column(_)) => {
                        broadcast(plan, seq, &table, TenantAction::Truncate, out);
                    }
                    // A one-tenant table's rows are all its tenant's: its owner clears them.
                    Some(TenantKey::Table(tenant)) if plan.includes(tenant) => {
                        out.push((
                            route_of(plan, tenant),
                            TenantChange {
                                scope: Scope::Tenant(tenant.clone()),
                                seq,
                                table,
                                action: TenantAction::Truncate,
                            },
                        ));
                    }
                    // Not a job table, or not a job tenant's.
                    Some(TenantKey::Table(_)) | None => {}
                }
            }
        }
    }
}

/// Where the job's rows of `table` keep their tenant; `None` when the job does not carry
/// the table. Looked up through a reused buffer: once per row, without formatting a new
/// name.
fn tenant_key_of<'p>(plan: &'p TenantPlan, table: &TableInfo) -> Option<&'p TenantKey> {
    thread_local! {
        static NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    NAME.with_borrow_mut(|name| {
        name.clear();
        name.push_str(&table.schema);
        name.push('.');
        name.push_str(&table.name);
        plan.tenant_keys.get(name.as_str())
    })
}

fn route_op(
    plan: &TenantPlan,
    seq: u32,
    table: &Arc<TableInfo>,
    at: TenantAt<'_>,
    op: RowOp,
    out: &mut Vec<Routed>,
) {
    // The tenant as an owned id, only when the job carries it (rows of other tenants
    // cost no allocation).
    let carried = |tenant: &str| plan.includes(tenant).then(|| tenant.to_owned());
    let mut emit = |tenant: String, action: TenantAction| {
        let route = route_of(plan, &tenant);
        out.push((
            route,
            TenantChange {
                scope: Scope::Tenant(tenant),
                seq,
                table: table.clone(),
                action,
            },
        ));
    };
    match op {
        RowOp::Insert { new } => {
            if let Some(t) = at.of(&new).and_then(carried) {
                emit(
                    t,
                    TenantAction::Upsert {
                        old: None,
                        new,
                        insert: true,
                    },
                );
            }
        }
        RowOp::Update { old, new } => {
            /// What an update does to the job's tenants (each `None` when not carried).
            enum Move {
                /// The row moved between tenants: it leaves one and enters the other.
                Between(Option<String>, Option<String>),
                /// The row stays with its tenant.
                Within(Option<String>),
                /// The new row has no tenant (set to NULL): it leaves the old tenant.
                Leaves(Option<String>),
                None,
            }
            let new_tenant = at.of(&new);
            let old_tenant = old.as_ref().and_then(|o| at.of(o.cells()));
            let change = match (old_tenant, new_tenant) {
                (Some(o), Some(n)) if o != n => Move::Between(carried(o), carried(n)),
                (_, Some(n)) => Move::Within(carried(n)),
                (Some(o), None) => Move::Leaves(carried(o)),
                (None, None) => Move::None,
            };
            let old_cells = old.map(|o| match o {
                OldRow::Key(r) | OldRow::Full(r) => r,
            });
            match change {
                Move::Between(leave, enter) => {
                    if let (Some(o), Some(old)) = (leave, old_cells) {
                        emit(o, TenantAction::Delete { old });
                    }
                    if let Some(n) = enter {
                        emit(
                            n,
                            TenantAction::Upsert {
                                old: None,
                                new,
                                insert: true,
                            },
                        );
                    }
                }
                Move::Within(Some(n)) => emit(
                    n,
                    TenantAction::Upsert {
                        old: old_cells,
                        new,
                        insert: false,
                    },
                ),
                Move::Leaves(Some(o)) => {
                    if let Some(old) = old_cells {
                        emit(o, TenantAction::Delete { old });
                    }
                }
                Move::Within(None) | Move::Leaves(None) | Move::None => {}
            }
        }
        RowOp::Delete { old } => {
            let tenant = at.of(old.cells()).map(carried);
            let cells = match old {
                OldRow::Key(r) | OldRow::Full(r) => r,
            };
            match tenant {
                Some(Some(t)) => emit(t, TenantAction::Delete { old: cells }),
                Some(None) => {}
                // The old key does not carry the tenant: every worker deletes the key
                // among the tenants it owns.
                None => broadcast(plan, seq, table, TenantAction::Delete { old: cells }, out),
            }
        }
    }
}

fn broadcast(
    plan: &TenantPlan,
    seq: u32,
    table: &Arc<TableInfo>,
    action: TenantAction,
    out: &mut Vec<Routed>,
) {
    for index in 0..plan.peers.max(1) {
        out.push((
            u64::from(index),
            TenantChange {
                scope: Scope::Worker {
                    index,
                    peers: plan.peers,
                },
                seq,
                table: table.clone(),
                action: action.clone(),
            },
        ));
    }
}

/// The partition operator.
pub trait PartitionByTenant<'scope> {
    /// Routes every change to the worker owning its tenant, dropping tenants outside `plan`.
    fn partition_by_tenant(self, plan: Arc<TenantPlan>) -> StreamVec<'scope, Lsn, TenantChange>;
}

impl<'scope> PartitionByTenant<'scope> for StreamVec<'scope, Lsn, SourceRecord> {
    fn partition_by_tenant(self, plan: Arc<TenantPlan>) -> StreamVec<'scope, Lsn, TenantChange> {
        self.unary::<timely::container::CapacityContainerBuilder<Vec<Routed>>, _, _, _>(
            Pipeline,
            "PartitionByTenant",
            move |_cap, _info| {
                let mut routed = Vec::new();
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        for batch in data {
                            for record in batch.drain(..) {
                                partition_record_into(&plan, record, &mut routed);
                            }
                        }
                        output.session(&cap).give_iterator(routed.drain(..));
                    });
                }
            },
        )
        .exchange(|(route, _): &Routed| *route)
        .unary::<timely::container::CapacityContainerBuilder<Vec<TenantChange>>, _, _, _>(
            Pipeline,
            "StripRoute",
            |_cap, _info| {
                |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data {
                            for (_, change) in batch.drain(..) {
                                session.give(change);
                            }
                        }
                    });
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Cell, ColumnInfo, Identity, Row};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn table(tenant_in_key: bool) -> Arc<TableInfo> {
        let col = |name: &str, key: bool| ColumnInfo {
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
            type_name: "integer".into(),
            in_identity: key,
            missing_value: None,
            attnum: None,
        };
        Arc::new(TableInfo {
            oid: 1,
            schema: "app".into(),
            name: "t".into(),
            columns: vec![col("tenant_id", tenant_in_key), col("id", true)],
            primary_key: if tenant_in_key { vec![0, 1] } else { vec![1] },
            identity: Identity::Default,
            type_ddl: vec![],
        })
    }

    fn plan(include: &[u8], peers: u32) -> TenantPlan {
        TenantPlan {
            include: TenantFilter::Only(
                include
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<BTreeSet<_>>(),
            ),
            tenant_keys: [(
                "app.t".to_string(),
                crate::control::job_spec::TenantKey::Column("tenant_id".to_string()),
            )]
            .into_iter()
            .collect(),
            peers,
        }
    }

    fn row(tenant: Option<u8>, id: u8) -> Row {
        vec![
            tenant
                .map(|t| Cell::Text(t.to_string().into()))
                .unwrap_or(Cell::Null),
            Cell::Text(id.to_string().into()),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = (bool, RowOp)> {
        let tenant = proptest::option::weighted(0.9, 0u8..12);
        (any::<bool>(), 0u8..4, tenant.clone(), tenant, 0u8..50).prop_map(
            |(in_key, kind, t1, t2, id)| {
                let old = |t: Option<u8>| {
                    if in_key {
                        OldRow::Key(row(t, id))
                    } else {
                        OldRow::Key(vec![Cell::Null, Cell::Text(id.to_string().into())])
                    }
                };
                let op = match kind {
                    0 => RowOp::Insert { new: row(t1, id) },
                    1 => RowOp::Update {
                        old: None,
                        new: row(t1, id),
                    },
                    2 => RowOp::Update {
                        old: Some(old(t1)),
                        new: row(t2, id),
                    },
                    _ => RowOp::Delete { old: old(t1) },
                };
                (in_key, op)
            },
        )
    }

    proptest! {
        /// Tenant isolation at the operator: nothing routed to a tenant outside the job,
        /// every tenant change goes to its owner, and worker-scoped changes reach every worker.
        #[test]
        fn never_routes_a_tenant_outside_the_job(
            include in proptest::collection::btree_set(0u8..12, 1..5),
            peers in 1u32..5,
            ops in proptest::collection::vec(op_strategy(), 1..40),
        ) {
            let include: Vec<u8> = include.into_iter().collect();
            let plan = plan(&include, peers);
            for (seq, (in_key, op)) in ops.into_iter().enumerate() {
                let record = SourceRecord::Change { seq: seq as u32, table: table(in_key), op };
                let routed = partition_record(&plan, record);
                let workers: Vec<u32> = routed.iter().filter_map(|(_, c)| match c.scope {
                    Scope::Worker { index, .. } => Some(index),
                    _ => None,
                }).collect();
                prop_assert!(workers.is_empty() || workers == (0..peers).collect::<Vec<_>>());
                for (route, change) in routed {
                    match &change.scope {
                        Scope::Tenant(t) => {
                            prop_assert!(plan.includes(t), "tenant {} is not in the job", t);
                            prop_assert_eq!(route % u64::from(peers), u64::from(plan.worker_of(t)));
                        }
                        Scope::Worker { index, .. } => prop_assert_eq!(route, u64::from(*index)),
                    }
                }
            }
        }
    }

    /// What the job must see of one op, as (tenant, "upsert"/"insert"/"delete");
    /// a delete without its tenant goes to every worker (tenant `None`).
    fn expected(
        plan: &TenantPlan,
        in_key: bool,
        op: &RowOp,
    ) -> Vec<(Option<String>, &'static str)> {
        let tenant = |r: &Row| r[0].as_text().map(str::to_owned);
        let key_tenant = |o: &OldRow| if in_key { tenant(o.cells()) } else { None };
        let keep =
            |t: Option<String>, kind| t.filter(|t| plan.includes(t)).map(|t| (Some(t), kind));
        match op {
            RowOp::Insert { new } => keep(tenant(new), "insert").into_iter().collect(),
            RowOp::Update { old, new } => match (old.as_ref().and_then(key_tenant), tenant(new)) {
                (Some(o), Some(n)) if o != n => keep(Some(o), "delete")
                    .into_iter()
                    .chain(keep(Some(n), "insert"))
                    .collect(),
                (_, Some(n)) => keep(Some(n), "upsert").into_iter().collect(),
                (Some(o), None) => keep(Some(o), "delete").into_iter().collect(),
                (None, None) => Vec::new(),
            },
            RowOp::Delete { old } => match key_tenant(old) {
                Some(t) => keep(Some(t), "delete").into_iter().collect(),
                None => (0..plan.peers).map(|_| (None, "delete")).collect(),
            },
        }
    }

    proptest! {
        /// Nothing of a carried tenant is lost: each op yields exactly the changes the
        /// rules say (the other test checks where they go).
        #[test]
        fn every_change_of_a_carried_tenant_is_routed(
            include in proptest::collection::btree_set(0u8..12, 1..5),
            peers in 1u32..5,
            ops in proptest::collection::vec(op_strategy(), 1..40),
        ) {
            let plan = plan(&include.into_iter().collect::<Vec<_>>(), peers);
            for (seq, (in_key, op)) in ops.into_iter().enumerate() {
                let want = expected(&plan, in_key, &op);
                let record = SourceRecord::Change { seq: seq as u32, table: table(in_key), op };
                let got: Vec<(Option<String>, &'static str)> = partition_record(&plan, record)
                    .into_iter()
                    .map(|(_, c)| {
                        let tenant = match c.scope {
                            Scope::Tenant(t) => Some(t),
                            Scope::Worker { .. } => None,
                        };
                        let kind = match c.action {
                            TenantAction::Upsert { insert: true, .. } => "insert",
                            TenantAction::Upsert { insert: false, .. } => "upsert",
                            TenantAction::Delete { .. } => "delete",
                            _ => "other",
                        };
                        (tenant, kind)
                    })
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_row_moving_between_tenants_leaves_one_and_enters_the_other() {
        let plan = plan(&[1, 2], 2);
        let record = SourceRecord::Change {
            seq: 0,
            table: table(true),
            op: RowOp::Update {
                old: Some(OldRow::Key(row(Some(1), 5))),
                new: row(Some(2), 5),
            },
        };
        let routed = partition_record(&plan, record);
        assert_eq!(routed.len(), 2);
        assert!(matches!(&routed[0].1.action, TenantAction::Delete { .. }));
        assert_eq!(routed[0].1.scope, Scope::Tenant("1".into()));
        assert!(matches!(
            &routed[1].1.action,
            TenantAction::Upsert { insert: true, .. }
        ));
        assert_eq!(routed[1].1.scope, Scope::Tenant("2".into()));
    }

    #[test]
    fn a_one_tenant_table_routes_every_change_and_its_truncate_to_its_tenant() {
        let mut plan = plan(&[1, 2], 3);
        let one_tenant = |schema: &str, tenant: &str| {
            let key = crate::control::job_spec::TenantKey::Table(tenant.into());
            let t = Arc::new(TableInfo {
                schema: schema.into(),
                name: "t".into(),
                // No tenant column: the first column is the key.
                columns: vec![table(false).columns[1].clone()],
                primary_key: vec![0],
                ..(*table(false)).clone()
            });
            (t, key)
        };
        let (t2, key2) = one_tenant("tenant_2", "2");
        let (t9, key9) = one_tenant("tenant_9", "9");
        plan.tenant_keys.insert("tenant_2.t".into(), key2);
        plan.tenant_keys.insert("tenant_9.t".into(), key9);
        let id = |n: u8| vec![Cell::Text(n.to_string().into())];
        let ops = [
            RowOp::Insert { new: id(5) },
            RowOp::Update {
                old: Some(OldRow::Key(id(5))),
                new: id(6),
            },
            RowOp::Delete {
                old: OldRow::Key(id(6)),
            },
        ];
        for op in ops {
            for (table, carried) in [(&t2, true), (&t9, false)] {
                let record = SourceRecord::Change {
                    seq: 0,
                    table: table.clone(),
                    op: op.clone(),
                };
                let routed = partition_record(&plan, record);
                if !carried {
                    assert!(routed.is_empty(), "tenant 9 is not the job's: {routed:?}");
                    continue;
                }
                assert_eq!(routed.len(), 1, "{op:?}: {routed:?}");
                assert_eq!(routed[0].1.scope, Scope::Tenant("2".into()));
                assert_eq!(routed[0].0 % 3, u64::from(plan.worker_of("2")));
            }
        }
        let routed = partition_record(
            &plan,
            SourceRecord::Truncate {
                seq: 0,
                tables: vec![t2.clone(), t9.clone(), table(true)],
            },
        );
        let scopes: Vec<&Scope> = routed.iter().map(|(_, c)| &c.scope).collect();
        assert_eq!(
            scopes.len(),
            4,
            "tenant 2's owner, and every worker for app.t"
        );
        assert_eq!(scopes[0], &Scope::Tenant("2".into()));
        assert!(scopes[1..]
            .iter()
            .all(|s| matches!(s, Scope::Worker { .. })));
    }

    #[test]
    fn owned_tenants_sql_matches_the_exchange_route() {
        let plan = plan(&[1, 2, 3, 4, 5, 6], 3);
        let mut seen = BTreeSet::new();
        for w in 0..3 {
            if let Some(sql) = owned_tenants_sql(
                &plan,
                &crate::control::job_spec::TenantKey::Column("tenant_id".into()),
                w,
            ) {
                for t in 1..=6 {
                    if sql.contains(&format!("'{t}'")) {
                        assert_eq!(plan.worker_of(&t.to_string()), w);
                        assert!(seen.insert(t), "tenant {t} owned twice");
                    }
                }
            }
        }
        assert_eq!(seen.len(), 6, "every tenant owned once");
        // The same route PostgreSQL computes: md5 of '42' starts with a1d0c6e8.
        assert_eq!(tenant_route("42"), 0xa1d0_c6e8);
    }
}
