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
//! - A transaction is never exposed half-applied for a tenant (invariant 3).
//! - Errors are typed: transient ones are retried with back-off by the caller and nothing
//!   is acknowledged meanwhile; a table the sink cannot apply is put in a visible error
//!   state by the sink itself, its changes kept, never dropped.

pub mod nats;
pub mod parquet;
pub mod pg_apply;
pub mod qos;
pub mod spill;
pub mod versions;
pub mod worker;

use std::future::Future;

use crate::change::{HistoryEvent, Lsn, TenantChange};
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

/// A destination for a job's changes. See the module doc for the contract.
pub trait Sink: Send + 'static {
    /// A short name for logs and metrics (`postgres`, `nats`, `parquet`).
    fn kind(&self) -> &'static str;

    /// Applies `batches` (ascending commit LSN) and returns once they are durable.
    fn apply(
        &mut self,
        batches: &[ApplyBatch],
    ) -> impl Future<Output = Result<ApplyReport, SinkError>> + Send;

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

    /// Re-establishes connections after a transient error.
    fn reconnect(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Before an apply: once it is durable, every transaction this sink task was handed
    /// up to `lsn` is durable (nothing earlier is still pending). A sink may record it with
    /// the apply instead of a checkpoint per tenant. The default ignores it.
    fn set_watermark(&mut self, lsn: Lsn) {
        let _ = lsn;
    }
}
