//! Bi-temporal history end to end: a workload of random inserts, updates (with valid
//! times moved into the past: retroactive corrections) and deletes over six tenants, five
//! of them replicated with `history = true` into a history table and a Parquet cold tier.
//! For a grid of (system LSN, valid time) the history table, the Parquet files (read back
//! by the library's reader) and the API all answer what a from-scratch recomputation over
//! the change log (the oracle) says; after a server restart the API answers the same from
//! the history table, and the restored versions keep following new changes. Deleted keys
//! come back with valid times before their delete's, which the delete's tombstone must end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use helios_repl::change::{parse_lsn, ColumnInfo, Identity, Lsn, TableInfo};
use helios_repl::control::history_query::{versions_from_cold_rows, visible_rows};
use helios_repl::embedded::pg_cluster::free_port;
use helios_repl::operators::version::SystemPoint;
use helios_repl::sinks::parquet::read_table;
use helios_repl::time_text::parse_pg_timestamp;
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::harness::{wait_for, Env};
use crate::serve_api::{http, Server, TOKEN};

pub(crate) const WAIT: Duration = Duration::from_secs(120);
pub(crate) const SETUP: &str = "
CREATE TABLE public.prices (tenant_id int NOT NULL, id int NOT NULL, price int NOT NULL,
                            effective_at timestamptz NOT NULL, PRIMARY KEY (tenant_id, id));
ALTER TABLE public.prices REPLICA IDENTITY FULL;
INSERT INTO public.prices SELECT t, i, 100, '2026-01-01 00:00:00+00' FROM generate_series(1, 6) t, generate_series(1, 5) i;
";
const TENANTS: i32 = 6;
const KEYS: i32 = 30;

/// A visible row: (tenant, id, price).
pub(crate) type Row = (i32, i32, i32);
/// The source's rows: (tenant, id) → (price, valid time µs).
pub(crate) type State = BTreeMap<(i32, i32), (i32, i64)>;

/// One change of the log: transaction index, key, new value (None: delete), valid time.
pub(crate) struct Change {
    txn: usize,
    key: (i32, i32),
    value: Option<i32>,
    valid: i64,
}

pub(crate) fn day(d: i64) -> (i64, String) {
    // Days after 2026-01-01 (µs since 2000-01-01, and the timestamptz text).
    let base = parse_pg_timestamp("2026-01-01 00:00:00+00").expect("date");
    let micros = base + d * 86_400_000_000;
    let text = helios_repl::time_text::format_timestamptz(micros);
    (micros, text)
}

/// The oracle: rows of tenants 1..=5 as of (after transaction `txn`, valid `v`).
pub(crate) fn oracle(log: &[Change], txn: usize, v: i64) -> Vec<Row> {
    let mut best: BTreeMap<(i32, i32), (i64, usize, Option<i32>)> = BTreeMap::new();
    for (pos, c) in log.iter().enumerate().filter(|(_, c)| c.txn <= txn) {
        if c.valid > v || c.key.0 > 5 {
            continue;
        }
        let e = best.entry(c.key).or_insert((i64::MIN, 0, None));
        if (c.valid, pos) >= (e.0, e.1) {
            *e = (c.valid, pos, c.value);
        }
    }
    best.into_iter()
        .filter_map(|((t, i), (_, _, v))| v.map(|p| (t, i, p)))
        .collect()
}

pub(crate) fn prices_table() -> TableInfo {
    let col = |name: &str, ty: &str| ColumnInfo {
        name: name.into(),
        type_oid: 0,
        type_modifier: -1,
        type_name: ty.into(),
        in_identity: true,
        missing_value: None,
        attnum: None,
    };
    TableInfo {
        oid: 0,
        schema: "public".into(),
        name: "prices".into(),
        columns: vec![
            col("tenant_id", "integer"),
            col("id", "integer"),
            col("price", "integer"),
            col("effective_at", "timestamp with time zone"),
        ],
        primary_key: vec![0, 1],
        identity: Identity::Full,
        type_ddl: vec![],
    }
}

