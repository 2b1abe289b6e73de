//! The consistent initial snapshot.
//!
//! # Snapshot
//! The slot is created on a gated replication session with `(SNAPSHOT 'export')`, which
//! returns the slot's consistent point and the name of a snapshot that lives until that
//! session runs its next command. Meanwhile a normal connection opens a REPEATABLE READ
//! transaction on that snapshot and copies each table, filtered to the job's tenants.
//! Only then does the gated session send START_REPLICATION (from the consistent point):
//! every change committed before the point is in the copy, every later one in the stream,
//! none in both.

use futures_util::Stream;
use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::cdc::table_parts::{PageRange, TablePart};
use crate::cdc::transport::ReplicationConnection;
use crate::change::{parse_lsn, Lsn, TableInfo};
use crate::control::job_spec::{TenantFilter, TenantKey};
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};
use crate::time_text::PG_EPOCH_UNIX_MICROS;

/// A freshly created slot and its exported snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// Where the slot's stream starts: the snapshot holds everything committed before.
    pub consistent_point: Lsn,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub snapshot_name: String,
    /// The source's clock (µs since 2000-01-01) just before the slot was created: every
    /// transaction the slot streams committed after it, by the same clock that stamps
    /// their commits. Versions the snapshot loads are known from then, so a change
    /// streamed after the snapshot is never stamped before the version it replaces.
    pub taken_at_micros: i64,
}

/// Creates a pgoutput slot on the gated session, exporting its snapshot. A `temporary`
/// slot (a backfill's: only its snapshot is wanted) goes with the session.
pub async fn create_slot_exporting_snapshot(
    repl: &mut ReplicationConnection,
    slot: &str,
    temporary: bool,
) -> Result<SlotSnapshot, CdcError> {
    let clock = repl
        .simple_query(&format!(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint - {PG_EPOCH_UNIX_MICROS}"
        ))
        .await
        .map_err(|e| CdcError::Stream(format!("read the source's clock: {e}")))?;
    let taken_at_micros = clock
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| CdcError::Stream("the source's clock read as no number".into()))?;
    let rows = repl
        .simple_query(&format!(
            "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput (SNAPSHOT 'export')",
            quote_ident(slot),
            if temporary { " TEMPORARY" } else { "" }
        ))
        .await
        .map_err(|e| CdcError::Definite(format!("create replication slot `{slot}`: {e}")))?;
    let row = rows
        .first()
        .ok_or_else(|| CdcError::Stream("CREATE_REPLICATION_SLOT returned no row".into()))?;
    let text = |i: usize| row.get(i).cloned().flatten();
    let consistent_point = text(1).as_deref().and_then(parse_lsn).ok_or_else(|| {
        CdcError::Stream("CREATE_REPLICATION_SLOT returned no consistent point".into())
    })?;
    let snapshot_name = text(2).ok_or_else(|| {
        CdcError::Stream("CREATE_REPLICATION_SLOT returned no snapshot name".into())
    })?;
    Ok(SlotSnapshot {
        consistent_point,
        snapshot_name,
        taken_at_micros,
    })
}

/// Opens a read-only transaction on the exported snapshot (end it with `COMMIT`).
pub async fn begin_on_snapshot(client: &Client, snapshot_name: &str) -> Result<(), CdcError> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot_name)
        ))
        .await
        .map_err(CdcError::query("open snapshot transaction"))
}

/// The `COPY … TO STDOUT` that reads the job's tenants' rows of `table` (of its part
/// `part` only, for one part of a split table), in COPY's text format or (`binary`) its
/// binary one.
pub fn copy_out_sql(
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
    part: Option<&TablePart>,
    binary: bool,
) -> String {
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let cols = cols.join(", ");
    let format = if binary { " (FORMAT binary)" } else { "" };
    let tenants = include.condition_on(table, tenant_key);
    let select = |from: &str, pages: Option<&PageRange>| {
        let conditions: Vec<String> = pages
            .map(|p| p.sql_condition())
            .into_iter()
            .chain(tenants.clone())
            .collect();
        if conditions.is_empty() {
            format!("SELECT {cols} FROM {from}")
        } else {
            format!(
                "SELECT {cols} FROM {from} WHERE {}",
                conditions.join(" AND ")
            )
        }
    };
    // Always a query: `COPY table TO` refuses a partitioned table (a query reads every
    // partition), and costs the same on a plain one.
    let query = match part {
        None => select(&quote_qualified(&table.schema, &table.name), None),
        Some(TablePart::Pages(pages)) => {
            select(&quote_qualified(&table.schema, &table.name), Some(pages))
        }
        Some(TablePart::Partitions(leaves)) => leaves
            .iter()
            .map(|leaf| select(&quote_qualified(&leaf.schema, &leaf.name), None))
            .collect::<Vec<_>>()
            .join(" UNION ALL "),
    };
    format!("COPY ({query}) TO STDOUT{format}")
}

