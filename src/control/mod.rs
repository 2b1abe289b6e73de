//! Jobs: their specs and their lifecycle (start, snapshot or resume, run, stop).

pub mod access;
pub mod access_subscriber;
pub mod backfill;
pub mod cold_history;
pub mod cold_progress;
pub mod cold_resume;
pub mod cold_seed;
pub mod coverage;
pub mod exports;
pub mod history_books;
pub mod history_query;
pub mod history_repair;
pub mod history_start;
pub mod initial_snapshot;
pub mod job_control;
pub mod job_manager;
pub mod job_monitor;
pub mod job_reader;
pub mod job_runner;
pub mod job_spec;
pub mod metadata;
pub mod preflight;
pub mod resync;
pub mod secret;
pub mod sequence_sync;
pub mod table_patterns;
