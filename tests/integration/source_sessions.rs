//! What a running job holds open on the source: its replication session, the reader's
//! catalog session, and one session that everything it reads now and then shares (slot
//! health, partitions, sequences, table patterns, scan statistics). Each session is named
//! in `pg_stat_activity`. When the shared session dies, the watchers open a new one and go on.

use std::time::Duration;

use crate::harness::{wait_for, without_colours, Env, Replicator};

const WAIT: Duration = Duration::from_secs(60);

const SETUP: &str = "
CREATE TABLE public.events (tenant_id int NOT NULL, id bigserial, v text, PRIMARY KEY (tenant_id, id))
    PARTITION BY LIST (tenant_id);
CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES IN (1);
CREATE TABLE public.events_2 PARTITION OF public.events FOR VALUES IN (2);
CREATE TABLE public.events_3 PARTITION OF public.events FOR VALUES IN (3);
CREATE TABLE public.notes (tenant_id int NOT NULL, id serial, body text, PRIMARY KEY (tenant_id, id));
INSERT INTO public.events (tenant_id, v) SELECT 1 + i % 3, 'e' FROM generate_series(1, 30) i;
INSERT INTO public.notes (tenant_id, body) SELECT 1 + i % 3, 'n' FROM generate_series(1, 9) i;
";

const SEQUENCES: &str = "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, '-'), ' ' ORDER BY sequencename) FROM pg_sequences WHERE schemaname = 'public'";

/// The job's plain sessions on the source, by name: `name=count …`.
const SESSIONS: &str =
    "SELECT string_agg(application_name || '=' || n, ' ' ORDER BY application_name) \
     FROM (SELECT application_name, count(*) AS n FROM pg_stat_activity \
           WHERE backend_type = 'client backend' AND application_name LIKE 'helios-repl%' \
           GROUP BY 1) s";

const WATCH_PID: &str =
    "SELECT pid FROM pg_stat_activity WHERE application_name = 'helios-repl job watch'";

fn job(env: &Env) -> std::path::PathBuf {
    let text = format!(
        "name = \"sessions\"\n[source]\ndsn = \"{}\"\npublication = \"pub_sessions\"\nslot = \"slot_sessions\"\n\
         [tenants]\ninclude = [1, 2, 3]\n\
         [[tables]]\nname = \"public.*\"\n\
         [qos]\nsource_stats_poll_secs = 1\n\
         [[sinks]]\nkind = \"postgres\"\ndsn = \"{}\"\n",
        env.source_dsn(),
        env.target_dsn(),
    );
    let path = env.dir.path().join("sessions.toml");
    std::fs::write(&path, text).expect("write job file");
    path
}

fn sequences_follow(env: &Env) {
    let source = env.on_source(SEQUENCES);
    wait_for(
        "the target's sequences to follow the source's",
        WAIT,
        || env.try_on_target(SEQUENCES).as_deref() == Some(source.as_str()),
    );
}

#[test]
fn a_running_job_holds_one_shared_watch_session_on_the_source_and_reopens_it() {
    let env = Env::start(SETUP);
    let mut repl = Replicator::streaming(&job(&env));
    env.wait_converged("SELECT * FROM public.events ORDER BY 1, 2", WAIT);
    sequences_follow(&env);
    // Every watcher has read the source by now (the patterns' first read comes 5 s after
    // the start, the others at once); they all did it on the one shared session.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        env.on_source(SESSIONS),
        "helios-repl job watch=1 helios-repl source catalog=1",
        "the reader's catalog session and the watchers' shared one, nothing else"
    );
    let walsender = env.on_source(
        "SELECT application_name FROM pg_stat_activity WHERE backend_type = 'walsender'",
    );
    assert_eq!(walsender, "helios-repl slot_sessions");

    // The shared session dies: the watchers open a new one and keep working.
    let first = env.on_source(WATCH_PID);
    assert_eq!(
        env.on_source(&format!("SELECT pg_terminate_backend({first})")),
        "t"
    );
    env.on_source(
        "INSERT INTO public.notes (tenant_id, body) SELECT 2, 'late' FROM generate_series(1, 5)",
    );
    env.on_source("ALTER TABLE public.events DETACH PARTITION public.events_3");
    sequences_follow(&env);
    wait_for("the warning about the detached partition", WAIT, || {
        without_colours(&repl.output())
            .contains("partition public.events_3 of public.events was detached")
    });
    env.on_source("CREATE TABLE public.later (tenant_id int NOT NULL, id int PRIMARY KEY)");
    env.on_source("INSERT INTO public.later VALUES (1, 1), (2, 2)");
    wait_for("the table created later on the target", WAIT, || {
        env.try_on_target("SELECT count(*) FROM public.later")
            .as_deref()
            == Some("2")
    });
    let second = env.on_source(WATCH_PID);
    assert!(
        !second.is_empty() && second != first,
        "a new shared session ({second}) replaced the terminated one ({first})"
    );
    // The restart that took the new table closed the sessions of the run before it.
    wait_for("one shared session and one catalog session", WAIT, || {
        env.on_source(SESSIONS) == "helios-repl job watch=1 helios-repl source catalog=1"
    });
    assert!(repl.is_running(), "{}", repl.output());
    assert_eq!(repl.stop().code(), Some(0), "{}", repl.output());
}
