//! The Parquet cold tier under crashes, on-demand exports and retention, against real
//! PostgreSQL and the real server:
//! - the continuous sink, with the server aborted at each step of the writer's commit
//!   protocol (after the temp file, after the manifest, in the middle of the renames) and
//!   SIGKILLed while a workload streams; after each restart no unlisted or partial file
//!   is visible, the manifest matches the files, and in the end every tenant's cold tier
//!   holds exactly the history table's versions, each once;
//! - an on-demand export aborted after its manifest commit, resumed by the restarted
//!   server to the end and run again (CLI, with progress), holding exactly the tenant's
//!   versions;
//! - pyarrow reads both directories as hive-partitioned datasets and finds the manifests'
//!   files, rows and types;
//! - a retention policy of 0 days: closed versions leave the history table, and as-of
//!   queries for old points are then answered from the cold tier, unchanged;
//! - a snapshot whose cold write a crash cut short, after its versions were recorded in
//!   the history table: the next snapshot brings the cold tier up to the history table;
//! - a tenant added to the job: its backfilled versions reach the cold tier.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use helios_repl::change::{format_lsn, parse_lsn, Cell, Lsn};
use helios_repl::control::history_query::versions_from_cold_rows;
use helios_repl::sinks::parquet::layout::{table_dir, MANIFEST_FILE, TEMP_DIR};
use helios_repl::sinks::parquet::manifest::Manifest;
use helios_repl::sinks::parquet::{read_table, ColdRow, CRASH_ENV};
use rand::{rngs::StdRng, SeedableRng};

use crate::harness::{wait_for, wait_until, Env, Replicator};
use crate::history::{
    prices_table, start_prices_job, start_prices_job_with, workload, Change, WAIT,
};
use crate::serve_api::{http, http_with_body, Server, TOKEN};

const TABLE: &str = "public.prices";

/// Reads a cold-tier root with pyarrow as a hive-partitioned dataset (pyarrow skips the
/// `_tmp` directory and `_manifest.json` by their leading underscore) and prints what it
/// found as JSON.
const PYARROW_READ: &str = r#"
import json, sys
import pyarrow.compute as pc
import pyarrow.dataset as ds
d = ds.dataset(sys.argv[1], format="parquet", partitioning="hive")
t = d.to_table()
print(json.dumps({
    "files": len(d.files),
    "rows": t.num_rows,
    "tombstones": pc.sum(t["tombstone"].cast("int64")).as_py() or 0,
    "schema": {f.name: str(f.type) for f in t.schema},
    "tenants": sorted({str(v) for v in t["tenant"].to_pylist()}),
}))
"#;

/// What pyarrow reads from `root`, installed by `scripts/install-deps.sh`; `None` when a
/// file it listed was gone when it opened it (a compaction removed its inputs meanwhile).
fn read_with_pyarrow(root: &Path) -> Option<serde_json::Value> {
    let python = std::env::var("HELIOS_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", PYARROW_READ])
        .arg(root)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e} (scripts/install-deps.sh installs pyarrow)"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("FileNotFoundError") {
        return None;
    }
    assert!(
        out.status.success(),
        "pyarrow could not read {}: {stderr} (scripts/install-deps.sh installs pyarrow; \
         scripts/test.sh sets HELIOS_PYTHON)",
        root.display(),
    );
    Some(serde_json::from_slice(&out.stdout).expect("pyarrow's json"))
}

/// What the manifests of `tenants` list: files, rows, tombstones.
fn manifest_counts(root: &Path, tenants: &[i32]) -> (usize, u64, usize) {
    let (mut files, mut rows, mut tombstones) = (0, 0, 0);
    for t in tenants {
        let manifest = Manifest::load(&table_dir(root, &t.to_string(), TABLE))
            .expect("manifest")
            .expect("a manifest");
        files += manifest.files.len();
        rows += manifest.files.iter().map(|f| f.rows).sum::<u64>();
        let (_, cold) = read_table(root, &t.to_string(), TABLE).expect("read");
        tombstones += cold.iter().filter(|r| r.tombstone).count();
    }
    (files, rows, tombstones)
}

