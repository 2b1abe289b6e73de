use super::*;
use crate::change::fixtures::table;
use crate::operators::version::VersionDelta;

fn prices() -> Arc<TableInfo> {
    Arc::new(table(
        "prices",
        &[
            ("tenant_id", "integer"),
            ("id", "integer"),
            ("price", "integer"),
            ("effective_at", "timestamp with time zone"),
        ],
        &[0, 1],
    ))
}

fn plan(valid: Option<&str>) -> HistoryPlan {
    HistoryPlan {
        tables: HashMap::from([("app.prices".to_string(), valid.map(str::to_owned))]),
        tenant_keys: HashMap::from([(
            "app.prices".to_string(),
            crate::control::job_spec::TenantKey::Column("tenant_id".to_string()),
        )]),
    }
}

fn t(s: &str) -> Cell {
    Cell::Text(s.into())
}

fn row(tenant: &str, id: &str, price: &str, at: &str) -> Row {
    vec![t(tenant), t(id), t(price), t(at)]
}

fn change(scope: Scope, action: TenantAction) -> TenantChange {
    TenantChange {
        scope,
        seq: 0,
        table: prices(),
        action,
    }
}

fn upsert(tenant: &str, new: Row) -> TenantChange {
    change(
        Scope::Tenant(tenant.into()),
        TenantAction::Upsert {
            old: None,
            new,
            insert: false,
        },
    )
}

struct Run {
    plan: HistoryPlan,
    books: Shelf,
    lsn: Lsn,
    /// Records by value (`record_owned_change`).
    owned: bool,
}

impl Run {
    fn new(valid: Option<&str>) -> Run {
        Run {
            plan: plan(valid),
            books: Shelf::default(),
            lsn: 100,
            owned: false,
        }
    }

    fn apply(&mut self, c: &TenantChange) -> Vec<HistoryEvent> {
        self.lsn += 10;
        let mut out = Vec::new();
        let start = SysTime { lsn: 0, micros: 0 };
        let system = SysTime {
            lsn: self.lsn,
            micros: self.lsn as i64 * 1000,
        };
        if self.owned {
            record_owned_change(
                &self.plan,
                &mut self.books,
                start,
                system,
                c.clone(),
                &mut out,
            )
            .expect("rows in memory");
        } else {
            record_change(&self.plan, &mut self.books, start, system, c, &mut out)
                .expect("rows in memory");
        }
        self.books.shrink_if_due();
        out
    }

    /// Every version held, rows read back from where they are.
    fn versions(&self) -> Vec<Vec<Version<PackedRow, PackedRow>>> {
        let rows = &self.books.rows;
        let mut books: Vec<_> = self.books.books.iter().collect();
        books.sort_by(|a, b| a.0.cmp(b.0));
        books
            .into_iter()
            .map(|(_, book)| {
                book.versions()
                    .into_iter()
                    .map(|v| {
                        let value = rows.row(&v.value).expect("the row reads back");
                        v.map(|k| k, |_| value)
                    })
                    .collect()
            })
            .collect()
    }
}

/// A change recorded by value (its row moved, no sink takes the changes) gives the same
/// events and books as one recorded by reference: inserts, a TOASTed update, a key
/// change, a delete.
#[test]
fn an_owned_change_records_what_a_borrowed_one_does() {
    let keyed = |old: Row, new: Row| {
        change(
            Scope::Tenant("7".into()),
            TenantAction::Upsert {
                old: Some(old),
                new,
                insert: false,
            },
        )
    };
    let mut toasted = row("7", "42", "11", MAR);
    toasted[2] = Cell::Unchanged;
    let changes = [
        upsert("7", row("7", "42", "10", MAR)),
        upsert("7", row("7", "43", "20", FEB)),
        upsert("7", toasted),
        keyed(row("7", "43", "20", FEB), row("7", "44", "21", FEB)),
        change(
            Scope::Tenant("7".into()),
            TenantAction::Delete {
                old: row("7", "42", "", MAR),
            },
        ),
    ];
    let mut borrowed = Run::new(Some("effective_at"));
    let mut owned = Run::new(Some("effective_at"));
    owned.owned = true;
    for c in &changes {
        let (a, b) = (borrowed.apply(c), owned.apply(c));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{c:?}");
    }
    assert_eq!(borrowed.versions(), owned.versions());
}