fn parse_rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<i32> = l
                .split('|')
                .map(|x| x.trim().parse().expect("int"))
                .collect();
            (f[0], f[1], f[2])
        })
        .collect()
}

fn from_history_table(env: &Env, lsn: Lsn, valid: &str) -> Vec<Row> {
    let l = helios_repl::change::format_lsn(lsn);
    parse_rows(&env.on_target(&format!(
        "SELECT tenant_id, id, price FROM public.prices_history
         WHERE system_from_lsn <= '{l}' AND (system_to_lsn IS NULL OR system_to_lsn > '{l}')
           AND valid_from <= '{valid}' AND (valid_to IS NULL OR valid_to > '{valid}')
           AND NOT tombstone
         ORDER BY 1, 2"
    )))
}

pub(crate) fn from_cold_tier(root: &Path, lsn: Lsn, valid: i64) -> Vec<Row> {
    let table = prices_table();
    let mut out = Vec::new();
    for tenant in 1..=5 {
        let (_, rows) = match read_table(root, &tenant.to_string(), "public.prices") {
            Ok(r) => r,
            Err(e) => panic!("cold tier of tenant {tenant}: {e}"),
        };
        let versions = versions_from_cold_rows(&table, &rows);
        for row in visible_rows(&versions, SystemPoint::Lsn(lsn), valid) {
            let n = |i: usize| {
                row[i]
                    .as_text()
                    .expect("value")
                    .parse::<i32>()
                    .expect("int")
            };
            out.push((n(0), n(1), n(2)));
        }
    }
    out.sort();
    out
}

fn from_api(server: &Server, tenant: i32, lsn: Lsn, valid: &str) -> (String, Vec<Row>) {
    let path = format!(
        "/v1/tenants/{tenant}/tables/public.prices/rows?system_time={}&valid_time={}",
        helios_repl::change::format_lsn(lsn),
        valid.replace(' ', "T").replace("+00", "Z")
    );
    let (status, body) = http(&server.url, "GET", &path, Some(TOKEN));
    assert_eq!(status, 200, "{path}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    // The API sorts by the keys' text form; compare as numbers.
    let mut rows: Vec<Row> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |i: usize| r[i].as_str().expect("text").parse::<i32>().expect("int");
            (n(0), n(1), n(2))
        })
        .collect();
    rows.sort();
    (v["source"].as_str().unwrap_or_default().to_owned(), rows)
}

/// The rows [`SETUP`] inserts as the state and change log of transaction 0 (the
/// snapshot) of the oracle.
pub(crate) fn snapshot_log() -> (State, Vec<Change>) {
    let mut state = BTreeMap::new();
    let mut log = Vec::new();
    let start = day(0).0;
    for t in 1..=TENANTS {
        for i in 1..=5 {
            state.insert((t, i), (100, start));
            log.push(Change {
                txn: 0,
                key: (t, i),
                value: Some(100),
                valid: start,
            });
        }
    }
    (state, log)
}

/// The last LSN psql printed in `out`.
fn last_lsn_in(out: &str) -> Lsn {
    out.lines()
        .filter_map(|l| parse_lsn(l.trim()))
        .next_back()
        .unwrap_or_else(|| panic!("no LSN in {out}"))
}

