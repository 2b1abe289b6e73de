//! Partitions that leave a carried partitioned table while the job runs. Detaching or
//! dropping a partition removes its rows from the partitioned table on the source, but
//! the change stream carries no deletes for them (as with PostgreSQL's own
//! subscriptions), so the targets keep them. The job cannot tell an archive from a
//! mistake, so it keeps the rows and says so once per partition, with the way to drop
//! them (a resync of the table).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::cdc::watch_session::WatchSession;
use crate::sql_text::quote_qualified;

/// How often a running job reads its partitioned tables' partitions.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Leaf partitions (`schema.name`) of each of `tables` (`schema.table` as the job's spec
/// names them) that is partitioned; a plain table, or one gone, has none.
pub async fn leaves(
    client: &Client,
    tables: &[String],
) -> Result<BTreeMap<String, BTreeSet<String>>, CdcError> {
    let quoted: Vec<String> = tables
        .iter()
        .map(|t| match t.split_once('.') {
            Some((schema, name)) => quote_qualified(schema, name),
            None => t.clone(),
        })
        .collect();
    let rows = client
        .query(
            "SELECT t.i::int4, n.nspname::text || '.' || c.relname::text
               FROM unnest($1::text[]) WITH ORDINALITY AS t(name, i)
               CROSS JOIN LATERAL pg_partition_tree(to_regclass(t.name)) AS p
               JOIN pg_class c ON c.oid = p.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.isleaf AND p.relid <> to_regclass(t.name)",
            &[&quoted],
        )
        .await
        .map_err(CdcError::query("read the partitions of the job's tables"))?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in &rows {
        let index = usize::try_from(row.get::<_, i32>(0) - 1).unwrap_or(usize::MAX);
        if let Some(table) = tables.get(index) {
            out.entry(table.clone()).or_default().insert(row.get(1));
        }
    }
    Ok(out)
}

/// The partitions of `before` that `now` lacks, per table: detached or dropped since.
pub fn gone(
    before: &BTreeMap<String, BTreeSet<String>>,
    now: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<(String, String)> {
    let empty = BTreeSet::new();
    before
        .iter()
        .flat_map(|(table, leaves)| {
            let current = now.get(table).unwrap_or(&empty);
            leaves
                .difference(current)
                .map(move |leaf| (table.clone(), leaf.clone()))
        })
        .collect()
}

/// What to say about `partition` leaving `table`.
pub fn warning(job: &str, table: &str, partition: &str) -> String {
    format!(
        "partition {partition} of {table} was detached or dropped on the source: its rows are \
         gone from {table} there, but the change stream carries no deletes for them, so the \
         targets keep them; to drop them from the targets too, reload the table (`helios-repl \
         jobs resync {job} {table}`)"
    )
}

/// Reads the partitions of `tables` every [`CHECK_EVERY`] until aborted, warning once for
/// each partition that leaves one of them. Partitions added later are watched from then
/// on. A failed read is tried again at the next check, on a new session.
pub async fn watch(job: String, source: WatchSession, tables: Vec<String>) {
    let mut known: Option<BTreeMap<String, BTreeSet<String>>> = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(client) = source.client().await else {
            continue;
        };
        match leaves(&client, &tables).await {
            Ok(now) => {
                if let Some(before) = &known {
                    for (table, partition) in gone(before, &now) {
                        tracing::warn!(job, "{}", warning(&job, &table, &partition));
                    }
                }
                known = Some(now);
            }
            Err(e) => {
                tracing::debug!(job, error = %e, "cannot read the partitions of the job's tables");
                source.failed(&client).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        entries
            .iter()
            .map(|(t, leaves)| {
                (
                    t.to_string(),
                    leaves.iter().map(|l| l.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn partitions_that_left_are_found_and_new_ones_are_not() {
        let before = map(&[("events", &["events_1", "events_2"]), ("logs", &["logs_a"])]);
        let now = map(&[("events", &["events_2", "events_3"])]);
        assert_eq!(
            gone(&before, &now),
            [
                ("events".to_string(), "events_1".to_string()),
                ("logs".to_string(), "logs_a".to_string())
            ]
        );
        assert!(gone(&now, &now).is_empty());
        let w = warning("j", "public.events", "public.events_1");
        assert!(w.contains("jobs resync j public.events") && w.contains("targets keep them"));
    }
}
