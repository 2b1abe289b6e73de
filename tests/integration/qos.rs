//! Tenant tiers against a bandwidth-limited sink, and the access signals of the hotness
//! predictor (REST and NATS), with its figures in `/metrics` and its model in the
//! metadata store.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use helios_repl::embedded::pg_cluster::free_port;

use crate::harness::{wait_for, Env, Replicator};
use crate::serve_api::{http, http_with_body, Server, TOKEN};

const WAIT: Duration = Duration::from_secs(120);

/// `applied_at` is set on the target by a trigger that fires for our apply sessions.
const EVENTS: &str = "CREATE SCHEMA q;
CREATE TABLE q.events (tenant_id int NOT NULL, id bigint NOT NULL, payload text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(), applied_at timestamptz,
    PRIMARY KEY (tenant_id, id));";

const STAMP: &str = "CREATE FUNCTION q.stamp() RETURNS trigger LANGUAGE plpgsql
    AS $$BEGIN NEW.applied_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER stamp BEFORE INSERT ON q.events FOR EACH ROW EXECUTE FUNCTION q.stamp();
ALTER TABLE q.events ENABLE ALWAYS TRIGGER stamp;";

fn qos_job(env: &Env, name: &str, sink_extra: &str, qos: &str) -> std::path::PathBuf {
    let text = format!(
        "name = \"{name}\"\n[source]\ndsn = \"{}\"\npublication = \"pub_{name}\"\nslot = \"slot_{name}\"\n\
         [tenants]\ninclude = [1, 2, 3]\n[[tables]]\nname = \"q.events\"\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n{sink_extra}\n{qos}\n",
        env.source_dsn(),
        env.target_dsn(),
    );
    let path = env.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("job file");
    path
}

/// Lag percentiles (ms) of a tenant's rows on the target: applied minus created.
fn lag_ms(env: &Env, tenant: i32) -> (f64, f64, f64) {
    let out = env.on_target(&format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l)
           FROM (SELECT extract(epoch FROM applied_at - created_at) * 1000 AS l
                   FROM q.events WHERE tenant_id = {tenant}) s"
    ));
    let v: Vec<f64> = out
        .trim()
        .split('|')
        .map(|x| x.trim().parse().unwrap_or(f64::NAN))
        .collect();
    (v[0], v[1], v[2])
}