fn opens(events: &[HistoryEvent]) -> Vec<(Row, i64, Option<i64>)> {
    events
        .iter()
        .filter_map(|e| match &e.delta {
            VersionDelta::Open(v) => Some((v.value.clone(), v.valid_from, v.valid_to)),
            VersionDelta::Close { .. } => None,
        })
        .collect()
}

fn closes(events: &[HistoryEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.delta, VersionDelta::Close { .. }))
        .count()
}

const JAN: &str = "2026-01-01 00:00:00+00";
const FEB: &str = "2026-02-01 00:00:00+00";
const MAR: &str = "2026-03-01 00:00:00+00";

#[test]
fn valid_time_comes_from_the_named_column_and_corrections_split() {
    let mut run = Run::new(Some("effective_at"));
    let jan = parse_pg_timestamp(JAN).unwrap();
    let feb = parse_pg_timestamp(FEB).unwrap();
    let mar = parse_pg_timestamp(MAR).unwrap();
    let first = run.apply(&upsert("7", row("7", "42", "10", MAR)));
    assert_eq!(opens(&first), vec![(row("7", "42", "10", MAR), mar, None)]);
    // A correction valid from January: the row is known to be 8 from January until
    // March, when 10 takes over.
    let fix = run.apply(&upsert("7", row("7", "42", "8", JAN)));
    assert_eq!(closes(&fix), 0, "nothing was valid in January yet");
    assert_eq!(
        opens(&fix),
        vec![(row("7", "42", "8", JAN), jan, Some(mar))]
    );
    // February: splits the January version.
    let split = run.apply(&upsert("7", row("7", "42", "9", FEB)));
    assert_eq!(closes(&split), 1);
    assert_eq!(
        opens(&split),
        vec![
            (row("7", "42", "8", JAN), jan, Some(feb)),
            (row("7", "42", "9", FEB), feb, Some(mar))
        ]
    );
    assert!(split
        .iter()
        .all(|e| e.tenant == "7" && e.op == HistoryOp::Update));
}

#[test]
fn without_a_valid_column_or_with_garbage_the_commit_time_is_used() {
    let mut run = Run::new(None);
    let events = run.apply(&upsert("1", row("1", "1", "5", "not a time")));
    assert_eq!(opens(&events)[0].1, 110 * 1000);
    let mut run = Run::new(Some("effective_at"));
    let events = run.apply(&upsert("1", row("1", "1", "5", "not a time")));
    assert_eq!(
        opens(&events)[0].1,
        110 * 1000,
        "unreadable valid time falls back"
    );
}

#[test]
fn key_changes_delete_the_old_key_and_unchanged_values_are_filled() {
    let mut run = Run::new(None);
    run.apply(&upsert("1", row("1", "1", "5", JAN)));
    let moved = run.apply(&change(
        Scope::Tenant("1".into()),
        TenantAction::Upsert {
            old: Some(row("1", "1", "5", JAN)),
            new: vec![t("1"), t("2"), Cell::Unchanged, t(JAN)],
            insert: false,
        },
    ));
    assert_eq!(closes(&moved), 1, "the old key's version is closed");
    // The new key had no version: its unchanged cell stays unknown.
    let toasted = run.apply(&upsert("1", vec![t("1"), t("2"), Cell::Unchanged, t(FEB)]));
    let value = opens(&toasted).last().unwrap().0.clone();
    assert_eq!(value[2], Cell::Unchanged);
    run.apply(&upsert("1", row("1", "3", "7", JAN)));
    let filled = run.apply(&upsert("1", vec![t("1"), t("3"), Cell::Unchanged, t(FEB)]));
    assert_eq!(opens(&filled).last().unwrap().0[2], t("7"));
}

#[test]
fn tenantless_deletes_and_truncates_reach_the_owning_tenants() {
    let mut run = Run::new(None);
    run.apply(&upsert("1", row("1", "1", "5", JAN)));
    run.apply(&upsert("2", row("2", "1", "6", JAN)));
    run.apply(&upsert("2", row("2", "2", "6", JAN)));
    let worker = Scope::Worker { index: 0, peers: 1 };
    let deleted = run.apply(&change(
        worker.clone(),
        TenantAction::Delete {
            old: row("2", "2", "6", JAN),
        },
    ));
    assert_eq!(closes(&deleted), 1);
    assert_eq!(deleted[0].tenant, "2");
    let truncated = run.apply(&change(worker, TenantAction::Truncate));
    assert_eq!(
        closes(&truncated),
        2,
        "tenant 1's and tenant 2's remaining rows"
    );
    assert!(truncated.iter().all(|e| e.op == HistoryOp::Delete));
    let again = run.apply(&change(Scope::Tenant("1".into()), TenantAction::Truncate));
    assert!(again.is_empty());
}

