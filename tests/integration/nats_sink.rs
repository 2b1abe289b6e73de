//! The NATS JetStream sink against a real `nats-server -js`: a job with a NATS sink is
//! SIGKILLed mid-stream and restarted, and a consumer reading the stream from its start
//! gets the initial copy and then every change exactly once, in LSN order per subject, and replaying the stream
//! rebuilds the source's rows. Frames are kept small (1 KiB of Arrow data), so
//! transactions are split across messages and the restart resumes inside one.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Int32Array, Int64Array, StringArray, UInt64Array};
use helios_repl::operators::columnar::{LSN_COLUMN, OP_COLUMN};
use helios_repl::sinks::nats::consumer::{DecodedFrame, StartAt, StreamTail};

use crate::harness::{wait_for, Env, Replicator};
use crate::qos::Nats;

pub(crate) const WAIT: Duration = Duration::from_secs(120);

/// `ver` takes a new sequence value on every insert and update, so each upsert the stream
/// carries is identifiable; deletes are logged on the source (the log is not replicated).
pub(crate) const ORDERS: &str = "CREATE SCHEMA q;
CREATE SEQUENCE q.ver;
CREATE TABLE q.orders (tenant_id int NOT NULL, id bigint NOT NULL, ver bigint NOT NULL,
    note text, PRIMARY KEY (tenant_id, id));
CREATE TABLE q.deleted (tenant_id int, id bigint);
CREATE FUNCTION q.log_delete() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN INSERT INTO q.deleted VALUES (OLD.tenant_id, OLD.id); RETURN OLD; END$$;
CREATE TRIGGER log_delete AFTER DELETE ON q.orders FOR EACH ROW EXECUTE FUNCTION q.log_delete();";

fn job(env: &Env, nats: &Nats) -> std::path::PathBuf {
    job_file(env, nats, "stream", 1024)
}

/// A job `name` on `q.orders` of tenants 1 to 3 with a PostgreSQL sink (it keeps the
/// job's progress) and a NATS sink of frames of at most `frame_bytes` Arrow bytes.
pub(crate) fn job_file(
    env: &Env,
    nats: &Nats,
    name: &str,
    frame_bytes: usize,
) -> std::path::PathBuf {
    let text = format!(
        "name = \"{name}\"\n[source]\ndsn = \"{}\"\npublication = \"pub_{name}\"\nslot = \"slot_{name}\"\n\
         [tenants]\ninclude = [1, 2, 3]\n[[tables]]\nname = \"q.orders\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n\
         [[sinks]]\nkind = \"nats\"\nurl = \"{}\"\nbatch_max_rows = 200\nbatch_max_bytes = {frame_bytes}\nkey_frame_every = 4\n",
        env.source_dsn(),
        env.target_dsn(),
        nats.url,
    );
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("job file");
    path
}

/// Transaction `k` of the writer: 30 new orders over three tenants, every third one
/// updates some, every fifth deletes some older ones.
fn transaction(k: u64) -> String {
    let mut sql = format!(
        "BEGIN; INSERT INTO q.orders SELECT 1 + g % 3, {base} + g, nextval('q.ver'), 'n' FROM generate_series(0, 29) g;",
        base = k * 100
    );
    if k.is_multiple_of(3) {
        sql += &format!(
            "UPDATE q.orders SET ver = nextval('q.ver'), note = 'u{k}' WHERE id % 7 = {};",
            k % 7
        );
    }
    if k % 5 == 4 {
        sql += &format!(
            "DELETE FROM q.orders WHERE id % 11 = {} AND id < {};",
            k % 11,
            k * 100
        );
    }
    sql + "COMMIT;"
}