/// pyarrow sees exactly the files and rows the manifests list, with the stored types.
/// A running server may compact a directory meanwhile (a reader walking the directories
/// can see a merged file beside its inputs until they are removed), so the two are read
/// again (for up to 30 s) while they disagree and a manifest changed around the read, or
/// while pyarrow finds a file it listed gone (removed by a compaction in between).
fn assert_pyarrow_agrees(root: &Path, tenants: &[i32]) {
    let agree = |seen: &serde_json::Value, (files, rows, tombstones): (usize, u64, usize)| {
        seen["files"] == files && seen["rows"] == rows && seen["tombstones"] == tombstones
    };
    let started = std::time::Instant::now();
    let (seen, listed) = loop {
        let before = manifest_counts(root, tenants);
        let read = read_with_pyarrow(root);
        let listed = manifest_counts(root, tenants);
        let settled = before == listed;
        let timed_out = started.elapsed() > Duration::from_secs(30);
        match read {
            Some(seen) if (settled && agree(&seen, listed)) || timed_out => break (seen, listed),
            None if timed_out => panic!("pyarrow kept missing files of {}", root.display()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (files, rows, tombstones) = listed;
    assert_eq!(seen["files"], files, "{seen}");
    assert_eq!(seen["rows"], rows, "{seen}");
    assert_eq!(seen["tombstones"], tombstones, "{seen}");
    let expected_tenants: Vec<String> = tenants.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        seen["tenants"],
        serde_json::json!(expected_tenants),
        "{seen}"
    );
    for (column, ty) in [
        ("tenant_id", "int32"),
        ("id", "int32"),
        ("price", "int32"),
        ("effective_at", "string"),
        ("event", "string"),
        ("op", "string"),
        ("valid_from", "timestamp[us, tz=UTC]"),
        ("valid_to", "timestamp[us, tz=UTC]"),
        ("system_from", "timestamp[us, tz=UTC]"),
        ("system_to", "timestamp[us, tz=UTC]"),
        ("system_from_lsn", "uint64"),
        ("system_to_lsn", "uint64"),
        ("tombstone", "bool"),
    ] {
        assert_eq!(seen["schema"][column], ty, "{column} in {seen}");
    }
}

/// One version as both stores can tell it: (tenant, id, price), valid interval, system
/// LSN interval, tombstone.
pub(crate) type VersionFacts = (
    (i32, i32, Option<i32>),
    i64,
    Option<i64>,
    Lsn,
    Option<Lsn>,
    bool,
);

/// A cold-tier event of one version: key cells, valid start, system start, `open`/`close`.
type EventId<'a> = (Vec<Option<String>>, i64, Lsn, &'a str);

/// Every `*.parquet` file a reader walking the `date=` directories would see is listed in
/// the manifest with its size; nothing else is there.
fn assert_only_listed_files_visible(root: &Path, tenant: &str) {
    let dir = table_dir(root, tenant, TABLE);
    let listed: BTreeMap<String, u64> = match Manifest::load(&dir) {
        Ok(Some(m)) => m.files.iter().map(|f| (f.path.clone(), f.bytes)).collect(),
        Ok(None) => BTreeMap::new(),
        Err(e) => panic!("manifest of tenant {tenant}: {e}"),
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == TEMP_DIR || name.starts_with(MANIFEST_FILE) {
            continue;
        }
        assert!(
            name.starts_with("date="),
            "unexpected entry {name} in {}",
            dir.display()
        );
        for file in std::fs::read_dir(entry.path()).expect("date dir").flatten() {
            let relative = format!("{name}/{}", file.file_name().to_string_lossy());
            let bytes = file.metadata().expect("metadata").len();
            assert_eq!(
                listed.get(&relative),
                Some(&bytes),
                "{relative} of tenant {tenant} is visible but not listed with that size"
            );
        }
    }
}

/// The cold tier's versions of `tenant`, checking that each version was opened and
/// closed at most once.
pub(crate) fn cold_versions(root: &Path, tenant: i32) -> BTreeSet<VersionFacts> {
    let (_, rows) = read_table(root, &tenant.to_string(), TABLE)
        .unwrap_or_else(|e| panic!("cold tier of tenant {tenant}: {e}"));
    let mut events: BTreeMap<EventId, usize> = BTreeMap::new();
    for r in &rows {
        let key = r.values[..2]
            .iter()
            .map(|v| v.as_deref().map(str::to_owned))
            .collect();
        *events
            .entry((key, r.valid_from, r.system_from_lsn, r.event.as_str()))
            .or_default() += 1;
    }
    if let Some((event, n)) = events.iter().find(|(_, n)| **n > 1) {
        panic!("tenant {tenant}: {event:?} written {n} times");
    }
    facts_of(&rows)
}

fn facts_of(rows: &[ColdRow]) -> BTreeSet<VersionFacts> {
    let int = |c: &Cell| c.as_text().map(|t| t.parse::<i32>().expect("int"));
    versions_from_cold_rows(&prices_table(), rows)
        .into_iter()
        .map(|v| {
            let row = (
                int(&v.value[0]).expect("tenant"),
                int(&v.value[1]).expect("id"),
                int(&v.value[2]),
            );
            (
                row,
                v.valid_from,
                v.valid_to,
                v.system_from.lsn,
                v.system_to.map(|t| t.lsn),
                v.tombstone,
            )
        })
        .collect()
}

/// The history table's versions of `tenant`.
/// For each tenant whose cold tier and history table differ: the versions only one of
/// them holds (the first ten of each), for a test that timed out waiting for them to agree.
fn version_differences(env: &Env, cold: &Path) -> String {
    let mut report = String::new();
    for t in 1..=5 {
        let in_cold = match read_table(cold, &t.to_string(), TABLE) {
            Ok(_) => cold_versions(cold, t),
            Err(e) => {
                report += &format!("tenant {t}: cold tier unreadable: {e}\n");
                continue;
            }
        };
        let in_table = table_versions(env, t);
        if in_cold == in_table {
            continue;
        }
        let only = |a: &BTreeSet<VersionFacts>, b: &BTreeSet<VersionFacts>| {
            let d: Vec<_> = a.difference(b).collect();
            format!("{} {:?}", d.len(), &d[..d.len().min(10)])
        };
        report += &format!(
            "tenant {t}: {} in the cold tier, {} in the table; only in the cold tier: {}; only in the table: {}\n",
            in_cold.len(),
            in_table.len(),
            only(&in_cold, &in_table),
            only(&in_table, &in_cold),
        );
    }
    report
}

/// Every server log the test's directory holds, oldest first: what each run of the
/// server (the crashed ones too) did to the cold tier.
fn server_logs(dir: &Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs.iter()
        .map(|(_, path)| {
            format!(
                "---- {} ----\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
        .collect()
}

fn table_versions(env: &Env, tenant: i32) -> BTreeSet<VersionFacts> {
    let micros =
        |c: &str| format!("((extract(epoch FROM {c}) * 1000000)::bigint - 946684800000000)");
    let sql = format!(
        "SELECT tenant_id, id, price, {}, {}, (system_from_lsn - '0/0'::pg_lsn)::bigint,
                (system_to_lsn - '0/0'::pg_lsn)::bigint, tombstone
         FROM public.prices_history WHERE tenant_id = {tenant}",
        micros("valid_from"),
        micros("valid_to")
    );
    env.on_target(&sql)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let opt = |s: &str| (!s.is_empty()).then(|| s.parse::<i64>().expect("number"));
            (
                (
                    f[0].parse().expect("tenant"),
                    f[1].parse().expect("id"),
                    (!f[2].is_empty()).then(|| f[2].parse().expect("price")),
                ),
                f[3].parse().expect("valid_from"),
                opt(f[4]),
                f[5].parse::<i64>().expect("lsn") as Lsn,
                opt(f[6]).map(|l| l as Lsn),
                f[7] == "t",
            )
        })
        .collect()
}

fn run_workload(
    env: &Env,
    rng: &mut StdRng,
    state: &mut BTreeMap<(i32, i32), (i32, i64)>,
    txns: usize,
) {
    let mut log: Vec<Change> = Vec::new();
    let mut points = Vec::new();
    workload(env, rng, state, &mut log, &mut points, txns);
}

fn source_lsn(env: &Env) -> Lsn {
    parse_lsn(env.on_source("SELECT pg_current_wal_insert_lsn()").trim()).expect("lsn")
}

#[test]
fn cold_tier_survives_crashes_exports_resume_and_retention_moves_history() {
    let (env, cold, port, mut server) = start_prices_job();
    wait_for("the snapshot in the cold tier", WAIT, || {
        (1..=5).all(|t| read_table(&cold, &t.to_string(), TABLE).is_ok_and(|(_, r)| r.len() == 5))
    });
    server.kill();

    let mut rng = StdRng::seed_from_u64(11);
    let mut state: BTreeMap<(i32, i32), (i32, i64)> = BTreeMap::new();
    for t in 1..=6 {
        for i in 1..=5 {
            state.insert((t, i), (100, 0));
        }
    }
    // The server aborts at each step of a cold-tier write in turn.
    for point in [
        "parquet-after-temp",
        "parquet-after-manifest",
        "parquet-mid-rename",
    ] {
        let mut crashing = Server::spawn(&env, port, &[], &[(CRASH_ENV, point)]);
        run_workload(&env, &mut rng, &mut state, 2);
        let status = crashing.wait_exit(WAIT);
        assert!(!status.success(), "{point}: exited with {status}");
        assert!(
            crashing.output().contains("aborting at crash point"),
            "{point}: {}",
            crashing.output()
        );
        for t in 1..=5 {
            assert_only_listed_files_visible(&cold, &t.to_string());
        }
    }
    // SIGKILL while a workload streams in.
    for delay_ms in [300u64, 900] {
        let mut server = Server::start(&env, port);
        run_workload(&env, &mut rng, &mut state, 3);
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill();
        for t in 1..=5 {
            assert_only_listed_files_visible(&cold, &t.to_string());
        }
    }
    let mut server = Server::spawn(&env, port, &["--retention-every-secs", "1"], &[]);
    server.wait_healthy();
    run_workload(&env, &mut rng, &mut state, 2);
    env.wait_converged(
        "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5",
        WAIT,
    );
    wait_cold_tier_matches_table(&env, &cold);
    for t in 1..=5 {
        assert_only_listed_files_visible(&cold, &t.to_string());
        let versions = table_versions(&env, t);
        assert!(
            versions.len() > 100,
            "tenant {t}: {} versions",
            versions.len()
        );
        assert!(versions.iter().any(|v| v.5), "tenant {t} has tombstones");
    }

    // An on-demand export, aborted after its manifest commit, then run again to the end.
    let export = env.dir.path().join("export");
    let body = format!(
        r#"{{"tenant": "2", "table": "{TABLE}", "output": "{}"}}"#,
        export.display()
    );
    server.kill();
    let mut crashing = Server::spawn(&env, port, &[], &[(CRASH_ENV, "parquet-after-manifest")]);
    crashing.wait_healthy();
    let (status, answer) = http_with_body(
        &crashing.url,
        "POST",
        "/v1/exports",
        Some(TOKEN),
        "application/json",
        body.as_bytes(),
    );
    assert!(
        status == 202 || status == 200 || status == 0,
        "{status}: {answer}"
    );
    assert!(!crashing.wait_exit(WAIT).success());
    assert_only_listed_files_visible(&export, "2");
    // The restarted server resumes the export it was running.
    let id = env
        .target
        .psql("meta", "SELECT id FROM helios_meta.exports")
        .expect("exports table");
    let id = id.trim().to_owned();
    assert!(id.starts_with("exp-"), "{id}");
    let server = Server::spawn(&env, port, &["--retention-every-secs", "1"], &[]);
    server.wait_healthy();
    wait_for("the export to be resumed to its end", WAIT, || {
        let (status, body) = http(
            &server.url,
            "GET",
            &format!("/v1/exports/{id}"),
            Some(TOKEN),
        );
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_ne!(v["state"], "failed", "{body}");
        v["state"] == "done"
    });
    assert_eq!(
        cold_versions(&export, 2),
        table_versions(&env, 2),
        "resumed export of tenant 2"
    );
    // Its progress counts every version of the tenant to write.
    let (_, body) = http(
        &server.url,
        "GET",
        &format!("/v1/exports/{id}"),
        Some(TOKEN),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["rows_total"], table_versions(&env, 2).len(), "{body}");
    // Running the same export again (CLI, with progress) adds nothing and ends done.
    let (ok, out) = server.cli(&[
        "export",
        "--tenant",
        "2",
        "--table",
        TABLE,
        "--output",
        export.to_str().expect("path"),
    ]);
    assert!(ok, "export: {out}");
    assert!(out.contains("Done"), "{out}");
    assert_only_listed_files_visible(&export, "2");
    assert_eq!(
        cold_versions(&export, 2),
        table_versions(&env, 2),
        "export of tenant 2"
    );
    // Another tool reads both: pyarrow, as a hive-partitioned dataset.
    assert_pyarrow_agrees(&cold, &[1, 2, 3, 4, 5]);
    assert_pyarrow_agrees(&export, &[2]);

    // Retention: tenant 3's closed versions leave the history table, and old points are
    // answered from the cold tier with the same rows.
    let early = format_lsn(source_lsn(&env) - 1);
    let ask = |server: &Server, at: &str| {
        let path = format!(
            "/v1/tenants/3/tables/{TABLE}/rows?system_time={at}&valid_time=2026-02-15T00:00:00Z"
        );
        let (status, body) = http(&server.url, "GET", &path, Some(TOKEN));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).expect("json")
    };
    let first_point = {
        let first = env
            .on_target("SELECT min(system_to_lsn) FROM public.prices_history WHERE tenant_id = 3");
        first.trim().to_owned()
    };
    let before = ask(&server, &first_point);
    let before_now = ask(&server, &early);
    let (status, answer) = http_with_body(
        &server.url,
        "PUT",
        "/v1/retention-policies",
        Some(TOKEN),
        "application/json",
        format!(r#"{{"tenant": "3", "table": "{TABLE}", "days": 0}}"#).as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    wait_for("retention to move tenant 3's closed versions", WAIT, || {
        env.on_target(
            "SELECT count(*) FROM public.prices_history WHERE tenant_id = 3 AND system_to IS NOT NULL",
        )
        .trim()
            == "0"
    });
    assert_ne!(
        env.on_target("SELECT count(*) FROM public.prices_history WHERE tenant_id = 2 AND system_to IS NOT NULL").trim(),
        "0",
        "other tenants keep their history"
    );
    let after = ask(&server, &first_point);
    assert_eq!(after["rows"], before["rows"], "{after}");
    assert_eq!(after["source"], "cold_tier", "{after}");
    assert_eq!(ask(&server, &early)["rows"], before_now["rows"]);
}

/// Waits until every tenant's cold tier holds exactly the history table's versions;
/// panics with the differences and the servers' logs if it does not within [`WAIT`].
fn wait_cold_tier_matches_table(env: &Env, cold: &Path) {
    let complete = wait_until(WAIT, || {
        (1..=5).all(|t| {
            read_table(cold, &t.to_string(), TABLE).is_ok()
                && cold_versions(cold, t) == table_versions(env, t)
        })
    });
    assert!(
        complete,
        "timed out after {WAIT:?} waiting for the cold tier to hold every version:\n{}\nserver logs:\n{}",
        version_differences(env, cold),
        server_logs(env.dir.path())
    );
}

/// The first snapshot records its versions in the history table and crashes before its
/// cold write is published, and so does the second (after one tenant's directory
/// committed); a row changes before each; the restarted job takes the snapshot a third
/// time. The cold tier then holds all the history table does (before, the third
/// snapshot wrote only the versions it opened and closed, so the tenants the second
/// left unpublished never got the first snapshot's versions), and each snapshot
/// versioned only the rows that changed.
#[test]
fn snapshots_whose_cold_writes_were_cut_short_are_completed_by_the_next() {
    let (env, cold, port, mut crashing) =
        start_prices_job_with(&[(CRASH_ENV, "parquet-after-temp")]);
    let cut_short = |crashing: &mut Server, versions: usize| {
        let status = crashing.wait_exit(WAIT);
        assert!(!status.success(), "exited with {status}");
        let output = crashing.output();
        assert!(output.contains("aborting at crash point"), "{output}");
        assert!(!output.contains("initial snapshot loaded"), "{output}");
        assert_eq!(
            env.on_target("SELECT count(*) FROM public.prices_history WHERE tenant_id <= 5")
                .trim(),
            versions.to_string(),
            "the snapshot's versions are in the history table"
        );
        for t in 1..=5 {
            assert_only_listed_files_visible(&cold, &t.to_string());
        }
    };
    cut_short(&mut crashing, 25);
    env.on_source("UPDATE public.prices SET price = 101 WHERE tenant_id = 1 AND id = 1");
    let mut crashing = Server::spawn(&env, port, &[], &[(CRASH_ENV, "parquet-after-manifest")]);
    // The changed row's new version; the others kept theirs.
    cut_short(&mut crashing, 26);
    env.on_source("UPDATE public.prices SET price = 102 WHERE tenant_id = 2 AND id = 2");

    let server = Server::start(&env, port);
    env.wait_converged(
        "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5",
        WAIT,
    );
    wait_cold_tier_matches_table(&env, &cold);
    // Each snapshot versions only what changed: one row of tenant 1 and one of tenant 2.
    for t in 1..=5 {
        let versions = table_versions(&env, t);
        let closed: Vec<_> = versions
            .iter()
            .filter(|v| v.4.is_some())
            .map(|v| v.0)
            .collect();
        let (changed, rows) = match t {
            1 => (vec![(1, 1, Some(100))], 6),
            2 => (vec![(2, 2, Some(100))], 6),
            _ => (vec![], 5),
        };
        assert_eq!(
            (closed, versions.len()),
            (changed, rows),
            "tenant {t}: {versions:?}"
        );
    }
    drop(server);
}

/// A job whose slot was dropped while it was stopped takes a new snapshot, which versions
/// only what changed in the gap: a row gone has its version closed, a changed row a new
/// version, a deleted key found again has its tombstone closed, and every other row
/// keeps the version it had (before, every row got a new one). The cold tier gets
/// exactly the same versions.
#[test]
fn a_new_snapshot_versions_only_what_changed_while_the_slot_was_gone() {
    let (env, cold, port, mut server) = start_prices_job();
    let all_versions =
        || -> BTreeSet<VersionFacts> { (1..=5).flat_map(|t| table_versions(&env, t)).collect() };
    wait_for("the snapshot's versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.prices_history")
            .as_deref()
            == Some("25")
    });
    env.on_source(STREAMED_CHANGES);
    let converged = "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5";
    env.wait_converged(converged, WAIT);
    wait_cold_tier_matches_table(&env, &cold);
    let before = all_versions();
    assert!(
        before
            .iter()
            .any(|v| v.0 == (4, 4, None) && v.5 && v.4.is_none()),
        "the streamed delete left an open tombstone: {before:?}"
    );
    server.kill();

    env.on_source("SELECT pg_drop_replication_slot('slot_prices')");
    env.on_source(GAP_CHANGES);
    let server = Server::start(&env, port);
    wait_for("the new snapshot", WAIT, || {
        server.output().contains("initial snapshot loaded")
    });
    env.wait_converged(converged, WAIT);
    wait_cold_tier_matches_table(&env, &cold);
    let after = all_versions();

    assert_only_gap_changes_versioned(&before, &after);
    drop(server);
}

