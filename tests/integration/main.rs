//! The one integration-test binary: every test here runs against real PostgreSQL clusters
//! that the harness starts on free ports, and the real `helios-repl` binary.

mod alerts;
mod api_https;
mod api_tokens_and_events;
mod apply_semantics;
mod backfill;
mod bad_input;
mod cold_only;
mod cold_tier;
mod harness;
mod history;
mod interrupted_transactions;
mod isolation_crash_idle;
mod job_spec_files;
mod large_transactions;
mod lost_slot;
mod nats_sink;
mod open_files;
mod preflight;
mod publication;
mod qos;
mod replication_session;
mod resync;
mod schema_per_tenant;
mod sequences;
mod serve_api;
mod session_settings;
mod snapshot_stream;
mod source_sessions;
mod spill_dir;
mod streamed_transactions;
mod table_patterns;
mod target_rules;
mod target_tables;
mod tls;
