//! A snapshot's versions written into the Parquet cold tier as they are read, never
//! held whole: the reading (async) side hands rows in chunks over a small channel to a
//! blocking writer, which streams each tenant's rows into staged files with the rows
//! waiting for their row groups bounded as a large transaction's are
//! ([`crate::sinks::parquet::large_txn`]), and publishes every tenant's files with one
//! manifest update once the last chunk is marked. A read that fails, or a writer whose
//! input ends unmarked, publishes nothing; the staged files go at the next recovery.

use std::collections::{BTreeMap, HashMap};

use futures_util::{Stream, StreamExt};

use crate::sinks::parquet::large_txn::{LargeWrite, LargeWriteError};
use crate::sinks::parquet::sink::OpenWriter;
use crate::sinks::parquet::{ColdColumn, ColdRow};
use crate::sinks::SinkError;

/// Rows handed from the reading side to the writing one at a time.
const CHUNK_ROWS: usize = 10_000;

/// What the reading side hands the writing one.
#[derive(Debug)]
pub enum SnapshotChunk {
    /// Versions read, with their tenants.
    Rows(Vec<(String, ColdRow)>),
    /// Every version was read: the writer may publish.
    End,
}

/// The writing side's input: chunks as the reading side sends them.
pub struct Chunks(tokio::sync::mpsc::Receiver<SnapshotChunk>);

impl Iterator for Chunks {
    type Item = SnapshotChunk;

    fn next(&mut self) -> Option<SnapshotChunk> {
        self.0.blocking_recv()
    }
}

/// One root's write in progress and the writers it took.
pub type RootWrite<'a> = (LargeWrite<'a>, HashMap<(String, String), OpenWriter>);

/// Reads `rows` (tenant and version each) and hands them in chunks to `write`, run on
/// a blocking thread; returns how many were read once `write` succeeded. A read error
/// is returned after `write` has stopped without publishing.
pub async fn feed<S, W>(rows: S, write: W) -> Result<u64, SinkError>
where
    S: Stream<Item = Result<(String, ColdRow), SinkError>>,
    W: FnOnce(Chunks) -> Result<(), SinkError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
    let writer = tokio::task::spawn_blocking(move || write(Chunks(rx)));
    futures_util::pin_mut!(rows);
    let mut read = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    let mut failure = None;
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => chunk.push(row),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        read += 1;
        if chunk.len() == CHUNK_ROWS {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS));
            if tx.send(SnapshotChunk::Rows(full)).await.is_err() {
                // The writer stopped: its error says why.
                break;
            }
        }
    }
    if failure.is_none() {
        // A closed channel means the writer stopped; it reports why below.
        let _ = tx.send(SnapshotChunk::Rows(chunk)).await;
        let _ = tx.send(SnapshotChunk::End).await;
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| SinkError::Transient(format!("cold snapshot writer task: {e}")))?;
    match failure {
        Some(e) => Err(e),
        None => written.map(|()| read),
    }
}

/// Streams every chunk's rows into each root's write (of `table`, shaped `columns`) and
/// publishes them once [`SnapshotChunk::End`] arrives; without it, publishes nothing.
pub fn stream_into_tier(
    mut writes: Vec<RootWrite<'_>>,
    table: &str,
    columns: &[ColdColumn],
    chunks: impl Iterator<Item = SnapshotChunk>,
) -> Result<(), SinkError> {
    let mut ended = false;
    for chunk in chunks {
        let rows = match chunk {
            SnapshotChunk::Rows(rows) => rows,
            SnapshotChunk::End => {
                ended = true;
                break;
            }
        };
        let mut by_tenant: BTreeMap<String, Vec<ColdRow>> = BTreeMap::new();
        for (tenant, row) in rows {
            by_tenant.entry(tenant).or_default().push(row);
        }
        for (write, writers) in &mut writes {
            for (tenant, rows) in &by_tenant {
                write
                    .add_rows(tenant, table, columns, rows, writers)
                    .map_err(large_error)?;
            }
        }
    }
    if !ended {
        return Err(SinkError::Transient(format!(
            "the snapshot of {table} stopped before its last row; nothing of it was published"
        )));
    }
    for (write, mut writers) in writes {
        write.finish(&mut writers)?;
    }
    Ok(())
}

/// A snapshot's staged write failing: its columns are fixed, so only a write error.
pub fn large_error(e: LargeWriteError) -> SinkError {
    match e {
        LargeWriteError::Sink(e) => e,
        other => SinkError::Definite(other.to_string()),
    }
}
