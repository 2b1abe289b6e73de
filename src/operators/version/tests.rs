//! Tests of the version book: named cases, then properties against an oracle that
//! recomputes from the whole change log, a real differential collection fed with the deltas' diffs,
//! restore equivalence and invariants.

use std::collections::BTreeMap;

use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::TraceReader;
use differential_dataflow::AsCollection;
use proptest::prelude::*;
use timely::dataflow::operators::vec::unordered_input::UnorderedInput;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;
use timely::progress::frontier::{Antichain, AntichainRef};

use super::*;

type Book = VersionBook<u8, u32>;
type Delta = VersionDelta<u8, u32>;
/// A multitemporal update of a `(key, value)` row.
type Update = ((u8, u32), Bt, i64);

/// Keys the generated changes use.
const KEYS: std::ops::Range<u8> = 0..4;
/// Valid times every grid query asks about (the generated ones are `0..30`).
const VALID_GRID: std::ops::RangeInclusive<i64> = -1..=32;

/// Commit time of a commit LSN: strictly increasing, 10 µs per LSN.
fn micros_of(lsn: Lsn) -> i64 {
    1_000_000 + 10 * lsn as i64
}

fn st(lsn: Lsn) -> SysTime {
    SysTime {
        lsn,
        micros: micros_of(lsn),
    }
}

/// What the tombstones of these tests record.
const GONE: u32 = 999;

fn up(value: u32) -> Edit<u32> {
    Edit::Upsert(value)
}

fn del() -> Edit<u32> {
    Edit::Delete(GONE)
}

fn version(key: u8, value: u32, from: i64, to: Option<i64>, lsn: Lsn) -> Version<u8, u32> {
    Version {
        key,
        value,
        valid_from: from,
        valid_to: to,
        system_from: st(lsn),
        system_to: None,
        tombstone: false,
    }
}

fn open(key: u8, value: u32, from: i64, to: Option<i64>, lsn: Lsn) -> Delta {
    VersionDelta::Open(version(key, value, from, to, lsn))
}

/// Opens a tombstone from `from` to `to`.
fn tomb(key: u8, from: i64, to: Option<i64>, lsn: Lsn) -> Delta {
    VersionDelta::Open(Version {
        tombstone: true,
        ..version(key, GONE, from, to, lsn)
    })
}

fn close(key: u8, value: u32, from: i64, to: Option<i64>, since: Lsn, lsn: Lsn) -> Delta {
    VersionDelta::Close {
        key,
        value,
        valid_from: from,
        valid_to: to,
        system_from: st(since),
        system_to: st(lsn),
        tombstone: false,
    }
}

/// Closes a tombstone that recorded `value`.
fn close_tomb(key: u8, value: u32, from: i64, to: Option<i64>, since: Lsn, lsn: Lsn) -> Delta {
    match close(key, value, from, to, since, lsn) {
        VersionDelta::Close {
            key,
            value,
            valid_from,
            valid_to,
            system_from,
            system_to,
            ..
        } => VersionDelta::Close {
            key,
            value,
            valid_from,
            valid_to,
            system_from,
            system_to,
            tombstone: true,
        },
        open => open,
    }
}

/// Both kinds of system point for `lsn`.
fn points(lsn: Lsn) -> [SystemPoint; 2] {
    [SystemPoint::Lsn(lsn), SystemPoint::Micros(micros_of(lsn))]
}

// ---------------------------------------------------------------------------------------
// Named cases
// ---------------------------------------------------------------------------------------

/// Key 1 = 100 from valid 10 (lsn 1), then 200 from valid 20 (lsn 2).
fn updated_book() -> Book {
    let mut book = Book::new(st(0));
    assert_eq!(
        book.apply(1, 10, st(1), up(100)),
        vec![open(1, 100, 10, None, 1)]
    );
    assert_eq!(
        book.apply(1, 20, st(2), up(200)),
        vec![
            close(1, 100, 10, None, 1, 2),
            open(1, 100, 10, Some(20), 2),
            open(1, 200, 20, None, 2),
        ]
    );
    book
}

#[test]
fn plain_update_closes_and_splits() {
    let book = updated_book();
    for p in points(1) {
        assert_eq!(book.as_of(p, 25), vec![(1, 100)]);
        assert_eq!(book.as_of(p, 9), vec![]);
    }
    for p in points(2) {
        assert_eq!(book.as_of(p, 15), vec![(1, 100)]);
        assert_eq!(book.as_of(p, 25), vec![(1, 200)]);
    }
    for p in points(0) {
        assert_eq!(book.as_of(p, 25), vec![]);
    }
    assert_eq!(book.current(&1, 25), Some(&200));
    assert_eq!(book.current(&1, 19), Some(&100));
    assert_eq!(book.current(&1, 9), None);
    assert_eq!(book.current(&2, 19), None);
    assert_eq!(book.len(), 3);
    assert_eq!(book.versions().len(), 3);
}

