//! A large transaction written to the cold tier piece by piece (`large_txn`): it lands
//! as the whole-transaction path would write it, nothing is visible before its last
//! piece is published, and an interrupted attempt leaves nothing behind.

use std::sync::Arc;

use super::super::large_txn::{LargeLimits, LargeWrite};
use super::*;
use crate::change::fixtures::{opened, table};
use crate::change::{Cell, HistoryEvent, Row, TableInfo};
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyBatch, Sink};

const LSN: Lsn = 0x9000;

fn shape() -> Arc<TableInfo> {
    Arc::new(table(
        "t",
        &[("tenant_id", "integer"), ("id", "integer")],
        &[0, 1],
    ))
}

fn event(table: &Arc<TableInfo>, tenant: u32, id: u32) -> HistoryEvent {
    let row: Row = vec![
        Cell::Text(tenant.to_string().into()),
        Cell::Text(id.to_string().into()),
    ];
    opened(&tenant.to_string(), id, table, row, LSN)
}

/// `parts` parts of 60 inserts each over tenants 0..3 (tenant 2 only in the first part).
fn parts(n: u32) -> Vec<ApplyBatch> {
    let table = shape();
    (0..n)
        .map(|p| ApplyBatch {
            commit_lsn: LSN,
            changes: Vec::new(),
            history: (0..60)
                .map(|i| p * 60 + i)
                .filter(|id| p == 0 || id % 3 != 2)
                .map(|id| event(&table, id % 3, id))
                .collect(),
        })
        .collect()
}

/// Files of 40 rows, row groups written out at 1 KiB.
const SMALL: LargeLimits = LargeLimits {
    buffer_bytes: 1024,
    file_rows: 40,
};

fn spill(parts: &[ApplyBatch]) -> SpilledTxn {
    let mut txn = SpilledTxn::create(LSN).unwrap();
    for p in parts {
        txn.append(p).unwrap();
    }
    txn
}

