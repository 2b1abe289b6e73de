//! Micro-benchmarks of the two per-change hot spots, each beside a trivial baseline run in
//! the same process so the figures compare on any machine:
//!
//! - `pgoutput_decode`: decoding Insert messages of an 8-column row (int, bigint, numeric,
//!   timestamptz, jsonb, text, bool, int) vs `memcpy` of the same bytes;
//! - `tenant_partition`: cloning the records and routing them to tenants
//!   (`partition_record`, a job over 5 of 50 tenants, and one over all of them) vs only
//!   cloning them;
//! - `predictor_window`: closing one prediction window of the hot-data predictor with
//!   about 100k buckets tracked (50 tenants writing new key ranges, as the e2e lag run
//!   does) vs cloning that window's counts. Throughput is in tracked buckets.
//!
//! Criterion prints each case's throughput in elements (rows) per second.
//! Run: `cargo bench --bench micro`.

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use helios_repl::cdc::pgoutput::{decode, encode, ColumnValue, Insert, PgOutputMessage, TupleData};
use helios_repl::cdc::stream::to_row;
use helios_repl::change::{RowOp, SourceRecord, TableInfo};
use helios_repl::control::job_spec::{TenantFilter, TenantKey};
use helios_repl::operators::access::features::BucketCounts;
use helios_repl::operators::access::{BucketKey, Predictor, PredictorConfig};
use helios_repl::operators::partition::{partition_record, TenantPlan};

#[path = "common/table_info.rs"]
mod table_info;

use table_info::{keyed_table, BENCH_COLUMNS};

const ROWS: usize = 10_000;

fn table() -> Arc<TableInfo> {
    let mut table = keyed_table("public", "bench", &BENCH_COLUMNS, 2);
    // The relation the encoded messages name, and the columns' type as they send it.
    table.oid = 16400;
    for column in &mut table.columns {
        column.type_oid = 23;
    }
    Arc::new(table)
}

fn messages() -> Vec<Vec<u8>> {
    (0..ROWS)
        .map(|i| {
            let text = |s: String| ColumnValue::Text(s.into());
            let msg = PgOutputMessage::Insert(Insert {
                relation_oid: 16400,
                new: TupleData(vec![
                    text((1 + i % 50).to_string()),
                    text(i.to_string()),
                    text(format!("{}.{:02}", i * 7, i % 100)),
                    text("2026-11-24 07:36:12.123456+00".into()),
                    text(format!(
                        "{{\"items\": {}, \"gift\": {}}}",
                        i % 9,
                        i % 5 == 0
                    )),
                    text(format!("order {i} for a customer with a longer note")),
                    text(if i % 2 == 0 { "t" } else { "f" }.into()),
                    text((i % 1000).to_string()),
                ]),
            });
            let mut out = Vec::new();
            encode(&msg, &mut out);
            out
        })
        .collect()
}

fn records(table: &Arc<TableInfo>, messages: &[Vec<u8>]) -> Vec<SourceRecord> {
    messages
        .iter()
        .enumerate()
        .filter_map(|(seq, m)| match decode(m) {
            Ok(PgOutputMessage::Insert(ins)) => Some(SourceRecord::Change {
                seq: seq as u32,
                table: table.clone(),
                op: RowOp::Insert {
                    new: to_row(table, ins.new).ok()?,
                },
            }),
            _ => None,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let table = table();
    let messages = messages();
    let bytes: usize = messages.iter().map(Vec::len).sum();

    let mut group = c.benchmark_group("pgoutput_decode");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline_memcpy", |b| {
        let mut buf = vec![0u8; bytes];
        b.iter(|| {
            let mut at = 0;
            for m in &messages {
                buf[at..at + m.len()].copy_from_slice(m);
                at += m.len();
            }
            black_box(&buf);
        })
    });
    group.bench_function("decode_to_rows", |b| {
        b.iter(|| {
            for m in &messages {
                if let Ok(PgOutputMessage::Insert(ins)) = decode(black_box(m)) {
                    black_box(to_row(&table, ins.new).ok());
                }
            }
        })
    });
    group.finish();

    let records = records(&table, &messages);
    let plan = TenantPlan {
        include: TenantFilter::Only(
            [2, 11, 17, 23, 42]
                .iter()
                .map(|t: &i32| t.to_string())
                .collect::<BTreeSet<_>>(),
        ),
        tenant_keys: [(
            "public.bench".to_string(),
            TenantKey::Column("tenant_id".to_string()),
        )]
        .into_iter()
        .collect(),
        peers: 2,
    };
    let mut group = c.benchmark_group("tenant_partition");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("baseline_clone", |b| b.iter(|| black_box(records.clone())));
    group.bench_function("clone_and_partition", |b| {
        b.iter(|| {
            for record in records.clone() {
                black_box(partition_record(&plan, record));
            }
        })
    });
    let all = TenantPlan {
        include: TenantFilter::All,
        ..plan.clone()
    };
    group.bench_function("clone_and_partition_all_tenants", |b| {
        b.iter(|| {
            for record in records.clone() {
                black_box(partition_record(&all, record));
            }
        })
    });
    group.finish();

    predictor_window(c);
}

/// Window `w`'s write counts: each of 50 tenants writes the next 200 key buckets of one
/// table (sequential keys, as inserts at a steady rate give).
fn window_counts(w: i64, names: &[Arc<str>], table: &Arc<str>) -> BucketCounts {
    let mut counts = BucketCounts::default();
    for tenant in names {
        for b in 0..200 {
            let key = BucketKey {
                tenant: tenant.clone(),
                table: table.clone(),
                bucket: w * 200 + b,
            };
            counts.insert(key, 20.0);
        }
    }
    counts
}

fn predictor_window(c: &mut Criterion) {
    let names: Vec<Arc<str>> = (0..50).map(|t| Arc::from(format!("t{t:02}"))).collect();
    let table: Arc<str> = Arc::from("bench.l");
    let mut predictor = Predictor::new(PredictorConfig::default());
    // Ten windows of 10k new buckets each: the store reaches its cap of 100k.
    let mut w = 0;
    while w < 10 {
        predictor.close_window(w * 10, &window_counts(w, &names, &table), &HashMap::new());
        w += 1;
    }
    let tracked = predictor.tracked_buckets();
    let counts = window_counts(w, &names, &table);
    let mut group = c.benchmark_group("predictor_window");
    group.throughput(Throughput::Elements(tracked as u64));
    group.sample_size(10);
    group.bench_function("baseline_clone_counts", |b| {
        b.iter(|| black_box(counts.clone()))
    });
    group.bench_function("close_window", |b| {
        b.iter(|| {
            // A fresh window each time, so the store keeps admitting and evicting.
            w += 1;
            let counts = window_counts(w, &names, &table);
            black_box(predictor.close_window(w * 10, &counts, &HashMap::new()));
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
