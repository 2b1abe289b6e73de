//! The hand-over from the dataflow to the sink tasks.
//!
//! Per worker it stashes each timestamp's changes until the input frontier passes it (the
//! transaction is complete on this worker), hands them as one [`ApplyBatch`] to every sink
//! task of the worker (never blocking: the worker thread is shared by every job), and keeps the timestamp's capability on a data-less output until
//! every sink reported it durable. Probing that output therefore gives the LSN below which
//! everything is durable at every sink on every worker: the only LSN the source may confirm.
//!
//! A transaction whose share on this worker passes [`PART_ROWS`] rows or [`PART_BYTES`]
//! (estimated, [`crate::footprint`]) before it is complete is handed over in parts
//! ([`Delivery::Part`], then the rest as a [`Delivery::Batch`]) as it arrives, so no
//! worker holds a large transaction whole (DESIGN.md invariant 5); only the
//! oldest stashed timestamp is ever handed over in parts, so parts never interleave with
//! another transaction.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::{Activator, SyncActivator};
use tokio::sync::mpsc;

use crate::change::{Lsn, SinkItem};
use crate::footprint::Footprint;
use crate::sinks::backlog::{Backlog, Load};
use crate::sinks::{ApplyBatch, Delivery, SinkFeed};

/// Rows of one transaction a worker stashes before it hands them over as a part.
pub const PART_ROWS: usize = 20_000;
/// Bytes (estimated) of one transaction a worker stashes before it hands them over as a
/// part: wide rows part by bytes (a 20,000-row part of 20 KB rows held 400 MB), narrow
/// ones by rows (the e2e bench's rows make about 12 MB a part).
pub const PART_BYTES: usize = 16 << 20;

/// How the sink tasks reach the delivery operator.
///
/// A sink task reports each durable LSN without waking the worker thread: the worker
/// looks for reports between steps (it wakes at least every `host::PARK`), since the
/// durable frontier is read only every `cdc::stream::ACK_INTERVAL`. A cross-thread wake
/// costs a futex call and a context switch per applied group, which on two cores delayed
/// the next transaction more than a late report delays an acknowledgement. Only a sink
/// channel the operator found full is worth waking it for at once.
pub struct DeliveryLink {
    /// Durability reports: (sink index, every batch up to this LSN is durable).
    pub reports: crossbeam_channel::Receiver<(usize, Lsn)>,
    /// Set by the operator when a sink's channel was full; the sink task that makes room
    /// then wakes it at once.
    pub waiting_for_room: Arc<AtomicBool>,
}

/// The two handles that schedule the delivery operator: from a sink task (another
/// thread) and from its own worker thread.
pub struct DeliveryActivators {
    /// Wakes the worker thread (a futex call).
    pub from_sinks: SyncActivator,
    /// Schedules the operator at the worker's next step (no system call).
    pub on_worker: Activator,
}

/// The delivery operator.
pub trait DeliverToSinks<'scope> {
    /// Delivers each completed timestamp to `sinks` and returns a progress-only stream
    /// whose frontier is the durable frontier. `backlog` counts what was handed over and
    /// not yet applied by a sink (added here, taken off by the sink tasks; the feeder
    /// pauses while it is large).
    /// `on_activator` receives the handles that schedule the operator.
    fn deliver_to_sinks(
        self,
        sinks: Vec<(mpsc::Sender<Delivery>, SinkFeed)>,
        link: DeliveryLink,
        backlog: Arc<Backlog>,
        on_activator: impl FnOnce(DeliveryActivators),
    ) -> StreamVec<'scope, Lsn, ()>;
}