fn rows_of(root: &Path, tenant: u32) -> Vec<ColdRow> {
    read_table(root, &tenant.to_string(), "app.t")
        .map(|(_, rows)| rows)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_large_transaction_lands_in_pieces_as_the_whole_path_writes_it() {
    let parts = parts(5);
    let (pieces, whole) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // 50 rows per file and every row group written out at once: several pieces per
    // table directory.
    let mut sink =
        ParquetSink::new("j", pieces.path().to_path_buf(), 0).with_large_limits(LargeLimits {
            buffer_bytes: 0,
            file_rows: 50,
        });
    let report = sink.apply_large(&mut spill(&parts)).await.unwrap();
    let total: usize = parts.iter().map(|p| p.history.len()).sum();
    assert_eq!((report.upserted, report.skipped), (total as u64, 0));
    let mut tenants: Vec<_> = report
        .tenants
        .iter()
        .map(|t| (t.tenant.clone(), t.lsn))
        .collect();
    tenants.sort();
    assert_eq!(
        tenants,
        [("0".into(), LSN), ("1".into(), LSN), ("2".into(), LSN)]
    );

    let mut reference = ParquetSink::new("j", whole.path().to_path_buf(), 0);
    let mut all = spill(&parts).read_all().unwrap();
    all.changes.clear();
    reference.apply(&[all]).await.unwrap();
    for tenant in 0..3 {
        let got = rows_of(pieces.path(), tenant);
        assert!(!got.is_empty());
        assert_eq!(got, rows_of(whole.path(), tenant), "tenant {tenant}");
    }
    let manifest = Manifest::load(&table_dir(pieces.path(), "0", "app.t"))
        .unwrap()
        .unwrap();
    assert!(manifest.files.len() > 1, "tenant 0 was written in pieces");
    assert!(manifest
        .files
        .iter()
        .all(|f| f.lsn_min == LSN && f.lsn_max == LSN));
    assert_eq!(manifest.covered_lsn, LSN);

    // A replay (a restart before it was acknowledged) writes nothing.
    let again = sink.apply_large(&mut spill(&parts)).await.unwrap();
    assert_eq!((again.upserted, again.skipped), (0, total as u64));
    let mut restarted = ParquetSink::new("j", pieces.path().to_path_buf(), 0);
    let again = restarted.apply_large(&mut spill(&parts)).await.unwrap();
    assert_eq!((again.upserted, again.skipped), (0, total as u64));
    assert_eq!(rows_of(pieces.path(), 0), rows_of(whole.path(), 0));
}

/// The compression of every column chunk of tenant `tenant`'s files.
fn compressions(root: &Path, tenant: u32) -> Vec<Compression> {
    let dir = table_dir(root, &tenant.to_string(), "app.t");
    let manifest = Manifest::load(&dir).unwrap().unwrap();
    let mut out = Vec::new();
    for f in &manifest.files {
        let file = std::fs::File::open(dir.join(&f.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        for group in reader.metadata().row_groups() {
            out.extend(group.columns().iter().map(|c| c.compression()));
        }
    }
    out
}

/// Row groups of each directory's file, by file name.
fn row_groups(root: &Path, tenant: u32) -> Vec<(String, usize)> {
    let dir = table_dir(root, &tenant.to_string(), "app.t");
    let manifest = Manifest::load(&dir).unwrap().unwrap();
    manifest
        .files
        .iter()
        .map(|f| {
            let file = std::fs::File::open(dir.join(&f.path)).unwrap();
            let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            (f.path.clone(), reader.metadata().num_row_groups())
        })
        .collect()
}

#[test]
fn each_directory_gets_one_file_and_its_row_groups_stay_within_the_buffer_limit() {
    let parts = parts(12);
    let total: usize = parts.iter().map(|p| p.history.len()).sum();
    let write = |limits: LargeLimits| {
        let root = tempfile::tempdir().unwrap();
        let mut writers = std::collections::HashMap::new();
        let mut large = LargeWrite::new(root.path(), LSN, limits);
        let mut most = 0;
        let mut files_open = 0;
        for p in &parts {
            large.add(p, &mut writers).unwrap();
            most = most.max(large.buffered_bytes());
            files_open = files_open.max(large.files_open());
            // Rows wait as arrays: no directory keeps a row group in progress (per
            // column a zstd compressor, decompressor and dictionary) between parts.
            assert_eq!(large.row_groups_in_progress(), 0);
            if limits == super::super::large_txn::LARGE_LIMITS {
                // Every row fits in memory: no staged file is open yet.
                assert_eq!(large.files_open(), 0);
            }
        }
        if limits == super::super::large_txn::LARGE_LIMITS {
            // Tenants 0 and 1 got 20 rows from each of the 12 parts: their first 8
            // batches were merged into one (1 + 4 each), tenant 2's one stays.
            assert_eq!(large.pending_batches(), 11);
        }
        let report = large.finish(&mut writers).unwrap();
        assert_eq!(report.upserted, total as u64);
        (root, most, files_open)
    };
    // By default the whole transaction is one file per directory, one row group each.
    let (roomy, held, _) = write(super::super::large_txn::LARGE_LIMITS);
    assert!(held > 0, "rows waited for their row groups");
    // Every row reads back, merged batches included, in order per tenant.
    let read: Vec<Vec<ColdRow>> = (0..3).map(|t| rows_of(roomy.path(), t)).collect();
    assert_eq!(read.iter().map(Vec::len).sum::<usize>(), total);
    for (tenant, rows) in read.iter().enumerate() {
        let ids: Vec<u32> = rows
            .iter()
            .map(|r| r.values[1].as_deref().unwrap().parse().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "tenant {tenant}: {ids:?}"
        );
    }
    for tenant in 0..3 {
        let files = row_groups(roomy.path(), tenant);
        assert_eq!(files.len(), 1, "tenant {tenant}: {files:?}");
        assert!(files[0].0.ends_with("-0000.parquet"), "{files:?}");
        assert_eq!(files[0].1, 1, "tenant {tenant}: {files:?}");
        // Every column compressed, the tenant's too (uniform in the first part, as
        // others may be while later parts are not).
        let chunks = compressions(roomy.path(), tenant);
        assert!(
            !chunks.is_empty() && chunks.iter().all(|c| matches!(c, Compression::ZSTD(_))),
            "tenant {tenant}: {chunks:?}"
        );
    }
    // Under a small buffer the largest row groups are written out as it fills: still one
    // file per directory, with several row groups, and what stays in memory is bounded.
    let limit = held / 3;
    let (tight, most, tight_files_open) = write(LargeLimits {
        buffer_bytes: limit,
        file_rows: 1_000_000,
    });
    assert!(most <= limit, "held {most} bytes, limit {limit}");
    assert!(
        tight_files_open > 0,
        "a row group written out opened its file"
    );
    for tenant in 0..3 {
        let files = row_groups(tight.path(), tenant);
        assert_eq!(files.len(), 1, "tenant {tenant}: {files:?}");
        assert_eq!(
            rows_of(tight.path(), tenant),
            rows_of(roomy.path(), tenant),
            "tenant {tenant}"
        );
    }
    assert!(
        row_groups(tight.path(), 0)[0].1 > 1,
        "tenant 0's file has several row groups"
    );
}

#[test]
fn staged_pieces_are_invisible_until_published_and_an_interrupted_write_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let parts = parts(4);
    let mut writers = std::collections::HashMap::new();
    let mut large = LargeWrite::new(root.path(), LSN, SMALL);
    for p in &parts[..3] {
        large.add(p, &mut writers).unwrap();
    }
    // Pieces are staged, none listed: readers see nothing of the transaction.
    let dir = table_dir(root.path(), "0", "app.t");
    let staged = std::fs::read_dir(dir.join(TEMP_DIR)).unwrap().count();
    assert!(staged > 0, "pieces were staged");
    assert!(rows_of(root.path(), 0).is_empty());
    // The attempt stops (a crash, or a part that never came): reopening the directory
    // removes the staged pieces.
    drop(large);
    let writer = ColdTableWriter::open(
        root.path(),
        "0",
        "app.t",
        &[
            ColdColumn::new("tenant_id", "integer"),
            ColdColumn::new("id", "integer"),
        ],
    )
    .unwrap();
    assert_eq!(writer.covered_lsn(), 0);
    assert_eq!(std::fs::read_dir(dir.join(TEMP_DIR)).unwrap().count(), 0);
    assert!(rows_of(root.path(), 0).is_empty());

    // The retry from the first part publishes every row once.
    let mut writers = std::collections::HashMap::new();
    let mut large = LargeWrite::new(root.path(), LSN, SMALL);
    for p in &parts {
        large.add(p, &mut writers).unwrap();
    }
    let report = large.finish(&mut writers).unwrap();
    let total: usize = parts.iter().map(|p| p.history.len()).sum();
    assert_eq!(report.upserted, total as u64);
    let ids: Vec<String> = rows_of(root.path(), 0)
        .iter()
        .map(|r| r.values[1].as_deref().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = parts
        .iter()
        .flat_map(|p| &p.history)
        .filter(|e| e.tenant == "0")
        .map(|e| e.seq.to_string())
        .collect();
    assert_eq!(ids, want, "tenant 0's rows once, in transaction order");
}

/// A cold row of tenant 0's `app.t` for key `id`, opened at `from` (and closed at `to`).
fn version_row(id: u32, from: Lsn, to: Option<Lsn>) -> ColdRow {
    super::super::fixtures::version_row(&["0", &id.to_string()], from, to)
}

#[test]
fn a_spanning_write_skips_what_a_directory_covers_and_publishes_the_rest_at_its_end() {
    let root = tempfile::tempdir().unwrap();
    let columns = [
        ColdColumn::new("tenant_id", "integer"),
        ColdColumn::new("id", "integer"),
    ];
    let mut writers = std::collections::HashMap::new();
    // The directory holds key 1's version opened at 0x100.
    let mut first = LargeWrite::new(root.path(), 0x100, SMALL);
    let opened = version_row(1, 0x100, None);
    first
        .add_rows(
            "0",
            "app.t",
            &columns,
            std::slice::from_ref(&opened),
            &mut writers,
        )
        .unwrap();
    first.finish(&mut writers).unwrap();
    // A write of everything after 0: that open again, key 2 opened at 0x200, and key 1's
    // version closed at 0x300.
    let rows = [
        opened,
        version_row(2, 0x200, None),
        version_row(1, 0x100, Some(0x300)),
    ];
    let mut spanning = LargeWrite::spanning(root.path(), 1, 0x300, SMALL);
    spanning
        .add_rows("0", "app.t", &columns, &rows, &mut writers)
        .unwrap();
    let report = spanning.finish(&mut writers).unwrap();
    assert_eq!((report.upserted, report.skipped), (2, 1));
    let held: Vec<(ColdEvent, Lsn)> = rows_of(root.path(), 0)
        .iter()
        .map(|r| (r.event, r.commit_lsn().unwrap()))
        .collect();
    assert_eq!(
        held,
        [
            (ColdEvent::Open, 0x100),
            (ColdEvent::Open, 0x200),
            (ColdEvent::Close, 0x300)
        ]
    );
    let (_, writer) = &writers[&("0".to_string(), "app.t".to_string())];
    assert_eq!(writer.covered_lsn(), 0x300);
    // A row committed after the write's end is refused, naming the range.
    let mut late = LargeWrite::spanning(root.path(), 0x301, 0x400, SMALL);
    let err = late
        .add_rows(
            "0",
            "app.t",
            &columns,
            &[version_row(3, 0x500, None)],
            &mut writers,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("outside the write's range"),
        "{err}"
    );
}

#[test]
fn piece_file_names_parse_and_publishing_checks_its_entries() {
    let date = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
    let piece = super::super::layout::relative_piece_path(date, 0x10, 0x10, 7);
    assert_eq!(
        piece,
        "date=2026-12-04/part-0000000000000010-0000000000000010-0007.parquet"
    );
    assert_eq!(
        parse_relative_path(&piece).map(|(_, lo, hi)| (lo, hi)),
        Some((0x10, 0x10))
    );
    for bad in [
        "date=2026-12-04/part-0000000000000010-0000000000000010-7.parquet",
        "date=2026-12-04/part-0000000000000010-0000000000000010-00x7.parquet",
        "date=2026-12-04/part-0000000000000010-0000000000000010-.parquet",
    ] {
        assert_eq!(parse_relative_path(bad), None, "{bad}");
    }

    let root = tempfile::tempdir().unwrap();
    let cols = [ColdColumn::new("id", "integer")];
    let mut writer = ColdTableWriter::open(root.path(), "t", "app.x", &cols).unwrap();
    let row = |id: &str| ColdRow {
        event: ColdEvent::Open,
        op: ChangeOp::Insert,
        values: vec![Some(id.into())],
        valid_from: 0,
        valid_to: None,
        system_from: 0,
        system_from_lsn: LSN,
        system_to: None,
        system_to_lsn: None,
        tombstone: false,
    };
    let first = writer.stage(&[row("1")], LSN, LSN, Some(0)).unwrap();
    // Publishing the same piece twice, or a piece no longer staged, is refused.
    let twice: Vec<FileEntry> = first.iter().chain(first.iter()).cloned().collect();
    assert!(matches!(
        writer.publish(&twice),
        Err(ParquetError::BadFile { .. })
    ));
    let mut gone = first.clone();
    gone[0].path = gone[0].path.replace("-0000.parquet", "-0001.parquet");
    assert!(matches!(
        writer.publish(&gone),
        Err(ParquetError::BadFile { .. })
    ));
    writer.publish(&first).unwrap();
    assert_eq!(writer.covered_lsn(), LSN);
    // Once covered, publishing more of the same LSN is refused.
    assert!(matches!(
        writer.publish(&first),
        Err(ParquetError::BadFile { .. })
    ));
}

/// A version the transaction opens in one part and closes in a later one (an insert,
/// then an update moving part of its valid time) is stored as applying the whole would
/// store it: not at all; the update's versions are what readers see.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_version_opened_and_closed_across_parts_is_not_stored() {
    use crate::control::history_query::{versions_from_cold_rows, visible_rows};
    use crate::operators::version::{SysTime, SystemPoint, Version, VersionDelta};
    let at = SysTime {
        lsn: LSN,
        micros: 5_000,
    };
    let row = |price: &str| -> Row { vec![Cell::text("1"), Cell::text("7"), Cell::text(price)] };
    let table3 = Arc::new(crate::change::fixtures::table(
        "t",
        &[
            ("tenant_id", "integer"),
            ("id", "integer"),
            ("price", "integer"),
        ],
        &[0, 1],
    ));
    let key: Row = vec![Cell::text("1"), Cell::text("7")];
    let version = |value: Row, from: i64, to: Option<i64>| Version {
        key: key.clone(),
        value,
        valid_from: from,
        valid_to: to,
        system_from: at,
        system_to: None,
        tombstone: false,
    };
    let event = |op, delta| HistoryEvent {
        tenant: "1".into(),
        seq: 0,
        table: table3.clone(),
        op,
        delta,
    };
    let batch = |history| ApplyBatch {
        commit_lsn: LSN,
        changes: Vec::new(),
        history,
    };
    let (d3, d5) = (300, 500);
    let parts = vec![
        batch(vec![event(
            crate::change::HistoryOp::Insert,
            VersionDelta::Open(version(row("1"), d3, None)),
        )]),
        batch(vec![
            event(
                crate::change::HistoryOp::Update,
                VersionDelta::Close {
                    key: key.clone(),
                    value: row("1"),
                    valid_from: d3,
                    valid_to: None,
                    system_from: at,
                    system_to: at,
                    tombstone: false,
                },
            ),
            event(
                crate::change::HistoryOp::Update,
                VersionDelta::Open(version(row("1"), d3, Some(d5))),
            ),
            event(
                crate::change::HistoryOp::Update,
                VersionDelta::Open(version(row("2"), d5, None)),
            ),
        ]),
    ];
    let root = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new("j", root.path().to_path_buf(), 0);
    let report = sink.apply_large(&mut spill(&parts)).await.unwrap();
    assert_eq!(
        report.upserted, 2,
        "the update's two versions, not the insert's"
    );
    let (_, rows) = read_table(root.path(), "1", "app.t").unwrap();
    let versions = versions_from_cold_rows(&table3, &rows);
    for (valid, price) in [(d3 + 1, "1"), (d5 + 1, "2")] {
        assert_eq!(
            visible_rows(&versions, SystemPoint::Lsn(LSN), valid),
            vec![row(price)],
            "valid {valid}"
        );
    }
}
