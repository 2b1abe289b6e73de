//! SQL against the source's catalog: publications, slots, table shapes, type names.
//!
//! Everything here runs on a normal (non-replication) connection to the source. It never
//! writes user data; the only objects it creates or drops are the job's publication and
//! replication slot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::cdc::pgoutput::{Relation, ReplicaIdentity};
use crate::cdc::type_names::portable_type_name;
use crate::cdc::user_types::TypeDdlCache;
use crate::change::{parse_lsn, ColumnInfo, Identity, Lsn, TableInfo};
use crate::sql_text::{quote_ident, quote_qualified};

/// What the source says about a replication slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// The position confirmed so far (the stream resumes here).
    pub confirmed_flush: Lsn,
    /// Whether some session is reading the slot right now.
    pub active: bool,
    /// Whether the source invalidated it (`wal_status = 'lost'`): it can no longer be read.
    pub lost: bool,
}

/// Connects to the source for catalog work; the connection task runs on the current runtime.
pub async fn connect(dsn: &str) -> Result<Client, CdcError> {
    crate::pg_connect::connect_source(dsn, "source catalog", crate::pg_connect::OnClose::Debug)
        .await
        .map_err(CdcError::connect)
}

/// Checks the source can do logical replication at all.
pub async fn check_wal_level(client: &Client) -> Result<(), CdcError> {
    let row = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(CdcError::query("read wal_level"))?;
    let level: String = row.get(0);
    if level != "logical" {
        return Err(CdcError::Definite(format!(
            "source wal_level is `{level}`, logical replication needs `logical` (set it in postgresql.conf and restart the source)"
        )));
    }
    Ok(())
}

/// One table of a job's publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTable {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// A row filter (PostgreSQL 15+) restricting what the source sends, e.g. the job's
    /// tenants; only valid when its columns are in the replica identity.
    pub row_filter: Option<String>,
}

/// Creates the job's publication, or sets its table list (with row filters) to exactly
/// `tables`: the job owns its publication.
pub async fn ensure_publication(
    client: &Client,
    publication: &str,
    tables: &[PublishedTable],
) -> Result<(), CdcError> {
    let list = tables
        .iter()
        .map(|t| match &t.row_filter {
            Some(f) => format!("{} WHERE ({f})", quote_qualified(&t.schema, &t.name)),
            None => quote_qualified(&t.schema, &t.name),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let existing = client
        .query_opt(
            "SELECT pubviaroot, pubinsert AND pubupdate AND pubdelete AND pubtruncate
             FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(CdcError::query("look up publication"))?
        .map(|r| PublicationOptions {
            via_root: r.get(0),
            every_operation: r.get(1),
        });
    let exists = existing.is_some();
    if existing.is_some_and(|o| !o.every_operation) {
        tracing::warn!(publication, "the job's publication did not publish every kind of change (its `publish` option): set to insert, update, delete and truncate, so none is silently left out");
    }
    let (sql, what) = publication_sql(publication, &list, existing);
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| match CdcError::query(what)(e) {
            CdcError::Query { detail, .. } => {
                CdcError::Definite(format!("publication `{publication}`: {what}: {detail}"))
            }
            other => other,
        })?;
    let filtered = tables.iter().filter(|t| t.row_filter.is_some()).count();
    tracing::info!(
        publication,
        tables = tables.len(),
        filtered,
        created = !exists,
        "publication ready"
    );
    Ok(())
}

/// The options of an existing publication that the job depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PublicationOptions {
    /// `publish_via_partition_root`.
    via_root: bool,
    /// `publish` names insert, update, delete and truncate.
    every_operation: bool,
}

/// The statements that create the publication (`existing` `None`: it does not exist) or
/// set its tables, and what they do (for errors).
/// - A partitioned table's changes are published as the partitioned table's
///   (`publish_via_partition_root`), under its name and in its shape, whichever partition
///   holds the row: the job's spec names the partitioned table, and a row filter on it
///   needs the option too.
/// - Every kind of change is published (`publish`, which a publication made by hand may
///   narrow): a job whose publication left out deletes would silently keep deleted rows.
fn publication_sql(
    publication: &str,
    list: &str,
    existing: Option<PublicationOptions>,
) -> (String, &'static str) {
    let name = quote_ident(publication);
    let Some(existing) = existing else {
        return (
            format!("CREATE PUBLICATION {name} FOR TABLE {list} WITH (publish_via_partition_root = true)"),
            "create publication",
        );
    };
    let mut options = Vec::new();
    if !existing.via_root {
        options.push("publish_via_partition_root = true");
    }
    if !existing.every_operation {
        options.push("publish = 'insert, update, delete, truncate'");
    }
    let set_tables = format!("ALTER PUBLICATION {name} SET TABLE {list}");
    if options.is_empty() {
        return (set_tables, "set publication tables");
    }
    // One query, so one transaction: a row filter on a partitioned table needs the
    // option set first.
    (
        format!(
            "ALTER PUBLICATION {name} SET ({}); {set_tables}",
            options.join(", ")
        ),
        "set publication tables",
    )
}

/// The slot's state, `None` if it does not exist.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, CdcError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, confirmed_flush_lsn::text, active, database::text = current_database(),
                    wal_status = 'lost'
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CdcError::query("look up replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = row.get(0);
    let confirmed: Option<String> = row.get(1);
    let same_db: Option<bool> = row.get(3);
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(CdcError::Definite(format!(
            "replication slot `{slot}` exists but is not a pgoutput slot of this database; choose another slot name"
        )));
    }
    Ok(Some(SlotState {
        confirmed_flush: confirmed.as_deref().and_then(parse_lsn).unwrap_or(0),
        active: row.get(2),
        lost: row.get::<_, Option<bool>>(4).unwrap_or(false),
    }))
}

