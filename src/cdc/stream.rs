//! The replication reader: one task that reads the slot, decodes pgoutput, keeps the
//! relation cache and hands [`SourceEvent`]s to the dataflow through a bounded channel.
//!
//! # Replication
//! The transport is `pgwire-replication` (START_REPLICATION, keepalives, standby status
//! updates). Each XLogData payload is one pgoutput message, decoded by
//! [`crate::cdc::pgoutput`]. Relation messages are resolved against the source catalog
//! (type names, primary key) and cached by OID; a new Relation message replaces the shape
//! for every change after it, which is how ALTER TABLE mid-stream flows through.
//!
//! # Acknowledgement
//! The dataflow reports its durable frontier on a watch channel; [`AckTracker`] turns that
//! and the server's keepalives into the position to confirm. Before a position is
//! confirmed to the server it is recorded in the job's progress store, so the slot can never
//! be ahead of what we know we confirmed (that is how a recreated slot is recognised).
//!
//! # Error handling
//! Connection loss ends [`read_stream`] with a transient error: the caller reconnects and
//! calls it again with `skip_through` set to the last commit already handed over, so the
//! replayed prefix is not fed twice. Undecodable messages are definite errors: nothing past
//! them is ever confirmed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::{mpsc, watch};

use crate::cdc::ack::AckTracker;
use crate::cdc::catalog::RelationResolver;
use crate::cdc::error::CdcError;
use crate::cdc::pgoutput::{self, ColumnValue, OldTuple, PgOutputMessage, TupleData};
use crate::change::{
    format_lsn, Cell, CommitTimes, Lsn, OldRow, Row, RowOp, SourceRecord, TableInfo,
};

/// Events sent without waking the workers, inside one transaction.
pub const WAKE_EVERY: usize = 1024;
/// How often the reader considers confirming a new position.
pub const ACK_INTERVAL: Duration = Duration::from_millis(500);
/// How often the transport sends standby status updates (also the wait for a last one).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// What the reader hands to the dataflow, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A transaction that will commit at `commit_lsn` starts.
    Begin {
        commit_lsn: Lsn,
        commit_time_micros: i64,
    },
    /// One change of the open transaction.
    Record(SourceRecord),
    /// The open transaction committed; its commit record ends at `end_lsn`.
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros: i64,
    },
}

/// Records a position before it is confirmed to the server.
pub trait ConfirmedStore: Send {
    /// Makes `lsn` durable as the job's confirmed position.
    fn store_confirmed(&mut self, lsn: Lsn) -> impl Future<Output = Result<(), String>> + Send;
}

/// Counters the reader keeps for progress lines and metrics.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Bytes of pgoutput payload received.
    pub bytes_received: std::sync::atomic::AtomicU64,
    /// The latest WAL position the server reported.
    pub server_wal_end: std::sync::atomic::AtomicU64,
    /// The position confirmed to the server.
    pub confirmed: std::sync::atomic::AtomicU64,
    /// Commit time (µs since 2000-01-01) of the oldest transaction not yet durable; 0 if none.
    pub oldest_pending_commit: std::sync::atomic::AtomicI64,
    /// Transactions received and not yet durable.
    pub in_flight: std::sync::atomic::AtomicU64,
    /// Commit times of transactions not yet durable.
    pub commit_times: CommitTimes,
}

/// Replication-connection settings from a libpq DSN (key=value or URL).
pub fn replication_config(
    dsn: &str,
    slot: &str,
    publication: &str,
    start: Lsn,
) -> Result<ReplicationConfig, CdcError> {
    let cfg: tokio_postgres::Config = dsn
        .parse()
        .map_err(|e| CdcError::Definite(format!("source.dsn: cannot parse: {e}")))?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg
        .get_user()
        .ok_or_else(|| CdcError::Definite("source.dsn: no user given".into()))?
        .to_string();
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = cfg.get_dbname().unwrap_or(&user).to_string();
    Ok(
        ReplicationConfig::new(host, user, password, database, slot, publication)
            .with_port(port)
            .with_start_lsn(WireLsn::from_u64(start))
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(Duration::from_secs(5))
            .with_buffer_size(4096)
            .with_application_name(format!("helios-repl {slot}")),
    )
}

/// State that survives reconnects of the reader.
pub struct ReaderState {
    /// Which positions may be confirmed.
    pub tracker: AckTracker,
    /// The last commit LSN handed to the dataflow; replays up to it are skipped.
    pub fed_through: Lsn,
    /// Relation cache by OID.
    relations: HashMap<u32, Arc<TableInfo>>,
    resolver: RelationResolver,
}

impl ReaderState {
    /// Fresh state starting at the slot's confirmed position.
    pub fn new(confirmed: Lsn) -> ReaderState {
        ReaderState {
            tracker: AckTracker::new(confirmed),
            fed_through: 0,
            relations: HashMap::new(),
            resolver: RelationResolver::default(),
        }
    }
}

