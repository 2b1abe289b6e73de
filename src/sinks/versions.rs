//! History events as rows for the sinks that store versions (the PostgreSQL history table,
//! the Parquet cold tier): which versions a batch opens and which it closes.
//!
//! A version opened and closed by the same transaction was never visible at any system
//! time and is not stored. (A large transaction is planned part by part: a version it
//! opens in one part and closes in a later one is stored with an empty system interval,
//! still never visible.)

use std::collections::HashMap;

use crate::change::{HistoryEvent, Row};
use crate::operators::version::{SysTime, VersionDelta};

/// A version to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRow<'a> {
    /// The full row.
    pub row: &'a Row,
    /// Valid interval.
    pub valid_from: i64,
    /// `None`: open-ended.
    pub valid_to: Option<i64>,
    /// When it became known.
    pub system_from: SysTime,
    /// The change that opened it.
    pub op: &'static str,
    /// A deletion: no row is valid over the interval (`row` holds the key and tenant).
    pub tombstone: bool,
}

/// A version to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRow<'a> {
    /// The key cells.
    pub key: &'a Row,
    /// The closed version's row.
    pub value: &'a Row,
    /// The closed version's valid end.
    pub valid_to: Option<i64>,
    /// Identifies the version with `system_from`.
    pub valid_from: i64,
    /// When the closed version became known.
    pub system_from: SysTime,
    /// When it stopped being current.
    pub system_to: SysTime,
    /// The change that closed it.
    pub op: &'static str,
    /// Whether the closed version is a tombstone.
    pub tombstone: bool,
}

/// Splits one table's history events (in order) into inserts and closes, dropping
/// versions opened and closed by the same transaction. Storing every opened row before
/// closing is then correct: each close names a version already stored or inserted here.
pub fn plan_history<'a>(events: &[&'a HistoryEvent]) -> (Vec<OpenRow<'a>>, Vec<CloseRow<'a>>) {
    let mut opens: Vec<Option<OpenRow<'a>>> = Vec::new();
    let mut closes = Vec::new();
    // Opens of this call by (key, valid_from, system_from lsn), latest first.
    let mut pending: HashMap<(&'a Row, i64, u64), Vec<usize>> = HashMap::new();
    // Only a later close looks an open up: opens after the last close are not indexed
    // (a batch of inserts indexes nothing).
    let last_close = events
        .iter()
        .rposition(|e| matches!(e.delta, VersionDelta::Close { .. }));
    for (index, event) in events.iter().enumerate() {
        match &event.delta {
            VersionDelta::Open(v) => {
                if last_close.is_some_and(|last| index < last) {
                    pending
                        .entry((&v.key, v.valid_from, v.system_from.lsn))
                        .or_default()
                        .push(opens.len());
                }
                opens.push(Some(OpenRow {
                    row: &v.value,
                    valid_from: v.valid_from,
                    valid_to: v.valid_to,
                    system_from: v.system_from,
                    op: event.op.as_str(),
                    tombstone: v.tombstone,
                }));
            }
            VersionDelta::Close {
                key,
                value,
                valid_from,
                valid_to,
                system_from,
                system_to,
                tombstone,
            } => {
                let same_txn = system_from.lsn == system_to.lsn;
                let opened_here = pending
                    .get_mut(&(key, *valid_from, system_from.lsn))
                    .and_then(|v| v.pop());
                match opened_here {
                    Some(i) if same_txn => opens[i] = None,
                    Some(i) => {
                        if let Some(open) = opens[i].as_mut() {
                            closes.push(CloseRow {
                                key,
                                value,
                                valid_to: *valid_to,
                                valid_from: open.valid_from,
                                system_from: *system_from,
                                system_to: *system_to,
                                op: event.op.as_str(),
                                tombstone: *tombstone,
                            });
                        }
                    }
                    None => closes.push(CloseRow {
                        key,
                        value,
                        valid_to: *valid_to,
                        valid_from: *valid_from,
                        system_from: *system_from,
                        system_to: *system_to,
                        op: event.op.as_str(),
                        tombstone: *tombstone,
                    }),
                }
            }
        }
    }
    (opens.into_iter().flatten().collect(), closes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures::table;
    use crate::change::{Cell, HistoryOp};
    use crate::operators::version::Version;
    use std::sync::Arc;

    fn event(delta: VersionDelta<Row, Row>) -> HistoryEvent {
        HistoryEvent {
            tenant: "1".into(),
            seq: 0,
            table: Arc::new(table("t", &[("id", "integer")], &[0])),
            op: HistoryOp::Update,
            delta,
        }
    }

    fn open(lsn: u64, valid_from: i64) -> HistoryEvent {
        event(VersionDelta::Open(Version {
            key: vec![Cell::Text("1".into())],
            value: vec![Cell::Text(format!("{lsn}").into())],
            valid_from,
            valid_to: None,
            system_from: SysTime { lsn, micros: 0 },
            system_to: None,
            tombstone: false,
        }))
    }

    fn close(from: u64, to: u64, valid_from: i64) -> HistoryEvent {
        event(VersionDelta::Close {
            key: vec![Cell::Text("1".into())],
            value: vec![Cell::Text("1".into())],
            valid_from,
            valid_to: None,
            system_from: SysTime {
                lsn: from,
                micros: 0,
            },
            system_to: SysTime { lsn: to, micros: 0 },
            tombstone: false,
        })
    }

    #[test]
    fn versions_opened_and_closed_by_one_transaction_are_dropped() {
        let events = [open(5, 0), close(5, 5, 0), open(5, 0)];
        let refs: Vec<&HistoryEvent> = events.iter().collect();
        let (opens, closes) = plan_history(&refs);
        assert_eq!(opens.len(), 1);
        assert!(closes.is_empty());
    }

    #[test]
    fn closes_of_earlier_versions_are_kept_in_order() {
        let events = [close(1, 5, 0), open(5, 0), open(6, 3), close(5, 6, 0)];
        let refs: Vec<&HistoryEvent> = events.iter().collect();
        let (opens, closes) = plan_history(&refs);
        assert_eq!(opens.len(), 2);
        assert_eq!(closes.len(), 2);
        assert_eq!(closes[0].system_from.lsn, 1);
        assert_eq!(closes[1].system_from.lsn, 5);
        assert_eq!(closes[1].system_to.lsn, 6);
    }
}
