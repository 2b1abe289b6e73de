//! `helios-repl serve` with its REST API, driven through the real CLI (`submit`, `jobs`):
//! two jobs with disjoint tenants, pause/resume, delete with the slot, a SIGKILLed server
//! resuming its jobs, `/metrics`, the bearer token, and passwords never shown.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use helios_repl::embedded::pg_cluster::free_port;

use crate::harness::{output_of, wait_for, Env};

const WAIT: Duration = Duration::from_secs(90);
pub(crate) const TOKEN: &str = "t0ken-for-tests";
/// Trust authentication ignores it, so it can stand in every DSN; it must never show.
const PASSWORD: &str = "s3cr3t-pw";

const SHOP: &str = "
CREATE TABLE public.accounts (tenant_id int NOT NULL, id int NOT NULL, balance numeric NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.ledger (tenant_id int NOT NULL, n bigint NOT NULL, amount numeric);
INSERT INTO public.accounts SELECT t, a, 100 FROM generate_series(1, 10) t, generate_series(1, 20) a;
CREATE TABLE public.plans (code text PRIMARY KEY, price numeric);
";

pub(crate) struct Server {
    child: Child,
    log: PathBuf,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(env: &Env, port: u16) -> Server {
        let server = Server::spawn(env, port, &[], &[]);
        server.wait_healthy();
        server
    }

    /// Starts `serve` with extra arguments and environment variables, without waiting.
    pub(crate) fn spawn(env: &Env, port: u16, args: &[&str], vars: &[(&str, &str)]) -> Server {
        let log = env.dir.path().join(format!("serve-{}.log", rand_id()));
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            // One worker with the jobs' readers and sinks on its thread (`inline`); the
            // `run` tests cover two workers and the default placement.
            .args(["--workers", "1", "--worker-placement", "inline"])
            .args(args)
            .env(
                "HELIOS_META_DSN",
                format!("{} password={PASSWORD}", env.target.dsn("meta")),
            )
            .env("HELIOS_TOKEN", TOKEN)
            .env("HELIOS_LOG", "info,tokio_postgres=warn")
            .envs(vars.iter().copied())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn serve");
        Server {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub(crate) fn wait_healthy(&self) {
        wait_for("the server to answer /healthz", WAIT, || {
            http(&self.url, "GET", "/healthz", None).0 == 200
        });
    }

    /// Waits until the process ends by itself; its exit status.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within {within:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs the CLI against this server; returns (success, stdout+stderr).
    pub(crate) fn cli(&self, args: &[&str]) -> (bool, String) {
        output_of(
            Command::new(env!("CARGO_BIN_EXE_helios-repl"))
                .args(args)
                .args(["--server", &self.url])
                .env("HELIOS_TOKEN", TOKEN),
        )
    }

    pub(crate) fn job_json(&self, id: &str) -> serde_json::Value {
        let (ok, out) = self.cli(&["jobs", "show", id, "--json"]);
        assert!(ok, "jobs show {id}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad json ({e}): {out}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- server output ----\n{}", self.output());
        }
    }
}

fn rand_id() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub(crate) fn http(base: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_with_body(base, method, path, token, "application/json", b"")
}

/// A minimal HTTP/1.1 request with a body; returns (status, body).
pub(crate) fn http_with_body(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(body).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = stream.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn job_file(env: &Env, name: &str, tenants: &str, target_db: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[source]\ndsn = \"{} password={PASSWORD}\"\npublication = \"pub_{name}\"\nslot = \"slot_{name}\"\n\
         [tenants]\ninclude = {tenants}\n[[tables]]\nname = \"public.accounts\"\n[[tables]]\nname = \"public.ledger\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{} password={PASSWORD}\"\n",
        env.source_dsn(),
        env.target.dsn(target_db),
    );
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("job file");
    path
}

/// Makes `replica_a` refuse the next update of `public.accounts` (a CHECK the source does
/// not have), and makes that update on the source: the table goes into error state.
pub(crate) fn refuse_an_update_on_replica_a(env: &Env) {
    env.target
        .psql(
            "replica_a",
            "ALTER TABLE public.accounts ADD CONSTRAINT not_777 CHECK (balance <> 777)",
        )
        .expect("constraint");
    env.on_source("UPDATE public.accounts SET balance = 777 WHERE tenant_id = 1 AND id = 1");
}

pub(crate) fn write_load(env: &Env, from: i64, count: i64) {
    env.on_source(&format!(
        "INSERT INTO public.ledger SELECT 1 + n % 10, n, n FROM generate_series({from}, {}) n;
         UPDATE public.accounts SET balance = balance + 1 WHERE id % 3 = {};",
        from + count - 1,
        from % 3
    ));
}

pub(crate) fn converge(env: &Env, db: &str, tenants: &str) {
    for q in [
        format!("SELECT tenant_id, id, balance FROM public.accounts WHERE tenant_id IN ({tenants}) ORDER BY 1, 2"),
        format!("SELECT tenant_id, count(*), count(DISTINCT n), sum(amount) FROM public.ledger WHERE tenant_id IN ({tenants}) GROUP BY 1 ORDER BY 1"),
    ] {
        let expected = env.on_source(&q);
        wait_for(&format!("{db} to converge"), WAIT, || {
            env.target.psql(db, &q).ok().as_deref() == Some(expected.as_str())
        });
    }
}

fn no_password_in(texts: &[(&str, &str)]) {
    for (what, text) in texts {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the password:\n{text}"
        );
    }
}

/// The shop's source, and a target cluster with the metadata store's database and two
/// replicas.
pub(crate) fn setup_env() -> Env {
    let env = Env::start(SHOP);
    for db in ["meta", "replica_a", "replica_b"] {
        env.target.create_database(db).expect("create db");
    }
    env
}

pub(crate) fn setup() -> (Env, Server) {
    let env = setup_env();
    let server = Server::start(&env, free_port().expect("port"));
    (env, server)
}

/// `jobs replace <path>`, which must succeed; its output.
fn replace(server: &Server, path: &Path) -> String {
    let (ok, out) = server.cli(&["jobs", "replace", path.to_str().unwrap_or_default()]);
    assert!(ok, "jobs replace: {out}");
    out
}

pub(crate) fn submit(server: &Server, path: &Path) {
    let (ok, out) = server.cli(&["submit", path.to_str().unwrap_or_default()]);
    assert!(ok, "submit: {out}");
}

#[test]
fn two_jobs_pause_resume_and_delete_with_slot() {
    let (env, server) = setup();
    submit(&server, &job_file(&env, "job_a", "[1, 2, 3]", "replica_a"));
    submit(&server, &job_file(&env, "job_b", "[4, 5]", "replica_b"));
    let (ok, dup) = server.cli(&[
        "submit",
        job_file(&env, "job_a", "[1]", "replica_a")
            .to_str()
            .unwrap_or_default(),
    ]);
    assert!(
        !ok && dup.contains("409"),
        "a second job_a is refused: {dup}"
    );

    // A job that cannot work (its table does not exist) fails alone, with the reason.
    let bad = job_file(&env, "job_bad", "[9]", "replica_a");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad)
            .unwrap()
            .replace("public.ledger", "public.nope"),
    )
    .unwrap();
    submit(&server, &bad);
    wait_for("job_bad to fail", WAIT, || {
        server.job_json("job_bad")["state"] == "failed"
    });
    let reason = server.job_json("job_bad")["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("public.nope"),
        "the reason names the table: {reason}"
    );

    write_load(&env, 1, 500);
    converge(&env, "replica_a", "1, 2, 3");
    converge(&env, "replica_b", "4, 5");
    // The snapshot's figures stay in the status: two tables into one target, the 40
    // accounts of tenants 4 and 5 (the ledger was empty then).
    let snapshot = &server.job_json("job_b")["snapshot"];
    assert_eq!(snapshot["loads_done"], 2, "{snapshot}");
    assert_eq!(snapshot["loads_total"], 2, "{snapshot}");
    assert_eq!(snapshot["rows"], 40, "{snapshot}");
    assert!(snapshot["bytes"].as_u64() > Some(0), "{snapshot}");
    let (ok, shown) = server.cli(&["jobs", "show", "job_b"]);
    assert!(
        ok && shown.contains("snapshot: 2/2 table loads, 40 rows"),
        "{shown}"
    );
    assert_eq!(
        env.target
            .psql(
                "replica_a",
                "SELECT count(*) FROM public.ledger WHERE tenant_id NOT IN (1, 2, 3)"
            )
            .unwrap(),
        "0"
    );

    let (ok, out) = server.cli(&["jobs", "pause", "job_a"]);
    assert!(ok, "pause: {out}");
    wait_for("job_a paused", WAIT, || {
        server.job_json("job_a")["state"] == "paused"
    });
    let before = env
        .target
        .psql("replica_a", "SELECT count(*) FROM public.ledger")
        .unwrap();
    write_load(&env, 501, 500);
    converge(&env, "replica_b", "4, 5");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env.target
            .psql("replica_a", "SELECT count(*) FROM public.ledger")
            .unwrap(),
        before,
        "paused job applies nothing"
    );

    let (ok, out) = server.cli(&["jobs", "resume", "job_a"]);
    assert!(ok, "resume: {out}");
    converge(&env, "replica_a", "1, 2, 3");

    let (ok, table) = server.cli(&["jobs", "list"]);
    assert!(
        ok && table.contains("job_a") && table.contains("job_b") && table.contains("STATE"),
        "{table}"
    );
    let status = server.job_json("job_b");
    assert_eq!(status["state"], "streaming");
    assert_eq!(status["tenant_status"].as_array().map(Vec::len), Some(2));
    let lag = status["tenant_status"][0]["lag_seconds"]
        .as_f64()
        .unwrap_or(-1.0);
    assert!(
        lag > 0.0 && lag < 60.0,
        "per-tenant lag is measured: {status}"
    );
    assert!(
        status["tenant_status"][0]["durable_lsn"].is_string(),
        "{status}"
    );

    // Staging tables an unfinished snapshot would leave (`helios_load_<oid>_<job digest>`):
    // deleting job_a with its slot drops job_a's, not job_b's.
    let leftover = |job: &str| {
        format!(
            "DO $$ BEGIN EXECUTE format('CREATE TABLE public.%I (id int)', \
             'helios_load_1_' || substr(encode(sha256('{job}'::bytea), 'hex'), 1, 8)); END $$;"
        )
    };
    for job in ["job_a", "job_b"] {
        env.target
            .psql("replica_a", &leftover(job))
            .expect("a leftover staging table");
    }
    let (ok, out) = server.cli(&["jobs", "stop", "job_a", "--drop-slot"]);
    assert!(ok, "stop: {out}");
    let staged = env
        .target
        .psql(
            "replica_a",
            "SELECT string_agg(relname, ',') FROM pg_class WHERE relname LIKE 'helios_load%'",
        )
        .expect("staging tables");
    let job_b_digest = env
        .target
        .psql(
            "replica_a",
            "SELECT substr(encode(sha256('job_b'::bytea), 'hex'), 1, 8)",
        )
        .expect("digest");
    assert_eq!(
        staged.trim(),
        format!("helios_load_1_{}", job_b_digest.trim()),
        "job_a's staging table dropped with the job, job_b's kept"
    );
    assert_eq!(
        env.on_source("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_job_a'"),
        "0"
    );
    assert_eq!(
        env.on_source("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_job_b'"),
        "1"
    );
    let (status, _) = http(&server.url, "GET", "/v1/jobs/job_a", Some(TOKEN));
    assert_eq!(status, 404);
    // job_b still flows.
    write_load(&env, 1001, 100);
    converge(&env, "replica_b", "4, 5");

    // Tokens, metrics and passwords.
    for path in ["/v1/jobs", "/v1/jobs/job_b", "/v1/tenants/4"] {
        assert_eq!(
            http(&server.url, "GET", path, None).0,
            401,
            "{path} without token"
        );
        assert_eq!(
            http(&server.url, "GET", path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
    }
    let (status, tenant) = http(&server.url, "GET", "/v1/tenants/4", Some(TOKEN));
    assert!(
        status == 200 && tenant.contains("job_b"),
        "{status} {tenant}"
    );
    let (status, metrics) = http(&server.url, "GET", "/metrics", None);
    assert_eq!(status, 200);
    check_exposition(&metrics);
    let rows = sample(
        &metrics,
        "helios_rows_replicated_total",
        &["job=\"job_b\"", "tenant=\"4\"", "op=\"upsert\""],
    );
    assert!(rows > 0.0, "rows counted for tenant 4:\n{metrics}");
    write_load(&env, 2001, 200);
    converge(&env, "replica_b", "4, 5");
    wait_for("the rows counter to move", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        sample(
            &m,
            "helios_rows_replicated_total",
            &["job=\"job_b\"", "tenant=\"4\"", "op=\"upsert\""],
        ) > rows
    });
    // The replication socket's reads are counted (none waited for a batch: job_b has been
    // caught up since its snapshot, and the batched count is a series of its own).
    wait_for("the socket reads in /metrics", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        let job = ["job=\"job_b\""];
        sample(&m, "helios_source_socket_reads_total", &job) > 0.0
            && m.contains("helios_source_batched_reads_total{job=\"job_b\"}")
    });
    // The streamed rows' transactions were timed stage by stage (the snapshot's are not).
    wait_for("the transactions' stages in /metrics", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        ["source_to_reader", "reader_to_sink", "reader_to_durable"]
            .iter()
            .all(|stage| {
                let stage = format!("stage=\"{stage}\"");
                sample(
                    &m,
                    "helios_transaction_stage_seconds_count",
                    &["job=\"job_b\"", "sink=\"postgres\"", &stage],
                ) > 0.0
            })
    });
    // The sink's round trip to its target, and `auto`'s choice from it (one in flight
    // below 0.6 ms, eight from there on; a local target is well under it unless the
    // machine is loaded).
    wait_for("the round trip and auto's choice in /metrics", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        let labels = ["job=\"job_b\"", "sink=\"postgres\""];
        let round_trip = sample(&m, "helios_sink_round_trip_seconds", &labels);
        let in_flight = sample(&m, "helios_sink_max_in_flight", &labels);
        let auto = if round_trip >= 0.0006 { 8.0 } else { 1.0 };
        round_trip > 0.0 && round_trip < 0.1 && in_flight == auto
    });
    // The replication slot's WAL, in the metrics and the job's status (no
    // max_slot_wal_keep_size on the source: no safe-bytes series, null in the status).
    wait_for("the slot's WAL in /metrics and the status", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        let job = server.job_json("job_b");
        m.contains("helios_source_slot_retained_wal_bytes{job=\"job_b\"}")
            && !m.contains("helios_source_slot_safe_wal_bytes{job=\"job_b\"}")
            && job["slot"]["wal_status"] == "reserved"
            && job["slot"]["retained_wal_bytes"].as_u64().is_some()
            && job["slot"]["safe_wal_bytes"].is_null()
    });
    let (_, list) = http(&server.url, "GET", "/v1/jobs", Some(TOKEN));
    let (_, json_out) = server.cli(&["jobs", "list", "--json"]);
    let events = env
        .target
        .psql(
            "meta",
            "SELECT string_agg(coalesce(detail, ''), ' ') FROM helios_meta.replication_events",
        )
        .unwrap();
    let specs = env
        .target
        .psql(
            "meta",
            "SELECT string_agg(spec::text, ' ') FROM helios_meta.replication_configs",
        )
        .unwrap();
    no_password_in(&[
        ("GET /v1/jobs", &list),
        ("jobs --json", &json_out),
        ("metrics", &metrics),
        ("server log", &server.output()),
        ("events", &events),
        ("stored specs", &specs),
    ]);

    // Deleting job_b without its slot drops its staging leftovers too (a new job of the
    // name would snapshot afresh), and keeps the slot.
    env.target
        .psql("replica_b", &leftover("job_b"))
        .expect("a leftover staging table");
    let (ok, out) = server.cli(&["jobs", "stop", "job_b"]);
    assert!(ok, "stop: {out}");
    assert_eq!(
        env.target
            .psql(
                "replica_b",
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'helios_load%'"
            )
            .expect("staging tables"),
        "0",
        "job_b's staging table dropped with the job"
    );
    assert_eq!(
        env.on_source("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'slot_job_b'"),
        "1",
        "the slot stays without --drop-slot"
    );
}