/// Everything [`read_stream`] talks to.
pub struct ReaderIo<'a, S: ConfirmedStore, C> {
    /// The started replication session.
    pub client: &'a mut ReplicationClient,
    /// A catalog connection to the source (type names, primary keys).
    pub catalog: &'a tokio_postgres::Client,
    /// Where events go (bounded: back-pressure reaches the server through TCP).
    pub out: &'a mpsc::Sender<SourceEvent>,
    /// Wakes the dataflow worker after a send.
    pub wake: &'a (dyn Fn() + Send + Sync),
    /// Every commit LSN below this is durable at every sink.
    pub durable: &'a mut watch::Receiver<Lsn>,
    /// Where a position is recorded before it is confirmed.
    pub store: &'a mut S,
    /// Counters for progress and metrics.
    pub stats: &'a ReaderStats,
    /// The reader returns as soon as this changes (stop, pause).
    pub control: &'a mut watch::Receiver<C>,
}

/// Reads the stream until shutdown (`Ok`) or an error.
pub async fn read_stream<S: ConfirmedStore, C>(
    io: ReaderIo<'_, S, C>,
    state: &mut ReaderState,
) -> Result<(), CdcError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut skipping = false;
    let mut unwoken = 0usize;
    let mut seq: u32 = 0;
    loop {
        let event = tokio::select! {
            biased;
            _ = io.control.changed() => return Ok(()),
            _ = ack_tick.tick() => {
                confirm(&mut *io.store, io.client, state, io.durable, io.stats).await?;
                continue;
            }
            ev = io.client.recv() => ev,
        };
        let event = match event {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                return Err(CdcError::Stream(
                    "the server ended the replication stream".into(),
                ))
            }
            Err(e) => return Err(CdcError::Stream(e.to_string())),
        };
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                io.stats.server_wal_end.fetch_max(wal_end.as_u64(), Relaxed);
                state.tracker.on_keepalive(wal_end.as_u64());
            }
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                let commit_lsn = final_lsn.as_u64();
                seq = 0;
                skipping = commit_lsn <= state.fed_through;
                if !skipping {
                    state.tracker.on_begin();
                    send(
                        &io,
                        SourceEvent::Begin {
                            commit_lsn,
                            commit_time_micros,
                        },
                        &mut unwoken,
                    )
                    .await?;
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                io.stats.server_wal_end.fetch_max(end_lsn.as_u64(), Relaxed);
                if skipping {
                    skipping = false;
                    continue;
                }
                state
                    .tracker
                    .on_commit(lsn.as_u64(), end_lsn.as_u64(), commit_time_micros);
                io.stats
                    .commit_times
                    .record(lsn.as_u64(), commit_time_micros);
                state.fed_through = lsn.as_u64();
                send(
                    &io,
                    SourceEvent::Commit {
                        commit_lsn: lsn.as_u64(),
                        end_lsn: end_lsn.as_u64(),
                        commit_time_micros,
                    },
                    &mut unwoken,
                )
                .await?;
            }
            ReplicationEvent::XLogData {
                data, wal_start, ..
            } => {
                io.stats
                    .bytes_received
                    .fetch_add(data.len() as u64, Relaxed);
                let message = pgoutput::decode(&data).map_err(|source| CdcError::Decode {
                    lsn: format_lsn(wal_start.as_u64()),
                    source,
                })?;
                if let Some(record) = to_record(message, state, io.catalog, &mut seq).await? {
                    if !skipping {
                        send(&io, SourceEvent::Record(record), &mut unwoken).await?;
                    }
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => return Ok(()),
        }
    }
}

/// Hands an event to the dataflow. The workers are woken (a futex per worker) only when
/// there is work they can finish: at a commit, and every [`WAKE_EVERY`] events inside a
/// large transaction so they drain the channel while it streams.
async fn send<S: ConfirmedStore, C>(
    io: &ReaderIo<'_, S, C>,
    event: SourceEvent,
    unwoken: &mut usize,
) -> Result<(), CdcError> {
    let commit = matches!(event, SourceEvent::Commit { .. });
    io.out
        .send(event)
        .await
        .map_err(|_| CdcError::Stream("the dataflow stopped taking changes".into()))?;
    *unwoken += 1;
    if commit || *unwoken >= WAKE_EVERY {
        (io.wake)();
        *unwoken = 0;
    }
    Ok(())
}

