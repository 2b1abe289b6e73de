//! The replication reader: one task that reads the slot, decodes pgoutput, keeps the
//! relation cache and hands [`SourceEvent`]s to the dataflow through a bounded channel.
//!
//! # Replication
//! The transport is [`crate::cdc::transport`]: this task reads the socket itself, so a
//! change crosses no thread between the server and the decoder. Each XLogData payload is
//! one pgoutput message, decoded by [`crate::cdc::pgoutput`]. Relation messages are
//! resolved against the source catalog (type names, primary key) and cached by OID; a new
//! Relation message replaces the shape for every change after it, which is how ALTER
//! TABLE mid-stream flows through.
//!
//! # Streamed transactions
//! With protocol version 2 the server sends a transaction larger than its
//! `logical_decoding_work_mem` while it runs, in stream blocks between other
//! transactions. Each block's messages go to the transaction's
//! [`StreamSpool`] on local disk as received; at Stream Commit they are replayed as one
//! ordinary transaction (Begin, changes, Commit at the commit LSN), so the dataflow never
//! sees the difference; a Stream Abort drops them (or a subtransaction's share).
//!
//! # Acknowledgement
//! The dataflow reports its durable frontier on a watch channel; [`AckTracker`] turns that
//! and the server's keepalives into the position to confirm. Before a position is
//! confirmed to the server it is recorded in the job's progress store, so the slot can never
//! be ahead of what we know we confirmed (that is how a recreated slot is recognised).
//!
//! # Error handling
//! Connection loss ends [`read_stream`] with a transient error: the caller reconnects and
//! calls it again with the same [`ReaderState`], whose `fed_through` (the last commit
//! handed over) skips the transactions the dataflow has whole, and whose `hand_over`
//! skips the changes it has of the one it has in part (a reconnect, or a pause, inside a
//! transaction): nothing is fed twice. Undecodable messages are definite errors: nothing
//! past them is ever confirmed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::cdc::ack::AckTracker;
use crate::cdc::catalog::RelationResolver;
use crate::cdc::error::CdcError;
use crate::cdc::event_channel::{EventSender, NoRoom};
use crate::cdc::hand_over::{
    BeginAction, HandOver, NotResent, ReaderFault, CUT_MID_TRANSACTION, STALL_MID_TRANSACTION,
};
use crate::cdc::pgoutput::{self, ColumnValue, OldTuple, PgOutputMessage, TupleData};
use crate::cdc::stream_spool::StreamSpool;
use crate::cdc::transport::{
    ReadCounts, ReceiveBuffer, ReplicationStream, SourceAddress, StreamFrame, TransportError,
};
use crate::change::{
    format_lsn, Cell, CommitTimes, Lsn, OldRow, Row, RowOp, SourceRecord, TableInfo,
};

/// Events sent without waking the workers, inside one transaction.
pub const WAKE_EVERY: usize = 1024;
/// How often the reader considers confirming a new position.
pub const ACK_INTERVAL: Duration = Duration::from_millis(500);
/// How often a standby status update goes to the server when the position did not move
/// (the server times out a client that stays silent for `wal_sender_timeout`).
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
    /// Transactions the server streamed while in progress (protocol version 2), applied
    /// at their commit.
    pub streamed_txns: std::sync::atomic::AtomicU64,
    /// Reads of the replication socket that returned data.
    pub socket_reads: std::sync::atomic::AtomicU64,
    /// Of them, reads that waited for a batch (`cdc::transport`'s read batching).
    pub batched_reads: std::sync::atomic::AtomicU64,
    /// The job's tables renamed on the source while it runs: the job's name → the
    /// source's ([`keep_job_name`]).
    pub renamed_tables: RenamedTables,
}

/// The job's tables renamed on the source: the job's name → the source's.
pub type RenamedTables = Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>;

/// Where a job's replication session connects (its slot names the application), with
/// its socket's receive buffer.
pub fn replication_address(
    dsn: &str,
    slot: &str,
    receive_buffer: ReceiveBuffer,
) -> Result<SourceAddress, CdcError> {
    SourceAddress::from_dsn(dsn, &format!("helios-repl {slot}"))
        .map(|a| a.with_receive_buffer(receive_buffer))
        .map_err(transport_error)
}

/// A transport error as a source error: transient ones are retried by the caller.
pub fn transport_error(e: TransportError) -> CdcError {
    if e.is_transient() {
        CdcError::Stream(e.to_string())
    } else {
        CdcError::Definite(format!("replication connection: {e}"))
    }
}

