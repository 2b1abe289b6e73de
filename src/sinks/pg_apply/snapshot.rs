//! Loading the initial snapshot of one table into the target: in one target transaction,
//! remove the job's tenants' rows and stream the source's `COPY … TO STDOUT` straight into
//! `COPY … FROM STDIN`. Re-running it (after a crash mid-snapshot) gives the same result.
//! A large table split into parts (`cdc::table_parts`) loads each part in a transaction
//! of its own, with nothing to remove: parts only load tables that hold none of the job's
//! tenants' rows ([`holds_tenant_rows`]), so a re-sync never shows readers those rows
//! missing.
//!
//! The copy goes in COPY's binary format when both ends read every value the same way:
//! every column of a built-in type whose binary form names no catalog object (see
//! [`binary_safe_type`]) and the target's column of exactly the source's type. The source
//! then skips its output functions and the target its input parsing (timestamps, numerics,
//! integers), and no value passes through a text form that depends on session settings.
//! Otherwise, and if the server refuses the binary data anyway, the table goes in text.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures_util::{SinkExt, Stream, StreamExt};
use tokio_postgres::{Client, Transaction};

use crate::change::{Lsn, TableInfo};
use crate::control::job_spec::{TenantFilter, TenantKey};
use crate::sinks::pg_apply::floors;
use crate::sinks::pg_apply::store::{self, sink_error};
use crate::sinks::pg_apply::target_schema::{ensure_shape, target_columns};
use crate::sinks::SinkError;
use crate::sql_text::{quote_ident, quote_qualified};

/// Built-in types (their OIDs are fixed in every PostgreSQL release) whose binary form
/// holds only the value: numbers, text, time, JSON, network addresses, UUIDs, bits, and
/// one-dimensional arrays of those. Left out: the `reg*` types (their binary form is an
/// OID, which names another object on the target), geometric and text-search types, and
/// every user-defined type (an enum's or composite's OIDs differ between clusters).
pub fn binary_safe_type(type_oid: u32) -> bool {
    matches!(
        type_oid,
        16 | 17 | 18 | 19 | 20 | 21 | 23 | 25 | 26 // bool bytea char name int8 int2 int4 text oid
            | 114 | 3802 // json jsonb
            | 650 | 869 | 774 | 829 // cidr inet macaddr8 macaddr
            | 700 | 701 | 790 | 1700 // float4 float8 money numeric
            | 1042 | 1043 // bpchar varchar
            | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 // date time timestamp timestamptz interval timetz
            | 1560 | 1562 | 2950 // bit varbit uuid
            // Arrays of the above.
            | 1000 | 1001 | 1002 | 1003 | 1016 | 1005 | 1007 | 1009 | 1028
            | 199 | 3807 | 651 | 1041 | 775 | 1040
            | 1021 | 1022 | 791 | 1231
            | 1014 | 1015
            | 1182 | 1183 | 1115 | 1185 | 1187 | 1270
            | 1561 | 1563 | 2951
    )
}

/// About how many bytes of COPY data go to the target in one message.
const COPY_CHUNK: usize = 64 * 1024;

/// What [`load_table`] loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Bytes of COPY data streamed.
    pub bytes: u64,
    /// Rows the target took.
    pub rows: u64,
    /// Whether they went in COPY's binary format.
    pub binary: bool,
}

/// The floor a backfill's load records with its rows (see `floors`).
#[derive(Debug, Clone, Copy)]
pub struct LoadFloor<'a> {
    pub job: &'a str,
    /// Whether the load is the whole table for every tenant the job carries.
    pub whole: bool,
    /// The commit LSN below which the loaded rows' changes are in the load.
    pub lsn: Lsn,
}

/// Whether the target's `table` holds any row of the job's tenants (the table must
/// exist). Such a table is loaded whole, in one transaction that replaces those rows:
/// loaded in parts, each committing on its own, readers would see them missing.
pub async fn holds_tenant_rows(
    client: &Client,
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
) -> Result<bool, SinkError> {
    let name = quote_qualified(&table.schema, &table.name);
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {name}{})",
        include.where_clause_on(table, tenant_key)
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(|e| sink_error("look for the job's tenants' rows before snapshot", &e))?;
    row.try_get(0)
        .map_err(|e| sink_error("read whether the target holds the job's tenants' rows", &e))
}

/// `DELETE`s the job's tenants' rows of `table` in `tx`.
async fn clear_in(
    tx: &Transaction<'_>,
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
) -> Result<(), SinkError> {
    let name = quote_qualified(&table.schema, &table.name);
    let clear = format!(
        "DELETE FROM {name}{}",
        include.where_clause_on(table, tenant_key)
    );
    tx.batch_execute(&clear)
        .await
        .map_err(|e| sink_error("clear tenants before snapshot", &e))
}

