//! The embedded default: throwaway PostgreSQL clusters, and the `demo` command built on them.

pub mod demo;
pub mod pg_cluster;
