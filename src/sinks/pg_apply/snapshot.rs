//! Loading the initial snapshot of one table into the target: in one target transaction,
//! remove the job's tenants' rows and stream the source's COPY text straight into
//! `COPY … FROM STDIN`. Re-running it (after a crash mid-snapshot) gives the same result.

use futures_util::{SinkExt, Stream, StreamExt};
use tokio_postgres::Client;

use crate::change::TableInfo;
use crate::control::job_spec::TenantFilter;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::pg_apply::target_schema::ensure_shape;
use crate::sinks::SinkError;
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};

/// Replaces the job's tenants' rows of `table` with the rows of `copy`. Returns bytes loaded.
pub async fn load_table<S>(
    client: &mut Client,
    table: &TableInfo,
    tenant_column: &str,
    include: &TenantFilter,
    copy: S,
) -> Result<u64, SinkError>
where
    S: Stream<Item = Result<bytes::Bytes, tokio_postgres::Error>>,
{
    let tx = client
        .transaction()
        .await
        .map_err(|e| sink_error("begin snapshot load", &e))?;
    ensure_shape(&tx, table).await?;
    let name = quote_qualified(&table.schema, &table.name);
    let clear = match include {
        TenantFilter::All => format!("DELETE FROM {name}"),
        TenantFilter::Only(tenants) => {
            let list: Vec<String> = tenants.iter().map(|t| quote_literal(t)).collect();
            format!(
                "DELETE FROM {name} WHERE {}::text IN ({})",
                quote_ident(tenant_column),
                list.join(", ")
            )
        }
    };
    tx.batch_execute(&clear)
        .await
        .map_err(|e| sink_error("clear tenants before snapshot", &e))?;
    let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!("COPY {name} ({}) FROM STDIN", cols.join(", ")))
        .await
        .map_err(|e| sink_error("start snapshot copy", &e))?;
    futures_util::pin_mut!(sink);
    futures_util::pin_mut!(copy);
    let mut bytes = 0u64;
    while let Some(chunk) = copy.next().await {
        let chunk = chunk.map_err(|e| sink_error("read snapshot from source", &e))?;
        bytes += chunk.len() as u64;
        sink.send(chunk)
            .await
            .map_err(|e| sink_error("write snapshot to target", &e))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| sink_error("finish snapshot copy", &e))?;
    tx.commit()
        .await
        .map_err(|e| sink_error("commit snapshot load", &e))?;
    Ok(bytes)
}
