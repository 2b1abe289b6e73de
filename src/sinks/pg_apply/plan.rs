//! Turns one table's ordered changes into few set-based steps.
//!
//! For a table with a key, consecutive changes reduce to the final action per key (upsert
//! or delete): keys are distinct after reduction, so all deletes and all upserts of a run
//! can each go out as one statement, whatever their order. A change that needs the target's
//! current row (an UPDATE whose TOASTed column is unchanged and whose full row is not in the
//! run) or that acts on a set of rows (TRUNCATE, a delete scoped to a worker's tenants) ends
//! the run: what was reduced so far is emitted first, so per-key order is kept.
//! Keyless tables (insert-only, REPLICA IDENTITY FULL) append runs of inserts and apply
//! updates and deletes one row at a time, in order.
//!
//! With `fresh_inserts`, a key whose first change in the run is an INSERT is new to the
//! target (the target holds the source's state as of the run's start, and the source
//! had no row with that key), so its final row goes out as a plain insert
//! ([`Step::Append`]) instead of an upsert: PostgreSQL's speculative insertion
//! (`ON CONFLICT`) costs the target about 40 % more per row. Such a key deleted again in
//! the same run needs no statement at all. The caller turns this off when the target
//! turns out to hold such a key anyway (a unique violation) and in every fallback path.
//!
//! Pure: no I/O. The SQL for each step is in `statements.rs`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::change::{Cell, Lsn, Row, Scope, TableInfo, TenantAction, TenantChange};
use crate::sinks::pg_apply::floors::Floors;

/// One set-based action on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    /// Make the target table match this shape (add or retype columns).
    SyncShape(Arc<TableInfo>),
    /// Insert or overwrite full rows (no [`Cell::Unchanged`]); keys are distinct.
    Upsert {
        table: Arc<TableInfo>,
        rows: Vec<Cow<'a, Row>>,
    },
    /// Delete rows by key (cells in `key_columns()` order).
    DeleteKeys {
        table: Arc<TableInfo>,
        keys: Vec<Row>,
    },
    /// Update the row with key `key`; unchanged cells keep the target's value.
    UpdateRow {
        table: Arc<TableInfo>,
        key: Row,
        new: Row,
    },
    /// Plain insert: rows of a keyless table, or rows whose keys the run inserted first
    /// (new to the target).
    Append {
        table: Arc<TableInfo>,
        rows: Vec<Cow<'a, Row>>,
    },
    /// Delete one row of a keyless table equal to `old` (by text form).
    DeleteMatching { table: Arc<TableInfo>, old: Row },
    /// Update one row of a keyless table equal to `old`.
    UpdateMatching {
        table: Arc<TableInfo>,
        old: Row,
        new: Row,
    },
    /// Delete the row(s) matching `old` among the tenants worker `index` owns, but for
    /// `spared` (a backfill loaded them after this change, `floors`).
    DeleteOwned {
        table: Arc<TableInfo>,
        old: Row,
        index: u32,
        spared: Vec<String>,
    },
    /// Delete all rows of one tenant.
    TruncateTenant {
        table: Arc<TableInfo>,
        tenant: String,
    },
    /// Delete all rows of the tenants worker `index` owns, but for `spared` (as for
    /// [`Step::DeleteOwned`]).
    TruncateOwned {
        table: Arc<TableInfo>,
        index: u32,
        spared: Vec<String>,
    },
    /// Keep the change in the dead-letter table; it cannot be applied.
    DeadLetter {
        lsn: Lsn,
        change: TenantChange,
        reason: String,
    },
}

/// A key as a run holds it: the cells of a row at the key columns, borrowed.
type KeyCells<'a> = Vec<&'a Cell>;

/// What a missing cell reads as.
static NULL: Cell = Cell::Null;

/// The cells of `row` at `cols`, borrowed.
fn key_of<'a>(row: &'a Row, cols: &[usize]) -> KeyCells<'a> {
    cols.iter().map(|&i| row.get(i).unwrap_or(&NULL)).collect()
}

/// An owned copy of a borrowed key.
fn owned(key: &[&Cell]) -> Row {
    key.iter().map(|&c| c.clone()).collect()
}

/// A key's final state in a run.
struct Reduced<'a> {
    /// `Some(full row)` to write, `None` to delete.
    row: Option<Cow<'a, Row>>,
    /// The run's first change of the key was an INSERT (and fresh inserts are on): the
    /// target does not hold the key.
    fresh: bool,
    /// When the key first appeared in the run (plain inserts keep the source's order).
    first: u32,
}