/// Rows a backfill loaded at a floor: their changes below it are in the load (and the
/// books), so they record nothing; from the floor on, and for other tenants and tables,
/// changes record as ever. A change naming no tenant spares the floored tenant only.
#[test]
fn changes_below_a_backfill_floor_record_nothing() {
    let mut run = Run::new(None);
    run.apply(&upsert("1", row("1", "1", "5", JAN)));
    run.apply(&upsert("2", row("2", "1", "6", JAN)));
    // The next changes commit at 130, 140, 150, 160.
    run.books.floors.insert("app.prices", Some("2"), 160);
    assert!(run.apply(&upsert("2", row("2", "2", "7", JAN))).is_empty());
    assert_eq!(
        opens(&run.apply(&upsert("1", row("1", "2", "7", JAN)))).len(),
        1
    );
    let worker = Scope::Worker { index: 0, peers: 1 };
    let truncated = run.apply(&change(worker, TenantAction::Truncate));
    assert!(
        !truncated.is_empty() && truncated.iter().all(|e| e.tenant == "1"),
        "{truncated:?}"
    );
    // At the floor (commit 160) tenant 2 records again.
    let at_floor = run.apply(&upsert("2", row("2", "3", "8", JAN)));
    assert_eq!(opens(&at_floor).len(), 1);
    let mut other = Run::new(None);
    other.books.floors.insert("app.other", None, 1000);
    assert_eq!(
        opens(&other.apply(&upsert("2", row("2", "1", "6", JAN)))).len(),
        1
    );
}

#[test]
fn tables_without_history_produce_nothing() {
    let mut run = Run::new(None);
    run.plan.tables.clear();
    assert!(run.apply(&upsert("1", row("1", "1", "5", JAN))).is_empty());
}

/// What [`through_operator`] saw.
struct Run2 {
    /// The items given, by timestamp.
    given: Vec<(Lsn, SinkItem)>,
    /// Items given before each transaction's input was closed.
    early: Vec<usize>,
    /// Tenant 1's rows a query of the books saw then, and at the end.
    visible: Vec<usize>,
}

/// Runs `txns` (commit LSN, changes) through the operator, each given in chunks of
/// `chunk` with the worker stepped in between.
fn through_operator(txns: &[(Lsn, Vec<TenantChange>)], chunk: usize) -> Run2 {
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::Input;
    use timely::dataflow::InputHandleVec;
    let txns = txns.to_vec();
    timely::execute_directly(move |worker| {
        let mut input: InputHandleVec<Lsn, TenantChange> = InputHandleVec::new();
        let books = Arc::new(HistoryBooks::new(SysTime { lsn: 0, micros: 0 }));
        let shared = books.clone();
        let out = worker.dataflow::<Lsn, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .version_history(Arc::new(plan(None)), shared, false, |lsn| {
                    Some(lsn as i64 * 1000)
                })
                .capture()
        });
        let now = i64::MAX / 2;
        let query = || {
            books
                .as_of("1", &prices(), SystemPoint::Micros(now), now)
                .map_or(0, |rows| rows.len())
        };
        let mut visible = Vec::new();
        let mut given = Vec::new();
        let mut early = Vec::new();
        let take = |given: &mut Vec<(Lsn, SinkItem)>| {
            for event in out.try_iter() {
                if let Event::Messages(stamp, data) = event {
                    let t = *stamp.expect_singleton();
                    given.extend(data.into_iter().map(|d| (t, d)));
                }
            }
        };
        for (lsn, changes) in txns {
            input.advance_to(lsn);
            for piece in changes.chunks(chunk) {
                for c in piece {
                    input.send(c.clone());
                }
                input.flush();
                for _ in 0..20 {
                    worker.step();
                }
            }
            take(&mut given);
            early.push(given.len());
            visible.push(query());
            input.advance_to(lsn + 1);
        }
        drop(input);
        while worker.step() {}
        take(&mut given);
        visible.push(query());
        Run2 {
            given,
            early,
            visible,
        }
    })
}

