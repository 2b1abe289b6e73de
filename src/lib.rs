//! HeliosDB Tenant Replication: per-tenant PostgreSQL replication through Timely dataflows.
//!
//! The data path (see ARCHITECTURE.md): [`cdc`] reads the source's pgoutput stream,
//! [`dataflow`] runs every change through a Timely dataflow whose [`operators`] partition
//! by tenant, and [`sinks`] apply the changes to their targets and report what is durable,
//! which is the only position the source ever confirms. [`control`] holds job specs and the
//! job lifecycle; [`embedded`] starts throwaway PostgreSQL clusters for the demo and tests.

pub mod api;
pub mod cdc;
pub mod change;
pub mod codec;
pub mod conninfo;
pub mod control;
pub mod dataflow;
pub mod embedded;
pub mod footprint;
pub mod inspect;
pub mod metrics;
pub mod open_files;
pub mod operators;
pub mod pg_connect;
pub mod process_memory;
pub mod sinks;
pub mod spill_dir;
pub mod sql_text;
pub mod thread_priority;
pub mod time_text;
