//! `[source]` of a job spec: the PostgreSQL database the job reads its change stream from,
//! and how its initial snapshot loads.

use serde::{Deserialize, Serialize};

use crate::cdc::transport::ReceiveBuffer;

use super::{check_dsn, check_identifier, check_slot, present, Dsn, JobSpecError};

/// Largest accepted `source.snapshot_parallel_tables`.
pub const MAX_SNAPSHOT_PARALLEL_TABLES: usize = 16;

/// The PostgreSQL database the job reads its change stream from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub dsn: Dsn,
    /// Publication name, `[a-z_][a-z0-9_]{0,62}`.
    pub publication: String,
    /// Replication slot name, `[a-z0-9_]{1,63}`.
    pub slot: String,
    /// Tables (and targets) the initial snapshot loads at once, each load on a source
    /// session of its own, `1..=16`. Default (`None`): one per core of the replicator's
    /// host, at most four.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub snapshot_parallel_tables: Option<usize>,
    /// Whether a large table's initial copy is split into ranges of pages that load side
    /// by side (up to `snapshot_parallel_tables` parts of at least 8 MiB each, on
    /// PostgreSQL 14 or later), each part in a transaction of its own. Only a table the
    /// target lacks, or one holding none of the job's tenants' rows, loads in parts; one
    /// that holds them loads in one transaction that replaces them, so readers never see
    /// them missing. `false` loads every table in one transaction. Default `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub snapshot_split_tables: bool,
    /// The replication socket's receive buffer in KiB, `16..=65536`, or `0` for the
    /// system's autotuning. Default (`None`): 64 KiB for a source on a loopback address,
    /// the system's autotuning for any other (`cdc::transport::ReceiveBuffer`). A Unix-
    /// domain socket keeps the system's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub receive_buffer_kib: Option<u32>,
}

/// Accepted `source.receive_buffer_kib` other than 0.
pub const RECEIVE_BUFFER_KIB: std::ops::RangeInclusive<u32> = 16..=65536;

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl SourceSpec {
    /// Checks the connection string, names and ranges, naming the field at fault.
    pub(super) fn validate(&self) -> Result<(), JobSpecError> {
        check_dsn("source.dsn", &self.dsn)?;
        check_identifier("source.publication", &self.publication)?;
        check_slot("source.slot", &self.slot)?;
        if let Some(n) = self.snapshot_parallel_tables {
            if !(1..=MAX_SNAPSHOT_PARALLEL_TABLES).contains(&n) {
                return Err(JobSpecError::invalid(
                    "source.snapshot_parallel_tables",
                    format!("must be between 1 and {MAX_SNAPSHOT_PARALLEL_TABLES}, got {n}"),
                ));
            }
        }
        if let Some(kib) = self.receive_buffer_kib {
            if kib != 0 && !RECEIVE_BUFFER_KIB.contains(&kib) {
                return Err(JobSpecError::invalid(
                    "source.receive_buffer_kib",
                    format!(
                        "must be 0 (the system's autotuning) or between {} and {} KiB, got {kib}",
                        RECEIVE_BUFFER_KIB.start(),
                        RECEIVE_BUFFER_KIB.end()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The replication socket's receive buffer the job asks for.
    pub fn receive_buffer(&self) -> ReceiveBuffer {
        match self.receive_buffer_kib {
            None => ReceiveBuffer::Auto,
            Some(0) => ReceiveBuffer::System,
            Some(kib) => ReceiveBuffer::Bytes(kib.saturating_mul(1024)),
        }
    }
}