#[test]
fn retroactive_correction_in_the_middle_splits_the_interval() {
    let mut book = updated_book();
    assert_eq!(
        book.apply(1, 15, st(3), up(150)),
        vec![
            close(1, 100, 10, Some(20), 2, 3),
            open(1, 100, 10, Some(15), 3),
            open(1, 150, 15, Some(20), 3),
        ]
    );
    for p in points(2) {
        assert_eq!(book.as_of(p, 17), vec![(1, 100)]);
    }
    for p in points(3) {
        assert_eq!(book.as_of(p, 12), vec![(1, 100)]);
        assert_eq!(book.as_of(p, 17), vec![(1, 150)]);
        assert_eq!(book.as_of(p, 25), vec![(1, 200)]);
    }
}

#[test]
fn correction_exactly_at_an_interval_start_replaces_it() {
    let mut book = updated_book();
    assert_eq!(
        book.apply(1, 20, st(3), up(250)),
        vec![close(1, 200, 20, None, 2, 3), open(1, 250, 20, None, 3)]
    );
    assert_eq!(
        book.apply(1, 10, st(4), up(50)),
        vec![
            close(1, 100, 10, Some(20), 2, 4),
            open(1, 50, 10, Some(20), 4)
        ]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(3), 10), vec![(1, 100)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(4), 10), vec![(1, 50)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 20), vec![(1, 200)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(3), 20), vec![(1, 250)]);
}

#[test]
fn change_before_the_first_version_runs_up_to_it() {
    let mut book = updated_book();
    assert_eq!(
        book.apply(1, 5, st(3), up(50)),
        vec![open(1, 50, 5, Some(10), 3)]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(3), 7), vec![(1, 50)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 7), vec![]);
    assert_eq!(book.as_of(SystemPoint::Lsn(3), 12), vec![(1, 100)]);
}

/// Key 1 = 100 on [10,15), a tombstone on [15,30), 300 from 30 (after the delete at lsn 3).
fn deleted_in_the_middle() -> Book {
    let mut book = Book::new(st(0));
    book.apply(1, 10, st(1), up(100));
    book.apply(1, 30, st(2), up(300));
    assert_eq!(
        book.apply(1, 15, st(3), del()),
        vec![
            close(1, 100, 10, Some(30), 2, 3),
            open(1, 100, 10, Some(15), 3),
            tomb(1, 15, Some(30), 3),
        ]
    );
    book
}

#[test]
fn delete_in_the_middle_ends_the_interval() {
    let book = deleted_in_the_middle();
    assert_eq!(book.current(&1, 14), Some(&100));
    assert_eq!(book.current(&1, 15), None);
    assert_eq!(book.current(&1, 29), None);
    assert_eq!(book.current(&1, 30), Some(&300));
    for p in points(2) {
        assert_eq!(book.as_of(p, 20), vec![(1, 100)]);
    }
    for p in points(3) {
        assert_eq!(book.as_of(p, 20), vec![]);
        assert_eq!(book.as_of(p, 14), vec![(1, 100)]);
    }
    assert_eq!(book.current_keys(), vec![1]);
}

#[test]
fn delete_at_an_interval_start_replaces_it_with_a_tombstone() {
    let mut book = deleted_in_the_middle();
    assert_eq!(
        book.apply(1, 30, st(4), del()),
        vec![close(1, 300, 30, None, 2, 4), tomb(1, 30, None, 4)]
    );
    assert_eq!(book.current(&1, 40), None);
    assert_eq!(book.as_of(SystemPoint::Lsn(3), 40), vec![(1, 300)]);
    // An insert inside the first tombstone runs up to the second one.
    assert_eq!(
        book.apply(1, 20, st(5), up(200)),
        vec![
            close_tomb(1, GONE, 15, Some(30), 3, 5),
            tomb(1, 15, Some(20), 5),
            open(1, 200, 20, Some(30), 5),
        ]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(5), 29), vec![(1, 200)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(5), 30), vec![]);
}

#[test]
fn insert_after_a_delete_runs_to_the_next_change() {
    let mut book = deleted_in_the_middle();
    assert_eq!(
        book.apply(1, 20, st(4), up(200)),
        vec![
            close_tomb(1, GONE, 15, Some(30), 3, 4),
            tomb(1, 15, Some(20), 4),
            open(1, 200, 20, Some(30), 4),
        ]
    );
    assert_eq!(
        book.apply(1, 15, st(5), up(150)),
        vec![
            close_tomb(1, GONE, 15, Some(20), 4, 5),
            open(1, 150, 15, Some(20), 5)
        ]
    );
    let line: Vec<_> = VALID_GRID.map(|v| book.current(&1, v).copied()).collect();
    let expected: Vec<_> = VALID_GRID
        .map(|v| match v {
            10..=14 => Some(100),
            15..=19 => Some(150),
            20..=29 => Some(200),
            30.. => Some(300),
            _ => None,
        })
        .collect();
    assert_eq!(line, expected);
    // At the end of the line too: [10,∞) deleted at 20, then an insert at 25.
    book.apply(2, 10, st(6), up(1));
    book.apply(2, 20, st(7), del());
    assert_eq!(
        book.apply(2, 25, st(8), up(2)),
        vec![
            close_tomb(2, GONE, 20, None, 7, 8),
            tomb(2, 20, Some(25), 8),
            open(2, 2, 25, None, 8),
        ]
    );
    assert_eq!(book.current(&2, 22), None);
}

