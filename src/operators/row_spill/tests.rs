use proptest::prelude::*;

use super::*;
use crate::change::Cell;

fn row(i: usize, width: usize) -> PackedRow {
    PackedRow::pack(&[
        Cell::text(&i.to_string()),
        Cell::Null,
        Cell::text(&"x".repeat(width)),
    ])
}

/// Books reduced to a list of held rows beside the rows they stand for.
struct Held {
    store: RowStore,
    rows: Vec<(HeldRow, PackedRow)>,
}

impl Held {
    fn new(budget: Option<u64>, compact_min: u64) -> Held {
        let mut store = RowStore::new(budget);
        store.set_compact_min(compact_min);
        Held {
            store,
            rows: Vec::new(),
        }
    }

    fn hold(&mut self, row: PackedRow) {
        let held = self.store.hold(row.clone());
        self.rows.push((held, row));
    }

    fn walk(&mut self) -> WalkReport {
        let rows = &mut self.rows;
        self.store
            .shrink(|visit| rows.iter_mut().for_each(|(held, _)| visit(held)))
    }

    fn in_memory(&self) -> u64 {
        self.rows
            .iter()
            .filter_map(|(held, _)| match held {
                HeldRow::Memory(r) => Some(r.heap_bytes() as u64),
                HeldRow::Spilled(_) => None,
            })
            .sum()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for (held, row) in &self.rows {
            let back = self
                .store
                .row(held)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, row);
        }
        Ok(())
    }
}

#[test]
fn a_held_row_takes_no_more_than_a_packed_row() {
    assert_eq!(
        std::mem::size_of::<HeldRow>(),
        std::mem::size_of::<PackedRow>()
    );
}

#[test]
fn places_keep_offset_and_length() {
    let at = SpillRef::new((1 << 40) - 1, MAX_SPILLED_ROW).expect("fits");
    assert_eq!((at.offset(), at.len()), ((1 << 40) - 1, MAX_SPILLED_ROW));
    let at = SpillRef::new(12345, 0).expect("fits");
    assert_eq!((at.offset(), at.len()), (12345, 0));
    assert_eq!(SpillRef::new(1 << 40, 1), None);
    assert_eq!(SpillRef::new(0, MAX_SPILLED_ROW + 1), None);
}

#[test]
fn without_a_budget_every_row_stays_in_memory() {
    let mut held = Held::new(None, 0);
    (0..1000).for_each(|i| held.hold(row(i, 100)));
    assert!(!held.store.walk_due());
    assert_eq!(held.walk(), WalkReport::default());
    assert_eq!(held.store.file_bytes(), 0);
    assert!(held
        .rows
        .iter()
        .all(|(h, _)| matches!(h, HeldRow::Memory(_))));
}

#[test]
fn a_walk_moves_the_first_rows_until_half_the_budget_is_left() {
    let mut held = Held::new(Some(100_000), u64::MAX);
    let mut walks = 0;
    for i in 0..2000 {
        held.hold(row(i, 200));
        if held.store.walk_due() {
            let report = held.walk();
            walks += 1;
            assert!(report.resident_before > 100_000, "{report:?}");
            assert!(report.moved > 0);
            assert!(held.in_memory() <= 50_000, "{} in memory", held.in_memory());
        }
    }
    // About 450 KB of rows through a 100 KB budget: a walk per 50 KB added.
    assert!((6..=10).contains(&walks), "{walks} walks");
    assert_eq!(held.store.walks(), walks);
    assert!(held.in_memory() <= 100_000);
    assert_eq!(held.store.resident_bytes(), held.in_memory());
    // Nothing dropped: the file holds exactly the rows the walks moved.
    assert_eq!(held.store.spilled_bytes(), held.store.file_bytes());
    // Coldest first: what stayed in memory is the last rows held.
    let first_in_memory = held
        .rows
        .iter()
        .position(|(h, _)| matches!(h, HeldRow::Memory(_)))
        .expect("some rows stay");
    assert!(held.rows[first_in_memory..]
        .iter()
        .all(|(h, _)| matches!(h, HeldRow::Memory(_))));
    held.check().expect("every row reads back");
}

#[test]
fn rows_too_long_for_the_file_stay_in_memory() {
    let mut held = Held::new(Some(1024), u64::MAX);
    held.hold(row(0, MAX_SPILLED_ROW));
    held.hold(row(1, 600));
    held.walk();
    assert!(matches!(held.rows[0].0, HeldRow::Memory(_)));
    assert!(matches!(held.rows[1].0, HeldRow::Spilled(_)));
    held.check().expect("both read back");
}

#[test]
fn a_file_mostly_unused_is_copied_into_a_new_one() {
    let mut held = Held::new(Some(10_000), 50_000);
    (0..1000).for_each(|i| held.hold(row(i, 100)));
    held.walk();
    let full = held.store.file_bytes();
    assert!(full > 100_000, "{full} bytes");
    // The books stop holding nine in ten rows.
    let mut i = 0;
    held.rows.retain(|_| {
        i += 1;
        i % 10 == 0
    });
    let report = held.walk();
    assert!(report.compacted, "{report:?}");
    assert_eq!(held.store.compactions(), 1);
    assert!(
        held.store.file_bytes() < full / 5,
        "{} bytes",
        held.store.file_bytes()
    );
    assert_eq!(held.store.spilled_bytes(), held.store.file_bytes());
    held.check().expect("every row reads back after the copy");
}

#[test]
fn a_place_without_a_file_is_an_error_not_a_panic() {
    let store = RowStore::new(Some(1));
    let at = HeldRow::Spilled(SpillRef::new(8, 8).expect("fits"));
    assert!(matches!(store.row(&at), Err(RowSpillError::NoFile(8))));
}

#[derive(Debug, Clone)]
enum Op {
    Hold(usize),
    Drop(prop::sample::Index),
    Walk,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..400).prop_map(Op::Hold),
        3 => any::<prop::sample::Index>().prop_map(Op::Drop),
        1 => Just(Op::Walk),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever is held, dropped and walked, every held row reads back as it was, and a
    /// walk leaves at most half the budget in memory.
    #[test]
    fn held_rows_read_back(ops in prop::collection::vec(op(), 1..300), budget in 500u64..20_000) {
        let mut held = Held::new(Some(budget), 2_000);
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Hold(width) => held.hold(row(i, width)),
                Op::Drop(at) if !held.rows.is_empty() => {
                    let at = at.index(held.rows.len());
                    held.rows.swap_remove(at);
                }
                Op::Drop(_) => {}
                Op::Walk => {
                    held.walk();
                    prop_assert!(held.in_memory() <= budget / 2);
                    prop_assert_eq!(held.store.resident_bytes(), held.in_memory());
                }
            }
            if held.store.walk_due() {
                held.walk();
                prop_assert!(held.in_memory() <= budget / 2);
            }
            held.check()?;
        }
    }
}
