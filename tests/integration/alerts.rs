//! The Prometheus alert rules we ship (`schemas/prometheus-alerts.yml`): promtool accepts
//! them and their unit tests pass (`tests/alerts/helios-alerts.test.yml`), and a real
//! Prometheus scraping a real `helios-repl serve` fires `HeliosTablesInError` when a
//! target refuses a change, and resolves it once the table is reloaded, with nothing else
//! firing meanwhile. Prometheus and promtool come from Debian's `prometheus` package
//! (`scripts/install-deps.sh` takes the two binaries out of it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use helios_repl::embedded::pg_cluster::free_port;

use crate::harness::{output_of, wait_for};
use crate::serve_api::{
    converge, job_file, refuse_an_update_on_replica_a, setup, submit, write_load,
};

const WAIT: Duration = Duration::from_secs(90);

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/prometheus-alerts.yml");
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/alerts/helios-alerts.test.yml"
);

/// `prometheus` or `promtool`, from `HELIOS_PROMETHEUS_DIR` (where `scripts/test.sh`
/// points) or the directory `scripts/install-deps.sh` fills by default.
fn binary(name: &str) -> PathBuf {
    let dir = std::env::var_os("HELIOS_PROMETHEUS_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/helios-repl/prometheus"))
        })
        .expect("HELIOS_PROMETHEUS_DIR or HOME");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-deps.sh (or set HELIOS_PROMETHEUS_DIR)",
        path.display()
    );
    path
}

fn promtool(args: &[&str]) -> (bool, String) {
    output_of(Command::new(binary("promtool")).args(args))
}

#[test]
fn the_alert_rules_pass_promtools_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", RULES]);
    assert!(ok && out.contains("SUCCESS: 9 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// A Prometheus server on a free port, with its data in `dir`; killed when dropped.
pub(crate) struct Prometheus {
    child: Child,
    log: PathBuf,
    addr: String,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second and evaluates `rules` every second.
    /// Over HTTPS trusting `https_ca` if given.
    pub(crate) fn start(
        dir: &Path,
        target: &str,
        rules: &str,
        https_ca: Option<&Path>,
    ) -> Prometheus {
        let rules_path = dir.join("rules.yml");
        std::fs::write(&rules_path, rules).expect("write rules");
        let https = https_ca
            .map(|ca| {
                format!(
                    "    scheme: https\n    tls_config:\n      ca_file: '{}'\n",
                    ca.display()
                )
            })
            .unwrap_or_default();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: helios\n    honor_labels: true\n{https}    \
             static_configs:\n      - targets: ['{target}']\n",
            rules_path.display()
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let addr = format!("127.0.0.1:{}", free_port().expect("port"));
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(binary("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, log, addr };
        wait_for("Prometheus to be ready", WAIT, || {
            get(&p.addr, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
        p
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The alerts firing now: (alertname, job, sink) of each.
    fn firing(&self) -> Vec<(String, String, String)> {
        let (status, body) = get(&self.addr, "/api/v1/alerts").expect("GET /api/v1/alerts");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
        let label = |a: &serde_json::Value, name: &str| {
            a["labels"][name].as_str().unwrap_or_default().to_string()
        };
        v["data"]["alerts"]
            .as_array()
            .map(|alerts| {
                alerts
                    .iter()
                    .filter(|a| a["state"] == "firing")
                    .map(|a| (label(a, "alertname"), label(a, "job"), label(a, "sink")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The scrape target's health (`up`, `down`, `unknown`) and its last error.
    pub(crate) fn target_health(&self) -> (String, String) {
        let Some((200, body)) = get(&self.addr, "/api/v1/targets") else {
            return (String::new(), String::new());
        };
        let v: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
        let t = &v["data"]["activeTargets"][0];
        (
            t["health"].as_str().unwrap_or_default().to_string(),
            t["lastError"].as_str().unwrap_or_default().to_string(),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- prometheus output ----\n{}", self.output());
        }
    }
}

/// `GET path` as HTTP/1.0, so the answer is never chunked: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = resp.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// The shipped rules with every `for:` at 0s, so a test need not wait minutes.
pub(crate) fn rules_without_waits() -> String {
    let text = std::fs::read_to_string(RULES).expect("read rules");
    text.lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 0s"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn prometheus_scraping_a_server_fires_tables_in_error_and_resolves_it_after_the_resync() {
    let (env, server) = setup();
    let prometheus = Prometheus::start(
        env.dir.path(),
        server.url.trim_start_matches("http://"),
        &rules_without_waits(),
        None,
    );
    submit(&server, &job_file(&env, "job_al", "[1, 2]", "replica_a"));
    wait_for("the job to stream", WAIT, || {
        server.job_json("job_al")["state"] == "streaming"
    });
    write_load(&env, 1, 100);
    converge(&env, "replica_a", "1, 2");
    wait_for("Prometheus to scrape the server", WAIT, || {
        prometheus.target_health().0 == "up"
    });
    // Streaming, caught up: nothing fires.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        prometheus.firing(),
        Vec::new(),
        "{:?}",
        prometheus.target_health()
    );

    refuse_an_update_on_replica_a(&env);
    let expected = (
        "HeliosTablesInError".to_string(),
        "job_al".to_string(),
        "postgres".to_string(),
    );
    wait_for("HeliosTablesInError to fire", WAIT, || {
        prometheus.firing().contains(&expected)
    });
    assert_eq!(prometheus.firing(), vec![expected], "only that alert fires");

    env.target
        .psql(
            "replica_a",
            "ALTER TABLE public.accounts DROP CONSTRAINT not_777",
        )
        .expect("drop constraint");
    let (ok, out) = server.cli(&["jobs", "resync", "job_al", "accounts"]);
    assert!(ok, "{out}");
    write_load(&env, 101, 100);
    converge(&env, "replica_a", "1, 2");
    wait_for("the alert to resolve", WAIT, || {
        prometheus.firing().is_empty()
    });
    let (health, error) = prometheus.target_health();
    assert_eq!((health.as_str(), error.as_str()), ("up", ""));
}