#[test]
fn delete_where_nothing_is_valid_still_ends_what_comes_before_it() {
    let mut book = Book::new(st(0));
    assert_eq!(book.apply(9, 5, st(1), del()), vec![tomb(9, 5, None, 1)]);
    assert_eq!(book.len(), 1);
    assert_eq!(book.as_of(SystemPoint::Lsn(1), 6), vec![]);
    assert_eq!(book.current_keys(), Vec::<u8>::new());
    // A row back-dated before the delete ends at it.
    assert_eq!(
        book.apply(9, 3, st(2), up(7)),
        vec![open(9, 7, 3, Some(5), 2)]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 4), vec![(9, 7)]);
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 5), vec![]);
    // Two deletes in a row: a row inserted between them ends at the second.
    book.apply(1, 10, st(3), up(100));
    book.apply(1, 20, st(4), del());
    assert_eq!(
        book.apply(1, 25, st(5), del()),
        vec![
            close_tomb(1, GONE, 20, None, 4, 5),
            tomb(1, 20, Some(25), 5),
            tomb(1, 25, None, 5),
        ]
    );
    assert_eq!(
        book.apply(1, 22, st(6), up(220)),
        vec![
            close_tomb(1, GONE, 20, Some(25), 5, 6),
            tomb(1, 20, Some(22), 6),
            open(1, 220, 22, Some(25), 6),
        ]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(6), 24), vec![(1, 220)]);
}

#[test]
fn earlier_delete_keeps_the_later_one() {
    let mut book = Book::new(st(0));
    book.apply(1, 10, st(1), up(100));
    book.apply(1, 20, st(2), del());
    assert_eq!(
        book.apply(1, 15, st(3), del()),
        vec![
            close(1, 100, 10, Some(20), 2, 3),
            open(1, 100, 10, Some(15), 3),
            tomb(1, 15, Some(20), 3),
        ]
    );
    // A row inserted between the deletes still ends at 20.
    assert_eq!(
        book.apply(1, 17, st(4), up(170)),
        vec![
            close_tomb(1, GONE, 15, Some(20), 3, 4),
            tomb(1, 15, Some(17), 4),
            open(1, 170, 17, Some(20), 4),
        ]
    );
    assert_eq!(book.as_of(SystemPoint::Lsn(4), 20), vec![]);
}

#[test]
fn truncate_deletes_every_current_key() {
    let mut book = Book::new(st(0));
    // Valid time from the commit time, as for a table without a valid-time column.
    for (key, lsn) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
        book.apply(key, micros_of(lsn), st(lsn), up(u32::from(key)));
    }
    book.apply(4, micros_of(4), st(5), del());
    assert_eq!(book.current_keys(), vec![1, 2, 3]);
    let at = micros_of(6);
    for key in book.current_keys() {
        let deltas = book.apply(key, at, st(6), del());
        let from = micros_of(key.into());
        assert_eq!(
            deltas,
            vec![
                close(key, u32::from(key), from, None, key.into(), 6),
                open(key, u32::from(key), from, Some(at), 6),
                tomb(key, at, None, 6),
            ]
        );
    }
    for p in points(6) {
        assert_eq!(book.as_of(p, at), vec![]);
        assert_eq!(book.as_of(p, at + 100), vec![]);
        assert_eq!(book.as_of(p, at - 1), vec![(1, 1), (2, 2), (3, 3)]);
    }
    for p in points(5) {
        assert_eq!(book.as_of(p, at), vec![(1, 1), (2, 2), (3, 3)]);
    }
    // The versions valid before the truncate are still current history.
    assert_eq!(book.current_keys(), vec![1, 2, 3]);
    assert_eq!(book.current(&1, at), None);
}

#[test]
fn truncate_points_end_every_row_from_then_on() {
    let mut book = Book::new(st(0));
    book.apply(1, 10, st(1), up(100));
    book.apply(1, 20, st(2), del());
    book.apply(1, 30, st(3), up(300));
    book.apply(2, 40, st(4), up(400));
    assert_eq!(book.truncate_points(15), vec![(1, 15), (1, 30), (2, 40)]);
    assert_eq!(book.truncate_points(25), vec![(1, 30), (2, 40)]);
    assert_eq!(book.truncate_points(45), vec![(1, 45), (2, 45)]);
    for (key, valid) in book.truncate_points(15) {
        book.apply(key, valid, st(5), del());
    }
    assert_eq!(book.as_of(SystemPoint::Lsn(5), 12), vec![(1, 100)]);
    for valid in [15, 30, 40, 1000] {
        assert_eq!(book.as_of(SystemPoint::Lsn(5), valid), vec![]);
    }
    assert_eq!(book.truncate_points(15), vec![]);
}

#[test]
fn same_value_upsert_is_a_new_system_version() {
    let mut book = Book::new(st(0));
    book.apply(1, 10, st(1), up(100));
    assert_eq!(
        book.apply(1, 10, st(2), up(100)),
        vec![close(1, 100, 10, None, 1, 2), open(1, 100, 10, None, 2)]
    );
    assert_eq!(book.len(), 2);
}

