//! The NATS JetStream sink: compressed columnar frames per (tenant, table) on subjects
//! `<prefix>.<job>.<tenant>.<schema>.<table>`, exactly once across crashes.
//!
//! - [`sink`]: the [`Sink`](crate::sinks::Sink) implementation (stream as checkpoint,
//!   expected-sequence publishes, deterministic message ids);
//! - [`subjects`]: subject, stream and message-id naming, and the headers;
//! - [`effort`]: the CPU budget of encoding (falls back to cheaper encodings);
//! - [`compression_stats`]: what the codec chose, for the API and metrics;
//! - [`consumer`]: reads a job's stream back and decodes it (`helios-repl tail`, tests);
//! - [`access`]: how to reach the server (TLS files, credentials).

pub mod access;
pub mod compression_stats;
pub mod consumer;
pub mod effort;
pub mod sink;
pub mod subjects;

#[cfg(test)]
mod large_tests;
#[cfg(test)]
mod tests;

pub use sink::{NatsSink, NatsSinkConfig};
