//! Keeps target tables in the shape of the source: creates missing tables and applies
//! what a schema change on the source needs (added columns, changed types).
//!
//! A column renamed on the source is renamed on the target, with its values: each target
//! table records which column each source column (by its number in the source's catalog,
//! which a rename keeps) was written to (`helios.source_columns`), so a column whose name
//! the target lacks is told from a new one, also across restarts. Without a recorded
//! number (a table created before these records, a catalog that changed again before the
//! relation was read) a new name is taken as a new column.
//!
//! Dropped source columns stay on the target (their history is kept; new rows get NULL or
//! the column default). A change that cannot be applied (a type the target lacks, a
//! conversion that fails, a rename onto a name the target already uses) is an error for
//! the caller to put the table in error state.

use std::collections::{HashMap, HashSet};

use tokio_postgres::GenericClient;

use crate::cdc::type_names::portable_type_name;
use crate::change::TableInfo;
use crate::sinks::pg_apply::store::sink_error;
use crate::sinks::SinkError;
use crate::sql_text::{quote_ident, quote_literal, quote_qualified};

/// The target's columns of a table: name → type name, as the source's catalog names it
/// ([`crate::cdc::type_names`]).
pub type TargetColumns = HashMap<String, String>;

/// Reads the target's columns of `schema.name` (`None` if the table does not exist).
///
/// Target sessions keep their `search_path` (the target's triggers run in them), so a type
/// the path finds comes back from `format_type` without its schema; the query names each
/// type as the source's catalog does ([`portable_type_name`]), so `mood` is `public.mood`
/// and an extension's `extensions.citext` is `citext`, and a column of the same type is
/// never taken for one to alter.
pub async fn target_columns(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<Option<TargetColumns>, SinkError> {
    let rows = client
        .query(
            // By the schema's oid (as `catalog::table_info` looks a table up).
            &format!(
                "SELECT a.attname::text, {}
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
                   AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                portable_type_name("a.atttypid", "a.atttypmod")
            ),
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

/// The columns of `table` whose type on the target (`existing`) is not the source's, as
/// (name, the target's type, the source's), in the source's column order: the ones
/// [`alter_statements`] retypes.
pub fn retyped_columns<'a>(
    table: &'a TableInfo,
    existing: &'a TargetColumns,
) -> Vec<(&'a str, &'a str, &'a str)> {
    table
        .columns
        .iter()
        .filter_map(|c| match existing.get(&c.name) {
            Some(ty) if *ty != c.type_name => {
                Some((c.name.as_str(), ty.as_str(), c.type_name.as_str()))
            }
            _ => None,
        })
        .collect()
}

/// Columns of the target's copy of a table that the job's writes trip on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrippingColumns {
    /// Columns the source lacks that every insert of the job must fill: `NOT NULL`
    /// without a default, identity or generation. Such an insert fails (unless a trigger
    /// the operator marked to fire for replicas fills the column).
    pub required: Vec<String>,
    /// Columns of the source, outside its key, that the target made `GENERATED ALWAYS AS
    /// IDENTITY`: the job's inserts give them the source's values (`OVERRIDING SYSTEM
    /// VALUE`), but an upsert or update that sets one is refused ("can only be updated to
    /// DEFAULT").
    pub always_identity: Vec<String>,
}

/// The [`TrippingColumns`] of the target's copy of `table` (none if it has no copy).
pub async fn tripping_columns(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<TrippingColumns, SinkError> {
    let source: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let key: Vec<&str> = table
        .key_columns()
        .iter()
        .map(|&i| table.columns[i].name.as_str())
        .collect();
    let rows = client
        .query(
            "SELECT a.attname::text, a.attidentity = 'a'
             FROM pg_attribute a
             WHERE a.attrelid = (SELECT c.oid FROM pg_class c
                                 JOIN pg_namespace n ON n.oid = c.relnamespace
                                 WHERE n.nspname = $1 AND c.relname = $2)
               AND a.attnum > 0 AND NOT a.attisdropped
               AND CASE WHEN a.attname::text = ANY ($3::text[])
                        THEN a.attidentity = 'a' AND NOT (a.attname::text = ANY ($4::text[]))
                        ELSE a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
                             AND a.attgenerated = '' END
             ORDER BY a.attnum",
            &[&table.schema, &table.name, &source, &key],
        )
        .await
        .map_err(|e| sink_error("read the target's columns the job trips on", &e))?;
    let mut out = TrippingColumns::default();
    for row in rows {
        if row.get(1) {
            out.always_identity.push(row.get(0));
        } else {
            out.required.push(row.get(0));
        }
    }
    Ok(out)
}

/// The target column each of the source relation's column numbers was last written to
/// ([`record_source_columns`]).
pub type KnownColumns = HashMap<i16, String>;

/// Reads what `helios.source_columns` says of target table `table_name` and source
/// relation `source_oid`; `None` on a target without the job's bookkeeping tables (a
/// caller that never ran `store::migrate`), where renames are not tracked.
async fn known_columns(
    client: &impl GenericClient,
    table_name: &str,
    source_oid: u32,
) -> Result<Option<KnownColumns>, SinkError> {
    let tracked: bool = client
        .query_one(
            "SELECT to_regclass('helios.source_columns') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| sink_error("look for helios.source_columns", &e))?
        .get(0);
    if !tracked {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT attnum, column_name FROM helios.source_columns \
             WHERE table_name = $1 AND source_oid = $2",
            &[&table_name, &source_oid],
        )
        .await
        .map_err(|e| sink_error("read the source columns' target columns", &e))?;
    Ok(Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect()))
}

/// Records which target column each of `table`'s numbered columns is written to, where
/// `known` says otherwise.
async fn record_source_columns(
    client: &impl GenericClient,
    table: &TableInfo,
    known: &KnownColumns,
) -> Result<(), SinkError> {
    let (attnums, names): (Vec<i16>, Vec<&str>) = table
        .columns
        .iter()
        .filter_map(|c| Some((c.attnum?, c.name.as_str())))
        .filter(|(a, name)| known.get(a).map(String::as_str) != Some(*name))
        .unzip();
    if attnums.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "INSERT INTO helios.source_columns (table_name, source_oid, attnum, column_name) \
             SELECT $1, $2, a, n FROM unnest($3::int2[], $4::text[]) AS c(a, n) \
             ON CONFLICT (table_name, source_oid, attnum) DO UPDATE SET column_name = EXCLUDED.column_name",
            &[&table.qualified_name(), &table.oid, &attnums, &names],
        )
        .await
        .map_err(|e| sink_error("record the source columns' target columns", &e))?;
    Ok(())
}

/// Records which target column each of `table`'s numbered columns is written to, for a
/// table put in place other than by [`ensure_shape`] (a staged load's).
pub async fn record_columns(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<(), SinkError> {
    match known_columns(client, &table.qualified_name(), table.oid).await? {
        Some(known) => record_source_columns(client, table, &known).await,
        None => Ok(()),
    }
}

/// The target's columns to rename for `table`'s shape, as (old, new) names: a column
/// whose name the target lacks, whose number `known` names a target column of another
/// name. An error when the new name is taken by a target column not renamed away (a
/// column dropped on the source, say).
pub fn renamed_columns(
    table: &TableInfo,
    existing: &TargetColumns,
    known: &KnownColumns,
) -> Result<Vec<(String, String)>, String> {
    let renames: Vec<(String, String)> = table
        .columns
        .iter()
        .filter_map(|c| {
            let old = known.get(&c.attnum?)?;
            (*old != c.name && existing.contains_key(old)).then(|| (old.clone(), c.name.clone()))
        })
        .collect();
    let moved: HashSet<&str> = renames.iter().map(|(old, _)| old.as_str()).collect();
    for (old, new) in &renames {
        if existing.contains_key(new) && !moved.contains(new.as_str()) {
            return Err(format!(
                "source column {old:?} of {} was renamed to {new:?}, a name the target table \
                 already has for another column (one dropped on the source?): rename or drop \
                 the target's {new:?}, then resync the table",
                table.qualified_name()
            ));
        }
    }
    Ok(renames)
}

/// The DDL that renames `renames` in table `name`: through temporary names when one
/// rename's new name is another's old one (columns swapped), directly otherwise.
pub fn rename_statements(name: &str, renames: &[(String, String)]) -> Vec<String> {
    let rename = |from: &str, to: &str| {
        format!(
            "ALTER TABLE {name} RENAME COLUMN {} TO {}",
            quote_ident(from),
            quote_ident(to)
        )
    };
    let olds: HashSet<&str> = renames.iter().map(|(old, _)| old.as_str()).collect();
    if !renames.iter().any(|(_, new)| olds.contains(new.as_str())) {
        return renames.iter().map(|(old, new)| rename(old, new)).collect();
    }
    let temporary = |i: usize| format!("helios_renaming_{i}");
    let mut out: Vec<String> = renames
        .iter()
        .enumerate()
        .map(|(i, (old, _))| rename(old, &temporary(i)))
        .collect();
    out.extend(
        renames
            .iter()
            .enumerate()
            .map(|(i, (_, new))| rename(&temporary(i), new)),
    );
    out
}

/// Creates the table if missing, else alters it to the source's shape. Returns the DDL run.
pub async fn ensure_shape(
    client: &impl GenericClient,
    table: &TableInfo,
) -> Result<Vec<String>, SinkError> {
    create_types(client, table).await?;
    let known = known_columns(client, &table.qualified_name(), table.oid).await?;
    let ddl = match target_columns(client, &table.schema, &table.name).await? {
        None => {
            let sql = create_table_sql(table);
            client.batch_execute(&sql).await.map_err(|e| {
                sink_error(
                    &format!("create target table {}", table.qualified_name()),
                    &e,
                )
            })?;
            vec![sql]
        }
        Some(mut existing) => {
            let renames = match &known {
                Some(known) => {
                    renamed_columns(table, &existing, known).map_err(SinkError::Definite)?
                }
                None => Vec::new(),
            };
            let name = quote_qualified(&table.schema, &table.name);
            let mut ddl = rename_statements(&name, &renames);
            for (old, new) in renames {
                if let Some(ty) = existing.remove(&old) {
                    existing.insert(new, ty);
                }
            }
            ddl.extend(alter_statements(table, &existing));
            for sql in &ddl {
                client.batch_execute(sql).await.map_err(|e| {
                    sink_error(
                        &format!("alter target table {}", table.qualified_name()),
                        &e,
                    )
                })?;
            }
            ddl
        }
    };
    if let Some(known) = &known {
        record_source_columns(client, table, known).await?;
    }
    Ok(ddl)
}

/// Adds the source's stored generated columns (`statements`, from
/// `cdc::catalog::GeneratedColumn::add_statement`) to `table` on a target that lacked it:
/// pgoutput does not send them, so the target computes them. One the target cannot add
/// (a function only the source has, say) is left out with a warning.
pub async fn add_generated_columns(
    job: &str,
    target: &impl GenericClient,
    table: &TableInfo,
    statements: &[String],
) {
    run_each(job, target, table, statements, "generated column added",
        "the target cannot compute one of the source's generated columns of the table: it replicates without it").await;
}

/// Gives `table`, on a target that lacked it, the source's column defaults and the
/// sequences behind them (`statements`, from `cdc::column_defaults`). One the target
/// cannot take (a function only the source has, say) is left out with a warning.
pub async fn set_defaults(
    job: &str,
    target: &impl GenericClient,
    table: &TableInfo,
    statements: &[String],
) {
    run_each(job, target, table, statements, "column default set",
        "the target cannot take one of the source's column defaults of the table: it replicates without it").await;
}

/// Runs each of `statements` on `target`, logging `done` at debug level or `failed` as a
/// warning with the error.
async fn run_each(
    job: &str,
    target: &impl GenericClient,
    table: &TableInfo,
    statements: &[String],
    done: &str,
    failed: &str,
) {
    for statement in statements {
        match target.batch_execute(statement.as_str()).await {
            Ok(()) => tracing::debug!(job, table = %table.qualified_name(), statement, "{done}"),
            Err(e) => tracing::warn!(job, table = %table.qualified_name(), statement,
                error = %crate::sql_text::describe_pg_error(&e), "{failed}"),
        }
    }
}

/// Builds `table`'s secondary indexes on a target that lacked the table, once its rows are
/// loaded (one build over them instead of an insert per row): `statements` are the
/// source's definitions (`cdc::catalog::secondary_indexes`). One the target cannot build
/// (a function or operator class only the source has, say) is left out with a warning;
/// the table replicates without it.
pub async fn build_indexes(
    job: &str,
    target: &impl GenericClient,
    table: &TableInfo,
    statements: &[String],
) {
    run_each(job, target, table, statements, "index built",
        "the target cannot build one of the source's indexes of the table: it replicates without it").await;
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
        // The retyped one, for `check` to name (a missing column is not retyped).
        assert_eq!(
            retyped_columns(&table(), &existing),
            [("id", "integer", "bigint")]
        );
    }

    /// `table()` with its columns numbered 1, 2, 3 and named `names`.
    fn numbered(names: [&str; 3]) -> TableInfo {
        let mut t = table();
        for (i, (c, name)) in t.columns.iter_mut().zip(names).enumerate() {
            c.name = name.into();
            c.attnum = Some(i as i16 + 1);
        }
        t
    }

    fn target(names: &[&str]) -> TargetColumns {
        names
            .iter()
            .map(|n| (n.to_string(), "integer".to_string()))
            .collect()
    }

    fn known(names: [&str; 3]) -> KnownColumns {
        (1..=3).zip(names.map(String::from)).collect()
    }

    fn pairs(renames: &[(String, String)]) -> Vec<(&str, &str)> {
        renames
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    #[test]
    fn a_column_whose_number_names_another_target_column_is_renamed() {
        let was = known(["tenant_id", "id", "amount"]);
        let on_target = target(&["tenant_id", "id", "amount"]);
        // Same names: nothing to rename.
        let same = renamed_columns(&numbered(["tenant_id", "id", "amount"]), &on_target, &was);
        assert_eq!(same, Ok(vec![]));
        // `amount` is now `total`.
        let renames =
            renamed_columns(&numbered(["tenant_id", "id", "total"]), &on_target, &was).expect("ok");
        assert_eq!(pairs(&renames), [("amount", "total")]);
        assert_eq!(
            rename_statements("t", &renames),
            ["ALTER TABLE t RENAME COLUMN \"amount\" TO \"total\""]
        );
        // Nothing recorded, or no number vouched for: a new column, as before.
        let none = KnownColumns::new();
        assert_eq!(
            renamed_columns(&numbered(["tenant_id", "id", "total"]), &on_target, &none),
            Ok(vec![])
        );
        let mut unnumbered = numbered(["tenant_id", "id", "total"]);
        unnumbered.columns[2].attnum = None;
        assert_eq!(renamed_columns(&unnumbered, &on_target, &was), Ok(vec![]));
        // Already renamed on the target (a replay): nothing.
        let renamed_target = target(&["tenant_id", "id", "total"]);
        assert_eq!(
            renamed_columns(
                &numbered(["tenant_id", "id", "total"]),
                &renamed_target,
                &was
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn columns_swapping_names_are_renamed_through_temporary_names() {
        let was = known(["tenant_id", "a", "b"]);
        let renames = renamed_columns(
            &numbered(["tenant_id", "b", "a"]),
            &target(&["tenant_id", "a", "b"]),
            &was,
        )
        .expect("a swap");
        assert_eq!(pairs(&renames), [("a", "b"), ("b", "a")]);
        assert_eq!(
            rename_statements("t", &renames),
            [
                "ALTER TABLE t RENAME COLUMN \"a\" TO \"helios_renaming_0\"",
                "ALTER TABLE t RENAME COLUMN \"b\" TO \"helios_renaming_1\"",
                "ALTER TABLE t RENAME COLUMN \"helios_renaming_0\" TO \"b\"",
                "ALTER TABLE t RENAME COLUMN \"helios_renaming_1\" TO \"a\"",
            ]
        );
    }

    /// Runs `statements` (renames only) over target columns named `columns`: each must
    /// rename a column that exists onto a name that does not.
    fn run_renames(columns: &mut HashSet<String>, statements: &[String]) -> Result<(), String> {
        for sql in statements {
            let rest = sql
                .strip_prefix("ALTER TABLE t RENAME COLUMN ")
                .ok_or_else(|| format!("not a rename: {sql}"))?;
            let (from, to) = rest.split_once(" TO ").ok_or("no TO")?;
            let unquote = |s: &str| s.trim_matches('"').to_string();
            let (from, to) = (unquote(from), unquote(to));
            if !columns.remove(&from) || !columns.insert(to.clone()) {
                return Err(format!("{sql} over {columns:?}"));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Whatever names the source's columns take (renames, swaps, chains), the renames
        /// bring the target's columns to them, each rename valid when it runs; unless a new
        /// name is one the target keeps for a column dropped on the source, which is
        /// refused.
        #[test]
        fn renames_bring_the_target_to_the_new_names(
            picks in proptest::collection::vec(0usize..8, 3),
            stale in proptest::collection::btree_set(5usize..8, 0..2),
        ) {
            let pool = |i: usize| format!("c{i}");
            let old = ["c0", "c1", "c2"];
            // New names: distinct, from c0..c7 (c5–c7 may be a stale column's name).
            let mut seen = HashSet::new();
            let new: Vec<String> = picks
                .iter()
                .map(|&i| (i..i + 8).map(|j| pool(j % 8)).find(|n| seen.insert(n.clone())))
                .map(|n| n.expect("eight names for three columns"))
                .collect();
            let mut table = numbered(["c0", "c1", "c2"]);
            for (c, name) in table.columns.iter_mut().zip(&new) {
                c.name = name.clone();
            }
            let stale: Vec<String> = stale.into_iter().map(pool).collect();
            let mut existing: Vec<&str> = old.to_vec();
            existing.extend(stale.iter().map(String::as_str));
            let existing_columns = target(&existing);
            let taken = new
                .iter()
                .zip(old)
                .any(|(n, o)| n != o && stale.contains(n));
            match renamed_columns(&table, &existing_columns, &known(old)) {
                Err(e) => proptest::prop_assert!(taken, "refused: {e}"),
                Ok(renames) => {
                    proptest::prop_assert!(!taken, "a rename onto a stale name: {renames:?}");
                    let mut columns: HashSet<String> =
                        existing.iter().map(|s| s.to_string()).collect();
                    run_renames(&mut columns, &rename_statements("t", &renames))
                        .map_err(proptest::test_runner::TestCaseError::fail)?;
                    let mut want: HashSet<String> = new.iter().cloned().collect();
                    want.extend(stale.iter().cloned());
                    proptest::prop_assert_eq!(columns, want);
                }
            }
        }
    }

    #[test]
    fn a_rename_onto_a_name_the_target_keeps_for_another_column_is_refused() {
        // `b` was dropped on the source (the target keeps it), then `a` renamed to `b`.
        let err = renamed_columns(
            &numbered(["tenant_id", "id", "b"]),
            &target(&["tenant_id", "id", "a", "b"]),
            &known(["tenant_id", "id", "a"]),
        )
        .expect_err("the name is taken");
        assert!(
            err.contains("\"a\" of app.t was renamed to \"b\"") && err.contains("resync"),
            "{err}"
        );
    }
}
