//! Transactions too large to hold in memory, kept on local disk until their commit.
//!
//! The delivery operator hands a sink task a transaction that is still arriving in parts
//! once its share on a worker passes [`crate::dataflow::deliver::PART_ROWS`]. The sink task
//! appends each part to a [`SpilledTxn`] (an unlinked temporary file: a crash leaves
//! nothing behind, and the source resends the transaction, since nothing past it was
//! confirmed) and frees it, so memory stays bounded whatever the transaction's size
//! (DESIGN.md invariant 5). A sink that writes in pieces applies each part as it comes
//! ([`crate::sinks::large::LiveParts`]), after it is spilled; the others, and a retry,
//! read the whole transaction back part by part ([`SpilledTxn::parts`]) once the last part
//! arrived, from the start.
//!
//! Each part is encoded on the sink task's thread and written by the file's own writer
//! thread (`frame_writer`), so the sink goes on with the part while it is written.
//!
//! The file holds length-prefixed bincode frames. Table shapes are written once per part
//! (changes and history events refer to them by index), not once per row, and read back
//! as one shared `Arc` per shape and part.

mod frame_writer;

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::change::{
    HistoryEvent, HistoryOp, Lsn, Row, Scope, TableInfo, TenantAction, TenantChange,
};
use crate::operators::version::VersionDelta;
use crate::sinks::ApplyBatch;

/// Why a spill file could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// The temporary file could not be created, written or read.
    #[error("spill file: {0}")]
    Io(#[from] std::io::Error),
    /// A frame did not encode or decode.
    #[error("spill file frame: {0}")]
    Frame(#[from] bincode::Error),
    /// A part of another transaction was offered.
    #[error("spill file of transaction {expected} was given a part of {got}")]
    WrongTransaction {
        /// The spilled transaction's commit LSN.
        expected: Lsn,
        /// The offered part's commit LSN.
        got: Lsn,
    },
    /// A frame refers to a table shape it does not carry.
    #[error("spill file frame refers to table shape {0}, which it does not carry")]
    UnknownShape(u32),
    /// A frame length larger than what is left of the file.
    #[error("spill file frame of {len} bytes at offset {offset} runs past the end ({size} bytes)")]
    Truncated {
        /// Where the frame starts.
        offset: u64,
        /// Its announced length.
        len: u64,
        /// The file's size.
        size: u64,
    },
}

/// One change as a frame stores it: its table by index into the frame's shapes.
#[derive(Deserialize)]
struct StoredChange {
    scope: Scope,
    seq: u32,
    table: u32,
    action: TenantAction,
}

/// One history event as a frame stores it: its table by index into the frame's shapes,
/// like a change's. (Stored whole, each event carried its table's shape: about 300 bytes
/// on disk and a fresh `TableInfo` of a score of allocations per event read back.)
#[derive(Deserialize)]
struct StoredHistory {
    tenant: String,
    seq: u32,
    table: u32,
    op: HistoryOp,
    delta: VersionDelta<Row, Row>,
}

/// One part as stored.
#[derive(Deserialize)]
struct StoredPart {
    shapes: Vec<TableInfo>,
    changes: Vec<StoredChange>,
    history: Vec<StoredHistory>,
}

/// [`StoredChange`] as written, borrowing from the part (the same encoding).
#[derive(Serialize)]
struct ChangeToStore<'a> {
    scope: &'a Scope,
    seq: u32,
    table: u32,
    action: &'a TenantAction,
}

/// [`StoredHistory`] as written, borrowing from the part (the same encoding).
#[derive(Serialize)]
struct HistoryToStore<'a> {
    tenant: &'a str,
    seq: u32,
    table: u32,
    op: &'a HistoryOp,
    delta: &'a VersionDelta<Row, Row>,
}

/// [`StoredPart`] as written, borrowing from the part (the same encoding).
#[derive(Serialize)]
struct PartToStore<'a> {
    shapes: Vec<&'a TableInfo>,
    changes: Vec<ChangeToStore<'a>>,
    history: Vec<HistoryToStore<'a>>,
}

