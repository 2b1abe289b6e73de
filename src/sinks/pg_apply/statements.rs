//! SQL text and parameters for each apply step.
//!
//! Values travel as text (`text[]` columns of an `unnest`, or `text` scalars) and are cast
//! to the column's type on the target with the type name the source gave
//! (`format_type`), so the target parses exactly the text form the source printed. Rows of
//! keyless tables are matched by text form (`col::text`), which also works for types
//! without an equality operator (json, point).
//!
//! Pure: builds strings, runs nothing.

use std::borrow::Borrow;

use crate::change::{Cell, Row, TableInfo};
use crate::control::job_spec::TenantKey;
use crate::sql_text::{quote_ident, quote_qualified};

/// A statement parameter: a `text[]` column of values or one `text` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param<'a> {
    /// One text array (one element per row).
    Column(Vec<Option<String>>),
    /// One text array of the rows' own cells, borrowed from the rows until the statement
    /// has run (no copy, no reference count touched).
    Cells(Vec<Option<&'a str>>),
    /// One text value.
    Value(Option<String>),
}

impl Param<'_> {
    /// The parameter as tokio-postgres binds it.
    pub fn as_sql(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Param::Column(v) => v,
            Param::Cells(v) => v,
            Param::Value(v) => v,
        }
    }

    /// The parameter with its own copy of any borrowed cells, so it can outlive the rows
    /// (a group sent while earlier ones are still in flight).
    pub fn into_owned(self) -> Param<'static> {
        match self {
            Param::Column(v) => Param::Column(v),
            Param::Cells(v) => Param::Column(v.into_iter().map(|c| c.map(str::to_owned)).collect()),
            Param::Value(v) => Param::Value(v),
        }
    }

    /// Bytes of values it carries (a NULL or separator counts one).
    pub fn bytes(&self) -> u64 {
        match self {
            Param::Column(v) => v.iter().flatten().map(|s| s.len() as u64 + 1).sum::<u64>(),
            Param::Cells(v) => v.iter().flatten().map(|s| s.len() as u64 + 1).sum::<u64>(),
            Param::Value(v) => v.as_ref().map_or(1, |s| s.len() as u64 + 1),
        }
    }
}

/// A statement ready to run; its parameters may borrow the rows they bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The SQL text (the prepared-statement cache key).
    pub text: String,
    /// Its parameters, `$1..`.
    pub params: Vec<Param<'a>>,
}

impl Statement<'_> {
    /// The statement with parameters of its own (see [`Param::into_owned`]).
    pub fn into_owned(self) -> Statement<'static> {
        Statement {
            text: self.text,
            params: self.params.into_iter().map(Param::into_owned).collect(),
        }
    }
}

pub(crate) fn cell_value(cell: &Cell) -> Option<String> {
    cell.as_text().map(str::to_string)
}

/// A cell's text for a [`Param::Cells`] column (`None` for NULL or a missing cell).
pub(crate) fn cell_text(cell: Option<&Cell>) -> Option<&str> {
    cell.and_then(Cell::as_text)
}

fn table_name(table: &TableInfo) -> String {
    quote_qualified(&table.schema, &table.name)
}

/// `$1::text[], $2::text[], …` and `v(c0, c1, …)` for `n` columns.
pub(crate) fn unnest_of(n: usize, first_param: usize) -> String {
    let arrays: Vec<String> = (0..n)
        .map(|i| format!("${}::text[]", first_param + i))
        .collect();
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    format!("unnest({}) AS v({})", arrays.join(", "), names.join(", "))
}

fn columns_of<'a, R: Borrow<Row>>(rows: &'a [R], cols: &[usize]) -> Vec<Param<'a>> {
    cols.iter()
        .map(|&c| Param::Cells(rows.iter().map(|r| cell_text(r.borrow().get(c))).collect()))
        .collect()
}

/// What every `INSERT` of ours says, so that an identity column the target's owner made
/// `GENERATED ALWAYS` (as migrations often do) takes the source's value rather than
/// refusing it ("cannot insert a non-DEFAULT value into column"); a no-op for other
/// columns. `COPY` writes identity columns as given anyway, as PostgreSQL's subscription
/// does.
pub const OVERRIDING: &str = "OVERRIDING SYSTEM VALUE";

fn cast(table: &TableInfo, col: usize, expr: &str) -> String {
    format!("{expr}::{}", table.columns[col].type_name)
}

