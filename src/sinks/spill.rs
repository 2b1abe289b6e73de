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
//! The file holds length-prefixed bincode frames. Table shapes are written once per part
//! (changes refer to them by index), not once per change.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::change::{HistoryEvent, Lsn, Scope, TableInfo, TenantAction, TenantChange};
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
#[derive(Serialize, Deserialize)]
struct StoredChange {
    scope: Scope,
    seq: u32,
    table: u32,
    action: TenantAction,
}

/// One part as stored.
#[derive(Serialize, Deserialize)]
struct StoredPart {
    shapes: Vec<TableInfo>,
    changes: Vec<StoredChange>,
    history: Vec<HistoryEvent>,
}

/// A transaction being spilled, or spilled whole.
pub struct SpilledTxn {
    commit_lsn: Lsn,
    file: BufWriter<std::fs::File>,
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
    /// An empty spill for the transaction committing at `commit_lsn`, in the system's
    /// temporary directory (`TMPDIR`).
    pub fn create(commit_lsn: Lsn) -> Result<SpilledTxn, SpillError> {
        Ok(SpilledTxn {
            commit_lsn,
            file: BufWriter::with_capacity(1 << 20, tempfile::tempfile()?),
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
        let mut index: HashMap<*const TableInfo, u32> = HashMap::new();
        let mut shapes = Vec::new();
        let mut changes = Vec::with_capacity(part.changes.len());
        for c in &part.changes {
            let table = *index.entry(Arc::as_ptr(&c.table)).or_insert_with(|| {
                shapes.push((*c.table).clone());
                (shapes.len() - 1) as u32
            });
            match &c.scope {
                Scope::Tenant(t) => {
                    if let Err(at) = self.tenants.binary_search(t) {
                        self.tenants.insert(at, t.clone());
                    }
                }
                Scope::Worker { .. } => self.worker_scoped = true,
            }
            changes.push(StoredChange {
                scope: c.scope.clone(),
                seq: c.seq,
                table,
                action: c.action.clone(),
            });
        }
        for h in &part.history {
            if let Err(at) = self.tenants.binary_search(&h.tenant) {
                self.tenants.insert(at, h.tenant.clone());
            }
        }
        let stored = StoredPart {
            shapes,
            changes,
            history: part.history.clone(),
        };
        let frame = bincode::serialize(&stored)?;
        self.file.write_all(&(frame.len() as u64).to_le_bytes())?;
        self.file.write_all(&frame)?;
        self.parts += 1;
        self.rows += part.rows();
        self.history += part.history.len();
        self.bytes += 8 + frame.len() as u64;
        Ok(())
    }

    /// Reads the transaction back from its first part; each call starts over.
    pub fn parts(&mut self) -> Result<SpillParts<'_>, SpillError> {
        self.file.flush()?;
        let file = self.file.get_mut();
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
        let shapes: Vec<Arc<TableInfo>> = stored.shapes.into_iter().map(Arc::new).collect();
        let mut changes = Vec::with_capacity(stored.changes.len());
        for c in stored.changes {
            let table = shapes
                .get(c.table as usize)
                .ok_or(SpillError::UnknownShape(c.table))?
                .clone();
            changes.push(TenantChange {
                scope: c.scope,
                seq: c.seq,
                table,
                action: c.action,
            });
        }
        Ok(Some(ApplyBatch {
            commit_lsn: self.commit_lsn,
            changes,
            history: stored.history,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{fixtures::table, Cell};
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
            history: vec![],
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
        assert_eq!(spill.rows(), 5);
        assert_eq!(
            spill.tenants(),
            (&["1".to_string(), "2".into(), "3".into()][..], true)
        );
        for _ in 0..2 {
            // A retry reads the same parts again.
            let mut parts = spill.parts().unwrap();
            assert_eq!(parts.next_part().unwrap().as_ref(), Some(&first));
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
