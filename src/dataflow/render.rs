//! Wiring only: connects the job's operators. No processing happens here.

use std::sync::Arc;

use timely::dataflow::StreamVec;
use tokio::sync::mpsc;

use timely::dataflow::operators::vec::Map;

use crate::change::{Lsn, SinkItem, SourceRecord};
use crate::dataflow::deliver::{DeliverToSinks, DeliveryActivators, DeliveryLink};
use crate::operators::access::ledger::AccessLedger;
use crate::operators::access::observe::ObserveAccess;
use crate::operators::history::{HistoryBooks, HistoryPlan, VersionHistory};
use crate::operators::partition::{PartitionByTenant, TenantPlan};
use crate::sinks::{Delivery, SinkFeed};

/// The history stage of a job: which tables, the shared books, the commit times.
pub struct HistoryStage {
    /// Tables that keep history.
    pub plan: Arc<HistoryPlan>,
    /// The job's version books.
    pub books: Arc<HistoryBooks>,
    /// The reader's figures (commit times by LSN).
    pub reader: Arc<crate::cdc::stream::ReaderStats>,
}

/// The optional stages between partitioning and delivery.
#[derive(Default)]
pub struct OptionalStages {
    /// Bi-temporal history, when some table keeps it.
    pub history: Option<HistoryStage>,
    /// Write counting for the predictor: the job's ledger and key bucket width.
    pub access: Option<(Arc<AccessLedger>, u64)>,
}

/// Builds the job's graph on one worker; returns the durable-progress stream.
pub fn render_job<'scope>(
    source: StreamVec<'scope, Lsn, SourceRecord>,
    plan: Arc<TenantPlan>,
    stages: OptionalStages,
    sinks: Vec<(mpsc::Sender<Delivery>, SinkFeed)>,
    link: DeliveryLink,
    backlog: Arc<crate::sinks::backlog::Backlog>,
    on_activator: impl FnOnce(DeliveryActivators),
) -> StreamVec<'scope, Lsn, ()> {
    let OptionalStages { history, access } = stages;
    let changes = source.partition_by_tenant(plan.clone());
    let changes = match access {
        Some((ledger, width)) => changes.observe_access(ledger, width, plan),
        None => changes,
    };
    let items = match history {
        Some(h) => {
            let reader = h.reader;
            // The changes go on only to sinks that apply them (not a cold tier alone).
            let pass_changes = sinks.iter().any(|(_, feed)| *feed != SinkFeed::History);
            changes.version_history(h.plan, h.books, pass_changes, move |lsn| {
                reader.commit_times.get(lsn)
            })
        }
        None => changes.map(SinkItem::Change),
    };
    items.deliver_to_sinks(sinks, link, backlog, on_activator)
}