/// Drops the slot if it exists (it must not be in use).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), CdcError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(CdcError::query("drop replication slot"))?;
    Ok(())
}

/// Reads a table's current shape from the catalog.
pub async fn table_info(client: &Client, schema: &str, name: &str) -> Result<TableInfo, CdcError> {
    // The schema's oid first, then one index lookup by name and namespace: a join on
    // `nspname` was planned as a scan of the namespaces per table of that name, which a
    // schema per tenant (the same name in every schema) made quadratic.
    let row = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c
             WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
               AND c.relname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(CdcError::query("look up table"))?
        .ok_or_else(|| {
            CdcError::Definite(format!(
                "table {schema}.{name} does not exist on the source (dropped, or renamed: a \
                 running job follows a rename, but a start looks tables up by name; name the \
                 table in the job's spec as the source does now, after renaming the targets' \
                 table alike to keep its rows in place)"
            ))
        })?;
    let oid: u32 = row.get(0);
    let ident: String = row.get(1);
    let kind: String = row.get(2);
    if let Some(problem) = not_a_table(&kind) {
        return Err(CdcError::Definite(format!(
            "{schema}.{name} is {problem}, not a table: only tables (plain or partitioned) replicate"
        )));
    }
    let identity = match ident.as_str() {
        "n" => Identity::Nothing,
        "f" => Identity::Full,
        "i" => Identity::Index,
        _ => Identity::Default,
    };
    // The three reads depend only on the oid: sent together, they share round trips (a
    // job's start reads every table's shape, thousands with a schema per tenant).
    let (cols, identity_rows, key_rows) = futures_util::try_join!(
        async {
            client
                .query(
                    &format!(
                        "SELECT a.attname::text, a.atttypid, a.atttypmod, {}, a.attnum
                         FROM pg_attribute a
                         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         ORDER BY a.attnum",
                        portable_type_name("a.atttypid", "a.atttypmod")
                    ),
                    &[&oid],
                )
                .await
                .map_err(CdcError::query("read table columns"))
        },
        async {
            client
                .query(
                    "SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = $1 AND CASE $2::text WHEN 'd' THEN i.indisprimary
                                                         WHEN 'i' THEN i.indisreplident ELSE false END",
                    &[&oid, &ident],
                )
                .await
                .map_err(CdcError::query("read replica identity"))
        },
        primary_key_rows(client, oid),
    )?;
    let identity_names: Vec<String> = identity_rows.iter().map(|r| r.get(0)).collect();
    let columns: Vec<ColumnInfo> = cols
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            ColumnInfo {
                in_identity: identity == Identity::Full || identity_names.contains(&name),
                missing_value: None,
                name,
                type_oid: r.get(1),
                type_modifier: r.get(2),
                type_name: r.get(3),
                attnum: Some(r.get(4)),
            }
        })
        .collect();
    let primary_key = key_positions(&key_rows, &columns);
    let type_oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
    let type_ddl = TypeDdlCache::default().ddl_for(client, &type_oids).await?;
    Ok(TableInfo {
        oid,
        schema: schema.to_string(),
        name: name.to_string(),
        columns,
        primary_key,
        identity,
        type_ddl,
    })
}

