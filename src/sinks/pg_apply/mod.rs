//! The PostgreSQL apply sink: applies each tenant's changes to a target PostgreSQL in commit
//! order, batched into set-based statements, and writes the job's checkpoints in the same
//! target transaction (exactly-once effect).
//!
//! Files: `sink.rs` (the [`crate::sinks::Sink`] implementation), `plan.rs` (reducing
//! changes to steps), `statements.rs` (SQL for each step), `execute.rs` (running steps in
//! a target transaction: prepared statements, `COPY`, pipelining, dead letters), `target_schema.rs` (creating and
//! altering target tables), `target_rules.rs` (the target's foreign keys and triggers on
//! them), `store.rs` (checkpoints, progress, table states, dead letters),
//! `snapshot.rs` (loading the initial snapshot), `floors.rs` (what a backfill loaded, which the
//! stream must not apply again), `round_trip.rs` (the round trip to the
//! target that `max_in_flight = "auto"` decides from).

mod execute;
pub mod floors;
pub mod history;
mod part_pipeline;
#[cfg(test)]
mod pipeline_tests;
pub mod plan;
pub mod round_trip;
#[cfg(test)]
mod round_trip_tests;
pub mod sink;
pub mod snapshot;
#[cfg(test)]
mod snapshot_tests;
pub mod staged_table;
#[cfg(test)]
mod staged_table_tests;
pub mod statements;
pub mod store;
pub mod target_rules;
pub mod target_schema;

pub use sink::PgApplySink;