#[test]
fn a_killed_server_resumes_every_job_from_its_checkpoints() {
    let (env, mut server) = setup();
    let env = Arc::new(env);
    submit(
        &server,
        &job_file(&env, "job_c", "[1, 2, 3, 4, 5]", "replica_a"),
    );
    submit(&server, &job_file(&env, "job_d", "[6, 7, 8]", "replica_b"));
    wait_for("both jobs to stream", WAIT, || {
        server.job_json("job_c")["state"] == "streaming"
            && server.job_json("job_d")["state"] == "streaming"
    });
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (env, stop) = (env.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                write_load(&env, n, 50);
                n += 50;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    let port = server
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let server = Server::start(&env, port);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    converge(&env, "replica_a", "1, 2, 3, 4, 5");
    converge(&env, "replica_b", "6, 7, 8");
    for db in ["replica_a", "replica_b"] {
        let dupes = env
            .target
            .psql(
                db,
                "SELECT count(*) - count(DISTINCT (tenant_id, n)) FROM public.ledger",
            )
            .unwrap();
        assert_eq!(dupes, "0", "no duplicates in {db}");
    }
    assert!(
        server.output().contains("resuming job"),
        "{}",
        server.output()
    );
}

#[test]
fn a_replaced_spec_loads_the_added_tenant_and_survives_a_server_restart() {
    let (env, mut server) = setup();
    submit(&server, &job_file(&env, "job_e", "[1, 2]", "replica_a"));
    wait_for("the job to stream", WAIT, || {
        server.job_json("job_e")["state"] == "streaming"
    });
    write_load(&env, 1, 200);
    converge(&env, "replica_a", "1, 2");

    // Tenant 3 joins over the API; its rows (and the ledger rows written meanwhile, in
    // the stream and in the load alike) arrive once.
    let out = replace(&server, &job_file(&env, "job_e", "[1, 2, 3]", "replica_a"));
    assert!(out.contains("job_e"), "{out}");
    write_load(&env, 201, 200);
    wait_for("the job to stream again", WAIT, || {
        server.job_json("job_e")["state"] == "streaming"
    });
    converge(&env, "replica_a", "1, 2, 3");
    let dupes = env
        .target
        .psql(
            "replica_a",
            "SELECT count(*) - count(DISTINCT (tenant_id, n)) FROM public.ledger",
        )
        .unwrap();
    assert_eq!(dupes, "0");
    assert!(
        server.output().contains("backfill loaded"),
        "{}",
        server.output()
    );
    let status = server.job_json("job_e");
    assert_eq!(status["tenants"], serde_json::json!(["1", "2", "3"]));
    assert_eq!(status["version"], 2);
    // The status shows the backfill's loads as a snapshot's: tenant 3 of both tables.
    let tenant_3_rows: u64 = env
        .target
        .psql("replica_a", "SELECT (SELECT count(*) FROM public.accounts WHERE tenant_id = 3) + (SELECT count(*) FROM public.ledger WHERE tenant_id = 3)")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert_eq!(status["snapshot"]["loads_total"], 2, "{status}");
    assert_eq!(status["snapshot"]["loads_done"], 2, "{status}");
    let loaded = status["snapshot"]["rows"].as_u64().unwrap_or(0);
    assert!(loaded > 0 && loaded <= tenant_3_rows, "{status}");

    // The same spec again changes nothing: no new version.
    replace(&server, &job_file(&env, "job_e", "[1, 2, 3]", "replica_a"));
    assert_eq!(server.job_json("job_e")["version"], 2);

    // The slot cannot change: 422 naming the field, and the job runs on as it was.
    let moved = job_file(&env, "job_e", "[1, 2, 3]", "replica_a");
    let text = std::fs::read_to_string(&moved).unwrap_or_default();
    std::fs::write(&moved, text.replace("slot_job_e", "slot_other")).expect("job file");
    let (ok, out) = server.cli(&["jobs", "replace", moved.to_str().unwrap_or_default()]);
    assert!(
        !ok && out.contains("422") && out.contains("source.slot"),
        "{out}"
    );
    no_password_in(&[("jobs replace", &out)]);

    // The replaced spec is the one a restarted server runs.
    server.kill();
    let server = Server::start(&env, free_port().expect("port"));
    wait_for("the job to stream after the restart", WAIT, || {
        server.job_json("job_e")["state"] == "streaming"
    });
    assert_eq!(server.job_json("job_e")["version"], 2);
    write_load(&env, 401, 200);
    converge(&env, "replica_a", "1, 2, 3");

    // The same tables as a pattern: the status lists the tables it carries, and a table
    // created later joins them.
    let pattern = job_file(&env, "job_e", "[1, 2, 3]", "replica_a");
    let text = std::fs::read_to_string(&pattern).unwrap_or_default();
    let named = "[[tables]]\nname = \"public.accounts\"\n[[tables]]\nname = \"public.ledger\"\n";
    assert!(text.contains(named), "{text}");
    std::fs::write(
        &pattern,
        text.replace(named, "[[tables]]\nname = \"public.*\"\n"),
    )
    .expect("job file");
    replace(&server, &pattern);
    let tables = |names: &[&str]| serde_json::json!(names);
    wait_for("the pattern's tables in the status", WAIT, || {
        let status = server.job_json("job_e");
        status["state"] == "streaming"
            && status["tables"] == tables(&["public.accounts", "public.ledger"])
    });
    let status = server.job_json("job_e");
    assert_eq!(status["version"], 3);
    wait_for("the left-out table in /metrics", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        m.contains("helios_job_tables_left_out{job=\"job_e\"} 1")
    });
    assert_eq!(
        status["tables_left_out"],
        serde_json::json!([{"table": "public.plans", "pattern": "public.*",
            "reason": "it has no tenant column `tenant_id`"}]),
        "{status}"
    );
    env.on_source(
        "CREATE TABLE public.budgets (tenant_id int NOT NULL, id int, cap int, PRIMARY KEY (tenant_id, id)); \
         INSERT INTO public.budgets SELECT t, 1, 10 * t FROM generate_series(1, 5) t;",
    );
    wait_for("the new table in the status", WAIT, || {
        server.job_json("job_e")["tables"]
            == tables(&["public.accounts", "public.budgets", "public.ledger"])
    });
    let budgets = "SELECT * FROM public.budgets WHERE tenant_id IN (1, 2, 3) ORDER BY 1";
    let expected = env.on_source(budgets);
    wait_for("budgets on the target", WAIT, || {
        env.target.psql("replica_a", budgets).ok().as_deref() == Some(expected.as_str())
    });
    write_load(&env, 601, 100);
    converge(&env, "replica_a", "1, 2, 3");
}

