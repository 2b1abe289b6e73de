//! A large transaction's parts written one ahead: a part's writes are sent whole, and
//! their answers read only after the next part is prepared.
//!
//! A large transaction reaches the PostgreSQL sink in parts of about 20,000 rows, written
//! one after another into one target transaction. Written as any other group, the sink
//! received, spilled, planned and encoded a part while the target waited, then waited
//! while the target applied it: the target was busy about three quarters of the time.
//! Here a part whose every write is a plain statement or a `COPY` (see
//! [`plain_writes`]) is sent whole: each `COPY`'s rows and its end, each statement with
//! parameters of its own. The sink then receives, spills, plans and encodes the next
//! part, and only then reads the answers ([`WritesInFlight::finish`]), so the target
//! applies one part while the sink prepares the next. A part with anything else (a
//! table's shape to change, a TRUNCATE, a dead letter) first waits for the writes in
//! flight and is written as before.

use std::future::Future;
use std::pin::Pin;

use futures_util::SinkExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

use crate::operators::partition::TenantPlan;
use crate::sinks::pg_apply::execute::{pipelined_write, prepared, ConnectionCache, Counts, Write};
use crate::sinks::pg_apply::plan::Step;
use crate::sinks::pg_apply::statements::{CopyRows, Param, Statement};
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::{ApplyReport, SinkError};

/// What one write sends, owning its values.
pub(super) enum OwnedWrite {
    /// Rows loaded with `COPY`.
    Copy(CopyRows),
    /// A statement, and which count its affected rows add to.
    Statement(Statement<'static>, Counts),
}

/// One write of a part, with the table it belongs to.
pub(super) struct TableWrite {
    /// The table's qualified name.
    pub table: String,
    /// A plain insert into a keyed table: a unique violation then means the target held a
    /// key the plan took for new.
    pub keyed_insert: bool,
    pub write: OwnedWrite,
}

/// Most bytes of values a part sent whole may carry. The part's values stay in memory
/// until answered, beside the next part being prepared; a part of wide rows (parts close
/// at 16 MiB) is written as before instead, so its memory stays what it was.
pub const MAX_BYTES_IN_FLIGHT: u64 = 8 << 20;

/// The writes of a part whose every step is a plain statement or a `COPY` into a table
/// whose shape this connection already matched, of at most [`MAX_BYTES_IN_FLIGHT`] of
/// values; `None` for any other part. `plans` holds each table's name and steps.
pub(super) fn plain_writes<'a>(
    plans: impl IntoIterator<Item = (&'a str, Vec<Step<'a>>)>,
    plan: &TenantPlan,
    cache: &ConnectionCache,
) -> Option<Vec<TableWrite>> {
    let mut writes = Vec::new();
    let mut bytes = 0;
    for (name, steps) in plans {
        for step in &steps {
            if let Step::SyncShape(shape) = step {
                if cache
                    .shapes
                    .get(name)
                    .is_some_and(|known| **known == **shape)
                {
                    continue;
                }
                return None;
            }
            let keyed_insert =
                matches!(step, Step::Append { table, .. } if !table.key_columns().is_empty());
            let write = pipelined_write(plan, step)?;
            bytes += write.bytes();
            if bytes > MAX_BYTES_IN_FLIGHT {
                return None;
            }
            let write = match write {
                Write::Copy(rows) => OwnedWrite::Copy(rows),
                Write::Statement(stmt, counts) => OwnedWrite::Statement(stmt.into_owned(), counts),
            };
            writes.push(TableWrite {
                table: name.to_string(),
                keyed_insert,
                write,
            });
        }
    }
    Some(writes)
}

/// The answer of one write sent whole: the rows it affected.
type Answer<'t> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 't>>;

/// Writes sent, their answers not yet read.
pub(super) struct WritesInFlight<'t> {
    answers: Vec<(String, bool, Counts, Answer<'t>)>,
}

/// A write that failed: its table, whether it was a plain insert into a keyed table, and
/// the error.
pub(super) struct WriteFailed {
    pub table: String,
    pub keyed_insert: bool,
    pub error: tokio_postgres::Error,
}

/// Sends every write in `tx`, in order, without waiting for the server to apply them
/// (a `COPY` waits for the server to accept it, then sends its rows and its end). Returns
/// the bytes of values sent and the writes in flight; an error names the table whose
/// write could not be sent.
pub(super) async fn send<'t>(
    tx: &'t Transaction<'_>,
    cache: &mut ConnectionCache,
    writes: Vec<TableWrite>,
) -> Result<(u64, WritesInFlight<'t>), (Option<String>, SinkError)> {
    let mut bytes = 0;
    let mut answers = Vec::with_capacity(writes.len());
    for TableWrite {
        table,
        keyed_insert,
        write,
    } in writes
    {
        let tied = |e: SinkError| (Some(table.clone()), e);
        let (mut answer, counts): (Answer<'t>, Counts) = match write {
            OwnedWrite::Copy(rows) => {
                let stmt = prepared(tx, cache, &rows.text).await.map_err(tied)?;
                bytes += rows.data.len() as u64;
                let sink = tx.copy_in(&stmt).await.map_err(|e| {
                    // The connection's answers are out of step from here on.
                    cache.out_of_step.mark(0);
                    tied(sink_error("apply", &e))
                })?;
                let mut sink = Box::pin(sink);
                sink.send(rows.data)
                    .await
                    .map_err(|e| tied(sink_error("apply", &e)))?;
                (
                    Box::pin(async move { sink.as_mut().finish().await }),
                    Counts::Upserted,
                )
            }
            OwnedWrite::Statement(stmt, counts) => {
                let prepared = prepared(tx, cache, &stmt.text).await.map_err(tied)?;
                bytes += stmt.params.iter().map(Param::bytes).sum::<u64>();
                let answer: Answer<'t> = Box::pin(async move {
                    let params: Vec<&(dyn ToSql + Sync)> =
                        stmt.params.iter().map(Param::as_sql).collect();
                    tx.execute(&prepared, &params).await
                });
                (answer, counts)
            }
        };
        // The first poll sends the request (or the end of the copy); the answer comes
        // once the server applied it.
        if let std::task::Poll::Ready(done) = futures_util::poll!(answer.as_mut()) {
            answer = Box::pin(std::future::ready(done));
        }
        answers.push((table, keyed_insert, counts, answer));
    }
    // The connection's task may share this thread (a worker inline with its sinks): let it
    // write the requests to the socket before the sink goes on with the next part.
    tokio::task::yield_now().await;
    Ok((bytes, WritesInFlight { answers }))
}