impl<'scope> DeliverToSinks<'scope> for StreamVec<'scope, Lsn, SinkItem> {
    fn deliver_to_sinks(
        self,
        sinks: Vec<(mpsc::Sender<Delivery>, SinkFeed)>,
        link: DeliveryLink,
        backlog: Arc<Backlog>,
        on_activator: impl FnOnce(DeliveryActivators),
    ) -> StreamVec<'scope, Lsn, ()> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("DeliverToSinks".to_owned(), scope);
        let info = builder.operator_info();
        on_activator(DeliveryActivators {
            from_sinks: scope.worker().sync_activator_for(info.address.to_vec()),
            on_worker: scope.worker().activator_for(info.address.clone()),
        });
        let DeliveryLink {
            reports: durable,
            waiting_for_room,
        } = link;
        let (sinks, feeds): (Vec<_>, Vec<_>) = sinks.into_iter().unzip();
        let mut input = builder.new_input(self, Pipeline);
        let (_output, progress) = builder.new_output::<Vec<()>>();
        builder.build(move |mut initial| {
            initial.clear();
            let mut stash: BTreeMap<Lsn, Stashed> = BTreeMap::new();
            let mut in_flight: BTreeMap<Lsn, Capability<Lsn>> = BTreeMap::new();
            let mut durable_at: Vec<Lsn> = vec![0; sinks.len()];
            let mut sink_gone = false;
            let mut queues: Vec<(VecDeque<Delivery>, SinkFeed)> =
                feeds.iter().map(|f| (VecDeque::new(), *f)).collect();
            // Every sink gets what it applies of the batch (an empty batch still tells it
            // the transaction passed); the last one takes it without a copy.
            let hand_over = move |queues: &mut Vec<(VecDeque<Delivery>, SinkFeed)>, delivery: Delivery| {
                let Some(((last, last_feed), others)) = queues.split_last_mut() else {
                    return;
                };
                for (queue, feed) in others {
                    let copy = delivery.copy_for(*feed);
                    backlog.add(Load::of(copy.batch()));
                    queue.push_back(copy);
                }
                let own = delivery.into_feed(*last_feed);
                backlog.add(Load::of(own.batch()));
                last.push_back(own);
            };
            move |frontiers| {
                input.for_each_stamp(|cap, data| {
                    let Some(&t) = cap.least() else { return };
                    let entry = stash.entry(t).or_insert_with(|| Stashed {
                        cap: cap.retain_least(0).expect("output 0 exists"),
                        items: Vec::new(),
                        bytes: 0,
                        parted: false,
                    });
                    for batch in data {
                        entry.bytes += batch.iter().map(Footprint::footprint).sum::<usize>();
                        entry.items.append(batch);
                    }
                });
                let frontier = frontiers[0].frontier();
                while let Some((&t, _)) = stash.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let Some(Stashed { cap, items, parted, .. }) = stash.remove(&t) else { break };
                    // A transaction handed over in parts always gets its final batch,
                    // even an empty one: it tells the sink the transaction is complete.
                    if items.is_empty() && !parted {
                        continue;
                    }
                    hand_over(&mut queues, Delivery::Batch(batch_of(t, items)));
                    in_flight.insert(t, cap);
                }
                // The oldest transaction, still arriving, is large: hand over what it has.
                if let Some(mut entry) = stash.first_entry() {
                    let stashed = entry.get_mut();
                    if stashed.items.len() >= PART_ROWS || stashed.bytes >= PART_BYTES {
                        stashed.parted = true;
                        stashed.bytes = 0;
                        let part = std::mem::take(&mut stashed.items);
                        let t = *entry.key();
                        hand_over(&mut queues, Delivery::Part(batch_of(t, part)));
                    }
                }
                // Hand over without blocking the worker (other jobs share it): what a
                // sink's channel cannot take now waits here; the sink task that makes
                // room wakes this operator.
                for (sink, (queue, _)) in sinks.iter().zip(queues.iter_mut()) {
                    while let Some(batch) = queue.pop_front() {
                        // The sink task takes the rows off the backlog once applied.
                        match sink.try_send(batch) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(batch)) => {
                                queue.push_front(batch);
                                waiting_for_room.store(true, Ordering::Release);
                                break;
                            }
                            Err(mpsc::error::TrySendError::Closed(batch)) => {
                                if !sink_gone {
                                    sink_gone = true;
                                    let lsn = batch.batch().commit_lsn;
                                    tracing::error!(lsn, "a sink task has stopped; nothing past this LSN will be acknowledged");
                                }
                                queue.push_front(batch);
                                break;
                            }
                        }
                    }
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

/// One timestamp's items waiting on a worker.
struct Stashed {
    /// Held on the progress output until every sink has the timestamp durable.
    cap: Capability<Lsn>,
    items: Vec<SinkItem>,
    /// The items' estimated bytes.
    bytes: usize,
    /// Parts of it were handed over.
    parted: bool,
}

/// One timestamp's items as a batch, in transaction order (stable: a change's history
/// events keep their order).
fn batch_of(t: Lsn, mut items: Vec<SinkItem>) -> ApplyBatch {
    items.sort_by_key(SinkItem::seq);
    let mut batch = ApplyBatch {
        commit_lsn: t,
        changes: Vec::with_capacity(items.len()),
        history: Vec::new(),
    };
    for item in items {
        match item {
            SinkItem::Change(c) => batch.changes.push(c),
            SinkItem::History(h) => batch.history.push(h),
        }
    }
    batch
}
