//! The PostgreSQL sink's groups sent in flight ([`crate::sinks::Sink::send`]): each group
//! one pipelined target transaction sent without waiting for its answers, behind the
//! groups before it, guarded so that nothing commits past a failed one.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{checkpoint_write, versions_writes, PgApplySink, Unsettled};
use crate::sinks::pg_apply::execute::{
    pipelined_write, plain_statement, prepared, run_pipelined, Write,
};
use crate::sinks::pg_apply::statements::Statement;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::worker::AUTO_PIPELINE_ROUND_TRIP;
use crate::sinks::{ApplyBatch, ApplyReport, InFlight, SinkError};

impl PgApplySink {
    /// Sends a group as one pipelined target transaction without waiting for its answers,
    /// behind the groups sent before it (see [`crate::sinks::Sink::send`]). Its parameters are copied
    /// out of the rows, so the group may outlive this call. Each such transaction sets
    /// the session's `helios.group` to its number, and one sent while an earlier one is
    /// unsettled first checks that the earlier one set its number: if that one failed
    /// (rolled back, setting and all), the check divides by zero and this one rolls back
    /// too, so nothing commits past a failed group. `None` when the group needs the
    /// sequential path, or a statement not prepared yet while groups are in flight (the
    /// sequential path prepares it after they are settled), or one that fails to prepare.
    /// Nothing here waits on the connection while a group is in flight, except a `COPY`
    /// for the server's go-ahead, in a task of its own ([`spawned`]): the group's rows
    /// are planned and encoded while the target applies the group before it.
    pub(super) async fn send_pipelined(&mut self, batches: &[ApplyBatch]) -> Option<InFlight> {
        let client = self.client.clone().filter(|c| self.usable(c))?;
        let work = self.plan_work(batches);
        let mut report = ApplyReport {
            skipped: work.skipped,
            ..Default::default()
        };
        if work.by_table.is_empty() {
            self.unsettled.push_back(Unsettled {
                group: None,
                checkpoints: HashMap::new(),
                conflict: Arc::default(),
            });
            return Some(Box::pin(std::future::ready(Ok(report))));
        }
        let (steps, history) = self.pipeline_plan(&work.by_table)?;
        // On a near target, large plain inserts as `COPY`, as the sequential path writes
        // them (see `spawned` below for what that asks of the flight); across a longer
        // round trip each `COPY`'s go-ahead would hold the connection for a round trip.
        let near = self
            .round_trip
            .current()
            .is_some_and(|rtt| rtt < AUTO_PIPELINE_ROUND_TRIP);
        let mut writes: Vec<Write<'static>> = steps
            .iter()
            .filter_map(|step| match near {
                true => pipelined_write(&self.plan, step),
                false => plain_statement(&self.plan, step).map(|(s, c)| Write::Statement(s, c)),
            })
            .map(Write::into_owned)
            .collect();
        let copies = writes.iter().any(|w| matches!(w, Write::Copy(_)));
        writes.extend(versions_writes(
            history.into_iter().map(Statement::into_owned),
        ));
        writes.extend(checkpoint_write(&self.job, &work.checkpoints));
        let mut prepared_stmts = Vec::with_capacity(writes.len());
        for write in &writes {
            let stmt = match self.cache.statements.get(write.text()) {
                Some(stmt) => stmt.clone(),
                // Preparing waits for an answer on the connection, behind the groups in
                // flight, whose answers the connection hands over only as their futures
                // are polled, after this call: it would never come.
                None if !self.unsettled.is_empty() => return None,
                None => prepared(&*client, &mut self.cache, write.text())
                    .await
                    .ok()?,
            };
            prepared_stmts.push(stmt);
        }
        let group = self.next_group;
        self.next_group += 1;
        let set = format!("SELECT set_config('helios.group', '{group}', false)");
        let begin = match self.unsettled.iter().rev().find_map(|u| u.group) {
            Some(before) => format!(
                "BEGIN; SELECT 1 / coalesce((current_setting('helios.group', true) = '{before}')::int, 0); {set}"
            ),
            None => format!("BEGIN; {set}"),
        };
        let conflict = Arc::new(AtomicBool::new(false));
        let out_of_step = self.cache.out_of_step.clone();
        self.unsettled.push_back(Unsettled {
            group: Some(group),
            checkpoints: work.checkpoints,
            conflict: conflict.clone(),
        });
        report.bytes = writes.iter().map(Write::bytes).sum();
        report.tenants = work.tenants;
        let flight = async move {
            let written = run_pipelined(
                &client,
                &begin,
                &writes,
                &prepared_stmts,
                (&out_of_step, group),
            )
            .await;
            if out_of_step.before(group) {
                return Err(SinkError::Transient(format!(
                    "group {group} went behind a COPY the target refused before its go-ahead, \
                     which puts the connection's answers out of step: applying it again on a new session"
                )));
            }
            match written {
                Ok(written) => {
                    report.upserted += written.upserted;
                    report.deleted += written.deleted;
                    Ok(report)
                }
                Err((what, e)) => {
                    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                        conflict.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(sink_error(what, &e))
                }
            }
        };
        let flight = started(Box::pin(flight)).await;
        Some(if copies { spawned(flight) } else { flight })
    }
}

/// Runs `flight` (already [`started`], so its requests are queued on the connection in
/// the order the groups were sent) as a task of its own, and returns its outcome to be
/// awaited later. A group with a `COPY` needs it: the `COPY` sends its rows only once the
/// server accepted it (after the groups before it), and the requests behind it (its
/// group's and the next groups') wait on the connection until its end is sent. Driven by
/// its own task, the group goes out, and its answers are read, while the sink prepares
/// the next group and without the worker polling it; a flight polled only when settled
/// would hold the connection until then.
fn spawned(flight: InFlight) -> InFlight {
    let task = tokio::spawn(flight);
    Box::pin(async move {
        task.await.unwrap_or_else(|e| {
            Err(SinkError::Transient(format!(
                "a group's target transaction task ended: {e}"
            )))
        })
    })
}

/// Polls `flight` once, so its requests go out now (tokio-postgres sends a request when
/// its future is first polled), and returns it to be awaited later.
async fn started(mut flight: InFlight) -> InFlight {
    let mut done = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(outcome) = flight.as_mut().poll(cx) {
            done = Some(outcome);
        }
        std::task::Poll::Ready(())
    })
    .await;
    match done {
        Some(outcome) => Box::pin(std::future::ready(outcome)),
        None => flight,
    }
}