#[test]
fn a_table_in_error_is_resynced_over_the_api_once_the_target_is_mended() {
    let (env, server) = setup();
    submit(&server, &job_file(&env, "job_r", "[1, 2]", "replica_a"));
    wait_for("the job to stream", WAIT, || {
        server.job_json("job_r")["state"] == "streaming"
    });
    write_load(&env, 1, 100);
    converge(&env, "replica_a", "1, 2");
    let state = || {
        env.target
            .psql(
                "replica_a",
                "SELECT state FROM helios.table_state WHERE table_name = 'public.accounts'",
            )
            .unwrap_or_default()
    };
    refuse_an_update_on_replica_a(&env);
    wait_for("the table error to be recorded", WAIT, || {
        state() == "error"
    });
    write_load(&env, 101, 100);
    // The status and the metrics show it, with what to do.
    wait_for("jobs show to list the table in error", WAIT, || {
        let (ok, out) = server.cli(&["jobs", "show", "job_r"]);
        ok && out.contains("table in error: public.accounts (sink 0)")
            && out.contains("not_777")
            && out.contains("jobs resync job_r public.accounts")
    });
    wait_for("the metric to count the table in error", WAIT, || {
        let (_, m) = http(&server.url, "GET", "/metrics", None);
        sample(&m, "helios_sink_tables_in_error", &["job=\"job_r\""]) == 1.0
    });

    // A name that is not the job's: 422 naming it, and the job runs on.
    let (ok, out) = server.cli(&["jobs", "resync", "job_r", "public.nope"]);
    assert!(
        !ok && out.contains("422") && out.contains("`public.nope` is not a table of job `job_r`"),
        "{out}"
    );
    assert_eq!(server.job_json("job_r")["state"], "streaming");

    env.target
        .psql(
            "replica_a",
            "ALTER TABLE public.accounts DROP CONSTRAINT not_777",
        )
        .expect("drop constraint");
    let (ok, out) = server.cli(&["jobs", "resync", "job_r", "accounts"]);
    assert!(ok && out.contains("job_r"), "{out}");
    wait_for("the job to stream again", WAIT, || {
        server.job_json("job_r")["state"] == "streaming"
    });
    write_load(&env, 201, 100);
    converge(&env, "replica_a", "1, 2");
    assert_eq!(state(), "", "the error state is gone");
    assert_eq!(
        server.job_json("job_r")["tables_in_error"],
        serde_json::json!([])
    );
    assert!(
        server.output().contains("resync requested"),
        "{}",
        server.output()
    );
}

