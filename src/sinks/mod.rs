//! Sinks: where a job's changes end up. One folder per sink, each with the same files.
//!
//! # The contract every sink keeps
//! - Batches arrive **at least once**, in commit-LSN order, each holding one source
//!   transaction's changes for the tenants this worker owns, sorted by their position in
//!   the transaction. After a crash the stream resumes at the last confirmed position, so a
//!   sink sees again batches it already applied: it must skip what its own checkpoint
//!   covers (exactly-once effect, DESIGN.md invariant 2).
//! - [`Sink::apply`] returns only once everything it was given is **durable**; the worker
//!   then reports that LSN and the source may confirm it (invariant 1).
//! - A sink that can pipeline ([`Sink::send`]) may be handed the next group before the
//!   last one is durable; a group it sends never becomes durable unless every group sent
//!   before it does, and the worker reports nothing durable before its outcome is in.
//! - A transaction is never exposed half-applied for a tenant (invariant 3).
//! - Errors are typed: transient ones are retried with back-off by the caller and nothing
//!   is acknowledged meanwhile; a table the sink cannot apply is put in a visible error
//!   state by the sink itself, its changes kept, never dropped.

pub mod backlog;
pub mod large;
pub mod latency;
pub mod nats;
pub mod parquet;
pub mod pg_apply;
pub mod qos;
pub mod spill;
pub mod versions;
pub mod worker;

use std::future::Future;

use crate::change::{HistoryEvent, Lsn, TenantChange};
use crate::sinks::large::LiveParts;
use crate::sinks::spill::SpilledTxn;

/// One source transaction's changes for one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyBatch {
    /// The transaction's commit LSN (its timely timestamp).
    pub commit_lsn: Lsn,
    /// Its changes for this worker's tenants, in transaction order.
    pub changes: Vec<TenantChange>,
    /// The history versions those changes closed and opened, in transaction order
    /// (empty unless a table of the job keeps history).
    pub history: Vec<HistoryEvent>,
}

impl ApplyBatch {
    /// Changes plus history events: the batch's weight for row budgets.
    pub fn rows(&self) -> usize {
        self.changes.len() + self.history.len()
    }

    /// What its changes and history events hold in memory, estimated
    /// ([`crate::footprint`]).
    pub fn footprint(&self) -> usize {
        use crate::footprint::Footprint;
        self.changes.iter().map(Footprint::footprint).sum::<usize>()
            + self.history.iter().map(Footprint::footprint).sum::<usize>()
    }
}

/// What of a transaction a sink applies; the dataflow hands it only that part (a history
/// job's cold tier never holds the plain changes, a NATS sink never the versions), so a
/// sink's row budgets, linger and backlog count only rows it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFeed {
    /// The changes only.
    Changes,
    /// The history versions only.
    History,
    /// Both.
    Both,
}

impl SinkFeed {
    /// Whether the sink applies the changes.
    fn takes_changes(self) -> bool {
        self != SinkFeed::History
    }

    /// Whether the sink applies the history versions.
    fn takes_history(self) -> bool {
        self != SinkFeed::Changes
    }
}

impl ApplyBatch {
    /// This batch with only what a sink fed `feed` applies.
    pub fn into_feed(mut self, feed: SinkFeed) -> ApplyBatch {
        if !feed.takes_changes() {
            self.changes = Vec::new();
        }
        if !feed.takes_history() {
            self.history = Vec::new();
        }
        self
    }

    /// A copy of what a sink fed `feed` applies (the rest is not copied).
    pub fn copy_for(&self, feed: SinkFeed) -> ApplyBatch {
        ApplyBatch {
            commit_lsn: self.commit_lsn,
            changes: match feed.takes_changes() {
                true => self.changes.clone(),
                false => Vec::new(),
            },
            history: match feed.takes_history() {
                true => self.history.clone(),
                false => Vec::new(),
            },
        }
    }
}

/// What the dataflow hands a sink task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A whole transaction (or, after [`Delivery::Part`]s of the same commit LSN, its
    /// last part: the transaction is complete).
    Batch(ApplyBatch),
    /// A leading part of a transaction too large to hold until its commit: more parts
    /// and a final [`Delivery::Batch`] with the same commit LSN follow, and nothing of
    /// another transaction comes in between.
    Part(ApplyBatch),
}

