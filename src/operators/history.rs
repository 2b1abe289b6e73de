//! Bi-temporal history: applies each transaction's tenant changes, in transaction order,
//! to the worker's version books (one [`VersionBook`] per tenant and table) and emits the
//! versions they closed and opened beside the changes themselves. A transaction is
//! applied once complete, or, when it is the oldest still open and
//! [`STREAM_CHANGES`] of its changes wait, piece by piece as they arrive.
//!
//! System time is the transaction's commit (LSN and commit time); valid time comes from
//! the table's valid-time column when the job names one (a NULL or unreadable value falls
//! back to the commit time), else it is the commit time. A change of a key moves the row:
//! the old key is deleted, the new key upserted, both at the same times. TOASTed values the
//! update did not send are filled from the version they replace.
//!
//! The books live in [`HistoryBooks`], shared by the job's workers (each only touches the
//! tenants it owns) and read by as-of queries. Their rows stay in memory up to the job's
//! budget and go to a local file beyond it ([`RowStore`]); a row that cannot be read
//! back from that file stops the operator where it is (it holds its input's times, so
//! nothing past the transaction is confirmed) and [`HistoryBooks::failure`] says why.
//! No clocks: commit times are looked up from what the reader recorded for the LSN.
//!
//! Rows a backfill loaded (`control::backfill`) have a floor: their changes committed
//! below it are in the load, whose versions the books were restored with, so they are
//! skipped here as the sinks skip them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::StreamVec;

use crate::change::{
    Cell, ColumnInfo, HistoryEvent, HistoryOp, Lsn, Row, Scope, SinkItem, TableInfo, TenantAction,
    TenantChange,
};
use crate::control::job_spec::{TenantAt, TenantKey};
use crate::operators::packed_row::PackedRow;
use crate::operators::row_spill::{HeldRow, RowSpillError, RowStore, SpillRef};
use crate::operators::version::{Edit, SysTime, SystemPoint, Version, VersionBook, VersionDelta};
use crate::sinks::pg_apply::floors::Floors;
use crate::time_text::parse_pg_timestamp;

/// Which tables keep history, and where their valid time comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPlan {
    /// `schema.table` → valid-time column (`None`: the commit time).
    pub tables: HashMap<String, Option<String>>,
    /// `schema.table` → where its rows keep their tenant: a tenant column's cell
    /// tombstones record beside the key.
    pub tenant_keys: HashMap<String, TenantKey>,
}

impl HistoryPlan {
    /// Whether any table keeps history.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// One tenant's book of one table: keys and rows packed (they outlive the messages they
/// came in, and a book holds every current row of its tenant), rows possibly moved to the
/// job's spill file.
pub type Book = VersionBook<PackedRow, HeldRow>;

/// A job's books, by (tenant, `schema.table`), and the store that keeps their rows.
#[derive(Debug, Default)]
pub struct Shelf {
    /// The books.
    pub books: HashMap<(String, String), Book>,
    /// Where their rows are.
    pub rows: RowStore,
    /// What backfills loaded (`control::backfill`): a change of those rows committed
    /// below its floor is in the load, and the books hold the load's versions already.
    pub floors: Floors,
    /// The shape each table's held rows are in: the last one its changes came in.
    pub shapes: HashMap<String, Arc<TableInfo>>,
}

impl Shelf {
    /// Empty books whose rows stay in memory up to `row_budget` bytes (`None`: all).
    pub fn new(row_budget: Option<u64>) -> Shelf {
        Shelf {
            books: HashMap::new(),
            rows: RowStore::new(row_budget),
            floors: Floors::default(),
            shapes: HashMap::new(),
        }
    }

    /// Moves rows to the spill file when the rows held since the last walk call for it.
    pub fn shrink_if_due(&mut self) {
        if !self.rows.walk_due() {
            return;
        }
        let Shelf { books, rows, .. } = self;
        let report = rows.shrink(|visit| {
            // Closed versions first: only as-of queries read them.
            for book in books.values_mut() {
                book.closed_values_mut().for_each(&mut *visit);
            }
            for book in books.values_mut() {
                book.current_values_mut().for_each(&mut *visit);
            }
        });
        tracing::debug!(
            resident_before = report.resident_before,
            moved = report.moved,
            compacted = report.compacted,
            file_bytes = rows.file_bytes(),
            "history rows walked"
        );
    }
}

/// Where a job's book rows are, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowBytes {
    /// Rows in memory.
    pub memory: u64,
    /// Rows in the spill file that versions point to (measured at the last walk).
    pub spilled: u64,
    /// Walks that measured and moved them so far.
    pub walks: u64,
}