/// Loads the source's rows of `table`, streamed from the `COPY … TO STDOUT` that
/// `open_source(binary)` starts (in the binary format when `binary` is true, see the
/// module doc), in one target transaction. With `replace`, that transaction first
/// removes the job's tenants' rows (the whole table's load); without, the target holds
/// none ([`holds_tenant_rows`]: one part of a split table). With `floor` (a backfill's
/// load), the same transaction records its floor (`floors`). Adds the bytes it sends to
/// `streamed` as it goes (those of a binary copy the target refuses are taken off again
/// before the text copy).
#[allow(clippy::too_many_arguments)]
pub async fn load_table<F, Fut, S>(
    client: &mut Client,
    table: &TableInfo,
    tenant_key: &TenantKey,
    include: &TenantFilter,
    replace: bool,
    floor: Option<&LoadFloor<'_>>,
    mut open_source: F,
    streamed: &AtomicU64,
) -> Result<Loaded, SinkError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<S, tokio_postgres::Error>>,
    S: Stream<Item = Result<bytes::Bytes, tokio_postgres::Error>>,
{
    let tx = client
        .transaction()
        .await
        .map_err(|e| sink_error("begin snapshot load", &e))?;
    ensure_shape(&tx, table).await?;
    if replace {
        clear_in(&tx, table, tenant_key, include).await?;
    }
    // Bytes and rows of a binary copy the target took.
    let mut binary_copy = None;
    if binary_copy_fits(&tx, table).await? {
        tx.batch_execute("SAVEPOINT helios_binary_copy")
            .await
            .map_err(|e| sink_error("snapshot savepoint", &e))?;
        let mut sent = 0;
        match copy_table(&tx, table, true, &mut open_source, streamed, &mut sent).await {
            Ok(copied) => binary_copy = Some(copied),
            Err(SinkError::Definite(reason)) => {
                tracing::warn!(table = %table.qualified_name(), error = %reason, "the binary snapshot copy failed (the error says on which side); copying the table as text");
                // Rolled back: those bytes are not loaded.
                streamed.fetch_sub(sent, Relaxed);
                tx.batch_execute("ROLLBACK TO SAVEPOINT helios_binary_copy")
                    .await
                    .map_err(|e| sink_error("roll back the binary snapshot copy", &e))?;
            }
            Err(other) => return Err(other),
        }
    }
    let loaded = match binary_copy {
        Some((bytes, rows)) => Loaded {
            bytes,
            rows,
            binary: true,
        },
        None => {
            let (bytes, rows) =
                copy_table(&tx, table, false, &mut open_source, streamed, &mut 0).await?;
            Loaded {
                bytes,
                rows,
                binary: false,
            }
        }
    };
    if let Some(f) = floor {
        floors::record(&tx, f.job, &table.qualified_name(), include, f.whole, f.lsn).await?;
        if f.whole {
            // Every row of the job's tenants was just loaded: an error state or a resync
            // request of the table no longer applies, nor do its dead letters before it.
            let name = table.qualified_name();
            store::clear_table_state(&tx, f.job, &name).await?;
            store::supersede_dead_letters(&tx, f.job, Some(&name), f.lsn).await?;
        }
    }
    tx.commit()
        .await
        .map_err(|e| sink_error("commit snapshot load", &e))?;
    Ok(loaded)
}

/// Whether `table` may be copied in the binary format: every column of a
/// [`binary_safe_type`], and of the same type (and modifier) on the target.
async fn binary_copy_fits(tx: &Transaction<'_>, table: &TableInfo) -> Result<bool, SinkError> {
    if !table.columns.iter().all(|c| binary_safe_type(c.type_oid)) {
        return Ok(false);
    }
    let Some(target) = target_columns(tx, &table.schema, &table.name).await? else {
        return Ok(false);
    };
    Ok(table
        .columns
        .iter()
        .all(|c| target.get(&c.name) == Some(&c.type_name)))
}

/// Streams the source's rows into `COPY … FROM STDIN` on `tx`; returns the bytes and
/// rows loaded. Each message's bytes are added to `streamed` and `sent` as it goes out.
async fn copy_table<F, Fut, S>(
    tx: &Transaction<'_>,
    table: &TableInfo,
    binary: bool,
    open_source: &mut F,
    streamed: &AtomicU64,
    sent: &mut u64,
) -> Result<(u64, u64), SinkError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<S, tokio_postgres::Error>>,
    S: Stream<Item = Result<bytes::Bytes, tokio_postgres::Error>>,
{
    let name = quote_qualified(&table.schema, &table.name);
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let format = if binary { " (FORMAT binary)" } else { "" };
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {name} ({}) FROM STDIN{format}",
            cols.join(", ")
        ))
        .await
        .map_err(|e| sink_error("start snapshot copy", &e))?;
    let copy = open_source(binary)
        .await
        .map_err(|e| sink_error("start snapshot copy on the source", &e))?;
    futures_util::pin_mut!(sink);
    futures_util::pin_mut!(copy);
    let mut bytes = 0u64;
    // The source sends a message per row; the target gets them gathered into messages of
    // about COPY_CHUNK bytes (COPY's data is one byte stream: where messages split it
    // does not matter), so each side handles a message per many rows.
    let mut gathered = bytes::BytesMut::with_capacity(COPY_CHUNK);
    while let Some(chunk) = copy.next().await {
        let chunk = chunk.map_err(|e| sink_error("read snapshot from source", &e))?;
        bytes += chunk.len() as u64;
        gathered.extend_from_slice(&chunk);
        if gathered.len() >= COPY_CHUNK {
            streamed.fetch_add(gathered.len() as u64, Relaxed);
            *sent += gathered.len() as u64;
            sink.send(gathered.split().freeze())
                .await
                .map_err(|e| sink_error("write snapshot to target", &e))?;
        }
    }
    if !gathered.is_empty() {
        streamed.fetch_add(gathered.len() as u64, Relaxed);
        *sent += gathered.len() as u64;
        sink.send(gathered.freeze())
            .await
            .map_err(|e| sink_error("write snapshot to target", &e))?;
    }
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(|e| sink_error("finish snapshot copy", &e))?;
    Ok((bytes, rows))
}

#[cfg(test)]
mod tests {
    use super::binary_safe_type;

    #[test]
    fn only_built_in_value_types_go_binary() {
        for oid in [20, 23, 25, 1700, 1184, 3802, 2950, 1007, 1009] {
            assert!(binary_safe_type(oid), "{oid}");
        }
        // regclass, regtype, their arrays, point, tsvector, a user type.
        for oid in [2205, 2206, 2210, 600, 3614, 16_384, 99_999] {
            assert!(!binary_safe_type(oid), "{oid}");
        }
    }
}
