//! A running job's reader: the replication stream read into the dataflow, reconnecting
//! after transient errors (and telling a slot the source invalidated from other failures),
//! closed while paused, until its control says stop.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::watch;

use crate::cdc::catalog;
use crate::cdc::error::CdcError;
use crate::cdc::stream::{self, ReaderIo, ReaderState};
use crate::cdc::transport::{ReplicationConnection, ReplicationStream, StreamOptions};
use crate::change::{format_lsn, Lsn};
use crate::control::job_control::JobState;
use crate::control::job_runner::{Desired, JobError, JobStats, ProgressStore};
use crate::control::job_spec::JobSpec;
use crate::sinks::worker::{RETRY_INITIAL, RETRY_MAX};
use crate::sinks::SinkError;

/// Waits `wait` (or until `control` changes), then doubles `wait` up to [`RETRY_MAX`].
pub(super) async fn back_off(wait: &mut Duration, control: &mut watch::Receiver<Desired>) {
    tokio::select! {
        _ = tokio::time::sleep(*wait) => {}
        _ = control.changed() => {}
    }
    *wait = (*wait * 2).min(RETRY_MAX);
}

pub(super) fn is_transient(e: &JobError) -> bool {
    match e {
        JobError::Source(e) => e.is_transient(),
        JobError::Sink(SinkError::Transient(_)) => true,
        _ => false,
    }
}

/// Reads the stream, reconnecting after transient errors and pausing on request, until
/// `control` says stop (`Ok`, with the open session if there is one) or a definite error.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_until_stopped(
    spec: &JobSpec,
    client: ReplicationStream,
    state: &mut ReaderState,
    events: &crate::cdc::event_channel::EventSender,
    wake: &(dyn Fn() + Send + Sync),
    durable: &mut watch::Receiver<Lsn>,
    store: &mut ProgressStore,
    stats: &JobStats,
    control: &mut watch::Receiver<Desired>,
) -> Result<Option<ReplicationStream>, JobError> {
    let dsn = spec.source.dsn.expose();
    let mut client = Some(client);
    let mut wait = RETRY_INITIAL;
    loop {
        let desired = *control.borrow_and_update();
        match desired {
            // The caller confirms the last durable position, then closes the stream.
            Desired::Stop => return Ok(client),
            Desired::Pause => {
                if let Some(c) = client.take() {
                    let _ = c.close().await;
                    tracing::info!(job = %spec.name, position = %format_lsn(state.tracker.confirmed()), "paused");
                }
                stats.set_state(JobState::Paused, None);
                let _ = control.changed().await;
                continue;
            }
            Desired::Run => {}
        }
        let mut active = match client.take() {
            Some(c) => c,
            None => match connect_started(spec, state.tracker.confirmed()).await {
                Ok(c) => {
                    stats.set_state(JobState::Streaming, None);
                    c
                }
                Err(e) if e.is_transient() => {
                    stats.errors.fetch_add(1, Relaxed);
                    stats.set_state(JobState::Streaming, Some(e.to_string()));
                    tracing::warn!(job = %spec.name, error = %e, retry_in_s = wait.as_secs_f32(), "cannot reconnect to the source; retrying");
                    back_off(&mut wait, control).await;
                    continue;
                }
                Err(e) => {
                    let e = match catalog::connect(dsn).await {
                        Ok(source) => unless_slot_lost(&source, &spec.source.slot, e).await,
                        Err(_) => e,
                    };
                    return Err(e.into());
                }
            },
        };
        let outcome = match catalog::connect(dsn).await {
            Ok(catalog) => {
                let io = ReaderIo {
                    client: &mut active,
                    catalog: &catalog,
                    out: events,
                    wake,
                    durable,
                    store,
                    stats: &stats.reader,
                    control,
                };
                stream::read_stream(io, state).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            // `control` changed: handled at the top of the loop.
            Ok(()) => client = Some(active),
            Err(e) if e.is_transient() => {
                stats.errors.fetch_add(1, Relaxed);
                stats.set_state(JobState::Streaming, Some(e.to_string()));
                tracing::warn!(job = %spec.name, error = %e, retry_in_s = wait.as_secs_f32(), "replication stream interrupted; reconnecting");
                drop(active);
                back_off(&mut wait, control).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `error` (starting the stream failed for good), or [`CdcError::SlotLost`] when the source
/// has invalidated the slot: the error PostgreSQL gives then does not say so plainly.
pub(super) async fn unless_slot_lost(
    source: &tokio_postgres::Client,
    slot: &str,
    error: CdcError,
) -> CdcError {
    match catalog::slot_state(source, slot).await {
        Ok(Some(state)) if state.lost => {
            tracing::warn!(slot, error = %error, "the replication stream cannot start: the source invalidated the slot");
            CdcError::SlotLost(slot.to_string())
        }
        _ => error,
    }
}

/// Opens a replication session and starts the job's stream from `start`.
pub(super) async fn connect_started(
    spec: &JobSpec,
    start: Lsn,
) -> Result<ReplicationStream, CdcError> {
    let address = stream::replication_address(
        spec.source.dsn.expose(),
        &spec.source.slot,
        spec.source.receive_buffer(),
    )?;
    let conn = ReplicationConnection::connect(&address)
        .await
        .map_err(|e| match stream::transport_error(e) {
            CdcError::Stream(m) => CdcError::Connect(m),
            other => other,
        })?;
    start_stream(spec, conn, start).await
}

/// Starts the job's pgoutput stream on an open session.
pub(super) async fn start_stream(
    spec: &JobSpec,
    conn: ReplicationConnection,
    start: Lsn,
) -> Result<ReplicationStream, CdcError> {
    let options = StreamOptions {
        publication: spec.source.publication.clone(),
        streaming: true,
    };
    conn.start_logical(&spec.source.slot, start, &options)
        .await
        .map_err(stream::transport_error)
}