/// Runs `txns` random transactions; appends to `log` and `points` (LSN after each).
pub(crate) fn workload(
    env: &Env,
    rng: &mut StdRng,
    state: &mut State,
    log: &mut Vec<Change>,
    points: &mut Vec<Lsn>,
    txns: usize,
) {
    for _ in 0..txns {
        let txn = points.len();
        let mut sql = String::from("BEGIN;\n");
        for _ in 0..170 {
            let key = (rng.gen_range(1..=TENANTS), rng.gen_range(1..=KEYS));
            let (valid, text) = day(rng.gen_range(0..90));
            let price = rng.gen_range(1..10_000);
            match state.get(&key).copied() {
                Some((_, old_valid)) if rng.gen_bool(0.2) => {
                    sql.push_str(&format!(
                        "DELETE FROM public.prices WHERE tenant_id = {} AND id = {};\n",
                        key.0, key.1
                    ));
                    state.remove(&key);
                    log.push(Change {
                        txn,
                        key,
                        value: None,
                        valid: old_valid,
                    });
                }
                Some(_) => {
                    sql.push_str(&format!(
                        "UPDATE public.prices SET price = {price}, effective_at = '{text}' WHERE tenant_id = {} AND id = {};\n",
                        key.0, key.1
                    ));
                    state.insert(key, (price, valid));
                    log.push(Change {
                        txn,
                        key,
                        value: Some(price),
                        valid,
                    });
                }
                None => {
                    sql.push_str(&format!(
                        "INSERT INTO public.prices VALUES ({}, {}, {price}, '{text}');\n",
                        key.0, key.1
                    ));
                    state.insert(key, (price, valid));
                    log.push(Change {
                        txn,
                        key,
                        value: Some(price),
                        valid,
                    });
                }
            }
        }
        sql.push_str("COMMIT;\nSELECT pg_current_wal_insert_lsn();");
        let out = env.on_source(&sql);
        points.push(last_lsn_in(&out));
    }
}

/// One transaction of `rows` inserts of new keys (ids above the workload's) over all
/// tenants, then updates of a tenth of them and deletes of another tenth, each after its
/// insert in the same transaction: large enough to reach the sinks in parts, with
/// versions opened in one part and closed in a later one. Appends to `log` and `points`.
pub(crate) fn large_transaction(
    env: &Env,
    state: &mut State,
    log: &mut Vec<Change>,
    points: &mut Vec<Lsn>,
    rows: i32,
) {
    let txn = points.len();
    let first = 1000 + state.keys().map(|k| k.1).max().unwrap_or(0);
    let key = |n: i32| (1 + n % TENANTS, first + n);
    let (valid, text) = day(3);
    let (later, later_text) = day(5);
    for n in 0..rows {
        state.insert(key(n), (n, valid));
        log.push(Change {
            txn,
            key: key(n),
            value: Some(n),
            valid,
        });
    }
    for n in (0..rows).filter(|n| n % 10 == 1) {
        state.insert(key(n), (n + 1, later));
        log.push(Change {
            txn,
            key: key(n),
            value: Some(n + 1),
            valid: later,
        });
    }
    for n in (0..rows).filter(|n| n % 10 == 2) {
        state.remove(&key(n));
        log.push(Change {
            txn,
            key: key(n),
            value: None,
            valid,
        });
    }
    let out = env.on_source(&format!(
        "BEGIN;
         INSERT INTO public.prices SELECT 1 + n % {TENANTS}, {first} + n, n, '{text}'
             FROM generate_series(0, {rows} - 1) n;
         UPDATE public.prices SET price = price + 1, effective_at = '{later_text}'
             WHERE id >= {first} AND (id - {first}) % 10 = 1;
         DELETE FROM public.prices WHERE id >= {first} AND (id - {first}) % 10 = 2;
         COMMIT;
         SELECT pg_current_wal_insert_lsn();"
    ));
    points.push(last_lsn_in(&out));
}

/// The job: `public.prices` of tenants 1..=5 with history, into the target and a Parquet
/// cold tier under `cold`, which compacts as soon as two small files are listed (so the
/// tests that read the tier read it while and after it is compacted). Its version books
/// keep 1 MiB of rows in memory: the large transaction's rows go to their spill file, and
/// the versions read back from it close and answer queries.
pub(crate) fn job_toml(env: &Env, cold: &Path) -> String {
    format!(
            "name = \"prices\"\n[source]\ndsn = \"{}\"\npublication = \"pub_prices\"\nslot = \"slot_prices\"\n\
             [tenants]\ninclude = [1, 2, 3, 4, 5]\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
             valid_time_column = \"effective_at\"\n[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n\
             [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\nbatch_max_rows = 5000\ncompact_min_files = 2\n\
             [history]\nrow_memory_mib = 1\n",
            env.source_dsn(),
            env.target_dsn(),
            cold.display()
        )
}