/// Every frame of job `job`'s stream, from its start.
pub(crate) fn read_job_stream(url: &str, job: &str) -> Vec<DecodedFrame> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut tail = StreamTail::open(
            url,
            &Default::default(),
            &format!("HELIOS_{job}"),
            "",
            StartAt::First,
        )
        .await
        .expect("open the stream");
        let mut frames = Vec::new();
        while let Some(f) = tail
            .next(Duration::from_secs(2))
            .await
            .expect("every message decodes")
        {
            frames.push(f);
        }
        assert_eq!(tail.skipped_before_key_frame, 0, "read from the start");
        frames
    })
}

fn column<'a, T: 'static>(f: &'a DecodedFrame, name: &str) -> &'a T {
    f.batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .unwrap_or_else(|| panic!("column {name} of {}", f.subject))
}

/// What replaying the stream gives: (tenant, id) → ver, plus counts.
struct Replay {
    rows: BTreeMap<(i32, i64), i64>,
    upserts: usize,
    deletes: usize,
    duplicate_versions: usize,
}

fn replay(frames: &[DecodedFrame]) -> Replay {
    let mut out = Replay {
        rows: BTreeMap::new(),
        upserts: 0,
        deletes: 0,
        duplicate_versions: 0,
    };
    let mut versions = HashSet::new();
    let mut last_lsn: BTreeMap<String, u64> = BTreeMap::new();
    for f in frames {
        let (tenant, id) = (
            column::<Int32Array>(f, "tenant_id"),
            column::<Int64Array>(f, "id"),
        );
        let (ver, op, lsn) = (
            column::<Int64Array>(f, "ver"),
            column::<StringArray>(f, OP_COLUMN),
            column::<UInt64Array>(f, LSN_COLUMN),
        );
        for i in 0..f.batch.num_rows() {
            let seen = last_lsn.entry(f.subject.clone()).or_default();
            assert!(
                lsn.value(i) >= *seen,
                "{}: LSN {} after {} (message {})",
                f.subject,
                lsn.value(i),
                seen,
                f.sequence
            );
            *seen = lsn.value(i);
            let key = (tenant.value(i), id.value(i));
            match op.value(i) {
                "D" => {
                    out.deletes += 1;
                    out.rows.remove(&key);
                }
                _ => {
                    out.upserts += 1;
                    if !versions.insert(ver.value(i)) {
                        out.duplicate_versions += 1;
                    }
                    out.rows.insert(key, ver.value(i));
                }
            }
        }
    }
    out
}

/// For a failure message: the versions (1..=`upserts`) no frame carries, and each frame's
/// subject, sequence, LSN range, rows and partial count.
fn describe_stream(frames: &[DecodedFrame], upserts: usize) -> String {
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for f in frames {
        let ver = column::<Int64Array>(f, "ver");
        let op = column::<StringArray>(f, OP_COLUMN);
        let lsn = column::<UInt64Array>(f, LSN_COLUMN);
        let mut vers = Vec::new();
        for i in 0..f.batch.num_rows() {
            if op.value(i) != "D" {
                seen.insert(ver.value(i));
            }
            vers.push(format!("{}:{}", lsn.value(i), ver.value(i)));
        }
        lines.push(format!(
            "{} #{} {}..{} rows={} partial={:?} [{}]",
            f.subject,
            f.sequence,
            f.first_lsn,
            f.last_lsn,
            f.batch.num_rows(),
            f.partial_rows,
            vers.join(" ")
        ));
    }
    let missing: Vec<i64> = (1..=upserts as i64).filter(|v| !seen.contains(v)).collect();
    const SHOWN: usize = 200;
    let more = lines.len().saturating_sub(SHOWN);
    lines.truncate(SHOWN);
    if more > 0 {
        lines.push(format!("… and {more} more"));
    }
    format!(
        "versions missing: {missing:?}\nframes:\n{}",
        lines.join("\n")
    )
}

/// (tenant, id) → ver of the source rows `sql` selects (those three columns).
fn source_rows(env: &Env, sql: &str) -> BTreeMap<(i32, i64), i64> {
    env.on_source(sql)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                (v[0].parse().expect("tenant"), v[1].parse().expect("id")),
                v[2].parse().expect("ver"),
            )
        })
        .collect()
}

