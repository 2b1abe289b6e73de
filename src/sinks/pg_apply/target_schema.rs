//! Keeps target tables in the shape of the source: creates missing tables and applies
//! what a schema change on the source needs (added columns, changed types).
//!
//! Dropped source columns stay on the target (their history is kept; new rows get NULL or
//! the column default). A change that cannot be applied (a type the target lacks, a
//! conversion that fails) is an error for the caller to put the table in error state.

use std::collections::HashMap;

use tokio_postgres::GenericClient;

use crate::change::TableInfo;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};

/// The target's columns of a table: name → `format_type` name.
pub type TargetColumns = HashMap<String, String>;

/// Reads the target's columns of `schema.name` (`None` if the table does not exist).
pub async fn target_columns(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<Option<TargetColumns>, SinkError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &name],
        )
        .await
        .map_err(|e| sink_error("read target columns", &e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// `CREATE TABLE` text for the source shape, with its primary key.
pub fn create_table_sql(table: &TableInfo) -> String {
    create_table_ddl(table, true)
}

/// `CREATE TABLE` text for the source shape (`with_key`: and its primary key), and its
/// schema if missing.
pub fn create_table_ddl(table: &TableInfo, with_key: bool) -> String {
    let mut defs: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), c.type_name))
        .collect();
    if let (true, Some(key)) = (with_key, primary_key_list(table)) {
        defs.push(format!("PRIMARY KEY ({key})"));
    }
    format!(
        "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {} ({})",
        quote_ident(&table.schema),
        quote_qualified(&table.schema, &table.name),
        defs.join(", ")
    )
}

/// The primary key's columns, quoted and comma-separated (`None`: the table has none).
pub fn primary_key_list(table: &TableInfo) -> Option<String> {
    if table.primary_key.is_empty() {
        return None;
    }
    let key: Vec<String> = table
        .primary_key
        .iter()
        .map(|&i| quote_ident(&table.columns[i].name))
        .collect();
    Some(key.join(", "))
}

/// Creates the column types `table` needs on the target (its `type_ddl`).
async fn create_types(client: &impl GenericClient, table: &TableInfo) -> Result<(), SinkError> {
    for ddl in &table.type_ddl {
        client.batch_execute(ddl).await.map_err(|e| {
            sink_error(
                &format!("create a column type of {}", table.qualified_name()),
                &e,
            )
        })?;
    }
    Ok(())
}

/// Creates the column types `table` needs on the target and its schema.
pub async fn ensure_types_and_schema(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<(), SinkError> {
    create_types(client, table).await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&table.schema)
        ))
        .await
        .map_err(|e| sink_error(&format!("create schema {}", table.schema), &e))
}

/// The DDL that brings a target table with `existing` columns to `table`'s shape.
pub fn alter_statements(table: &TableInfo, existing: &TargetColumns) -> Vec<String> {
    let name = quote_qualified(&table.schema, &table.name);
    let mut out = Vec::new();
    for c in &table.columns {
        let col = quote_ident(&c.name);
        match existing.get(&c.name) {
            None => {
                let default = c
                    .missing_value
                    .as_ref()
                    .map(|v| format!(" DEFAULT {}::{}", quote_literal(v), c.type_name))
                    .unwrap_or_default();
                out.push(format!(
                    "ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {col} {}{default}",
                    c.type_name
                ))
            }
            Some(ty) if *ty != c.type_name => out.push(format!(
                "ALTER TABLE {name} ALTER COLUMN {col} TYPE {ty2} USING {col}::text::{ty2}",
                ty2 = c.type_name
            )),
            Some(_) => {}
        }
    }
    out
}

/// Creates the table if missing, else alters it to the source's shape. Returns the DDL run.
pub async fn ensure_shape(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<Vec<String>, SinkError> {
    create_types(client, table).await?;
    match target_columns(client, &table.schema, &table.name).await? {
        None => {
            let sql = create_table_sql(table);
            client.batch_execute(&sql).await.map_err(|e| {
                sink_error(
                    &format!("create target table {}", table.qualified_name()),
                    &e,
                )
            })?;
            Ok(vec![sql])
        }
        Some(existing) => {
            let ddl = alter_statements(table, &existing);
            for sql in &ddl {
                client.batch_execute(sql).await.map_err(|e| {
                    sink_error(
                        &format!("alter target table {}", table.qualified_name()),
                        &e,
                    )
                })?;
            }
            Ok(ddl)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures;

    fn table() -> TableInfo {
        fixtures::table(
            "t",
            &[
                ("tenant_id", "integer"),
                ("id", "bigint"),
                ("amount", "numeric(12,2)"),
            ],
            &[0, 1],
        )
    }

    #[test]
    fn create_has_primary_key() {
        let sql = create_table_sql(&table());
        assert!(sql.ends_with(
            "CREATE TABLE IF NOT EXISTS \"app\".\"t\" (\"tenant_id\" integer, \"id\" bigint, \"amount\" numeric(12,2), PRIMARY KEY (\"tenant_id\", \"id\"))"
        ), "{sql}");
    }

    #[test]
    fn alter_adds_and_retypes() {
        let existing: TargetColumns = [("tenant_id", "integer"), ("id", "integer")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let ddl = alter_statements(&table(), &existing);
        assert_eq!(ddl.len(), 2);
        assert!(ddl[0].contains("ALTER COLUMN \"id\" TYPE bigint USING \"id\"::text::bigint"));
        assert!(ddl[1].contains("ADD COLUMN IF NOT EXISTS \"amount\" numeric(12,2)"));
    }
}
