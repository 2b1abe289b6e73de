//! A target whose tables the operator made with foreign keys and triggers: the job applies
//! as a replica (`session_replication_role = replica`) as PostgreSQL's subscription does,
//! so a child row written before its parent is not refused and the target's ordinary
//! triggers do not rewrite replicated rows, while one marked `ENABLE ALWAYS` fires; a role
//! that may not apply as a replica is refused at the start (and by `check`) with the
//! foreign key named and the grant that mends it, and runs once granted. Row-level
//! security that applies to the role stops the start too, and never hides rows from the
//! job's statements.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{output_of, wait_for, Env, Replicator};

const WAIT: Duration = Duration::from_secs(60);

/// The source's tables: a line's order may come after it in one transaction.
const SOURCE: &str = "
CREATE TABLE public.orders (tenant_id int NOT NULL, id int NOT NULL, note text,
    PRIMARY KEY (tenant_id, id));
CREATE TABLE public.lines (tenant_id int NOT NULL, id int NOT NULL, order_id int NOT NULL, qty int,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, order_id) REFERENCES public.orders (tenant_id, id)
        ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED);
INSERT INTO public.orders SELECT 1 + i % 2, i, 'o' || i FROM generate_series(1, 400) i;
INSERT INTO public.lines SELECT 1 + i % 2, i, (i % 200) * 2 + 2 - i % 2, i FROM generate_series(1, 4000) i;
";

/// The target's tables as an operator made them: the key checked at once, a trigger that
/// rewrites notes and logs to `audit`, and one marked to fire for replicas too (`seen`).
const TARGET: &str = "
CREATE TABLE public.orders (tenant_id int NOT NULL, id int NOT NULL, note text,
    PRIMARY KEY (tenant_id, id));
CREATE TABLE public.lines (tenant_id int NOT NULL, id int NOT NULL, order_id int NOT NULL, qty int,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, order_id) REFERENCES public.orders (tenant_id, id) ON DELETE CASCADE);
CREATE TABLE public.audit (what text);
CREATE TABLE public.seen (id int);
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.audit VALUES (TG_OP || ' ' || NEW.id); NEW.note := NEW.note || '!'; RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.touch();
CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.seen VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER stamp AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.stamp();
ALTER TABLE public.orders ENABLE ALWAYS TRIGGER stamp;
";

const ORDERS: &str = "SELECT tenant_id, id, note FROM public.orders WHERE tenant_id = 1 ORDER BY 2";
const LINES: &str =
    "SELECT tenant_id, id, order_id, qty FROM public.lines WHERE tenant_id = 1 ORDER BY 2";

/// Orders 1001.. with a line each, then one transaction writing a line before its order,
/// then deletes of orders whose lines the source's key deletes with them.
fn write_on_source(env: &Env) {
    for i in 0..40 {
        env.on_source(&format!(
            "INSERT INTO public.orders VALUES (1, {o}, 'n{o}'); INSERT INTO public.lines VALUES (1, {l}, {o}, 1);",
            o = 1001 + 2 * i,
            l = 10001 + i
        ));
    }
    env.on_source(
        "BEGIN; INSERT INTO public.lines VALUES (1, 20001, 2001, 7); \
         INSERT INTO public.orders VALUES (1, 2001, 'late'); COMMIT",
    );
    env.on_source("DELETE FROM public.orders WHERE tenant_id = 1 AND id <= 41");
    env.on_source("UPDATE public.orders SET note = 'changed' WHERE tenant_id = 1 AND id = 43");
}

/// `helios-repl check` on `job`: whether it passed, and its output.
fn check(job: &Path) -> (bool, String) {
    output_of(
        Command::new(env!("CARGO_BIN_EXE_helios-repl"))
            .args(["check", "--job"])
            .arg(job)
            .env("HELIOS_LOG", "warn"),
    )
}

#[test]
fn a_target_with_foreign_keys_and_triggers_takes_the_rows_as_a_replica() {
    let env = Env::start(SOURCE);
    env.on_target(TARGET);
    let job = env.job_file("rules", "[1]", &["public.lines", "public.orders"]);
    let (ok, out) = check(&job);
    assert!(
        ok && out.contains("ok   sinks[0]: applies as a replica")
            && out.contains("the target's triggers touch on orders do not fire"),
        "{out}"
    );
    let mut repl = Replicator::streaming(&job);
    write_on_source(&env);
    env.wait_converged(ORDERS, WAIT);
    env.wait_converged(LINES, WAIT);
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.audit"),
        "0",
        "the target's ordinary trigger fired on replicated rows"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.seen WHERE id > 1000"),
        "41",
        "the trigger marked ENABLE ALWAYS fires on each streamed order"
    );
    let out = repl.output();
    assert!(
        out.contains("the target's triggers marked ENABLE REPLICA or ENABLE ALWAYS fire")
            && out.contains("stamp on orders")
            && out.contains("the target's triggers touch on orders do not fire"),
        "{out}"
    );
    assert!(repl.is_running(), "{out}");
    assert_eq!(
        env.on_target("SELECT count(*) FROM helios.table_state WHERE state <> 'ok'"),
        "0"
    );
}

