//! History events as rows for the sinks that store versions (the PostgreSQL history table,
//! the Parquet cold tier): which versions a batch opens and which it closes.
//!
//! A version opened and closed by the same transaction was never visible at any system
//! time and is not stored. A transaction applied in parts has such versions opened in
//! one part and closed in a later one: [`SameTxnVersions`] finds them in its spill file
//! first and strips both events from the parts, so the parts store what the whole would.

use std::collections::HashMap;

use crate::change::{HistoryEvent, Lsn, Row};
use crate::operators::version::{SysTime, VersionDelta};
use crate::sinks::spill::{SpillError, SpilledTxn};
use crate::sinks::ApplyBatch;

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

/// What names a version across a transaction's parts: tenant, table, key, valid interval,
/// tombstone (its opening transaction is the one being applied).
type VersionName = (String, String, Row, i64, Option<i64>, bool);

/// The versions one large transaction both opens and closes, by name, with how many
/// times each; stripped from its parts as they are read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SameTxnVersions {
    lsn: Lsn,
    closed: HashMap<VersionName, usize>,
}

impl SameTxnVersions {
    /// Reads `txn`'s spill file once and names the versions it opens and closes itself
    /// (nothing to read when it has no history events).
    pub fn of(txn: &mut SpilledTxn) -> Result<SameTxnVersions, SpillError> {
        let lsn = txn.commit_lsn();
        let mut found = SameTxnVersions {
            lsn,
            closed: HashMap::new(),
        };
        if txn.history_rows() == 0 {
            return Ok(found);
        }
        let mut parts = txn.parts()?;
        while let Some(part) = parts.next_part()? {
            for event in &part.history {
                if let Some(name) = found.closed_here(event) {
                    *found.closed.entry(name).or_default() += 1;
                }
            }
        }
        Ok(found)
    }

    /// Whether there is nothing to strip.
    pub fn is_empty(&self) -> bool {
        self.closed.is_empty()
    }

    /// The name of the version `event` closes, when the transaction opened it.
    fn closed_here(&self, event: &HistoryEvent) -> Option<VersionName> {
        match &event.delta {
            VersionDelta::Close {
                key,
                valid_from,
                valid_to,
                system_from,
                system_to,
                tombstone,
                ..
            } if system_from.lsn == self.lsn && system_to.lsn == self.lsn => Some((
                event.tenant.clone(),
                event.table.qualified_name(),
                key.clone(),
                *valid_from,
                *valid_to,
                *tombstone,
            )),
            _ => None,
        }
    }

    /// Drops from `part` (the next in order) the closes of versions the transaction
    /// opened and, for each, the first opening of that version.
    pub fn strip(&mut self, part: &mut ApplyBatch) {
        if self.closed.is_empty() {
            return;
        }
        let lsn = self.lsn;
        part.history.retain(|event| match &event.delta {
            VersionDelta::Close { .. } => self.closed_here(event).is_none(),
            VersionDelta::Open(v) if v.system_from.lsn == lsn => {
                let name = (
                    event.tenant.clone(),
                    event.table.qualified_name(),
                    v.key.clone(),
                    v.valid_from,
                    v.valid_to,
                    v.tombstone,
                );
                match self.closed.get_mut(&name) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                }
            }
            VersionDelta::Open(_) => true,
        });
    }
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

    /// Across parts: a version opened, closed and opened again by the transaction keeps
    /// only its last opening; a close of an earlier transaction's version stays.
    #[test]
    fn versions_the_transaction_opens_and_closes_are_stripped_across_parts() {
        let batch = |history| ApplyBatch {
            commit_lsn: 9,
            changes: Vec::new(),
            history,
        };
        let parts = vec![
            batch(vec![close(4, 9, 0), open(9, 0)]),
            batch(vec![close(9, 9, 0)]),
            batch(vec![open(9, 0), open(9, 5)]),
        ];
        let mut txn = SpilledTxn::create(9).unwrap();
        for p in &parts {
            txn.append(p).unwrap();
        }
        let mut versions = SameTxnVersions::of(&mut txn).unwrap();
        assert!(!versions.is_empty());
        let mut stripped = parts.clone();
        for p in &mut stripped {
            versions.strip(p);
        }
        assert_eq!(stripped[0].history, vec![close(4, 9, 0)]);
        assert!(stripped[1].history.is_empty());
        assert_eq!(stripped[2].history, vec![open(9, 0), open(9, 5)]);

        // No history events: nothing read, nothing stripped.
        let mut plain = SpilledTxn::create(9).unwrap();
        plain.append(&batch(Vec::new())).unwrap();
        assert!(SameTxnVersions::of(&mut plain).unwrap().is_empty());
    }
}
