//! The write signal: counts each tenant change into its key bucket of the job's
//! [`AccessLedger`] as it flows past, and passes the changes on untouched.
//!
//! Counting is per worker step into a local map, merged into the shared ledger once per
//! step (one lock per step, not per change). Tenant and table names are interned per
//! operator, so counting a change allocates nothing. No clocks: the ledger's window is closed by
//! whoever owns the windows.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::StreamVec;

use super::bucket::bucket_of_change;
use super::ledger::AccessLedger;
use super::BucketKey;
use crate::change::{Lsn, Scope, TableInfo, TenantChange};
use crate::control::job_spec::TenantKey;
use crate::operators::partition::TenantPlan;

/// The observe operator.
pub trait ObserveAccess<'scope> {
    /// Counts every tenant-scoped change into `ledger` (key buckets of `width` keys; the
    /// plan's tenant column of each table is left out of its key).
    fn observe_access(
        self,
        ledger: Arc<AccessLedger>,
        width: u64,
        plan: Arc<TenantPlan>,
    ) -> StreamVec<'scope, Lsn, TenantChange>;
}

impl<'scope> ObserveAccess<'scope> for StreamVec<'scope, Lsn, TenantChange> {
    fn observe_access(
        self,
        ledger: Arc<AccessLedger>,
        width: u64,
        plan: Arc<TenantPlan>,
    ) -> StreamVec<'scope, Lsn, TenantChange> {
        self.unary::<timely::container::CapacityContainerBuilder<Vec<TenantChange>>, _, _, _>(
            Pipeline,
            "ObserveAccess",
            move |_cap, _info| {
                let mut names = Names::new(plan);
                // (tenant, table, bucket) -> count, the names as indices into `names`.
                let mut counts: HashMap<(u32, u32, i64), f64, foldhash::fast::RandomState> =
                    HashMap::default();
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data {
                            for c in batch.iter() {
                                let Scope::Tenant(tenant) = &c.scope else {
                                    continue;
                                };
                                let table = names.table(&c.table);
                                let Some(bucket) =
                                    bucket_of_change(c, width, names.tenant_column(table))
                                else {
                                    continue;
                                };
                                let key = (names.tenant(tenant), table, bucket);
                                *counts.entry(key).or_default() += 1.0;
                            }
                            session.give_container(batch);
                        }
                    });
                    if !counts.is_empty() {
                        ledger.add(
                            counts.drain().map(|((tenant, table, bucket), n)| {
                                (names.key(tenant, table, bucket), n)
                            }),
                            false,
                        );
                    }
                    names.trim();
                }
            },
        )
    }
}

/// Most names [`Names`] keeps before it starts over (bounds it across ALTERs and
/// tenants that come and go).
const MAX_NAMES: usize = 100_000;

/// The tenant and table names one observe operator has seen, each shared once, so that
/// counting a change allocates nothing.
struct Names {
    /// Where the tenant columns come from.
    plan: Arc<TenantPlan>,
    tenant_index: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    tenants: Vec<Arc<str>>,
    /// Table shapes by the address of their `Arc` (held here, so the address is not
    /// reused while it is a key), with their `schema.table` and tenant column.
    table_index: HashMap<*const TableInfo, u32, foldhash::fast::RandomState>,
    tables: Vec<(Arc<TableInfo>, Arc<str>, Option<TenantKey>)>,
}

impl Names {
    fn new(plan: Arc<TenantPlan>) -> Names {
        Names {
            plan,
            tenant_index: HashMap::default(),
            tenants: Vec::new(),
            table_index: HashMap::default(),
            tables: Vec::new(),
        }
    }

    fn tenant(&mut self, tenant: &str) -> u32 {
        if let Some(i) = self.tenant_index.get(tenant) {
            return *i;
        }
        let name: Arc<str> = Arc::from(tenant);
        let i = self.tenants.len() as u32;
        self.tenants.push(name.clone());
        self.tenant_index.insert(name, i);
        i
    }

    fn table(&mut self, table: &Arc<TableInfo>) -> u32 {
        if let Some(i) = self.table_index.get(&Arc::as_ptr(table)) {
            return *i;
        }
        let name = table.qualified_name();
        let tenant_column = self.plan.tenant_keys.get(&name).cloned();
        self.tables
            .push((table.clone(), Arc::from(name), tenant_column));
        let i = (self.tables.len() - 1) as u32;
        self.table_index.insert(Arc::as_ptr(table), i);
        i
    }

    /// The tenant column of table `table` (an index from [`Names::table`]).
    fn tenant_column(&self, table: u32) -> Option<&str> {
        self.tables[table as usize]
            .2
            .as_ref()
            .and_then(TenantKey::column)
    }

    /// The ledger key of counted indices.
    fn key(&self, tenant: u32, table: u32, bucket: i64) -> BucketKey {
        BucketKey {
            tenant: self.tenants[tenant as usize].clone(),
            table: self.tables[table as usize].1.clone(),
            bucket,
        }
    }

    /// Forgets every name once there are too many (only between steps: the counts
    /// refer to indices).
    fn trim(&mut self) {
        if self.tenants.len() + self.tables.len() > MAX_NAMES {
            *self = Names::new(self.plan.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{fixtures, Cell, TenantAction};
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, ToStream};

    #[test]
    fn counts_writes_per_bucket_and_passes_changes_on() {
        let ledger = Arc::new(AccessLedger::default());
        // PRIMARY KEY (tenant_id, id): bucketed by id ranges within the tenant.
        let table = Arc::new(fixtures::table(
            "orders",
            &[("id", "bigint"), ("tenant_id", "int")],
            &[1, 0],
        ));
        let plan = Arc::new(TenantPlan {
            include: crate::control::job_spec::TenantFilter::All,
            tenant_keys: HashMap::from([(
                "app.orders".to_string(),
                crate::control::job_spec::TenantKey::Column("tenant_id".to_string()),
            )]),
            peers: 1,
        });
        let change = |tenant: &str, id: &str| TenantChange {
            scope: Scope::Tenant(tenant.into()),
            seq: 0,
            table: table.clone(),
            action: TenantAction::Upsert {
                old: None,
                new: vec![Cell::Text(id.into()), Cell::Text(tenant.into())],
                insert: true,
            },
        };
        let input = vec![
            change("1", "5"),
            change("1", "999"),
            change("1", "1000"),
            change("2", "5"),
        ];
        let expected = input.clone();
        let l = ledger.clone();
        let out = timely::example(move |scope| {
            input
                .to_stream(scope)
                .observe_access(l, 1000, plan)
                .capture()
        });
        let passed: Vec<TenantChange> = out
            .try_iter()
            .flat_map(|e| match e {
                Event::Messages(_, d) => d,
                Event::Progress(_) => Vec::new(),
            })
            .collect();
        assert_eq!(passed, expected);
        let counts = ledger.take().buckets;
        let key = |t: &str, b| BucketKey {
            tenant: t.into(),
            table: "app.orders".into(),
            bucket: b,
        };
        assert_eq!(counts.get(&key("1", 0)), Some(&2.0));
        assert_eq!(counts.get(&key("1", 1)), Some(&1.0));
        assert_eq!(counts.get(&key("2", 0)), Some(&1.0));
        assert!(ledger.take().buckets.is_empty(), "take starts a new window");
    }
}
