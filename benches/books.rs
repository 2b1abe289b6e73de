//! Memory of the version books a history job keeps (every current row of its tables):
//! bytes per row held by the books filled with N bench rows, one version each as a
//! catch-up of inserts leaves them (one `VersionBook<PackedRow, PackedRow>` per tenant, 50
//! tenants), beside two baselines measured in the same process:
//!
//! - the rows alone: each row's and key's packed allocation, in a `Vec`;
//! - a plain `HashMap<PackedRow, PackedRow>` per tenant holding the same keys and rows,
//!   the least any keyed store of them takes.
//!
//! Bytes are what the allocator hands out (mimalloc's size classes, `mi_good_size`),
//! counted by a wrapping global allocator; the filling rate of each is printed too.
//!
//! Then a job's books as the history operator keeps them (a `Shelf`: rows held through
//! its `RowStore`, walked when due), filled with fresh rows: every row in memory, against
//! a `history.row_memory_mib` budget that sends the rest to the spill file. Printed: bytes
//! per row in memory, in the file, the filling rate of each, and the rate of then updating
//! every key once in a scattered order (each update closes its key's version, whose row a
//! bounded shelf mostly reads back from the file).
//!
//! Run: `cargo bench --bench books` (`HELIOS_BENCH_BOOK_ROWS`, default 1,000,000;
//! `HELIOS_BENCH_ROW_MEMORY_MIB`, default 16).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use helios_repl::change::Cell;
use helios_repl::operators::history::{Book, Shelf};
use helios_repl::operators::packed_row::PackedRow;
use helios_repl::operators::version::{Edit, SysTime, VersionBook, VersionDelta};

#[path = "support/counting.rs"]
mod counting;

use counting::LIVE;

const TENANTS: u64 = 50;

/// Row `g` of the e2e bench's table (8 columns; the key is the first two), packed.
fn bench_row(g: u64) -> (u64, PackedRow, PackedRow) {
    let tenant = g % TENANTS + 1;
    let cells = [
        Cell::text(&tenant.to_string()),
        Cell::text(&g.to_string()),
        Cell::text(&format!("{}.{:02}", (g % 10_000_000) / 100, g % 100)),
        Cell::text(&format!(
            "2024-01-{:02} {:02}:{:02}:{:02}+00",
            g / 86_400 % 28 + 1,
            g / 3600 % 24,
            g / 60 % 60,
            g % 60
        )),
        Cell::text(&format!(
            r#"{{"k": {g}, "kind": "order", "tags": ["a", {}]}}"#,
            g % 7
        )),
        Cell::text(&format!("note {g} for a tenant row")),
        Cell::text(if g.is_multiple_of(2) { "t" } else { "f" }),
        Cell::text(&(g % 1000).to_string()),
    ];
    (
        tenant,
        PackedRow::pack(&cells[..2]),
        PackedRow::pack(&cells),
    )
}

/// A job's books filled with `rows` fresh bench rows, one version each, rows kept in
/// memory up to `budget` bytes (`None`: all).
fn fill_shelf(rows: u64, budget: Option<u64>) -> Shelf {
    let mut shelf = Shelf::new(budget);
    let start = SysTime { lsn: 0, micros: 0 };
    for g in 1..=rows {
        let (tenant, key, row) = bench_row(g);
        let at = SysTime {
            lsn: g,
            micros: g as i64,
        };
        let held = shelf.rows.hold(row);
        let deltas = shelf
            .books
            .entry((tenant.to_string(), "public.bench".to_string()))
            .or_insert_with(|| Book::new(start))
            .apply(key, at.micros, at, Edit::Upsert(held));
        black_box(deltas);
        shelf.shrink_if_due();
    }
    shelf
}

