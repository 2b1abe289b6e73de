//! Starting the history of a job whose versions live only in the Parquet cold tier (no
//! PostgreSQL sink): the initial snapshot written as open versions, and the version books
//! restored from the tier's published files when the stream resumes.
//!
//! The same rules as the history table's (see `history_start`): a snapshot after the
//! first (the slot was lost, or a crash cut one short) compares the rows with the
//! versions still open ([`UnchangedKept`]): an unchanged row keeps its version, a changed
//! or new row gets a new one and its old one is closed, a row gone has its version
//! closed, a deleted key's tombstone stays open while the key is absent, all at the
//! snapshot's consistent point; on resume, the versions current at the resume position
//! are the books' state there, so replayed transactions produce the same events, which
//! the sink skips by each table's covered LSN.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;

use crate::cdc::snapshot;
use crate::change::{Cell, Lsn, TableInfo};
use crate::control::cold_seed::{self, SnapshotChunk};
use crate::control::history_query::versions_from_cold_rows;
use crate::control::job_spec::{TableSpec, TenantFilter};
use crate::operators::history::HistoryBooks;
use crate::operators::packed_row::PackedRow;
use crate::operators::partition::TenantPlan;
use crate::operators::version::SysTime;
use crate::sinks::parquet::large_txn::{LargeLimits, LargeWrite, LARGE_LIMITS};
use crate::sinks::parquet::sink::cold_columns;
use crate::sinks::parquet::{
    for_each_batch, list_tables, ChangeOp, ColdEvent, ColdRow, ColdTableWriter, ParquetError,
};
use crate::sinks::SinkError;
use crate::time_text::parse_pg_timestamp;

/// A cold-tier error under `root` as a definite sink error naming the root.
pub(crate) fn cold_error(root: &Path) -> impl Fn(ParquetError) -> SinkError + '_ {
    move |e| SinkError::Definite(format!("parquet cold tier {}: {e}", root.display()))
}

/// A version's name in the tier: its key cells (packed, owned), valid start and opening
/// LSN, as [`versions_from_cold_rows`] merges its open and close rows.
type VersionName = (PackedRow, i64, Lsn);

fn version_name(keys: &[usize], r: &ColdRow) -> VersionName {
    (key_of(keys, r), r.valid_from, r.system_from_lsn)
}

/// The key cells of `r`, packed.
fn key_of(keys: &[usize], r: &ColdRow) -> PackedRow {
    let key: Vec<Cell> = keys
        .iter()
        .map(|&i| match r.values.get(i).cloned().flatten() {
            Some(t) => Cell::Text(t),
            None => Cell::Null,
        })
        .collect();
    PackedRow::pack(&key)
}

/// A digest of a row's values (SHA-256, 16 bytes of it): unchanged rows have equal ones.
fn values_digest(values: &[Option<crate::change::Text>]) -> [u8; 16] {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    for v in values {
        match v {
            None => hash.update([0u8]),
            Some(t) => {
                hash.update([1u8]);
                hash.update((t.len() as u64).to_le_bytes());
                hash.update(t.as_bytes());
            }
        }
    }
    let full = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// One open version of a key in the tier, as a re-snapshot compares it.
struct OpenEntry {
    valid_from: i64,
    system_from_lsn: Lsn,
    digest: [u8; 16],
    tombstone: bool,
    /// The snapshot found the same row: the version stays open.
    kept: bool,
}

/// A key's open versions, and whether the snapshot has a row of it.
#[derive(Default)]
struct KeyVersions {
    seen: bool,
    versions: Vec<OpenEntry>,
}

/// A re-snapshot into the tier that keeps what did not change: per root and tenant, the
/// open versions by key (packed key, a 16-byte digest of the values and a few fields each,
/// about 100 bytes a version). A snapshot row equal to an open version is not written
/// and the version stays open; before publishing, the open versions neither kept nor
/// tombstones of keys still absent are closed at the snapshot's point.
pub struct UnchangedKept<'a> {
    roots: &'a [PathBuf],
    info: &'a TableInfo,
    keys: Vec<usize>,
    columns: Vec<crate::sinks::parquet::ColdColumn>,
    at: SysTime,
    /// Per root: tenant → key → its open versions.
    open: Vec<HashMap<String, HashMap<PackedRow, KeyVersions>>>,
}

