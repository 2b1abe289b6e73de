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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_postgres::{Client, Transaction};

use crate::change::{HistoryEvent, Lsn, Scope, TenantAction, TenantChange};
use crate::operators::partition::{tenant_route, TenantPlan};
use crate::sinks::large::{LiveParts, PartSource};
use crate::sinks::pg_apply::execute::{
    apply_steps, dead_letter_all, pipelined_write, prepared, run_pipelined, ConnectionCache,
    Counts, Write,
};
use crate::sinks::pg_apply::floors::{self, Floors};
use crate::sinks::pg_apply::history::{history_shape_known, history_statements, write_history};
use crate::sinks::pg_apply::plan::{plan_table, Step};
use crate::sinks::pg_apply::round_trip::{self, RoundTripWindow};
use crate::sinks::pg_apply::statements::Statement;
use crate::sinks::pg_apply::store::{self, scope_key, sink_error};
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyBatch, ApplyReport, InFlight, Sink, SinkError, TenantApplied};

mod in_flight;
mod large;

/// Connects to a target database (as a replica where the role may:
/// [`crate::pg_connect::AS_REPLICA`]); the connection task runs on the current runtime.
pub async fn connect(dsn: &str) -> Result<Client, SinkError> {
    use crate::pg_connect::{self, ConnectError, OnClose};
    pg_connect::connect_target(dsn, "target", OnClose::Debug)
        .await
        .map_err(|e| match e {
            ConnectError::Postgres(e) => sink_error("connect to target", &e),
            setup => SinkError::Definite(format!("connect to target: {setup}")),
        })
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

/// A group [`Sink::send`] started: what its outcome settles.
struct Unsettled {
    /// The `helios.group` number its transaction sets (`None`: it had nothing to write).
    group: Option<u64>,
    /// The checkpoints it advances, recorded once it is durable.
    checkpoints: HashMap<String, Lsn>,
    /// Set when a plain insert of it met a key the target holds.
    conflict: Arc<AtomicBool>,
}

/// The apply sink of one worker.
pub struct PgApplySink {
    job: String,
    dsn: String,
    plan: Arc<TenantPlan>,
    worker: u32,
    client: Option<Arc<Client>>,
    cache: ConnectionCache,
    /// Groups [`Sink::send`] started whose outcome is not settled yet, oldest first.
    unsettled: VecDeque<Unsettled>,
    /// The `helios.group` number the next sent group sets on the connection.
    next_group: u64,
    /// The round trip to the target: measured at connect, sampled again while connected.
    round_trip: RoundTripWindow,
    checkpoints: HashMap<String, Lsn>,
    /// The watermarks among `checkpoints`: (worker index, worker count, LSN).
    watermarks: Vec<(u32, u32, Lsn)>,
    /// The watermark the next apply records (see [`Sink::set_watermark`]).
    pending_watermark: Option<Lsn>,
    failed_tables: HashMap<String, String>,
    /// What backfills loaded, which the stream must not apply again (`floors`).
    floors: Floors,
    /// Keys a group inserts first go out as plain inserts (`plan` module doc); off for
    /// the rest of the sink's life once the target held such a key.
    plain_inserts: bool,
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
            unsettled: VecDeque::new(),
            next_group: 1,
            round_trip: RoundTripWindow::new(round_trip::SAMPLE_EVERY),
            checkpoints: HashMap::new(),
            watermarks: Vec::new(),
            pending_watermark: None,
            failed_tables: HashMap::new(),
            floors: Floors::default(),
            plain_inserts: true,
        }
    }

    /// Samples the round trip every `every` while connected instead of
    /// [`round_trip::SAMPLE_EVERY`] (tests).
    #[cfg(test)]
    pub(crate) fn sample_round_trip_every(&mut self, every: std::time::Duration) {
        self.round_trip = RoundTripWindow::new(every);
    }

    /// Takes `rtt` as the round trip measured at connect (tests: a target near or far
    /// whatever this machine's load).
    #[cfg(test)]
    pub(crate) fn assume_round_trip(&mut self, rtt: std::time::Duration) {
        self.round_trip.connected(rtt, std::time::Instant::now());
    }

    /// Adds checkpoints that became durable (or were loaded) and keeps the watermarks
    /// among them at hand.
    fn record_checkpoints(&mut self, checkpoints: HashMap<String, Lsn>) {
        for (key, lsn) in checkpoints {
            if let Some((index, peers)) = store::watermark_of(&key) {
                match self
                    .watermarks
                    .iter_mut()
                    .find(|w| (w.0, w.1) == (index, peers))
                {
                    Some(w) => w.2 = w.2.max(lsn),
                    None => self.watermarks.push((index, peers, lsn)),
                }
            }
            let e = self.checkpoints.entry(key).or_insert(lsn);
            *e = (*e).max(lsn);
        }
    }

    /// The commit LSN up to which `scope` is applied: its own checkpoint, or the watermark
    /// of the worker that owned it under any worker count this job has run with.
    fn covered(&self, scope: &Scope, key: &str) -> Option<Lsn> {
        let own = self.checkpoints.get(key).copied();
        let by_watermark = match scope {
            Scope::Tenant(tenant) => {
                let route = tenant_route(tenant);
                self.watermarks
                    .iter()
                    .filter(|&&(index, peers, _)| store::worker_owns(index, peers, route))
                    .map(|w| w.2)
                    .max()
            }
            Scope::Worker { index, peers } => self
                .watermarks
                .iter()
                .filter(|w| (w.0, w.1) == (*index, *peers))
                .map(|w| w.2)
                .max(),
        };
        own.max(by_watermark)
    }

    /// Whether a backfill loaded `change` (committed at `lsn`) already.
    fn below_floor(&self, change: &TenantChange, lsn: Lsn) -> bool {
        if !self.floors.may_cover(lsn) {
            return false;
        }
        let tenant = match &change.scope {
            Scope::Tenant(t) => Some(t.as_str()),
            Scope::Worker { .. } => None,
        };
        self.floors
            .covers(&change.table.qualified_name(), tenant, lsn)
    }

    /// The target held a key a plain insert wrote: upserts from now on.
    fn stop_plain_inserts(&mut self) {
        if std::mem::replace(&mut self.plain_inserts, false) {
            tracing::warn!(job = %self.job, worker = self.worker, "the target already held a key the source inserted (rows written outside this job?); applying with upserts from now on");
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
                        covered: self.covered(&change.scope, &key),
                        key,
                        applied: None,
                    }
                });
                if scope.covered.is_some_and(|c| c >= batch.commit_lsn)
                    || self.below_floor(change, batch.commit_lsn)
                {
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
                    let tenant = Scope::Tenant(event.tenant.clone());
                    let key = scope_key(&tenant);
                    ScopeProgress {
                        covered: self.covered(&tenant, &key),
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
        // One watermark row covers every scope applied up to it; a scope gets a row of
        // its own only when this call applies it past the watermark (a tenant served
        // ahead of an earlier transaction still pending).
        let watermark = self.pending_watermark;
        let mut checkpoints: HashMap<String, Lsn> = HashMap::new();
        let mut applied_any = false;
        for s in scopes.into_values().chain(history_scopes.into_values()) {
            if let Some(applied) = s.applied {
                applied_any = true;
                if watermark.is_some_and(|w| applied <= w) {
                    continue;
                }
                let e = checkpoints.entry(s.key).or_insert(applied);
                *e = (*e).max(applied);
            }
        }
        if let (Some(w), true) = (watermark, applied_any) {
            checkpoints.insert(store::watermark_key(self.worker, self.plan.peers), w);
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
        // Fastest when every step is one plain statement: the whole transaction goes out
        // at once (one round trip).
        let first_try = match self.pipeline_plan(&work.by_table) {
            Some((steps, history)) => {
                let mut writes: Vec<Write<'_>> = steps
                    .iter()
                    .filter_map(|step| pipelined_write(&self.plan, step))
                    .collect();
                writes.extend(versions_writes(history));
                self.write_pipelined(client, writes, &work.checkpoints)
                    .await
            }
            None => {
                self.write(client, &work.by_table, &work.checkpoints, false)
                    .await
            }
        };
        let written = match first_try {
            Err(SinkError::Definite(reason)) => {
                tracing::warn!(job = %self.job, worker = self.worker, error = %reason, "group failed; applying it again table by table");
                self.cache.shapes.clear();
                self.cache.history_shapes.clear();
                if self.cache.out_of_step.is_set() {
                    self.fresh_session(client).await?;
                }
                self.write(client, &work.by_table, &work.checkpoints, true)
                    .await?
            }
            other => other?,
        };
        report.upserted += written.upserted;
        report.deleted += written.deleted;
        report.dead_lettered += written.dead_lettered;
        report.bytes += written.bytes;
        self.record_checkpoints(work.checkpoints);
        report.tenants = work.tenants;
        Ok(report)
    }

    /// The steps of a group when every step is one plain statement and every table's
    /// shape (and history table's shape) is already known to match, with the statements
    /// that write its history versions; `None` when something needs the sequential path
    /// (a shape to sync or a history table to create, a truncate, a dead letter, a table
    /// in error).
    fn pipeline_plan<'a>(
        &self,
        by_table: &BTreeMap<String, TableWork<'a>>,
    ) -> Option<(Vec<Step<'a>>, Vec<Statement<'a>>)> {
        let mut out = Vec::new();
        let mut history = Vec::new();
        for (table, work) in by_table {
            if self.failed_tables.contains_key(table) {
                return None;
            }
            if let Some(&last) = work.history.last() {
                // The latest shape of the group, as the sequential path writes it.
                if !history_shape_known(&self.cache, table, &last.table) {
                    return None;
                }
                history.extend(history_statements(&last.table, &work.history));
            }
            for step in plan_table(
                work.changes.iter().copied(),
                self.plain_inserts,
                &self.floors,
            ) {
                match step {
                    Step::SyncShape(shape) => {
                        if !self
                            .cache
                            .shapes
                            .get(table)
                            .is_some_and(|known| **known == *shape)
                        {
                            return None;
                        }
                    }
                    Step::TruncateTenant { .. }
                    | Step::TruncateOwned { .. }
                    | Step::DeadLetter { .. } => return None,
                    plain => out.push(plain),
                }
            }
        }
        Some((out, history))
    }

    /// One target transaction sent as a pipeline ([`run_pipelined`]): one round trip, two
    /// with a `COPY`. The first error (in statement order) is returned.
    async fn write_pipelined(
        &mut self,
        client: &Client,
        mut writes: Vec<Write<'_>>,
        checkpoints: &HashMap<String, Lsn>,
    ) -> Result<ApplyReport, SinkError> {
        writes.extend(checkpoint_write(&self.job, checkpoints));
        let mut prepared_stmts = Vec::with_capacity(writes.len());
        for write in &writes {
            prepared_stmts.push(prepared(client, &mut self.cache, write.text()).await?);
        }
        let out_of_step = self.cache.out_of_step.clone();
        match run_pipelined(client, "BEGIN", &writes, &prepared_stmts, (&out_of_step, 0)).await {
            Ok(mut report) => {
                report.bytes = writes.iter().map(Write::bytes).sum();
                Ok(report)
            }
            Err((what, e)) => {
                self.note_conflict(&e);
                Err(sink_error(what, &e))
            }
        }
    }

    /// A unique violation in the pipelined path: plain inserts met a key the target holds;
    /// the fallback path applies the group again with upserts.
    fn note_conflict(&mut self, e: &tokio_postgres::Error) {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
            self.stop_plain_inserts();
        }
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

    /// The history versions of a table in error state, in a savepoint of `tx`: the
    /// history table records the source's versions even while the table refuses its
    /// changes, as the Parquet cold tier does from the same stream, so the version books
    /// restored from it at the next start are the ones the cold tier holds (and a resync
    /// versions only what changed after). A history write the target refuses as well is
    /// rolled back alone and its versions skipped, with an error logged and the first
    /// LSN missed recorded in the table's state (`history_missed_lsn`).
    async fn write_history_in_error(
        &mut self,
        tx: &Transaction<'_>,
        table: &str,
        history: &[&HistoryEvent],
        bytes: &mut u64,
    ) -> Result<(), SinkError> {
        if history.is_empty() {
            return Ok(());
        }
        tx.batch_execute("SAVEPOINT helios_history")
            .await
            .map_err(|e| sink_error("savepoint", &e))?;
        match write_history(tx, &mut self.cache, table, history, bytes).await {
            Ok(()) => tx
                .batch_execute("RELEASE SAVEPOINT helios_history")
                .await
                .map_err(|e| sink_error("release savepoint", &e)),
            Err(SinkError::Definite(reason)) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT helios_history")
                    .await
                    .map_err(|e| sink_error("rollback to savepoint", &e))?;
                self.cache.history_shapes.remove(table);
                tracing::error!(job = %self.job, table = %table, versions = history.len(), error = %reason,
                    "table in error state: its history table refused the versions too; they are not recorded");
                let first = history
                    .iter()
                    .map(|e| e.delta.changed_at().lsn)
                    .min()
                    .unwrap_or(0);
                store::mark_history_missed(tx, &self.job, table, first).await?;
                // The status says so (the state read at the next connect says it too).
                if let Some(known) = self.failed_tables.get_mut(table) {
                    if !known.contains(store::HISTORY_MISSED) {
                        known.push_str(&store::history_missed_note(first));
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Every table's steps inside `tx`. Tables in error (known, or in `failing_now`) have
    /// their changes dead-lettered and their history versions recorded
    /// ([`Self::write_history_in_error`]). An error names the table whose steps failed (`None`
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
                self.write_history_in_error(tx, table, &work.history, &mut report.bytes)
                    .await
                    .map_err(untied)?;
                continue;
            }
            // The isolating fallback never assumes anything about the target's keys.
            let fresh = self.plain_inserts && !isolate;
            let steps = plan_table(changes.iter().copied(), fresh, &self.floors);
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
                Ok(()) => {
                    write_history(tx, &mut self.cache, table, &work.history, &mut report.bytes)
                        .await
                }
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
                    self.write_history_in_error(tx, table, &work.history, &mut report.bytes)
                        .await
                        .map_err(untied)?;
                    self.failed_tables.insert(table.clone(), reason);
                }
                Err(_) if fresh && std::mem::take(&mut self.cache.unique_violation) => {
                    self.stop_plain_inserts();
                    return Err((
                        None,
                        SinkError::Transient(format!(
                            "{table}: a plain insert met a key the target holds; applying again with upserts"
                        )),
                    ));
                }
                Err(e) => return Err((Some(table.clone()), e)),
            }
        }
        Ok(())
    }

    fn take_client(&mut self) -> Result<Arc<Client>, SinkError> {
        match self.client.take() {
            Some(c) if self.cache.out_of_step.is_set() => {
                drop(c);
                Err(SinkError::Transient(
                    "the connection's answers are out of step after a refused COPY: reconnecting"
                        .into(),
                ))
            }
            Some(c) => Ok(c),
            None => Err(SinkError::Transient("not connected to the target".into())),
        }
    }

    /// Whether `client` can take requests: open, and its answers in step ([`OutOfStep`]).
    fn usable(&self, client: &Client) -> bool {
        !client.is_closed() && !self.cache.out_of_step.is_set()
    }

    /// Replaces `client`, whose answers are out of step ([`OutOfStep`]), with a new
    /// session to the target, with fresh caches (the failed transaction rolled back: the
    /// checkpoints stand).
    pub(super) async fn fresh_session(&mut self, client: &mut Client) -> Result<(), SinkError> {
        tracing::warn!(job = %self.job, worker = self.worker,
            "the target refused a COPY before its go-ahead, which puts the connection's answers out of step; going on in a new session");
        *client = connect(&self.dsn).await?;
        self.cache = ConnectionCache {
            unique_violation: self.cache.unique_violation,
            ..Default::default()
        };
        Ok(())
    }

    /// Keeps the connection unless it broke; a failed transaction forgets the shapes
    /// created inside it (they were rolled back with it).
    fn put_back<T>(&mut self, client: Arc<Client>, result: &Result<T, SinkError>) {
        match result {
            Err(SinkError::Transient(_)) if client.is_closed() => {}
            _ if self.cache.out_of_step.is_set() => {}
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
        let result = match exclusive(&mut client) {
            Ok(c) => self.apply_inner(c, batches).await,
            Err(e) => Err(e),
        };
        self.put_back(client, &result);
        result
    }

    async fn apply_large(&mut self, txn: &mut SpilledTxn) -> Result<ApplyReport, SinkError> {
        let mut client = self.take_client()?;
        let result = match exclusive(&mut client) {
            Ok(c) => self.apply_large_inner(c, txn).await,
            Err(e) => Err(e),
        };
        self.put_back(client, &result);
        result
    }

    /// Every plain group goes out at once as a pipeline of its own (see
    /// [`PgApplySink::send_pipelined`]); the others wait for [`Sink::apply`].
    async fn send(&mut self, batches: &[ApplyBatch]) -> Option<InFlight> {
        self.send_pipelined(batches).await
    }

    fn settle(&mut self, outcome: &Result<ApplyReport, SinkError>) {
        let Some(sent) = self.unsettled.pop_front() else {
            return;
        };
        match outcome {
            Ok(_) => self.record_checkpoints(sent.checkpoints),
            Err(_) => {
                if sent.conflict.load(std::sync::atomic::Ordering::Relaxed) {
                    self.stop_plain_inserts();
                }
            }
        }
    }

    /// One target transaction, written part by part as the parts arrive. Any error ends
    /// the attempt (a table in error is handled by the retry from the spill file, which
    /// puts it in error state and keeps its changes as dead letters).
    async fn apply_large_live<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        parts: &mut LiveParts<'_, F>,
    ) -> Result<ApplyReport, SinkError> {
        let mut client = self.take_client()?;
        let lsn = parts.commit_lsn();
        let result = match exclusive(&mut client) {
            Ok(c) => self
                .write_large(c, lsn, PartSource::Live(parts), &HashMap::new())
                .await
                .map_err(|(_, e)| e),
            Err(e) => Err(e),
        };
        self.put_back(client, &result);
        result
    }

    fn set_watermark(&mut self, lsn: Lsn) {
        self.pending_watermark = Some(lsn);
    }

    fn round_trip(&self) -> Option<std::time::Duration> {
        self.round_trip.current()
    }

    fn tables_in_error(&self) -> Option<&HashMap<String, String>> {
        Some(&self.failed_tables)
    }

    /// A round-trip sample is due on a live connection.
    fn upkeep_due(&self) -> bool {
        self.round_trip.due(std::time::Instant::now())
            && self.client.as_ref().is_some_and(|c| self.usable(c))
    }

    /// Samples the round trip again when due, with no group in flight on the connection
    /// (a sample behind a transaction would time the transaction). A failed sample is
    /// only logged: the next group finds a broken connection and reconnects.
    async fn upkeep(&mut self, _idle: bool) {
        let now = std::time::Instant::now();
        if !self.round_trip.due(now) || !self.unsettled.is_empty() {
            return;
        }
        // Nothing in flight holds the connection either (a group's future owns a clone).
        let idle = |c: &&Arc<Client>| Arc::strong_count(c) == 1 && self.usable(c);
        let Some(client) = self.client.as_ref().filter(idle) else {
            return;
        };
        match round_trip::sample_live(client).await {
            Ok(sample) => self.round_trip.record(sample, now),
            Err(e) => {
                // Tried again after the interval, not before every group.
                self.round_trip.skipped(now);
                tracing::debug!(job = %self.job, worker = self.worker, error = %e, "round-trip sample failed")
            }
        }
    }

    async fn reconnect(&mut self) -> Result<(), SinkError> {
        if self.client.as_ref().is_some_and(|c| self.usable(c)) {
            return Ok(());
        }
        self.cache = ConnectionCache::default();
        // A new session: nothing sent on the old one is waiting on it.
        self.unsettled.clear();
        let client = connect(&self.dsn).await?;
        let first = round_trip::measure_on_connect(&client).await?;
        self.round_trip.connected(first, std::time::Instant::now());
        self.checkpoints.clear();
        self.watermarks.clear();
        let loaded = store::load_checkpoints(&client, &self.job).await?;
        self.record_checkpoints(loaded);
        self.failed_tables = store::load_failed_tables(&client, &self.job).await?;
        self.floors = floors::load(&client, &self.job).await?;
        tracing::debug!(job = %self.job, worker = self.worker, checkpoints = self.checkpoints.len(), backfill_floors = !self.floors.is_empty(), "target connected");
        self.client = Some(Arc::new(client));
        Ok(())
    }
}