/// Updates every key of a shelf [`fill_shelf`] filled once, in a scattered order, reading
/// back each row the updates close as the history operator does; returns rows per second.
fn update_shelf(shelf: &mut Shelf, rows: u64) -> f64 {
    let started = Instant::now();
    // A stride coprime with `rows` visits every key once, far from the last.
    let stride = (rows / 2 + 1..).find(|s| gcd(*s, rows) == 1).unwrap_or(1);
    for n in 0..rows {
        let g = (n * stride) % rows + 1;
        let (tenant, key, row) = bench_row(g);
        let at = SysTime {
            lsn: rows + n + 1,
            micros: (rows + n + 1) as i64,
        };
        let held = shelf.rows.hold(row);
        let deltas = shelf
            .books
            .get_mut(&(tenant.to_string(), "public.bench".to_string()))
            .expect("every key was filled")
            .apply(key, at.micros, at, Edit::Upsert(held));
        let mut last = None;
        for delta in deltas {
            let value = match delta {
                VersionDelta::Open(v) => v.value,
                VersionDelta::Close { value, .. } => value,
            };
            if last.as_ref() != Some(&value) {
                black_box(shelf.rows.row(&value).expect("the row reads back"));
                last = Some(value);
            }
        }
        shelf.shrink_if_due();
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Bytes per row that `fill` leaves allocated, and rows per second it filled.
fn measure<T>(rows: u64, fill: impl FnOnce() -> T) -> (f64, f64, T) {
    let before = LIVE.load(Relaxed);
    let started = Instant::now();
    let kept = fill();
    let secs = started.elapsed().as_secs_f64();
    let bytes = LIVE.load(Relaxed) - before;
    (bytes as f64 / rows as f64, rows as f64 / secs, kept)
}

fn main() {
    let rows: u64 = std::env::var("HELIOS_BENCH_BOOK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (alone, _, packed) = measure(rows, || {
        let mut v = Vec::with_capacity(rows as usize);
        v.extend((1..=rows).map(bench_row));
        v
    });
    let vec_bytes = std::mem::size_of::<(u64, PackedRow, PackedRow)>() as f64;
    let (map, map_rate, maps) = measure(rows, || {
        let mut maps: HashMap<u64, HashMap<PackedRow, PackedRow>> = HashMap::new();
        for (tenant, key, row) in &packed {
            maps.entry(*tenant)
                .or_default()
                .insert(key.clone(), row.clone());
        }
        maps
    });
    drop(black_box(maps));
    let start = SysTime { lsn: 0, micros: 0 };
    let (books, books_rate, kept) = measure(rows, || {
        let mut books: HashMap<u64, VersionBook<PackedRow, PackedRow>> = HashMap::new();
        for (g, (tenant, key, row)) in packed.iter().enumerate() {
            let at = SysTime {
                lsn: g as u64 + 1,
                micros: g as i64 + 1,
            };
            let deltas = books
                .entry(*tenant)
                .or_insert_with(|| VersionBook::new(start))
                .apply(key.clone(), at.micros, at, Edit::Upsert(row.clone()));
            black_box(deltas);
        }
        books
    });
    let held: usize = kept.values().map(VersionBook::len).sum();
    assert_eq!(held as u64, rows, "one version per row");
    println!("version books, {rows} rows over {TENANTS} tenants (bytes the allocator hands out per row):");
    println!(
        "  rows alone (packed key and row): {:.1} B/row (plus {vec_bytes:.0} B/row of the Vec holding them)",
        alone - vec_bytes
    );
    println!(
        "  baseline HashMap<key, row> per tenant: {map:.1} B/row beyond the rows, filled at {:.2} M rows/s",
        map_rate / 1e6
    );
    println!(
        "  VersionBook per tenant: {books:.1} B/row beyond the rows ({:.2}x the baseline's), filled at {:.2} M rows/s",
        books / map,
        books_rate / 1e6
    );
    drop(kept);
    drop(packed);

    let mib: u64 = std::env::var("HELIOS_BENCH_ROW_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let (all, all_rate, mut shelf) = measure(rows, || fill_shelf(rows, None));
    let all_updates = update_shelf(&mut shelf, rows);
    drop(shelf);
    let (bounded, bounded_rate, mut shelf) = measure(rows, || fill_shelf(rows, Some(mib << 20)));
    let file = shelf.rows.file_bytes() as f64 / rows as f64;
    let bounded_updates = update_shelf(&mut shelf, rows);
    println!("a job's books, rows included, {rows} fresh rows:");
    println!(
        "  every row in memory: {all:.1} B/row, filled at {:.2} M rows/s",
        all_rate / 1e6
    );
    println!(
        "  history.row_memory_mib = {mib}: {bounded:.1} B/row in memory ({:.2}x), {file:.1} B/row in the spill file, filled at {:.2} M rows/s ({:.2}x)",
        bounded / all,
        bounded_rate / 1e6,
        bounded_rate / all_rate
    );
    println!(
        "  updating every key once: {:.2} M rows/s with every row in memory, {:.2} M rows/s with the budget ({:.2}x)",
        all_updates / 1e6,
        bounded_updates / 1e6,
        bounded_updates / all_updates
    );
}