/// The reduction in progress for one table shape. Rows stay borrowed from the changes
/// until a statement binds them: planning copies no value.
struct Run<'a> {
    table: Arc<TableInfo>,
    key_cols: Vec<usize>,
    by_key: HashMap<KeyCells<'a>, Reduced<'a>, foldhash::fast::RandomState>,
    appends: Vec<Cow<'a, Row>>,
    fresh_inserts: bool,
    seen: u32,
}

impl<'a> Run<'a> {
    /// A run of `table`'s changes, room for `keys` keys.
    fn new(table: Arc<TableInfo>, fresh_inserts: bool, keys: usize) -> Run<'a> {
        Run {
            key_cols: table.key_columns(),
            table,
            by_key: HashMap::with_capacity_and_hasher(keys, Default::default()),
            appends: Vec::new(),
            fresh_inserts,
            seen: 0,
        }
    }

    /// Sets a key's final state; the first change of the key decides whether it is fresh.
    fn reduce(&mut self, key: KeyCells<'a>, row: Option<Cow<'a, Row>>, insert: bool) {
        let fresh = self.fresh_inserts && insert;
        match self.by_key.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().row = row,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Reduced {
                    row,
                    fresh,
                    first: self.seen,
                });
                self.seen += 1;
            }
        }
    }

    fn flush(&mut self, steps: &mut Vec<Step<'a>>) {
        if !self.by_key.is_empty() {
            let mut deletes = Vec::new();
            let mut upserts = Vec::new();
            let mut inserts = Vec::new();
            for (key, reduced) in self.by_key.drain() {
                match (reduced.row, reduced.fresh) {
                    (Some(row), true) => inserts.push((reduced.first, row)),
                    (Some(row), false) => upserts.push((key, row)),
                    // Inserted and deleted within the run: the target never had it.
                    (None, true) => {}
                    (None, false) => deletes.push(key),
                }
            }
            // A stable order keeps lock order stable across concurrent writers (new keys
            // lock nothing another writer holds: they keep the source's order).
            deletes.sort_unstable();
            upserts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            inserts.sort_unstable_by_key(|(first, _)| *first);
            if !deletes.is_empty() {
                steps.push(Step::DeleteKeys {
                    table: self.table.clone(),
                    keys: deletes.iter().map(|k| owned(k)).collect(),
                });
            }
            if !upserts.is_empty() {
                steps.push(Step::Upsert {
                    table: self.table.clone(),
                    rows: upserts.into_iter().map(|(_, row)| row).collect(),
                });
            }
            self.appends.extend(inserts.into_iter().map(|(_, row)| row));
        }
        if !self.appends.is_empty() {
            steps.push(Step::Append {
                table: self.table.clone(),
                rows: std::mem::take(&mut self.appends),
            });
        }
    }
}

/// Plans one table's changes (all of the same `schema.table`, in commit and transaction
/// order). The first step is always a [`Step::SyncShape`]. `fresh_inserts`: keys the run
/// inserts first go out as plain inserts (see the module doc). `floors`: what backfills
/// loaded, which a change naming no tenant spares.
pub fn plan_table<'a>(
    changes: impl IntoIterator<Item = (Lsn, &'a TenantChange)>,
    fresh_inserts: bool,
    floors: &Floors,
) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut run: Option<Run<'a>> = None;
    let changes = changes.into_iter();
    // Sized once for the whole group (no rehashing as it grows); a later shape starts
    // small.
    let mut room = changes.size_hint().0;
    for (lsn, change) in changes {
        let same_shape = run
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.table, &change.table) || *r.table == *change.table);
        if !same_shape {
            if let Some(r) = run.as_mut() {
                r.flush(&mut steps);
            }
            steps.push(Step::SyncShape(change.table.clone()));
            run = Some(Run::new(
                change.table.clone(),
                fresh_inserts,
                std::mem::take(&mut room),
            ));
        }
        let Some(r) = run.as_mut() else { continue };
        plan_change(r, lsn, change, floors, &mut steps);
    }
    if let Some(r) = run.as_mut() {
        r.flush(&mut steps);
    }
    steps
}

