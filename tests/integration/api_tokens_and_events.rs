//! `serve --read-token` (a token that only reads) and a job's events (`jobs events`,
//! `GET /v1/jobs/{id}/events`): what the reader may and may not do, the state changes and
//! requests in order, and `--events-kept` pruning them.

use std::time::Duration;

use helios_repl::embedded::pg_cluster::free_port;

use crate::harness::wait_for;
use crate::serve_api::{job_file, setup_env, submit, Server};

const WAIT: Duration = Duration::from_secs(90);

/// `--read-token`: a dashboard's token lists and shows jobs and their events, and every
/// change it asks for is refused with 403, naming the admin token; the admin token still
/// does everything.
#[test]
fn a_read_only_token_reads_jobs_and_their_events_but_cannot_change_them() {
    let env = setup_env();
    let server = Server::spawn(
        &env,
        free_port().expect("port"),
        &["--read-token", "dashb0ard"],
        &[],
    );
    server.wait_healthy();
    submit(&server, &job_file(&env, "job_ro", "[1]", "replica_a"));
    let as_reader = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--token", "dashb0ard"]);
        server.cli(&all)
    };
    wait_for("the job to stream", WAIT, || {
        server.job_json("job_ro")["state"] == "streaming"
    });
    let (ok, out) = as_reader(&["jobs", "list"]);
    assert!(ok && out.contains("job_ro"), "{out}");
    let (ok, out) = as_reader(&["jobs", "show", "job_ro"]);
    assert!(ok && out.contains("streaming"), "{out}");
    for change in [
        vec!["jobs", "pause", "job_ro"],
        vec!["jobs", "stop", "job_ro"],
        vec!["jobs", "sync", "job_ro"],
    ] {
        let (ok, out) = as_reader(&change);
        assert!(
            !ok && out.contains("403") && out.contains("read-only token may not"),
            "{change:?}: {out}"
        );
    }
    assert_eq!(server.job_json("job_ro")["state"], "streaming");
    let (ok, out) = server.cli(&["jobs", "pause", "job_ro"]);
    assert!(ok, "{out}");
    wait_for("the job to pause", WAIT, || {
        server.job_json("job_ro")["state"] == "paused"
    });
    // What happened, newest first, for the reader too.
    wait_for("the pause in the job's events", WAIT, || {
        let (ok, out) = as_reader(&["jobs", "events", "job_ro", "--json"]);
        let Ok(events) = serde_json::from_str::<serde_json::Value>(&out) else {
            return false;
        };
        let kinds: Vec<&str> = events["events"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
            .unwrap_or_default();
        let at = |kind: &str| kinds.iter().position(|k| *k == kind);
        let (Some(paused), Some(asked), Some(streaming), Some(submitted)) = (
            at("paused"),
            at("pause requested"),
            at("streaming"),
            at("submitted"),
        ) else {
            return false;
        };
        ok && paused == 0
            && asked < streaming
            && streaming < submitted
            && submitted == kinds.len() - 1
    });
    let (ok, out) = as_reader(&["jobs", "events", "job_ro", "--limit", "2"]);
    assert!(
        ok && out.starts_with("AT (UTC)") && out.lines().count() == 3,
        "{out}"
    );
    let (ok, out) = as_reader(&["jobs", "events", "nope"]);
    assert!(!ok && out.contains("404"), "{out}");
    // A wrong token is still 401.
    let (ok, out) = server.cli(&["jobs", "list", "--token", "dashb0ardx"]);
    assert!(!ok && out.contains("401"), "{out}");
}

/// `--events-kept N`: each retention pass leaves every job its newest N events.
#[test]
fn a_jobs_events_are_pruned_to_the_newest_kept() {
    let env = setup_env();
    let server = Server::spawn(
        &env,
        free_port().expect("port"),
        &["--events-kept", "2", "--retention-every-secs", "1"],
        &[],
    );
    server.wait_healthy();
    submit(&server, &job_file(&env, "job_ev", "[1]", "replica_a"));
    wait_for("the job to stream", WAIT, || {
        server.job_json("job_ev")["state"] == "streaming"
    });
    let (ok, out) = server.cli(&["jobs", "pause", "job_ev"]);
    assert!(ok, "{out}");
    let kinds = || {
        let (_, out) = server.cli(&["jobs", "events", "job_ev", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).map_or(Vec::new(), |v| {
            v["events"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
    };
    wait_for("the events pruned to the newest two", WAIT, || {
        kinds() == ["paused", "pause requested"]
    });
    let (ok, out) = server.cli(&["jobs", "events", "job_ev", "--limit", "0"]);
    assert!(!ok && out.contains("--limit"), "{out}");
}
