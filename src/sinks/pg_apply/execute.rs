//! Running a table's planned steps inside a target transaction: prepared statements
//! cached per connection, plain inserts of many rows as `COPY`, several requests
//! pipelined on the connection, changes kept as dead letters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use futures_util::SinkExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Transaction};

use crate::change::{Lsn, TableInfo, TenantAction, TenantChange};
use crate::control::job_spec::TenantFilter;
use crate::operators::partition::{owned_tenants_sql, TenantPlan};
use crate::sinks::pg_apply::plan::Step;
use crate::sinks::pg_apply::statements::{self, Param, Statement};
use crate::sinks::pg_apply::store::{self, scope_key, sink_error, DeadLetter};
use crate::sinks::pg_apply::target_schema::ensure_shape;
use crate::sinks::{ApplyReport, SinkError};

/// Caches that live as long as one connection.
#[derive(Default)]
pub(super) struct ConnectionCache {
    /// Table shapes known to match the target.
    pub(super) shapes: HashMap<String, Arc<TableInfo>>,
    /// History table shapes known to match the target.
    pub(super) history_shapes: HashMap<String, Arc<TableInfo>>,
    /// Prepared statements by SQL text.
    pub(super) statements: HashMap<String, tokio_postgres::Statement>,
    /// A plain insert of a keyed table met a key the target holds (SQLSTATE 23505).
    pub(super) unique_violation: bool,
    /// Whether the connection's answers still match its requests ([`OutOfStep`]).
    pub(super) out_of_step: Arc<OutOfStep>,
}

/// Marks a connection whose answers no longer match its requests. A `COPY` the server
/// refuses before its go-ahead (its `Bind` fails, as in a transaction an earlier
/// pipelined statement aborted) gets two `ReadyForQuery` from the server, and
/// tokio-postgres takes the second as the answer to the next request: the `Sync` it sends
/// with `Bind`/`Execute` ends the server's skip after the error, and the `CopyFail` and
/// `Sync` it sends when the refused copy is dropped get one more. From then on every
/// answer on the connection belongs to the request before, so nothing more is read from
/// it: the sink takes a new session. Holds the number of the pipelined group whose `COPY`
/// was refused (0 outside groups sent in flight); every group after it was sent behind a
/// failed one and rolled back on the server.
#[derive(Debug)]
pub(super) struct OutOfStep(AtomicU64);

impl Default for OutOfStep {
    fn default() -> Self {
        OutOfStep(AtomicU64::new(u64::MAX))
    }
}

impl OutOfStep {
    /// Records that the `COPY` of `group` was refused before its go-ahead.
    pub(super) fn mark(&self, group: u64) {
        self.0.fetch_min(group, Relaxed);
    }

    /// Whether a `COPY` on the connection was refused before its go-ahead.
    pub(super) fn is_set(&self) -> bool {
        self.0.load(Relaxed) != u64::MAX
    }

    /// Whether `group`'s answers came after the refused `COPY` of an earlier group (and
    /// so are not its own).
    pub(super) fn before(&self, group: u64) -> bool {
        self.0.load(Relaxed) < group
    }
}

pub(super) async fn dead_letter_all(
    tx: &Transaction<'_>,
    job: &str,
    table: &str,
    changes: &[(Lsn, &TenantChange)],
    reason: &str,
) -> Result<u64, SinkError> {
    let letters: Vec<DeadLetter> = changes
        .iter()
        .map(|(lsn, c)| DeadLetter {
            scope: scope_key(&c.scope),
            table,
            lsn: *lsn,
            seq: c.seq,
            change: letter_body(c),
            reason,
        })
        .collect();
    store::store_dead_letters(tx, job, &letters).await?;
    Ok(letters.len() as u64)
}

/// The stored form of a change: its values only when they belong to a job tenant.
fn letter_body(change: &TenantChange) -> Option<serde_json::Value> {
    match (&change.scope, &change.action) {
        (_, TenantAction::Unroutable { .. }) => None,
        _ => serde_json::to_value(&change.action).ok(),
    }
}

/// Plain inserts of at least this many rows go through `COPY` (cheaper for the target
/// per row, but two round trips more than a statement in the pipeline).
pub const COPY_MIN_ROWS: usize = 500;

/// One write of a pipelined target transaction.
pub(super) enum Write<'s> {
    /// A statement, answered inside the pipeline.
    Statement(Statement<'s>, Counts),
    /// Rows loaded with `COPY`, a round trip of its own.
    Copy(statements::CopyRows),
}