/// Changes a test's job streams before its slot is dropped: a delete (a tombstone) and an
/// update.
pub(crate) const STREAMED_CHANGES: &str =
    "DELETE FROM public.prices WHERE tenant_id = 4 AND id = 4;
     UPDATE public.prices SET price = 555 WHERE tenant_id = 5 AND id = 5";

/// Changes made while the slot is gone: the deleted key back, an update, a delete.
pub(crate) const GAP_CHANGES: &str =
    "INSERT INTO public.prices VALUES (4, 4, 400, '2026-01-01 00:00:00+00');
     UPDATE public.prices SET price = 333 WHERE tenant_id = 3 AND id = 3;
     DELETE FROM public.prices WHERE tenant_id = 2 AND id = 2";

/// After [`STREAMED_CHANGES`], a dropped slot, [`GAP_CHANGES`] and the new snapshot: the
/// versions `before` it and `after` differ by [`GAP_CHANGES`] alone, all at the
/// snapshot's point: the versions of (2, 2), (3, 3) and (4, 4)'s tombstone closed, (3, 3)
/// and (4, 4) opened; every other version as it was.
pub(crate) fn assert_only_gap_changes_versioned(
    before: &BTreeSet<VersionFacts>,
    after: &BTreeSet<VersionFacts>,
) {
    let gone: BTreeSet<_> = before.difference(after).copied().collect();
    let keys = |s: &BTreeSet<VersionFacts>| -> BTreeSet<(i32, i32)> {
        s.iter().map(|v| (v.0 .0, v.0 .1)).collect()
    };
    assert_eq!(
        keys(&gone),
        BTreeSet::from([(2, 2), (3, 3), (4, 4)]),
        "only the changed rows' versions were closed: {gone:?}"
    );
    assert!(gone.iter().all(|v| v.4.is_none()), "{gone:?}");
    let snapshot_lsn = after
        .difference(before)
        .find_map(|v| v.4)
        .expect("a version closed by the snapshot");
    let mut expected: BTreeSet<VersionFacts> = gone
        .iter()
        .map(|v| (v.0, v.1, v.2, v.3, Some(snapshot_lsn), v.5))
        .collect();
    let day_one = after
        .iter()
        .find(|v| v.0 == (3, 3, Some(100)))
        .expect("row (3, 3)")
        .1;
    for row in [(3, 3, Some(333)), (4, 4, Some(400))] {
        expected.insert((row, day_one, None, snapshot_lsn, None, false));
    }
    let added: BTreeSet<_> = after.difference(before).copied().collect();
    assert_eq!(added, expected, "the snapshot's closes and opens");
}

