//! Groups sent to a real PostgreSQL while earlier ones are still in flight
//! ([`Sink::send`]): each commits in order, and one behind a failed group rolls back with it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::change::fixtures;
use crate::control::job_spec::TenantFilter;
use crate::embedded::pg_cluster::PgCluster;
use crate::operators::partition::TenantPlan;
use crate::sinks::pg_apply::{store, PgApplySink};
use crate::sinks::{ApplyBatch, Sink};

/// A throwaway cluster with the bookkeeping tables, and a sink connected to it that has
/// applied `first` (so the table's shape is known and later groups can be sent).
async fn connected(dir: &std::path::Path, first: &ApplyBatch) -> (PgCluster, PgApplySink) {
    connected_with(
        dir,
        first,
        |cluster| cluster.dsn("replica"),
        crate::sinks::pg_apply::round_trip::SAMPLE_EVERY,
    )
    .await
}

/// [`connected`] through the DSN `dsn_of` gives for database `replica` of the cluster, with
/// the round trip sampled every `sample_every` while connected.
pub(super) async fn connected_with(
    dir: &std::path::Path,
    first: &ApplyBatch,
    dsn_of: impl FnOnce(&PgCluster) -> String,
    sample_every: std::time::Duration,
) -> (PgCluster, PgApplySink) {
    use std::os::unix::fs::PermissionsExt;
    // The server may run as another user (we are root): let it reach its directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cluster = PgCluster::start(&dir.join("target")).expect("start cluster");
    cluster.create_database("replica").expect("create database");
    let client = super::sink::connect(&cluster.dsn("replica"))
        .await
        .expect("connect");
    store::migrate(&client).await.expect("bookkeeping tables");
    let dsn = dsn_of(&cluster);
    let plan = TenantPlan {
        include: TenantFilter::All,
        tenant_keys: HashMap::new(),
        peers: 1,
    };
    let mut sink = PgApplySink::new("job", &dsn, Arc::new(plan), 0);
    sink.sample_round_trip_every(sample_every);
    sink.reconnect().await.expect("sink connects");
    let round_trip = sink.round_trip().expect("measured when connecting");
    assert!(
        round_trip < std::time::Duration::from_millis(100),
        "a local server: {round_trip:?}"
    );
    sink.set_watermark(first.commit_lsn);
    sink.apply(std::slice::from_ref(first))
        .await
        .expect("first group");
    (cluster, sink)
}

fn ids_on(cluster: &PgCluster) -> String {
    cluster
        .psql(
            "replica",
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM app.t",
        )
        .expect("query target")
        .trim()
        .to_string()
}

fn checkpoint_on(cluster: &PgCluster) -> String {
    cluster
        .psql(
            "replica",
            "SELECT string_agg(commit_lsn::text, ',') FROM helios.checkpoints WHERE job = 'job'",
        )
        .expect("query checkpoints")
        .trim()
        .to_string()
}

#[tokio::test]
async fn groups_in_flight_commit_in_order_and_record_their_checkpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &fixtures::inserts(10, 0..1)).await;
    let groups = [
        fixtures::inserts(20, 1..3),
        fixtures::inserts(30, 3..4),
        fixtures::inserts(40, 4..6),
    ];
    let mut flights = Vec::new();
    for g in &groups {
        sink.set_watermark(g.commit_lsn);
        flights.push(sink.send(std::slice::from_ref(g)).await.expect("sent"));
    }
    for (flight, rows) in flights.into_iter().zip([2, 1, 2]) {
        let outcome = flight.await;
        let report = outcome.as_ref().expect("durable");
        assert_eq!(report.upserted, rows);
        sink.settle(&outcome);
    }
    assert_eq!(ids_on(&cluster), "0,1,2,3,4,5");
    assert_eq!(checkpoint_on(&cluster), "0/28");
    // Settled checkpoints cover a replay: nothing of it is written again.
    let replay = sink.send(&groups[..1]).await.expect("sent");
    let outcome = replay.await;
    assert_eq!(outcome.as_ref().expect("replay").skipped, 2);
    sink.settle(&outcome);
}