impl Write<'_> {
    /// The write owning its values.
    pub(super) fn into_owned(self) -> Write<'static> {
        match self {
            Write::Statement(stmt, counts) => Write::Statement(stmt.into_owned(), counts),
            Write::Copy(copy) => Write::Copy(copy),
        }
    }

    /// Its SQL text.
    pub(super) fn text(&self) -> &str {
        match self {
            Write::Statement(stmt, _) => &stmt.text,
            Write::Copy(copy) => &copy.text,
        }
    }

    /// Bytes of the job's values it sends (bookkeeping not counted).
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Write::Statement(_, Counts::Bookkeeping) => 0,
            Write::Statement(stmt, _) => stmt.params.iter().map(Param::bytes).sum(),
            Write::Copy(copy) => copy.data.len() as u64,
        }
    }
}

/// One target transaction sent as a pipeline: `begin` (a simple query that opens it),
/// every write with its prepared statement (`prepared[i]` for `writes[i]`) and `COMMIT`
/// go out together and the answers are read afterwards. A `COPY` sends its rows once the
/// server accepted it, and the requests after it follow its end without waiting. A
/// failing statement aborts the transaction on the server, so the `COMMIT` rolls it
/// back. Returns the rows written (upserted and deleted; `bytes` left at 0), or the
/// first error in statement order with what failed (`begin`, `apply`, `commit`).
pub(super) async fn run_pipelined(
    client: &tokio_postgres::Client,
    begin: &str,
    writes: &[Write<'_>],
    prepared: &[tokio_postgres::Statement],
    (out_of_step, group): (&OutOfStep, u64),
) -> Result<ApplyReport, (&'static str, tokio_postgres::Error)> {
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = writes
        .iter()
        .map(|w| match w {
            Write::Statement(stmt, _) => stmt.params.iter().map(Param::as_sql).collect(),
            Write::Copy(_) => Vec::new(),
        })
        .collect();
    let mut requests: Vec<Request<'_>> = Vec::with_capacity(writes.len() + 2);
    requests.push(Box::pin(async move {
        client.batch_execute(begin).await.map(|()| 0)
    }));
    for ((write, stmt), params) in writes.iter().zip(prepared).zip(&params) {
        requests.push(match write {
            Write::Statement(..) => Box::pin(client.execute(stmt, params.as_slice())),
            Write::Copy(copy) => {
                Box::pin(send_copy(client.copy_in(stmt), copy.data.clone(), || {
                    out_of_step.mark(group)
                }))
            }
        });
    }
    requests.push(Box::pin(async move {
        client.batch_execute("COMMIT").await.map(|()| 0)
    }));
    let answers = pipeline(requests).await;
    let last = answers.len().saturating_sub(1);
    let mut report = ApplyReport::default();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(n) if i > 0 && i < last => match &writes[i - 1] {
                Write::Statement(_, counts) => counts.add(&mut report, n),
                Write::Copy(_) => report.upserted += n,
            },
            Ok(_) => {}
            Err(e) => {
                let what = match i {
                    0 => "begin",
                    _ if i == last => "commit",
                    _ => "apply",
                };
                return Err((what, e));
            }
        }
    }
    Ok(report)
}

/// What a plain step writes in the pipelined path: a large plain insert as `COPY`, any
/// other as its statement.
pub(super) fn pipelined_write<'s>(plan: &TenantPlan, step: &'s Step<'_>) -> Option<Write<'s>> {
    match step {
        Step::Append { table, rows } if rows.len() >= COPY_MIN_ROWS => {
            Some(Write::Copy(statements::copy_rows(table, rows)))
        }
        _ => plain_statement(plan, step).map(|(s, c)| Write::Statement(s, c)),
    }
}

/// Starts a `COPY … FROM STDIN` (`sink`), sends `data` once the server accepted it and
/// ends it; the rows it loaded. Calls `refused` when the server refuses it before its
/// go-ahead (the connection is then [`OutOfStep`]).
pub(super) async fn send_copy(
    sink: impl std::future::Future<
        Output = Result<tokio_postgres::CopyInSink<bytes::Bytes>, tokio_postgres::Error>,
    >,
    data: bytes::Bytes,
    refused: impl FnOnce(),
) -> Result<u64, tokio_postgres::Error> {
    let sink = sink.await.inspect_err(|_| refused())?;
    futures_util::pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await
}

