//! Tenant partition: finds each change's tenant, drops tenants outside the job and sends
//! each tenant's changes to the one worker that owns it.
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
use crate::control::job_spec::TenantFilter;
use crate::sql_text::{quote_ident, quote_literal};

/// What the partition needs to know of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPlan {
    /// Which tenants the job carries.
    pub include: TenantFilter,
    /// Tenant column per job table (`schema.table` → column).
    pub tenant_columns: HashMap<String, String>,
    /// Number of dataflow workers.
    pub peers: u32,
}

impl TenantPlan {
    /// Whether the job carries `tenant`.
    pub fn includes(&self, tenant: &str) -> bool {
        match &self.include {
            TenantFilter::All => true,
            TenantFilter::Only(set) => set.contains(tenant),
        }
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

/// A SQL predicate true for rows whose tenant worker `index` owns; `None` when it owns none.
pub fn owned_tenants_sql(plan: &TenantPlan, column: &str, index: u32) -> Option<String> {
    let col = quote_ident(column);
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
    match record {
        SourceRecord::Change { seq, table, op } => {
            let Some(column) = plan.tenant_columns.get(&table.qualified_name()) else {
                return out;
            };
            let Some(tc) = table.column_index(column) else {
                let reason = format!("table has no tenant column `{column}` any more");
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
                return out;
            };
            route_op(plan, seq, &table, tc, op, &mut out);
        }
        SourceRecord::Truncate { seq, tables } => {
            for table in tables {
                if !plan.tenant_columns.contains_key(&table.qualified_name()) {
                    continue;
                }
                broadcast(plan, seq, &table, TenantAction::Truncate, &mut out);
            }
        }
    }
    out
}

fn route_op(
    plan: &TenantPlan,
    seq: u32,
    table: &Arc<TableInfo>,
    tc: usize,
    op: RowOp,
    out: &mut Vec<Routed>,
) {
    let tenant_of =
        |row: &[crate::change::Cell]| row.get(tc).and_then(|c| c.as_text()).map(str::to_string);
    let mut emit = |tenant: String, action: TenantAction| {
        let route = tenant_route(&tenant);
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
            if let Some(t) = tenant_of(&new).filter(|t| plan.includes(t)) {
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
            let new_tenant = tenant_of(&new);
            let old_tenant = old.as_ref().and_then(|o| tenant_of(o.cells()));
            let old_cells = old.map(|o| match o {
                OldRow::Key(r) | OldRow::Full(r) => r,
            });
            match (old_tenant, new_tenant) {
                (Some(o), Some(n)) if o != n => {
                    // The row moved between tenants: it leaves one and enters the other.
                    if plan.includes(&o) {
                        if let Some(old) = old_cells.clone() {
                            emit(o, TenantAction::Delete { old });
                        }
                    }
                    if plan.includes(&n) {
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
                (_, Some(n)) => {
                    if plan.includes(&n) {
                        emit(
                            n,
                            TenantAction::Upsert {
                                old: old_cells,
                                new,
                                insert: false,
                            },
                        );
                    }
                }
                (Some(o), None) => {
                    // The new row has no tenant (set to NULL): it leaves the old tenant.
                    if plan.includes(&o) {
                        if let Some(old) = old_cells {
                            emit(o, TenantAction::Delete { old });
                        }
                    }
                }
                (None, None) => {}
            }
        }
        RowOp::Delete { old } => {
            let tenant = tenant_of(old.cells());
            let cells = match old {
                OldRow::Key(r) | OldRow::Full(r) => r,
            };
            match tenant {
                Some(t) => {
                    if plan.includes(&t) {
                        emit(t, TenantAction::Delete { old: cells });
                    }
                }
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
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data {
                            for record in batch.drain(..) {
                                for routed in partition_record(&plan, record) {
                                    session.give(routed);
                                }
                            }
                        }
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