impl<'a> UnchangedKept<'a> {
    /// Reads the open versions of the job's tenants whose directories of `info`'s table
    /// `table` under each of `roots` do not already cover `at` (those skip the write).
    fn read(
        roots: &'a [PathBuf],
        info: &'a TableInfo,
        table: &str,
        include: &TenantFilter,
        at: SysTime,
    ) -> Result<UnchangedKept<'a>, SinkError> {
        let keys = info.key_columns();
        let columns = cold_columns(info);
        let mut open = Vec::with_capacity(roots.len());
        for root in roots {
            let mut tenants = HashMap::new();
            for tenant in tier_tenants(root, table, include).map_err(cold_error(root))? {
                let writer = ColdTableWriter::open(root, &tenant, table, &columns)
                    .map_err(cold_error(root))?;
                if writer.covered_lsn() >= at.lsn || writer.manifest().files.is_empty() {
                    continue;
                }
                let mut by_key: HashMap<PackedRow, KeyVersions> = HashMap::new();
                each_open_version_at(root, &tenant, info, Lsn::MAX, |rows| {
                    for r in rows {
                        by_key
                            .entry(key_of(&keys, &r))
                            .or_default()
                            .versions
                            .push(OpenEntry {
                                valid_from: r.valid_from,
                                system_from_lsn: r.system_from_lsn,
                                digest: values_digest(&r.values),
                                tombstone: r.tombstone,
                                kept: false,
                            });
                    }
                })
                .map_err(cold_error(root))?;
                tenants.insert(tenant, by_key);
            }
            open.push(tenants);
        }
        Ok(UnchangedKept {
            roots,
            info,
            keys,
            columns,
            at,
            open,
        })
    }

    /// Whether the open version `r` of a key the snapshot did not keep is to be closed.
    fn closes(&self, versions: Option<&KeyVersions>, r: &ColdRow) -> bool {
        let Some(k) = versions else {
            return true;
        };
        let entry = k
            .versions
            .iter()
            .find(|e| e.valid_from == r.valid_from && e.system_from_lsn == r.system_from_lsn);
        match entry {
            // A tombstone stays open while the snapshot has no row of its key.
            Some(e) => !e.kept && (!e.tombstone || k.seen),
            None => true,
        }
    }
}

impl cold_seed::TierSnapshot for UnchangedKept<'_> {
    fn keep(&mut self, root: usize, tenant: &str, row: &ColdRow) -> bool {
        let Some(by_key) = self.open.get_mut(root).and_then(|t| t.get_mut(tenant)) else {
            return true;
        };
        let Some(k) = by_key.get_mut(&key_of(&self.keys, row)) else {
            return true;
        };
        k.seen = true;
        let digest = values_digest(&row.values);
        match k
            .versions
            .iter_mut()
            .find(|e| !e.tombstone && !e.kept && e.digest == digest)
        {
            Some(e) => {
                e.kept = true;
                false
            }
            None => true,
        }
    }

    fn before_publish(
        &mut self,
        root: usize,
        (write, writers): &mut cold_seed::RootWrite<'_>,
    ) -> Result<(), SinkError> {
        let path = &self.roots[root];
        let table = self.info.qualified_name();
        let Some(tenants) = self.open.get(root) else {
            return Ok(());
        };
        for (tenant, by_key) in tenants {
            // The tier's open versions read again, a batch at a time: those to close
            // get a close row each, full values included.
            let mut added = Ok(());
            each_open_version_at(path, tenant, self.info, Lsn::MAX, |rows| {
                let closes: Vec<ColdRow> = rows
                    .into_iter()
                    .filter(|r| self.closes(by_key.get(&key_of(&self.keys, r)), r))
                    .map(|mut c| {
                        c.event = ColdEvent::Close;
                        c.system_to = Some(self.at.micros);
                        c.system_to_lsn = Some(self.at.lsn);
                        c
                    })
                    .collect();
                if added.is_ok() && !closes.is_empty() {
                    added = write.add_rows(tenant, &table, &self.columns, &closes, writers);
                }
            })
            .map_err(cold_error(path))?;
            added.map_err(cold_seed::large_error)?;
        }
        Ok(())
    }
}

/// Adds to `closed` the names of the versions `rows` close at or before `at`.
fn note_closes(keys: &[usize], rows: &[ColdRow], at: Lsn, closed: &mut HashSet<VersionName>) {
    for r in rows {
        if r.event == ColdEvent::Close && r.system_to_lsn.is_some_and(|l| l <= at) {
            closed.insert(version_name(keys, r));
        }
    }
}