/// Which count of the report a statement's affected rows add to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counts {
    Upserted,
    Deleted,
    /// History versions inserted or closed: the job's bytes, counted as versions elsewhere.
    Versions,
    /// Checkpoints: not the job's rows.
    Bookkeeping,
}

impl Counts {
    pub(super) fn add(self, report: &mut ApplyReport, n: u64) {
        match self {
            Counts::Upserted => report.upserted += n,
            Counts::Deleted => report.deleted += n,
            Counts::Versions | Counts::Bookkeeping => {}
        }
    }
}

/// A SQL predicate true for the rows of `table` whose tenant worker `index` owns, but for
/// the `spared` tenants; `None` when it owns none (or the table has no tenant column).
fn owned(plan: &TenantPlan, table: &TableInfo, index: u32, spared: &[String]) -> Option<String> {
    let key = plan.tenant_keys.get(&table.qualified_name())?;
    let owned = owned_tenants_sql(plan, key, index)?;
    if spared.is_empty() {
        return Some(owned);
    }
    let spared = TenantFilter::Only(spared.iter().cloned().collect());
    Some(match spared.sql_condition(key) {
        Some(spare) => format!("({owned}) AND NOT ({spare})"),
        None => owned,
    })
}

/// The statement of a step that is one statement and nothing else (no shape to sync,
/// no log line, no dead letter); `None` when it has nothing to run (a worker-scoped
/// delete on a table without a tenant column). Other steps: `None`.
pub(super) fn plain_statement<'s>(
    plan: &TenantPlan,
    step: &'s Step<'_>,
) -> Option<(Statement<'s>, Counts)> {
    Some(match step {
        Step::Upsert { table, rows } => (statements::upsert(table, rows), Counts::Upserted),
        Step::Append { table, rows } => (statements::append(table, rows), Counts::Upserted),
        Step::DeleteKeys { table, keys } => (statements::delete_keys(table, keys), Counts::Deleted),
        Step::UpdateRow { table, key, new } => {
            (statements::update_row(table, key, new), Counts::Upserted)
        }
        Step::DeleteMatching { table, old } => (
            statements::delete_matching(table, old, None),
            Counts::Deleted,
        ),
        Step::UpdateMatching { table, old, new } => (
            statements::update_matching(table, old, new),
            Counts::Upserted,
        ),
        Step::DeleteOwned {
            table,
            old,
            index,
            spared,
        } => (
            statements::delete_owned(table, old, &owned(plan, table, *index, spared)?),
            Counts::Deleted,
        ),
        Step::SyncShape(_)
        | Step::TruncateTenant { .. }
        | Step::TruncateOwned { .. }
        | Step::DeadLetter { .. } => return None,
    })
}

pub(super) async fn apply_steps(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    plan: &TenantPlan,
    job: &str,
    table_name: &str,
    steps: Vec<Step<'_>>,
    report: &mut ApplyReport,
) -> Result<(), SinkError> {
    for step in steps {
        match step {
            Step::SyncShape(table) => {
                if cache
                    .shapes
                    .get(table_name)
                    .is_some_and(|known| **known == *table)
                {
                    continue;
                }
                let ddl = ensure_shape(tx, &table).await?;
                if !ddl.is_empty() {
                    tracing::info!(
                        job,
                        table = table_name,
                        statements = ddl.len(),
                        "target table brought to the source's shape"
                    );
                }
                cache.shapes.insert(table_name.to_string(), table);
            }
            Step::TruncateTenant { table, tenant } => {
                let Some(key) = plan.tenant_keys.get(&table.qualified_name()) else {
                    continue;
                };
                let n = run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::truncate_tenant(&table, key, &tenant),
                )
                .await?;
                tracing::info!(job, table = table_name, tenant = %tenant, rows = n, "source TRUNCATE applied as a delete of this tenant's rows");
                report.deleted += n;
            }
            Step::TruncateOwned {
                table,
                index,
                spared,
            } => {
                if let Some(pred) = owned(plan, &table, index, &spared) {
                    let n = run(
                        tx,
                        cache,
                        &mut report.bytes,
                        statements::truncate_owned(&table, &pred),
                    )
                    .await?;
                    tracing::info!(
                        job,
                        table = table_name,
                        worker = index,
                        rows = n,
                        "source TRUNCATE applied as a delete of the job's tenants' rows"
                    );
                    report.deleted += n;
                }
            }
            Step::DeadLetter {
                lsn,
                change,
                reason,
            } => {
                tracing::error!(job, table = table_name, reason = %reason, "change kept in helios.dead_letters");
                store::mark_table_failed(tx, job, table_name, &reason, lsn).await?;
                dead_letter_all(tx, job, table_name, &[(lsn, &change)], &reason).await?;
                report.dead_lettered += 1;
            }
            plain => {
                let keyed_insert =
                    matches!(&plain, Step::Append { table, .. } if !table.key_columns().is_empty());
                let (n, counts) = match pipelined_write(plan, &plain) {
                    None => continue,
                    Some(Write::Statement(stmt, counts)) => {
                        report.bytes += stmt.params.iter().map(Param::bytes).sum::<u64>();
                        let prepared = prepared(tx, cache, &stmt.text).await?;
                        let params: Vec<&(dyn ToSql + Sync)> =
                            stmt.params.iter().map(Param::as_sql).collect();
                        (tx.execute(&prepared, &params).await, counts)
                    }
                    Some(Write::Copy(copy)) => {
                        report.bytes += copy.data.len() as u64;
                        let prepared = prepared(tx, cache, &copy.text).await?;
                        let out_of_step = cache.out_of_step.clone();
                        let copied =
                            send_copy(tx.copy_in(&prepared), copy.data, || out_of_step.mark(0));
                        (copied.await, Counts::Upserted)
                    }
                };
                match n {
                    Ok(n) => counts.add(report, n),
                    Err(e) => {
                        cache.unique_violation |= keyed_insert
                            && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
                        return Err(sink_error("apply", &e));
                    }
                }
            }
        }
    }
    Ok(())
}