/// Confirms whatever the tracker allows, recording it first.
pub async fn confirm<S: ConfirmedStore>(
    store: &mut S,
    client: &ReplicationClient,
    state: &mut ReaderState,
    durable: &mut watch::Receiver<Lsn>,
    stats: &ReaderStats,
) -> Result<(), CdcError> {
    let frontier = *durable.borrow_and_update();
    state.tracker.on_durable(frontier);
    stats.commit_times.forget_below(frontier);
    let result = advance_confirmed(store, client, state, stats).await;
    let oldest = state.tracker.oldest_pending_commit_time().unwrap_or(0);
    stats
        .oldest_pending_commit
        .store(oldest, std::sync::atomic::Ordering::Relaxed);
    stats.in_flight.store(
        state.tracker.in_flight() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    result
}

async fn advance_confirmed<S: ConfirmedStore>(
    store: &mut S,
    client: &ReplicationClient,
    state: &mut ReaderState,
    stats: &ReaderStats,
) -> Result<(), CdcError> {
    if let Some(lsn) = state.tracker.advance() {
        store
            .store_confirmed(lsn)
            .await
            .map_err(|e| CdcError::Stream(format!("cannot record confirmed position: {e}")))?;
        client.update_applied_lsn(WireLsn::from_u64(lsn));
        stats
            .confirmed
            .store(lsn, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(lsn = %format_lsn(lsn), "confirmed");
    }
    Ok(())
}

/// Turns one decoded message into a dataflow record (or updates the relation cache).
async fn to_record(
    message: PgOutputMessage,
    state: &mut ReaderState,
    catalog: &tokio_postgres::Client,
    seq: &mut u32,
) -> Result<Option<SourceRecord>, CdcError> {
    let relation = |state: &ReaderState, oid: u32| {
        state.relations.get(&oid).cloned().ok_or_else(|| {
            CdcError::Definite(format!(
                "replication stream: change for relation {oid} before its Relation message"
            ))
        })
    };
    let record = match message {
        PgOutputMessage::Relation(rel) => {
            let info = state.resolver.resolve(catalog, &rel).await?;
            if state
                .relations
                .get(&rel.oid)
                .is_some_and(|old| old.columns != info.columns)
            {
                tracing::info!(table = %info.qualified_name(), columns = info.columns.len(), "table shape changed");
            }
            state.relations.insert(rel.oid, info);
            return Ok(None);
        }
        PgOutputMessage::Insert(m) => {
            let table = relation(state, m.relation_oid)?;
            let new = to_row(&table, m.new)?;
            SourceRecord::Change {
                seq: *seq,
                table,
                op: RowOp::Insert { new },
            }
        }
        PgOutputMessage::Update(m) => {
            let table = relation(state, m.relation_oid)?;
            let old = m.old.map(|o| to_old_row(&table, o)).transpose()?;
            let new = to_row(&table, m.new)?;
            SourceRecord::Change {
                seq: *seq,
                table,
                op: RowOp::Update { old, new },
            }
        }
        PgOutputMessage::Delete(m) => {
            let table = relation(state, m.relation_oid)?;
            let old = to_old_row(&table, m.old)?;
            SourceRecord::Change {
                seq: *seq,
                table,
                op: RowOp::Delete { old },
            }
        }
        PgOutputMessage::Truncate(m) => {
            let mut tables = Vec::with_capacity(m.relation_oids.len());
            for oid in m.relation_oids {
                tables.push(relation(state, oid)?);
            }
            SourceRecord::Truncate { seq: *seq, tables }
        }
        PgOutputMessage::Begin(_)
        | PgOutputMessage::Commit(_)
        | PgOutputMessage::Origin(_)
        | PgOutputMessage::Type(_)
        | PgOutputMessage::Message(_) => return Ok(None),
    };
    *seq += 1;
    Ok(Some(record))
}

fn to_old_row(table: &TableInfo, old: OldTuple) -> Result<OldRow, CdcError> {
    Ok(match old {
        OldTuple::Key(t) => OldRow::Key(to_row(table, t)?),
        OldTuple::Full(t) => OldRow::Full(to_row(table, t)?),
    })
}

/// Decodes a pgoutput tuple into a row of the table's current shape.
pub fn to_row(table: &TableInfo, tuple: TupleData) -> Result<Row, CdcError> {
    if tuple.0.len() != table.columns.len() {
        return Err(CdcError::Definite(format!(
            "replication stream: a tuple of {} has {} columns, its Relation message {}",
            table.qualified_name(),
            tuple.0.len(),
            table.columns.len()
        )));
    }
    tuple
        .0
        .into_iter()
        .map(|v| match v {
            ColumnValue::Null => Ok(Cell::Null),
            ColumnValue::UnchangedToast => Ok(Cell::Unchanged),
            ColumnValue::Text(t) => Ok(Cell::Text(t)),
            ColumnValue::Binary(_) => Err(CdcError::Definite(format!(
                "replication stream: binary value for {} in a text-mode stream",
                table.qualified_name()
            ))),
        })
        .collect()
}
