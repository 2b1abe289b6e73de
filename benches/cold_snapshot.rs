//! Memory of writing a history job's initial snapshot into the Parquet cold tier: the
//! bytes the allocator holds at most while N bench rows (50 tenants, the e2e bench's 8
//! columns) become open versions in the tier, streamed as `snapshot_table` writes them
//! (chunks into each tenant's staged files, published at the end) beside the way it wrote
//! them until 2026-12-06 (every row gathered per tenant, then one write per tenant),
//! measured in the same process. Rows are made as they are consumed, so neither case
//! counts a source holding them. Prints peak bytes above what was live before each case
//! (Rust's allocations), the process's peak RSS during it (`VmHWM`, reset before each case
//! through `/proc/self/clear_refs`: it also counts what zstd's C code allocates, such as
//! the parquet crate's compressor and decompressor per column being written), seconds,
//! rows/s, and that both tiers read back the same row count.
//!
//! Run: `cargo bench --bench cold_snapshot` (`HELIOS_BENCH_SNAPSHOT_ROWS`, default
//! 1,000,000; `HELIOS_BENCH_SNAPSHOT_TENANTS`, default 50).

#[path = "support/counting.rs"]
mod counting;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use counting::{reset_peak, LIVE, PEAK};
use helios_repl::change::{ColumnInfo, Identity, TableInfo, Text};
use helios_repl::control::cold_history::write_snapshot;
use helios_repl::control::cold_seed::SnapshotChunk;
use helios_repl::control::job_spec::TenantFilter;
use helios_repl::operators::version::SysTime;
use helios_repl::sinks::parquet::large_txn::LARGE_LIMITS;
use helios_repl::sinks::parquet::sink::cold_columns;
use helios_repl::sinks::parquet::{
    list_tables, read_table, ChangeOp, ColdEvent, ColdRow, ColdTableWriter,
};

const CHUNK: u64 = 10_000;
const AT: SysTime = SysTime {
    lsn: 1 << 32,
    micros: 820_000_000_000_000,
};

fn bench_table() -> TableInfo {
    let col = |name: &str, ty: &str| ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_modifier: -1,
        type_name: ty.into(),
        in_identity: false,
        missing_value: None,
        attnum: None,
    };
    TableInfo {
        oid: 0,
        schema: "bench".into(),
        name: "t".into(),
        columns: vec![
            col("tenant_id", "integer"),
            col("id", "bigint"),
            col("amount", "numeric(12,2)"),
            col("at", "timestamp with time zone"),
            col("payload", "jsonb"),
            col("note", "text"),
            col("flag", "boolean"),
            col("qty", "integer"),
        ],
        primary_key: vec![0, 1],
        identity: Identity::Default,
        type_ddl: vec![],
    }
}

/// Row `g` of the bench table as the snapshot's open version of it, with its tenant (one
/// of `tenants`).
fn version(g: u64, tenants: u64) -> (String, ColdRow) {
    let tenant = (g % tenants + 1).to_string();
    let values = [
        tenant.clone(),
        g.to_string(),
        format!("{}.{:02}", (g % 10_000_000) / 100, g % 100),
        format!(
            "2024-01-{:02} {:02}:{:02}:{:02}+00",
            g / 86_400 % 28 + 1,
            g / 3600 % 24,
            g / 60 % 60,
            g % 60
        ),
        format!(r#"{{"k": {g}, "kind": "order", "tags": ["a", {}]}}"#, g % 7),
        format!("note {g} for a tenant row"),
        (if g.is_multiple_of(2) { "t" } else { "f" }).to_string(),
        (g % 1000).to_string(),
    ];
    let row = ColdRow {
        event: ColdEvent::Open,
        op: ChangeOp::Insert,
        values: values
            .iter()
            .map(|v| Some(Text::from(v.as_str())))
            .collect(),
        valid_from: AT.micros,
        valid_to: None,
        system_from: AT.micros,
        system_from_lsn: AT.lsn,
        system_to: None,
        system_to_lsn: None,
        tombstone: false,
    };
    (tenant, row)
}

/// What one case took: peak bytes allocated above those live before it, peak RSS
/// during it, seconds.
struct Taken {
    peak_bytes: f64,
    peak_rss: f64,
    seconds: f64,
}

/// Measures `run` ([`Taken`]).
fn measure(run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Taken> {
    let before = LIVE.load(Relaxed);
    reset_peak();
    // "5" resets the peak RSS to the current RSS (Linux 4.0 and later).
    std::fs::write("/proc/self/clear_refs", "5")?;
    let started = Instant::now();
    run()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Taken {
        peak_bytes: (PEAK.load(Relaxed) - before) as f64,
        peak_rss: peak_rss()?,
        seconds,
    })
}

/// The process's peak RSS in bytes (`VmHWM`).
fn peak_rss() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/self/status"))?;
    Ok(kib * 1024.0)
}

