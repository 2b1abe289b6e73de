//! Tools for people looking at compressed streams: `explain-compression` runs the codec on
//! a table a user brings and says what it chose per column; `tail` prints a job's NATS
//! stream decoded.

pub mod explain;
pub mod tail;