/// A transaction far larger than [`STREAM_CHANGES`] is applied to the books as its
/// changes arrive, before its input closes, with the events applying it whole records;
/// a small one waits for its commit.
#[test]
fn a_large_transaction_is_versioned_as_it_arrives_with_the_same_events() {
    let n = STREAM_CHANGES * 2 + 500;
    let key = |i: usize| row("1", &(i % 3_000).to_string(), &i.to_string(), "x");
    let mut big: Vec<TenantChange> = (0..n).map(|i| upsert("1", key(i))).collect();
    for (i, c) in big.iter_mut().enumerate() {
        c.seq = i as u32;
    }
    let small: Vec<TenantChange> = (0..5)
        .map(|i| TenantChange {
            seq: i,
            ..upsert("2", row("2", &i.to_string(), "1", "x"))
        })
        .collect();
    let txns = vec![(100, small), (200, big)];
    let Run2 {
        given: streamed,
        early,
        visible,
    } = through_operator(&txns, 1_000);
    assert_eq!(early[0], 0, "the small transaction waits for its commit");
    assert!(
        early[1] > 5 + STREAM_CHANGES,
        "the large one was versioned before its commit: {early:?}"
    );
    // What applying each transaction whole, in order, records.
    let plan = plan(None);
    let mut books = Shelf::default();
    let mut whole = Vec::new();
    for (lsn, changes) in &txns {
        let system = SysTime {
            lsn: *lsn,
            micros: *lsn as i64 * 1000,
        };
        let mut out = Vec::new();
        for c in changes {
            let start = SysTime { lsn: 0, micros: 0 };
            record_owned_change(&plan, &mut books, start, system, c.clone(), &mut out)
                .expect("rows in memory");
        }
        whole.extend(out.into_iter().map(|e| (*lsn, e)));
    }
    let streamed: Vec<(Lsn, HistoryEvent)> = streamed
        .into_iter()
        .filter_map(|(t, item)| match item {
            SinkItem::History(e) => Some((t, e)),
            SinkItem::Change(_) => None,
        })
        .collect();
    assert_eq!(streamed.len(), whole.len());
    assert!(streamed == whole, "the same events in the same order");
    // A query of the books never sees half of it: nothing of tenant 1 while it is
    // partly applied, its 3,000 keys once it is complete.
    assert_eq!(visible, [0, 0, 3_000]);
    // Keys repeat (3,000 keys, 20,500 changes): versions were closed within the
    // transaction across the pieces.
    assert!(streamed
        .iter()
        .any(|(_, e)| matches!(e.delta, VersionDelta::Close { .. })));
}

/// Changes of every kind over 150 keys of 3 tenants: inserts and updates at valid times
/// that go back and forth (corrections split versions), TOASTed updates, key changes,
/// deletes and a truncate now and then.
fn mixed_changes(n: usize) -> Vec<TenantChange> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let times = [JAN, FEB, MAR];
    (0..n)
        .map(|i| {
            let tenant = (1 + next(3)).to_string();
            let id = next(50).to_string();
            let at = times[next(3) as usize];
            let wide = format!("{i}-{}", "p".repeat(next(300) as usize));
            let scope = Scope::Tenant(tenant.clone());
            match next(20) {
                0..=10 => upsert(&tenant, row(&tenant, &id, &wide, at)),
                11..=13 => {
                    let mut toasted = row(&tenant, &id, "", at);
                    toasted[2] = Cell::Unchanged;
                    upsert(&tenant, toasted)
                }
                14..=15 => change(
                    scope,
                    TenantAction::Upsert {
                        old: Some(row(&tenant, &id, "", at)),
                        new: row(&tenant, &next(50).to_string(), &wide, at),
                        insert: false,
                    },
                ),
                16..=18 => change(
                    scope,
                    TenantAction::Delete {
                        old: row(&tenant, &id, "", at),
                    },
                ),
                _ if i % 7 == 0 => change(scope, TenantAction::Truncate),
                _ => upsert(&tenant, row(&tenant, &id, &wide, at)),
            }
        })
        .collect()
}