/// A tenant added to a job that keeps history in a PostgreSQL target and the cold tier:
/// the backfill's versions reach the cold tier, which agrees with the history table from
/// then on, for the new tenant and the others.
#[test]
fn a_tenant_added_to_a_job_with_a_cold_tier_gets_its_backfilled_versions_there() {
    let env = Env::start(crate::history::SETUP);
    let cold = env.dir.path().join("cold");
    let job = |tenants: &str| {
        let path = env.dir.path().join("grow.toml");
        std::fs::write(
            &path,
            format!(
                "name = \"grow\"\n[source]\ndsn = \"{}\"\npublication = \"pub_grow\"\nslot = \"slot_grow\"\n\
                 [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.prices\"\nhistory = true\n\
                 valid_time_column = \"effective_at\"\n[[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n\
                 [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n",
                env.source_dsn(),
                env.target_dsn(),
                cold.display()
            ),
        )
        .expect("job file");
        path
    };
    let agree = |t: i32| {
        read_table(&cold, &t.to_string(), TABLE).is_ok()
            && cold_versions(&cold, t) == table_versions(&env, t)
    };
    let mut repl = Replicator::start_inline(&job("[1, 2]"));
    wait_for("tenants 1 and 2 in the cold tier", WAIT, || {
        agree(1) && agree(2) && table_versions(&env, 1).len() == 5
    });
    env.on_source("UPDATE public.prices SET price = 101 WHERE tenant_id = 1 AND id = 1");
    wait_for("tenant 1's streamed version in the cold tier", WAIT, || {
        table_versions(&env, 1).len() > 5 && agree(1)
    });
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());

    // While the job is stopped, tenant 3 (not carried yet) changes.
    env.on_source(
        "UPDATE public.prices SET price = 102 WHERE tenant_id = 3 AND id <= 2;
         DELETE FROM public.prices WHERE tenant_id = 3 AND id = 5;",
    );
    let mut repl = Replicator::start_inline(&job("[1, 2, 3]"));
    wait_for(
        "tenant 3's backfilled versions in the cold tier",
        WAIT,
        || agree(3),
    );
    let loaded = table_versions(&env, 3);
    assert_eq!(loaded.len(), 4, "one version per row loaded: {loaded:?}");
    assert!(
        loaded.iter().all(|v| v.4.is_none() && !v.5),
        "all open, none a tombstone: {loaded:?}"
    );
    // Later changes of the new tenant close its backfilled versions in both places.
    env.on_source(
        "UPDATE public.prices SET price = 103, effective_at = '2026-02-01 00:00:00+00' \
         WHERE tenant_id = 3 AND id = 1;
         DELETE FROM public.prices WHERE tenant_id = 3 AND id = 2;",
    );
    wait_for("tenant 3's later versions in the cold tier", WAIT, || {
        agree(3) && table_versions(&env, 3).len() > 4
    });
    assert!(agree(1) && agree(2), "{}", version_differences(&env, &cold));
    let out = repl.output();
    assert!(
        out.contains("public.prices (tenants 3)") && out.contains("backfill loaded"),
        "{out}"
    );
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
}

