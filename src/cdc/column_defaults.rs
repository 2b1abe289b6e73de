//! Column defaults and the sequences behind them, read from the source's catalog: pgoutput
//! sends rows, not how the source fills a column left out of an `INSERT`. A table the job
//! creates on a target gets them (`statements`), so it takes writes of its own once the
//! tenant is cut over to it; and the job keeps those sequences' values on the targets at
//! least as far as the source's (`control::sequence_sync`), so ids drawn on a target after
//! the cutover do not collide with replicated ones.

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::change::TableInfo;
use crate::sql_text::{quote_ident, quote_qualified};

/// A column's default on the source (not a generated column's expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefault {
    pub column: String,
    /// The default's expression as the source prints it (`nextval('orders_id_seq'::regclass)`,
    /// `now()`); `None` for an identity column, whose values come from its sequence.
    pub expression: Option<String>,
}

/// A sequence a table's columns draw from: one a default calls `nextval` on, or an
/// identity column's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSequence {
    pub schema: String,
    pub name: String,
    /// `smallint`, `integer` or `bigint`.
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cycle: bool,
    /// The column of the table that owns it (`serial`, `OWNED BY`, identity).
    pub owned_by: Option<String>,
    /// Whether it is that column's identity sequence.
    pub identity: bool,
}

impl SourceSequence {
    /// `schema.name`, quoted.
    pub fn qualified(&self) -> String {
        quote_qualified(&self.schema, &self.name)
    }

    fn options(&self) -> String {
        format!(
            "INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} {}",
            self.increment,
            self.min,
            self.max,
            self.start,
            if self.cycle { "CYCLE" } else { "NO CYCLE" }
        )
    }
}

/// `table`'s column defaults on the source, identity columns included, in column order.
pub async fn column_defaults(
    client: &Client,
    table: &TableInfo,
) -> Result<Vec<ColumnDefault>, CdcError> {
    let rows = client
        .query(
            "SELECT a.attname::text,
                    CASE WHEN a.attidentity = '' THEN pg_get_expr(d.adbin, d.adrelid) END
             FROM pg_attribute a
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = '' AND (d.adbin IS NOT NULL OR a.attidentity <> '')
             ORDER BY a.attnum",
            &[&table.oid],
        )
        .await
        .map_err(CdcError::query("read a table's column defaults"))?;
    Ok(rows
        .iter()
        .map(|r| ColumnDefault {
            column: r.get(0),
            expression: r.get(1),
        })
        .collect())
}

/// The sequences the columns of table `table_oid` draw from: those its defaults call and
/// those its columns own (`serial`, identity), each once, by name.
pub async fn sequences(client: &Client, table_oid: u32) -> Result<Vec<SourceSequence>, CdcError> {
    let rows = client
        .query(
            "WITH used AS (
                 SELECT dep.refobjid AS seq FROM pg_attrdef ad
                 JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = ad.oid
                      AND dep.refclassid = 'pg_class'::regclass
                 WHERE ad.adrelid = $1
                 UNION
                 SELECT dep.objid FROM pg_depend dep
                 WHERE dep.classid = 'pg_class'::regclass AND dep.refclassid = 'pg_class'::regclass
                   AND dep.refobjid = $1 AND dep.deptype IN ('a', 'i'))
             SELECT n.nspname::text, c.relname::text, format_type(s.seqtypid, NULL),
                    s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle,
                    (SELECT a.attname::text FROM pg_depend o
                     JOIN pg_attribute a ON a.attrelid = o.refobjid AND a.attnum = o.refobjsubid
                     WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid
                       AND o.refobjid = $1 AND o.deptype IN ('a', 'i') LIMIT 1),
                    EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass
                            AND o.objid = c.oid AND o.refobjid = $1 AND o.deptype = 'i')
             FROM used JOIN pg_class c ON c.oid = used.seq AND c.relkind = 'S'
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_sequence s ON s.seqrelid = c.oid
             ORDER BY 1, 2",
            &[&table_oid],
        )
        .await
        .map_err(CdcError::query("read the sequences of a table's columns"))?;
    Ok(rows
        .iter()
        .map(|r| SourceSequence {
            schema: r.get(0),
            name: r.get(1),
            data_type: r.get(2),
            start: r.get(3),
            increment: r.get(4),
            min: r.get(5),
            max: r.get(6),
            cycle: r.get(7),
            owned_by: r.get(8),
            identity: r.get(9),
        })
        .collect())
}