/// The version books of one job, by (tenant, `schema.table`).
#[derive(Default)]
pub struct HistoryBooks {
    books: Mutex<Shelf>,
    /// Why the history operator stopped (a row of the spill file did not read back).
    failure: Mutex<Option<String>>,
    /// From which system time on the books hold every version (the resume point).
    start: Mutex<Option<SysTime>>,
    /// Transactions partly applied (a worker applies a large one as it arrives), one
    /// entry per worker applying it: queries answer as of just before the first.
    partial: Mutex<Vec<SysTime>>,
}

/// The rows of one table as of a pair of times, from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsOfRows {
    /// The table's column names.
    pub columns: Vec<String>,
    /// The rows, sorted by key.
    pub rows: Vec<Row>,
}

impl std::fmt::Debug for HistoryBooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryBooks")
            .field("start", &self.start())
            .finish_non_exhaustive()
    }
}

impl HistoryBooks {
    /// Empty books complete from `start` on.
    pub fn new(start: SysTime) -> HistoryBooks {
        HistoryBooks {
            books: Mutex::new(Shelf::default()),
            failure: Mutex::new(None),
            start: Mutex::new(Some(start)),
            partial: Mutex::new(Vec::new()),
        }
    }

    fn start(&self) -> SysTime {
        self.start
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or(SysTime { lsn: 0, micros: 0 })
    }

    /// Forgets every book (and the spill file); they are complete from `start` on and
    /// keep up to `row_budget` bytes of rows in memory (`None`: every row).
    pub fn reset(&self, start: SysTime, row_budget: Option<u64>) {
        if let Ok(mut books) = self.books.lock() {
            *books = Shelf::new(row_budget);
        }
        if let Ok(mut f) = self.failure.lock() {
            *f = None;
        }
        if let Ok(mut s) = self.start.lock() {
            *s = Some(start);
        }
        if let Ok(mut p) = self.partial.lock() {
            p.clear();
        }
    }

    /// A worker starts applying the transaction at `at` before it is complete.
    fn begin_partial(&self, at: SysTime) {
        if let Ok(mut p) = self.partial.lock() {
            p.push(at);
        }
    }

    /// A worker finished applying the transaction at `lsn`.
    fn end_partial(&self, lsn: Lsn) {
        if let Ok(mut p) = self.partial.lock() {
            if let Some(i) = p.iter().position(|s| s.lsn == lsn) {
                p.swap_remove(i);
            }
        }
    }

    /// `system`, or just before the first partly applied transaction when `system` is at
    /// or after it: a query never sees half of a transaction.
    fn before_partial(&self, system: SystemPoint) -> SystemPoint {
        let first = self
            .partial
            .lock()
            .ok()
            .and_then(|p| p.iter().min_by_key(|s| s.lsn).copied());
        match first {
            Some(first)
                if match system {
                    SystemPoint::Lsn(l) => l >= first.lsn,
                    SystemPoint::Micros(m) => m >= first.micros,
                } =>
            {
                SystemPoint::Lsn(first.lsn.saturating_sub(1))
            }
            _ => system,
        }
    }

    /// The backfill floors changes are recorded by (after [`HistoryBooks::reset`], which
    /// forgets them).
    pub fn set_floors(&self, floors: Floors) {
        if let Ok(mut shelf) = self.books.lock() {
            shelf.floors = floors;
        }
    }

    /// Puts back a version that was current at the resume point.
    pub fn restore(&self, tenant: &str, table: &str, version: Version<Row, Row>) {
        let start = self.start();
        if let Ok(mut shelf) = self.books.lock() {
            let Shelf { books, rows, .. } = &mut *shelf;
            books
                .entry((tenant.to_owned(), table.to_owned()))
                .or_insert_with(|| Book::new(start))
                .restore(version.map(|k| PackedRow::pack(&k), |v| rows.hold(PackedRow::pack(&v))));
            shelf.shrink_if_due();
        }
    }