/// State that survives reconnects of the reader.
pub struct ReaderState {
    /// Which positions may be confirmed.
    pub tracker: AckTracker,
    /// The last commit LSN handed to the dataflow; replays up to it are skipped.
    pub fed_through: Lsn,
    /// The transaction handed to the dataflow in part, if any: after a reconnect its
    /// changes the dataflow has are not fed again.
    pub hand_over: HandOver,
    /// Events sent since the workers were last woken.
    unwoken: usize,
    /// Relation cache by OID.
    relations: HashMap<u32, Arc<TableInfo>>,
    /// Streamed transactions not yet committed or aborted.
    spool: StreamSpool,
    resolver: RelationResolver,
    /// The job's tables by OID, as its spec names them (schema, name).
    table_names: HashMap<u32, (String, String)>,
    /// Where the tables found renamed are told ([`ReaderStats::renamed_tables`]).
    renamed_tables: RenamedTables,
}

impl ReaderState {
    /// Fresh state starting at the slot's confirmed position.
    pub fn new(confirmed: Lsn) -> ReaderState {
        ReaderState {
            tracker: AckTracker::new(confirmed),
            fed_through: 0,
            hand_over: HandOver::from_env(),
            unwoken: 0,
            relations: HashMap::new(),
            spool: StreamSpool::default(),
            resolver: RelationResolver::default(),
            table_names: HashMap::new(),
            renamed_tables: RenamedTables::default(),
        }
    }

    /// With the job's tables by OID, as its spec names them (schema, name): a table
    /// renamed on the source (or moved to another schema) keeps the publication and its
    /// OID, and its changes keep the name the job knows it by ([`keep_job_name`]) instead
    /// of going unreplicated under a name the job does not carry. Those found are told
    /// in `renamed` (the job's status shows them).
    pub fn with_table_names(
        mut self,
        names: HashMap<u32, (String, String)>,
        renamed: RenamedTables,
    ) -> ReaderState {
        self.table_names = names;
        self.renamed_tables = renamed;
        self
    }
}

/// `info` under the name the job knows its relation by, if `names` (by OID) has another
/// one: the table was renamed on the source while the job ran. Logged, since the job's
/// next start looks its tables up by name.
pub fn keep_job_name(
    info: Arc<TableInfo>,
    names: &HashMap<u32, (String, String)>,
) -> Arc<TableInfo> {
    let Some((schema, name)) = names.get(&info.oid) else {
        return info;
    };
    if info.schema == *schema && info.name == *name {
        return info;
    }
    let job_name = format!("{schema}.{name}");
    tracing::warn!(source_name = %info.qualified_name(), job_name = %job_name,
        "a table of the job was renamed on the source: its changes keep going to the job's table of its old name until the job starts again. A table the spec names outright: name it as the source does now in the spec (and rename the targets' table) before then, since a start looks tables up by name. A table a pattern carries: the next start carries the new name if the pattern matches it, as a new table loaded whole (with tenant_from = \"schema\", as the tenant its new schema names), and the targets' table of the old name keeps its rows, no longer kept up to date");
    let mut renamed = (*info).clone();
    renamed.schema = schema.clone();
    renamed.name = name.clone();
    Arc::new(renamed)
}