/// How many tables' catalog reads (or preparations on a target) [`pipelined`] runs at
/// once on one session.
pub const TABLES_IN_FLIGHT: usize = 16;

/// [`table_info`] of each of `tables` (schema, name), in their order: up to
/// [`TABLES_IN_FLIGHT`] read at once, their queries pipelined on `client`, so a start
/// reading thousands of tables' shapes waits for a round trip per batch, not per query.
pub async fn tables_info(
    client: &Client,
    tables: &[(&str, &str)],
) -> Result<Vec<TableInfo>, CdcError> {
    let reads: Vec<_> = tables
        .iter()
        .map(|&(schema, name)| table_info(client, schema, name))
        .collect();
    pipelined(reads).await
}

/// Runs `reads` (each some queries on one session) up to [`TABLES_IN_FLIGHT`] at once,
/// so their queries are pipelined; their results in `reads`' order, or the first error.
/// Callers make the futures before the call: a stream or iterator mapping borrowed items
/// to futures, held across an await, trips the compiler's `Send` check of the spawned
/// job task.
pub async fn pipelined<T, E, F>(reads: Vec<F>) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(reads)
        .buffered(TABLES_IN_FLIGHT)
        .try_collect()
        .await
}

/// What a relation of `pg_class.relkind` `kind` is, when it is not a table that logical
/// replication can publish (`r` plain, `p` partitioned).
fn not_a_table(kind: &str) -> Option<&'static str> {
    match kind {
        "r" | "p" => None,
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        "S" => Some("a sequence"),
        "i" | "I" => Some("an index"),
        "c" => Some("a composite type"),
        "t" => Some("a TOAST table"),
        _ => Some("a relation of an unknown kind"),
    }
}

/// The warning for a table whose UPDATE and DELETE the source refuses once it is
/// published (no primary key under REPLICA IDENTITY DEFAULT, or REPLICA IDENTITY NOTHING:
/// PostgreSQL then cannot say which row changed and stops the statement), so carrying it
/// breaks writers of it that update or delete; fine for an append-only table.
pub fn refused_changes_warning(table: &TableInfo) -> Option<String> {
    let without = match table.identity {
        Identity::Default if table.primary_key.is_empty() => {
            "has no primary key (REPLICA IDENTITY DEFAULT)"
        }
        Identity::Nothing => "has REPLICA IDENTITY NOTHING",
        _ => return None,
    };
    Some(format!(
        "{name} {without}: while the job's publication carries it, the source refuses UPDATE \
         and DELETE on it (\"cannot update table … because it does not have a replica identity \
         and publishes updates\"); fine if it is append-only, otherwise give it a primary key \
         or `ALTER TABLE {quoted} REPLICA IDENTITY FULL` before writers update it",
        name = table.qualified_name(),
        quoted = quote_qualified(&table.schema, &table.name),
    ))
}

/// The statements that build `table`'s secondary indexes (every valid index but the
/// primary key's) as the source defines them, each [`index_statement`]'s form.
pub async fn secondary_indexes(
    client: &Client,
    table: &TableInfo,
) -> Result<Vec<String>, CdcError> {
    let rows = client
        .query(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
             WHERE i.indrelid = $1 AND NOT i.indisprimary AND i.indisvalid
             ORDER BY i.indexrelid",
            &[&table.oid],
        )
        .await
        .map_err(CdcError::query("read a table's indexes"))?;
    Ok(rows
        .iter()
        .filter_map(|r| index_statement(&r.get::<_, String>(0)))
        .collect())
}

/// A stored generated column of a source table (`GENERATED ALWAYS AS (…) STORED`), which
/// pgoutput does not send: a target computes it from the replicated columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedColumn {
    pub name: String,
    /// Its type's name ([`portable_type_name`]).
    pub type_name: String,
    /// Its expression as the source's catalog prints it.
    pub expression: String,
}

