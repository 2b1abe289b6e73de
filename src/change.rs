//! The change model: what flows from the source through the dataflow to the sinks.
//!
//! A [`SourceRecord`] is what the replication reader puts into the dataflow at a
//! transaction's commit LSN; operators turn it into [`TenantChange`]s, which sinks apply.
//! Values travel in PostgreSQL's text form ([`Cell::Text`]) together with the column's
//! resolved type, so the target casts them with the same input functions the source used
//! and the text form is equal on both sides (DESIGN.md invariant 7).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A WAL position as a plain integer (`X/Y` in PostgreSQL's notation is `X << 32 | Y`).
pub type Lsn = u64;

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses PostgreSQL's `X/Y` LSN notation.
pub fn parse_lsn(text: &str) -> Option<Lsn> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Commit times (µs since 2000-01-01, as the server counts) of transactions not yet
/// durable, by commit LSN, with the moment the reader received each commit (same clock):
/// the reader records them, sinks look up how old what they just applied was (per-tenant
/// lag, [`crate::sinks::latency`]), and they are forgotten once durable.
#[derive(Debug, Default)]
pub struct CommitTimes(std::sync::Mutex<std::collections::BTreeMap<Lsn, CommitSeen>>);

/// When a transaction committed on the source and when the reader received its commit
/// (µs since 2000-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSeen {
    /// The source's commit time.
    pub committed: i64,
    /// This machine's clock when the reader received the commit.
    pub received: i64,
}

impl CommitTimes {
    /// Records a transaction's commit time, received now.
    pub fn record(&self, lsn: Lsn, micros: i64) {
        let seen = CommitSeen {
            committed: micros,
            received: pg_now_micros(),
        };
        if let Ok(mut m) = self.0.lock() {
            m.insert(lsn, seen);
        }
    }

    /// The commit time of the transaction at `lsn`, if still known.
    pub fn get(&self, lsn: Lsn) -> Option<i64> {
        self.seen(lsn).map(|s| s.committed)
    }

    /// The commit and receipt times of the transaction at `lsn`, if still known.
    pub fn seen(&self, lsn: Lsn) -> Option<CommitSeen> {
        self.0.lock().ok().and_then(|m| m.get(&lsn).copied())
    }

    /// Forgets transactions whose commit LSN is below `frontier`.
    pub fn forget_below(&self, frontier: Lsn) {
        if let Ok(mut m) = self.0.lock() {
            *m = m.split_off(&frontier);
        }
    }
}

/// Microseconds since PostgreSQL's epoch (2000-01-01) now, by this machine's clock.
pub fn pg_now_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - crate::time_text::PG_EPOCH_UNIX_MICROS
}

/// How a table identifies old rows in UPDATE and DELETE messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Identity {
    /// The primary key (REPLICA IDENTITY DEFAULT).
    Default,
    /// No old row at all: the source refuses UPDATE and DELETE.
    Nothing,
    /// The whole old row (REPLICA IDENTITY FULL).
    Full,
    /// The columns of a unique index (REPLICA IDENTITY USING INDEX).
    Index,
}

/// One column of a replicated table as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// The type's OID on the source.
    pub type_oid: u32,
    /// The type modifier (`-1` when none).
    pub type_modifier: i32,
    /// `format_type(oid, typmod)` on the source: usable in DDL and casts.
    pub type_name: String,
    /// Whether the column is part of the replica identity.
    pub in_identity: bool,
    /// The value rows that existed before the column was added read for it
    /// (`attmissingval`, PostgreSQL's "fast default"); `None` when there is none.
    #[serde(default)]
    pub missing_value: Option<String>,
    /// The column's number in the source's catalog (`pg_attribute.attnum`): a rename
    /// keeps it, and a dropped column's is never given to another, so a sink can tell a
    /// renamed column from a new one. `None` when the catalog could not vouch for it (it
    /// changed again between the relation's message and its reading).
    #[serde(default)]
    pub attnum: Option<i16>,
}