/// Checks the Prometheus text format: every sample belongs to a declared family and has a
/// numeric value.
fn check_exposition(text: &str) {
    let mut families = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.insert(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name = name_labels.split('{').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value: {line}"
        );
        assert!(
            families.iter().any(|f| name == f
                || name
                    .strip_prefix(f.as_str())
                    .is_some_and(
                        |s| ["_total", "_bucket", "_sum", "_count", "_created"].contains(&s)
                    )),
            "sample without a family: {line}"
        );
    }
    assert!(families.len() >= 8, "families: {families:?}");
}

/// The value of the first sample of `name` whose labels contain all of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()))
        .unwrap_or(0.0)
}

#[test]
fn a_stuck_sink_does_not_stall_other_jobs_on_the_shared_workers() {
    let (env, server) = setup();
    submit(
        &server,
        &job_file(&env, "job_e", "[1, 2, 3, 4, 5]", "replica_a"),
    );
    submit(
        &server,
        &job_file(&env, "job_f", "[6, 7, 8, 9, 10]", "replica_b"),
    );
    write_load(&env, 1, 50);
    converge(&env, "replica_a", "1, 2, 3, 4, 5");
    converge(&env, "replica_b", "6, 7, 8, 9, 10");

    // Block job_e's sink: hold a lock on its checkpoint table in its target.
    let mut locker = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &env.target.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "replica_a",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    let mut stdin = locker.stdin.take().expect("stdin");
    writeln!(
        stdin,
        "BEGIN; LOCK TABLE helios.checkpoints IN ACCESS EXCLUSIVE MODE;"
    )
    .expect("lock");
    stdin.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));

    // Many small transactions for both jobs: far more batches than a sink queue holds.
    let mut sql = String::new();
    for n in 0..1500 {
        sql.push_str(&format!(
            "BEGIN; INSERT INTO public.ledger VALUES ({}, {}, 1), ({}, {}, 1); COMMIT;\n",
            1 + n % 5,
            100_000 + n,
            6 + n % 5,
            100_000 + n
        ));
    }
    env.on_source(&sql);
    converge(&env, "replica_b", "6, 7, 8, 9, 10");
    assert_ne!(
        env.target
            .psql(
                "replica_a",
                "SELECT count(*) FROM public.ledger WHERE n >= 100000"
            )
            .unwrap(),
        "1500",
        "job_e was blocked"
    );

    writeln!(stdin, "ROLLBACK;").expect("unlock");
    drop(stdin);
    let _ = locker.wait();
    converge(&env, "replica_a", "1, 2, 3, 4, 5");
}