impl GeneratedColumn {
    /// The statement that adds it to table `schema.name` of a target, if missing.
    pub fn add_statement(&self, schema: &str, name: &str) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {} GENERATED ALWAYS AS ({}) STORED",
            quote_qualified(schema, name),
            quote_ident(&self.name),
            self.type_name,
            self.expression
        )
    }
}

/// `table`'s stored generated columns on the source, in column order.
pub async fn generated_columns(
    client: &Client,
    table: &TableInfo,
) -> Result<Vec<GeneratedColumn>, CdcError> {
    let rows = client
        .query(
            &format!(
                "SELECT a.attname::text, {}, pg_get_expr(d.adbin, d.adrelid)
                 FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = $1 AND a.attgenerated = 's' AND NOT a.attisdropped
                 ORDER BY a.attnum",
                portable_type_name("a.atttypid", "a.atttypmod")
            ),
            &[&table.oid],
        )
        .await
        .map_err(CdcError::query("read a table's generated columns"))?;
    Ok(rows
        .iter()
        .map(|r| GeneratedColumn {
            name: r.get(0),
            type_name: r.get(1),
            expression: r.get(2),
        })
        .collect())
}

/// `pg_get_indexdef`'s `CREATE [UNIQUE] INDEX name ON [ONLY] schema.table …` as a
/// statement a target can run again: `IF NOT EXISTS`, without `ONLY` (a partitioned
/// table's index, for the target's plain table), and without `UNIQUE`: the source already
/// enforces it, and the apply writes a transaction's last row of each key together, so a
/// unique index would refuse what the source accepted row by row (two rows swapping a
/// unique value through a third). `None` for anything else.
pub fn index_statement(definition: &str) -> Option<String> {
    let rest = definition
        .strip_prefix("CREATE UNIQUE INDEX ")
        .or_else(|| definition.strip_prefix("CREATE INDEX "))?;
    let (name, on) = rest.split_once(" ON ")?;
    let on = on.strip_prefix("ONLY ").unwrap_or(on);
    Some(format!("CREATE INDEX IF NOT EXISTS {name} ON {on}"))
}

/// Tables of `tables` (name, OID) that are partitions of another table of `tables` (at
/// any depth): the partition's changes reach the job as its partitioned table's (the
/// publication publishes through the partition root), so a job carrying both would never
/// see the partition's own. Pairs of names (partition, ancestor), in the order of `tables`.
pub async fn partitions_of_each_other(
    client: &Client,
    tables: &[(String, u32)],
) -> Result<Vec<(String, String)>, CdcError> {
    let oids: Vec<u32> = tables.iter().map(|(_, oid)| *oid).collect();
    let rows = client
        .query(
            "SELECT t.oid, a.relid::oid
             FROM unnest($1::oid[]) WITH ORDINALITY AS t(oid, ord)
             CROSS JOIN LATERAL pg_partition_ancestors(t.oid) AS a(relid)
             WHERE a.relid::oid <> t.oid AND a.relid::oid = ANY($1::oid[])
             ORDER BY t.ord",
            &[&oids],
        )
        .await
        .map_err(CdcError::query("read partition ancestors"))?;
    let name = |oid: u32| {
        tables
            .iter()
            .find(|(_, o)| *o == oid)
            .map_or_else(|| format!("OID {oid}"), |(name, _)| name.clone())
    };
    Ok(rows
        .iter()
        .map(|r| (name(r.get(0)), name(r.get(1))))
        .collect())
}

/// A table of a schema as the source's catalog lists it, for table patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaTable {
    pub name: String,
    /// Its columns' names, in order.
    pub columns: Vec<String>,
    /// Whether the session's role may read it (the snapshot copies it).
    pub readable: bool,
    /// Whether the session's role may add it to a publication (it owns it, through a
    /// role it belongs to, or is a superuser).
    pub publishable: bool,
}