impl Delivery {
    /// The transaction's batch (whole or a part).
    pub fn batch(&self) -> &ApplyBatch {
        match self {
            Delivery::Batch(b) | Delivery::Part(b) => b,
        }
    }

    /// This delivery with only what a sink fed `feed` applies.
    pub fn into_feed(self, feed: SinkFeed) -> Delivery {
        match self {
            Delivery::Batch(b) => Delivery::Batch(b.into_feed(feed)),
            Delivery::Part(b) => Delivery::Part(b.into_feed(feed)),
        }
    }

    /// A copy of what a sink fed `feed` applies.
    pub fn copy_for(&self, feed: SinkFeed) -> Delivery {
        match self {
            Delivery::Batch(b) => Delivery::Batch(b.copy_for(feed)),
            Delivery::Part(b) => Delivery::Part(b.copy_for(feed)),
        }
    }
}

/// What one `apply` call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Rows inserted or updated.
    pub upserted: u64,
    /// Rows deleted (including per-tenant truncates).
    pub deleted: u64,
    /// Changes skipped because the checkpoint already covered them (replays).
    pub skipped: u64,
    /// Changes kept in the dead-letter table because their table is in error.
    pub dead_lettered: u64,
    /// What was applied per tenant (tenant-scoped changes only).
    pub tenants: Vec<TenantApplied>,
    /// Bytes of values sent to the target.
    pub bytes: u64,
}

/// One tenant's share of an apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantApplied {
    /// The tenant id.
    pub tenant: String,
    /// The highest commit LSN now durable for it.
    pub lsn: Lsn,
    /// Inserts and updates applied.
    pub upserts: u64,
    /// Deletes (and truncates) applied.
    pub deletes: u64,
}

/// Why a sink could not apply a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Connection lost, serialization failure, deadlock: retry the same batch later.
    #[error("sink (transient): {0}")]
    Transient(String),
    /// Needs a person (permissions, missing bookkeeping tables); retried with back-off too,
    /// since nothing may be acknowledged past it.
    #[error("sink: {0}")]
    Definite(String),
}

/// A group on its way to a sink ([`Sink::send`]): resolves once it is durable or failed.
pub type InFlight =
    std::pin::Pin<Box<dyn Future<Output = Result<ApplyReport, SinkError>> + Send + 'static>>;