/// The statements that give `table` (as the job created it on a target) the source's
/// column defaults: the sequences they call, created if missing; the defaults; the
/// sequences' owning columns; and identity columns as `GENERATED BY DEFAULT` (the apply
/// writes the source's values into them, which `ALWAYS` would refuse an `INSERT`), with
/// the source's sequence name and options. Run each on its own: one the target cannot
/// take (a function only the source has) is left out.
pub fn statements(
    table: &TableInfo,
    defaults: &[ColumnDefault],
    sequences: &[SourceSequence],
) -> Vec<String> {
    let name = quote_qualified(&table.schema, &table.name);
    let mut out = Vec::new();
    for s in sequences.iter().filter(|s| !s.identity) {
        if s.schema != table.schema {
            out.push(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(&s.schema)
            ));
        }
        out.push(format!(
            "CREATE SEQUENCE IF NOT EXISTS {} AS {} {}",
            s.qualified(),
            s.data_type,
            s.options()
        ));
    }
    for d in defaults {
        let column = quote_ident(&d.column);
        match &d.expression {
            Some(expression) => out.push(format!(
                "ALTER TABLE {name} ALTER COLUMN {column} SET DEFAULT {expression}"
            )),
            None => {
                let Some(s) = sequences
                    .iter()
                    .find(|s| s.identity && s.owned_by.as_deref() == Some(d.column.as_str()))
                else {
                    continue;
                };
                out.push(format!(
                    "ALTER TABLE {name} ALTER COLUMN {column} SET NOT NULL, ALTER COLUMN {column} \
                     ADD GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME {} {})",
                    s.qualified(),
                    s.options()
                ));
            }
        }
    }
    for s in sequences.iter().filter(|s| !s.identity) {
        if let Some(column) = &s.owned_by {
            out.push(format!(
                "ALTER SEQUENCE {} OWNED BY {name}.{}",
                s.qualified(),
                quote_ident(column)
            ));
        }
    }
    out
}

/// [`statements`] for `table` as the source has it now.
pub async fn read_statements(client: &Client, table: &TableInfo) -> Result<Vec<String>, CdcError> {
    let defaults = column_defaults(client, table).await?;
    if defaults.is_empty() {
        return Ok(Vec::new());
    }
    Ok(statements(
        table,
        &defaults,
        &sequences(client, table.oid).await?,
    ))
}

/// What the source shows of a sequence's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastValue {
    /// The last value it drew.
    Drawn(i64),
    /// It never drew one.
    NeverDrawn,
    /// The job's role may not read it.
    NotReadable,
}

/// The last value the source drew from sequence `schema.name`.
pub async fn last_value(client: &Client, sequence: &str) -> Result<LastValue, CdcError> {
    let row = client
        .query_one(
            "SELECT has_sequence_privilege($1::text::regclass, 'SELECT'),
                    CASE WHEN has_sequence_privilege($1::text::regclass, 'SELECT')
                         THEN pg_sequence_last_value($1::text::regclass) END",
            &[&sequence],
        )
        .await
        .map_err(CdcError::query("read a sequence's last value"))?;
    Ok(
        match (row.get::<_, bool>(0), row.get::<_, Option<i64>>(1)) {
            (false, _) => LastValue::NotReadable,
            (true, Some(value)) => LastValue::Drawn(value),
            (true, None) => LastValue::NeverDrawn,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::fixtures;

    fn sequence(name: &str, owned_by: Option<&str>, identity: bool) -> SourceSequence {
        SourceSequence {
            schema: "app".into(),
            name: name.into(),
            data_type: "bigint".into(),
            start: 1,
            increment: 1,
            min: 1,
            max: i64::MAX,
            cycle: false,
            owned_by: owned_by.map(String::from),
            identity,
        }
    }

    #[test]
    fn serial_shared_and_identity_columns_get_their_sequences_and_defaults() {
        let table = fixtures::table(
            "t",
            &[("id", "bigint"), ("ticket", "integer"), ("note", "text")],
            &[0],
        );
        let defaults = vec![
            ColumnDefault {
                column: "id".into(),
                expression: Some("nextval('app.t_id_seq'::regclass)".into()),
            },
            ColumnDefault {
                column: "ticket".into(),
                expression: None,
            },
            ColumnDefault {
                column: "note".into(),
                expression: Some("'none'::text".into()),
            },
        ];
        let mut shared = sequence("shared", None, false);
        shared.schema = "other".into();
        let sequences = vec![
            sequence("t_id_seq", Some("id"), false),
            sequence("t_ticket_seq", Some("ticket"), true),
            shared,
        ];
        let s = statements(&table, &defaults, &sequences);
        assert_eq!(
            s,
            [
                "CREATE SEQUENCE IF NOT EXISTS \"app\".\"t_id_seq\" AS bigint INCREMENT BY 1 \
                 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 NO CYCLE",
                "CREATE SCHEMA IF NOT EXISTS \"other\"",
                "CREATE SEQUENCE IF NOT EXISTS \"other\".\"shared\" AS bigint INCREMENT BY 1 \
                 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 NO CYCLE",
                "ALTER TABLE \"app\".\"t\" ALTER COLUMN \"id\" SET DEFAULT nextval('app.t_id_seq'::regclass)",
                "ALTER TABLE \"app\".\"t\" ALTER COLUMN \"ticket\" SET NOT NULL, ALTER COLUMN \
                 \"ticket\" ADD GENERATED BY DEFAULT AS IDENTITY (SEQUENCE NAME \"app\".\"t_ticket_seq\" \
                 INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 NO CYCLE)",
                "ALTER TABLE \"app\".\"t\" ALTER COLUMN \"note\" SET DEFAULT 'none'::text",
                "ALTER SEQUENCE \"app\".\"t_id_seq\" OWNED BY \"app\".\"t\".\"id\"",
            ]
        );
    }
}
