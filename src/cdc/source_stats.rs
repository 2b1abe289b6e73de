//! The source's table read statistics (`pg_stat_user_tables`): a read signal for the
//! hotness predictor when users send no access events. Counts are cumulative on the
//! server; the poller turns them into per-window deltas.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::sql_text::describe_pg_error;

/// Why the statistics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceStatsError {
    /// The source could not be reached or refused the query.
    #[error("source statistics: {0}")]
    Database(String),
}

/// `seq_scan + idx_scan` of each of `tables` (`schema.table`) the server has statistics for;
/// a partitioned table's are its partitions' summed (the server keeps none of its own).
pub async fn table_reads(
    client: &Client,
    tables: &[String],
) -> Result<HashMap<String, i64>, SourceStatsError> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname,
                    sum(coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0))::int8
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL (SELECT c.oid AS relid
                                    UNION SELECT relid FROM pg_partition_tree(c.oid)) AS p
               JOIN pg_stat_user_tables s ON s.relid = p.relid
              WHERE n.nspname || '.' || c.relname = ANY($1)
              GROUP BY 1",
            &[&tables],
        )
        .await
        .map_err(|e| SourceStatsError::Database(describe_pg_error(&e)))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect())
}

/// Reads since the previous poll per table. A table first seen has no delta yet; a counter
/// that went down (statistics reset) counts from zero.
pub fn deltas(previous: &HashMap<String, i64>, now: &HashMap<String, i64>) -> HashMap<String, f64> {
    now.iter()
        .filter_map(|(table, &n)| {
            let before = *previous.get(table)?;
            let delta = if n >= before { n - before } else { n };
            (delta > 0).then(|| (table.clone(), delta as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_skip_new_tables_and_survive_resets() {
        let before = HashMap::from([("a.x".to_string(), 10), ("a.y".to_string(), 50)]);
        let now = HashMap::from([
            ("a.x".to_string(), 15),
            ("a.y".to_string(), 7),
            ("a.z".to_string(), 99),
        ]);
        let d = deltas(&before, &now);
        assert_eq!(d.get("a.x"), Some(&5.0));
        assert_eq!(d.get("a.y"), Some(&7.0));
        assert_eq!(d.get("a.z"), None);
    }
}
