//! What a change costs in memory while it waits, estimated: the bytes the read-ahead,
//! the parts of a large transaction, the sinks' backlog and the chunks of an initial copy
//! count, so a stream of wide rows (kilobytes of text or JSON each) is bounded by bytes as
//! well as by rows.
//!
//! A decoded row's cells slice one shared copy of its message, so its text is counted once
//! per cell it appears in (an UPDATE's old and new row count the same text twice: the
//! estimate errs high), plus each cell's and each row's own size.

use crate::cdc::stream::SourceEvent;
use crate::change::{
    Cell, HistoryEvent, OldRow, Row, RowOp, SinkItem, SourceRecord, TenantAction, TenantChange,
};
use crate::operators::version::VersionDelta;
use crate::sinks::parquet::ColdRow;

/// What a change, row or event holds in memory, estimated in bytes.
pub trait Footprint {
    /// The estimate (never 0 for a row change: the count of changes stays a lower bound).
    fn footprint(&self) -> usize;
}

/// A change's fixed cost beside its rows: its own struct, its place in a vector, the
/// table's shared shape pointer.
const CHANGE_BYTES: usize = 96;

impl Footprint for Row {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Row>()
            + self.len() * std::mem::size_of::<Cell>()
            + self
                .iter()
                .map(|c| c.as_text().map_or(0, str::len))
                .sum::<usize>()
    }
}

impl Footprint for OldRow {
    fn footprint(&self) -> usize {
        self.cells().footprint()
    }
}

impl Footprint for SourceRecord {
    fn footprint(&self) -> usize {
        CHANGE_BYTES
            + match self {
                SourceRecord::Change { op, .. } => match op {
                    RowOp::Insert { new } => new.footprint(),
                    RowOp::Update { old, new } => {
                        new.footprint() + old.as_ref().map_or(0, Footprint::footprint)
                    }
                    RowOp::Delete { old } => old.footprint(),
                },
                SourceRecord::Truncate { tables, .. } => tables.len() * 8,
            }
    }
}

impl Footprint for SourceEvent {
    fn footprint(&self) -> usize {
        match self {
            SourceEvent::Record(record) => record.footprint(),
            SourceEvent::Begin { .. } | SourceEvent::Commit { .. } => CHANGE_BYTES,
        }
    }
}

impl Footprint for TenantChange {
    fn footprint(&self) -> usize {
        CHANGE_BYTES
            + match &self.action {
                TenantAction::Upsert { old, new, .. } => {
                    new.footprint() + old.as_ref().map_or(0, Footprint::footprint)
                }
                TenantAction::Delete { old } => old.footprint(),
                TenantAction::Truncate => 0,
                TenantAction::Unroutable { reason } => reason.len(),
            }
    }
}

impl Footprint for HistoryEvent {
    fn footprint(&self) -> usize {
        CHANGE_BYTES
            + self.tenant.len()
            + match &self.delta {
                VersionDelta::Close { key, value, .. } => key.footprint() + value.footprint(),
                VersionDelta::Open(v) => v.key.footprint() + v.value.footprint(),
            }
    }
}

impl Footprint for SinkItem {
    fn footprint(&self) -> usize {
        match self {
            SinkItem::Change(c) => c.footprint(),
            SinkItem::History(h) => h.footprint(),
        }
    }
}

impl Footprint for ColdRow {
    fn footprint(&self) -> usize {
        CHANGE_BYTES
            + self.values.len() * std::mem::size_of::<Option<crate::change::Text>>()
            + self
                .values
                .iter()
                .map(|v| v.as_ref().map_or(0, |t| t.len()))
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(texts: &[Option<&str>]) -> Row {
        texts
            .iter()
            .map(|t| t.map_or(Cell::Null, Cell::text))
            .collect()
    }

    #[test]
    fn a_row_costs_its_text_and_its_cells() {
        let narrow = row(&[Some("1"), None, Some("ab")]);
        let wide_text = "x".repeat(20_000);
        let wide = row(&[Some("1"), None, Some(&wide_text)]);
        let cells = 3 * std::mem::size_of::<Cell>() + std::mem::size_of::<Row>();
        assert_eq!(narrow.footprint(), cells + 3);
        assert_eq!(wide.footprint(), cells + 20_001);
    }

    #[test]
    fn an_update_counts_both_rows_and_a_truncate_only_its_cost() {
        let table = std::sync::Arc::new(crate::change::fixtures::table(
            "t",
            &[("tenant_id", "int"), ("id", "int")],
            &[0, 1],
        ));
        let new = row(&[Some("1"), Some("new value")]);
        let old = row(&[Some("1"), Some("old")]);
        let insert = SourceRecord::Change {
            seq: 0,
            table: table.clone(),
            op: RowOp::Insert { new: new.clone() },
        };
        let update = SourceRecord::Change {
            seq: 1,
            table: table.clone(),
            op: RowOp::Update {
                old: Some(OldRow::Full(old.clone())),
                new: new.clone(),
            },
        };
        assert_eq!(insert.footprint(), CHANGE_BYTES + new.footprint());
        assert_eq!(
            update.footprint(),
            CHANGE_BYTES + new.footprint() + old.footprint()
        );
        let truncate = SourceRecord::Truncate {
            seq: 2,
            tables: vec![table],
        };
        assert!(truncate.footprint() >= CHANGE_BYTES);
        assert_eq!(
            SourceEvent::Record(insert.clone()).footprint(),
            insert.footprint()
        );
    }
}