    /// The rows of `tenant`'s `table` as of (`system`, `valid`), when the books hold every
    /// version that could answer it (`None`: ask the history table).
    pub fn as_of(
        &self,
        tenant: &str,
        table: &TableInfo,
        system: SystemPoint,
        valid: i64,
    ) -> Option<Vec<Row>> {
        let system = self.before_partial(system);
        let shelf = self.books.lock().ok()?;
        let books = &shelf.books;
        let key = (tenant.to_owned(), table.qualified_name());
        let complete = match books.get(&key) {
            Some(book) => book.complete_since(),
            None => self.start(),
        };
        let covered = match system {
            SystemPoint::Lsn(lsn) => lsn >= complete.lsn,
            SystemPoint::Micros(m) => m >= complete.micros,
        };
        // Rows a backfill loaded are in the books as of its floor only (a tenant added
        // again has versions the load closed, which the books never held): before it, and
        // at a clock time (the floor has none), the history table answers.
        let covered = covered
            && match shelf.floors.floor_of(&key.1, tenant) {
                None => true,
                Some(floor) => matches!(system, SystemPoint::Lsn(lsn) if lsn >= floor),
            };
        if !covered {
            return None;
        }
        let Some(book) = books.get(&key) else {
            return Some(Vec::new());
        };
        let mut rows = Vec::new();
        for (_, held) in book.as_of(system, valid) {
            match shelf.rows.row(&held) {
                Ok(row) => rows.push(row.to_row()),
                Err(e) => {
                    // The history table has every version: it answers instead.
                    tracing::warn!(error = %e, "an as-of query goes to the history table");
                    return None;
                }
            }
        }
        Some(rows)
    }

