//! Wiring only: connects the job's operators. No processing happens here.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::scheduling::SyncActivator;
use tokio::sync::mpsc;

use crate::change::{Lsn, SourceRecord};
use crate::dataflow::deliver::{DeliverToSinks, DurableReports};
use crate::operators::partition::{PartitionByTenant, TenantPlan};
use crate::sinks::ApplyBatch;

/// Builds the job's graph on one worker; returns the durable-progress stream.
pub fn render_job<'scope>(
    source: StreamVec<'scope, Lsn, SourceRecord>,
    plan: Arc<TenantPlan>,
    sinks: Vec<mpsc::Sender<ApplyBatch>>,
    durable: DurableReports,
    backlog: Arc<AtomicUsize>,
    on_activator: impl FnOnce(SyncActivator),
) -> StreamVec<'scope, Lsn, ()> {
    source
        .partition_by_tenant(plan)
        .deliver_to_sinks(sinks, durable, backlog, on_activator)
}