/// A destination for a job's changes. See the module doc for the contract.
pub trait Sink: Send + 'static {
    /// A short name for logs and metrics (`postgres`, `nats`, `parquet`).
    fn kind(&self) -> &'static str;

    /// Applies `batches` (ascending commit LSN) and returns once they are durable.
    fn apply(
        &mut self,
        batches: &[ApplyBatch],
    ) -> impl Future<Output = Result<ApplyReport, SinkError>> + Send;

    /// Starts applying `batches` (ascending commit LSN) without waiting for them to be
    /// durable, behind any groups sent before whose outcome is not settled yet: the
    /// returned [`InFlight`] resolves to what [`Sink::apply`] would have returned, and the
    /// caller hands every outcome to [`Sink::settle`], in the order sent. A group sent
    /// this way never becomes durable unless every group sent before it does (a failed
    /// one takes the later ones down with it; the caller applies them again in order).
    /// `None` when this group cannot be sent so (the caller then settles what is in
    /// flight and uses [`Sink::apply`]). The default: `None`.
    fn send(&mut self, batches: &[ApplyBatch]) -> impl Future<Output = Option<InFlight>> + Send {
        let _ = batches;
        async { None }
    }

    /// Takes the outcome of the oldest group [`Sink::send`] started that is not settled
    /// yet. The default does nothing.
    fn settle(&mut self, outcome: &Result<ApplyReport, SinkError>) {
        let _ = outcome;
    }

    /// Applies one transaction that arrived in parts and was spilled to disk, as a whole
    /// (never half of it for a tenant), and returns once it is durable. The default reads
    /// it back into memory and calls [`Sink::apply`]; a sink that can write a transaction
    /// in pieces reads it part by part ([`SpilledTxn::parts`]), so memory stays bounded.
    fn apply_large(
        &mut self,
        txn: &mut SpilledTxn,
    ) -> impl Future<Output = Result<ApplyReport, SinkError>> + Send {
        async move {
            let whole = txn
                .read_all()
                .map_err(|e| SinkError::Definite(e.to_string()))?;
            self.apply(std::slice::from_ref(&whole)).await
        }
    }

    /// Applies one large transaction while its parts still arrive ([`LiveParts`]: each
    /// is spilled before the sink sees it), as a whole, and returns once it is durable.
    /// On an error the caller takes the rest of the parts into the spill file and retries
    /// with [`Sink::apply_large`]. The default takes every part first, then calls
    /// [`Sink::apply_large`]; a sink that writes a transaction in pieces inside one target
    /// transaction overrides it, so the target works while the rest arrives.
    fn apply_large_live<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        parts: &mut LiveParts<'_, F>,
    ) -> impl Future<Output = Result<ApplyReport, SinkError>> + Send {
        async move {
            parts
                .finish()
                .await
                .map_err(|e| SinkError::Transient(e.to_string()))?;
            self.apply_large(parts.spill()).await
        }
    }

    /// The round trip to the sink's target as last measured: at connect, and for a sink
    /// that samples it again while connected (the PostgreSQL sink, in its upkeep), the
    /// recent samples' shortest (`None`: not measured). The default: `None`.
    fn round_trip(&self) -> Option<std::time::Duration> {
        None
    }

    /// The tables the sink keeps in error state, with why (`None`: a sink without them).
    /// The default: `None`.
    fn tables_in_error(&self) -> Option<&std::collections::HashMap<String, String>> {
        None
    }

    /// Re-establishes connections after a transient error.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Upkeep that need not hold back an acknowledgement (the cold tier's compaction):
    /// called after each applied group has been reported durable (`idle == false`), and
    /// every [`worker::IDLE_UPKEEP`] while the task has nothing to apply (`idle == true`).
    /// What was applied is durable already, so a failure here loses nothing: the sink logs
    /// it. The default does nothing.
    fn upkeep(&mut self, idle: bool) -> impl Future<Output = ()> + Send {
        let _ = idle;
        async {}
    }

    /// Whether upkeep is due that needs nothing in flight (the PostgreSQL sink's
    /// round-trip sample). A task whose pipeline never empties by itself settles its
    /// groups in flight once for it, then sends again. The default: never.
    fn upkeep_due(&self) -> bool {
        false
    }

    /// Before an apply: once it is durable, every transaction this sink task was handed
    /// up to `lsn` is durable (nothing earlier is still pending). A sink may record it with
    /// the apply instead of a checkpoint per tenant. The default ignores it.
    fn set_watermark(&mut self, lsn: Lsn) {
        let _ = lsn;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::change::{fixtures, Cell, Scope, TenantAction};

    fn batch() -> ApplyBatch {
        let table = Arc::new(fixtures::table("t", &[("id", "int")], &[0]));
        let row = vec![Cell::text("1")];
        ApplyBatch {
            commit_lsn: 7,
            changes: vec![TenantChange {
                scope: Scope::Tenant("1".into()),
                seq: 0,
                table: table.clone(),
                action: TenantAction::Upsert {
                    old: None,
                    new: row.clone(),
                    insert: true,
                },
            }],
            history: vec![fixtures::opened("1", 0, &table, row, 7)],
        }
    }

    /// Each feed keeps its part of a transaction and its LSN; a copy equals the moved form.
    #[test]
    fn a_feed_keeps_only_what_its_sink_applies() {
        let full = batch();
        for (feed, changes, history) in [
            (SinkFeed::Changes, 1, 0),
            (SinkFeed::History, 0, 1),
            (SinkFeed::Both, 1, 1),
        ] {
            let copy = full.copy_for(feed);
            assert_eq!((copy.changes.len(), copy.history.len()), (changes, history));
            assert_eq!(copy.commit_lsn, 7);
            assert_eq!(copy, full.clone().into_feed(feed), "{feed:?}");
            let part = Delivery::Part(full.clone()).into_feed(feed);
            assert!(matches!(&part, Delivery::Part(_)));
            assert_eq!(part.batch().rows(), changes + history);
        }
    }
}
