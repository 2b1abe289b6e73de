//! The DDL that recreates user-defined column types on a target: enums, domains (with
//! their checks), composite types, ranges, arrays of any of these, and types that belong
//! to an extension (`CREATE EXTENSION IF NOT EXISTS`). Dependencies come first.
//!
//! Statements are idempotent (`DO … EXCEPTION WHEN duplicate_object`), so running them
//! again on every shape change is harmless. Base types written in C outside an extension
//! cannot be recreated; the target's attempt to use them fails and the table shows an error.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use crate::cdc::error::CdcError;
use crate::cdc::type_names::portable_type_name;
use crate::sql_text::{quote_ident, quote_literal};

/// OIDs below this are built into PostgreSQL (`FirstNormalObjectId`).
const FIRST_USER_OID: u32 = 16384;

/// Remembers DDL already computed per type OID.
#[derive(Default)]
pub struct TypeDdlCache {
    by_oid: HashMap<u32, Vec<String>>,
}

impl TypeDdlCache {
    /// DDL for every user-defined type among `type_oids` (deduplicated, dependencies first).
    pub async fn ddl_for(
        &mut self,
        client: &Client,
        type_oids: &[u32],
    ) -> Result<Vec<String>, CdcError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for &oid in type_oids {
            if oid < FIRST_USER_OID {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_oid.entry(oid) {
                let mut stmts = Vec::new();
                collect(client, oid, &mut HashSet::new(), &mut stmts).await?;
                slot.insert(stmts);
            }
            for s in &self.by_oid[&oid] {
                if seen.insert(s.clone()) {
                    out.push(s.clone());
                }
            }
        }
        Ok(out)
    }
}

fn idempotent(ddl: &str) -> String {
    format!("DO $helios$ BEGIN {ddl}; EXCEPTION WHEN duplicate_object THEN NULL; END $helios$")
}

/// Appends the DDL for type `oid` (after its dependencies) to `out`.
fn collect<'a>(
    client: &'a Client,
    oid: u32,
    visiting: &'a mut HashSet<u32>,
    out: &'a mut Vec<String>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CdcError>> + Send + 'a>> {
    Box::pin(async move {
        if oid < FIRST_USER_OID || !visiting.insert(oid) {
            return Ok(());
        }
        let query = CdcError::query("read user-defined type");
        let Some(t) = client
            .query_opt(
                &format!("SELECT n.nspname::text, t.typname::text, t.typtype::text, t.typelem, t.typbasetype,
                        {}, t.typrelid, t.typnotnull,
                        (SELECT e.extname::text FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                          WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' LIMIT 1),
                        t.typcategory::text
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1",
                    portable_type_name("t.typbasetype", "t.typtypmod")),
                &[&oid],
            )
            .await
            .map_err(&query)?
        else {
            return Ok(());
        };
        let (schema, name, kind): (String, String, String) = (t.get(0), t.get(1), t.get(2));
        let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        if let Some(extension) = t.get::<_, Option<String>>(8) {
            // Where the target lacks it, in the schema the source keeps it in; where it
            // has it, wherever that is. Its types go bare (`type_names`): the session
            // then puts the extension's schema on its path.
            out.push(format!(
                "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = {}) THEN \
                 CREATE SCHEMA IF NOT EXISTS {1}; CREATE EXTENSION IF NOT EXISTS {2} SCHEMA {1}; \
                 END IF; END$$; {3}",
                quote_literal(&extension),
                quote_ident(&schema),
                quote_ident(&extension),
                crate::pg_connect::EXTENSIONS_ON_PATH
            ));
            return Ok(());
        }
        let elem: u32 = t.get(3);
        if t.get::<_, String>(9) == "A" && elem != 0 {
            return collect(client, elem, visiting, out).await;
        }
        out.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&schema)
        ));
        match kind.as_str() {
            "e" => {
                let labels = client
                    .query(
                        "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
                        &[&oid],
                    )
                    .await
                    .map_err(&query)?;
                let labels: Vec<String> = labels
                    .iter()
                    .map(|r| quote_literal(&r.get::<_, String>(0)))
                    .collect();
                out.push(idempotent(&format!(
                    "CREATE TYPE {qualified} AS ENUM ({})",
                    labels.join(", ")
                )));
            }
            "d" => {
                collect(client, t.get(4), visiting, out).await?;
                let checks = client
                    .query(
                        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = $1 ORDER BY conname",
                        &[&oid],
                    )
                    .await
                    .map_err(&query)?;
                let mut ddl = format!("CREATE DOMAIN {qualified} AS {}", t.get::<_, String>(5));
                if t.get::<_, bool>(7) {
                    ddl.push_str(" NOT NULL");
                }
                for c in &checks {
                    ddl.push(' ');
                    ddl.push_str(&c.get::<_, String>(0));
                }
                out.push(idempotent(&ddl));
            }
            "c" => {
                let attrs = client
                    .query(
                        &format!(
                            "SELECT a.attname::text, a.atttypid, {}
                             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                             WHERE a.attrelid = $1 AND c.relkind = 'c' AND a.attnum > 0 AND NOT a.attisdropped
                             ORDER BY a.attnum",
                            portable_type_name("a.atttypid", "a.atttypmod")
                        ),
                        &[&t.get::<_, u32>(6)],
                    )
                    .await
                    .map_err(&query)?;
                if attrs.is_empty() {
                    // A table's row type: the table itself would have to exist; not recreated.
                    out.pop();
                    return Ok(());
                }
                let mut fields = Vec::new();
                for a in &attrs {
                    collect(client, a.get(1), visiting, out).await?;
                    fields.push(format!(
                        "{} {}",
                        quote_ident(&a.get::<_, String>(0)),
                        a.get::<_, String>(2)
                    ));
                }
                out.push(idempotent(&format!(
                    "CREATE TYPE {qualified} AS ({})",
                    fields.join(", ")
                )));
            }
            "r" => {
                let r = client
                    .query_one(
                        &format!(
                            "SELECT rngsubtype, {} FROM pg_range WHERE rngtypid = $1",
                            portable_type_name("rngsubtype", "NULL")
                        ),
                        &[&oid],
                    )
                    .await
                    .map_err(&query)?;
                collect(client, r.get(0), visiting, out).await?;
                out.push(idempotent(&format!(
                    "CREATE TYPE {qualified} AS RANGE (SUBTYPE = {})",
                    r.get::<_, String>(1)
                )));
            }
            _ => {
                // A base type outside any extension (or a multirange, made with its range).
                out.pop();
            }
        }
        Ok(())
    })
}
