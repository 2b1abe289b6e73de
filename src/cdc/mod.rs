//! The only code that talks to the source PostgreSQL: replication connection and slot,
//! pgoutput decoding, the initial snapshot, and LSN acknowledgement.

pub mod ack;
pub mod catalog;
pub mod column_defaults;
pub mod error;
pub mod event_channel;
pub mod hand_over;
pub mod partition_watch;
pub mod pgoutput;
pub mod slot_health;
pub mod snapshot;
pub mod source_stats;
pub mod stream;
pub mod stream_spool;
pub mod table_parts;
pub mod transport;
pub mod type_names;
pub mod user_types;
pub mod watch_session;