#[test]
fn a_role_that_may_not_apply_as_a_replica_is_refused_with_the_key_named_until_granted() {
    let env = Env::start(SOURCE);
    env.on_target(&format!(
        "CREATE ROLE applier LOGIN; GRANT CREATE ON DATABASE replica TO applier;
         GRANT CREATE ON SCHEMA public TO applier; SET ROLE applier; {TARGET}"
    ));
    let job = env.job_file("applier", "[1]", &["public.lines", "public.orders"]);
    let text = std::fs::read_to_string(&job).expect("job file");
    let target = env.target_dsn();
    let as_applier = target.replace("user=postgres", "user=applier");
    assert_ne!(target, as_applier);
    std::fs::write(&job, text.replace(&target, &as_applier)).expect("job file");

    let (ok, out) = check(&job);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL sinks[0]: the target checks foreign keys between the job's tables")
            && out.contains("lines_tenant_id_order_id_fkey on lines referencing orders")
            && out.contains("GRANT SET ON PARAMETER session_replication_role TO \"applier\""),
        "{out}"
    );
    let mut refused = Replicator::start(&job);
    wait_for("the refused job to stop", WAIT, || !refused.is_running());
    let out = refused.output();
    assert!(
        out.contains("sinks[0]: the target checks foreign keys between the job's tables")
            && out.contains("lines_tenant_id_order_id_fkey"),
        "{out}"
    );
    assert_eq!(
        env.on_target("SELECT count(*) FROM public.orders"),
        "0",
        "nothing was loaded"
    );

    env.on_target("GRANT SET ON PARAMETER session_replication_role TO applier");
    let (ok, out) = check(&job);
    assert!(
        ok && out.contains("ok   sinks[0]: applies as a replica"),
        "{out}"
    );
    let mut repl = Replicator::streaming(&job);
    write_on_source(&env);
    env.wait_converged(ORDERS, WAIT);
    env.wait_converged(LINES, WAIT);
    assert_eq!(env.on_target("SELECT count(*) FROM public.audit"), "0");
    assert!(repl.is_running(), "{}", repl.output());
}

/// Row-level security on a target table whose policies apply to the job's role (not the
/// owner, no `BYPASSRLS`) would hide rows from its deletes: the start refuses it (and
/// `check`), naming the table and the way out; a policy switched on while the job runs
/// turns the delete into an error that puts the table in error state, never into rows
/// silently left on the target.
#[test]
fn row_level_security_that_applies_to_the_role_stops_the_start_and_never_hides_rows() {
    let env = Env::start(
        "CREATE TABLE public.notes (tenant_id int NOT NULL, id int NOT NULL, v text,
             PRIMARY KEY (tenant_id, id));
         INSERT INTO public.notes SELECT 1 + i % 2, i, 'v' || i FROM generate_series(1, 40) i;",
    );
    env.on_target(
        "CREATE ROLE applier LOGIN; GRANT CREATE ON DATABASE replica TO applier;
         CREATE TABLE public.notes (tenant_id int NOT NULL, id int NOT NULL, v text,
             PRIMARY KEY (tenant_id, id));
         GRANT ALL ON public.notes TO applier;
         ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY others ON public.notes USING (tenant_id = 2);",
    );
    let job = env.job_file("rls", "[1]", &["public.notes"]);
    let text = std::fs::read_to_string(&job).expect("job file");
    let target = env.target_dsn();
    std::fs::write(
        &job,
        text.replace(&target, &target.replace("user=postgres", "user=applier")),
    )
    .expect("job file");
    let (ok, out) = check(&job);
    assert!(
        !ok && out.contains(
            "FAIL sinks[0]: row-level security of the target's notes applies to role `applier`"
        ) && out.contains("BYPASSRLS"),
        "{out}"
    );
    let mut refused = Replicator::start(&job);
    wait_for("the refused job to stop", WAIT, || !refused.is_running());
    assert!(
        refused
            .output()
            .contains("row-level security of the target's notes applies to role `applier`"),
        "{}",
        refused.output()
    );

    env.on_target("ALTER TABLE public.notes DISABLE ROW LEVEL SECURITY");
    let q = "SELECT id, v FROM public.notes WHERE tenant_id = 1 ORDER BY id";
    let mut repl = Replicator::streaming(&job);
    env.wait_converged(q, WAIT);
    // Switched on while the job runs: its delete of tenant 1's rows would match none.
    env.on_target("ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY");
    env.on_source("DELETE FROM public.notes WHERE tenant_id = 1 AND id <= 10");
    wait_for("the table in error state", WAIT, || {
        env.on_target(
            "SELECT count(*) FROM helios.table_state WHERE table_name = 'public.notes' \
             AND state = 'error' AND error LIKE '%row-level security%'",
        ) == "1"
    });
    assert!(repl.is_running(), "{}", repl.output());
}
