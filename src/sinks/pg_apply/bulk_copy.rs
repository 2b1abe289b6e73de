//! A large transaction's insert-only parts as `COPY`s that overlap the next part's
//! preparation.
//!
//! A large transaction reaches the PostgreSQL sink in parts of about 20,000 rows, written
//! one after another into one target transaction. A bulk load's part is, per table, one
//! `COPY` of keys new to the target. Written as any other part, the sink received,
//! spilled, planned and encoded a part while the target waited, then waited while the
//! target loaded it: the target was busy about three quarters of the time. Here a part
//! whose every table is one such `COPY` is sent whole (its rows and the end of the copy),
//! and the sink answers for it only after it has received, planned and encoded the next
//! part ([`CopiesInFlight::finish`]), so the target loads one part while the sink prepares
//! the next. Any other part first waits for the copies in flight and is written as before.

use std::future::Future;
use std::pin::Pin;

use futures_util::SinkExt;
use tokio_postgres::Transaction;

use crate::sinks::pg_apply::execute::{prepared, ConnectionCache, COPY_MIN_ROWS};
use crate::sinks::pg_apply::plan::Step;
use crate::sinks::pg_apply::statements::{copy_rows, CopyRows};
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;

/// One table's rows of a part, as a `COPY`.
pub(super) struct TableCopy {
    /// The table's qualified name.
    pub table: String,
    /// Whether the table has a key (a unique violation then means the target held a key
    /// the plan took for new).
    pub keyed: bool,
    pub rows: CopyRows,
}

/// The copies of a part whose every table's plan is one plain insert large enough for
/// `COPY`, with its table's shape already matched on this connection; `None` for any
/// other part. `plans` holds each table's name and steps.
pub(super) fn bulk_copies<'a>(
    plans: impl IntoIterator<Item = (&'a str, Vec<Step<'a>>)>,
    cache: &ConnectionCache,
) -> Option<Vec<TableCopy>> {
    let mut copies = Vec::new();
    for (name, steps) in plans {
        let mut append = None;
        for step in steps {
            match step {
                Step::SyncShape(shape)
                    if cache
                        .shapes
                        .get(name)
                        .is_some_and(|known| **known == *shape) => {}
                Step::Append { table, rows } if append.is_none() && rows.len() >= COPY_MIN_ROWS => {
                    append = Some(TableCopy {
                        table: name.to_string(),
                        keyed: !table.key_columns().is_empty(),
                        rows: copy_rows(&table, &rows),
                    })
                }
                _ => return None,
            }
        }
        copies.push(append?);
    }
    Some(copies)
}

/// The answer of one `COPY` sent whole.
type CopyAnswer<'t> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 't>>;

/// Copies sent whole, their answers not yet read.
pub(super) struct CopiesInFlight<'t> {
    answers: Vec<(String, bool, CopyAnswer<'t>)>,
}

/// A copy that failed: its table, whether the table is keyed, and the error.
pub(super) struct CopyFailed {
    pub table: String,
    pub keyed: bool,
    pub error: tokio_postgres::Error,
}