/// Whether `r` opens a version current at `at`: opened at or before it and not among the
/// versions `closed` by then (a close may come before its open in file order: an export
/// writes one row per version).
fn opens_current(keys: &[usize], r: &ColdRow, at: Lsn, closed: &HashSet<VersionName>) -> bool {
    // A key is packed only when some version was closed: a tier of opens alone (a
    // snapshot, inserts) is read without it.
    r.event == ColdEvent::Open
        && r.system_from_lsn <= at
        && (closed.is_empty() || !closed.contains(&version_name(keys, r)))
}

/// The open rows of versions current at `at`: opened at or before it and not closed at
/// or before it, in the order they were written.
pub fn open_versions_at(table: &TableInfo, rows: Vec<ColdRow>, at: Lsn) -> Vec<ColdRow> {
    let keys = table.key_columns();
    let mut closed = HashSet::new();
    note_closes(&keys, &rows, at, &mut closed);
    rows.into_iter()
        .filter(|r| opens_current(&keys, r, at, &closed))
        .collect()
}

/// The tenants of the job with a directory of `table` under `root`.
pub(crate) fn tier_tenants(
    root: &Path,
    table: &str,
    include: &TenantFilter,
) -> Result<Vec<String>, ParquetError> {
    Ok(list_tables(root)?
        .into_iter()
        .filter(|(tenant, t)| t == table && include.includes(tenant))
        .map(|(tenant, _)| tenant)
        .collect())
}

/// Fills `books` with the versions current at `at(table, tenant)` (the stream's resume
/// position, or a later backfill floor), read from the cold tier at `root`; returns how
/// many.
pub fn restore_books(
    plan: &TenantPlan,
    root: &Path,
    tables: &[(TableSpec, Arc<TableInfo>)],
    at: impl Fn(&str, &str) -> Lsn,
    books: &HistoryBooks,
) -> Result<usize, SinkError> {
    let mut restored = 0;
    for (table, info) in tables.iter().filter(|(t, _)| t.history) {
        for tenant in tier_tenants(root, &table.name, &plan.include).map_err(cold_error(root))? {
            let point = at(&table.name, &tenant);
            each_open_version_at(root, &tenant, info, point, |open| {
                for v in versions_from_cold_rows(info, &open) {
                    books.restore(&tenant, &table.name, v);
                    restored += 1;
                }
            })
            .map_err(cold_error(root))?;
        }
    }
    Ok(restored)
}

/// The rows [`open_versions_at`] keeps, over every published file of `tenant`'s table,
/// handed to `each` a batch at a time: the files are read twice, first for the names of
/// the versions closed by `at`, then for the open rows of the others. What is held is
/// those names (packed key and 16 bytes each) and one batch, not the table's rows.
fn each_open_version_at(
    root: &Path,
    tenant: &str,
    info: &TableInfo,
    at: Lsn,
    mut each: impl FnMut(Vec<ColdRow>),
) -> Result<(), ParquetError> {
    let table = info.qualified_name();
    let keys = info.key_columns();
    let mut closed = HashSet::new();
    for_each_batch(root, tenant, &table, |rows| {
        note_closes(&keys, &rows, at, &mut closed);
        Ok(())
    })?;
    for_each_batch(root, tenant, &table, |rows| {
        let open: Vec<ColdRow> = rows
            .into_iter()
            .filter(|r| opens_current(&keys, r, at, &closed))
            .collect();
        if !open.is_empty() {
            each(open);
        }
        Ok(())
    })
}

/// The open row of a version the snapshot found: valid from the row's valid-time column
/// when it has one (else from the snapshot's time), known from the snapshot.
fn snapshot_row(table: &TableInfo, valid_at: Option<usize>, row: &[Cell], at: SysTime) -> ColdRow {
    let valid_from = valid_at
        .and_then(|i| row.get(i))
        .and_then(Cell::as_text)
        .and_then(parse_pg_timestamp)
        .unwrap_or(at.micros);
    ColdRow {
        event: ColdEvent::Open,
        op: ChangeOp::Insert,
        values: (0..table.columns.len())
            .map(|i| row.get(i).and_then(Cell::shared_text))
            .collect(),
        valid_from,
        valid_to: None,
        system_from: at.micros,
        system_from_lsn: at.lsn,
        system_to: None,
        system_to_lsn: None,
        tombstone: false,
    }
}