/// Rows the tier under `root` holds for the bench table, over every tenant.
fn rows_in(root: &std::path::Path, table: &str) -> anyhow::Result<usize> {
    let mut rows = 0;
    for (tenant, t) in list_tables(root)? {
        if t == table {
            rows += read_table(root, &tenant, table)?.1.len();
        }
    }
    Ok(rows)
}

/// Bytes of the Parquet files under `root`, every directory down.
fn parquet_bytes(root: &std::path::Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            bytes += parquet_bytes(&path)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::var("HELIOS_BENCH_SNAPSHOT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let tenants: u64 = std::env::var("HELIOS_BENCH_SNAPSHOT_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
    let dir = tempfile::tempdir()?;
    let info = bench_table();
    let table = info.qualified_name();
    let (streamed_root, whole_root) = (dir.path().join("streamed"), dir.path().join("whole"));

    let roots = [streamed_root.clone()];
    let streamed = measure(|| {
        let chunks = (0..rows.div_ceil(CHUNK))
            .map(|c| {
                let rows =
                    (c * CHUNK + 1..=((c + 1) * CHUNK).min(rows)).map(|g| version(g, tenants));
                SnapshotChunk::Rows(rows.collect())
            })
            .chain([SnapshotChunk::End]);
        let all = TenantFilter::All;
        write_snapshot(&roots, &info, &table, &all, AT, LARGE_LIMITS, chunks)?;
        Ok(())
    })?;

    let whole = measure(|| {
        let mut by_tenant: BTreeMap<String, Vec<ColdRow>> = BTreeMap::new();
        for (tenant, row) in (1..=rows).map(|g| version(g, tenants)) {
            by_tenant.entry(tenant).or_default().push(row);
        }
        let columns = cold_columns(&info);
        for (tenant, rows) in by_tenant {
            let mut writer = ColdTableWriter::open(&whole_root, &tenant, &table, &columns)?;
            writer.write(&rows, AT.lsn, AT.lsn)?;
        }
        Ok(())
    })?;

    let (got_streamed, got_whole) = (
        rows_in(&streamed_root, &table)?,
        rows_in(&whole_root, &table)?,
    );
    anyhow::ensure!(
        got_streamed == rows as usize && got_whole == rows as usize,
        "the tiers hold {got_streamed} and {got_whole} rows, not {rows}"
    );
    let mib = |b: f64| b / (1 << 20) as f64;
    println!("cold snapshot of {rows} rows over {tenants} tenants (peak bytes the allocator held above the start; peak RSS of the process during the case):");
    let line = |label: &str, t: &Taken, root: &std::path::Path| -> anyhow::Result<()> {
        println!(
            "  {label}: {:.1} MiB peak, {:.1} MiB peak RSS, {:.2} s, {:.0} rows/s, {:.1} bytes per version",
            mib(t.peak_bytes),
            mib(t.peak_rss),
            t.seconds,
            rows as f64 / t.seconds,
            parquet_bytes(root)? as f64 / rows as f64
        );
        Ok(())
    };
    line(
        "streamed (as snapshot_table writes)",
        &streamed,
        &streamed_root,
    )?;
    line(
        "gathered per tenant, then written (until 2026-12-06)",
        &whole,
        &whole_root,
    )?;
    println!(
        "  streamed / gathered: {:.2}x the memory, {:.2}x the peak RSS, {:.2}x the time; both tiers read back {rows} rows",
        streamed.peak_bytes / whole.peak_bytes,
        streamed.peak_rss / whole.peak_rss,
        streamed.seconds / whole.seconds
    );
    Ok(())
}