/// The shape of a replicated table at some point of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The relation's OID on the source.
    pub oid: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Columns in the order tuples carry them.
    pub columns: Vec<ColumnInfo>,
    /// Positions of the primary-key columns (empty when the table has none).
    pub primary_key: Vec<usize>,
    /// How old rows are identified.
    pub identity: Identity,
    /// Idempotent DDL that creates the user-defined types (enums, domains, composites,
    /// ranges, extension types) the columns use, dependencies first.
    #[serde(default)]
    pub type_ddl: Vec<String>,
}

impl TableInfo {
    /// `schema.name`, unquoted (for logs, specs and checkpoints).
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Position of a column by name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The columns that identify a row: the primary key, else the replica identity
    /// index; empty for keyless tables (insert-only or REPLICA IDENTITY FULL).
    pub fn key_columns(&self) -> Vec<usize> {
        if !self.primary_key.is_empty() {
            return self.primary_key.clone();
        }
        if self.identity == Identity::Index {
            return (0..self.columns.len())
                .filter(|&i| self.columns[i].in_identity)
                .collect();
        }
        Vec::new()
    }
}

/// One value of a row, in PostgreSQL's text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change: the target keeps its own.
    Unchanged,
    /// The value's text form: shared, immutable bytes (decoded rows slice one copy of
    /// the message per row), so cloning a row copies no text.
    Text(Text),
}

/// A value's text form as rows carry it: UTF-8 in reference-counted bytes.
pub type Text = bytestring::ByteString;

impl Cell {
    /// The text form, `None` for NULL and unchanged values.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The shared text, `None` for NULL and unchanged values (no copy).
    pub fn shared_text(&self) -> Option<Text> {
        match self {
            Cell::Text(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// A text cell holding `text` (copied).
    pub fn text(text: &str) -> Cell {
        Cell::Text(Text::from(text))
    }
}

/// A raw row as the source sent it (one cell per column of the table at that time).
pub type Row = Vec<Cell>;

/// How the old row of an UPDATE or DELETE was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OldRow {
    /// Only the identity columns (others are NULL).
    Key(Row),
    /// The whole old row (REPLICA IDENTITY FULL).
    Full(Row),
}

impl OldRow {
    /// The cells, whichever form.
    pub fn cells(&self) -> &Row {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

/// A row-level change as the replication stream carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowOp {
    /// A new row.
    Insert { new: Row },
    /// A changed row; `old` is present when the key changed or identity is FULL.
    Update { old: Option<OldRow>, new: Row },
    /// A removed row.
    Delete { old: OldRow },
}

/// What the reader puts into the dataflow, stamped with the transaction's commit LSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceRecord {
    /// A row change of `table` at position `seq` within its transaction.
    Change {
        seq: u32,
        table: Arc<TableInfo>,
        op: RowOp,
    },
    /// A TRUNCATE of one or more tables.
    Truncate {
        seq: u32,
        tables: Vec<Arc<TableInfo>>,
    },
}

/// Whose change it is: one tenant's, or every tenant a sink worker owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// The tenant id's text form.
    Tenant(String),
    /// Sink worker `index` of `peers`: a change whose tenant the stream did not say (a
    /// TRUNCATE, or a DELETE whose old key lacks the tenant column) is sent to every
    /// worker, and each applies it to the tenants it owns.
    Worker { index: u32, peers: u32 },
}

/// A change for one tenant (or one worker's tenants), ready for a sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantChange {
    /// Whose rows the change touches.
    pub scope: Scope,
    /// Position within the source transaction (changes apply in this order).
    pub seq: u32,
    /// The table's shape when the change was made.
    pub table: Arc<TableInfo>,
    /// What happened.
    pub action: TenantAction,
}

/// The effect a sink applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantAction {
    /// Insert or overwrite a row (cells may be [`Cell::Unchanged`]: keep the target's).
    Upsert {
        /// The old row (key cells, or all cells under REPLICA IDENTITY FULL) when the
        /// source sent one: the row to replace when the key changed, or to find in a
        /// keyless table.
        old: Option<Row>,
        /// The new row.
        new: Row,
        /// Whether the source sent this as an INSERT (keyless tables append).
        insert: bool,
    },
    /// Remove the row identified by `old` (key cells, or the full row for keyless tables).
    Delete { old: Row },
    /// Remove every row of the scope in the table (a source TRUNCATE).
    Truncate,
    /// A change that could not be routed to a tenant; recorded (without its values, which
    /// may belong to a tenant outside the job) and the table is put in error.
    Unroutable { reason: String },
}

