//! The replication connection to the source: a walsender session in logical replication
//! mode (`replication=database`), spoken directly over the PostgreSQL wire protocol.
//!
//! # What it owns
//! * [`connect`](ReplicationConnection::connect): the socket (TCP or Unix), the startup
//!   message and authentication (trust, cleartext, MD5, SCRAM-SHA-256).
//! * [`simple_query`](ReplicationConnection::simple_query): replication commands with a
//!   result (`CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`, `IDENTIFY_SYSTEM`). The
//!   exported snapshot lives until the session's next command, which is how the initial copy
//!   and the stream meet without gap or overlap (see `cdc::snapshot`).
//! * [`start_logical`](ReplicationConnection::start_logical): `START_REPLICATION … LOGICAL`
//!   with pgoutput, protocol version 2 and `streaming 'on'` when the server has it (14+),
//!   so a large transaction arrives while it is still running instead of after the source
//!   has decoded and spilled all of it.
//! * [`ReplicationStream`]: the copy-both stream: XLogData and keepalive frames in, standby
//!   status updates out.
//! * `read_batching`: while the server works through a backlog, the socket wakes the
//!   reader once 16 KiB have arrived instead of for every message or two.
//!
//! # What it never does
//! * It does not decode pgoutput (that is `cdc::pgoutput`) or decide what may be confirmed
//!   (`cdc::ack`): it reports the position it is told to.
//! * No task of its own and no channel: the reader reads the socket itself, so a change
//!   crosses no thread between the server and the decoder.
//!
//! # Why not a crate
//! The message framing and SCRAM come from `postgres-protocol` (rust-postgres' own codec).
//! `pgwire-replication`, used before, always requests pgoutput protocol version 1 (no
//! streaming of in-progress transactions) and hands every message through a channel from
//! a task of its own; `pg_walstream` has version 2 but needs libpq or aws-lc-rs. The
//! session itself is small: startup, one query at a time, copy-both frames.

mod connection;
mod frames;
mod read_batching;

pub use connection::{
    ReceiveBuffer, ReplicationConnection, SourceAddress, LOOPBACK_RECEIVE_BUFFER,
};
pub use frames::{ReplicationStream, StreamFrame, StreamOptions};
pub use read_batching::ReadCounts;

/// What went wrong on the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket failed (refused, reset, timed out).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The connection string cannot be used.
    #[error("source.dsn: {0}")]
    Config(String),
    /// The server refused the login.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("{message} (SQLSTATE {code})")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Severity, message, detail and hint as one line.
        message: String,
    },
    /// The server sent something this session does not expect.
    #[error("unexpected from the server: {0}")]
    Protocol(String),
    /// The server closed the connection or ended the stream.
    #[error("the server closed the replication connection")]
    Closed,
    /// TLS could not be set up as the connection string asks.
    #[error("{0}")]
    Tls(#[from] crate::pg_connect::TlsError),
    /// Connecting took longer than the connection string's `connect_timeout`.
    #[error("connecting timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl TransportError {
    /// Whether the same request may succeed later (a lost connection, a busy slot) rather
    /// than needing someone to change something (a wrong password, a missing slot).
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Io(_) | TransportError::Closed | TransportError::Timeout(_) => true,
            TransportError::Server { code, .. } => {
                // Connection exceptions, operator intervention, insufficient resources,
                // object in use (a slot still held by a walsender that is going away).
                ["08", "57", "53"].iter().any(|c| code.starts_with(c)) || code == "55006"
            }
            TransportError::Tls(e) => e.is_transient(),
            TransportError::Config(_) | TransportError::Auth(_) | TransportError::Protocol(_) => {
                false
            }
        }
    }
}
