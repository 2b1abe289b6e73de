//! A table the target lacks is loaded by the initial snapshot under a staging name and
//! without its primary key, then gets the key and its real name in one transaction.
//!
//! Building the key's index once over the loaded rows (a sort) costs the target less than
//! inserting every row into it as it arrives, and readers of the target never see the
//! table half loaded: it appears whole, with its key. A load cut short leaves only the
//! staging table (named after the source table's OID and the job, so two jobs never share
//! one), which the next attempt drops and creates afresh.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use crate::change::TableInfo;
use crate::sinks::pg_apply::statements::OVERRIDING;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::pg_apply::target_schema::{
    create_table_ddl, ensure_types_and_schema, primary_key_list, record_columns, target_columns,
};
use crate::sinks::SinkError;
use crate::sql_text::{like_pattern, quote_ident, quote_literal, quote_qualified};

/// Longest PostgreSQL identifier.
const MAX_IDENTIFIER: usize = 63;

/// The staging name of `table` for `job`: `helios_load_<source OID>_<job digest>`.
pub fn staging_name(table: &TableInfo, job: &str) -> String {
    format!("helios_load_{}_{}", table.oid, job_digest(job))
}

/// Eight hex digits of the job name's SHA-256: the end of the job's staging names.
fn job_digest(job: &str) -> String {
    let digest = Sha256::digest(job.as_bytes());
    let mut hex = String::with_capacity(8);
    for byte in &digest[..4] {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Drops every staging table `job` left in `schemas` (names, or patterns of `*` and `?`)
/// on the target (a cut-short attempt, of a source table since dropped or recreated under
/// another OID, say); returns how many. Run before a snapshot stages anything: no load of
/// the job is in flight.
pub async fn drop_leftovers(
    client: &Client,
    job: &str,
    schemas: &[&str],
) -> Result<u64, SinkError> {
    let pattern = format!("helios\\_load\\_%\\_{}", job_digest(job));
    let schemas: Vec<String> = schemas.iter().map(|s| like_pattern(s)).collect();
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname LIKE ANY($1) AND c.relname LIKE $2",
            &[&schemas, &pattern],
        )
        .await
        .map_err(|e| sink_error("find staging tables left over", &e))?;
    for row in &rows {
        let name: String = row.get(0);
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
            .await
            .map_err(|e| sink_error(&format!("drop staging table {name}"), &e))?;
    }
    Ok(rows.len() as u64)
}

/// If the target lacks `table` and the table has a primary key: creates its column types
/// and schema, drops a staging table a cut-short attempt left, creates the staging table
/// (the source's columns, no key) and returns its shape. `None`: load into `table` itself.
pub async fn stage_if_missing(
    client: &Client,
    table: &TableInfo,
    job: &str,
) -> Result<Option<TableInfo>, SinkError> {
    ensure_types_and_schema(client, table).await?;
    if table.primary_key.is_empty()
        || target_columns(client, &table.schema, &table.name)
            .await?
            .is_some()
    {
        return Ok(None);
    }
    let staging = TableInfo {
        name: staging_name(table, job),
        ..table.clone()
    };
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {}; {}",
            quote_qualified(&staging.schema, &staging.name),
            create_table_ddl(&staging, false)
        ))
        .await
        .map_err(|e| {
            sink_error(
                &format!("create staging table for {}", table.qualified_name()),
                &e,
            )
        })?;
    Ok(Some(staging))
}

/// Gives the loaded `staging` table `table`'s primary key (named as `CREATE TABLE` names
/// it, [`primary_key_name`]) and name, in one transaction. If `table` appeared meanwhile
/// (another job created it), the staged rows go into it instead and the staging table is
/// dropped.
pub async fn publish(
    client: &mut Client,
    staging: &TableInfo,
    table: &TableInfo,
) -> Result<(), SinkError> {
    let what = |step: &str| format!("{step} {}", table.qualified_name());
    let tx = client
        .transaction()
        .await
        .map_err(|e| sink_error(&what("begin publishing"), &e))?;
    // Publishes into one schema take turns, across sessions and jobs, until commit: two
    // at once could choose the same free primary key name (`primary_key_name`).
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({PUBLISH_LOCK_CLASS}, hashtext({}))",
        quote_literal(&table.schema)
    ))
    .await
    .map_err(|e| sink_error(&what("wait for the turn to publish"), &e))?;
    let staged = quote_qualified(&staging.schema, &staging.name);
    let sql = if target_columns(&tx, &table.schema, &table.name)
        .await?
        .is_none()
    {
        let key = primary_key_list(table).unwrap_or_default();
        let constraint = primary_key_name(&tx, &table.schema, &table.name).await?;
        format!(
            "ALTER TABLE {staged} ADD CONSTRAINT {} PRIMARY KEY ({key}); ALTER TABLE {staged} RENAME TO {}",
            quote_ident(&constraint),
            quote_ident(&table.name)
        )
    } else {
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let cols = cols.join(", ");
        format!(
            "INSERT INTO {} ({cols}) {OVERRIDING} SELECT {cols} FROM {staged}; DROP TABLE {staged}",
            quote_qualified(&table.schema, &table.name)
        )
    };
    tx.batch_execute(&sql)
        .await
        .map_err(|e| sink_error(&what("publish the loaded"), &e))?;
    record_columns(&tx, table).await?;
    tx.commit()
        .await
        .map_err(|e| sink_error(&what("commit publishing"), &e))
}