#[test]
fn changes_of_one_transaction_apply_in_order() {
    let mut book = Book::new(st(0));
    book.apply(1, 10, st(5), up(1));
    assert_eq!(
        book.apply(1, 10, st(5), up(2)),
        vec![close(1, 1, 10, None, 5, 5), open(1, 2, 10, None, 5)]
    );
    for p in points(5) {
        assert_eq!(book.as_of(p, 10), vec![(1, 2)]);
    }
    for p in points(4) {
        assert_eq!(book.as_of(p, 10), vec![]);
    }
    // The version with the empty system interval is held but never visible.
    assert_eq!(book.versions().len(), 2);
}

#[test]
fn prune_forgets_old_closed_versions_and_raises_complete_since() {
    let mut book = Book::new(st(1));
    assert_eq!(book.complete_since(), st(1));
    for lsn in 2..=5 {
        book.apply(1, 10, st(lsn), up(lsn as u32));
    }
    book.apply(2, 10, st(2), up(7));
    book.apply(2, 10, st(3), del());
    assert_eq!(book.len(), 6);
    let before: Vec<_> = (3..=6)
        .flat_map(points)
        .map(|p| book.as_of(p, 10))
        .collect();
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 10), vec![(1, 2), (2, 7)]);

    // Closed at lsn 3 (two of them); the one closed at 4 stays (4 is not before 4).
    assert_eq!(book.prune_closed_before(micros_of(4)), 2);
    assert_eq!(book.complete_since(), st(3));
    assert_eq!(book.len(), 4);
    assert_eq!(book.versions().len(), 4);
    let after: Vec<_> = (3..=6)
        .flat_map(points)
        .map(|p| book.as_of(p, 10))
        .collect();
    assert_eq!(before, after);
    // Before complete_since the book answers only from what it holds.
    assert_eq!(book.as_of(SystemPoint::Lsn(2), 10), vec![]);
    assert_eq!(book.prune_closed_before(micros_of(4)), 0);
    assert_eq!(book.complete_since(), st(3));

    assert_eq!(book.prune_closed_before(i64::MAX), 2);
    assert_eq!(book.complete_since(), st(5));
    let tombstone = Version {
        tombstone: true,
        ..version(2, GONE, 10, None, 3)
    };
    assert_eq!(book.versions(), vec![version(1, 5, 10, None, 5), tombstone]);
    assert_eq!(book.current_keys(), vec![1]);
    assert!(!book.is_empty());
}

#[test]
fn restore_implies_tombstones_from_valid_to() {
    let mut book = Book::new(st(9));
    book.restore(version(1, 8, 8, None, 2));
    book.restore(version(1, 1, 1, Some(5), 1));
    // Ignored: closed, and an empty valid interval.
    book.restore(Version {
        system_to: Some(st(3)),
        ..version(2, 1, 1, None, 1)
    });
    book.restore(version(3, 1, 4, Some(4), 1));
    assert_eq!(book.len(), 3);
    assert_eq!(book.current_keys(), vec![1]);
    assert_eq!(book.current(&1, 6), None);
    assert_eq!(book.as_of(SystemPoint::Lsn(9), 3), vec![(1, 1)]);
    assert_eq!(
        book.apply(1, 6, st(10), up(6)),
        vec![
            // The implied tombstone records the row before it.
            close_tomb(1, 1, 5, Some(8), 1, 10),
            VersionDelta::Open(Version {
                tombstone: true,
                ..version(1, 1, 5, Some(6), 10)
            }),
            open(1, 6, 6, Some(8), 10),
        ]
    );
    assert_eq!(
        book.apply(1, 3, st(11), del()),
        vec![
            close(1, 1, 1, Some(5), 1, 11),
            open(1, 1, 1, Some(3), 11),
            tomb(1, 3, Some(5), 11),
        ]
    );
}

#[test]
fn restored_tombstones_replace_implied_ones() {
    let mut book = Book::new(st(9));
    let stored = Version {
        tombstone: true,
        ..version(1, GONE, 5, Some(7), 4)
    };
    // In either order, the stored tombstone wins over the one implied by `valid_to`.
    book.restore(version(1, 1, 1, Some(5), 1));
    book.restore(stored.clone());
    book.restore(version(1, 8, 7, None, 4));
    assert_eq!(book.len(), 3);
    let mut other = Book::new(st(9));
    other.restore(stored.clone());
    other.restore(version(1, 8, 7, None, 4));
    other.restore(version(1, 1, 1, Some(5), 1));
    assert_eq!(other.versions(), book.versions());
    assert!(book.versions().contains(&stored));
    assert_eq!(book.as_of(SystemPoint::Lsn(9), 6), vec![]);
    assert_eq!(book.as_of(SystemPoint::Lsn(9), 7), vec![(1, 8)]);
}