/// Everything [`read_stream`] talks to.
pub struct ReaderIo<'a, S: ConfirmedStore, C> {
    /// The started replication stream.
    pub client: &'a mut ReplicationStream,
    /// A catalog connection to the source (type names, primary keys).
    pub catalog: &'a tokio_postgres::Client,
    /// Where events go (bounded: back-pressure reaches the server through TCP).
    pub out: &'a EventSender,
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
    mut io: ReaderIo<'_, S, C>,
    state: &mut ReaderState,
) -> Result<(), CdcError> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut ack_tick = tokio::time::interval(ACK_INTERVAL);
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut txn = OpenTxn::default();
    // After a reconnect the server streams open transactions again from their start.
    state.spool.clear();
    let mut reads_counted = ReadCounts::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = io.control.changed() => return Ok(()),
            _ = ack_tick.tick() => {
                count_reads(&io, &mut reads_counted);
                confirm_and_report(&mut io, state).await?;
                continue;
            }
            frame = io.client.recv() => frame.map_err(transport_error)?,
        };
        let (data, wal_start, send_time) = match frame {
            StreamFrame::KeepAlive {
                wal_end,
                reply_requested,
            } => {
                io.stats.server_wal_end.fetch_max(wal_end, Relaxed);
                state.tracker.on_keepalive(wal_end);
                if reply_requested {
                    io.client
                        .send_status(false)
                        .await
                        .map_err(transport_error)?;
                }
                continue;
            }
            StreamFrame::XLogData {
                data,
                wal_start,
                send_time,
                ..
            } => (data, wal_start, send_time),
        };
        io.stats
            .bytes_received
            .fetch_add(data.len() as u64, Relaxed);
        let decode_error = |source| CdcError::Decode {
            lsn: format_lsn(wal_start),
            source,
        };
        // Inside a stream block everything up to Stream Stop belongs to the streamed
        // transaction: spooled as received, decoded when it commits.
        if let Some(xid) = txn.stream_block {
            let tag = data.first().copied().unwrap_or_default();
            if tag != b'E' {
                let subxid = match pgoutput::streamed_xid(&data).map_err(decode_error)? {
                    Some(subxid) => subxid,
                    // An origin is the only message without an xid a block may hold.
                    None if tag == b'O' => xid,
                    None => {
                        return Err(CdcError::Stream(format!(
                            "message {:?} at {} inside the stream block of transaction {xid}",
                            char::from(tag),
                            format_lsn(wal_start)
                        )))
                    }
                };
                state
                    .spool
                    .append(xid, subxid, wal_start, &data)
                    .map_err(spool_error)?;
                continue;
            }
        }
        match pgoutput::decode(&data).map_err(decode_error)? {
            PgOutputMessage::Begin(begin) => {
                io.client
                    .saw_begin(send_time.saturating_sub(begin.commit_time_micros));
                txn.seq = 0;
                txn.skipping = begin.final_lsn <= state.fed_through;
                if !txn.skipping {
                    begin_txn(&mut io, state, begin.final_lsn, begin.commit_time_micros).await?;
                }
            }
            PgOutputMessage::Commit(commit) => {
                io.stats.server_wal_end.fetch_max(commit.end_lsn, Relaxed);
                if !std::mem::take(&mut txn.skipping) {
                    commit_txn(
                        &mut io,
                        state,
                        commit.commit_lsn,
                        commit.end_lsn,
                        commit.commit_time_micros,
                    )
                    .await?;
                }
            }
            PgOutputMessage::StreamStart(start) => {
                io.client.saw_block_start();
                txn.stream_block = Some(start.xid);
            }
            PgOutputMessage::StreamStop => {
                io.client.saw_block_end();
                if txn.stream_block.take().is_none() {
                    return Err(CdcError::Stream(format!(
                        "Stream Stop at {} outside a stream block",
                        format_lsn(wal_start)
                    )));
                }
            }
            PgOutputMessage::StreamAbort(abort) => {
                if state.spool.abort(abort.xid, abort.subxid) {
                    tracing::info!(
                        xid = abort.xid,
                        "streamed transaction aborted; its spool is dropped"
                    );
                }
            }
            PgOutputMessage::StreamCommit(commit) => {
                io.stats.server_wal_end.fetch_max(commit.end_lsn, Relaxed);
                replay_streamed(&mut io, state, commit).await?;
            }
            message => {
                if let Some(record) = to_record(message, state, io.catalog, &mut txn.seq).await? {
                    if !txn.skipping {
                        feed_change(&mut io, state, record).await?;
                        if let Some(fault) = state.hand_over.fault_due() {
                            return at_fault(&mut io, fault).await;
                        }
                    }
                }
            }
        }
    }
}

/// Adds the socket reads since the last count to the stats (the stream's counts start at
/// zero with each connection).
fn count_reads<S: ConfirmedStore, C>(io: &ReaderIo<'_, S, C>, counted: &mut ReadCounts) {
    use std::sync::atomic::Ordering::Relaxed;
    let now = io.client.read_counts();
    io.stats
        .socket_reads
        .fetch_add(now.reads.saturating_sub(counted.reads), Relaxed);
    io.stats
        .batched_reads
        .fetch_add(now.batched.saturating_sub(counted.batched), Relaxed);
    *counted = now;
}

/// The transaction being read.
#[derive(Debug, Default)]
struct OpenTxn {
    /// Position of the next change inside it.
    seq: u32,
    /// It was handed over before a reconnect: its replay is not fed again.
    skipping: bool,
    /// The streamed transaction whose stream block is open (protocol version 2).
    stream_block: Option<u32>,
}