/// The names of the source's schemas, but the system's (`pg_*`, `information_schema`),
/// in byte order: where a table pattern with a schema wildcard looks.
pub async fn schema_names(client: &Client) -> Result<Vec<String>, CdcError> {
    let rows = client
        .query(
            "SELECT nspname::text FROM pg_namespace
             WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
             ORDER BY nspname COLLATE \"C\"",
            &[],
        )
        .await
        .map_err(CdcError::query("list the source's schemas"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tables of each of `schemas` a pattern may carry: plain and partitioned tables, not
/// partitions (their rows reach the job through their partitioned table), by name; every
/// schema asked for has an entry (empty when it has no table or is gone). One query
/// however many schemas (a schema per tenant makes thousands).
pub async fn schemas_tables(
    client: &Client,
    schemas: &[String],
) -> Result<BTreeMap<String, Vec<SchemaTable>>, CdcError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text,
                    array(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                          ORDER BY a.attnum),
                    has_table_privilege(c.oid, 'SELECT'),
                    pg_has_role(c.relowner, 'USAGE')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY n.nspname COLLATE \"C\", c.relname COLLATE \"C\"",
            &[&schemas],
        )
        .await
        .map_err(CdcError::query("list the tables of the job's schemas"))?;
    let mut tables: BTreeMap<String, Vec<SchemaTable>> =
        schemas.iter().map(|s| (s.clone(), Vec::new())).collect();
    for r in &rows {
        let schema: String = r.get(0);
        tables.entry(schema).or_default().push(SchemaTable {
            name: r.get(1),
            columns: r.get(2),
            readable: r.get(3),
            publishable: r.get(4),
        });
    }
    Ok(tables)
}

/// Positions of the primary-key columns of table `oid` within `columns`.
async fn primary_key(
    client: &Client,
    oid: u32,
    columns: &[ColumnInfo],
) -> Result<Vec<usize>, CdcError> {
    Ok(key_positions(
        &primary_key_rows(client, oid).await?,
        columns,
    ))
}

/// The primary-key columns' names of table `oid`, in key order.
async fn primary_key_rows(client: &Client, oid: u32) -> Result<Vec<tokio_postgres::Row>, CdcError> {
    client
        .query(
            "SELECT a.attname::text FROM pg_index i
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(CdcError::query("read primary key"))
}

/// Positions within `columns` of the key columns [`primary_key_rows`] named.
fn key_positions(rows: &[tokio_postgres::Row], columns: &[ColumnInfo]) -> Vec<usize> {
    rows.iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            columns.iter().position(|c| c.name == name)
        })
        .collect()
}

/// A column as the source's catalog has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CatalogColumn {
    name: String,
    type_oid: u32,
    attnum: i16,
    /// The "fast default" rows that existed before the column was added read for it.
    missing_value: Option<String>,
}

/// Fills `columns` (a Relation message's) from the catalog's `catalog` (in attnum order):
/// each column's fast default by name (rows that existed before a column was added read
/// it, so the target must give its existing rows the same value when it adds the
/// column), and the columns' numbers only if the catalog lists exactly the message's
/// columns (names and types, in order). Otherwise the catalog has changed again since the
/// message and a number read now might belong to another column: none is given.
fn vouch_for_columns(columns: &mut [ColumnInfo], catalog: &[CatalogColumn]) {
    for col in columns.iter_mut() {
        if let Some(c) = catalog.iter().find(|c| c.name == col.name) {
            col.missing_value = c.missing_value.clone();
        }
    }
    let same = columns.len() == catalog.len()
        && columns
            .iter()
            .zip(catalog)
            .all(|(m, c)| m.name == c.name && m.type_oid == c.type_oid);
    for (col, c) in columns.iter_mut().zip(catalog) {
        col.attnum = same.then_some(c.attnum);
    }
}

/// Turns pgoutput Relation messages into [`TableInfo`]s, asking the catalog for type names
/// and the primary key. Caches type names by (oid, typmod).
#[derive(Default)]
pub struct RelationResolver {
    type_names: HashMap<(u32, i32), String>,
    type_ddl: TypeDdlCache,
}