#[test]
fn diffs_are_the_interval_corners() {
    let key_value = (1u8, 7u32);
    assert_eq!(
        open(1, 7, 10, Some(20), 3).diffs(),
        vec![
            (key_value, Bt { sys: 3, valid: 10 }, 1),
            (key_value, Bt { sys: 3, valid: 20 }, -1),
        ]
    );
    assert_eq!(
        open(1, 7, 10, None, 3).diffs(),
        vec![(key_value, Bt { sys: 3, valid: 10 }, 1)]
    );
    assert_eq!(
        close(1, 7, 10, Some(20), 3, 5).diffs(),
        vec![
            (key_value, Bt { sys: 5, valid: 10 }, -1),
            (key_value, Bt { sys: 5, valid: 20 }, 1),
        ]
    );
}

#[test]
fn bt_is_a_product_lattice() {
    let a = Bt { sys: 3, valid: 7 };
    let b = Bt { sys: 4, valid: -2 };
    assert!(!a.less_equal(&b) && !b.less_equal(&a));
    assert_eq!(a.join(&b), Bt { sys: 4, valid: 7 });
    assert_eq!(a.meet(&b), Bt { sys: 3, valid: -2 });
    let min = Bt::minimum();
    assert_eq!(
        min,
        Bt {
            sys: 0,
            valid: i64::MIN
        }
    );
    assert_eq!(Bt::default(), min);
    for t in [
        a,
        b,
        min,
        Bt {
            sys: 0,
            valid: i64::MAX,
        },
    ] {
        assert!(min.less_equal(&t) && t.less_equal(&t));
        assert_eq!(().results_in(&t), Some(t));
    }
}

// ---------------------------------------------------------------------------------------
// Generated change logs and the oracle
// ---------------------------------------------------------------------------------------

/// One change of a generated log.
#[derive(Debug, Clone)]
struct Op {
    key: u8,
    valid: i64,
    lsn: Lsn,
    value: Option<u32>,
}

impl Op {
    fn apply_to(&self, book: &mut Book) -> Vec<Delta> {
        let edit = self.value.map_or(del(), up);
        book.apply(self.key, self.valid, st(self.lsn), edit)
    }
}

/// Logs of up to `max` changes: keys `0..4`, valid times `0..30`, small values, about one
/// delete in four, LSNs from 10 on, sometimes several changes per LSN.
fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    let change = (
        KEYS,
        0i64..30,
        prop_oneof![1 => Just(0u64), 3 => 1u64..=3],
        prop_oneof![3 => (0u32..4).prop_map(Some), 1 => Just(None)],
    );
    prop::collection::vec(change, 0..=max).prop_map(|raw| {
        let mut lsn = 10;
        raw.into_iter()
            .map(|(key, valid, step, value)| {
                lsn += step;
                Op {
                    key,
                    valid,
                    lsn,
                    value,
                }
            })
            .collect()
    })
}

fn known_at(lsn: Lsn, point: SystemPoint) -> bool {
    match point {
        SystemPoint::Lsn(p) => lsn <= p,
        SystemPoint::Micros(p) => micros_of(lsn) <= p,
    }
}

/// Every LSN from just before the first to just after the last, each as an LSN, as its
/// commit time and as a time between two commits; and a time before everything.
fn system_grid(ops: &[Op]) -> Vec<SystemPoint> {
    let first = ops.first().map_or(10, |op| op.lsn) - 1;
    let last = ops.last().map_or(10, |op| op.lsn) + 1;
    let mut grid = vec![SystemPoint::Micros(micros_of(first) - 1)];
    for lsn in first..=last {
        grid.push(SystemPoint::Lsn(lsn));
        grid.push(SystemPoint::Micros(micros_of(lsn)));
        grid.push(SystemPoint::Micros(micros_of(lsn) + 5));
    }
    grid
}

/// The oracle, from scratch over the whole log: the change of the key known at `point`
/// with the greatest valid time `<= valid` (the later one on ties) gives the row, its value
/// for an upsert, nothing for a delete.
fn oracle_rows(ops: &[Op], point: SystemPoint, valid: i64) -> Vec<(u8, u32)> {
    KEYS.filter_map(|key| {
        ops.iter()
            .enumerate()
            .filter(|(_, op)| op.key == key && known_at(op.lsn, point) && op.valid <= valid)
            .max_by_key(|(i, op)| (op.valid, *i))
            .and_then(|(_, op)| op.value)
            .map(|value| (key, value))
    })
    .collect()
}

fn apply_all(book: &mut Book, ops: &[Op]) -> Vec<Delta> {
    ops.iter().flat_map(|op| op.apply_to(book)).collect()
}

/// The rows at `(point, valid)` from summing the diffs at times `<= (lsn, valid)`; every
/// row must be there once or not at all.
fn rows_from_diffs(
    updates: &[Update],
    lsn: Lsn,
    valid: i64,
) -> Result<Vec<(u8, u32)>, TestCaseError> {
    let query = Bt { sys: lsn, valid };
    let mut sums: BTreeMap<(u8, u32), i64> = BTreeMap::new();
    for (row, time, diff) in updates {
        if time.less_equal(&query) {
            *sums.entry(*row).or_default() += diff;
        }
    }
    sums.retain(|_, sum| *sum != 0);
    prop_assert!(
        sums.values().all(|sum| *sum == 1),
        "multiplicities {sums:?} at {query:?}"
    );
    Ok(sums.into_keys().collect())
}

