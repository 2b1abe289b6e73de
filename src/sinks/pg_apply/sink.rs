//! The PostgreSQL apply sink: applies a group of batches in one target transaction together
//! with the checkpoints that cover them.
//!
//! Per table the changes are planned into set-based steps (`plan.rs`). The transaction is
//! first tried without savepoints (fewest round trips). If a step fails with a definite
//! error (a column type the target lacks, a constraint the target adds), it is rolled back
//! and applied again with each table in its own savepoint: the failing table is rolled back
//! to its savepoint, put in error state, and its changes go to `helios.dead_letters` in the
//! same transaction, so the other tables keep flowing and nothing is lost. Transient errors abort the whole
//! transaction; the caller retries the same batches after reconnecting.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use crate::change::{HistoryEvent, Lsn, Scope, TableInfo, TenantAction, TenantChange};
use crate::operators::partition::{owned_tenants_sql, TenantPlan};
use crate::sinks::pg_apply::history::{close_versions, ensure_history_shape, insert_versions};
use crate::sinks::pg_apply::plan::{plan_table, Step};
use crate::sinks::pg_apply::statements::{self, Param, Statement};
use crate::sinks::pg_apply::store::{self, scope_key, sink_error, DeadLetter};
use crate::sinks::pg_apply::target_schema::ensure_shape;
use crate::sinks::spill::SpilledTxn;
use crate::sinks::versions::plan_history;
use crate::sinks::{ApplyBatch, ApplyReport, Sink, SinkError, TenantApplied};

/// Connects to a target database; the connection task runs on the current runtime.
pub async fn connect(dsn: &str) -> Result<Client, SinkError> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .map_err(|e| sink_error("connect to target", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "target connection closed");
        }
    });
    Ok(client)
}

/// What one apply call knows of one checkpoint scope.
struct ScopeProgress {
    /// The scope's checkpoint key.
    key: String,
    /// The commit LSN its checkpoint already covers.
    covered: Option<Lsn>,
    /// The highest commit LSN this call applies for it.
    applied: Option<Lsn>,
}

/// One apply call's work: per table what to write, and what it advances.
struct Work<'a> {
    by_table: BTreeMap<String, TableWork<'a>>,
    /// Checkpoint key → the commit LSN it advances to.
    checkpoints: HashMap<String, Lsn>,
    tenants: Vec<TenantApplied>,
    /// Changes the checkpoints already covered.
    skipped: u64,
}

/// One table's share of an apply: current-state changes and history events.
#[derive(Default)]
struct TableWork<'a> {
    changes: Vec<(Lsn, &'a TenantChange)>,
    history: Vec<&'a HistoryEvent>,
}

/// Caches that live as long as one connection.
#[derive(Default)]
struct ConnectionCache {
    /// Table shapes known to match the target.
    shapes: HashMap<String, Arc<TableInfo>>,
    /// History table shapes known to match the target.
    history_shapes: HashMap<String, Arc<TableInfo>>,
    /// Prepared statements by SQL text.
    statements: HashMap<String, tokio_postgres::Statement>,
}

/// The apply sink of one worker.
pub struct PgApplySink {
    job: String,
    dsn: String,
    plan: Arc<TenantPlan>,
    worker: u32,
    client: Option<Client>,
    cache: ConnectionCache,
    checkpoints: HashMap<String, Lsn>,
    failed_tables: HashMap<String, String>,
}

impl PgApplySink {
    /// A sink for worker `worker`; it connects on its first [`Sink::reconnect`].
    pub fn new(job: &str, dsn: &str, plan: Arc<TenantPlan>, worker: u32) -> PgApplySink {
        PgApplySink {
            job: job.to_string(),
            dsn: dsn.to_string(),
            plan,
            worker,
            client: None,
            cache: ConnectionCache::default(),
            checkpoints: HashMap::new(),
            failed_tables: HashMap::new(),
        }
    }

