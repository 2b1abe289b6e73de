//! A snapshot's versions written into the Parquet cold tier as they are read, never
//! held whole: the reading (async) side hands rows in chunks over a small channel to a
//! blocking writer, which streams each tenant's rows into staged files with the rows
//! waiting for their row groups bounded as a large transaction's are
//! ([`crate::sinks::parquet::large_txn`]), and publishes every tenant's files with one
//! manifest update once the last chunk is marked. A read that fails, or a writer whose
//! input ends unmarked, publishes nothing; the staged files go at the next recovery.

use std::collections::{BTreeMap, HashMap};

use futures_util::{Stream, StreamExt};

use crate::footprint::Footprint;
use crate::sinks::parquet::large_txn::{LargeWrite, LargeWriteError};
use crate::sinks::parquet::sink::OpenWriter;
use crate::sinks::parquet::{ColdColumn, ColdRow};
use crate::sinks::SinkError;

/// Rows handed from the reading side to the writing one at a time, at most.
const CHUNK_ROWS: usize = 10_000;
/// Estimated bytes of rows handed over at a time, at most (rows of 40 KB made 10,000-row
/// chunks of 400 MB, and the channel holds two besides the one being read and the one
/// being written).
const CHUNK_BYTES: usize = 8 << 20;

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
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    let mut failure = None;
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => {
                chunk_bytes += row.1.footprint() + row.0.len();
                chunk.push(row);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        read += 1;
        if chunk.len() == CHUNK_ROWS || chunk_bytes >= CHUNK_BYTES {
            chunk_bytes = 0;
            let full = std::mem::take(&mut chunk);
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

/// What a snapshot's write does besides streaming its rows into every root: which rows a
/// root takes, and what it adds once the last row is in, before it publishes.
pub trait TierSnapshot {
    /// Whether root number `root` (in the order of the writes) writes `row` of `tenant`.
    fn keep(&mut self, root: usize, tenant: &str, row: &ColdRow) -> bool;
    /// Adds what root number `root` writes after the last row, before it publishes.
    fn before_publish(&mut self, root: usize, write: &mut RootWrite<'_>) -> Result<(), SinkError>;
}

/// Every row into every root, nothing more.
pub struct EveryRow;

impl TierSnapshot for EveryRow {
    fn keep(&mut self, _: usize, _: &str, _: &ColdRow) -> bool {
        true
    }

    fn before_publish(&mut self, _: usize, _: &mut RootWrite<'_>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Streams every chunk's rows into each root's write (of `table`, shaped `columns`), as
/// `snapshot` picks them, and publishes them once [`SnapshotChunk::End`] arrives; without
/// it, publishes nothing.
pub fn stream_into_tier(
    mut writes: Vec<RootWrite<'_>>,
    table: &str,
    columns: &[ColdColumn],
    chunks: impl Iterator<Item = SnapshotChunk>,
    snapshot: &mut impl TierSnapshot,
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
        for (root, (write, writers)) in writes.iter_mut().enumerate() {
            for (tenant, rows) in &by_tenant {
                let keep: Vec<bool> = rows
                    .iter()
                    .map(|r| snapshot.keep(root, tenant, r))
                    .collect();
                let picked: Vec<ColdRow>;
                let rows = if keep.iter().all(|k| *k) {
                    rows.as_slice()
                } else {
                    picked = rows
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|(r, _)| r.clone())
                        .collect();
                    picked.as_slice()
                };
                if rows.is_empty() {
                    continue;
                }
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
    for (root, mut write) in writes.into_iter().enumerate() {
        snapshot.before_publish(root, &mut write)?;
        let (write, mut writers) = write;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::parquet::{ChangeOp, ColdEvent};

    fn row(id: usize, text_len: usize) -> (String, ColdRow) {
        let value = |t: String| Some(crate::change::Text::from(t));
        (
            (id % 3).to_string(),
            ColdRow {
                event: ColdEvent::Open,
                op: ChangeOp::Insert,
                values: vec![value(id.to_string()), value("x".repeat(text_len))],
                valid_from: 0,
                valid_to: None,
                system_from: 0,
                system_from_lsn: 1,
                system_to: None,
                system_to_lsn: None,
                tombstone: false,
            },
        )
    }

    /// Feeds `rows` and returns the rows and estimated bytes of each chunk handed over,
    /// and whether the end was marked.
    async fn chunks_of(rows: Vec<(String, ColdRow)>) -> (u64, Vec<(usize, usize)>, bool) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), false)));
        let record = seen.clone();
        let read = feed(
            futures_util::stream::iter(rows.into_iter().map(Ok)),
            move |chunks| {
                for chunk in chunks {
                    let mut seen = record.lock().expect("lock");
                    match chunk {
                        SnapshotChunk::Rows(rows) => {
                            let bytes = rows.iter().map(|(t, r)| r.footprint() + t.len()).sum();
                            seen.0.push((rows.len(), bytes));
                        }
                        SnapshotChunk::End => seen.1 = true,
                    }
                }
                Ok(())
            },
        )
        .await
        .expect("fed");
        let (sizes, ended) = seen.lock().expect("lock").clone();
        (read, sizes, ended)
    }

    #[tokio::test]
    async fn narrow_rows_go_in_chunks_of_ten_thousand() {
        let (read, sizes, ended) = chunks_of((0..25_000).map(|i| row(i, 10)).collect()).await;
        assert_eq!(read, 25_000);
        let rows: Vec<usize> = sizes.iter().map(|s| s.0).collect();
        assert_eq!(rows, [10_000, 10_000, 5_000]);
        assert!(ended);
    }

    #[tokio::test]
    async fn wide_rows_go_in_chunks_of_at_most_eight_mib() {
        // 1,000 rows of 40 KB: 40 MB, which went as one chunk before chunks were sized
        // by bytes too.
        let (read, sizes, ended) = chunks_of((0..1_000).map(|i| row(i, 40_000)).collect()).await;
        assert_eq!(read, 1_000);
        assert_eq!(sizes.iter().map(|s| s.0).sum::<usize>(), 1_000);
        assert!(sizes.len() >= 5, "{sizes:?}");
        let one_row = row(0, 40_000).1.footprint() + 1;
        for (_, bytes) in &sizes {
            assert!(*bytes < CHUNK_BYTES + one_row, "{sizes:?}");
        }
        assert!(ended);
    }
}