/// Clusters with [`SETUP`], a server on a free port, and the [`job_toml`] job submitted
/// to it with its cold tier under the returned directory.
pub(crate) fn start_prices_job() -> (Env, PathBuf, u16, Server) {
    start_prices_job_with(&[])
}

/// [`start_prices_job`] with the server given the environment variables `vars`.
pub(crate) fn start_prices_job_with(vars: &[(&str, &str)]) -> (Env, PathBuf, u16, Server) {
    let env = Env::start(SETUP);
    env.target.create_database("meta").expect("meta db");
    let cold = env.dir.path().join("cold");
    let job = env.dir.path().join("prices.toml");
    std::fs::write(&job, job_toml(&env, &cold)).expect("job file");
    let port = free_port().expect("port");
    let server = Server::spawn(&env, port, &[], vars);
    server.wait_healthy();
    let (ok, out) = server.cli(&["submit", job.to_str().expect("path")]);
    assert!(ok, "submit: {out}");
    (env, cold, port, server)
}

#[test]
fn history_table_cold_tier_and_api_agree_with_the_oracle() {
    let (env, cold, port, mut server) = start_prices_job();
    wait_for("the snapshot's versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.prices_history")
            .as_deref()
            == Some("25")
    });

    let (mut state, mut log) = snapshot_log();
    let snapshot_lsn =
        parse_lsn(env.on_source("SELECT pg_current_wal_insert_lsn()").trim()).expect("lsn");
    let mut points = vec![snapshot_lsn];
    let mut rng = StdRng::seed_from_u64(7);
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 60);
    assert!(log.len() >= 10_000, "{} changes", log.len());
    // Large enough to reach the sinks in parts, with versions it opens in one part and
    // closes in a later one.
    large_transaction(&env, &mut state, &mut log, &mut points, 60_000);
    let large = points.len() - 1;
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 3);
    env.wait_converged(
        "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5",
        WAIT,
    );
    wait_for("the cold tier to cover the last transaction", WAIT, || {
        (1..=5).all(|t| {
            read_table(&cold, &t.to_string(), "public.prices")
                .map(|(_, rows)| {
                    rows.iter()
                        .any(|r| r.system_from_lsn >= points[points.len() - 2])
                })
                .unwrap_or(false)
        })
    });

    // The large transaction reached both sinks in parts; with history versions, each
    // applied it from its spill file.
    let log_text = server.output();
    for sink in ["postgres", "parquet"] {
        assert!(
            log_text.lines().any(|l| l.contains(sink)
                && (l.contains("large transaction with history versions spilled")
                    || l.contains("large transaction applied from its spill file"))),
            "the {sink} sink applied the large transaction from its spill file:\n{log_text}"
        );
    }
    assert!(
        log_text.contains("cold tier compacted"),
        "the cold tier was compacted while the oracle's history was written:\n{log_text}"
    );
    // ... and /metrics counts the files it merged away and wrote, the versions the books
    // hold, and the rows they moved to their spill file.
    wait_for("compaction and books figures in /metrics", WAIT, || {
        let text = http(&server.url, "GET", "/metrics", Some(TOKEN)).1;
        let positive = |series: &str| {
            text.lines().any(|l| {
                l.strip_prefix(series)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            })
        };
        ["merged", "written"].iter().all(|side| {
            positive(&format!(
                "helios_cold_compaction_files_total{{job=\"prices\",side=\"{side}\"}} "
            ))
        }) && positive("helios_history_versions_held{job=\"prices\"} ")
            && positive("helios_history_row_bytes{job=\"prices\",place=\"disk\"} ")
            && positive("helios_history_row_walks_total{job=\"prices\"} ")
            // The backlog's gauges exist (0 once the job is caught up).
            && ["rows", "bytes"].iter().all(|unit| {
                text.contains(&format!("helios_sink_backlog_{unit}{{job=\"prices\"}} "))
            })
    });
    let sample: Vec<usize> = (0..points.len())
        .step_by(7)
        .chain([large, points.len() - 1])
        .collect();
    let valids: Vec<(i64, String)> = [-1, 0, 4, 5, 17, 30, 44, 61, 75, 89, 120]
        .iter()
        .map(|&d| day(d))
        .collect();
    let mut checked = 0;
    for &k in &sample {
        for (v, text) in &valids {
            let expected = oracle(&log, k, *v);
            let lsn = points[k];
            assert_eq!(
                from_history_table(&env, lsn, text),
                expected,
                "history table at txn {k}, valid {text}"
            );
            assert_eq!(
                from_cold_tier(&cold, lsn, *v),
                expected,
                "cold tier at txn {k}, valid {text}"
            );
            let tenant = 1 + (checked % 5);
            let (source, rows) = from_api(&server, tenant, lsn, text);
            let mine: Vec<Row> = expected.iter().copied().filter(|r| r.0 == tenant).collect();
            assert_eq!(
                rows, mine,
                "API ({source}) tenant {tenant} at txn {k}, valid {text}"
            );
            checked += 1;
        }
    }
    // The latest point is answered from the in-memory versions.
    let last_point = points.len() - 1;
    let (source, rows) = from_api(&server, 4, points[last_point], &valids[5].1);
    assert_eq!(source, "memory");
    let mine: Vec<Row> = oracle(&log, last_point, valids[5].0)
        .into_iter()
        .filter(|r| r.0 == 4)
        .collect();
    assert_eq!(rows, mine);
    // The CLI asks the same.
    let (ok, out) = server.cli(&[
        "query",
        "--tenant",
        "2",
        "--table",
        "public.prices",
        "--as-of-system",
        &helios_repl::change::format_lsn(points[30]),
        "--as-of-valid",
        "2026-02-01T00:00:00Z",
        "--json",
    ]);
    assert!(ok, "query: {out}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    let expected: Vec<Row> = oracle(&log, 30, day(31).0)
        .into_iter()
        .filter(|r| r.0 == 2)
        .collect();
    assert_eq!(
        answer["rows"].as_array().map(Vec::len),
        Some(expected.len()),
        "{out}"
    );
    // "What did tenant 2's row N look like on 1 February, as we knew it after txn 30?"
    let id = expected.last().expect("tenant 2 has rows").1.to_string();
    let (ok, out) = server.cli(&[
        "query",
        "--tenant",
        "2",
        "--table",
        "public.prices",
        "--key",
        &id,
        "--as-of-system",
        &helios_repl::change::format_lsn(points[30]),
        "--as-of-valid",
        "2026-02-01T00:00:00Z",
        "--json",
    ]);
    assert!(ok, "query --key: {out}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("json");
    let one: Vec<serde_json::Value> = expected
        .iter()
        .filter(|r| r.1.to_string() == id)
        .map(|r| serde_json::json!([r.0.to_string(), r.1.to_string(), r.2.to_string()]))
        .collect();
    let got: Vec<serde_json::Value> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| serde_json::json!([r[0], r[1], r[2]]))
        .collect();
    assert_eq!(one.len(), 1);
    assert_eq!(got, one, "{out}");

    // Restart: the books restart at the resume point, older points come from the table.
    server.kill();
    let server = Server::start(&env, port);
    let (source, rows) = from_api(&server, 3, points[10], &valids[4].1);
    assert_eq!(source, "history_table");
    let mine: Vec<Row> = oracle(&log, 10, valids[4].0)
        .into_iter()
        .filter(|r| r.0 == 3)
        .collect();
    assert_eq!(rows, mine);
    // Restored versions keep following: more changes, then the whole grid again at the end.
    workload(&env, &mut rng, &mut state, &mut log, &mut points, 5);
    env.wait_converged(
        "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5",
        WAIT,
    );
    let last = points.len() - 1;
    wait_for("history to catch up", WAIT, || {
        from_history_table(&env, points[last], &valids[9].1) == oracle(&log, last, valids[9].0)
    });
    for (v, text) in &valids {
        assert_eq!(
            from_history_table(&env, points[last], text),
            oracle(&log, last, *v),
            "after restart, valid {text}"
        );
    }

    // Bad input: future, before the first version, malformed, unknown tenant and table.
    for (path, status) in [
        (
            "/v1/tenants/3/tables/public.prices/rows?system_time=2999-01-01T00:00:00Z",
            422,
        ),
        (
            "/v1/tenants/3/tables/public.prices/rows?system_time=FFFFFFFF/0",
            422,
        ),
        (
            "/v1/tenants/3/tables/public.prices/rows?system_time=0/1",
            404,
        ),
        (
            "/v1/tenants/3/tables/public.prices/rows?system_time=2000-01-01T00:00:00Z",
            404,
        ),
        (
            "/v1/tenants/3/tables/public.prices/rows?valid_time=tuesday",
            400,
        ),
        ("/v1/tenants/3/tables/public.prices/rows?key=1&key=2", 422),
        ("/v1/tenants/6/tables/public.prices/rows", 404),
        ("/v1/tenants/99/tables/public.prices/rows", 404),
        ("/v1/tenants/3/tables/public.nope/rows", 404),
    ] {
        let (got, body) = http(&server.url, "GET", path, Some(TOKEN));
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains("\"error\""), "{path}: {body}");
        assert!(
            !body.contains("\"6\"") || status != 404 || !path.contains("/6/"),
            "tenant 6's data leaked: {body}"
        );
    }
}