/// Multi-row upsert of full rows with distinct keys.
pub fn upsert<'a, R: Borrow<Row>>(table: &TableInfo, rows: &'a [R]) -> Statement<'a> {
    let all: Vec<usize> = (0..table.columns.len()).collect();
    let key = table.key_columns();
    let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = all
        .iter()
        .map(|&i| cast(table, i, &format!("v.c{i}")))
        .collect();
    let key_names: Vec<String> = key.iter().map(|&i| names[i].clone()).collect();
    let updates: Vec<String> = all
        .iter()
        .filter(|i| !key.contains(i))
        .map(|&i| format!("{0} = EXCLUDED.{0}", names[i]))
        .collect();
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    Statement {
        text: format!(
            "INSERT INTO {} ({}) {OVERRIDING} SELECT {} FROM {} ON CONFLICT ({}) {}",
            table_name(table),
            names.join(", "),
            values.join(", "),
            unnest_of(all.len(), 1),
            key_names.join(", "),
            on_conflict
        ),
        params: columns_of(rows, &all),
    }
}

/// Multi-row append (keyless tables).
pub fn append<'a, R: Borrow<Row>>(table: &TableInfo, rows: &'a [R]) -> Statement<'a> {
    let all: Vec<usize> = (0..table.columns.len()).collect();
    let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let values: Vec<String> = all
        .iter()
        .map(|&i| cast(table, i, &format!("v.c{i}")))
        .collect();
    Statement {
        text: format!(
            "INSERT INTO {} ({}) {OVERRIDING} SELECT {} FROM {}",
            table_name(table),
            names.join(", "),
            values.join(", "),
            unnest_of(all.len(), 1)
        ),
        params: columns_of(rows, &all),
    }
}

/// Rows to load with `COPY … FROM STDIN` (text format): the statement and the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRows {
    /// `COPY table (columns) FROM STDIN`.
    pub text: String,
    /// The rows, tab-separated, `\N` for NULL, one per line.
    pub data: bytes::Bytes,
    /// How many rows `data` holds.
    pub rows: usize,
}

/// Plain insert of many rows through `COPY` (the cheapest way into a table: the server
/// parses each value once with the column's input function and inserts in batches).
/// Only for rows that cannot conflict (keyless appends, keys new to the target).
pub fn copy_rows<R: Borrow<Row>>(table: &TableInfo, rows: &[R]) -> CopyRows {
    let names: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut data = Vec::with_capacity(
        rows.iter()
            .map(|r| {
                r.borrow()
                    .iter()
                    .filter_map(Cell::as_text)
                    .map(str::len)
                    .sum::<usize>()
            })
            .sum::<usize>()
            + rows.len() * (names.len() + 1),
    );
    for row in rows {
        for i in 0..names.len() {
            if i > 0 {
                data.push(b'\t');
            }
            match row.borrow().get(i).and_then(Cell::as_text) {
                Some(text) => copy_escape(text, &mut data),
                None => data.extend_from_slice(b"\\N"),
            }
        }
        data.push(b'\n');
    }
    CopyRows {
        text: format!(
            "COPY {} ({}) FROM STDIN",
            table_name(table),
            names.join(", ")
        ),
        data: data.into(),
        rows: rows.len(),
    }
}

/// Bytes `COPY`'s text format reserves: backslash, tab, newline, carriage return.
static COPY_RESERVED: [bool; 256] = {
    let mut t = [false; 256];
    t[b'\\' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    t
};

/// A value in `COPY` text format: backslash, tab, newline and carriage return escaped.
fn copy_escape(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    // Most values hold none of the four: one table lookup per byte, then one copy.
    if !bytes.iter().any(|&b| COPY_RESERVED[usize::from(b)]) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Delete rows by key; `keys` hold the key cells in `key_columns()` order.
pub fn delete_keys<'a>(table: &TableInfo, keys: &'a [Row]) -> Statement<'a> {
    let key = table.key_columns();
    let conds: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            format!(
                "t.{} = {}",
                quote_ident(&table.columns[i].name),
                cast(table, i, &format!("v.c{j}"))
            )
        })
        .collect();
    let positions: Vec<usize> = (0..key.len()).collect();
    Statement {
        text: format!(
            "DELETE FROM {} AS t USING {} WHERE {}",
            table_name(table),
            unnest_of(key.len(), 1),
            conds.join(" AND ")
        ),
        params: columns_of(keys, &positions),
    }
}