impl WritesInFlight<'_> {
    /// Waits for every write's answer, adding the rows each affected to `report`; stops at
    /// the first that failed.
    pub(super) async fn finish(self, report: &mut ApplyReport) -> Result<(), WriteFailed> {
        for (table, keyed_insert, counts, answer) in self.answers {
            match answer.await {
                Ok(n) => counts.add(report, n),
                Err(error) => {
                    return Err(WriteFailed {
                        table,
                        keyed_insert,
                        error,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::change::{fixtures::table, Cell, Row, TableInfo};
    use crate::control::job_spec::TenantFilter;
    use crate::sinks::pg_apply::execute::COPY_MIN_ROWS;

    fn rows(n: usize) -> Vec<Cow<'static, Row>> {
        (0..n)
            .map(|i| Cow::Owned(vec![Cell::Text(i.to_string().into()), Cell::text("v")]))
            .collect()
    }

    fn shape(name: &str) -> Arc<TableInfo> {
        Arc::new(table(name, &[("id", "bigint"), ("v", "text")], &[0]))
    }

    fn append(t: &Arc<TableInfo>, n: usize) -> Step<'static> {
        Step::Append {
            table: t.clone(),
            rows: rows(n),
        }
    }

    fn tenant_plan() -> TenantPlan {
        TenantPlan {
            include: TenantFilter::All,
            tenant_keys: HashMap::new(),
            peers: 1,
        }
    }

    #[test]
    fn a_part_of_plain_steps_into_known_shapes_is_sent_whole() {
        let (a, b) = (shape("a"), shape("b"));
        let mut cache = ConnectionCache::default();
        cache.shapes.insert("app.a".into(), a.clone());
        let plans = vec![
            (
                "app.a",
                vec![
                    Step::SyncShape(a.clone()),
                    append(&a, COPY_MIN_ROWS),
                    Step::Upsert {
                        table: a.clone(),
                        rows: rows(3),
                    },
                ],
            ),
            ("app.b", vec![append(&b, 2)]),
        ];
        let writes = plain_writes(plans, &tenant_plan(), &cache).expect("plain part");
        assert_eq!(writes.len(), 3);
        assert!(matches!(&writes[0].write, OwnedWrite::Copy(c) if c.rows == COPY_MIN_ROWS));
        assert!(writes[0].keyed_insert);
        assert!(matches!(
            &writes[1].write,
            OwnedWrite::Statement(s, Counts::Upserted) if s.text.contains("ON CONFLICT")
        ));
        assert!(!writes[1].keyed_insert);
        // Too few rows for COPY: a plain insert statement.
        assert_eq!(writes[2].table, "app.b");
        assert!(
            matches!(&writes[2].write, OwnedWrite::Statement(s, _) if s.text.starts_with("INSERT"))
        );
        let keyless = Arc::new(table("c", &[("id", "bigint"), ("v", "text")], &[]));
        let writes = plain_writes(
            vec![("app.c", vec![append(&keyless, 600)])],
            &tenant_plan(),
            &cache,
        )
        .expect("a keyless part");
        assert!(!writes[0].keyed_insert);
    }

    #[test]
    fn a_part_that_changes_a_shape_or_truncates_is_written_as_before() {
        let a = shape("a");
        let known = {
            let mut cache = ConnectionCache::default();
            cache.shapes.insert("app.a".into(), a.clone());
            cache
        };
        let unknown = ConnectionCache::default();
        let cases: Vec<(&str, Vec<Step<'static>>, &ConnectionCache)> = vec![
            (
                "a shape not matched yet",
                vec![Step::SyncShape(a.clone()), append(&a, 600)],
                &unknown,
            ),
            (
                "a truncate",
                vec![
                    append(&a, 600),
                    Step::TruncateTenant {
                        table: a.clone(),
                        tenant: "1".into(),
                    },
                ],
                &known,
            ),
        ];
        for (what, steps, cache) in cases {
            assert!(
                plain_writes(vec![("app.a", steps)], &tenant_plan(), cache).is_none(),
                "{what}"
            );
        }
        let wide: Vec<Cow<'static, Row>> = (0..600)
            .map(|i| {
                Cow::Owned(vec![
                    Cell::Text(i.to_string().into()),
                    Cell::text(&"w".repeat(16 << 10)),
                ])
            })
            .collect();
        assert!(
            plain_writes(
                vec![(
                    "app.a",
                    vec![Step::Append {
                        table: a.clone(),
                        rows: wide
                    }]
                )],
                &tenant_plan(),
                &known
            )
            .is_none(),
            "a part of more than MAX_BYTES_IN_FLIGHT of values (600 rows of 16 KiB)"
        );
        assert!(
            plain_writes(vec![("app.a", vec![])], &tenant_plan(), &known)
                .is_some_and(|w| w.is_empty()),
            "nothing to write is sent as nothing"
        );
    }
}