/// Starts each copy in `tx` and sends its rows and its end, without waiting for the
/// server to load them. Returns the bytes sent and the copies in flight; an error names
/// the table whose copy could not start.
pub(super) async fn send<'t>(
    tx: &'t Transaction<'_>,
    cache: &mut ConnectionCache,
    copies: Vec<TableCopy>,
) -> Result<(u64, CopiesInFlight<'t>), (Option<String>, SinkError)> {
    let mut bytes = 0;
    let mut answers = Vec::with_capacity(copies.len());
    for copy in copies {
        let tied = |e: SinkError| (Some(copy.table.clone()), e);
        let stmt = prepared(tx, cache, &copy.rows.text).await.map_err(tied)?;
        bytes += copy.rows.data.len() as u64;
        let sink = tx
            .copy_in(&stmt)
            .await
            .map_err(|e| tied(sink_error("apply", &e)))?;
        let mut sink = Box::pin(sink);
        sink.send(copy.rows.data)
            .await
            .map_err(|e| tied(sink_error("apply", &e)))?;
        let mut answer: CopyAnswer<'t> = Box::pin(async move { sink.as_mut().finish().await });
        // The first poll sends the end of the copy; the answer comes once it is loaded.
        let answer = match futures_util::poll!(answer.as_mut()) {
            std::task::Poll::Ready(done) => Box::pin(std::future::ready(done)),
            std::task::Poll::Pending => answer,
        };
        answers.push((copy.table, copy.keyed, answer));
    }
    // The connection's task may share this thread (a worker inline with its sinks): let it
    // write the rows to the socket before the sink goes on with the next part.
    tokio::task::yield_now().await;
    Ok((bytes, CopiesInFlight { answers }))
}

impl CopiesInFlight<'_> {
    /// Waits for every copy's answer; the rows they loaded, or the first that failed.
    pub(super) async fn finish(self) -> Result<u64, CopyFailed> {
        let mut rows = 0;
        for (table, keyed, answer) in self.answers {
            match answer.await {
                Ok(n) => rows += n,
                Err(error) => {
                    return Err(CopyFailed {
                        table,
                        keyed,
                        error,
                    })
                }
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;
    use crate::change::{fixtures::table, Cell, Row, TableInfo};

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

    #[test]
    fn a_part_of_large_plain_inserts_into_known_shapes_is_copies() {
        let (a, b) = (shape("a"), shape("b"));
        let mut cache = ConnectionCache::default();
        cache.shapes.insert("app.a".into(), a.clone());
        let plans = vec![
            (
                "app.a",
                vec![Step::SyncShape(a.clone()), append(&a, COPY_MIN_ROWS)],
            ),
            ("app.b", vec![append(&b, COPY_MIN_ROWS + 1)]),
        ];
        let copies = bulk_copies(plans, &cache).expect("a bulk part");
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].table, "app.a");
        assert!(copies[0].keyed);
        assert_eq!(copies[0].rows.rows, COPY_MIN_ROWS);
        assert!(
            copies[0].rows.text.starts_with("COPY"),
            "{}",
            copies[0].rows.text
        );
        assert_eq!(copies[1].rows.rows, COPY_MIN_ROWS + 1);
        let keyless = Arc::new(table("c", &[("id", "bigint"), ("v", "text")], &[]));
        let copies = bulk_copies(vec![("app.c", vec![append(&keyless, 600)])], &cache)
            .expect("a keyless bulk part");
        assert!(!copies[0].keyed);
    }

    #[test]
    fn any_other_part_is_written_as_before() {
        let a = shape("a");
        let known = {
            let mut cache = ConnectionCache::default();
            cache.shapes.insert("app.a".into(), a.clone());
            cache
        };
        // A shape the connection has not matched yet (its DDL runs in the general path).
        let unknown = ConnectionCache::default();
        let cases: Vec<(&str, Vec<Step<'static>>, &ConnectionCache)> = vec![
            (
                "unmatched shape",
                vec![Step::SyncShape(a.clone()), append(&a, 600)],
                &unknown,
            ),
            (
                "too few rows for COPY",
                vec![append(&a, COPY_MIN_ROWS - 1)],
                &known,
            ),
            (
                "two appends",
                vec![append(&a, 600), append(&a, 600)],
                &known,
            ),
            ("no rows at all", vec![], &known),
            (
                "an upsert",
                vec![
                    append(&a, 600),
                    Step::Upsert {
                        table: a.clone(),
                        rows: rows(1),
                    },
                ],
                &known,
            ),
        ];
        for (what, steps, cache) in cases {
            assert!(
                bulk_copies(vec![("app.a", steps)], cache).is_none(),
                "{what}"
            );
        }
    }
}