/// The `public.prices` table's state on the target (`state: error`, empty when healthy).
fn prices_state(env: &Env) -> String {
    env.try_on_target(
        "SELECT state || ': ' || coalesce(error, '') FROM helios.table_state \
         WHERE table_name = 'public.prices'",
    )
    .unwrap_or_default()
}

/// Resyncs the job `prices` over the CLI (`args` after `jobs resync prices`), and waits
/// for its tenants' rows to converge and the table's error state to go.
fn resync_prices(env: &Env, server: &Server, args: &[&str]) {
    let mut cli = vec!["jobs", "resync", "prices"];
    cli.extend_from_slice(args);
    let (ok, out) = server.cli(&cli);
    assert!(ok, "{out}");
    env.wait_converged(
        "SELECT count(*), sum(price) FROM public.prices WHERE tenant_id <= 5",
        WAIT,
    );
    wait_for("the error state to go", WAIT, || {
        prices_state(env).is_empty()
    });
}

/// Waits for `n` versions of the job's tenants' rows at `price` in the history table.
fn wait_for_versions_of_price(env: &Env, price: i32, n: usize) {
    wait_for(&format!("{n} versions at price {price}"), WAIT, || {
        env.on_target(&format!(
            "SELECT count(*) FROM public.prices_history WHERE price = {price} AND tenant_id <= 5"
        )) == n.to_string()
    });
}

