//! Errors of the source side, each marked transient (reconnect and retry with back-off) or
//! definite (the job cannot go on until someone changes something).

use crate::sql_text::describe_pg_error;

/// What went wrong talking to the source.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// The source could not be reached (refused, timed out, authentication failed).
    #[error("cannot connect to the source: {0}")]
    Connect(String),
    /// A catalog or snapshot query failed.
    #[error("source query `{what}` failed: {detail}")]
    Query {
        what: &'static str,
        detail: String,
        transient: bool,
    },
    /// The replication stream broke or sent something we cannot read.
    #[error("replication stream: {0}")]
    Stream(String),
    /// The replication stream carried a message we could not decode.
    #[error("replication stream at {lsn}: {source}")]
    Decode {
        lsn: String,
        source: crate::cdc::pgoutput::DecodeError,
    },
    /// Needs a person: wrong configuration, missing table, unusable slot.
    #[error("{0}")]
    Definite(String),
    /// The source invalidated the job's slot (it removed WAL the slot still needed, past
    /// `max_slot_wal_keep_size`): the stream cannot resume without a gap, so the job
    /// starts over with a new slot and snapshot.
    #[error("replication slot `{0}` was invalidated by the source (it removed WAL the slot still needed: max_slot_wal_keep_size)")]
    SlotLost(String),
}

impl CdcError {
    /// Builds a [`CdcError::Connect`] from a driver error.
    pub fn connect(err: crate::pg_connect::ConnectError) -> CdcError {
        if err.is_transient() {
            CdcError::Connect(err.to_string())
        } else {
            CdcError::Definite(format!("cannot connect to the source: {err}"))
        }
    }

    /// Builds a mapper to [`CdcError::Query`] naming what was being done.
    pub fn query(what: &'static str) -> impl Fn(tokio_postgres::Error) -> CdcError {
        move |err| CdcError::Query {
            what,
            transient: err.as_db_error().is_none()
                || err
                    .code()
                    .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57")),
            detail: describe_pg_error(&err),
        }
    }

    /// Whether retrying the same thing later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CdcError::Connect(_) | CdcError::Stream(_) => true,
            CdcError::Query { transient, .. } => *transient,
            CdcError::Decode { .. } | CdcError::Definite(_) | CdcError::SlotLost(_) => false,
        }
    }
}