/// Reads job `job`'s stream until replaying it gives `source` (for up to [`WAIT`]), and
/// checks that it does and that no change was published twice.
fn assert_stream_rebuilds(url: &str, job: &str, source: &BTreeMap<(i32, i64), i64>) {
    let started = Instant::now();
    let got = loop {
        let got = replay(&read_job_stream(url, job));
        if got.rows == *source || started.elapsed() > WAIT {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got.duplicate_versions, 0, "no change published twice");
    assert!(
        got.rows == *source,
        "replaying the stream rebuilds the source's rows"
    );
}

/// Reads job `job`'s stream until it holds as many changes as the source made (the NATS
/// sink may finish after the PostgreSQL one), and checks that replaying it gives every
/// insert, update and delete exactly once and rebuilds the source's rows. Returns the
/// frames.
pub(crate) fn assert_stream_replays_source(env: &Env, url: &str, job: &str) -> Vec<DecodedFrame> {
    let source = source_rows(env, "SELECT tenant_id, id, ver FROM q.orders ORDER BY 1, 2");
    let upserts: usize = env
        .on_source("SELECT last_value FROM q.ver")
        .trim()
        .parse()
        .expect("sequence");
    let deletes: usize = env
        .on_source("SELECT count(*) FROM q.deleted")
        .trim()
        .parse()
        .expect("deletes");
    assert!(
        deletes > 0 && upserts > source.len(),
        "the load updated and deleted"
    );
    let started = Instant::now();
    let (frames, got) = loop {
        let frames = read_job_stream(url, job);
        let got = replay(&frames);
        if got.upserts >= upserts && got.deletes >= deletes || started.elapsed() > WAIT {
            break (frames, got);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got.duplicate_versions, 0, "no change published twice");
    assert_eq!(
        got.upserts,
        upserts,
        "every insert and update exactly once\n{}",
        describe_stream(&frames, upserts)
    );
    assert_eq!(got.deletes, deletes, "every delete exactly once");
    assert!(
        got.rows == source,
        "replaying the stream rebuilds the source's rows"
    );
    frames
}

#[test]
fn a_killed_job_streams_every_change_to_nats_exactly_once_in_order() {
    let env = Arc::new(Env::start(ORDERS));
    let nats = Nats::start(&env);
    // Rows from before the job: the initial copy publishes them.
    env.on_source(
        "INSERT INTO q.orders SELECT 1 + g % 3, 1000000 + g, nextval('q.ver'), 's' FROM generate_series(0, 4999) g",
    );
    let job = job(&env, &nats);
    let mut repl = Replicator::start(&job);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) && k < 400 {
                env.on_source(&transaction(k));
                k += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    repl.kill();
    std::thread::sleep(Duration::from_millis(500));
    let mut repl = Replicator::start(&job);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    env.wait_converged("SELECT count(*), sum(ver) FROM q.orders", WAIT);

    let frames = assert_stream_replays_source(&env, &nats.url, "stream");
    let mut last_of: BTreeMap<&str, u64> = BTreeMap::new();
    let mut split = 0;
    for f in &frames {
        if last_of.get(f.subject.as_str()) == Some(&f.first_lsn) {
            split += 1;
        }
        last_of.insert(&f.subject, f.last_lsn);
    }
    assert!(split > 0, "some transaction was split across messages");
    let subjects: HashSet<&str> = frames.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(
        subjects,
        HashSet::from([
            "helios.stream.1.q.orders",
            "helios.stream.2.q.orders",
            "helios.stream.3.q.orders"
        ])
    );
    let out = repl.output();
    assert!(
        out.contains("resuming from the slot's confirmed position"),
        "the restart resumed:\n{out}"
    );

    // A person can read the stream.
    let tail = std::process::Command::new(env!("CARGO_BIN_EXE_helios-repl"))
        .args([
            "tail",
            "--nats-url",
            &nats.url,
            "--job",
            "stream",
            "--from-start",
        ])
        .args(["--max-frames", "2", "--idle-exit-secs", "5"])
        .output()
        .expect("run tail");
    let text = String::from_utf8_lossy(&tail.stdout);
    assert!(
        tail.status.success(),
        "tail: {}",
        String::from_utf8_lossy(&tail.stderr)
    );
    assert!(
        text.contains("tenant 1") || text.contains("tenant 2") || text.contains("tenant 3"),
        "{text}"
    );
    assert!(text.contains("_helios_op"), "{text}");
    assert_eq!(repl.stop().code(), Some(0));
}

/// A transaction far larger than what a worker holds (`deliver::PART_ROWS`) reaches the
/// NATS sink in parts, which it publishes as they arrive. The job is killed while they
/// arrive; after the restart every change is in the stream exactly once, each subject's
/// frames of the transaction are marked partial and an empty frame ends it, and the
/// restarted process stays within the memory bound however large the transaction.
#[test]
fn a_large_transaction_is_published_to_nats_in_parts_exactly_once_across_a_kill() {
    let env = Env::start(ORDERS);
    let nats = Nats::start(&env);
    env.on_source(
        "INSERT INTO q.orders SELECT 1 + g % 3, 1000000 + g, nextval('q.ver'), 's' FROM generate_series(0, 2999) g",
    );
    let job = job_file(&env, &nats, "bigtxn", 64 * 1024);
    let mut repl = Replicator::start(&job);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    env.on_source(&transaction(1));
    let rows = 400_000;
    env.on_source(&format!(
        "BEGIN;
         INSERT INTO q.orders SELECT 1 + g % 3, 10000000 + g, nextval('q.ver'), repeat('x', 40)
             FROM generate_series(0, {rows} - 1) g;
         UPDATE q.orders SET ver = nextval('q.ver'), note = 'big' WHERE id BETWEEN 1000000 AND 1000999;
         DELETE FROM q.orders WHERE id BETWEEN 1001000 AND 1001499;
         COMMIT;"
    ));
    env.on_source(&transaction(2));
    wait_for("the large transaction's parts", WAIT, || {
        repl.output()
            .contains("large transaction arriving in parts")
    });
    repl.kill();
    let mut repl = Replicator::start(&job);
    let frames = assert_stream_replays_source(&env, &nats.url, "bigtxn");

    // The large transaction is the one with the most frames on each subject.
    let mut per_lsn: BTreeMap<(&str, u64), Vec<&DecodedFrame>> = BTreeMap::new();
    for f in &frames {
        per_lsn
            .entry((f.subject.as_str(), f.last_lsn))
            .or_default()
            .push(f);
    }
    for subject in [
        "helios.bigtxn.1.q.orders",
        "helios.bigtxn.2.q.orders",
        "helios.bigtxn.3.q.orders",
    ] {
        let big = per_lsn
            .iter()
            .filter(|((s, _), _)| *s == subject)
            .map(|(_, f)| f)
            .max_by_key(|f| f.len())
            .expect("frames of the subject");
        let (last, leading) = big.split_last().expect("frames");
        assert!(leading.len() > 1, "{subject}: the transaction spans frames");
        assert_eq!(last.partial_rows, None, "{subject}: its last frame ends it");
        assert_eq!(last.batch.num_rows(), 0, "{subject}: an empty end frame");
        let mut so_far = 0;
        for f in leading {
            assert_eq!(
                f.first_lsn, f.last_lsn,
                "{subject}: only the large transaction"
            );
            so_far += f.batch.num_rows();
            assert_eq!(f.partial_rows, Some(so_far), "{subject}: its rows so far");
        }
    }
    let out = repl.output();
    assert!(
        out.lines()
            .any(|l| l.contains("large transaction applied as it arrived") && l.contains("nats")),
        "the restarted job published the transaction as its parts arrived:\n{out}"
    );
    let peak = crate::large_transactions::peak_rss_mib(&repl);
    eprintln!("peak RSS after the restart {peak} MiB");
    assert!(
        peak > 0 && peak < 256,
        "peak RSS {peak} MiB while publishing a {rows}-row transaction (bound 256 MiB)"
    );
    assert_eq!(repl.stop().code(), Some(0));
}

/// A served job with a NATS sink shows, per stream and column, the codec its frames use
/// (`GET /v1/jobs/{id}/compression`), and `/metrics` has the sink's encoding figures.
#[test]
fn the_api_explains_a_running_jobs_compression() {
    use crate::serve_api::{http, Server, TOKEN};
    let env = Env::start(ORDERS);
    env.target.create_database("meta").expect("meta db");
    let nats = Nats::start(&env);
    let port = helios_repl::embedded::pg_cluster::free_port().expect("port");
    let server = Server::spawn(&env, port, &[], &[]);
    server.wait_healthy();
    let (ok, out) = server.cli(&["submit", job(&env, &nats).to_str().expect("path")]);
    assert!(ok, "submit: {out}");
    wait_for("the job to stream", WAIT, || {
        server.output().contains("streaming")
    });
    for k in 0..5 {
        env.on_source(&transaction(k));
    }
    let mut body = serde_json::Value::Null;
    wait_for("frames in the compression report", WAIT, || {
        let (status, text) = http(
            &server.url,
            "GET",
            "/v1/jobs/stream/compression",
            Some(TOKEN),
        );
        body = serde_json::from_str(&text).unwrap_or_default();
        status == 200 && body["sinks"][0]["rows"].as_u64() >= Some(150)
    });
    let sink = &body["sinks"][0];
    assert_eq!(
        (sink["sink"].as_u64(), sink["kind"].as_str()),
        (Some(1), Some("nats"))
    );
    assert!(sink["frame_bytes"].as_u64() > Some(0), "{body}");
    let stream = &sink["streams"][0];
    assert!(
        stream["subject"]
            .as_str()
            .is_some_and(|s| s.starts_with("helios.stream.")),
        "{body}"
    );
    let columns = stream["columns"].as_array().expect("columns");
    let id = columns
        .iter()
        .find(|c| c["column"] == "id")
        .expect("id column");
    assert!(
        id["codec"].as_str().is_some_and(|c| !c.is_empty()),
        "{body}"
    );
    assert!(id["bytes_after"].as_u64() > Some(0), "{body}");
    let (status, _) = http(&server.url, "GET", "/v1/jobs/nope/compression", Some(TOKEN));
    assert_eq!(status, 404);
    wait_for("encoding figures in /metrics", WAIT, || {
        let text = http(&server.url, "GET", "/metrics", None).1;
        text.contains("helios_sink_encode_seconds_total{job=\"stream\",sink=\"nats\"}")
            && text.contains("helios_sink_codec_fast_mode{job=\"stream\",sink=\"nats\"} 0")
    });
}

/// A tenant added to a job with a PostgreSQL and a NATS sink: the NATS stream gets its
/// rows as of the backfill's snapshot, then its later changes, and none twice. `q.events`
/// has a key without the tenant, so the publication cannot filter it and the tenant's
/// events written while the job was stopped reach the stream as well as the backfill:
/// each subject's checkpoint must skip them.
#[test]
fn a_tenant_added_to_a_job_reaches_the_nats_stream_once() {
    let env = Env::start(&format!(
        "{ORDERS}\nCREATE TABLE q.events (tenant_id int NOT NULL, id bigint PRIMARY KEY, ver bigint NOT NULL);"
    ));
    let nats = Nats::start(&env);
    let mut next_event = 0u64;
    let mut write = |k: u64| {
        env.on_source(&transaction(k));
        env.on_source(&format!(
            "INSERT INTO q.events SELECT 1 + g % 3, 5000000 + {next_event} + g, nextval('q.ver') FROM generate_series(0, 8) g"
        ));
        next_event += 9;
    };
    for k in 0..5 {
        write(k);
    }
    let path = job_file(&env, &nats, "grow", 1024);
    let spec = std::fs::read_to_string(&path).expect("job file").replace(
        "[[tables]]\nname = \"q.orders\"\n",
        "[[tables]]\nname = \"q.orders\"\n[[tables]]\nname = \"q.events\"\n",
    );
    std::fs::write(
        &path,
        spec.replace("include = [1, 2, 3]", "include = [1, 2]"),
    )
    .expect("job");
    let mut repl = Replicator::start_inline(&path);
    let two = "SELECT tenant_id, count(*), sum(ver) FROM (SELECT tenant_id, ver FROM q.orders UNION ALL \
               SELECT tenant_id, ver FROM q.events) u WHERE tenant_id IN (1, 2) GROUP BY 1 ORDER BY 1";
    env.wait_converged(two, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    for k in 5..10 {
        write(k);
    }
    std::fs::write(&path, &spec).expect("job");
    let mut repl = Replicator::start_inline(&path);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    for k in 10..15 {
        write(k);
    }
    let three = two.replace("IN (1, 2)", "IN (1, 2, 3)");
    env.wait_converged(&three, WAIT);
    let out = repl.output();
    assert!(
        out.contains("backfill loaded") && out.contains("published"),
        "{out}"
    );

    let source = source_rows(
        &env,
        "SELECT tenant_id, id, ver FROM q.orders UNION ALL SELECT tenant_id, id, ver FROM q.events",
    );
    assert_stream_rebuilds(&nats.url, "grow", &source);
    assert!(repl.stop().success(), "{}", repl.output());
}

/// A NATS sink added to a job that ran with its PostgreSQL sink alone: the new stream gets
/// every row as of the backfill's snapshot, then the changes, none twice; the PostgreSQL
/// target loads nothing again.
#[test]
fn a_nats_sink_added_to_a_job_gets_every_row_once() {
    let env = Env::start(ORDERS);
    let nats = Nats::start(&env);
    for k in 0..5 {
        env.on_source(&transaction(k));
    }
    let path = job_file(&env, &nats, "fanout", 1024);
    let spec = std::fs::read_to_string(&path).expect("job file");
    let without_nats = spec
        .split("[[sinks]]\nkind = \"nats\"")
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::write(&path, &without_nats).expect("job");
    let mut repl = Replicator::start_inline(&path);
    let all = "SELECT tenant_id, count(*), sum(ver) FROM q.orders GROUP BY 1 ORDER BY 1";
    env.wait_converged(all, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    // Written while stopped: in the stream from the slot, and in the new stream's copy.
    for k in 5..10 {
        env.on_source(&transaction(k));
    }
    std::fs::write(&path, &spec).expect("job");
    restart_with_a_whole_stream(
        &env,
        &path,
        &nats.url,
        "fanout",
        "a NATS stream new to the job",
    );
}

/// Starts the job `job` at `path` again, its NATS stream at `url` new to it, and writes
/// while it streams: the stream rebuilds every row of the source, none twice; the start
/// said `why` and published every table to the stream, and the PostgreSQL target loaded
/// nothing again.
fn restart_with_a_whole_stream(env: &Env, path: &std::path::Path, url: &str, job: &str, why: &str) {
    let mut repl = Replicator::start_inline(path);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    for k in 10..15 {
        env.on_source(&transaction(k));
    }
    env.wait_converged(
        "SELECT tenant_id, count(*), sum(ver) FROM q.orders GROUP BY 1 ORDER BY 1",
        WAIT,
    );
    let source = source_rows(env, "SELECT tenant_id, id, ver FROM q.orders");
    assert_stream_rebuilds(url, job, &source);
    let out = repl.output();
    assert!(
        out.contains(why) && out.contains(&format!("new NATS streams: HELIOS_{job}")),
        "{out}"
    );
    assert!(
        !out.contains("target 0:"),
        "the PostgreSQL target loads nothing:\n{out}"
    );
    assert!(repl.stop().success(), "{}", repl.output());
}

/// A NATS sink pointed at another server (its stream there created empty), whose
/// coverage says the stream got every row: the start sees the stream has never held a
/// message and publishes every table to it, so the new server's stream rebuilds every
/// row, none twice; the PostgreSQL target loads nothing again.
#[test]
fn a_nats_sink_moved_to_a_new_server_gets_every_row_once() {
    let env = Env::start(ORDERS);
    let old = Nats::start(&env);
    for k in 0..5 {
        env.on_source(&transaction(k));
    }
    let path = job_file(&env, &old, "moved", 1024);
    let all = "SELECT tenant_id, count(*), sum(ver) FROM q.orders GROUP BY 1 ORDER BY 1";
    let mut repl = Replicator::start_inline(&path);
    env.wait_converged(all, WAIT);
    assert!(repl.stop().success(), "{}", repl.output());
    for k in 5..10 {
        env.on_source(&transaction(k));
    }
    let new = Nats::start_in(&env, "nats-new");
    let spec = std::fs::read_to_string(&path).expect("job file");
    std::fs::write(&path, spec.replace(&old.url, &new.url)).expect("job");
    drop(old);
    restart_with_a_whole_stream(
        &env,
        &path,
        &new.url,
        "moved",
        "the NATS stream has never held a message",
    );
}

/// A NATS stream that has never held a message because the job has had no row to send
/// yet is what it should be: a restart does not take a backfill snapshot for it (a
/// temporary slot, which waits for the source's running transactions), and the rows
/// written afterwards reach it as any change.
#[test]
fn a_stream_empty_because_the_job_had_no_rows_takes_no_backfill_at_restart() {
    let env = Env::start(ORDERS);
    let nats = Nats::start(&env);
    let path = job_file(&env, &nats, "empty", 1024);
    let streaming = || {
        let repl = Replicator::start_inline(&path);
        wait_for("the job to stream", WAIT, || {
            repl.output().contains("streaming")
        });
        repl
    };
    let mut repl = streaming();
    assert!(repl.stop().success(), "{}", repl.output());
    let mut repl = streaming();
    for k in 0..3 {
        env.on_source(&transaction(k));
    }
    env.wait_converged(
        "SELECT tenant_id, count(*), sum(ver) FROM q.orders GROUP BY 1 ORDER BY 1",
        WAIT,
    );
    let source = source_rows(&env, "SELECT tenant_id, id, ver FROM q.orders");
    assert_stream_rebuilds(&nats.url, "empty", &source);
    let out = repl.output();
    assert!(
        out.contains("the source holds none of the job's tenants' rows: nothing to publish")
            && !out.contains("every table is published to it")
            && !out.contains("new NATS streams"),
        "{out}"
    );
    assert!(repl.stop().success(), "{out}");
}

/// A job whose progress lives in the cold tier (no PostgreSQL sink) cannot publish every
/// table to a NATS stream that lacks its rows: a stream added to its spec, or its stream
/// on a server new to the job, stops the start with a message saying what to do, before
/// anything streams; the stream that holds its rows resumes it.
#[test]
fn a_cold_tier_job_refuses_a_nats_stream_that_lacks_its_rows() {
    let env = Env::start(ORDERS);
    let old = Nats::start(&env);
    for k in 0..3 {
        env.on_source(&transaction(k));
    }
    let cold = env.dir.path().join("cold");
    let path = env.dir.path().join("cold-nats.toml");
    let spec = |streams: &[(&str, &str)]| {
        let mut text = format!(
            "name = \"coldnats\"\n[source]\ndsn = \"{}\"\npublication = \"pub_cn\"\nslot = \"slot_cn\"\n\
             [tenants]\ninclude = [1, 2, 3]\n[[tables]]\nname = \"q.orders\"\nhistory = true\n\
             [[sinks]]\nkind = \"parquet\"\nroot = \"{}\"\n",
            env.source_dsn(),
            cold.display()
        );
        for (url, stream) in streams {
            text +=
                &format!("[[sinks]]\nkind = \"nats\"\nurl = \"{url}\"\nstream = \"{stream}\"\n");
        }
        std::fs::write(&path, text).expect("job file");
    };
    let refused = |why: &[&str]| {
        let mut repl = Replicator::start_inline(&path);
        wait_for("the job to stop", WAIT, || !repl.is_running());
        let out = repl.output();
        assert!(
            why.iter().all(|w| out.contains(w))
                && out.contains("parquet sink only")
                && out.contains("--drop-slot")
                && !out.contains("streaming"),
            "{why:?}:\n{out}"
        );
    };
    spec(&[(&old.url, "COLD")]);
    let mut repl = Replicator::start_inline(&path);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    assert!(repl.stop().success(), "{}", repl.output());

    spec(&[(&old.url, "COLD"), (&old.url, "OTHER")]);
    refused(&["NATS stream OTHER", "new to the job"]);
    let new = Nats::start_in(&env, "nats-new");
    spec(&[(&new.url, "COLD")]);
    refused(&["NATS stream COLD", "has never held a message"]);

    spec(&[(&old.url, "COLD")]);
    let mut repl = Replicator::start_inline(&path);
    wait_for("the job to stream", WAIT, || {
        repl.output().contains("streaming")
    });
    let out = repl.output();
    assert!(
        out.contains("resuming from the slot's confirmed position"),
        "{out}"
    );
    assert!(repl.stop().success(), "{}", repl.output());
}

/// A table the PostgreSQL target refused, resynced: the target gets it whole again, and
/// the NATS stream, which was not in error, is not sent it a second time: replaying the
/// stream still gives every change exactly once.
#[test]
fn a_resync_reloads_the_postgres_target_and_leaves_the_nats_stream_as_it_was() {
    let env = Env::start(ORDERS);
    let nats = Nats::start(&env);
    env.on_source(
        "INSERT INTO q.orders SELECT 1 + g % 3, 1000000 + g, nextval('q.ver'), 's' FROM generate_series(0, 299) g",
    );
    let path = job_file(&env, &nats, "rs", 1024);
    let streaming = |extra: &[&str]| {
        let repl = Replicator::start_with_args(&path, 1, extra);
        wait_for("the job to stream", WAIT, || {
            repl.output().contains("streaming")
        });
        repl
    };
    let all = "SELECT count(*), sum(ver) FROM q.orders";
    let mut repl = streaming(&[]);
    for k in 0..4 {
        env.on_source(&transaction(k));
    }
    env.wait_converged(all, WAIT);
    let state = || {
        env.try_on_target("SELECT state FROM helios.table_state WHERE table_name = 'q.orders'")
            .unwrap_or_default()
    };
    env.on_target("ALTER TABLE q.orders ADD CONSTRAINT no_bad CHECK (note <> 'bad')");
    env.on_source(
        "UPDATE q.orders SET ver = nextval('q.ver'), note = 'bad' WHERE tenant_id = 1 AND id = 1000000",
    );
    wait_for("the table error to be recorded", WAIT, || {
        state() == "error"
    });
    for k in 4..8 {
        env.on_source(&transaction(k));
    }
    assert!(repl.stop().success(), "{}", repl.output());
    env.on_target("ALTER TABLE q.orders DROP CONSTRAINT no_bad");

    let mut repl = streaming(&["--resync", "q.orders"]);
    for k in 8..10 {
        env.on_source(&transaction(k));
    }
    env.wait_converged(all, WAIT);
    assert_eq!(state(), "", "{}", repl.output());
    assert_stream_replays_source(&env, &nats.url, "rs");
    let out = repl.output();
    assert!(
        out.contains("resync requested") && out.contains("backfill loaded"),
        "{out}"
    );
    assert!(repl.stop().success(), "{out}");
}