/// A table the target refuses keeps its history in step with the cold tier: while the
/// table is in error its changes are dead letters, but the history table still records
/// their versions, as the cold tier does from the same stream. A restart then restores
/// the books both agree on, so later changes close each version once, in both (before,
/// the history table lacked those versions, so the books restored from it named versions
/// the cold tier had closed already). Once the target is mended a resync reloads the
/// table; the versions already recorded stay as they are. When the history table refuses
/// the versions too, the first one's LSN is recorded and a resync is refused (the cold
/// tier holds versions the history table lacks), and the next start restores that
/// table's books from the cold tier. Once the history table takes them again, a start
/// writes the versions it missed from the cold tier, and a resync is taken.
#[test]
fn a_table_in_error_keeps_its_history_in_step_with_the_cold_tier_across_a_restart() {
    let (env, cold, port, mut server) = start_prices_job();
    wait_for("the snapshot's versions", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.prices_history")
            .as_deref()
            == Some("25")
    });
    env.on_target("ALTER TABLE public.prices ADD CONSTRAINT no_999 CHECK (price <> 999)");
    env.on_source("UPDATE public.prices SET price = 999 WHERE tenant_id = 1 AND id = 1");
    wait_for("the table error to be recorded", WAIT, || {
        prices_state(&env).starts_with("error: ")
    });
    env.on_source("UPDATE public.prices SET price = 200 WHERE id = 2");
    wait_for("the changes in error kept as dead letters", WAIT, || {
        env.on_target("SELECT count(*) FROM helios.dead_letters WHERE table_name = 'public.prices'")
            == "6"
    });
    wait_cold_tier_matches_table(&env, &cold);
    assert_eq!(
        env.on_target(
            "SELECT string_agg(tenant_id || ':' || id || '=' || price, ',' ORDER BY tenant_id, id) \
             FROM public.prices_history WHERE system_to_lsn IS NULL AND price <> 100 AND tenant_id <= 5"
        ),
        "1:1=999,1:2=200,2:2=200,3:2=200,4:2=200,5:2=200",
        "the history table records the source's versions while the table is in error"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.prices WHERE price <> 100"),
        "0",
        "the table itself took none of them"
    );

    server.kill();
    let server = Server::start(&env, port);
    env.on_source("UPDATE public.prices SET price = 300 WHERE id IN (1, 2)");
    wait_for_versions_of_price(&env, 300, 10);
    // `cold_versions` fails on a version closed twice.
    wait_cold_tier_matches_table(&env, &cold);
    assert_eq!(
        env.on_target(
            "SELECT count(*) FROM public.prices_history WHERE system_to_lsn IS NULL AND tenant_id <= 5"
        ),
        "25",
        "one open version per row"
    );

    env.on_target("ALTER TABLE public.prices DROP CONSTRAINT no_999");
    resync_prices(&env, &server, &["public.prices"]);
    assert_eq!(
        crate::backfill::history_disagreements(&env, "prices", "price", "1, 2, 3, 4, 5"),
        "0"
    );
    env.on_source("UPDATE public.prices SET price = 400 WHERE id = 1");
    wait_for_versions_of_price(&env, 400, 5);
    wait_cold_tier_matches_table(&env, &cold);
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.prices_history WHERE tenant_id <= 5"),
        "46",
        "25 from the snapshot, 6 while in error, 10 after the restart, 5 after the resync, none from the reload"
    );

    // One tenant's rows reloaded over the API: its row that drifted on the target is
    // mended with no version (the history records the source), and the tier agrees.
    env.on_target("UPDATE public.prices SET price = 5 WHERE tenant_id = 4");
    resync_prices(&env, &server, &["prices", "--tenant", "4"]);
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.prices_history WHERE tenant_id <= 5"),
        "46"
    );
    wait_cold_tier_matches_table(&env, &cold);

    // The history table refuses the versions too: recorded, and a resync refused.
    env.on_target(
        "ALTER TABLE public.prices ADD CONSTRAINT no_777 CHECK (price <> 777);
         ALTER TABLE public.prices_history ADD CONSTRAINT no_777 CHECK (price <> 777)",
    );
    env.on_source("UPDATE public.prices SET price = 777 WHERE tenant_id = 3 AND id = 3");
    wait_for("the missed history versions to be recorded", WAIT, || {
        env.on_target(
            "SELECT count(*) FROM helios.table_state \
             WHERE table_name = 'public.prices' AND state = 'error' AND history_missed_lsn IS NOT NULL",
        ) == "1"
    });
    let (ok, out) = server.cli(&["jobs", "resync", "prices", "prices"]);
    assert!(
        !ok && out.contains("422") && out.contains("refused versions from"),
        "{out}"
    );
    let (ok, out) = server.cli(&["jobs", "show", "prices"]);
    assert!(ok && out.contains("streaming"), "{out}");
    wait_for(
        "the status to say the history table refused versions",
        WAIT,
        || {
            let (_, out) = server.cli(&["jobs", "show", "prices"]);
            out.contains("its history table refused the versions too, from")
        },
    );
    wait_for("the cold tier to hold the version at 777", WAIT, || {
        open_prices(&cold, 3).contains(&((3, 3), Some(777)))
    });

    // A restart restores that table's books from the cold tier, which holds the version
    // the history table refused: the next change closes it, once (books from the history
    // table would close the snapshot's version of the row a second time; `cold_versions`
    // fails on that).
    let mut server = server;
    server.kill();
    let server = Server::start(&env, port);
    env.on_source("UPDATE public.prices SET price = 888 WHERE tenant_id = 3 AND id = 3");
    wait_for("the cold tier to hold the version at 888", WAIT, || {
        open_prices(&cold, 3).contains(&((3, 3), Some(888)))
    });
    let open = open_prices(&cold, 3);
    assert_eq!(
        open.iter().filter(|(row, _)| *row == (3, 3)).count(),
        1,
        "one open version of the row in the cold tier: {open:?}"
    );
    assert!(
        server_logs(env.dir.path()).contains("restored from the cold tier"),
        "the restart said where the books came from"
    );

    // Once the history table takes them, the next start writes the versions it missed
    // from the cold tier and clears the mark: the two agree again, and a resync is taken.
    env.on_target(
        "ALTER TABLE public.prices_history DROP CONSTRAINT no_777; \
         ALTER TABLE public.prices DROP CONSTRAINT no_777",
    );
    let mut server = server;
    server.kill();
    let server = Server::start(&env, port);
    wait_for("the missed versions to be mended", WAIT, || {
        env.on_target(
            "SELECT count(*) FROM helios.table_state \
             WHERE table_name = 'public.prices' AND history_missed_lsn IS NOT NULL",
        ) == "0"
    });
    assert!(
        server_logs(env.dir.path()).contains("history table mended from the cold tier"),
        "the start said it mended the history table"
    );
    // A change reaches the sink, which shows the table in error without the note.
    env.on_source("UPDATE public.prices SET price = 901 WHERE tenant_id = 5 AND id = 5");
    wait_for("the status without the note", WAIT, || {
        let (_, out) = server.cli(&["jobs", "show", "prices"]);
        out.contains("table in error: public.prices") && !out.contains("history table refused")
    });
    wait_cold_tier_matches_table(&env, &cold);
    resync_prices(&env, &server, &["prices"]);
    wait_cold_tier_matches_table(&env, &cold);
    assert_eq!(
        crate::backfill::history_disagreements(&env, "prices", "price", "1, 2, 3, 4, 5"),
        "0"
    );
    drop(server);
}

/// The open versions of `tenant`'s rows in the cold tier at `root`: ((tenant, id), price).
fn open_prices(root: &Path, tenant: i32) -> Vec<((i32, i32), Option<i32>)> {
    if read_table(root, &tenant.to_string(), TABLE).is_err() {
        return Vec::new();
    }
    cold_versions(root, tenant)
        .into_iter()
        .filter(|(_, _, _, _, closed, tombstone)| closed.is_none() && !tombstone)
        .map(|((tenant, id, price), ..)| ((tenant, id), price))
        .collect()
}