fn plan_change<'a>(
    r: &mut Run<'a>,
    lsn: Lsn,
    change: &'a TenantChange,
    floors: &Floors,
    steps: &mut Vec<Step<'a>>,
) {
    let table = r.table.clone();
    let spared = || {
        if floors.may_cover(lsn) {
            floors.spared(&table.qualified_name(), lsn)
        } else {
            Vec::new()
        }
    };
    match (&change.scope, &change.action) {
        (_, TenantAction::Unroutable { reason }) => {
            r.flush(steps);
            steps.push(Step::DeadLetter {
                lsn,
                change: change.clone(),
                reason: reason.clone(),
            });
        }
        (Scope::Tenant(tenant), TenantAction::Truncate) => {
            r.flush(steps);
            steps.push(Step::TruncateTenant {
                table,
                tenant: tenant.clone(),
            });
        }
        (Scope::Worker { index, .. }, TenantAction::Truncate) => {
            r.flush(steps);
            steps.push(Step::TruncateOwned {
                spared: spared(),
                table,
                index: *index,
            });
        }
        (Scope::Worker { index, .. }, TenantAction::Delete { old }) => {
            r.flush(steps);
            steps.push(Step::DeleteOwned {
                spared: spared(),
                table,
                old: old.clone(),
                index: *index,
            });
        }
        (Scope::Worker { .. }, TenantAction::Upsert { .. }) => {
            r.flush(steps);
            steps.push(Step::DeadLetter {
                lsn,
                change: change.clone(),
                reason: "an upsert without a tenant cannot be applied".into(),
            });
        }
        (Scope::Tenant(_), TenantAction::Delete { old }) => {
            if r.key_cols.is_empty() {
                r.flush(steps);
                steps.push(Step::DeleteMatching {
                    table,
                    old: old.clone(),
                });
            } else {
                let key = key_of(old, &r.key_cols);
                r.reduce(key, None, false);
            }
        }
        (Scope::Tenant(_), TenantAction::Upsert { old, new, insert }) => {
            if r.key_cols.is_empty() {
                plan_keyless_upsert(r, lsn, change, old.as_ref(), new, *insert, steps);
                return;
            }
            let new_key = key_of(new, &r.key_cols);
            let old_key = old
                .as_ref()
                .map(|o| key_of(o, &r.key_cols))
                .filter(|k| *k != new_key);
            let mut row = Cow::Borrowed(new);
            if row.contains(&Cell::Unchanged) {
                let base = old_key.as_ref().unwrap_or(&new_key);
                if let Some(Reduced {
                    row: Some(prev), ..
                }) = r.by_key.get(base)
                {
                    let merged = row.to_mut();
                    for (cell, prev) in merged.iter_mut().zip(prev.iter()) {
                        if *cell == Cell::Unchanged {
                            *cell = prev.clone();
                        }
                    }
                }
            }
            if row.contains(&Cell::Unchanged) {
                // The target holds the unchanged values: update in place, in order.
                r.flush(steps);
                steps.push(Step::UpdateRow {
                    table,
                    key: owned(old_key.as_ref().unwrap_or(&new_key)),
                    new: row.into_owned(),
                });
                return;
            }
            if let Some(old_key) = old_key {
                r.reduce(old_key, None, false);
            }
            r.reduce(new_key, Some(row), *insert);
        }
    }
}

