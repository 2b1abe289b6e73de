//! The PostgreSQL sink's large transactions: written part by part into one target
//! transaction, as the parts arrive or from the spill file, each part of plain writes one
//! ahead of the next (`part_pipeline`).

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use super::{PgApplySink, TableWork};
use crate::change::Lsn;
use crate::sinks::large::PartSource;
use crate::sinks::pg_apply::part_pipeline;
use crate::sinks::pg_apply::plan::plan_table;
use crate::sinks::pg_apply::store::{self, sink_error};
use crate::sinks::spill::SpilledTxn;
use crate::sinks::{ApplyReport, SinkError, TenantApplied};

impl PgApplySink {
    /// A spilled transaction in one target transaction, read part by part. A table that
    /// fails definitely rolls everything back; the transaction is then written again with
    /// that table in error state (all of its changes dead-lettered), so no table ever
    /// holds half of the transaction.
    pub(super) async fn apply_large_inner(
        &mut self,
        client: &mut Client,
        txn: &mut SpilledTxn,
    ) -> Result<ApplyReport, SinkError> {
        let mut failing_now: HashMap<String, String> = HashMap::new();
        let lsn = txn.commit_lsn();
        loop {
            let parts = PartSource::<fn(crate::sinks::backlog::Load)>::spilled(txn)?;
            match self.write_large(client, lsn, parts, &failing_now).await {
                Ok(report) => {
                    self.failed_tables.extend(failing_now);
                    return Ok(report);
                }
                Err((Some(table), SinkError::Definite(reason)))
                    if !failing_now.contains_key(&table) =>
                {
                    self.cache.shapes.clear();
                    self.cache.history_shapes.clear();
                    if self.cache.out_of_step.is_set() {
                        self.fresh_session(client).await?;
                    }
                    tracing::error!(job = %self.job, table = %table, error = %reason, lsn, "table put in error state; its changes in this large transaction are kept in helios.dead_letters");
                    failing_now.insert(table, reason);
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    /// Writes a large transaction part by part in one target transaction. An error names
    /// the table it is tied to, if any (that table is then put in error state and the
    /// transaction written again, from the spill file).
    pub(super) async fn write_large<F: FnMut(crate::sinks::backlog::Load) + Send>(
        &mut self,
        client: &mut Client,
        lsn: Lsn,
        mut parts: PartSource<'_, '_, '_, F>,
        failing_now: &HashMap<String, String>,
    ) -> Result<ApplyReport, (Option<String>, SinkError)> {
        let untied = |e: SinkError| (None, e);
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
        let mut in_flight: Option<part_pipeline::WritesInFlight<'_>> = None;
        while let Some(part) = parts.next_part().await.map_err(untied)? {
            if matches!(parts, PartSource::Live(_)) && !part.history.is_empty() {
                return Err(untied(SinkError::Transient(
                    "a large transaction with history versions is applied from its spill file"
                        .into(),
                )));
            }
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
            // A part of plain writes is sent whole and answered for after the next one is
            // prepared.
            let writes = self.plain_writes(&work.by_table, failing_now);
            if let Some(sent) = in_flight.take() {
                self.writes_done(sent, &mut report).await?;
            }
            match writes {
                Some(writes) => {
                    let (bytes, sent) = part_pipeline::send(&tx, &mut self.cache, writes).await?;
                    report.bytes += bytes;
                    in_flight = Some(sent);
                }
                None => {
                    self.write_tables(&tx, &work.by_table, false, failing_now, &mut report)
                        .await?
                }
            }
        }
        if let Some(sent) = in_flight.take() {
            self.writes_done(sent, &mut report).await?;
        }
        // Ends its borrow of the transaction before the commit.
        drop(in_flight);
        store::store_checkpoints(&tx, &self.job, &checkpoints)
            .await
            .map_err(untied)?;
        tx.commit()
            .await
            .map_err(|e| untied(sink_error("commit", &e)))?;
        self.record_checkpoints(checkpoints);
        report.tenants = tenants.into_values().collect();
        Ok(report)
    }

    /// The part's writes when every one is a plain statement or a `COPY` (see
    /// [`part_pipeline`]) and no table of it is in error state or keeps history.
    fn plain_writes(
        &self,
        by_table: &BTreeMap<String, TableWork<'_>>,
        failing_now: &HashMap<String, String>,
    ) -> Option<Vec<part_pipeline::TableWrite>> {
        let eligible = |(table, work): (&String, &TableWork<'_>)| {
            work.history.is_empty()
                && !self.failed_tables.contains_key(table)
                && !failing_now.contains_key(table)
        };
        if !by_table.iter().all(eligible) {
            return None;
        }
        let plans = by_table.iter().map(|(table, work)| {
            let steps = plan_table(
                work.changes.iter().copied(),
                self.plain_inserts,
                &self.floors,
            );
            (table.as_str(), steps)
        });
        part_pipeline::plain_writes(plans, &self.plan, &self.cache)
    }

    /// Waits for writes in flight, counting what they applied; a failure is tied to its
    /// table, as [`Self::write_tables`] ties it, or stops plain inserts when a plain insert
    /// met a key the target holds.
    async fn writes_done(
        &mut self,
        sent: part_pipeline::WritesInFlight<'_>,
        report: &mut ApplyReport,
    ) -> Result<(), (Option<String>, SinkError)> {
        let Err(failed) = sent.finish(report).await else {
            return Ok(());
        };
        if failed.keyed_insert
            && failed.error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        {
            self.stop_plain_inserts();
            return Err((
                None,
                SinkError::Transient(format!(
                    "{}: a plain insert met a key the target holds; applying again with upserts",
                    failed.table
                )),
            ));
        }
        Err((Some(failed.table), sink_error("apply", &failed.error)))
    }
}