/// `col = $n::text::type` for every cell of `new` that is not unchanged, numbering
/// parameters after `params`.
fn set_changed(table: &TableInfo, new: &Row, params: &mut Vec<Param<'_>>) -> Vec<String> {
    let mut sets = Vec::new();
    for (i, cell) in new.iter().enumerate() {
        if *cell == Cell::Unchanged {
            continue;
        }
        params.push(Param::Value(cell_value(cell)));
        sets.push(format!(
            "{} = {}",
            quote_ident(&table.columns[i].name),
            cast(table, i, &format!("${}::text", params.len()))
        ));
    }
    sets
}

/// Update one row by key, leaving unchanged (TOASTed) columns as they are.
pub fn update_row(table: &TableInfo, key: &Row, new: &Row) -> Statement<'static> {
    let mut params = Vec::new();
    let mut sets = set_changed(table, new, &mut params);
    let mut conds = Vec::new();
    for (j, &i) in table.key_columns().iter().enumerate() {
        params.push(Param::Value(key.get(j).and_then(cell_value)));
        conds.push(format!(
            "{} = {}",
            quote_ident(&table.columns[i].name),
            cast(table, i, &format!("${}::text", params.len()))
        ));
    }
    if sets.is_empty() {
        // Nothing but unchanged values: a no-op that still checks the row exists.
        sets.push(format!(
            "{0} = {0}",
            quote_ident(&table.columns[table.key_columns()[0]].name)
        ));
    }
    Statement {
        text: format!(
            "UPDATE {} SET {} WHERE {}",
            table_name(table),
            sets.join(", "),
            conds.join(" AND ")
        ),
        params,
    }
}

/// Conditions matching `old` by text form, numbering parameters after `params`.
fn match_row(table: &TableInfo, old: &Row, params: &mut Vec<Param<'_>>) -> Vec<String> {
    let mut conds = Vec::new();
    for (i, cell) in old.iter().enumerate() {
        let name = quote_ident(&table.columns[i].name);
        match cell {
            Cell::Unchanged => {}
            Cell::Null => conds.push(format!("{name} IS NULL")),
            Cell::Text(t) => {
                params.push(Param::Value(Some(t.to_string())));
                conds.push(format!("{name}::text = ${}::text", params.len()));
            }
        }
    }
    if conds.is_empty() {
        conds.push("true".into());
    }
    conds
}

/// Delete one row equal to `old` (keyless tables), optionally only among owned tenants.
pub fn delete_matching(table: &TableInfo, old: &Row, owned: Option<&str>) -> Statement<'static> {
    let mut params = Vec::new();
    let mut conds = match_row(table, old, &mut params);
    conds.extend(owned.map(str::to_string));
    let name = table_name(table);
    Statement {
        text: format!(
            "DELETE FROM {name} WHERE ctid = (SELECT ctid FROM {name} WHERE {} LIMIT 1)",
            conds.join(" AND ")
        ),
        params,
    }
}

/// Update one row equal to `old` (keyless tables).
pub fn update_matching(table: &TableInfo, old: &Row, new: &Row) -> Statement<'static> {
    let mut params = Vec::new();
    let sets = set_changed(table, new, &mut params);
    let conds = match_row(table, old, &mut params);
    let name = table_name(table);
    Statement {
        text: format!(
            "UPDATE {name} SET {} WHERE ctid = (SELECT ctid FROM {name} WHERE {} LIMIT 1)",
            sets.join(", "),
            conds.join(" AND ")
        ),
        params,
    }
}

/// Delete rows by key among the tenants a worker owns (`owned` is a SQL predicate).
pub fn delete_owned(table: &TableInfo, old: &Row, owned: &str) -> Statement<'static> {
    let key = table.key_columns();
    if key.is_empty() {
        return delete_matching(table, old, Some(owned));
    }
    let mut params = Vec::new();
    let mut conds = Vec::new();
    for &i in &key {
        params.push(Param::Value(old.get(i).and_then(cell_value)));
        conds.push(format!(
            "{} = {}",
            quote_ident(&table.columns[i].name),
            cast(table, i, &format!("${}::text", params.len()))
        ));
    }
    conds.push(owned.to_string());
    Statement {
        text: format!(
            "DELETE FROM {} WHERE {}",
            table_name(table),
            conds.join(" AND ")
        ),
        params,
    }
}

