//! Turns a job into a Timely dataflow and runs its workers.
//!
//! Timestamps are commit LSNs (`u64`): every change of a source transaction carries the
//! transaction's commit LSN, and the input closes `commit_lsn + 1` when the commit arrives,
//! so a transaction is one timestamp (DESIGN.md invariant 3).
//!
//! ```text
//!  SourceEvent channel ─▶ input (worker 0) ─▶ PartitionByTenant ─exchange by tenant─▶
//!      DeliverToSinks (per worker: holds each LSN's capability until every sink says
//!      it is durable) ─▶ progress stream ─▶ durable probe ─▶ watch channel to the reader
//! ```

pub mod deliver;
pub mod host;
pub mod render;
pub mod worker;