#[test]
fn malformed_submissions_get_a_4xx_naming_the_problem_and_the_server_keeps_serving() {
    let (env, server) = setup();
    let good = std::fs::read_to_string(job_file(&env, "job_ok", "[1]", "replica_a")).unwrap();
    let toml = "application/toml";
    let json = "application/json";
    let huge = format!("{good}\n# {}", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<(String, &str, &str)> = vec![
        (good.replace("name = \"job_ok\"", "name = 3"), toml, "name"),
        (good.replace("name = \"job_ok\"\n", ""), toml, "name"),
        (good.replace("[source]", "[sourc]"), toml, "sourc"),
        (
            good.replace("slot = \"slot_job_ok\"", "slot = \"Bad Slot!\""),
            toml,
            "source.slot",
        ),
        (
            good.replace("publication = \"pub_job_ok\"\n", ""),
            toml,
            "publication",
        ),
        (
            good.replace("include = [1]", "include = 5"),
            toml,
            "tenants.include",
        ),
        (
            good.replace("include = [1]", "include = []"),
            toml,
            "tenants.include",
        ),
        (
            good.replace("include = [1]", "include = [1, 1]"),
            toml,
            "tenants.include",
        ),
        (
            good.replace("kind = \"postgres\"", "kind = \"kafka\""),
            toml,
            "sinks[0].kind",
        ),
        (
            good.replace(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = \"x\"",
            ),
            toml,
            "sinks[0].batch_max_rows",
        ),
        (
            good.replace(
                "kind = \"postgres\"",
                "kind = \"postgres\"\nbatch_max_rows = 0",
            ),
            toml,
            "sinks[0].batch_max_rows",
        ),
        (
            good.replace("kind = \"postgres\"", "kind = \"postgres\"\nretries = 3"),
            toml,
            "retries",
        ),
        (
            good.replace("name = \"public.ledger\"", "name = \"public.accounts\""),
            toml,
            "tables",
        ),
        (
            good.replace("name = \"public.ledger\"", "name = \"no_schema\""),
            toml,
            "tables[1].name",
        ),
        (
            good.split("[[sinks]]")
                .next()
                .unwrap_or_default()
                .to_string(),
            toml,
            "sinks",
        ),
        ("name = \"x\"\n[source\n".to_string(), toml, "line"),
        ("{\"name\": \"x\",".to_string(), json, "line"),
        ("{\"name\": 7}".to_string(), json, "name"),
        (String::new(), toml, "error"),
        (huge, toml, "error"),
    ];
    assert!(cases.len() >= 20);
    for (body, content_type, needle) in &cases {
        let (status, answer) = http_with_body(
            &server.url,
            "POST",
            "/v1/jobs",
            Some(TOKEN),
            content_type,
            body.as_bytes(),
        );
        assert!(
            (400..500).contains(&status),
            "{needle}: status {status}: {answer}"
        );
        assert!(
            answer.contains("\"error\""),
            "{needle}: JSON error body: {answer}"
        );
        assert!(
            answer.contains(needle),
            "{needle}: the error names it: {answer}"
        );
        assert!(
            !answer.contains(PASSWORD),
            "no password in errors: {answer}"
        );
    }
    let (status, answer) = http_with_body(
        &server.url,
        "POST",
        "/v1/jobs",
        Some(TOKEN),
        toml,
        &[0xff, 0xfe, 0x00],
    );
    assert!(
        (400..500).contains(&status),
        "invalid UTF-8: {status} {answer}"
    );
    let (status, answer) = http_with_body(
        &server.url,
        "POST",
        "/v1/jobs",
        Some(TOKEN),
        "text/html",
        good.as_bytes(),
    );
    assert_eq!(status, 415, "unsupported content type: {answer}");
    // Still serving: a valid job is accepted and streams.
    let (status, answer) = http_with_body(
        &server.url,
        "POST",
        "/v1/jobs",
        Some(TOKEN),
        toml,
        good.as_bytes(),
    );
    assert_eq!(status, 201, "{answer}");
    wait_for("job_ok to stream", WAIT, || {
        server.job_json("job_ok")["state"] == "streaming"
    });
    no_password_in(&[("server log", &server.output())]);
}