    /// Forgets closed versions older than `horizon_micros` (they stay in the history
    /// table); returns how many.
    pub fn prune_closed_before(&self, horizon_micros: i64) -> usize {
        self.books
            .lock()
            .map(|mut shelf| {
                shelf
                    .books
                    .values_mut()
                    .map(|b| b.prune_closed_before(horizon_micros))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Versions held in memory, over all books.
    pub fn versions_held(&self) -> usize {
        self.books
            .lock()
            .map(|shelf| shelf.books.values().map(|b| b.len()).sum())
            .unwrap_or(0)
    }

    /// Where the books' rows are.
    pub fn row_bytes(&self) -> RowBytes {
        self.books
            .lock()
            .map(|shelf| RowBytes {
                memory: shelf.rows.resident_bytes(),
                spilled: shelf.rows.spilled_bytes(),
                walks: shelf.rows.walks(),
            })
            .unwrap_or_default()
    }

    /// Why the history operator stopped, if it did: the job cannot go on.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, why: String) {
        if let Ok(mut f) = self.failure.lock() {
            f.get_or_insert(why);
        }
    }
}

/// Applies one change to the books; pushes the history events it caused. Fails only when
/// a row the change needs does not read back from the spill file.
pub fn record_change(
    plan: &HistoryPlan,
    shelf: &mut Shelf,
    start: SysTime,
    system: SysTime,
    change: &TenantChange,
    out: &mut Vec<HistoryEvent>,
) -> Result<(), RowSpillError> {
    record(plan, shelf, start, system, change, None, out)
}

/// [`record_change`] for a change nobody needs afterwards: its new row moves into the
/// books and the events instead of being copied.
pub fn record_owned_change(
    plan: &HistoryPlan,
    shelf: &mut Shelf,
    start: SysTime,
    system: SysTime,
    mut change: TenantChange,
    out: &mut Vec<HistoryEvent>,
) -> Result<(), RowSpillError> {
    let new = take_new_row(&mut change);
    record(plan, shelf, start, system, &change, new, out)
}

/// The new row of an upsert, moved out of the change (for a change nobody needs after).
fn take_new_row(change: &mut TenantChange) -> Option<Row> {
    match &mut change.action {
        TenantAction::Upsert { new, .. } => Some(std::mem::take(new)),
        _ => None,
    }
}

/// Applies `change`; for an upsert, `owned_new` (when given) is its new row, taken out
/// of the change.
fn record(
    plan: &HistoryPlan,
    shelf: &mut Shelf,
    start: SysTime,
    system: SysTime,
    change: &TenantChange,
    mut owned_new: Option<Row>,
    out: &mut Vec<HistoryEvent>,
) -> Result<(), RowSpillError> {
    let Shelf {
        books,
        rows,
        floors,
        shapes,
    } = shelf;
    let table_name = change.table.qualified_name();
    let Some(valid_column) = plan.tables.get(&table_name) else {
        return Ok(());
    };
    let keys = change.table.key_columns();
    if keys.is_empty() {
        // Checked when the job starts; a table that lost its key keeps no history.
        return Ok(());
    }
    conform_books(books, rows, shapes, &table_name, &change.table)?;
    let valid_of = |row: &Row| -> i64 {
        valid_column
            .as_ref()
            .and_then(|c| change.table.column_index(c))
            .and_then(|i| row.get(i))
            .and_then(Cell::as_text)
            .and_then(parse_pg_timestamp)
            .unwrap_or(system.micros)
    };
    let project = |row: &Row| -> Row {
        keys.iter()
            .map(|&i| row.get(i).cloned().unwrap_or(Cell::Null))
            .collect()
    };
    // (tenant, key, valid time, new value or delete, op), applied in this order.
    let mut edits: Vec<(String, Row, i64, Option<Row>, HistoryOp)> = Vec::new();
    let mut emit = |tenant: &str, key: Row, valid: i64, value: Option<Row>, op: HistoryOp| {
        edits.push((tenant.to_owned(), key, valid, value, op));
    };
    match (&change.scope, &change.action) {
        (Scope::Tenant(tenant), TenantAction::Upsert { old, new, insert }) => {
            let new_row = owned_new.as_ref().unwrap_or(new);
            let valid = valid_of(new_row);
            let key = project(new_row);
            if let Some(old) = old {
                let old_key = project(old);
                if old_key != key && old_key.iter().all(|c| *c != Cell::Null) {
                    emit(tenant, old_key, valid, None, HistoryOp::Update);
                }
            }
            let op = if *insert {
                HistoryOp::Insert
            } else {
                HistoryOp::Update
            };
            let value = owned_new.take().unwrap_or_else(|| new.clone());
            emit(tenant, key, valid, Some(value), op);
        }
        (Scope::Tenant(tenant), TenantAction::Delete { old }) => {
            emit(tenant, project(old), valid_of(old), None, HistoryOp::Delete);
        }
        (Scope::Tenant(tenant), TenantAction::Truncate) => {
            let points = books
                .get(&(tenant.clone(), table_name.clone()))
                .map(|b| b.truncate_points(system.micros))
                .unwrap_or_default();
            for (key, valid) in points {
                emit(tenant, key.to_row(), valid, None, HistoryOp::Delete);
            }
        }
        (Scope::Worker { .. }, TenantAction::Delete { old }) => {
            // The stream did not say whose row it is: it is the row of whichever of this
            // worker's tenants currently has the key.
            let key = project(old);
            let valid = valid_of(old);
            let packed = PackedRow::pack(&key);
            let owners: Vec<String> = books
                .iter()
                .filter(|((_, t), b)| *t == table_name && b.current(&packed, valid).is_some())
                .map(|((tenant, _), _)| tenant.clone())
                .collect();
            for tenant in owners {
                emit(&tenant, key.clone(), valid, None, HistoryOp::Delete);
            }
        }
        (Scope::Worker { .. }, TenantAction::Truncate) => {
            let points: Vec<(String, Vec<(PackedRow, i64)>)> = books
                .iter()
                .filter(|((_, t), _)| *t == table_name)
                .map(|((tenant, _), b)| (tenant.clone(), b.truncate_points(system.micros)))
                .collect();
            for (tenant, points) in points {
                for (key, valid) in points {
                    emit(&tenant, key.to_row(), valid, None, HistoryOp::Delete);
                }
            }
        }
        _ => {}
    }
    if floors.may_cover(system.lsn) {
        edits.retain(|(tenant, ..)| !floors.covers(&table_name, Some(tenant), system.lsn));
    }
    let tenant_index = plan
        .tenant_keys
        .get(&table_name)
        .and_then(|k| k.at(&change.table))
        .and_then(TenantAt::column);
    for (tenant, mut key, valid, value, op) in edits {
        let book = books
            .entry((tenant.clone(), table_name.clone()))
            .or_insert_with(|| Book::new(start));
        let packed_key = PackedRow::pack(&key);
        let (row, tombstone) = match value {
            Some(mut row) => {
                if row.contains(&Cell::Unchanged) {
                    if let Some(prev) = book.current(&packed_key, valid) {
                        let prev = rows.row(prev)?;
                        for (cell, old) in row.iter_mut().zip(prev.cells()) {
                            if *cell == Cell::Unchanged {
                                *cell = old.to_cell();
                            }
                        }
                    }
                }
                (row, false)
            }
            None => {
                // A tombstone records the key and the tenant, so the history table finds
                // it by either.
                let mut row = vec![Cell::Null; change.table.columns.len()];
                for (&i, cell) in keys.iter().zip(&key) {
                    row[i] = cell.clone();
                }
                if let Some(i) = tenant_index {
                    row[i] = Cell::text(&tenant);
                }
                (row, true)
            }
        };
        let packed = rows.hold(PackedRow::pack(&row));
        let edit = if tombstone {
            Edit::Delete(packed)
        } else {
            Edit::Upsert(packed)
        };
        let mut new = Some(row);
        // A moved row closes and reopens (before `valid`) with the same place: read once.
        let mut read: Option<(SpillRef, PackedRow)> = None;
        let mut deltas = book
            .apply(packed_key, valid, system, edit)
            .into_iter()
            .peekable();
        while let Some(delta) = deltas.next() {
            // Every delta is of this key: the last one takes it.
            let key = match deltas.peek() {
                Some(_) => key.clone(),
                None => std::mem::take(&mut key),
            };
            out.push(HistoryEvent {
                tenant: tenant.clone(),
                seq: change.seq,
                table: change.table.clone(),
                op,
                delta: event_delta(delta, key, valid, &mut new, rows, &mut read)?,
            });
        }
    }
    Ok(())
}

/// Brings the rows `books` hold of `table` to `shape` when its changes now come in a
/// shape that moved columns (one dropped from the middle, say): each version keeps its
/// values under the same columns, found by their source column numbers, else by name
/// ([`column_map`]). A shape that keeps every column where it was (columns added at the
/// end, types changed) rewrites nothing. The first shape seen is taken as the one the
/// books were restored in.
fn conform_books(
    books: &mut HashMap<(String, String), Book>,
    rows: &mut RowStore,
    shapes: &mut HashMap<String, Arc<TableInfo>>,
    table: &str,
    shape: &Arc<TableInfo>,
) -> Result<(), RowSpillError> {
    let from = match shapes.get(table) {
        Some(held) if Arc::ptr_eq(held, shape) => return Ok(()),
        Some(held) => held.clone(),
        None => {
            shapes.insert(table.to_owned(), shape.clone());
            return Ok(());
        }
    };
    shapes.insert(table.to_owned(), shape.clone());
    let Some(map) = column_map(&from, shape) else {
        return Ok(());
    };
    let mut conform = |value: &mut HeldRow| -> Result<(), RowSpillError> {
        let packed = rows.row(value)?;
        let cells: Vec<Cell> = packed.cells().map(|c| c.to_cell()).collect();
        let row: Row = map
            .iter()
            .map(|at| at.and_then(|j| cells.get(j).cloned()).unwrap_or(Cell::Null))
            .collect();
        *value = rows.hold(PackedRow::pack(&row));
        Ok(())
    };
    let mut rewritten = 0usize;
    for ((_, t), book) in books.iter_mut() {
        if t != table {
            continue;
        }
        for value in book.current_values_mut() {
            conform(value)?;
            rewritten += 1;
        }
        for value in book.closed_values_mut() {
            conform(value)?;
            rewritten += 1;
        }
    }
    tracing::info!(
        table,
        rewritten,
        "the table's columns moved: the versions held are kept under the same columns"
    );
    Ok(())
}

/// Where each of `to`'s columns is in a row of shape `from`: the column of the same
/// source number where both have one, else of the same name, else (a column renamed
/// where numbers are unknown) the one at its place if that one's name is gone; `None`:
/// not there, NULL. `None` as a whole when every column of `from` is where it was (`to`
/// renames in place or adds columns after them).
pub fn column_map(from: &TableInfo, to: &TableInfo) -> Option<Vec<Option<usize>>> {
    let same = |f: &ColumnInfo, c: &ColumnInfo| match (f.attnum, c.attnum) {
        (Some(a), Some(b)) => a == b,
        _ => f.name == c.name,
    };
    let kept = from.columns.len() <= to.columns.len()
        && from.columns.iter().zip(&to.columns).all(|(f, c)| {
            same(f, c)
                || ((f.attnum.is_none() || c.attnum.is_none())
                    && to.column_index(&f.name).is_none())
        });
    if kept {
        return None;
    }
    Some(
        to.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                from.columns.iter().position(|f| same(f, c)).or_else(|| {
                    let f = from.columns.get(i)?;
                    let unnumbered = f.attnum.is_none() || c.attnum.is_none();
                    (unnumbered && to.column_index(&f.name).is_none()).then_some(i)
                })
            })
            .collect(),
    )
}

