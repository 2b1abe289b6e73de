//! `helios-repl check --job FILE`: what a job needs of its source and targets, reported
//! before it runs, without creating anything: a ready job passes; a role without the
//! REPLICATION attribute that owns none of the tables, a missing tenant column, a view and
//! an unreachable target each fail with what to do; a keyless table, and a sequence the
//! role may not read (so the job cannot keep it in step on the targets), warn.

use std::process::Command;

use crate::harness::{output_of, Env};

const SETUP: &str = "
CREATE TABLE public.items (tenant_id int NOT NULL, id int NOT NULL, v text, n bigserial, PRIMARY KEY (tenant_id, id));
CREATE TABLE public.log (tenant_id int NOT NULL, note text);
CREATE TABLE public.countries (code text PRIMARY KEY);
CREATE VIEW public.recent AS SELECT * FROM public.items;
CREATE ROLE reader LOGIN;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader;
";

/// Runs `check` on a job over `tables` as `user`, into `target_dsn`; its exit status and
/// output.
fn check(env: &Env, user: &str, tables: &[&str], target_dsn: &str) -> (bool, String) {
    let tables: String = tables
        .iter()
        .map(|t| format!("[[tables]]\nname = \"{t}\"\n"))
        .collect();
    let source = env
        .source_dsn()
        .replace("user=postgres", &format!("user={user}"));
    assert!(source.contains(&format!("user={user}")), "{source}");
    let text = format!(
        "name = \"checked\"\n[source]\ndsn = \"{source}\"\npublication = \"pub_checked\"\nslot = \"slot_checked\"\n\
         [tenants]\ninclude = [1]\n{tables}[[sinks]]\nkind = \"postgres\"\ndsn = \"{target_dsn}\"\n",
    );
    let path = env.dir.path().join(format!("check_{user}.toml"));
    std::fs::write(&path, text).expect("write job file");
    output_of(
        Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["check", "--job"])
            .arg(&path)
            .env("HELIOS_LOG", "warn"),
    )
}

#[test]
fn check_reports_what_a_job_needs_without_creating_anything() {
    let env = Env::start(SETUP);
    let target = env.target_dsn();
    let (ok, out) = check(&env, "postgres", &["public.items", "public.log"], &target);
    assert!(ok, "{out}");
    for line in [
        "ok   source: wal_level is logical",
        "ok   source: role `postgres` may replicate",
        "replication slots free, the job needs up to 2 more",
        "connections free (a running job holds 2, up to ",
        "ok   public.items: ready to publish",
        "warn public.log: public.log has no primary key",
        "ok   sinks[0]: reachable",
        "job `checked` can run",
    ] {
        assert!(out.contains(line), "expected {line:?} in:\n{out}");
    }

    let unreachable = "host=127.0.0.1 port=1 user=postgres dbname=replica connect_timeout=2";
    let (ok, out) = check(
        &env,
        "reader",
        &["public.items", "public.countries", "public.recent"],
        unreachable,
    );
    assert!(!ok, "{out}");
    for line in [
        "FAIL source: role `reader` lacks the REPLICATION attribute",
        "FAIL public.items: role `reader` does not own it",
        "warn public.items: role `reader` may not read sequence \"public\".\"items_n_seq\"",
        "FAIL public.countries: has no tenant column `tenant_id`",
        "FAIL public.recent: public.recent is a view, not a table",
        "FAIL sinks[0]: cannot connect",
        "cannot run as it is",
    ] {
        assert!(out.contains(line), "expected {line:?} in:\n{out}");
    }
    assert_eq!(
        env.on_source(
            "SELECT (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)"
        ),
        "0",
        "nothing created on the source"
    );

    // The job's slot, once it exists (a stopped job's): what it keeps.
    env.on_source("SELECT pg_create_logical_replication_slot('slot_checked', 'pgoutput')");
    let (ok, out) = check(&env, "postgres", &["public.items"], &target);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok   source: slot `slot_checked` exists (the job resumes from it)")
            && out.contains("ok   source: slot `slot_checked` keeps ")
            && out.contains("bytes of WAL on the source (reserved)"),
        "{out}"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM pg_namespace WHERE nspname = 'helios'"),
        "0",
        "nothing created on the target"
    );
}