/// The connection for a transaction of its own; an error while a group sent with
/// [`Sink::send`] still holds it (the worker settles those first).
fn exclusive(client: &mut Arc<Client>) -> Result<&mut Client, SinkError> {
    Arc::get_mut(client).ok_or_else(|| {
        SinkError::Transient("a group sent earlier is still in flight on the connection".into())
    })
}

/// The write of a pipelined transaction that records `checkpoints` (none when empty).
fn checkpoint_write(job: &str, checkpoints: &HashMap<String, Lsn>) -> Option<Write<'static>> {
    store::checkpoints_statement(job, checkpoints).map(|s| Write::Statement(s, Counts::Bookkeeping))
}

/// A group's history statements as pipelined writes (their rows are versions, not
/// upserts or deletes).
fn versions_writes<'a>(
    statements: impl IntoIterator<Item = Statement<'a>>,
) -> impl Iterator<Item = Write<'a>> {
    statements
        .into_iter()
        .map(|stmt| Write::Statement(stmt, Counts::Versions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{fixtures, Cell};
    use crate::control::job_spec::TenantFilter;

    fn sink(worker: u32, peers: u32) -> PgApplySink {
        let plan = TenantPlan {
            include: TenantFilter::All,
            tenant_keys: HashMap::from([(
                "app.t".to_string(),
                crate::control::job_spec::TenantKey::Column("tenant".to_string()),
            )]),
            peers,
        };
        PgApplySink::new("job", "host=unused", Arc::new(plan), worker)
    }

    fn batch(lsn: Lsn, tenants: &[&str]) -> ApplyBatch {
        let table = Arc::new(fixtures::table(
            "t",
            &[("tenant", "text"), ("id", "int")],
            &[0, 1],
        ));
        ApplyBatch {
            commit_lsn: lsn,
            changes: tenants
                .iter()
                .enumerate()
                .map(|(i, t)| TenantChange {
                    scope: Scope::Tenant((*t).into()),
                    seq: i as u32,
                    table: table.clone(),
                    action: TenantAction::Upsert {
                        old: None,
                        new: vec![Cell::Text((*t).into()), Cell::Text(i.to_string().into())],
                        insert: true,
                    },
                })
                .collect(),
            history: Vec::new(),
        }
    }

    /// In commit order one watermark row replaces a checkpoint per tenant; a tenant served
    /// ahead of a pending transaction keeps a row of its own.
    #[test]
    fn a_group_in_commit_order_records_one_watermark() {
        let mut s = sink(0, 1);
        s.set_watermark(20);
        let batches = [batch(10, &["a", "b", "c"]), batch(20, &["a", "d"])];
        let work = s.plan_work(&batches);
        assert_eq!(
            work.checkpoints,
            HashMap::from([("applied:0/1".to_string(), 20)])
        );
        // Served ahead: tenant e's transaction at 40 while one at 30 is still pending.
        s.set_watermark(29);
        let work = s.plan_work(std::slice::from_ref(&batches[0]));
        assert_eq!(work.checkpoints.get("applied:0/1"), Some(&29));
        let ahead = [batch(40, &["e"])];
        let work = s.plan_work(&ahead);
        assert_eq!(work.checkpoints.get("tenant:e"), Some(&40));
        assert_eq!(work.checkpoints.get("applied:0/1"), Some(&29));
    }

    /// A backfill's floors skip the loaded tenants' (or table's) changes committed below
    /// them, and nothing else.
    #[test]
    fn changes_below_a_backfill_floor_are_skipped() {
        let mut s = sink(0, 1);
        let mut floors = Floors::default();
        floors.insert("app.t", Some("new"), 50);
        s.floors = floors;
        let applied = |s: &PgApplySink, batches: &[ApplyBatch]| -> (Vec<String>, u64) {
            let work = s.plan_work(batches);
            let tenants = work
                .by_table
                .values()
                .flat_map(|w| w.changes.iter())
                .map(|(lsn, c)| format!("{lsn}:{:?}", c.scope))
                .collect();
            (tenants, work.skipped)
        };
        let batches = [batch(40, &["old", "new"]), batch(50, &["new"])];
        assert_eq!(
            applied(&s, &batches),
            (
                vec![
                    r#"40:Tenant("old")"#.to_string(),
                    r#"50:Tenant("new")"#.to_string()
                ],
                1
            )
        );
        let mut floors = Floors::default();
        floors.insert("app.t", None, 50);
        s.floors = floors;
        assert_eq!(
            applied(&s, &batches),
            (vec![r#"50:Tenant("new")"#.to_string()], 2)
        );
    }

    /// Replays are skipped by the watermark of the worker that owned the tenant, under the
    /// worker count the job ran with then, whatever the count is now.
    #[test]
    fn replays_are_skipped_by_the_watermark_of_the_owning_worker() {
        let tenants = ["a", "b", "c", "d", "e", "f", "g", "h"];
        // Two workers recorded watermarks 100 (worker 0) and 50 (worker 1).
        let mut s = sink(0, 1);
        s.record_checkpoints(HashMap::from([
            ("applied:0/2".to_string(), 100),
            ("applied:1/2".to_string(), 50),
            ("tenant:h".to_string(), 80),
        ]));
        let replay = [batch(70, &tenants)];
        let work = s.plan_work(&replay);
        let applied: Vec<&str> = work
            .by_table
            .values()
            .flat_map(|w| w.changes.iter())
            .filter_map(|(_, c)| match &c.scope {
                Scope::Tenant(t) => Some(t.as_str()),
                Scope::Worker { .. } => None,
            })
            .collect();
        let expected: Vec<&str> = tenants
            .iter()
            .copied()
            .filter(|t| tenant_route(t) % 2 == 1 && *t != "h")
            .collect();
        assert_eq!(applied, expected, "worker 0's tenants and h are covered");
        assert_eq!(work.skipped as usize, tenants.len() - expected.len());
        assert!(!expected.is_empty() && expected.len() < tenants.len());
    }

    #[test]
    fn watermark_keys_round_trip_and_reject_garbage() {
        assert_eq!(
            store::watermark_of(&store::watermark_key(3, 4)),
            Some((3, 4))
        );
        for bad in [
            "applied:4/4",
            "applied:x/2",
            "applied:1",
            "tenant:applied:0/1",
        ] {
            assert_eq!(store::watermark_of(bad), None, "{bad}");
        }
    }
}