/// A book's delta as events carry it: keyed by the change's own key cells (every delta of
/// one change is of that key), the version the change opened (the one from `valid`) with
/// the change's own row `new` instead of an unpacked copy, other values unpacked (read
/// back from the spill file, the last one kept in `read`).
fn event_delta(
    delta: VersionDelta<PackedRow, HeldRow>,
    key: Row,
    valid: i64,
    new: &mut Option<Row>,
    rows: &RowStore,
    read: &mut Option<(SpillRef, PackedRow)>,
) -> Result<VersionDelta<Row, Row>, RowSpillError> {
    let (held, opened_here) = match &delta {
        VersionDelta::Open(v) => (&v.value, v.valid_from == valid),
        VersionDelta::Close { value, .. } => (value, false),
    };
    let value = match (opened_here.then(|| new.take()).flatten(), held) {
        (Some(row), _) => row,
        (None, HeldRow::Memory(packed)) => packed.to_row(),
        (None, HeldRow::Spilled(at)) => match read {
            Some((place, packed)) if place == at => packed.to_row(),
            _ => {
                let packed = rows.row(held)?;
                let row = packed.to_row();
                *read = Some((*at, packed));
                row
            }
        },
    };
    let mut value = Some(value);
    Ok(delta.map(|_| key, |_| value.take().unwrap_or_default()))
}