/// The consolidated contents of an arrangement with `Bt` times fed with the updates, one
/// capability step per LSN.
fn through_differential(updates: Vec<(Lsn, Vec<Update>)>) -> Vec<Update> {
    timely::execute_directly(move |worker| {
        let probe: ProbeHandle<Bt> = ProbeHandle::new();
        let (mut input, mut cap, mut trace) = worker.dataflow::<Bt, _, _>(|scope| {
            let ((input, cap), data) = scope.new_unordered_input::<Update>();
            let arranged = data.as_collection().arrange_by_key();
            arranged.stream.clone().probe_with(&probe);
            (input, cap, arranged.trace)
        });
        trace.set_physical_compaction(AntichainRef::new(&[]));
        for (lsn, batch) in updates {
            {
                let mut handle = input.activate();
                let mut session = handle.session(&cap);
                for update in batch {
                    session.give(update);
                }
            }
            cap.downgrade(&Bt {
                sys: lsn + 1,
                valid: i64::MIN,
            });
            worker.step_while(|| probe.less_than(cap.time()));
        }
        drop(input);
        drop(cap);
        worker.step_while(|| !probe.done());
        let batches = trace
            .batches_through(Antichain::new().borrow())
            .expect("the input is closed, so the trace is complete");
        let (mut cursor, storage) = cursor_list(batches);
        let mut out = Vec::new();
        while let Some(key) = cursor.get_key(&storage) {
            while let Some(value) = cursor.get_val(&storage) {
                cursor.map_times(&storage, |time, diff| {
                    out.push(((*key, *value), *time, *diff))
                });
                cursor.step_val(&storage);
            }
            cursor.step_key(&storage);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `as_of` equals the oracle at every grid point, on both kinds of system point.
    #[test]
    fn as_of_matches_the_oracle(ops in ops(60)) {
        let mut book = Book::new(st(0));
        apply_all(&mut book, &ops);
        for point in system_grid(&ops) {
            for valid in VALID_GRID {
                prop_assert_eq!(
                    book.as_of(point, valid),
                    oracle_rows(&ops, point, valid),
                    "at {:?}, valid {}", point, valid
                );
            }
        }
    }

    /// With valid time taken from the commit time (never going back), as for tables
    /// without a valid-time column, the book follows the oracle too.
    #[test]
    fn commit_time_validity_matches_the_oracle(ops in ops(60)) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| Op { valid: micros_of(op.lsn), ..op })
            .collect();
        let mut book = Book::new(st(0));
        apply_all(&mut book, &ops);
        for point in system_grid(&ops) {
            for op in &ops {
                for valid in [op.valid - 1, op.valid, op.valid + 1] {
                    prop_assert_eq!(book.as_of(point, valid), oracle_rows(&ops, point, valid));
                }
            }
        }
    }

    /// Summing the diffs of every delta at the times `<= (lsn, valid)` gives the oracle.
    #[test]
    fn diffs_sum_to_the_oracle(ops in ops(60)) {
        let mut book = Book::new(st(0));
        let updates: Vec<_> = apply_all(&mut book, &ops).iter().flat_map(|d| d.diffs()).collect();
        for point in system_grid(&ops) {
            if let SystemPoint::Lsn(lsn) = point {
                for valid in VALID_GRID {
                    let from_diffs = rows_from_diffs(&updates, lsn, valid)?;
                    prop_assert_eq!(from_diffs, oracle_rows(&ops, point, valid));
                }
            }
        }
    }

    /// The book restored from another book's current versions (in any order) behaves exactly
    /// like it: same deltas, same current answers, same rows from the resume point on.
    #[test]
    fn restored_book_behaves_like_the_original(
        ops in ops(60),
        split in 0usize..=60,
        reverse in any::<bool>(),
    ) {
        let split = split.min(ops.len());
        let (prefix, suffix) = ops.split_at(split);
        let resume = prefix.last().map_or(10, |op| op.lsn);
        let mut original = Book::new(st(0));
        apply_all(&mut original, prefix);
        let mut restored = Book::new(st(resume));
        let mut held = original.versions();
        if reverse {
            held.reverse();
        }
        // Closed versions are passed too: restore ignores them.
        for version in held {
            restored.restore(version);
        }
        let current = |book: &Book| -> Vec<Version<u8, u32>> {
            book.versions().into_iter().filter(|v| v.system_to.is_none()).collect()
        };
        prop_assert_eq!(current(&restored), current(&original));
        for op in suffix {
            prop_assert_eq!(op.apply_to(&mut restored), op.apply_to(&mut original), "{:?}", op);
            prop_assert_eq!(restored.current_keys(), original.current_keys());
        }
        for key in KEYS {
            for valid in VALID_GRID {
                prop_assert_eq!(restored.current(&key, valid), original.current(&key, valid));
            }
        }
        for point in system_grid(&ops) {
            if point_at_or_after(point, resume) {
                for valid in VALID_GRID {
                    prop_assert_eq!(restored.as_of(point, valid), original.as_of(point, valid));
                }
            }
        }
    }

    /// Invariants after every change: Closes refer to a current version and come first; the
    /// book holds exactly the versions its deltas describe (nothing disappears); `len` counts
    /// them; at most one version per key is visible at any point; the latest point shows the
    /// current values.
    #[test]
    fn deltas_and_versions_stay_consistent(ops in ops(60)) {
        let mut book = Book::new(st(0));
        let mut current: BTreeMap<(u8, i64), Version<u8, u32>> = BTreeMap::new();
        let mut closed: BTreeMap<u8, Vec<Version<u8, u32>>> = BTreeMap::new();
        for op in &ops {
            let deltas = op.apply_to(&mut book);
            let opens = deltas.iter().position(|d| matches!(d, VersionDelta::Open(_)));
            prop_assert!(
                deltas[opens.unwrap_or(deltas.len())..]
                    .iter()
                    .all(|d| matches!(d, VersionDelta::Open(_))),
                "closes after opens: {:?}", deltas
            );
            prop_assert!(deltas.len() <= 3);
            for delta in deltas {
                match delta {
                    VersionDelta::Close {
                        key,
                        value,
                        valid_from,
                        valid_to,
                        system_from,
                        system_to,
                        tombstone,
                    } => {
                        prop_assert_eq!(key, op.key);
                        prop_assert_eq!(system_to, st(op.lsn));
                        let was = current.remove(&(key, valid_from));
                        let expected = Version {
                            key,
                            value,
                            valid_from,
                            valid_to,
                            system_from,
                            system_to: None,
                            tombstone,
                        };
                        prop_assert_eq!(was.as_ref(), Some(&expected), "not current");
                        prop_assert!(system_from <= system_to);
                        let ended = Version { system_to: Some(system_to), ..expected };
                        closed.entry(key).or_default().push(ended);
                    }
                    VersionDelta::Open(version) => {
                        prop_assert_eq!(version.key, op.key);
                        prop_assert_eq!(version.system_from, st(op.lsn));
                        prop_assert_eq!(version.system_to, None);
                        prop_assert!(version.valid_to.is_none_or(|to| version.valid_from < to));
                        let clash = current.insert((version.key, version.valid_from), version);
                        prop_assert_eq!(clash, None);
                    }
                }
            }
            let mut expected = Vec::new();
            for key in KEYS {
                expected.extend(closed.get(&key).into_iter().flatten().cloned());
                let of_key = current.range((key, i64::MIN)..=(key, i64::MAX));
                expected.extend(of_key.map(|(_, v)| v.clone()));
            }
            let held = book.versions();
            prop_assert_eq!(&held, &expected);
            prop_assert_eq!(book.len(), held.len());
            prop_assert_eq!(book.is_empty(), held.is_empty());
            for valid in VALID_GRID {
                let latest: Vec<_> = KEYS
                    .filter_map(|key| book.current(&key, valid).map(|value| (key, *value)))
                    .collect();
                prop_assert_eq!(book.as_of(SystemPoint::Lsn(op.lsn), valid), latest);
            }
        }
        let held = book.versions();
        for point in system_grid(&ops) {
            for valid in VALID_GRID {
                for key in KEYS {
                    let visible = held
                        .iter()
                        .filter(|v| v.key == key && v.visible_at(point, valid))
                        .count();
                    prop_assert!(visible <= 1, "{} of {} at {:?}, {}", visible, key, point, valid);
                }
            }
        }
    }

    /// Pruning keeps `as_of` exact from `complete_since` on and drops only closed versions.
    #[test]
    fn prune_keeps_answers_from_complete_since(ops in ops(60), horizon_lsn in 8u64..200) {
        let mut book = Book::new(st(0));
        apply_all(&mut book, &ops);
        let before = book.clone();
        let closed_old = book
            .versions()
            .iter()
            .filter(|v| v.system_to.is_some_and(|t| t.micros < micros_of(horizon_lsn)))
            .count();
        prop_assert_eq!(book.prune_closed_before(micros_of(horizon_lsn)), closed_old);
        prop_assert_eq!(book.len(), before.len() - closed_old);
        prop_assert_eq!(book.current_keys(), before.current_keys());
        let since = book.complete_since();
        prop_assert!(since == st(0) || since.lsn < horizon_lsn);
        for point in system_grid(&ops) {
            let complete = match point {
                SystemPoint::Lsn(p) => p >= since.lsn,
                SystemPoint::Micros(p) => p >= since.micros,
            };
            if complete {
                for valid in VALID_GRID {
                    prop_assert_eq!(book.as_of(point, valid), oracle_rows(&ops, point, valid));
                }
            }
        }
    }

    /// No input makes the book panic, whatever the valid times, values and restores.
    #[test]
    fn no_panics_on_any_input(
        changes in prop::collection::vec(
            (KEYS, any::<i64>(), 0u64..3, prop::option::of(any::<u32>())),
            0..40,
        ),
        garbage in prop::collection::vec(
            (KEYS, any::<i64>(), prop::option::of(any::<i64>()), any::<u64>()),
            0..10,
        ),
        horizon in any::<i64>(),
    ) {
        let mut book = Book::new(st(0));
        for (key, from, to, lsn) in garbage {
            book.restore(Version {
                key,
                value: 0,
                valid_from: from,
                valid_to: to,
                system_from: st(lsn % 1000),
                system_to: None,
                tombstone: lsn % 3 == 0,
            });
        }
        let mut lsn = 1000;
        for (key, valid, step, value) in changes {
            lsn += step;
            for delta in book.apply(key, valid, st(lsn), value.map_or(Edit::Delete(0), Edit::Upsert)) {
                delta.diffs();
            }
            book.current(&key, valid);
            book.as_of(SystemPoint::Lsn(lsn), valid);
        }
        book.current_keys();
        book.prune_closed_before(horizon);
        prop_assert_eq!(book.len(), book.versions().len());
    }
}

fn point_at_or_after(point: SystemPoint, lsn: Lsn) -> bool {
    match point {
        SystemPoint::Lsn(p) => p >= lsn,
        SystemPoint::Micros(p) => p >= micros_of(lsn),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A real differential arrangement with `Bt` times, fed with the diffs of every delta one
    /// LSN at a time, holds at every grid point exactly the oracle's rows.
    #[test]
    fn differential_collection_matches_the_oracle(ops in ops(60)) {
        let mut book = Book::new(st(0));
        let mut by_lsn: Vec<(Lsn, Vec<Update>)> = Vec::new();
        for op in &ops {
            let diffs: Vec<_> = op.apply_to(&mut book).iter().flat_map(|d| d.diffs()).collect();
            match by_lsn.last_mut() {
                Some((lsn, batch)) if *lsn == op.lsn => batch.extend(diffs),
                _ => by_lsn.push((op.lsn, diffs)),
            }
        }
        let contents = through_differential(by_lsn);
        for point in system_grid(&ops) {
            if let SystemPoint::Lsn(lsn) = point {
                for valid in VALID_GRID {
                    let from_differential = rows_from_diffs(&contents, lsn, valid)?;
                    prop_assert_eq!(from_differential, oracle_rows(&ops, point, valid));
                }
            }
        }
    }
}

proptest! {
    /// The sorted-Vec line answers as the `BTreeMap` it replaced: inserts (replacing at
    /// an equal start), removes, the step containing a point and the steps after it.
    #[test]
    fn slot_line_agrees_with_a_btree_map(
        edits in proptest::collection::vec((any::<bool>(), -8i64..8, any::<u32>()), 0..40),
        probes in proptest::collection::vec(-10i64..10, 1..10),
    ) {
        let slot = |v: u32| super::Slot { value: v, system_from: st(1), tombstone: v.is_multiple_of(5) };
        let mut line = super::SlotLine::new();
        let mut map = BTreeMap::new();
        for (insert, start, v) in edits {
            if insert {
                let old = line.insert(start, slot(v)).map(|s| s.value);
                prop_assert_eq!(old, map.insert(start, v));
            } else {
                prop_assert_eq!(line.remove(start).map(|s| s.value), map.remove(&start));
            }
            prop_assert_eq!(line.is_empty(), map.is_empty());
        }
        let all: Vec<(i64, u32)> = line.iter().map(|(s, slot)| (s, slot.value)).collect();
        prop_assert_eq!(all, map.iter().map(|(s, v)| (*s, *v)).collect::<Vec<_>>());
        for p in probes {
            let got = line.at_or_before(p).map(|(s, slot)| (s, slot.value));
            let want = map.range(..=p).next_back().map(|(s, v)| (*s, *v));
            prop_assert_eq!(got, want);
            let after: Vec<i64> = line.after(p).map(|(s, _)| s).collect();
            let want_after: Vec<i64> = map.range(p + 1..).map(|(s, _)| *s).collect();
            prop_assert_eq!(after, want_after);
            prop_assert_eq!(line.contains(p), map.contains_key(&p));
        }
    }
}

/// A key's book is its line, in place: no larger than one slot beside its start, so a key
/// with one version costs its map entry and no allocation of its own.
#[test]
fn a_key_with_one_slot_needs_no_allocation_of_its_own() {
    use crate::operators::packed_row::PackedRow;
    let slot = std::mem::size_of::<(i64, super::Slot<PackedRow>)>();
    assert_eq!(std::mem::size_of::<super::KeyBook<PackedRow>>(), slot);
    let mut line = super::SlotLine::new();
    line.insert(
        3,
        super::Slot {
            value: 1u32,
            system_from: st(1),
            tombstone: false,
        },
    );
    assert!(
        matches!(line, super::SlotLine::One(_)),
        "one slot is kept in place"
    );
    line.insert(
        5,
        super::Slot {
            value: 2u32,
            system_from: st(2),
            tombstone: false,
        },
    );
    assert!(matches!(&line, super::SlotLine::Many(v) if v.len() == 2));
    line.remove(3);
    assert!(
        matches!(line, super::SlotLine::One((5, _))),
        "back in place at one slot"
    );
}