#[tokio::test]
async fn a_group_sent_behind_a_failed_one_rolls_back_with_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &fixtures::inserts(10, 0..1)).await;
    cluster
        .psql(
            "replica",
            "ALTER TABLE app.t ADD CONSTRAINT not_13 CHECK (id <> 13)",
        )
        .expect("add constraint");
    let ok = fixtures::inserts(20, 1..3);
    let bad = fixtures::inserts(30, 13..14);
    let behind = fixtures::inserts(40, 20..22);
    let mut flights = Vec::new();
    for g in [&ok, &bad, &behind] {
        sink.set_watermark(g.commit_lsn);
        flights.push(sink.send(std::slice::from_ref(g)).await.expect("sent"));
    }
    let mut outcomes = Vec::new();
    for flight in flights {
        let outcome = flight.await;
        sink.settle(&outcome);
        outcomes.push(outcome);
    }
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    let err = outcomes[1]
        .as_ref()
        .expect_err("the CHECK fails")
        .to_string();
    assert!(err.contains("not_13"), "{err}");
    assert!(outcomes[2].is_err(), "{:?}", outcomes[2]);
    assert_eq!(ids_on(&cluster), "0,1,2", "nothing past the failed group");
    assert_eq!(checkpoint_on(&cluster), "0/14");
    // The session is fine afterwards: the group behind applies on its own.
    sink.set_watermark(behind.commit_lsn);
    sink.apply(std::slice::from_ref(&behind))
        .await
        .expect("applied alone");
    assert_eq!(ids_on(&cluster), "0,1,2,20,21");
}

/// A group whose statement is not prepared yet is not sent while a group is in flight
/// (preparing it would wait behind that group's answers, which the connection hands over
/// only as its future is polled, after `send` returns): `send` declines it at once
/// instead of hanging.
#[tokio::test]
async fn a_statement_to_prepare_is_not_sent_while_a_group_is_in_flight() {
    use crate::change::{Cell, Scope, TenantAction, TenantChange};
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &fixtures::inserts(10, 0..1)).await;
    let big = fixtures::inserts(20, 1..601);
    sink.set_watermark(big.commit_lsn);
    let flight = sink.send(std::slice::from_ref(&big)).await.expect("sent");
    let delete = ApplyBatch {
        commit_lsn: 30,
        changes: vec![TenantChange {
            scope: Scope::Tenant("1".into()),
            seq: 0,
            table: Arc::new(fixtures::table("t", &[("id", "int")], &[0])),
            action: TenantAction::Delete {
                old: vec![Cell::Text("1".into())],
            },
        }],
        history: Vec::new(),
    };
    sink.set_watermark(delete.commit_lsn);
    let declined = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        sink.send(std::slice::from_ref(&delete)),
    )
    .await
    .expect("send must not wait behind the group in flight");
    assert!(
        declined.is_none(),
        "a statement to prepare goes the sequential way"
    );
    let outcome = flight.await;
    assert_eq!(outcome.as_ref().expect("inserted").upserted, 600);
    sink.settle(&outcome);
    sink.apply(std::slice::from_ref(&delete))
        .await
        .expect("delete applied alone");
    let count = cluster
        .psql("replica", "SELECT count(*) FROM app.t")
        .expect("count");
    assert_eq!(count.trim(), "600");
}