/// The history operator.
pub trait VersionHistory<'scope> {
    /// Adds the history events of the tables in `plan` to the changes, which it passes
    /// through when `pass_changes` (some sink applies them; else their rows move into
    /// the versions). `commit_time(lsn)` gives a transaction's commit time as the reader
    /// recorded it.
    fn version_history(
        self,
        plan: Arc<HistoryPlan>,
        books: Arc<HistoryBooks>,
        pass_changes: bool,
        commit_time: impl Fn(Lsn) -> Option<i64> + 'static,
    ) -> StreamVec<'scope, Lsn, SinkItem>;
}

/// Changes of the oldest open transaction applied before its commit is complete, once
/// this many wait: a large transaction goes through in pieces (and the dataflow hands it
/// to the sinks in parts) instead of being held here whole.
pub const STREAM_CHANGES: usize = 10_000;

/// One transaction's changes waiting for this worker's books.
struct PendingTxn {
    cap: Capability<Lsn>,
    changes: Vec<TenantChange>,
    /// Its system time, fixed when its first changes were applied.
    system: Option<SysTime>,
    /// The position of the last change applied (some were applied before the commit
    /// was complete).
    last_seq: Option<u32>,
}

impl PendingTxn {
    /// Whether some of its changes were applied before it was complete.
    fn partly_applied(&self) -> bool {
        self.last_seq.is_some()
    }
}

/// What the operator applies changes with.
struct Recorder<F> {
    plan: Arc<HistoryPlan>,
    books: Arc<HistoryBooks>,
    pass_changes: bool,
    commit_time: F,
    last_micros: i64,
    events: Vec<HistoryEvent>,
    /// A row did not read back: nothing more is applied (see the module documentation).
    failed: bool,
}

impl<F: Fn(Lsn) -> Option<i64>> Recorder<F> {
    /// The system time of the transaction at `lsn` (its commit time as the reader
    /// recorded it, else the last one seen).
    fn system_time(&mut self, lsn: Lsn) -> SysTime {
        let micros = (self.commit_time)(lsn).unwrap_or(self.last_micros);
        self.last_micros = micros;
        SysTime { lsn, micros }
    }