/// One request of a pipeline: its answer is the rows it affected.
pub(super) type Request<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>,
>;

/// Runs `requests` without waiting for answers in between (tokio-postgres sends a
/// request when its future is first polled; they are polled in order, and the
/// connection writes them in that order), then collects every answer in that order.
pub(super) async fn pipeline(
    mut requests: Vec<Request<'_>>,
) -> Vec<Result<u64, tokio_postgres::Error>> {
    let mut answers: Vec<Option<Result<u64, tokio_postgres::Error>>> =
        requests.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (request, answer) in requests.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match request.as_mut().poll(cx) {
                    std::task::Poll::Ready(a) => *answer = Some(a),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    answers.into_iter().flatten().collect()
}

/// The prepared statement for `text`, prepared on first use on this connection.
pub(super) async fn prepared(
    client: &impl GenericClient,
    cache: &mut ConnectionCache,
    text: &str,
) -> Result<tokio_postgres::Statement, SinkError> {
    if let Some(p) = cache.statements.get(text) {
        return Ok(p.clone());
    }
    let p = client
        .prepare(text)
        .await
        .map_err(|e| sink_error("prepare", &e))?;
    cache.statements.insert(text.to_string(), p.clone());
    Ok(p)
}

pub(super) async fn run(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    bytes: &mut u64,
    stmt: Statement<'_>,
) -> Result<u64, SinkError> {
    *bytes += stmt.params.iter().map(Param::bytes).sum::<u64>();
    let prepared = prepared(tx, cache, &stmt.text).await?;
    let params: Vec<&(dyn ToSql + Sync)> = stmt.params.iter().map(Param::as_sql).collect();
    tx.execute(&prepared, &params)
        .await
        .map_err(|e| sink_error("apply", &e))
}

#[cfg(test)]
mod tests {
    use super::owned;
    use crate::change::fixtures;
    use crate::control::job_spec::TenantFilter;
    use crate::operators::partition::TenantPlan;

    #[test]
    fn the_owned_tenants_predicate_leaves_spared_tenants_out() {
        let table = fixtures::table("t", &[("tenant_id", "int4"), ("id", "int4")], &[1]);
        let plan = TenantPlan {
            include: TenantFilter::Only(["1", "2", "3"].map(String::from).into()),
            tenant_keys: [(
                table.qualified_name(),
                crate::control::job_spec::TenantKey::Column("tenant_id".to_string()),
            )]
            .into(),
            peers: 1,
        };
        assert_eq!(
            owned(&plan, &table, 0, &[]).as_deref(),
            Some(r#""tenant_id"::text IN ('1', '2', '3')"#)
        );
        assert_eq!(
            owned(&plan, &table, 0, &["3".to_string()]).as_deref(),
            Some(r#"("tenant_id"::text IN ('1', '2', '3')) AND NOT ("tenant_id"::text IN ('3'))"#)
        );
        let other = fixtures::table("u", &[("tenant_id", "int4")], &[]);
        assert_eq!(owned(&plan, &other, 0, &[]), None, "not a job table");
    }
}