/// Waits up to 20 s for `app.t` to hold `rows` rows.
async fn wait_for_rows(cluster: &PgCluster, rows: usize) {
    let count = || {
        cluster
            .psql("replica", "SELECT count(*) FROM app.t")
            .expect("count")
            .trim()
            .to_string()
    };
    let started = std::time::Instant::now();
    while count() != rows.to_string() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "app.t holds {} rows, not {rows}",
            count()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// On a near target, groups of plain inserts large enough for `COPY` go in flight as
/// `COPY`, each driven by a task of its own: one commits while nobody awaits it (a `COPY` sends its rows only
/// after the server's go-ahead), the groups behind it wait their turn on the connection
/// and commit in order, and one behind a failed group rolls back with it.
#[tokio::test]
async fn copy_groups_in_flight_go_out_on_their_own_and_commit_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &fixtures::inserts(10, 0..1)).await;
    cluster
        .psql(
            "replica",
            "ALTER TABLE app.t ADD CONSTRAINT not_2700 CHECK (id <> 2700)",
        )
        .expect("add constraint");
    // A near target, however loaded this machine is: groups in flight use `COPY`.
    sink.assume_round_trip(std::time::Duration::from_micros(100));
    let first = fixtures::inserts(20, 1000..1600);
    sink.set_watermark(first.commit_lsn);
    let flight = sink.send(std::slice::from_ref(&first)).await.expect("sent");
    wait_for_rows(&cluster, 601).await;
    let outcome = flight.await;
    assert_eq!(outcome.as_ref().expect("copied").upserted, 600);
    sink.settle(&outcome);

    let ok = fixtures::inserts(30, 2000..2600);
    let bad = fixtures::inserts(40, 2600..3200);
    let behind = fixtures::inserts(50, 3200..3800);
    let mut flights = Vec::new();
    for g in [&ok, &bad, &behind] {
        sink.set_watermark(g.commit_lsn);
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            sink.send(std::slice::from_ref(g)),
        )
        .await
        .expect("send does not wait for the groups in flight");
        flights.push(sent.expect("a COPY group goes in flight"));
    }
    let mut outcomes = Vec::new();
    for flight in flights {
        let outcome = flight.await;
        sink.settle(&outcome);
        outcomes.push(outcome);
    }
    assert_eq!(outcomes[0].as_ref().expect("copied").upserted, 600);
    let err = outcomes[1]
        .as_ref()
        .expect_err("the CHECK fails")
        .to_string();
    assert!(err.contains("not_2700"), "{err}");
    assert!(outcomes[2].is_err(), "{:?}", outcomes[2]);
    wait_for_rows(&cluster, 1201).await;
    assert_eq!(
        checkpoint_on(&cluster),
        "0/1E",
        "nothing past the failed group"
    );
    // The group behind had its `COPY` refused (its transaction aborted by the failed
    // one's check), which puts the connection's answers out of step: the sink takes a
    // new session before anything else.
    sink.set_watermark(behind.commit_lsn);
    let err = sink
        .apply(std::slice::from_ref(&behind))
        .await
        .expect_err("not on that connection")
        .to_string();
    assert!(err.contains("out of step"), "{err}");
    sink.reconnect().await.expect("a new session");
    sink.apply(std::slice::from_ref(&behind))
        .await
        .expect("applied alone");
    wait_for_rows(&cluster, 1801).await;
}

/// `fixtures::inserts` into `app.<name>`.
fn inserts_into(name: &str, lsn: crate::change::Lsn, ids: std::ops::Range<usize>) -> ApplyBatch {
    let mut batch = fixtures::inserts(lsn, ids);
    let table = Arc::new(fixtures::table(name, &[("id", "int")], &[0]));
    for change in &mut batch.changes {
        change.table = table.clone();
    }
    batch
}

/// One source transaction writing to both `app.a` (`a` ids) and `app.b` (`b` ids).
fn into_a_and_b(
    lsn: crate::change::Lsn,
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> ApplyBatch {
    let mut batch = inserts_into("a", lsn, a);
    batch.changes.extend(inserts_into("b", lsn, b).changes);
    for (seq, change) in batch.changes.iter_mut().enumerate() {
        change.seq = seq as u32;
    }
    batch
}

/// A group sent as one pipeline whose statement into `app.a` fails before its `COPY`
/// into `app.b`: the `COPY` is refused in the aborted transaction, which puts the
/// connection's answers out of step, so the retry that puts `app.a` in error state runs
/// in a new session, and the sink goes on there (before, the retry read the answers
/// meant for the requests before it).
#[tokio::test]
async fn a_copy_refused_behind_a_failed_statement_moves_the_sink_to_a_new_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &into_a_and_b(10, 0..1, 0..1)).await;
    cluster
        .psql(
            "replica",
            "ALTER TABLE app.a ADD CONSTRAINT not_7 CHECK (id <> 7)",
        )
        .expect("add constraint");
    let group = into_a_and_b(20, 7..8, 1000..1600);
    sink.set_watermark(group.commit_lsn);
    let report = sink
        .apply(std::slice::from_ref(&group))
        .await
        .expect("applied with app.a in error");
    assert_eq!((report.upserted, report.dead_lettered), (600, 1));
    let next = into_a_and_b(30, 8..9, 2000..2600);
    sink.set_watermark(next.commit_lsn);
    let report = sink
        .apply(std::slice::from_ref(&next))
        .await
        .expect("the next group");
    assert_eq!((report.upserted, report.dead_lettered), (600, 1));
    let state = cluster
        .psql(
            "replica",
            "SELECT (SELECT count(*) FROM app.b) || ' ' || (SELECT count(*) FROM app.a) || ' ' || \
             (SELECT string_agg(table_name || ':' || state, ',') FROM helios.table_state) || ' ' || \
             (SELECT count(*) FROM helios.dead_letters)",
        )
        .expect("query target");
    assert_eq!(state.trim(), "1201 1 app.a:error 2");
}