/// The table shapes of one part being written, each once, by index.
#[derive(Default)]
struct Shapes<'a> {
    index: HashMap<*const TableInfo, u32>,
    list: Vec<&'a TableInfo>,
}

impl<'a> Shapes<'a> {
    /// The index of `table`'s shape, added if new.
    fn index_of(&mut self, table: &'a Arc<TableInfo>) -> u32 {
        let list = &mut self.list;
        *self.index.entry(Arc::as_ptr(table)).or_insert_with(|| {
            list.push(table.as_ref());
            (list.len() - 1) as u32
        })
    }
}

/// A transaction being spilled, or spilled whole.
pub struct SpilledTxn {
    commit_lsn: Lsn,
    file: frame_writer::FrameWriter,
    parts: usize,
    rows: usize,
    /// History events written so far.
    history: usize,
    bytes: u64,
    /// Tenants touched and whether a change of worker scope is among them.
    tenants: Vec<String>,
    worker_scoped: bool,
}

impl SpilledTxn {
    /// An empty spill for the transaction committing at `commit_lsn`, in the process's
    /// spill directory ([`crate::spill_dir`]).
    pub fn create(commit_lsn: Lsn) -> Result<SpilledTxn, SpillError> {
        Ok(SpilledTxn {
            commit_lsn,
            file: frame_writer::FrameWriter::new(crate::spill_dir::spill_file()?),
            parts: 0,
            rows: 0,
            history: 0,
            bytes: 0,
            tenants: Vec::new(),
            worker_scoped: false,
        })
    }

    /// The transaction's commit LSN.
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }

    /// Parts written so far.
    pub fn part_count(&self) -> usize {
        self.parts
    }

    /// Rows (changes and history events) written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// History events written so far.
    pub fn history_rows(&self) -> usize {
        self.history
    }

    /// Bytes written to the file so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Tenants the transaction touches (sorted, each once), and whether it has a change of
    /// worker scope (a TRUNCATE or a tenant-less DELETE).
    pub fn tenants(&self) -> (&[String], bool) {
        (&self.tenants, self.worker_scoped)
    }

    /// Appends the next part of the transaction.
    pub fn append(&mut self, part: &ApplyBatch) -> Result<(), SpillError> {
        if part.commit_lsn != self.commit_lsn {
            return Err(SpillError::WrongTransaction {
                expected: self.commit_lsn,
                got: part.commit_lsn,
            });
        }
        let mut shapes = Shapes::default();
        let mut changes = Vec::with_capacity(part.changes.len());
        for c in &part.changes {
            let table = shapes.index_of(&c.table);
            match &c.scope {
                Scope::Tenant(t) => {
                    if let Err(at) = self.tenants.binary_search(t) {
                        self.tenants.insert(at, t.clone());
                    }
                }
                Scope::Worker { .. } => self.worker_scoped = true,
            }
            changes.push(ChangeToStore {
                scope: &c.scope,
                seq: c.seq,
                table,
                action: &c.action,
            });
        }
        let mut history = Vec::with_capacity(part.history.len());
        for h in &part.history {
            if let Err(at) = self.tenants.binary_search(&h.tenant) {
                self.tenants.insert(at, h.tenant.clone());
            }
            history.push(HistoryToStore {
                tenant: &h.tenant,
                seq: h.seq,
                table: shapes.index_of(&h.table),
                op: &h.op,
                delta: &h.delta,
            });
        }
        let stored = PartToStore {
            shapes: shapes.list,
            changes,
            history,
        };
        // The length first, then the frame: one buffer, written on the writer's thread.
        // Sized first: a frame grown by doubling would leave its smaller copies freed,
        // which the allocator keeps for a while (a part of wide rows is up to 16 MiB).
        let size = bincode::serialized_size(&stored)? as usize;
        let mut frame = Vec::with_capacity(8 + size);
        frame.extend_from_slice(&[0u8; 8]);
        bincode::serialize_into(&mut frame, &stored)?;
        let len = (frame.len() - 8) as u64;
        frame[..8].copy_from_slice(&len.to_le_bytes());
        self.file.write(frame)?;
        self.parts += 1;
        self.rows += part.rows();
        self.history += part.history.len();
        self.bytes += 8 + len;
        Ok(())
    }

    /// Reads the transaction back from its first part; each call starts over.
    pub fn parts(&mut self) -> Result<SpillParts<'_>, SpillError> {
        let file = self.file.file()?;
        let size = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpillParts {
            commit_lsn: self.commit_lsn,
            reader: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            size,
        })
    }

    /// The whole transaction as one batch (for sinks that cannot apply it in parts).
    pub fn read_all(&mut self) -> Result<ApplyBatch, SpillError> {
        let mut whole = ApplyBatch {
            commit_lsn: self.commit_lsn,
            changes: Vec::with_capacity(self.rows),
            history: Vec::new(),
        };
        let mut parts = self.parts()?;
        while let Some(mut part) = parts.next_part()? {
            whole.changes.append(&mut part.changes);
            whole.history.append(&mut part.history);
        }
        Ok(whole)
    }
}