impl RelationResolver {
    /// Resolves one Relation message.
    pub async fn resolve(
        &mut self,
        client: &Client,
        rel: &Relation,
    ) -> Result<Arc<TableInfo>, CdcError> {
        let mut columns = Vec::with_capacity(rel.columns.len());
        for c in &rel.columns {
            let key = (c.type_oid, c.type_modifier);
            let type_name = match self.type_names.get(&key) {
                Some(n) => n.clone(),
                None => {
                    let row = client
                        .query_one(
                            &format!(
                                "SELECT {}",
                                portable_type_name("$1::oid", "nullif($2::int4, -1)")
                            ),
                            &[&c.type_oid, &c.type_modifier],
                        )
                        .await
                        .map_err(CdcError::query("resolve column type"))?;
                    let n: Option<String> = row.get(0);
                    // An OID the catalog no longer knows (type dropped since): carry as text.
                    let n = n.unwrap_or_else(|| "text".to_string());
                    self.type_names.insert(key, n.clone());
                    n
                }
            };
            columns.push(ColumnInfo {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                type_name,
                in_identity: c.is_key,
                missing_value: None,
                attnum: None,
            });
        }
        let catalog = client
            .query(
                "SELECT attname::text, atttypid, attnum, \
                        CASE WHEN atthasmissing THEN (attmissingval::text::text[])[1] END \
                 FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
                 ORDER BY attnum",
                &[&rel.oid],
            )
            .await
            .map_err(CdcError::query("read table columns"))?;
        let catalog: Vec<CatalogColumn> = catalog
            .iter()
            .map(|r| CatalogColumn {
                name: r.get(0),
                type_oid: r.get(1),
                attnum: r.get(2),
                missing_value: r.get(3),
            })
            .collect();
        vouch_for_columns(&mut columns, &catalog);
        let primary_key = primary_key(client, rel.oid, &columns).await?;
        let type_oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
        let type_ddl = self.type_ddl.ddl_for(client, &type_oids).await?;
        let identity = match rel.replica_identity {
            ReplicaIdentity::Default => Identity::Default,
            ReplicaIdentity::Nothing => Identity::Nothing,
            ReplicaIdentity::Full => Identity::Full,
            ReplicaIdentity::Index => Identity::Index,
        };
        Ok(Arc::new(TableInfo {
            oid: rel.oid,
            schema: if rel.namespace.is_empty() {
                "pg_catalog".to_string()
            } else {
                rel.namespace.clone()
            },
            name: rel.name.clone(),
            columns,
            primary_key,
            identity,
            type_ddl,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{
        not_a_table, publication_sql, vouch_for_columns, CatalogColumn, PublicationOptions,
    };
    use crate::change::fixtures;

    #[test]
    fn publications_publish_every_change_and_partitioned_tables_through_their_root() {
        let table = "\"public\".\"t\"";
        let sql = |via_root, every_operation| {
            let existing = PublicationOptions {
                via_root,
                every_operation,
            };
            publication_sql("p", table, Some(existing)).0
        };
        let (create, what) = publication_sql("p", table, None);
        assert_eq!(
            create,
            "CREATE PUBLICATION \"p\" FOR TABLE \"public\".\"t\" WITH (publish_via_partition_root = true)"
        );
        assert_eq!(what, "create publication");
        assert_eq!(
            sql(true, true),
            "ALTER PUBLICATION \"p\" SET TABLE \"public\".\"t\""
        );
        assert_eq!(
            sql(false, true),
            "ALTER PUBLICATION \"p\" SET (publish_via_partition_root = true); \
             ALTER PUBLICATION \"p\" SET TABLE \"public\".\"t\"",
            "the option first, in the same query (one transaction)"
        );
        assert_eq!(
            sql(true, false),
            "ALTER PUBLICATION \"p\" SET (publish = 'insert, update, delete, truncate'); \
             ALTER PUBLICATION \"p\" SET TABLE \"public\".\"t\""
        );
        assert_eq!(
            sql(false, false),
            "ALTER PUBLICATION \"p\" SET (publish_via_partition_root = true, publish = 'insert, \
             update, delete, truncate'); ALTER PUBLICATION \"p\" SET TABLE \"public\".\"t\""
        );
    }

    #[test]
    fn tables_whose_updates_the_source_would_refuse_are_warned_about() {
        use crate::change::Identity;
        let mut table = fixtures::table("t", &[("id", "integer")], &[]);
        let warned = super::refused_changes_warning(&table).expect("no key");
        assert!(warned.contains("app.t has no primary key"), "{warned}");
        table.identity = Identity::Full;
        assert_eq!(super::refused_changes_warning(&table), None);
        table.identity = Identity::Nothing;
        assert!(super::refused_changes_warning(&table)
            .is_some_and(|w| w.contains("REPLICA IDENTITY NOTHING")));
        let keyed = fixtures::table("k", &[("id", "integer")], &[0]);
        assert_eq!(super::refused_changes_warning(&keyed), None);
    }

    #[test]
    fn index_definitions_become_statements_a_target_can_run_again() {
        use super::index_statement;
        assert_eq!(
            index_statement("CREATE INDEX items_v_idx ON public.items USING btree (v)").as_deref(),
            Some("CREATE INDEX IF NOT EXISTS items_v_idx ON public.items USING btree (v)")
        );
        assert_eq!(
            index_statement(
                "CREATE UNIQUE INDEX \"Task_slug_key\" ON public.\"Task\" USING btree (\"organizationId\", slug)"
            )
            .as_deref(),
            Some(
                "CREATE INDEX IF NOT EXISTS \"Task_slug_key\" ON public.\"Task\" USING btree (\"organizationId\", slug)"
            ),
            "not unique: the source enforces it, and the apply writes a key's last row"
        );
        assert_eq!(
            index_statement("CREATE INDEX events_at_idx ON ONLY public.events USING btree (at)")
                .as_deref(),
            Some("CREATE INDEX IF NOT EXISTS events_at_idx ON public.events USING btree (at)"),
            "a partitioned table's index, for the target's plain table"
        );
        assert_eq!(index_statement("DROP TABLE x"), None);
    }

    #[test]
    fn generated_columns_are_added_to_the_target_table_named() {
        let column = super::GeneratedColumn {
            name: "Search".into(),
            type_name: "tsvector".into(),
            expression: "to_tsvector('simple'::regconfig, COALESCE(v, ''::text))".into(),
        };
        assert_eq!(
            column.add_statement("public", "helios_load_1_j"),
            "ALTER TABLE \"public\".\"helios_load_1_j\" ADD COLUMN IF NOT EXISTS \"Search\" tsvector \
             GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, COALESCE(v, ''::text))) STORED"
        );
    }

    #[test]
    fn only_plain_and_partitioned_tables_are_tables() {
        assert_eq!(not_a_table("r"), None);
        assert_eq!(not_a_table("p"), None);
        assert_eq!(not_a_table("v"), Some("a view"));
        assert_eq!(not_a_table("m"), Some("a materialized view"));
        assert_eq!(not_a_table("f"), Some("a foreign table"));
        assert_eq!(not_a_table("S"), Some("a sequence"));
        assert_eq!(not_a_table("?"), Some("a relation of an unknown kind"));
    }

    fn catalog(columns: &[(&str, u32, i16)]) -> Vec<CatalogColumn> {
        columns
            .iter()
            .map(|&(name, type_oid, attnum)| CatalogColumn {
                name: name.into(),
                type_oid,
                attnum,
                missing_value: (name == "added").then(|| "7".to_string()),
            })
            .collect()
    }

    fn vouched(catalog: &[CatalogColumn]) -> Vec<(Option<i16>, Option<String>)> {
        let mut table = fixtures::table("t", &[("id", "integer"), ("added", "integer")], &[0]);
        for c in &mut table.columns {
            c.type_oid = 23;
        }
        vouch_for_columns(&mut table.columns, catalog);
        table
            .columns
            .into_iter()
            .map(|c| (c.attnum, c.missing_value))
            .collect()
    }

    #[test]
    fn column_numbers_are_given_only_when_the_catalog_lists_the_messages_columns() {
        let seven = || Some("7".to_string());
        // The catalog as the message: numbers (a dropped column's gap kept), and defaults.
        assert_eq!(
            vouched(&catalog(&[("id", 23, 1), ("added", 23, 3)])),
            [(Some(1), None), (Some(3), seven())]
        );
        // Changed again since: renamed, retyped, or a column added. No numbers, defaults
        // by name still.
        for changed in [
            catalog(&[("id", 23, 1), ("other", 23, 3)]),
            catalog(&[("id", 23, 1), ("added", 20, 3)]),
            catalog(&[("id", 23, 1), ("added", 23, 3), ("more", 23, 4)]),
        ] {
            let got = vouched(&changed);
            assert!(got.iter().all(|(attnum, _)| attnum.is_none()), "{got:?}");
        }
        assert_eq!(
            vouched(&catalog(&[
                ("id", 23, 1),
                ("added", 23, 3),
                ("more", 23, 4)
            ]))[1]
                .1,
            seven()
        );
    }
}