/// The `SELECT` that reads the job's tenants' rows of `table` with every value in its text
/// form (for sinks that take rows, not COPY data).
pub fn select_text_sql(
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
) -> String {
    let cols: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect();
    let name = quote_qualified(&table.schema, &table.name);
    format!(
        "SELECT {} FROM {name}{}",
        cols.join(", "),
        include.where_clause_on(table, tenant_key)
    )
}

/// Streams the rows of a [`select_text_sql`] query as cells (text or NULL).
pub async fn rows_as_text(
    client: &Client,
    sql: &str,
) -> Result<impl Stream<Item = Result<Vec<crate::change::Cell>, CdcError>>, CdcError> {
    use futures_util::StreamExt;
    let rows = client
        .query_raw(
            sql,
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await
        .map_err(CdcError::query("read rows"))?;
    Ok(rows.map(|row| {
        let row = row.map_err(CdcError::query("read rows"))?;
        (0..row.len())
            .map(|i| {
                Ok(
                    match row
                        .try_get::<_, Option<String>>(i)
                        .map_err(CdcError::query("read a value"))?
                    {
                        Some(text) => crate::change::Cell::Text(text.into()),
                        None => crate::change::Cell::Null,
                    },
                )
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::table_parts::Leaf;
    use crate::change::{ColumnInfo, Identity};

    #[test]
    fn copy_filters_by_tenant_and_pages() {
        let table = TableInfo {
            oid: 1,
            schema: "app".into(),
            name: "t".into(),
            columns: vec![ColumnInfo {
                name: "tenant_id".into(),
                type_oid: 23,
                type_modifier: -1,
                type_name: "integer".into(),
                in_identity: true,
                missing_value: None,
                attnum: None,
            }],
            primary_key: vec![0],
            identity: Identity::Default,
            type_ddl: vec![],
        };
        let only = TenantFilter::Only(["3".to_string(), "7".to_string()].into_iter().collect());
        let tid = crate::control::job_spec::TenantKey::Column("tenant_id".into());
        assert_eq!(
            copy_out_sql(&table, &tid, &only, None, false),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t\" WHERE \"tenant_id\" IN ('3', '7')) TO STDOUT"
        );
        assert_eq!(
            copy_out_sql(&table, &tid, &TenantFilter::All, None, false),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t\") TO STDOUT",
            "a query, which a partitioned table takes too"
        );
        assert_eq!(
            copy_out_sql(&table, &tid, &TenantFilter::All, None, true),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t\") TO STDOUT (FORMAT binary)"
        );
        let part = TablePart::Pages(PageRange {
            from: 10,
            to: Some(20),
        });
        let part = Some(&part);
        assert_eq!(
            copy_out_sql(&table, &tid, &TenantFilter::All, part, true),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_out_sql(&table, &tid, &only, part, false),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid AND \"tenant_id\" IN ('3', '7')) TO STDOUT"
        );
        let leaf = |name: &str| Leaf {
            schema: "app".into(),
            name: name.into(),
            pages: 1,
        };
        let part = TablePart::Partitions(vec![leaf("t_1"), leaf("t_2")]);
        assert_eq!(
            copy_out_sql(&table, &tid, &only, Some(&part), true),
            "COPY (SELECT \"tenant_id\" FROM \"app\".\"t_1\" WHERE \"tenant_id\" IN ('3', '7') \
             UNION ALL SELECT \"tenant_id\" FROM \"app\".\"t_2\" WHERE \"tenant_id\" IN ('3', '7')) TO STDOUT (FORMAT binary)",
            "a group of partitions reads each leaf whole"
        );
    }
}