    /// Sorts `batches` into per-table work, skipping what the checkpoints already cover.
    fn plan_work<'a>(&self, batches: &'a [ApplyBatch]) -> Work<'a> {
        let mut skipped = 0;
        // Keys, names and tenants are computed once per scope, table and tenant, not per row.
        let mut scopes: HashMap<&Scope, ScopeProgress> = HashMap::new();
        let mut grouped: BTreeMap<(&str, &str), TableWork> = BTreeMap::new();
        let mut history_scopes: HashMap<&str, ScopeProgress> = HashMap::new();
        let mut tenants: BTreeMap<&str, TenantApplied> = BTreeMap::new();
        for batch in batches {
            for change in &batch.changes {
                let scope = scopes.entry(&change.scope).or_insert_with(|| {
                    let key = scope_key(&change.scope);
                    ScopeProgress {
                        covered: self.checkpoints.get(&key).copied(),
                        key,
                        applied: None,
                    }
                });
                if scope.covered.is_some_and(|c| c >= batch.commit_lsn) {
                    skipped += 1;
                    continue;
                }
                scope.applied = scope.applied.max(Some(batch.commit_lsn));
                if let Scope::Tenant(t) = &change.scope {
                    let entry = tenants.entry(t).or_insert_with(|| TenantApplied {
                        tenant: t.clone(),
                        ..Default::default()
                    });
                    entry.lsn = entry.lsn.max(batch.commit_lsn);
                    match change.action {
                        TenantAction::Upsert { .. } => entry.upserts += 1,
                        _ => entry.deletes += 1,
                    }
                }
                grouped
                    .entry((&change.table.schema, &change.table.name))
                    .or_default()
                    .changes
                    .push((batch.commit_lsn, change));
            }
            for event in &batch.history {
                let scope = history_scopes.entry(&event.tenant).or_insert_with(|| {
                    let key = scope_key(&Scope::Tenant(event.tenant.clone()));
                    ScopeProgress {
                        covered: self.checkpoints.get(&key).copied(),
                        key,
                        applied: None,
                    }
                });
                if scope.covered.is_some_and(|c| c >= batch.commit_lsn) {
                    continue;
                }
                scope.applied = scope.applied.max(Some(batch.commit_lsn));
                grouped
                    .entry((&event.table.schema, &event.table.name))
                    .or_default()
                    .history
                    .push(event);
            }
        }
        let by_table: BTreeMap<String, TableWork> = grouped
            .into_iter()
            .map(|((schema, name), work)| (format!("{schema}.{name}"), work))
            .collect();
        let mut checkpoints: HashMap<String, Lsn> = HashMap::new();
        for s in scopes.into_values().chain(history_scopes.into_values()) {
            if let Some(applied) = s.applied {
                let e = checkpoints.entry(s.key).or_insert(applied);
                *e = (*e).max(applied);
            }
        }
        Work {
            by_table,
            checkpoints,
            tenants: tenants.into_values().collect(),
            skipped,
        }
    }

    async fn apply_inner(
        &mut self,
        client: &mut Client,
        batches: &[ApplyBatch],
    ) -> Result<ApplyReport, SinkError> {
        let work = self.plan_work(batches);
        let mut report = ApplyReport {
            skipped: work.skipped,
            ..Default::default()
        };
        if work.by_table.is_empty() {
            return Ok(report);
        }
        // Optimistic first: no savepoint per table (two round trips fewer per table). A
        // definite error rolls the whole transaction back and the batch is applied again
        // with a savepoint per table, which isolates the failing table.
        let written = match self
            .write(client, &work.by_table, &work.checkpoints, false)
            .await
        {
            Err(SinkError::Definite(_)) => {
                self.cache.shapes.clear();
                self.cache.history_shapes.clear();
                self.write(client, &work.by_table, &work.checkpoints, true)
                    .await?
            }
            other => other?,
        };
        report.upserted += written.upserted;
        report.deleted += written.deleted;
        report.dead_lettered += written.dead_lettered;
        report.bytes += written.bytes;
        self.checkpoints.extend(work.checkpoints);
        report.tenants = work.tenants;
        Ok(report)
    }

    /// One target transaction: every table's steps, then the checkpoints. With `isolate`,
    /// each table runs in a savepoint and a table failing definitely is put in error
    /// state (its changes kept as dead letters) while the others commit.
    async fn write(
        &mut self,
        client: &mut Client,
        by_table: &BTreeMap<String, TableWork<'_>>,
        checkpoints: &HashMap<String, Lsn>,
        isolate: bool,
    ) -> Result<ApplyReport, SinkError> {
        let mut report = ApplyReport::default();
        let tx = client
            .transaction()
            .await
            .map_err(|e| sink_error("begin", &e))?;
        self.write_tables(&tx, by_table, isolate, &HashMap::new(), &mut report)
            .await
            .map_err(|(_, e)| e)?;
        store::store_checkpoints(&tx, &self.job, checkpoints).await?;
        tx.commit().await.map_err(|e| sink_error("commit", &e))?;
        Ok(report)
    }

    /// Every table's steps inside `tx`. Tables in error (known, or in `failing_now`) have
    /// their changes dead-lettered. An error names the table whose steps failed (`None`
    /// when it was not one table's).
    async fn write_tables(
        &mut self,
        tx: &Transaction<'_>,
        by_table: &BTreeMap<String, TableWork<'_>>,
        isolate: bool,
        failing_now: &HashMap<String, String>,
        report: &mut ApplyReport,
    ) -> Result<(), (Option<String>, SinkError)> {
        let untied = |e: SinkError| (None, e);
        for (table, work) in by_table {
            let changes = &work.changes;
            if let Some(reason) = self
                .failed_tables
                .get(table)
                .or_else(|| failing_now.get(table))
            {
                let reason = format!("table is in error state: {reason}");
                report.dead_lettered += dead_letter_all(tx, &self.job, table, changes, &reason)
                    .await
                    .map_err(untied)?;
                if !work.history.is_empty() {
                    tracing::warn!(job = %self.job, table = %table, versions = work.history.len(), "table in error state: its history versions are not written");
                }
                continue;
            }
            let steps = plan_table(changes.iter().copied());
            if isolate {
                tx.batch_execute("SAVEPOINT helios_table")
                    .await
                    .map_err(|e| untied(sink_error("savepoint", &e)))?;
            }
            let applied = apply_steps(
                tx,
                &mut self.cache,
                &self.plan,
                &self.job,
                table,
                steps,
                report,
            )
            .await;
            let applied = match applied {
                Ok(()) => write_history(tx, &mut self.cache, table, &work.history).await,
                e => e,
            };
            match applied {
                Ok(()) if isolate => {
                    tx.batch_execute("RELEASE SAVEPOINT helios_table")
                        .await
                        .map_err(|e| untied(sink_error("release savepoint", &e)))?;
                }
                Ok(()) => {}
                Err(SinkError::Definite(reason)) if isolate => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT helios_table")
                        .await
                        .map_err(|e| untied(sink_error("rollback to savepoint", &e)))?;
                    self.cache.shapes.remove(table);
                    self.cache.history_shapes.remove(table);
                    tracing::error!(job = %self.job, table = %table, error = %reason, "table put in error state; its changes are kept in helios.dead_letters");
                    let first_lsn = changes.first().map(|c| c.0).unwrap_or(0);
                    store::mark_table_failed(tx, &self.job, table, &reason, first_lsn)
                        .await
                        .map_err(untied)?;
                    report.dead_lettered += dead_letter_all(tx, &self.job, table, changes, &reason)
                        .await
                        .map_err(untied)?;
                    self.failed_tables.insert(table.clone(), reason);
                }
                Err(e) => return Err((Some(table.clone()), e)),
            }
        }
        Ok(())
    }

    /// A spilled transaction in one target transaction, read part by part. A table that
    /// fails definitely rolls everything back; the transaction is then written again with
    /// that table in error state (all of its changes dead-lettered), so no table ever
    /// holds half of the transaction.
    async fn apply_large_inner(
        &mut self,
        client: &mut Client,
        txn: &mut SpilledTxn,
    ) -> Result<ApplyReport, SinkError> {
        let mut failing_now: HashMap<String, String> = HashMap::new();
        loop {
            match self.write_large(client, txn, &failing_now).await {
                Ok(report) => {
                    self.failed_tables.extend(failing_now);
                    return Ok(report);
                }
                Err((Some(table), SinkError::Definite(reason)))
                    if !failing_now.contains_key(&table) =>
                {
                    self.cache.shapes.clear();
                    self.cache.history_shapes.clear();
                    tracing::error!(job = %self.job, table = %table, error = %reason, lsn = txn.commit_lsn(), "table put in error state; its changes in this large transaction are kept in helios.dead_letters");
                    failing_now.insert(table, reason);
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    async fn write_large(
        &mut self,
        client: &mut Client,
        txn: &mut SpilledTxn,
        failing_now: &HashMap<String, String>,
    ) -> Result<ApplyReport, (Option<String>, SinkError)> {
        let untied = |e: SinkError| (None, e);
        let spill = |e: crate::sinks::spill::SpillError| (None, SinkError::Definite(e.to_string()));
        let lsn = txn.commit_lsn();
        let tx = client
            .transaction()
            .await
            .map_err(|e| untied(sink_error("begin", &e)))?;
        for (table, reason) in failing_now {
            store::mark_table_failed(&tx, &self.job, table, reason, lsn)
                .await
                .map_err(untied)?;
        }
        let mut report = ApplyReport::default();
        let mut checkpoints: HashMap<String, Lsn> = HashMap::new();
        let mut tenants: BTreeMap<String, TenantApplied> = BTreeMap::new();
        let mut parts = txn.parts().map_err(spill)?;
        while let Some(part) = parts.next_part().map_err(spill)? {
            let work = self.plan_work(std::slice::from_ref(&part));
            report.skipped += work.skipped;
            for (k, v) in work.checkpoints {
                let e = checkpoints.entry(k).or_insert(v);
                *e = (*e).max(v);
            }
            for t in work.tenants {
                let e = tenants
                    .entry(t.tenant.clone())
                    .or_insert_with(|| TenantApplied {
                        tenant: t.tenant.clone(),
                        ..Default::default()
                    });
                e.lsn = e.lsn.max(t.lsn);
                e.upserts += t.upserts;
                e.deletes += t.deletes;
            }
            self.write_tables(&tx, &work.by_table, false, failing_now, &mut report)
                .await?;
        }
        store::store_checkpoints(&tx, &self.job, &checkpoints)
            .await
            .map_err(untied)?;
        tx.commit()
            .await
            .map_err(|e| untied(sink_error("commit", &e)))?;
        self.checkpoints.extend(checkpoints);
        report.tenants = tenants.into_values().collect();
        Ok(report)
    }

    fn take_client(&mut self) -> Result<Client, SinkError> {
        self.client
            .take()
            .ok_or_else(|| SinkError::Transient("not connected to the target".into()))
    }

    /// Keeps the connection unless it broke; a failed transaction forgets the shapes
    /// created inside it (they were rolled back with it).
    fn put_back<T>(&mut self, client: Client, result: &Result<T, SinkError>) {
        match result {
            Err(SinkError::Transient(_)) if client.is_closed() => {}
            _ => self.client = Some(client),
        }
        if result.is_err() {
            self.cache.shapes.clear();
            self.cache.history_shapes.clear();
        }
    }
}

impl Sink for PgApplySink {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn apply(&mut self, batches: &[ApplyBatch]) -> Result<ApplyReport, SinkError> {
        let mut client = self.take_client()?;
        let result = self.apply_inner(&mut client, batches).await;
        self.put_back(client, &result);
        result
    }

    async fn apply_large(&mut self, txn: &mut SpilledTxn) -> Result<ApplyReport, SinkError> {
        let mut client = self.take_client()?;
        let result = self.apply_large_inner(&mut client, txn).await;
        self.put_back(client, &result);
        result
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.cache = ConnectionCache::default();
        let client = connect(&self.dsn).await?;
        self.checkpoints = store::load_checkpoints(&client, &self.job).await?;
        self.failed_tables = store::load_failed_tables(&client, &self.job).await?;
        tracing::debug!(job = %self.job, worker = self.worker, checkpoints = self.checkpoints.len(), "target connected");
        self.client = Some(client);
        Ok(())
    }
}

/// Writes one table's history events: opened versions inserted, closed ones closed.
async fn write_history(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    table_name: &str,
    events: &[&HistoryEvent],
) -> Result<(), SinkError> {
    let Some(last) = events.last() else {
        return Ok(());
    };
    // The latest shape of the batch (a schema change mid-batch only adds columns).
    let table = &last.table;
    if cache
        .history_shapes
        .get(table_name)
        .is_none_or(|known| **known != **table)
    {
        ensure_history_shape(tx, table).await?;
        cache
            .history_shapes
            .insert(table_name.to_owned(), table.clone());
    }
    let (opens, closes) = plan_history(events);
    let mut bytes = 0;
    if !opens.is_empty() {
        run(tx, cache, &mut bytes, insert_versions(table, &opens)).await?;
    }
    if !closes.is_empty() {
        run(tx, cache, &mut bytes, close_versions(table, &closes)).await?;
    }
    Ok(())
}

async fn dead_letter_all(
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

async fn apply_steps(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    plan: &TenantPlan,
    job: &str,
    table_name: &str,
    steps: Vec<Step>,
    report: &mut ApplyReport,
) -> Result<(), SinkError> {
    for step in steps {
        let owned = |table: &TableInfo, index: u32| {
            plan.tenant_columns
                .get(&table.qualified_name())
                .and_then(|col| owned_tenants_sql(plan, col, index))
        };
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
            Step::Upsert { table, rows } => {
                report.upserted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::upsert(&table, &rows),
                )
                .await?;
            }
            Step::Append { table, rows } => {
                report.upserted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::append(&table, &rows),
                )
                .await?;
            }
            Step::DeleteKeys { table, keys } => {
                report.deleted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::delete_keys(&table, &keys),
                )
                .await?;
            }
            Step::UpdateRow { table, key, new } => {
                report.upserted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::update_row(&table, &key, &new),
                )
                .await?;
            }
            Step::DeleteMatching { table, old } => {
                report.deleted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::delete_matching(&table, &old, None),
                )
                .await?;
            }
            Step::UpdateMatching { table, old, new } => {
                report.upserted += run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::update_matching(&table, &old, &new),
                )
                .await?;
            }
            Step::DeleteOwned { table, old, index } => {
                if let Some(pred) = owned(&table, index) {
                    report.deleted += run(
                        tx,
                        cache,
                        &mut report.bytes,
                        statements::delete_owned(&table, &old, &pred),
                    )
                    .await?;
                }
            }
            Step::TruncateTenant { table, tenant } => {
                let Some(col) = plan.tenant_columns.get(&table.qualified_name()) else {
                    continue;
                };
                let n = run(
                    tx,
                    cache,
                    &mut report.bytes,
                    statements::truncate_tenant(&table, col, &tenant),
                )
                .await?;
                tracing::info!(job, table = table_name, tenant = %tenant, rows = n, "source TRUNCATE applied as a delete of this tenant's rows");
                report.deleted += n;
            }
            Step::TruncateOwned { table, index } => {
                if let Some(pred) = owned(&table, index) {
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
        }
    }
    Ok(())
}

async fn run(
    tx: &Transaction<'_>,
    cache: &mut ConnectionCache,
    bytes: &mut u64,
    stmt: Statement,
) -> Result<u64, SinkError> {
    *bytes += stmt
        .params
        .iter()
        .map(|p| match p {
            Param::Column(v) => v.iter().flatten().map(|s| s.len() as u64 + 1).sum::<u64>(),
            Param::Value(v) => v.as_ref().map_or(1, |s| s.len() as u64 + 1),
        })
        .sum::<u64>();
    let prepared = match cache.statements.get(&stmt.text) {
        Some(p) => p.clone(),
        None => {
            let p = tx
                .prepare(&stmt.text)
                .await
                .map_err(|e| sink_error("prepare", &e))?;
            cache.statements.insert(stmt.text.clone(), p.clone());
            p
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> = stmt
        .params
        .iter()
        .map(|p| match p {
            Param::Column(v) => v as &(dyn ToSql + Sync),
            Param::Value(v) => v as &(dyn ToSql + Sync),
        })
        .collect();
    tx.execute(&prepared, &params)
        .await
        .map_err(|e| sink_error("apply", &e))
}