/// Writes the snapshot of one table to every cold root: per tenant, the close of each
/// version still open, then one open version per row the `copier` (in the exported
/// snapshot's transaction) reads, all at `at`. Returns the rows read.
///
/// Rows go into each tenant's staged files as they are read ([`cold_seed`]); each
/// tenant's files are published at the end with one manifest update, as one write at
/// the consistent point. A read that fails publishes nothing. A tenant whose table
/// already covers `at` (a crash after its write) is skipped.
pub async fn snapshot_table(
    copier: &tokio_postgres::Client,
    roots: &[PathBuf],
    plan: &TenantPlan,
    table: &TableSpec,
    info: &TableInfo,
    at: SysTime,
) -> Result<u64, SinkError> {
    let column = &plan.tenant_keys[&table.name];
    let Some(tenant_at) = column.at(info) else {
        return Err(SinkError::Definite(format!(
            "{}: no {}",
            info.qualified_name(),
            column.describe()
        )));
    };
    let valid_at = table
        .valid_time_column
        .as_deref()
        .and_then(|c| info.column_index(c));
    let sql = snapshot::select_text_sql(info, column, &plan.include);
    let rows = snapshot::rows_as_text(copier, &sql)
        .await
        .map_err(|e| SinkError::Transient(e.to_string()))?;
    // A NULL tenant belongs to no tenant: the stream drops such rows too.
    let versions = rows.filter_map(|row| {
        let version = match row {
            Ok(row) => tenant_at
                .of(&row)
                .map(|tenant| Ok((tenant.to_owned(), snapshot_row(info, valid_at, &row, at)))),
            Err(e) => Some(Err(SinkError::Transient(e.to_string()))),
        };
        std::future::ready(version)
    });
    let (roots, info) = (roots.to_vec(), info.clone());
    let (table_name, include) = (table.name.clone(), plan.include.clone());
    cold_seed::feed(versions, move |chunks| {
        write_snapshot(
            &roots,
            &info,
            &table_name,
            &include,
            at,
            LARGE_LIMITS,
            chunks,
        )
    })
    .await
}