/// A premium tenant writing a row every 50 ms keeps its lag under its 1 s budget while a
/// standard tenant floods a sink limited to 2000 rows/s with 20,000 rows (10 s of work):
/// the scheduler serves premium first. Every row of both still arrives.
#[test]
fn premium_lag_stays_within_budget_while_standard_floods_a_limited_sink() {
    let env = Env::start(EVENTS);
    env.target.psql("replica", EVENTS).expect("target table");
    env.target.psql("replica", STAMP).expect("target trigger");
    let job = qos_job(
        &env,
        "tiers",
        "batch_max_rows = 1000\nmax_rows_per_sec = 2000",
        "[qos]\npredictor = \"heuristic\"\nwindow_secs = 1\n[qos.tenants]\n\"1\" = \"premium\"\n[qos.lag_budget_ms]\npremium = 1000",
    );
    let mut rep = Replicator::start(&job);
    wait_for("the job to stream", WAIT, || {
        rep.output().contains("streaming")
    });

    std::thread::scope(|scope| {
        scope.spawn(|| {
            // 40 transactions of 500 rows, as fast as the source takes them.
            for t in 0..40 {
                env.on_source(&format!(
                    "INSERT INTO q.events (tenant_id, id, payload)
                     SELECT 2, g, repeat('x', 40) FROM generate_series({}, {}) g",
                    t * 500,
                    t * 500 + 499
                ));
            }
        });
        let start = Instant::now();
        let mut premium = 0;
        while start.elapsed() < Duration::from_secs(8) {
            env.on_source(&format!(
                "INSERT INTO q.events (tenant_id, id, payload) VALUES (1, {premium}, 'p')"
            ));
            premium += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    env.wait_converged(
        "SELECT tenant_id, count(*) FROM q.events GROUP BY 1 ORDER BY 1",
        WAIT,
    );
    let (p50, p99, pmax) = lag_ms(&env, 1);
    let (s50, s99, smax) = lag_ms(&env, 2);
    eprintln!(
        "premium lag ms p50 {p50:.0} p99 {p99:.0} max {pmax:.0}; standard p50 {s50:.0} p99 {s99:.0} max {smax:.0}"
    );
    assert!(
        smax > 3000.0,
        "the standard flood must saturate the sink for this test to mean anything (max {smax:.0} ms)"
    );
    assert!(
        p99 < 1000.0,
        "premium P99 lag {p99:.0} ms over its 1000 ms budget while standard floods"
    );
    rep.stop();
}

/// A `nats-server` on a free port in a temp dir; killed on drop.
pub(crate) struct Nats {
    child: Child,
    pub(crate) url: String,
}

impl Nats {
    pub(crate) fn start(env: &Env) -> Nats {
        Nats::start_in(env, "nats")
    }

    /// A server whose JetStream store is the directory `store` of the test's directory.
    pub(crate) fn start_in(env: &Env, store: &str) -> Nats {
        let port = free_port().expect("port");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(env.dir.path().join(store))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server (scripts/install-deps.sh installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        wait_for("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nats { child, url }
    }

    /// Publishes one message with the server's own protocol (no client library needed).
    fn publish(&self, subject: &str, payload: &[u8]) {
        use std::io::{BufRead, BufReader, Write};
        let addr = self.url.trim_start_matches("nats://");
        let stream = std::net::TcpStream::connect(addr).expect("connect nats");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut info = String::new();
        reader.read_line(&mut info).expect("INFO");
        let mut w = stream;
        write!(
            w,
            "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .expect("pub");
        w.write_all(payload).expect("payload");
        w.write_all(b"\r\nPING\r\n").expect("ping");
        let mut pong = String::new();
        reader.read_line(&mut pong).expect("PONG");
        assert!(pong.starts_with("PONG"), "nats answered {pong}");
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job_state(server: &Server, job: &str) -> String {
    let (ok, out) = server.cli(&["jobs", "show", job, "--json"]);
    if !ok {
        return String::new();
    }
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Access events over REST and NATS reach the job's predictor: counted in `/metrics`,
/// garbage rejected with the field named (REST) or logged (NATS) without stopping the
/// subscription; the predictor's choice and errors are in `/metrics`, its model and
/// predictions in the metadata store, and a restarted server restores the model.
#[test]
fn access_events_feed_the_predictor_and_its_model_survives_a_restart() {
    let env = Env::start(EVENTS);
    env.target.create_database("meta").expect("meta db");
    let nats = Nats::start(&env);
    let port = free_port().expect("port");
    let args = ["--access-nats-url", nats.url.as_str()];
    let server = Server::spawn(&env, port, &args, &[]);
    server.wait_healthy();
    let job = qos_job(
        &env,
        "hot",
        "",
        "[qos]\nwindow_secs = 1\n[qos.tenants]\n\"1\" = \"premium\"",
    );
    let (ok, out) = server.cli(&["submit", job.to_str().expect("path")]);
    assert!(ok, "submit: {out}");
    wait_for("the job to stream", WAIT, || {
        job_state(&server, "hot") == "streaming"
    });
    env.on_source(
        "INSERT INTO q.events (tenant_id, id, payload) SELECT 1 + g % 3, g, 'x' FROM generate_series(1, 3000) g",
    );

    // REST: good events, then garbage naming its field.
    let good = br#"{"events":[{"tenant":1,"table":"q.events","key":42,"count":5},
        {"tenant":"2","table":"q.events","key_range":[0,2500],"count":30},
        {"tenant":9,"table":"q.events"}]}"#;
    let (status, body) = http_with_body(
        &server.url,
        "POST",
        "/v1/access",
        Some(TOKEN),
        "application/json",
        good,
    );
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["accepted"], 2, "{body}");
    assert_eq!(answer["unmatched"], 1, "tenant 9 is not in the job: {body}");
    for (bad, field) in [
        (
            &br#"{"events":[{"tenant":1,"table":"q.events","count":0}]}"#[..],
            "events[0].count",
        ),
        (
            br#"{"events":[{"tenant":1,"table":"events"}]}"#,
            "events[0].table",
        ),
        (
            br#"{"events":[{"tenant":1,"table":"q.events","key":1,"key_range":[1,2]}]}"#,
            "events[0].key_range",
        ),
        (br#"{"events":[]}"#, "events"),
    ] {
        let (status, body) = http_with_body(
            &server.url,
            "POST",
            "/v1/access",
            Some(TOKEN),
            "application/json",
            bad,
        );
        assert_eq!(status, 422, "{body}");
        assert!(body.contains(field), "{field} not named in {body}");
    }
    let (status, body) = http_with_body(
        &server.url,
        "POST",
        "/v1/access",
        Some(TOKEN),
        "application/json",
        b"{\"events\":[{\"tenant\":1,\"tabel\":\"q.events\"}]}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tabel"), "{body}");

    // NATS: garbage first (must not end the subscription), then good events.
    nats.publish("helios.access", b"not json");
    nats.publish(
        "helios.access.web",
        br#"{"events":[{"tenant":3,"table":"q.events","key":7,"count":11}]}"#,
    );
    // 5 + 30 from REST, 11 from NATS; the window closes every second.
    let mut text = String::new();
    wait_for("access events and predictions in /metrics", WAIT, || {
        text = http(&server.url, "GET", "/metrics", None).1;
        metric(&text, "helios_access_events_total{job=\"hot\"}") == Some(46.0)
            && text.contains("helios_predictor_in_use{job=\"hot\",predictor=")
            && text.contains("helios_prediction_error{job=\"hot\",predictor=\"heuristic\"}")
            && metric(
                &text,
                "helios_tenant_predicted_hotness{job=\"hot\",tenant=\"1\"}",
            )
            .is_some_and(|h| h > 0.0)
    });
    let in_use: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("helios_predictor_in_use{job=\"hot\"") && l.ends_with(" 1"))
        .collect();
    assert_eq!(in_use.len(), 1, "exactly one predictor in use:\n{text}");
    assert!(
        server.output().contains("access event message rejected"),
        "bad NATS message not reported"
    );

    // The metadata store holds the model and the hottest buckets.
    wait_for("the model in helios_meta.ml_models", WAIT, || {
        env.target
            .psql(
                "meta",
                "SELECT windows > 0 FROM helios_meta.ml_models WHERE job = 'hot'",
            )
            .is_ok_and(|o| o.trim() == "t")
    });
    let predicted = env
        .target
        .psql("meta", "SELECT count(*) > 0 FROM helios_meta.access_predictions WHERE job = 'hot' AND tenant = '1'")
        .expect("predictions");
    assert_eq!(predicted.trim(), "t");

    // A restarted server restores the model it saved.
    drop(server);
    let restarted = Server::spawn(&env, port, &args, &[]);
    restarted.wait_healthy();
    wait_for("the saved model to be restored", WAIT, || {
        restarted.output().contains("prediction model restored")
    });
    wait_for("the first rows on the target", WAIT, || {
        env.try_on_target("SELECT count(*) FROM q.events")
            .is_some_and(|n| n.trim() == "3000")
    });

    // A model whose weights overflow to infinity is restored, produces non-finite output,
    // is reset, and replication goes on with the heuristic.
    drop(restarted);
    env.target
        .psql(
            "meta",
            "UPDATE helios_meta.ml_models SET model = jsonb_set(model, '{weights}',              (SELECT jsonb_agg(1e39) FROM jsonb_array_elements(model->'weights'))) WHERE job = 'hot'",
        )
        .expect("poison the model");
    let poisoned = Server::spawn(&env, port, &args, &[]);
    poisoned.wait_healthy();
    wait_for("the poisoned model to be restored", WAIT, || {
        poisoned.output().contains("prediction model restored")
    });
    env.on_source(
        "INSERT INTO q.events (tenant_id, id, payload) SELECT 1 + g % 3, g, 'y' FROM generate_series(3001, 4000) g",
    );
    wait_for("the model to be reset", WAIT, || {
        poisoned.output().contains("prediction model reset")
    });
    wait_for("rows written after the reset on the target", WAIT, || {
        env.try_on_target("SELECT count(*) FROM q.events")
            .is_some_and(|n| n.trim() == "4000")
    });
    wait_for("a predictor in use after the reset", WAIT, || {
        http(&poisoned.url, "GET", "/metrics", None)
            .1
            .lines()
            .any(|l| l.starts_with("helios_predictor_in_use{job=\"hot\"") && l.ends_with(" 1"))
    });
}

/// The source-statistics poller's reading: reads of a table on the source show up as a
/// delta of `pg_stat_user_tables` between two polls; other tables do not.
#[test]
fn source_table_reads_are_read_as_deltas() {
    use helios_repl::cdc::catalog::connect;
    use helios_repl::cdc::source_stats::{deltas, table_reads};
    let env = Env::start(EVENTS);
    env.on_source(
        "CREATE TABLE q.other (id int); \
         CREATE TABLE q.parted (id int) PARTITION BY RANGE (id); \
         CREATE TABLE q.parted_1 PARTITION OF q.parted FOR VALUES FROM (0) TO (10); \
         CREATE TABLE q.parted_2 PARTITION OF q.parted FOR VALUES FROM (10) TO (20)",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tables = vec![
        "q.events".to_string(),
        "q.other".to_string(),
        "q.parted".to_string(),
    ];
    let dsn = env.source_dsn();
    let read = |client: &tokio_postgres::Client| {
        runtime
            .block_on(table_reads(client, &tables))
            .expect("pg_stat_user_tables")
    };
    let client = runtime.block_on(connect(&dsn)).expect("connect");
    let before = read(&client);
    for _ in 0..5 {
        env.on_source("SELECT count(*) FROM q.events");
    }
    env.on_source("SELECT count(*) FROM q.parted WHERE id < 10");
    // The statistics collector publishes a backend's counts when its session ends.
    let mut delta = std::collections::HashMap::new();
    wait_for("the reads in pg_stat_user_tables", WAIT, || {
        runtime
            .block_on(client.batch_execute("SELECT pg_stat_clear_snapshot()"))
            .expect("clear snapshot");
        delta = deltas(&before, &read(&client));
        delta.get("q.events").is_some_and(|n| *n >= 5.0)
            && delta.get("q.parted").is_some_and(|n| *n >= 1.0)
    });
    assert!(!delta.contains_key("q.other"), "{delta:?}");
    assert!(
        before.contains_key("q.parted"),
        "a partitioned table's reads are its partitions': {before:?}"
    );
}