/// Books whose rows go to the spill file beyond a few KiB give the same events and end
/// with the same versions as books that keep every row in memory.
#[test]
fn a_small_row_budget_records_what_memory_does() {
    let mut memory = Run::new(Some("effective_at"));
    let mut spilled = Run::new(Some("effective_at"));
    spilled.books = Shelf::new(Some(8 << 10));
    // Compacted once the file passes 64 KiB and is less than half used.
    spilled.books.rows.set_compact_min(64 << 10);
    for (i, c) in mixed_changes(4000).iter().enumerate() {
        assert_eq!(memory.apply(c), spilled.apply(c), "change {i}: {c:?}");
        if i % 500 == 499 {
            // The hot window moves on: closed versions leave both, some rows in the file
            // with them.
            for run in [&mut memory, &mut spilled] {
                let horizon = run.lsn as i64 * 1000 - 300_000;
                for book in run.books.books.values_mut() {
                    book.prune_closed_before(horizon);
                }
            }
        }
    }
    assert_eq!(memory.versions(), spilled.versions());
    let rows = &spilled.books.rows;
    assert!(rows.spilled_bytes() > 100_000, "{rows:?}");
    assert!(rows.resident_bytes() <= 8 << 10, "{rows:?}");
    assert!(rows.compactions() > 0, "{rows:?}");
    assert_eq!(memory.books.rows.file_bytes(), 0);
}

/// A row that does not read back stops the operator: no events, its input's time held
/// (nothing past the transaction can be confirmed), and the books say why.
#[test]
fn a_row_that_does_not_read_back_stops_the_operator_where_it_is() {
    use crate::operators::row_spill::SpillRef;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::{Input, Probe};
    use timely::dataflow::InputHandleVec;
    let (given, frontier, failure) = timely::execute_directly(|worker| {
        let start = SysTime { lsn: 0, micros: 0 };
        let books = Arc::new(HistoryBooks::new(start));
        // Tenant 1's key 5 points into a spill file that is not there.
        books
            .books
            .lock()
            .expect("not poisoned")
            .books
            .entry(("1".to_string(), "app.prices".to_string()))
            .or_insert_with(|| Book::new(start))
            .restore(Version {
                key: PackedRow::pack(&[t("1"), t("5")]),
                value: HeldRow::Spilled(SpillRef::new(0, 40).expect("fits")),
                valid_from: 0,
                valid_to: None,
                system_from: start,
                system_to: None,
                tombstone: false,
            });
        let mut input: InputHandleVec<Lsn, TenantChange> = InputHandleVec::new();
        let id = worker.next_dataflow_index();
        let shared = books.clone();
        let (out, probe) = worker.dataflow::<Lsn, _, _>(|scope| {
            let stream = scope.input_from(&mut input).version_history(
                Arc::new(plan(None)),
                shared,
                false,
                |lsn| Some(lsn as i64 * 1000),
            );
            let (probe, stream) = stream.probe();
            (stream.capture(), probe)
        });
        input.advance_to(10);
        input.send(upsert("1", row("1", "5", "7", JAN)));
        input.advance_to(20);
        input.send(upsert("1", row("1", "6", "8", JAN)));
        input.advance_to(30);
        for _ in 0..50 {
            worker.step();
        }
        let given: usize = out
            .try_iter()
            .map(|e| match e {
                Event::Messages(_, data) => data.len(),
                Event::Progress(_) => 0,
            })
            .sum();
        let frontier = probe.with_frontier(|f| f.to_vec());
        worker.drop_dataflow(id);
        (given, frontier, books.failure())
    });
    assert_eq!(given, 0);
    assert_eq!(frontier, vec![10], "the failed transaction's time is held");
    let why = failure.expect("the books say why");
    assert!(
        why.contains("LSN 10") && why.contains("spill file"),
        "{why}"
    );
}

