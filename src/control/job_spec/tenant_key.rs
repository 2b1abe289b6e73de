//! Where a table's tenant id comes from: a column of its rows (a table every tenant
//! shares), or the table itself (a table holding one tenant's rows, such as
//! `tenant_7.orders` in a schema-per-tenant layout, `tenant = "7"` in the spec).
//!
//! Both have the same SQL form for a row's tenant id ([`TenantKey::sql`]): the quoted
//! column, or the id as a text literal. Every condition on tenants written with it
//! (`… IN (…)`, a worker's share by hash, a delete of one tenant's rows) then holds for a
//! one-tenant table as for a shared one, the literal making it true or false for the
//! whole table.

use crate::change::{Cell, TableInfo};
use crate::sql_text::{quote_ident, quote_literal};

/// Where the tenant id of a job table's rows comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantKey {
    /// The text of this column's value.
    Column(String),
    /// Every row of the table is this tenant's.
    Table(String),
}

/// [`TenantKey`] resolved against one table's columns: how to read a row's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantAt<'k> {
    /// The cell at this position.
    Column(usize),
    /// Every row's tenant.
    Table(&'k str),
}

impl TenantKey {
    /// The tenant column; `None` for a one-tenant table.
    pub fn column(&self) -> Option<&str> {
        match self {
            TenantKey::Column(c) => Some(c),
            TenantKey::Table(_) => None,
        }
    }

    /// Whether `name` is the tenant column (never for a one-tenant table).
    pub fn is_column(&self, name: &str) -> bool {
        self.column() == Some(name)
    }

    /// A row's tenant id as a SQL expression: the quoted column, or the id as a literal.
    pub fn sql(&self) -> String {
        match self {
            TenantKey::Column(c) => quote_ident(c),
            TenantKey::Table(id) => quote_literal(id),
        }
    }

    /// How to read the tenant of `table`'s rows; `None` when the table lacks the column.
    pub fn at(&self, table: &TableInfo) -> Option<TenantAt<'_>> {
        match self {
            TenantKey::Column(c) => table.column_index(c).map(TenantAt::Column),
            TenantKey::Table(id) => Some(TenantAt::Table(id)),
        }
    }

    /// What the spec and the logs call it: `column tenant_id`, `table tenant 7`.
    pub fn describe(&self) -> String {
        match self {
            TenantKey::Column(c) => format!("tenant column `{c}`"),
            TenantKey::Table(id) => format!("tenant `{id}` (the whole table)"),
        }
    }
}

impl<'k> TenantAt<'k> {
    /// The tenant of `row` (the cells in the table's column order): the column's text,
    /// `None` when it is NULL, unchanged TOAST or missing.
    pub fn of<'r>(self, row: &'r [Cell]) -> Option<&'r str>
    where
        'k: 'r,
    {
        match self {
            TenantAt::Column(i) => row.get(i).and_then(Cell::as_text),
            TenantAt::Table(id) => Some(id),
        }
    }

    /// The column position; `None` for a one-tenant table.
    pub fn column(self) -> Option<usize> {
        match self {
            TenantAt::Column(i) => Some(i),
            TenantAt::Table(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_key_reads_the_cell_and_a_table_key_the_id() {
        let row = vec![Cell::Text("5".into()), Cell::Null];
        assert_eq!(TenantAt::Column(0).of(&row), Some("5"));
        assert_eq!(TenantAt::Column(1).of(&row), None);
        assert_eq!(TenantAt::Column(7).of(&row), None);
        assert_eq!(TenantAt::Table("9").of(&row), Some("9"));
    }

    #[test]
    fn the_sql_form_is_the_quoted_column_or_the_literal_id() {
        assert_eq!(TenantKey::Column("Org".into()).sql(), "\"Org\"");
        assert_eq!(TenantKey::Table("it's".into()).sql(), "'it''s'");
        assert!(TenantKey::Column("org".into()).is_column("org"));
        assert!(!TenantKey::Table("org".into()).is_column("org"));
    }
}