fn spool_error(e: crate::cdc::stream_spool::SpoolError) -> CdcError {
    // Local disk: the reader stops, nothing past the transaction was confirmed, and the
    // server streams it again after the restart.
    CdcError::Stream(format!("cannot keep a streamed transaction: {e}"))
}

/// Hands the start of a transaction to the dataflow.
/// (A transaction handed over in part before a reconnect, sent again, goes on where the
/// dataflow's part of it ends: see [`HandOver`].)
async fn begin_txn<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
    commit_lsn: Lsn,
    commit_time_micros: i64,
) -> Result<(), CdcError> {
    state.tracker.on_begin();
    // Known from the start: the version books apply a large transaction before its end.
    io.stats.commit_times.record(commit_lsn, commit_time_micros);
    match state.hand_over.begin(commit_lsn).map_err(not_resent)? {
        BeginAction::Resume { skip } => {
            tracing::info!(lsn = %format_lsn(commit_lsn), skip,
                "the transaction read in part before the reconnect comes again: the changes the dataflow has are skipped");
            Ok(())
        }
        BeginAction::Feed => {
            let event = SourceEvent::Begin {
                commit_lsn,
                commit_time_micros,
            };
            send(io, state, event).await
        }
    }
}

/// Hands one change of the open transaction to the dataflow, unless it has it already
/// (the transaction was read in part before a reconnect).
async fn feed_change<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
    record: SourceRecord,
) -> Result<(), CdcError> {
    if !state.hand_over.take_change() {
        return Ok(());
    }
    send(io, state, SourceEvent::Record(record)).await?;
    state.hand_over.fed_change();
    Ok(())
}

fn not_resent(e: NotResent) -> CdcError {
    CdcError::Definite(e.to_string())
}

/// A fault point of the tests (`hand_over`): stall until told to stop or pause, as a stop
/// landing inside a transaction does, or cut the connection.
async fn at_fault<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    fault: ReaderFault,
) -> Result<(), CdcError> {
    match fault {
        ReaderFault::Stall => {
            tracing::warn!(
                "fault point {STALL_MID_TRANSACTION}: the reader stops reading inside a transaction until told to stop or pause"
            );
            let _ = io.control.changed().await;
            Ok(())
        }
        ReaderFault::Cut => Err(CdcError::Stream(format!(
            "fault point {CUT_MID_TRANSACTION}: the connection is cut inside a transaction"
        ))),
    }
}

/// Hands a transaction's commit to the dataflow and starts tracking it for the ack.
async fn commit_txn<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time_micros: i64,
) -> Result<(), CdcError> {
    state.hand_over.commit().map_err(not_resent)?;
    state
        .tracker
        .on_commit(commit_lsn, end_lsn, commit_time_micros);
    io.stats.commit_times.record(commit_lsn, commit_time_micros);
    state.fed_through = commit_lsn;
    let event = SourceEvent::Commit {
        commit_lsn,
        end_lsn,
        commit_time_micros,
    };
    send(io, state, event).await
}

/// A Stream Commit: the transaction's spooled messages go to the dataflow as one ordinary
/// transaction (Relation messages among them update the cache in stream order).
async fn replay_streamed<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
    commit: pgoutput::StreamCommit,
) -> Result<(), CdcError> {
    let skipping = commit.commit_lsn <= state.fed_through;
    let mut replay = state.spool.take(commit.xid).map_err(spool_error)?;
    if let Some(r) = &replay {
        tracing::info!(xid = commit.xid, lsn = %format_lsn(commit.commit_lsn), spooled_bytes = r.bytes(), skipping,
            "streamed transaction committed; replaying it from its spool");
    }
    if !skipping {
        begin_txn(io, state, commit.commit_lsn, commit.commit_time_micros).await?;
    }
    let mut seq = 0;
    // A replay can take long: the server still hears from us meanwhile.
    let mut reported = std::time::Instant::now();
    while let Some((wal_start, message)) = match replay.as_mut() {
        Some(r) => r.next_message().map_err(spool_error)?,
        None => None,
    } {
        let streamed = pgoutput::decode_in_stream(&message).map_err(|source| CdcError::Decode {
            lsn: format_lsn(wal_start),
            source,
        })?;
        if let Some(record) = to_record(streamed.message, state, io.catalog, &mut seq).await? {
            if !skipping {
                feed_change(io, state, record).await?;
            }
        }
        if reported.elapsed() >= ACK_INTERVAL {
            confirm_and_report(io, state).await?;
            reported = std::time::Instant::now();
        }
    }
    if skipping {
        return Ok(());
    }
    io.stats
        .streamed_txns
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    commit_txn(
        io,
        state,
        commit.commit_lsn,
        commit.end_lsn,
        commit.commit_time_micros,
    )
    .await
}