/// `inserts(lsn, ids)` with each row's history version opened at `lsn`.
fn inserts_with_history(lsn: crate::change::Lsn, ids: std::ops::Range<usize>) -> ApplyBatch {
    let mut batch = fixtures::inserts(lsn, ids);
    batch.history = batch
        .changes
        .iter()
        .map(|c| match &c.action {
            crate::change::TenantAction::Upsert { new, .. } => {
                fixtures::opened("1", c.seq, &c.table, new.clone(), lsn)
            }
            other => unreachable!("inserts only: {other:?}"),
        })
        .collect();
    batch
}

/// A delete of row `id` at `lsn` closing its version opened at `opened_at`.
fn delete_with_history(
    lsn: crate::change::Lsn,
    id: usize,
    opened_at: crate::change::Lsn,
) -> ApplyBatch {
    use crate::change::{Cell, HistoryEvent, HistoryOp, Scope, TenantAction, TenantChange};
    use crate::operators::version::{SysTime, VersionDelta};
    let table = Arc::new(fixtures::table("t", &[("id", "int")], &[0]));
    let row = vec![Cell::Text(id.to_string().into())];
    ApplyBatch {
        commit_lsn: lsn,
        changes: vec![TenantChange {
            scope: Scope::Tenant("1".into()),
            seq: 0,
            table: table.clone(),
            action: TenantAction::Delete { old: row.clone() },
        }],
        history: vec![HistoryEvent {
            tenant: "1".into(),
            seq: 0,
            table,
            op: HistoryOp::Delete,
            delta: VersionDelta::Close {
                key: row.clone(),
                value: row,
                valid_from: 0,
                valid_to: None,
                system_from: SysTime {
                    lsn: opened_at,
                    micros: 0,
                },
                system_to: SysTime { lsn, micros: 0 },
                tombstone: false,
            },
        }],
    }
}

/// The history table's versions as `id:from-to` (LSNs), by id and start.
fn versions_on(cluster: &PgCluster) -> String {
    cluster
        .psql(
            "replica",
            "SELECT string_agg(id || ':' || system_from_lsn || '-' || coalesce(system_to_lsn::text, ''), \
             ',' ORDER BY id, system_from_lsn) FROM app.t_history",
        )
        .expect("query history table")
        .trim()
        .to_string()
}

/// Groups that carry history versions are sent while earlier ones are in flight too, once
/// the history table exists: their versions are opened and closed in the same target
/// transactions as their rows, in order.
#[tokio::test]
async fn groups_with_history_are_sent_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cluster, mut sink) = connected(dir.path(), &inserts_with_history(10, 0..2)).await;
    // Applied on its own first: prepares the delete and the close.
    let first_close = delete_with_history(15, 0, 10);
    sink.set_watermark(first_close.commit_lsn);
    sink.apply(std::slice::from_ref(&first_close))
        .await
        .expect("delete with its close");
    assert_eq!(versions_on(&cluster), "0:0/A-0/F,1:0/A-");
    let groups = [
        inserts_with_history(20, 2..3),
        delete_with_history(30, 1, 10),
        inserts_with_history(40, 3..5),
    ];
    let mut flights = Vec::new();
    for g in &groups {
        sink.set_watermark(g.commit_lsn);
        flights.push(
            sink.send(std::slice::from_ref(g))
                .await
                .expect("a group with history is sent in flight"),
        );
    }
    for flight in flights {
        let outcome = flight.await;
        outcome.as_ref().expect("durable");
        sink.settle(&outcome);
    }
    assert_eq!(ids_on(&cluster), "2,3,4");
    assert_eq!(
        versions_on(&cluster),
        "0:0/A-0/F,1:0/A-0/1E,2:0/14-,3:0/28-,4:0/28-"
    );
    assert_eq!(checkpoint_on(&cluster), "0/28");
}