/// The first key of the advisory lock a publish into a schema holds (the second is the
/// schema name's hash): "HLPB".
const PUBLISH_LOCK_CLASS: i32 = 0x484c_5042;

/// Most candidates [`primary_key_name`] tries before giving up.
const KEY_NAME_TRIES: u32 = 1000;

/// The name `CREATE TABLE` would give the primary key of `table` in `schema` on the
/// target (PostgreSQL's `ChooseRelationName`): the first of [`key_name_candidate`]'s
/// names that no relation and no constraint in the schema has. A table renamed away
/// keeps its key's name (`orders_old` still has `orders_pkey`), so the plain name can
/// be taken.
async fn primary_key_name(
    client: &tokio_postgres::Transaction<'_>,
    schema: &str,
    table: &str,
) -> Result<String, SinkError> {
    let taken = client
        .prepare(
            // By the schema's oid (as `catalog::table_info` looks a table up).
            "SELECT EXISTS (SELECT 1 FROM pg_class c
                            WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
                              AND c.relname = $2)
                 OR EXISTS (SELECT 1 FROM pg_constraint k
                            WHERE k.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
                              AND k.conname = $2)",
        )
        .await
        .map_err(|e| sink_error("prepare the primary key's name lookup", &e))?;
    for pass in 0..KEY_NAME_TRIES {
        let name = key_name_candidate(table, pass);
        let row = client
            .query_one(&taken, &[&schema, &name])
            .await
            .map_err(|e| sink_error("look up a primary key name", &e))?;
        let used: bool = row
            .try_get(0)
            .map_err(|e| sink_error("read a primary key name lookup", &e))?;
        if !used {
            return Ok(name);
        }
    }
    Err(SinkError::Definite(format!(
        "no free name for the primary key of {schema}.{table}: {} to {} are all taken",
        key_name_candidate(table, 0),
        key_name_candidate(table, KEY_NAME_TRIES - 1)
    )))
}

/// Candidate `pass` for the primary key's name of `table`, as PostgreSQL forms them
/// (`makeObjectName`): `<table>_pkey`, then `<table>_pkey1`, `<table>_pkey2`, …, the
/// table's part cut (at a character boundary) so that the whole fits 63 bytes.
fn key_name_candidate(table: &str, pass: u32) -> String {
    let label = match pass {
        0 => "pkey".to_string(),
        n => format!("pkey{n}"),
    };
    let mut end = table.len().min(MAX_IDENTIFIER - label.len() - 1);
    while !table.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}_{label}", &table[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures;

    #[test]
    fn staging_names_are_per_table_and_job_and_fit() {
        let mut t = fixtures::table("t", &[("tenant_id", "integer")], &[0]);
        t.oid = u32::MAX;
        let a = staging_name(&t, "job-a");
        assert_eq!(a.len(), "helios_load_4294967295_".len() + 8);
        assert!(a.len() <= MAX_IDENTIFIER, "{a}");
        assert_ne!(a, staging_name(&t, "job-b"));
        assert_eq!(a, staging_name(&t, "job-a"), "stable across attempts");
        t.oid = 7;
        assert_ne!(a, staging_name(&t, "job-a"));
    }

    #[test]
    fn key_names_are_formed_as_postgresql_forms_them() {
        assert_eq!(key_name_candidate("orders", 0), "orders_pkey");
        assert_eq!(key_name_candidate("orders", 1), "orders_pkey1");
        assert_eq!(key_name_candidate("orders", 12), "orders_pkey12");
        let long = "t".repeat(63);
        assert_eq!(
            key_name_candidate(&long, 0),
            format!("{}_pkey", "t".repeat(58))
        );
        assert_eq!(
            key_name_candidate(&long, 1),
            format!("{}_pkey1", "t".repeat(57))
        );
        // Cut at a character boundary: "é" is two bytes and would straddle byte 58.
        let accented = format!("{}é{}", "a".repeat(57), "b".repeat(4));
        assert_eq!(
            key_name_candidate(&accented, 0),
            format!("{}_pkey", "a".repeat(57))
        );
        for pass in [0, 1, 999] {
            assert!(key_name_candidate(&accented, pass).len() <= MAX_IDENTIFIER);
        }
    }
}