/// Delete every row of one tenant (of the table by `key`).
pub fn truncate_tenant(table: &TableInfo, key: &TenantKey, tenant: &str) -> Statement<'static> {
    Statement {
        text: format!(
            "DELETE FROM {} WHERE {}::text = $1::text",
            table_name(table),
            key.sql()
        ),
        params: vec![Param::Value(Some(tenant.to_string()))],
    }
}

/// Delete every row the predicate `owned` selects.
pub fn truncate_owned(table: &TableInfo, owned: &str) -> Statement<'static> {
    Statement {
        text: format!("DELETE FROM {} WHERE {owned}", table_name(table)),
        params: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures;

    fn table() -> TableInfo {
        fixtures::table(
            "orders",
            &[("tenant_id", "integer"), ("id", "bigint"), ("note", "text")],
            &[0, 1],
        )
    }

    #[test]
    fn upsert_casts_text_columns_and_updates_non_key_columns() {
        let rows = [vec![
            Cell::Text("1".into()),
            Cell::Text("2".into()),
            Cell::Null,
        ]];
        let s = upsert(&table(), &rows);
        assert_eq!(
            s.text,
            "INSERT INTO \"app\".\"orders\" (\"tenant_id\", \"id\", \"note\") OVERRIDING SYSTEM VALUE SELECT v.c0::integer, v.c1::bigint, v.c2::text \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS v(c0, c1, c2) \
             ON CONFLICT (\"tenant_id\", \"id\") DO UPDATE SET \"note\" = EXCLUDED.\"note\""
        );
        assert_eq!(s.params[2], Param::Cells(vec![None]));
    }

    #[test]
    fn update_row_skips_unchanged_columns() {
        let s = update_row(
            &table(),
            &vec![Cell::Text("1".into()), Cell::Text("2".into())],
            &vec![
                Cell::Text("1".into()),
                Cell::Text("2".into()),
                Cell::Unchanged,
            ],
        );
        assert!(!s.text.contains("\"note\" ="), "{}", s.text);
        assert_eq!(s.params.len(), 4);
    }

    #[test]
    fn keyless_match_uses_text_form_and_is_null() {
        let s = delete_matching(
            &table(),
            &vec![Cell::Text("1".into()), Cell::Null, Cell::Text("x".into())],
            None,
        );
        assert!(s.text.contains("\"id\" IS NULL"), "{}", s.text);
        assert!(s.text.contains("\"note\"::text = $2::text"), "{}", s.text);
    }

    #[test]
    fn copy_rows_escape_what_copy_text_format_reserves() {
        let rows = [
            vec![
                Cell::Text("1".into()),
                Cell::Text("2".into()),
                Cell::Text("tab\there\nnew\rline \\ back \\. \\N ünï".into()),
            ],
            vec![Cell::Text("1".into()), Cell::Text("3".into()), Cell::Null],
        ];
        let c = copy_rows(&table(), &rows);
        assert_eq!(
            c.text,
            "COPY \"app\".\"orders\" (\"tenant_id\", \"id\", \"note\") FROM STDIN"
        );
        assert_eq!(
            std::str::from_utf8(&c.data).unwrap(),
            "1\t2\ttab\\there\\nnew\\rline \\\\ back \\\\. \\\\N ünï\n1\t3\t\\N\n"
        );
        assert_eq!(c.rows, 2);
    }

    proptest::proptest! {
        /// Whatever the value, its COPY form holds no raw tab, newline or carriage return
        /// and reads back (as the server's text format does) to the value itself.
        #[test]
        fn copy_escape_reads_back(value in "(\\PC|[\\\\\t\n\r.N])*") {
            let mut out = Vec::new();
            copy_escape(&value, &mut out);
            proptest::prop_assert!(!out.iter().any(|b| matches!(b, b'\t' | b'\n' | b'\r')));
            let mut back = Vec::new();
            let mut bytes = out.iter();
            while let Some(&b) = bytes.next() {
                if b != b'\\' {
                    back.push(b);
                    continue;
                }
                back.push(match bytes.next() {
                    Some(b't') => b'\t',
                    Some(b'n') => b'\n',
                    Some(b'r') => b'\r',
                    Some(&other) => other,
                    None => b'\\',
                });
            }
            proptest::prop_assert_eq!(String::from_utf8(back).unwrap(), value);
        }
    }
}