/// Which source change opened a history version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HistoryOp {
    /// An INSERT (or a row that came with the initial snapshot).
    Insert,
    /// An UPDATE.
    Update,
    /// A DELETE or TRUNCATE (it only closes and splits versions).
    Delete,
}

impl HistoryOp {
    /// The name stored in history tables and cold-tier files.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryOp::Insert => "insert",
            HistoryOp::Update => "update",
            HistoryOp::Delete => "delete",
        }
    }
}

/// What one change did to one tenant's bi-temporal history of a table: versions closed
/// and opened (keys and values are cells in the table's column order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// The tenant whose row it is.
    pub tenant: String,
    /// Position of the causing change within its transaction.
    pub seq: u32,
    /// The table's shape when the change was made.
    pub table: Arc<TableInfo>,
    /// The kind of change.
    pub op: HistoryOp,
    /// The version closed or opened (key = the table's key cells, value = the full row).
    pub delta: crate::operators::version::VersionDelta<Row, Row>,
}

/// What the dataflow hands to the sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkItem {
    /// A change to apply to the current state.
    Change(TenantChange),
    /// A history version closed or opened.
    History(HistoryEvent),
}

impl SinkItem {
    /// Position within the source transaction.
    pub fn seq(&self) -> u32 {
        match self {
            SinkItem::Change(c) => c.seq,
            SinkItem::History(h) => h.seq,
        }
    }
}

/// Table shapes and history events for unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::sync::Arc;

    use super::{ColumnInfo, HistoryEvent, HistoryOp, Identity, Lsn, Row, TableInfo};
    use crate::operators::version::{SysTime, Version, VersionDelta};

    /// The event of an insert of `row` (its own key) into `table` for `tenant`, committed
    /// at `lsn`: one version opened, valid from 0 on.
    pub fn opened(
        tenant: &str,
        seq: u32,
        table: &Arc<TableInfo>,
        row: Row,
        lsn: Lsn,
    ) -> HistoryEvent {
        HistoryEvent {
            tenant: tenant.to_owned(),
            seq,
            table: table.clone(),
            op: HistoryOp::Insert,
            delta: VersionDelta::Open(Version {
                key: row.clone(),
                value: row,
                valid_from: 0,
                valid_to: None,
                system_from: SysTime { lsn, micros: 0 },
                system_to: None,
                tombstone: false,
            }),
        }
    }

    /// A transaction at `lsn` inserting rows `ids` (one `int` column, `id`) of tenant 1
    /// into `app.t`.
    pub fn inserts(lsn: Lsn, ids: std::ops::Range<usize>) -> crate::sinks::ApplyBatch {
        let table = Arc::new(table("t", &[("id", "int")], &[0]));
        crate::sinks::ApplyBatch {
            commit_lsn: lsn,
            changes: ids
                .map(|i| super::TenantChange {
                    scope: super::Scope::Tenant("1".into()),
                    seq: i as u32,
                    table: table.clone(),
                    action: super::TenantAction::Upsert {
                        old: None,
                        new: vec![super::Cell::Text(i.to_string().into())],
                        insert: true,
                    },
                })
                .collect(),
            history: Vec::new(),
        }
    }

    /// A table `app.<name>` with `(column, type)` pairs and a primary key.
    pub fn table(name: &str, columns: &[(&str, &str)], primary_key: &[usize]) -> TableInfo {
        TableInfo {
            oid: 1,
            schema: "app".into(),
            name: name.into(),
            columns: columns
                .iter()
                .map(|(c, ty)| ColumnInfo {
                    name: (*c).into(),
                    type_oid: 0,
                    type_modifier: -1,
                    type_name: (*ty).into(),
                    in_identity: false,
                    missing_value: None,
                    attnum: None,
                })
                .collect(),
            primary_key: primary_key.to_vec(),
            identity: Identity::Default,
            type_ddl: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_text_matches_postgres() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("garbage"), None);
        assert_eq!(parse_lsn("1/FFFFFFFFF"), None);
    }

    proptest! {
        #[test]
        fn lsn_round_trips(lsn: u64) {
            prop_assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
    }
}