/// The blocking side of [`snapshot_table`]: streams the chunks' rows into each root's
/// tier, keeping the versions of unchanged rows and closing the others' ([`UnchangedKept`],
/// through [`cold_seed::stream_into_tier`]).
pub fn write_snapshot(
    roots: &[PathBuf],
    info: &TableInfo,
    table: &str,
    include: &TenantFilter,
    at: SysTime,
    limits: LargeLimits,
    chunks: impl Iterator<Item = SnapshotChunk>,
) -> Result<(), SinkError> {
    let columns = cold_columns(info);
    let mut unchanged = UnchangedKept::read(roots, info, table, include, at)?;
    let writes = roots
        .iter()
        .map(|root| (LargeWrite::new(root, at.lsn, limits), HashMap::new()))
        .collect();
    cold_seed::stream_into_tier(writes, table, &columns, chunks, &mut unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures::table as fixture;
    use crate::sinks::parquet::fixtures::version_row;
    use crate::sinks::parquet::read_table;

    fn table() -> TableInfo {
        fixture(
            "t",
            &[("tenant_id", "integer"), ("id", "integer"), ("v", "text")],
            &[0, 1],
        )
    }

    fn row(event: ColdEvent, id: &str, v: &str, from: Lsn, to: Option<Lsn>) -> ColdRow {
        let mut row = version_row(&["1", id, v], from, to);
        row.event = event;
        row
    }

    #[test]
    fn open_versions_are_those_opened_and_not_closed_by_the_point() {
        let rows = vec![
            row(ColdEvent::Open, "1", "a", 10, None),
            row(ColdEvent::Open, "2", "b", 10, None),
            row(ColdEvent::Close, "1", "a", 10, Some(20)),
            row(ColdEvent::Open, "1", "c", 20, None),
            row(ColdEvent::Open, "3", "d", 30, None),
        ];
        let values = |rows: Vec<ColdRow>| -> Vec<String> {
            rows.into_iter()
                .map(|r| r.values[2].as_deref().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            values(open_versions_at(&table(), rows.clone(), 15)),
            ["a", "b"]
        );
        assert_eq!(
            values(open_versions_at(&table(), rows.clone(), 20)),
            ["b", "c"]
        );
        assert_eq!(
            values(open_versions_at(&table(), rows.clone(), Lsn::MAX)),
            ["b", "c", "d"]
        );
        assert!(open_versions_at(&table(), rows, 5).is_empty());
    }

    /// A snapshot's open versions at `at`: `n` rows spread over `tenants`, in chunks of
    /// 300, then [`SnapshotChunk::End`] when `complete`.
    fn chunks(tenants: &[&str], n: usize, at: SysTime, complete: bool) -> Vec<SnapshotChunk> {
        let info = table();
        let rows: Vec<(String, ColdRow)> = (0..n)
            .map(|i| {
                let tenant = tenants[i % tenants.len()];
                let cells = [
                    Cell::text(tenant),
                    Cell::text(&i.to_string()),
                    Cell::text("v"),
                ];
                (tenant.to_owned(), snapshot_row(&info, None, &cells, at))
            })
            .collect();
        let mut out: Vec<SnapshotChunk> = rows
            .chunks(300)
            .map(|c| SnapshotChunk::Rows(c.to_vec()))
            .collect();
        if complete {
            out.push(SnapshotChunk::End);
        }
        out
    }

    /// Per root and tenant: (versions open now, rows published, files listed).
    fn published(roots: &[PathBuf], tenants: &[&str]) -> Vec<(usize, usize, usize)> {
        let (info, name) = (table(), table().qualified_name());
        let mut out = Vec::new();
        for root in roots {
            for tenant in tenants {
                let rows = read_table(root, tenant, &name)
                    .map(|(_, r)| r)
                    .unwrap_or_default();
                let files = ColdTableWriter::open(root, tenant, &name, &cold_columns(&info))
                    .expect("open")
                    .manifest()
                    .files
                    .len();
                let open = open_versions_at(&info, rows.clone(), Lsn::MAX).len();
                out.push((open, rows.len(), files));
            }
        }
        out
    }

    #[test]
    fn a_snapshot_streams_into_pieces_published_whole_and_closes_what_it_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = vec![dir.path().join("a"), dir.path().join("b")];
        let (info, name) = (table(), table().qualified_name());
        let limits = LargeLimits {
            buffer_bytes: 16 << 10,
            file_rows: 400,
        };
        let first = SysTime {
            lsn: 100,
            micros: 1_000,
        };
        let write = |at: SysTime, tenants: &[&str], n: usize, complete: bool| {
            let input = chunks(tenants, n, at, complete).into_iter();
            write_snapshot(&roots, &info, &name, &TenantFilter::All, at, limits, input)
        };
        write(first, &["1", "2", "3"], 3000, true).expect("first snapshot");
        // 1,000 rows a tenant in files of about 400 rows, in both roots.
        for (open, rows, files) in published(&roots, &["1", "2", "3"]) {
            assert_eq!((open, rows), (1000, 1000));
            assert!(files >= 3, "{files} files");
        }
        // A snapshot cut short publishes nothing.
        let second = SysTime {
            lsn: 200,
            micros: 2_000,
        };
        let err = write(second, &["1", "2"], 1000, false).expect_err("no End");
        assert!(
            err.to_string().contains("nothing of it was published"),
            "{err}"
        );
        for (open, rows, _) in published(&roots, &["1", "2", "3"]) {
            assert_eq!((open, rows), (1000, 1000));
        }
        // A re-snapshot without tenant 3's rows: tenants 1 and 2 have 500 rows each, 167
        // of them (the ids divisible by 6, or 1 more) unchanged, which keep their
        // versions; the other 833 versions are closed and 333 opened. Tenant 3's are all
        // closed.
        write(second, &["1", "2"], 1000, true).expect("second snapshot");
        let after = published(&roots, &["1", "2", "3"]);
        for root in 0..2 {
            assert_eq!(after[root * 3].0, 500);
            assert_eq!(after[root * 3].1, 1000 + 833 + 333);
            assert_eq!(after[root * 3 + 1].0, 500);
            assert_eq!(after[root * 3 + 2].0, 0);
            assert_eq!(after[root * 3 + 2].1, 1000 + 1000);
        }
        // Written again at the same point (a crash after the write): nothing changes.
        write(second, &["1", "2"], 1000, true).expect("replay");
        assert_eq!(published(&roots, &["1", "2", "3"]), after);
        // Read batch by batch (as a restore does), the versions current at each point
        // are those of the whole table read at once.
        for tenant in ["1", "2", "3"] {
            let (_, rows) = read_table(&roots[0], tenant, &name).expect("read");
            for at in [50, 100, 150, 200, Lsn::MAX] {
                let mut streamed = Vec::new();
                each_open_version_at(&roots[0], tenant, &info, at, |mut open| {
                    streamed.append(&mut open)
                })
                .expect("streamed");
                assert_eq!(
                    streamed,
                    open_versions_at(&info, rows.clone(), at),
                    "{tenant} at {at}"
                );
            }
        }
    }

    #[test]
    fn a_re_snapshot_keeps_unchanged_rows_and_open_tombstones_of_absent_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = vec![dir.path().to_path_buf()];
        let (info, name) = (table(), table().qualified_name());
        let columns = cold_columns(&info);
        // The tier: key 1 = a, key 2 deleted (an open tombstone), key 3 = c, key 5 = e
        // with two open versions (a back-dated change split its valid time).
        let mut tombstone = row(ColdEvent::Open, "2", "", 10, None);
        tombstone.values[2] = None;
        tombstone.tombstone = true;
        let mut earlier_e = row(ColdEvent::Open, "5", "e0", 10, None);
        earlier_e.valid_from = -5;
        let tier = [
            row(ColdEvent::Open, "1", "a", 10, None),
            tombstone,
            row(ColdEvent::Open, "3", "c", 10, None),
            earlier_e,
            row(ColdEvent::Open, "5", "e", 10, None),
        ];
        let mut writers = HashMap::new();
        let mut seed = LargeWrite::new(dir.path(), 10, LARGE_LIMITS);
        seed.add_rows("1", &name, &columns, &tier, &mut writers)
            .expect("seed");
        seed.finish(&mut writers).expect("publish");
        // The snapshot: 1 = a (unchanged), 3 = c2 (changed), 4 = d (new), 5 = e; 2 absent.
        let at = SysTime {
            lsn: 50,
            micros: 500,
        };
        let rows: Vec<(String, ColdRow)> = [("1", "a"), ("3", "c2"), ("4", "d"), ("5", "e")]
            .iter()
            .map(|(id, v)| {
                let cells = [Cell::text("1"), Cell::text(id), Cell::text(v)];
                ("1".to_owned(), snapshot_row(&info, None, &cells, at))
            })
            .collect();
        let input = vec![SnapshotChunk::Rows(rows), SnapshotChunk::End].into_iter();
        write_snapshot(
            &roots,
            &info,
            &name,
            &TenantFilter::All,
            at,
            LARGE_LIMITS,
            input,
        )
        .expect("snapshot");
        let (_, all) = read_table(dir.path(), "1", &name).expect("read");
        let open: Vec<(String, Option<String>, Lsn)> =
            open_versions_at(&info, all.clone(), Lsn::MAX)
                .iter()
                .map(|r| {
                    let id = r.values[1].as_deref().unwrap_or_default().to_owned();
                    (
                        id,
                        r.values[2].as_deref().map(str::to_owned),
                        r.system_from_lsn,
                    )
                })
                .collect();
        let text = |v: &str| Some(v.to_owned());
        assert_eq!(
            open,
            [
                ("1".to_owned(), text("a"), 10),
                ("2".to_owned(), None, 10),
                ("5".to_owned(), text("e"), 10),
                ("3".to_owned(), text("c2"), 50),
                ("4".to_owned(), text("d"), 50),
            ]
        );
        let closed: Vec<(String, i64)> = all
            .iter()
            .filter(|r| r.event == ColdEvent::Close)
            .map(|r| {
                (
                    r.values[1].as_deref().unwrap_or_default().to_owned(),
                    r.valid_from,
                )
            })
            .collect();
        assert_eq!(closed, [("3".to_owned(), 0), ("5".to_owned(), -5)]);
    }

    #[test]
    fn a_close_written_before_its_open_still_closes_it() {
        let rows = vec![
            row(ColdEvent::Close, "1", "a", 10, Some(20)),
            row(ColdEvent::Open, "1", "a", 10, None),
        ];
        assert!(open_versions_at(&table(), rows, 25).is_empty());
    }
}