/// Confirms what may be confirmed and tells the server when its position moved (or a
/// status interval passed without a word).
async fn confirm_and_report<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
) -> Result<(), CdcError> {
    confirm(&mut *io.store, io.client, state, io.durable, io.stats).await?;
    io.client
        .send_status_if_due(STATUS_INTERVAL)
        .await
        .map_err(transport_error)
}

/// Hands an event to the dataflow. The workers are woken (a futex per worker) only when
/// there is work they can finish: at a commit, and every [`WAKE_EVERY`] events inside a
/// large transaction so they drain the channel while it streams. While the dataflow is
/// full the reader keeps confirming and answering the server, so a long stall of the
/// sinks does not time the session out.
async fn send<S: ConfirmedStore, C>(
    io: &mut ReaderIo<'_, S, C>,
    state: &mut ReaderState,
    event: SourceEvent,
) -> Result<(), CdcError> {
    let commit = matches!(event, SourceEvent::Commit { .. });
    let stopped = || CdcError::Stream("the dataflow stopped taking changes".into());
    let out = io.out;
    let permit = match out.try_reserve(&event) {
        Ok(p) => p,
        Err(NoRoom::Closed) => return Err(stopped()),
        Err(NoRoom::Full) => {
            // The workers may be parked with a full channel: let them drain it.
            (io.wake)();
            state.unwoken = 0;
            loop {
                tokio::select! {
                    p = out.reserve(&event) => break p.map_err(|_| stopped())?,
                    _ = tokio::time::sleep(ACK_INTERVAL) => confirm_and_report(io, state).await?,
                }
            }
        }
    };
    permit.send(event);
    state.unwoken += 1;
    if commit || state.unwoken >= WAKE_EVERY {
        (io.wake)();
        state.unwoken = 0;
    }
    Ok(())
}

/// Confirms whatever the tracker allows, recording it first; the stream reports it to
/// the server with its next status update.
pub async fn confirm<S: ConfirmedStore>(
    store: &mut S,
    client: &mut ReplicationStream,
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
    client: &mut ReplicationStream,
    state: &mut ReaderState,
    stats: &ReaderStats,
) -> Result<(), CdcError> {
    if let Some(lsn) = state.tracker.advance() {
        store
            .store_confirmed(lsn)
            .await
            .map_err(|e| CdcError::Stream(format!("cannot record confirmed position: {e}")))?;
        client.set_applied(lsn);
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
            let resolved = state.resolver.resolve(catalog, &rel).await?;
            let info = keep_job_name(resolved.clone(), &state.table_names);
            if state.table_names.contains_key(&rel.oid) {
                if let Ok(mut renamed) = state.renamed_tables.lock() {
                    if Arc::ptr_eq(&info, &resolved) {
                        renamed.remove(&info.qualified_name());
                    } else {
                        renamed.insert(info.qualified_name(), resolved.qualified_name());
                    }
                }
            }
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
        PgOutputMessage::StreamStart(_)
        | PgOutputMessage::StreamStop
        | PgOutputMessage::StreamCommit(_)
        | PgOutputMessage::StreamAbort(_) => {
            return Err(CdcError::Stream(
                "a stream control message inside a streamed transaction".into(),
            ))
        }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::keep_job_name;
    use crate::change::fixtures;

    #[test]
    fn a_relation_renamed_on_the_source_keeps_the_name_the_job_knows_it_by() {
        let names = HashMap::from([(1, ("app".to_string(), "t".to_string()))]);
        let same = Arc::new(fixtures::table("t", &[("id", "integer")], &[0]));
        assert!(Arc::ptr_eq(&keep_job_name(same.clone(), &names), &same));
        let mut moved = fixtures::table("t_v2", &[("id", "integer")], &[0]);
        moved.schema = "archive".into();
        let kept = keep_job_name(Arc::new(moved.clone()), &names);
        assert_eq!(kept.qualified_name(), "app.t");
        assert_eq!(kept.columns, moved.columns);
        // A relation the job does not know by OID keeps its own name.
        moved.oid = 2;
        assert_eq!(
            keep_job_name(Arc::new(moved), &names).qualified_name(),
            "archive.t_v2"
        );
    }
}
