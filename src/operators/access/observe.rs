//! The write signal: counts each tenant change into its key bucket of the job's
//! [`AccessLedger`] as it flows past, and passes the changes on untouched.
//!
//! Counting is per worker step into a local map, merged into the shared ledger once per
//! step (one lock per step, not per change). No clocks: the ledger's window is closed by
//! whoever owns the windows.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::StreamVec;

use super::bucket::bucket_of_change;
use super::ledger::AccessLedger;
use super::BucketKey;
use crate::change::{Lsn, Scope, TenantChange};

/// The observe operator.
pub trait ObserveAccess<'scope> {
    /// Counts every tenant-scoped change into `ledger` (key buckets of `width` keys).
    fn observe_access(
        self,
        ledger: Arc<AccessLedger>,
        width: u64,
    ) -> StreamVec<'scope, Lsn, TenantChange>;
}

impl<'scope> ObserveAccess<'scope> for StreamVec<'scope, Lsn, TenantChange> {
    fn observe_access(
        self,
        ledger: Arc<AccessLedger>,
        width: u64,
    ) -> StreamVec<'scope, Lsn, TenantChange> {
        self.unary::<timely::container::CapacityContainerBuilder<Vec<TenantChange>>, _, _, _>(
            Pipeline,
            "ObserveAccess",
            move |_cap, _info| {
                // (tenant, table, bucket) -> count, tables named by their shape's pointer
                // would be cheaper but a table's shape changes with ALTER.
                let mut counts: HashMap<(String, String, i64), f64> = HashMap::new();
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for batch in data {
                            for c in batch.iter() {
                                let Scope::Tenant(tenant) = &c.scope else {
                                    continue;
                                };
                                let Some(bucket) = bucket_of_change(c, width) else {
                                    continue;
                                };
                                let table = c.table.qualified_name();
                                *counts.entry((tenant.clone(), table, bucket)).or_default() += 1.0;
                            }
                            session.give_container(batch);
                        }
                    });
                    if !counts.is_empty() {
                        ledger.add(
                            counts.drain().map(|((tenant, table, bucket), n)| {
                                (
                                    BucketKey {
                                        tenant,
                                        table,
                                        bucket,
                                    },
                                    n,
                                )
                            }),
                            false,
                        );
                    }
                }
            },
        )
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
        let table = Arc::new(fixtures::table(
            "orders",
            &[("id", "bigint"), ("tenant_id", "int")],
            &[0],
        ));
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
        let out =
            timely::example(move |scope| input.to_stream(scope).observe_access(l, 1000).capture());
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