/// A backfilled tenant's books hold its rows as of the floor only: as-of queries before
/// the floor, or by clock time, go to the history table (`None`); other tenants' do not.
#[test]
fn books_answer_for_backfilled_rows_only_from_their_floor() {
    let books = HistoryBooks::new(SysTime {
        lsn: 100,
        micros: 100_000,
    });
    let version = |tenant: &str, lsn: Lsn| Version {
        key: vec![t(tenant), t("1")],
        value: row(tenant, "1", "5", JAN),
        valid_from: 0,
        valid_to: None,
        system_from: SysTime {
            lsn,
            micros: lsn as i64 * 1000,
        },
        system_to: None,
        tombstone: false,
    };
    books.restore("1", "app.prices", version("1", 90));
    books.restore("2", "app.prices", version("2", 150));
    let mut floors = Floors::default();
    floors.insert("app.prices", Some("2"), 150);
    books.set_floors(floors);
    let rows = |tenant: &str, system: SystemPoint| {
        books
            .as_of(tenant, &prices(), system, 1)
            .map(|rows| rows.len())
    };
    assert_eq!(rows("2", SystemPoint::Lsn(140)), None, "before the floor");
    assert_eq!(rows("2", SystemPoint::Lsn(150)), Some(1));
    assert_eq!(
        rows("2", SystemPoint::Micros(i64::MAX / 2)),
        None,
        "by clock time"
    );
    assert_eq!(rows("1", SystemPoint::Lsn(120)), Some(1));
    assert_eq!(rows("1", SystemPoint::Micros(i64::MAX / 2)), Some(1));
}

/// `prices()` with its columns numbered 1–4 as the source's catalog numbers them, without
/// the columns named in `dropped`.
fn numbered_prices(dropped: &[&str]) -> Arc<TableInfo> {
    let mut table = (*prices()).clone();
    for (i, c) in table.columns.iter_mut().enumerate() {
        c.attnum = Some(i as i16 + 1);
    }
    table
        .columns
        .retain(|c| !dropped.contains(&c.name.as_str()));
    Arc::new(table)
}

#[test]
fn column_maps_follow_numbers_then_names_and_keep_places_where_nothing_moved() {
    let all = numbered_prices(&[]);
    let without_price = numbered_prices(&["price"]);
    // Added at the end, or nothing changed: places kept.
    assert_eq!(column_map(&without_price, &without_price), None);
    let mut added = (*all).clone();
    added.columns.push(ColumnInfo {
        attnum: Some(5),
        ..added.columns[2].clone()
    });
    added.columns[4].name = "note".into();
    assert_eq!(column_map(&all, &added), None);
    // Renamed in place: the number says it is the same column.
    let mut renamed = (*all).clone();
    renamed.columns[2].name = "amount".into();
    assert_eq!(column_map(&all, &renamed), None);
    // Dropped from the middle: the later columns move.
    assert_eq!(
        column_map(&all, &without_price),
        Some(vec![Some(0), Some(1), Some(3)])
    );
    // Without numbers: by name, and a renamed column at its place.
    let plain = |t: &TableInfo| {
        let mut t = t.clone();
        t.columns.iter_mut().for_each(|c| c.attnum = None);
        t
    };
    assert_eq!(
        column_map(&plain(&all), &plain(&without_price)),
        Some(vec![Some(0), Some(1), Some(3)])
    );
    assert_eq!(column_map(&plain(&all), &plain(&renamed)), None);
}

#[test]
fn a_column_dropped_from_the_middle_moves_the_held_versions_to_the_new_shape() {
    let mut run = Run::new(None);
    let before = numbered_prices(&[]);
    let after = numbered_prices(&["price"]);
    let with = |table: &Arc<TableInfo>, new: Row| TenantChange {
        scope: Scope::Tenant("1".into()),
        seq: 0,
        table: table.clone(),
        action: TenantAction::Upsert {
            old: None,
            new,
            insert: false,
        },
    };
    run.apply(&with(&before, row("1", "1", "5", JAN)));
    // `price` dropped on the source, then the row updated: the version closed is the one
    // held from before, now in the new shape (tenant, id, effective_at), not shifted.
    let events = run.apply(&with(&after, vec![t("1"), t("1"), t(FEB)]));
    let closed: Vec<Row> = events
        .iter()
        .filter_map(|e| match &e.delta {
            VersionDelta::Close { value, .. } => Some(value.clone()),
            VersionDelta::Open(_) => None,
        })
        .collect();
    assert_eq!(closed, vec![vec![t("1"), t("1"), t(JAN)]]);
    // The old version is known again as valid until the change (reopened from the books:
    // in the new shape too), and the new one from it.
    assert_eq!(
        opens(&events),
        vec![
            (vec![t("1"), t("1"), t(JAN)], 110 * 1000, Some(120 * 1000)),
            (vec![t("1"), t("1"), t(FEB)], 120 * 1000, None)
        ]
    );
}
