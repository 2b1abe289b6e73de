//! Round trip of one small target transaction, the unit of our apply at low rates: 10 rows
//! into a table with the lag bench's `BEFORE INSERT` trigger plus the checkpoint upsert,
//! sent as our sink sends it (a pipeline: `BEGIN`, a prepared multi-row insert, the
//! prepared checkpoint upsert, `COMMIT`, one round trip) and as one simple-query string.
//! Two more pipelines show what the checkpoint costs: the same with the replication
//! origin's commit hook (`pg_replication_origin_xact_setup`, how PostgreSQL's own apply
//! worker records its progress) in place of the checkpoint row, and with no checkpoint.
//! A last pipeline commits with `synchronous_commit = on` (what our sessions raise a
//! target's `off` to), against the clusters' `off`.
//! Each shape runs back to back and with 2 ms of idle time before each transaction (the
//! gap between transactions at 5k rows/s of 10-row transactions), in blocks of 200 taking
//! turns so they share the machine's noise. The idle runs show what a wake-up of an idle
//! process costs on this machine, which is what separates our lag from the subscription's
//! at low rates.
//!
//! Run: `cargo bench --bench round_trip` (`HELIOS_BENCH_ROUNDS`, default 4000 per case).

use std::time::{Duration, Instant};

use anyhow::Context;
use helios_repl::embedded::pg_cluster::PgCluster;
use tokio_postgres::types::ToSql;

#[path = "common/target_txn.rs"]
mod target_txn;

use target_txn::{pipelined, Rows, CHECKPOINT, INSERT, ROWS, SCHEMA};

const IDLE: Duration = Duration::from_millis(2);
/// Transactions of one case in a row.
const BLOCK: usize = 200;

/// The same transaction as one simple-query string.
fn as_simple_query(rows: &Rows) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let [tenants, ids, amounts, notes, ats] = &rows.columns;
    let values: Vec<String> = (0..tenants.len())
        .map(|i| {
            format!(
                "({}::int, {}::bigint, {}::numeric, {}, {}::timestamptz)",
                quote(&tenants[i]),
                quote(&ids[i]),
                quote(&amounts[i]),
                quote(&notes[i]),
                quote(&ats[i])
            )
        })
        .collect();
    format!(
            "BEGIN; INSERT INTO l (tenant_id, id, amount, note, created_at) VALUES {};
             INSERT INTO ck (job, scope, commit_lsn, updated_at) VALUES ('j', 'w0', {}::pg_lsn, now())
             ON CONFLICT (job, scope) DO UPDATE
             SET commit_lsn = greatest(ck.commit_lsn, EXCLUDED.commit_lsn), updated_at = now();
             COMMIT",
            values.join(", "),
            quote(&rows.lsn)
        )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// A session to `dsn` with the insert and the checkpoint upsert prepared.
async fn session(
    dsn: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio_postgres::Statement,
    tokio_postgres::Statement,
)> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {dsn}"))?;
    tokio::spawn(connection);
    let insert = client.prepare(INSERT).await?;
    let checkpoint = client.prepare(CHECKPOINT).await?;
    Ok((client, insert, checkpoint))
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::var("HELIOS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let cluster = PgCluster::start(&dir.path().join("pg"))?;
        cluster.create_database("rt")?;
        cluster.psql("rt", SCHEMA)?;
        let (client, insert, checkpoint) = session(&cluster.dsn("rt")).await?;
        // The same session over the server's Unix-domain socket.
        let (unix, unix_insert, unix_checkpoint) = session(&cluster.socket_dsn("rt")).await?;
        // The same with the commit waiting for its WAL to be written, as our sessions
        // commit since they raise the clusters' `synchronous_commit = off` to `on`
        // (`pg_connect::DURABLE_COMMIT`; fsync is off here, so no disk flush).
        let (durable, durable_insert, durable_checkpoint) = session(&cluster.dsn("rt")).await?;
        durable
            .batch_execute(helios_repl::pg_connect::DURABLE_COMMIT)
            .await?;
        client
            .batch_execute("SELECT pg_replication_origin_create('rt'); SELECT pg_replication_origin_session_setup('rt')")
            .await?;
        let origin = client
            .prepare("SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, now())")
            .await?;
        // (shape, idle before each) -> microseconds per transaction.
        let cases = [
            ("pipelined", false),
            ("one simple query", false),
            ("pipelined", true),
            ("one simple query", true),
            ("pipelined, origin", false),
            ("pipelined, origin", true),
            ("pipelined, bare", false),
            ("pipelined, bare", true),
            ("pipelined, Unix socket", false),
            ("pipelined, Unix socket", true),
            ("pipelined, synchronous commit", false),
            ("pipelined, synchronous commit", true),
        ];
        let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
        let mut next_id = 0;
        // Blocks of BLOCK rounds per case, the cases in turn: back-to-back rounds stay
        // back to back, and every case sees the machine's noise of the whole run.
        for _ in 0..rounds.div_ceil(BLOCK) {
            for (case, &(shape, idle)) in cases.iter().enumerate() {
                for _ in 0..BLOCK {
                    let rows = Rows::new(next_id);
                    next_id += ROWS;
                    if idle {
                        tokio::time::sleep(IDLE).await;
                    }
                    let started = Instant::now();
                    match shape {
                        "pipelined" => {
                            let (job, scopes, lsns) = ("j", vec!["w0"], vec![rows.lsn.as_str()]);
                            let params: [&(dyn ToSql + Sync); 3] = [&job, &scopes, &lsns];
                            pipelined(&client, &insert, Some((&checkpoint, &params)), &rows)
                                .await?
                        }
                        "pipelined, origin" => {
                            let params: [&(dyn ToSql + Sync); 1] = [&rows.lsn];
                            pipelined(&client, &insert, Some((&origin, &params)), &rows).await?
                        }
                        "pipelined, bare" => pipelined(&client, &insert, None, &rows).await?,
                        "pipelined, Unix socket" | "pipelined, synchronous commit" => {
                            let (session, insert, checkpoint) = if shape.contains("Unix") {
                                (&unix, &unix_insert, &unix_checkpoint)
                            } else {
                                (&durable, &durable_insert, &durable_checkpoint)
                            };
                            let (job, scopes, lsns) = ("j", vec!["w0"], vec![rows.lsn.as_str()]);
                            let params: [&(dyn ToSql + Sync); 3] = [&job, &scopes, &lsns];
                            pipelined(session, insert, Some((checkpoint, &params)), &rows).await?
                        }
                        _ => client.batch_execute(&as_simple_query(&rows)).await?,
                    }
                    times[case].push(started.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        println!("| shape | before each | transactions | P50 µs | P99 µs |");
        println!("|---|---|---:|---:|---:|");
        for ((shape, idle), mut t) in cases.into_iter().zip(times) {
            t.sort_by(f64::total_cmp);
            println!(
                "| {shape} | {} | {} | {:.0} | {:.0} |",
                if idle {
                    "2 ms idle"
                } else {
                    "nothing (back to back)"
                },
                t.len(),
                percentile(&t, 0.5),
                percentile(&t, 0.99)
            );
        }
        anyhow::Ok(())
    })
}