/// Reads a spilled transaction part by part.
pub struct SpillParts<'a> {
    commit_lsn: Lsn,
    reader: BufReader<&'a mut std::fs::File>,
    offset: u64,
    size: u64,
}

impl SpillParts<'_> {
    /// The next part, `None` after the last.
    pub fn next_part(&mut self) -> Result<Option<ApplyBatch>, SpillError> {
        if self.offset >= self.size {
            return Ok(None);
        }
        let mut len = [0u8; 8];
        self.reader.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if len > self.size - self.offset - 8 {
            return Err(SpillError::Truncated {
                offset: self.offset,
                len,
                size: self.size,
            });
        }
        let mut frame = vec![0u8; len as usize];
        self.reader.read_exact(&mut frame)?;
        self.offset += 8 + len;
        let stored: StoredPart = bincode::deserialize(&frame)?;
        drop(frame);
        let shapes: Vec<Arc<TableInfo>> = stored.shapes.into_iter().map(Arc::new).collect();
        let shape = |index: u32| {
            shapes
                .get(index as usize)
                .cloned()
                .ok_or(SpillError::UnknownShape(index))
        };
        let mut changes = Vec::with_capacity(stored.changes.len());
        for c in stored.changes {
            changes.push(TenantChange {
                scope: c.scope,
                seq: c.seq,
                table: shape(c.table)?,
                action: c.action,
            });
        }
        let mut history = Vec::with_capacity(stored.history.len());
        for h in stored.history {
            history.push(HistoryEvent {
                tenant: h.tenant,
                seq: h.seq,
                table: shape(h.table)?,
                op: h.op,
                delta: h.delta,
            });
        }
        Ok(Some(ApplyBatch {
            commit_lsn: self.commit_lsn,
            changes,
            history,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{
        fixtures::{opened, table},
        Cell,
    };
    use proptest::prelude::*;

    fn change(table: &Arc<TableInfo>, scope: Scope, seq: u32, value: &str) -> TenantChange {
        TenantChange {
            scope,
            seq,
            table: table.clone(),
            action: TenantAction::Upsert {
                old: None,
                new: vec![Cell::Text(seq.to_string().into()), Cell::text(value)],
                insert: true,
            },
        }
    }

    #[test]
    fn parts_come_back_in_order_with_their_shapes() {
        let a = Arc::new(table("a", &[("id", "bigint"), ("v", "text")], &[0]));
        let b = Arc::new(table("b", &[("id", "bigint"), ("w", "text")], &[0]));
        let mut spill = SpilledTxn::create(77).unwrap();
        let first = ApplyBatch {
            commit_lsn: 77,
            changes: vec![
                change(&a, Scope::Tenant("3".into()), 0, "x"),
                change(&b, Scope::Tenant("1".into()), 1, "y"),
                change(&a, Scope::Tenant("3".into()), 2, "z"),
            ],
            // History events refer to the part's shapes too.
            history: vec![
                opened(
                    "3",
                    0,
                    &a,
                    vec![Cell::Text("1".into()), Cell::Text("x".into())],
                    77,
                ),
                opened("5", 2, &b, vec![Cell::Text("2".into()), Cell::Null], 77),
                opened(
                    "3",
                    2,
                    &a,
                    vec![Cell::Text("3".into()), Cell::Text("z".into())],
                    77,
                ),
            ],
        };
        let second = ApplyBatch {
            commit_lsn: 77,
            changes: vec![
                change(&b, Scope::Worker { index: 0, peers: 2 }, 3, ""),
                TenantChange {
                    scope: Scope::Tenant("2".into()),
                    seq: 4,
                    table: a.clone(),
                    action: TenantAction::Delete {
                        old: vec![Cell::Text("0".into()), Cell::Null],
                    },
                },
            ],
            history: vec![],
        };
        spill.append(&first).unwrap();
        spill.append(&second).unwrap();
        assert_eq!(spill.part_count(), 2);
        assert_eq!(spill.rows(), 8);
        assert_eq!(spill.history_rows(), 3);
        assert_eq!(
            spill.tenants(),
            (
                &["1".to_string(), "2".into(), "3".into(), "5".into()][..],
                true
            )
        );
        for _ in 0..2 {
            // A retry reads the same parts again.
            let mut parts = spill.parts().unwrap();
            let back = parts.next_part().unwrap().unwrap();
            assert_eq!(back, first);
            // One shape per table and part, shared by its changes and history events.
            assert!(Arc::ptr_eq(&back.changes[0].table, &back.history[0].table));
            assert!(Arc::ptr_eq(&back.history[0].table, &back.history[2].table));
            assert!(Arc::ptr_eq(&back.changes[1].table, &back.history[1].table));
            assert!(!Arc::ptr_eq(&back.history[0].table, &back.history[1].table));
            assert_eq!(parts.next_part().unwrap().as_ref(), Some(&second));
            assert!(parts.next_part().unwrap().is_none());
        }
        let whole = spill.read_all().unwrap();
        assert_eq!(whole.changes.len(), 5);
        assert_eq!(whole.changes[3], second.changes[0]);
    }

    #[test]
    fn a_part_of_another_transaction_is_refused() {
        let mut spill = SpilledTxn::create(10).unwrap();
        let other = ApplyBatch {
            commit_lsn: 11,
            changes: vec![],
            history: vec![],
        };
        let err = spill.append(&other).unwrap_err();
        assert!(err.to_string().contains("transaction 10"), "{err}");
        assert_eq!(spill.part_count(), 0);
    }

    proptest! {
        #[test]
        fn any_parts_round_trip(parts in proptest::collection::vec(
            proptest::collection::vec((0u32..4, ".{0,12}", proptest::bool::ANY), 0..20), 1..6)
        ) {
            let shapes: Vec<Arc<TableInfo>> = (0..4)
                .map(|i| Arc::new(table(&format!("t{i}"), &[("id", "bigint"), ("v", "text")], &[0])))
                .collect();
            let mut spill = SpilledTxn::create(5).unwrap();
            let mut seq = 0;
            let mut want = Vec::new();
            for part in &parts {
                let batch = ApplyBatch {
                    commit_lsn: 5,
                    changes: part.iter().map(|(t, v, null)| {
                        seq += 1;
                        let mut c = change(&shapes[*t as usize], Scope::Tenant(t.to_string()), seq, v);
                        if *null {
                            c.action = TenantAction::Upsert { old: Some(vec![Cell::Null, Cell::Unchanged]), new: vec![Cell::Null, Cell::text(v)], insert: false };
                        }
                        c
                    }).collect(),
                    history: vec![],
                };
                spill.append(&batch).unwrap();
                want.push(batch);
            }
            let mut got = Vec::new();
            let mut reader = spill.parts().unwrap();
            while let Some(p) = reader.next_part().unwrap() {
                got.push(p);
            }
            prop_assert_eq!(got, want);
        }
    }
}