fn plan_keyless_upsert<'a>(
    r: &mut Run<'a>,
    lsn: Lsn,
    change: &TenantChange,
    old: Option<&Row>,
    new: &'a Row,
    insert: bool,
    steps: &mut Vec<Step<'a>>,
) {
    if insert {
        r.appends.push(Cow::Borrowed(new));
        return;
    }
    r.flush(steps);
    match old {
        Some(old) => steps.push(Step::UpdateMatching {
            table: r.table.clone(),
            old: old.clone(),
            new: new.clone(),
        }),
        None => steps.push(Step::DeadLetter {
            lsn,
            change: change.clone(),
            reason: "update of a table without key or REPLICA IDENTITY FULL".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{fixtures, ColumnInfo};

    fn table(pk: Vec<usize>) -> Arc<TableInfo> {
        Arc::new(fixtures::table(
            "t",
            &[("tenant_id", "text"), ("id", "text"), ("body", "text")],
            &pk,
        ))
    }

    fn t(s: &str) -> Cell {
        Cell::Text(s.into())
    }

    fn cows(rows: Vec<Row>) -> Vec<Cow<'static, Row>> {
        rows.into_iter().map(Cow::Owned).collect()
    }

    fn change(table: &Arc<TableInfo>, seq: u32, action: TenantAction) -> TenantChange {
        TenantChange {
            scope: Scope::Tenant("1".into()),
            seq,
            table: table.clone(),
            action,
        }
    }

    fn upsert(old: Option<Row>, new: Row) -> TenantAction {
        TenantAction::Upsert {
            old,
            new,
            insert: false,
        }
    }

    #[test]
    fn reduces_a_run_to_final_state_per_key() {
        let tb = table(vec![0, 1]);
        let changes = [
            change(&tb, 0, upsert(None, vec![t("1"), t("a"), t("v1")])),
            change(&tb, 1, upsert(None, vec![t("1"), t("a"), t("v2")])),
            change(&tb, 2, upsert(None, vec![t("1"), t("b"), t("x")])),
            change(
                &tb,
                3,
                TenantAction::Delete {
                    old: vec![t("1"), t("b"), Cell::Null],
                },
            ),
        ];
        let steps = plan_table(changes.iter().map(|c| (10, c)), false, &Floors::default());
        assert_eq!(
            steps,
            vec![
                Step::SyncShape(tb.clone()),
                Step::DeleteKeys {
                    table: tb.clone(),
                    keys: vec![vec![t("1"), t("b")]]
                },
                Step::Upsert {
                    table: tb.clone(),
                    rows: cows(vec![vec![t("1"), t("a"), t("v2")]])
                },
            ]
        );
    }

    #[test]
    fn key_change_deletes_old_key() {
        let tb = table(vec![0, 1]);
        let c = change(
            &tb,
            0,
            upsert(
                Some(vec![t("1"), t("a"), Cell::Null]),
                vec![t("1"), t("z"), t("v")],
            ),
        );
        let steps = plan_table([(5, &c)], false, &Floors::default());
        assert_eq!(
            steps[1],
            Step::DeleteKeys {
                table: tb.clone(),
                keys: vec![vec![t("1"), t("a")]]
            }
        );
        assert_eq!(
            steps[2],
            Step::Upsert {
                table: tb,
                rows: cows(vec![vec![t("1"), t("z"), t("v")]])
            }
        );
    }

    #[test]
    fn unchanged_toast_is_filled_from_the_run_or_updated_in_place() {
        let tb = table(vec![0, 1]);
        let ins = change(&tb, 0, upsert(None, vec![t("1"), t("a"), t("big")]));
        let upd = change(&tb, 1, upsert(None, vec![t("1"), t("a"), Cell::Unchanged]));
        let steps = plan_table([(1, &ins), (2, &upd)], false, &Floors::default());
        assert_eq!(
            steps[1],
            Step::Upsert {
                table: tb.clone(),
                rows: cows(vec![vec![t("1"), t("a"), t("big")]])
            }
        );

        let steps = plan_table([(2, &upd)], false, &Floors::default());
        assert_eq!(
            steps[1],
            Step::UpdateRow {
                table: tb,
                key: vec![t("1"), t("a")],
                new: vec![t("1"), t("a"), Cell::Unchanged]
            }
        );
    }

    #[test]
    fn truncate_ends_the_run_in_order() {
        let tb = table(vec![0, 1]);
        let a = change(&tb, 0, upsert(None, vec![t("1"), t("a"), t("x")]));
        let tr = change(&tb, 1, TenantAction::Truncate);
        let b = change(&tb, 2, upsert(None, vec![t("1"), t("b"), t("y")]));
        let steps = plan_table([(1, &a), (1, &tr), (1, &b)], false, &Floors::default());
        assert!(matches!(steps[1], Step::Upsert { .. }));
        assert!(matches!(steps[2], Step::TruncateTenant { .. }));
        assert!(matches!(steps[3], Step::Upsert { .. }));
    }

    #[test]
    fn changes_naming_no_tenant_spare_tenants_a_backfill_loaded_later() {
        let tb = table(vec![0, 1]);
        let worker = |action| TenantChange {
            scope: Scope::Worker { index: 0, peers: 1 },
            ..change(&tb, 0, action)
        };
        let truncate = worker(TenantAction::Truncate);
        let delete = worker(TenantAction::Delete {
            old: vec![Cell::Null, t("a"), Cell::Null],
        });
        let mut floors = Floors::default();
        floors.insert(&tb.qualified_name(), Some("7"), 100);
        floors.insert(&tb.qualified_name(), Some("8"), 50);
        let spared = |steps: &[Step]| -> Vec<Vec<String>> {
            steps
                .iter()
                .filter_map(|s| match s {
                    Step::TruncateOwned { spared, .. } | Step::DeleteOwned { spared, .. } => {
                        Some(spared.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        let steps = plan_table([(60, &truncate), (60, &delete)], false, &floors);
        assert_eq!(spared(&steps), vec![vec!["7".to_string()]; 2]);
        let steps = plan_table([(10, &truncate)], false, &floors);
        assert_eq!(spared(&steps), vec![vec!["7".to_string(), "8".to_string()]]);
        let steps = plan_table([(100, &truncate)], false, &floors);
        assert_eq!(spared(&steps), vec![Vec::<String>::new()]);
    }

    #[test]
    fn keyless_tables_append_and_match_in_order() {
        let tb = table(vec![]);
        let a = change(
            &tb,
            0,
            TenantAction::Upsert {
                old: None,
                new: vec![t("1"), t("a"), t("x")],
                insert: true,
            },
        );
        let b = change(
            &tb,
            1,
            TenantAction::Upsert {
                old: None,
                new: vec![t("1"), t("a"), t("x")],
                insert: true,
            },
        );
        let d = change(
            &tb,
            2,
            TenantAction::Delete {
                old: vec![t("1"), t("a"), t("x")],
            },
        );
        let steps = plan_table([(1, &a), (1, &b), (1, &d)], false, &Floors::default());
        assert_eq!(
            steps[1],
            Step::Append {
                table: tb.clone(),
                rows: cows(vec![vec![t("1"), t("a"), t("x")]; 2])
            }
        );
        assert_eq!(
            steps[2],
            Step::DeleteMatching {
                table: tb,
                old: vec![t("1"), t("a"), t("x")]
            }
        );
    }

    #[test]
    fn shape_change_flushes_and_syncs() {
        let tb = table(vec![0, 1]);
        let mut wider = (*tb).clone();
        wider.columns.push(ColumnInfo {
            name: "extra".into(),
            type_oid: 23,
            type_modifier: -1,
            type_name: "integer".into(),
            in_identity: false,
            missing_value: None,
            attnum: None,
        });
        let wider = Arc::new(wider);
        let a = change(&tb, 0, upsert(None, vec![t("1"), t("a"), t("x")]));
        let b = change(
            &wider,
            1,
            upsert(None, vec![t("1"), t("a"), t("x"), t("5")]),
        );
        let steps = plan_table([(1, &a), (2, &b)], false, &Floors::default());
        assert_eq!(steps.len(), 4);
        assert_eq!(steps[2], Step::SyncShape(wider.clone()));
    }

    fn insert(new: Row) -> TenantAction {
        TenantAction::Upsert {
            old: None,
            new,
            insert: true,
        }
    }

    #[test]
    fn keys_the_run_inserts_first_go_out_as_plain_inserts() {
        let tb = table(vec![0, 1]);
        let changes = [
            // Inserted, then updated: one plain insert of the final row.
            change(&tb, 0, insert(vec![t("1"), t("a"), t("v1")])),
            change(&tb, 1, upsert(None, vec![t("1"), t("a"), t("v2")])),
            // Inserted, then deleted: nothing at all.
            change(&tb, 2, insert(vec![t("1"), t("b"), t("x")])),
            change(
                &tb,
                3,
                TenantAction::Delete {
                    old: vec![t("1"), t("b"), Cell::Null],
                },
            ),
            // Deleted, then inserted again: the target held it, so an upsert.
            change(
                &tb,
                4,
                TenantAction::Delete {
                    old: vec![t("1"), t("c"), Cell::Null],
                },
            ),
            change(&tb, 5, insert(vec![t("1"), t("c"), t("again")])),
        ];
        let steps = plan_table(changes.iter().map(|c| (10, c)), true, &Floors::default());
        assert_eq!(
            steps,
            vec![
                Step::SyncShape(tb.clone()),
                Step::Upsert {
                    table: tb.clone(),
                    rows: cows(vec![vec![t("1"), t("c"), t("again")]])
                },
                Step::Append {
                    table: tb.clone(),
                    rows: cows(vec![vec![t("1"), t("a"), t("v2")]])
                },
            ]
        );
        // Off: the same run as upserts and deletes only.
        let steps = plan_table(changes.iter().map(|c| (10, c)), false, &Floors::default());
        assert!(steps.iter().all(|s| !matches!(s, Step::Append { .. })));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// One source change of a table keyed by `k` with a value `v`, as generated
        /// against the source's state (insert only absent keys, update or delete present
        /// ones, move a key to an absent one).
        #[derive(Debug, Clone)]
        enum Op {
            Write(u8, u8),
            Delete(u8),
            Move(u8, u8),
        }

        fn row(k: u8, v: u8) -> Row {
            vec![t("1"), t(&k.to_string()), t(&v.to_string())]
        }

        /// Source changes consistent with `state` (which they change), from raw picks.
        fn changes_of(
            tb: &Arc<TableInfo>,
            state: &mut BTreeMap<u8, u8>,
            picks: &[(u8, u8, u8)],
        ) -> Vec<TenantChange> {
            let mut out = Vec::new();
            for (i, &(k, v, how)) in picks.iter().enumerate() {
                let op = match (state.get(&k), how % 3) {
                    (None, _) => Op::Write(k, v),
                    (Some(_), 0) => Op::Write(k, v),
                    (Some(_), 1) => Op::Delete(k),
                    (Some(_), _) => match (0..8u8).find(|n| !state.contains_key(n)) {
                        Some(to) => Op::Move(k, to),
                        None => Op::Delete(k),
                    },
                };
                let action = match op {
                    Op::Write(k, v) => {
                        let was = state.insert(k, v);
                        TenantAction::Upsert {
                            old: None,
                            new: row(k, v),
                            insert: was.is_none(),
                        }
                    }
                    Op::Delete(k) => {
                        state.remove(&k);
                        TenantAction::Delete {
                            old: vec![t("1"), t(&k.to_string()), Cell::Null],
                        }
                    }
                    Op::Move(k, to) => {
                        let v = state.remove(&k).unwrap_or_default();
                        state.insert(to, v);
                        TenantAction::Upsert {
                            old: Some(vec![t("1"), t(&k.to_string()), Cell::Null]),
                            new: row(to, v),
                            insert: false,
                        }
                    }
                };
                out.push(change(tb, i as u32, action));
            }
            out
        }

        /// Applies steps to a target holding `target`; a plain insert of a key the
        /// target holds is a unique violation.
        fn apply(target: &mut BTreeMap<u8, u8>, steps: Vec<Step>) -> Result<(), String> {
            let key =
                |r: &Row| -> u8 { r[1].as_text().and_then(|k| k.parse().ok()).unwrap_or(255) };
            let value =
                |r: &Row| -> u8 { r[2].as_text().and_then(|k| k.parse().ok()).unwrap_or(255) };
            for step in steps {
                match step {
                    Step::SyncShape(_) => {}
                    Step::DeleteKeys { keys, .. } => {
                        for k in keys {
                            target.remove(&key(&k));
                        }
                    }
                    Step::Upsert { rows, .. } => {
                        for r in rows {
                            target.insert(key(&r), value(&r));
                        }
                    }
                    Step::Append { rows, .. } => {
                        for r in rows {
                            if target.insert(key(&r), value(&r)).is_some() {
                                return Err(format!("unique violation on key {}", key(&r)));
                            }
                        }
                    }
                    other => return Err(format!("unexpected step {other:?}")),
                }
            }
            Ok(())
        }

        proptest! {
            /// Whatever the run, the target ends where the source did, and a plain insert
            /// never meets a key the target already holds.
            #[test]
            fn the_target_ends_where_the_source_did(
                before in prop::collection::btree_map(0u8..8, 0u8..9, 0..8),
                picks in prop::collection::vec((0u8..8, 0u8..9, 0u8..3), 0..40),
                fresh in any::<bool>(),
            ) {
                let tb = table(vec![0, 1]);
                let mut source = before.clone();
                let changes = changes_of(&tb, &mut source, &picks);
                let mut target = before.clone();
                let steps = plan_table(changes.iter().map(|c| (1, c)), fresh, &Floors::default());
                prop_assert_eq!(apply(&mut target, steps), Ok(()));
                prop_assert_eq!(target, source);
            }
        }
    }
}
