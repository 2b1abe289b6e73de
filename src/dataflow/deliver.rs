//! The hand-over from the dataflow to the sink tasks.
//!
//! Per worker it stashes each timestamp's changes until the input frontier passes it (the
//! transaction is complete on this worker), sends them as one [`ApplyBatch`] to every sink
//! task of the worker, and keeps the timestamp's capability on a data-less output until
//! every sink reported it durable. Probing that output therefore gives the LSN below which
//! everything is durable at every sink on every worker: the only LSN the source may confirm.

use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;
use tokio::sync::mpsc;

use crate::change::{Lsn, TenantChange};
use crate::sinks::ApplyBatch;

/// Durability reports from sink tasks: (sink index, every batch up to this LSN is durable).
pub type DurableReports = crossbeam_channel::Receiver<(usize, Lsn)>;

/// The delivery operator.
pub trait DeliverToSinks<'scope> {
    /// Delivers each completed timestamp to `sinks` and returns a progress-only stream
    /// whose frontier is the durable frontier. `on_activator` receives the handle the sink
    /// tasks use to wake the operator after reporting.
    fn deliver_to_sinks(
        self,
        sinks: Vec<mpsc::Sender<ApplyBatch>>,
        durable: DurableReports,
        on_activator: impl FnOnce(SyncActivator),
    ) -> StreamVec<'scope, Lsn, ()>;
}

impl<'scope> DeliverToSinks<'scope> for StreamVec<'scope, Lsn, TenantChange> {
    fn deliver_to_sinks(
        self,
        sinks: Vec<mpsc::Sender<ApplyBatch>>,
        durable: DurableReports,
        on_activator: impl FnOnce(SyncActivator),
    ) -> StreamVec<'scope, Lsn, ()> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("DeliverToSinks".to_owned(), scope);
        let info = builder.operator_info();
        on_activator(scope.worker().sync_activator_for(info.address.to_vec()));
        let mut input = builder.new_input(self, Pipeline);
        let (_output, progress) = builder.new_output::<Vec<()>>();
        builder.build(move |mut initial| {
            initial.clear();
            let mut stash: BTreeMap<Lsn, (Capability<Lsn>, Vec<TenantChange>)> = BTreeMap::new();
            let mut in_flight: BTreeMap<Lsn, Capability<Lsn>> = BTreeMap::new();
            let mut durable_at: Vec<Lsn> = vec![0; sinks.len()];
            let mut sink_gone = false;
            move |frontiers| {
                input.for_each_stamp(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    let entry = stash.entry(t).or_insert_with(|| {
                        let held = cap.retain_least(0).expect("output 0 exists");
                        (held, Vec::new())
                    });
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                let frontier = frontiers[0].frontier();
                while let Some((&t, _)) = stash.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let Some((cap, mut changes)) = stash.remove(&t) else { break };
                    if changes.is_empty() {
                        continue;
                    }
                    changes.sort_by_key(|c| c.seq);
                    let batch = ApplyBatch { commit_lsn: t, changes };
                    for sink in &sinks {
                        // Blocks this worker while the sink is behind: back-pressure.
                        if sink.blocking_send(batch.clone()).is_err() && !sink_gone {
                            sink_gone = true;
                            tracing::error!(lsn = t, "a sink task has stopped; nothing past this LSN will be acknowledged");
                        }
                    }
                    in_flight.insert(t, cap);
                }
                while let Ok((sink, lsn)) = durable.try_recv() {
                    if let Some(d) = durable_at.get_mut(sink) {
                        *d = (*d).max(lsn);
                    }
                }
                let everywhere = durable_at.iter().copied().min().unwrap_or(Lsn::MAX);
                while let Some((&t, _)) = in_flight.first_key_value() {
                    if t > everywhere {
                        break;
                    }
                    in_flight.remove(&t);
                }
            }
        });
        progress
    }
}