/// The books of a job with 1 MiB of row memory move most of 50,000 rows to their spill
/// file. Started with every read of a moved row failing (`HELIOS_FAULT_AT`), the job
/// fails on the update that closes them, with the reason, and applies none of it; a
/// server started without the fault resumes it, rebuilds the books from the history
/// table and versions the update as if nothing had happened.
#[test]
fn a_row_that_does_not_read_back_fails_the_job_and_a_restart_recovers() {
    use helios_repl::operators::row_spill::{FAULT_ENV, READ_FAULT};
    let env = Env::start(SETUP);
    env.target.create_database("meta").expect("meta db");
    let job = env.dir.path().join("spill.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"spill\"\n[source]\ndsn = \"{}\"\npublication = \"pub_spill\"\nslot = \"slot_spill\"\n\
             [tenants]\ninclude = [1]\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
             [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n[history]\nrow_memory_mib = 1\n",
            env.source_dsn(),
            env.target_dsn()
        ),
    )
    .expect("job file");
    let port = free_port().expect("port");
    let mut server = Server::spawn(&env, port, &[], &[(FAULT_ENV, READ_FAULT)]);
    server.wait_healthy();
    let (ok, out) = server.cli(&["submit", job.to_str().expect("path")]);
    assert!(ok, "submit: {out}");
    let count = |sql: &str| env.try_on_target(sql).unwrap_or_default();
    wait_for("the snapshot's 5 versions", WAIT, || {
        count("SELECT count(*) FROM public.prices_history") == "5"
    });
    env.on_source(
        "INSERT INTO public.prices SELECT 1, i, i, '2026-01-01 00:00:00+00' \
         FROM generate_series(100, 50099) i",
    );
    wait_for("50,005 rows of tenant 1 on the target", WAIT, || {
        count("SELECT count(*) FROM public.prices WHERE tenant_id = 1") == "50005"
    });
    env.on_source("UPDATE public.prices SET price = -price WHERE tenant_id = 1");
    wait_for("the job to fail", WAIT, || {
        server
            .cli(&["jobs", "show", "spill", "--json"])
            .1
            .contains("\"failed\"")
    });
    let (_, shown) = server.cli(&["jobs", "show", "spill", "--json"]);
    assert!(
        shown.contains("history spill file") && shown.contains("stopped at LSN"),
        "the reason says what failed: {shown}"
    );
    assert_eq!(
        count("SELECT count(*) FROM public.prices WHERE price < 0"),
        "0",
        "nothing of the update was applied"
    );

    // Without the fault, the job resumes before the update and versions it.
    server.kill();
    let _server = Server::start(&env, port);
    wait_for("the update on the target", WAIT, || {
        count("SELECT count(*) FROM public.prices WHERE tenant_id = 1 AND price < 0") == "50005"
    });
    wait_for("the update's versions", WAIT, || {
        count(
            "SELECT count(*) FILTER (WHERE system_to_lsn IS NOT NULL), \
                    count(*) FILTER (WHERE system_to_lsn IS NULL AND price < 0) \
             FROM public.prices_history WHERE tenant_id = 1",
        ) == "50005|50005"
    });
    assert_eq!(
        count("SELECT count(*) FROM public.prices_history WHERE tenant_id <> 1"),
        "0"
    );
}

