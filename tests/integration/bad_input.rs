//! Bad input gets a clear error and loses nothing: malformed job files are rejected by the
//! binary with the field named; an unreachable source is retried with back-off, not a panic.

use std::process::Command;
use std::time::Duration;

use crate::harness::{wait_for, Replicator};

fn run_with_job(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, text).expect("write job");
    let out = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
        .args(["run", "--job"])
        .arg(&path)
        .output()
        .expect("run helios-repl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

const GOOD: &str = r#"name = "bad-input"
[source]
dsn = "host=127.0.0.1 port=1 user=postgres dbname=app"
publication = "p"
slot = "s"
[tenants]
include = [1]
[[tables]]
name = "public.t"
[[sinks]]
kind = "postgres"
dsn = "host=127.0.0.1 port=1 user=postgres password=hunter2 dbname=replica"
"#;

#[test]
fn malformed_job_files_name_the_field() {
    let cases = [
        (
            GOOD.replace(
                "dsn = \"host=127.0.0.1 port=1 user=postgres dbname=app\"\n",
                "",
            ),
            "source.dsn",
        ),
        (
            GOOD.replace("kind = \"postgres\"", "kind = \"kafka\""),
            "sinks[0].kind",
        ),
        (
            GOOD.replace("include = [1]", "include = [1]\ncolumn = 5"),
            "tenants.column",
        ),
        (
            GOOD.replace("publication = \"p\"", "publication = \"p\"\npasswd = \"x\""),
            "source.passwd",
        ),
        (
            GOOD.replace("[[tables]]\nname = \"public.t\"\n", ""),
            "tables",
        ),
    ];
    for (text, field) in cases {
        let (code, out) = run_with_job(&text);
        assert_ne!(code, Some(0), "must fail for {field}:\n{out}");
        assert!(out.contains(field), "error names `{field}`:\n{out}");
        assert!(!out.contains("panicked"), "no panic:\n{out}");
        assert!(!out.contains("hunter2"), "no password in errors:\n{out}");
    }
}

#[test]
fn thread_counts_of_zero_are_rejected_by_name() {
    for flag in ["--workers", "--async-threads"] {
        let out = Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["run", "--job", "job.toml", flag, "0"])
            .output()
            .expect("run helios-repl");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} 0 must fail:\n{text}");
        assert!(
            text.contains(flag) && text.contains("at least 1"),
            "the error names {flag}:\n{text}"
        );
    }
}

#[test]
fn unreachable_source_is_retried_with_backoff_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("job.toml");
    std::fs::write(&path, GOOD).expect("write job");
    let mut repl = Replicator::start(&path);
    wait_for("two retries to be logged", Duration::from_secs(20), || {
        repl.output()
            .matches("cannot start the job yet; retrying")
            .count()
            >= 2
    });
    assert!(
        repl.is_running(),
        "still running after retries:\n{}",
        repl.output()
    );
    let out = repl.output();
    assert!(
        out.contains("cannot connect to the source"),
        "says what failed:\n{out}"
    );
    assert!(!out.contains("hunter2"), "no password in logs:\n{out}");
    assert_eq!(
        repl.stop().code(),
        Some(0),
        "stops cleanly on SIGTERM:\n{}",
        repl.output()
    );
}