    /// Applies `changes` (in transaction order) to the books and hands `give` the
    /// changes (when passed on) and the events they made.
    fn apply(
        &mut self,
        system: SysTime,
        changes: Vec<TenantChange>,
        mut give: impl FnMut(SinkItem),
    ) {
        let start = self.books.start();
        // Only this worker touches its tenants' books: a panic elsewhere while holding
        // the lock leaves them whole.
        let mut shelf = self.books.books.lock().unwrap_or_else(|e| e.into_inner());
        for mut change in changes {
            // Passed on, the change keeps its row; else the row moves into the versions.
            let new = if self.pass_changes {
                None
            } else {
                take_new_row(&mut change)
            };
            let (plan, events) = (&self.plan, &mut self.events);
            if let Err(e) = record(plan, &mut shelf, start, system, &change, new, events) {
                let why = format!("the history operator stopped at LSN {}: {e}", system.lsn);
                tracing::error!(error = %e, lsn = system.lsn, "the history operator stops: a row of the version books did not read back");
                self.failed = true;
                self.events.clear();
                drop(shelf);
                self.books.fail(why);
                return;
            }
            if self.pass_changes {
                give(SinkItem::Change(change));
            }
        }
        shelf.shrink_if_due();
        drop(shelf);
        self.events.drain(..).map(SinkItem::History).for_each(give);
    }
}

impl<'scope> VersionHistory<'scope> for StreamVec<'scope, Lsn, TenantChange> {
    fn version_history(
        self,
        plan: Arc<HistoryPlan>,
        books: Arc<HistoryBooks>,
        pass_changes: bool,
        commit_time: impl Fn(Lsn) -> Option<i64> + 'static,
    ) -> StreamVec<'scope, Lsn, SinkItem> {
        self.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<SinkItem>>, _, _, _>(
            Pipeline,
            "VersionHistory",
            move |_cap, _info| {
                let mut stash: BTreeMap<Lsn, PendingTxn> = BTreeMap::new();
                let mut recorder = Recorder {
                    plan,
                    books,
                    pass_changes,
                    commit_time,
                    last_micros: 0,
                    events: Vec::new(),
                    failed: false,
                };
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| {
                        let Some(&t) = cap.least() else { return };
                        let entry = stash.entry(t).or_insert_with(|| PendingTxn {
                            cap: cap.retain_least(0).expect("output 0 exists"),
                            changes: Vec::new(),
                            system: None,
                            last_seq: None,
                        });
                        for batch in data {
                            entry.changes.append(batch);
                        }
                    });
                    // Versions follow transaction order: a timestamp is applied to the
                    // books once it is complete on this worker, or, while it is the
                    // oldest one still open (nothing earlier can arrive) and many of its
                    // changes wait, those changes: they arrive in transaction order (one
                    // input, on worker 0, and first-in first-out channels).
                    // Stopped: the stash keeps every time held, so nothing past is confirmed.
                    while let Some((&t, pending)) = stash.first_key_value().filter(|_| !recorder.failed) {
                        let complete = !frontier.frontier().less_equal(&t);
                        let oldest_open = frontier.frontier().iter().all(|f| *f >= t);
                        // Streamed only with its commit time known (the reader records
                        // it at the transaction's start): every piece gets the same.
                        let stream = oldest_open
                            && pending.changes.len() >= STREAM_CHANGES
                            && (pending.system.is_some() || (recorder.commit_time)(t).is_some());
                        if !complete && !stream {
                            break;
                        }
                        let Some(mut pending) = stash.remove(&t) else {
                            break;
                        };
                        let mut changes = std::mem::take(&mut pending.changes);
                        changes.sort_by_key(|c| c.seq);
                        if let (Some(last), Some(first)) = (pending.last_seq, changes.first()) {
                            if first.seq <= last {
                                tracing::error!(lsn = t, seq = first.seq, last, "a change arrived after later changes of its transaction were applied to the version books");
                            }
                        }
                        let system = match pending.system {
                            Some(system) => system,
                            None => recorder.system_time(t),
                        };
                        pending.system = Some(system);
                        if !complete && !pending.partly_applied() {
                            recorder.books.begin_partial(system);
                        }
                        let was_partial = pending.partly_applied();
                        pending.last_seq = changes.last().map(|c| c.seq).or(pending.last_seq);
                        let mut session = output.session(&pending.cap);
                        recorder.apply(system, changes, |item| session.give(item));
                        drop(session);
                        if !complete || recorder.failed {
                            stash.insert(t, pending);
                            break;
                        }
                        if was_partial {
                            recorder.books.end_partial(t);
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests;