/// A snapshot's versions against a real history table whose source columns include types
/// without an equality operator (`json`, `point`) and NULLs: a row whose values are the
/// same keeps its version, a changed one gets a new version, a row gone is closed, and a
/// snapshot of nothing changed records nothing.
#[test]
fn a_snapshot_versions_rows_by_their_values_even_without_equality_operators() {
    use helios_repl::cdc::catalog;
    use helios_repl::control::job_spec::{TenantFilter, TenantKey};
    use helios_repl::operators::version::SysTime;
    use helios_repl::sinks::pg_apply::history::{record_snapshot_versions, SnapshotVersions};

    let env = Env::start("SELECT 1");
    env.on_target(
        "CREATE TABLE public.docs (tenant_id int NOT NULL, id int NOT NULL, body json,
                                   place point, note text, PRIMARY KEY (tenant_id, id));
         INSERT INTO public.docs VALUES (1, 1, '{\"a\": 1}', '(1,2)', NULL),
                                        (1, 2, '[1, 2]', NULL, 'x'), (2, 1, 'null', '(0,0)', 'y')",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let record = |lsn: Lsn| {
        runtime.block_on(async {
            let client = catalog::connect(&env.target_dsn()).await.expect("connect");
            let info = catalog::table_info(&client, "public", "docs")
                .await
                .expect("table info");
            let at = SysTime {
                lsn,
                micros: lsn as i64,
            };
            let tenant_id = TenantKey::Column("tenant_id".into());
            record_snapshot_versions(&client, &info, &tenant_id, &TenantFilter::All, None, at)
                .await
                .expect("record")
        })
    };
    let done = |closed, opened| SnapshotVersions { closed, opened };
    assert_eq!(record(0x100), done(0, 3));
    assert_eq!(record(0x200), done(0, 0), "nothing changed");
    env.on_target("UPDATE public.docs SET body = '{\"a\": 2}' WHERE tenant_id = 1 AND id = 1");
    env.on_target("UPDATE public.docs SET note = NULL WHERE tenant_id = 2");
    env.on_target("DELETE FROM public.docs WHERE tenant_id = 1 AND id = 2");
    assert_eq!(record(0x300), done(3, 2));
    assert_eq!(
        env.on_target(
            "SELECT tenant_id, id, body::text, (system_from_lsn - '0/0')::bigint,
                    (system_to_lsn - '0/0')::bigint
             FROM public.docs_history ORDER BY tenant_id, id, system_from_lsn"
        )
        .trim(),
        "1|1|{\"a\": 1}|256|768\n1|1|{\"a\": 2}|768|\n1|2|[1, 2]|256|768\n2|1|null|256|768\n2|1|null|768|"
    );
}
