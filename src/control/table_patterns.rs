//! A job's table patterns (`[[tables]] name = "public.*"`) resolved on the source: which
//! tables each carries this time, and the spec the rest of the job runs with, every
//! pattern replaced by its tables.
//!
//! Resolved at every start. A table a pattern carries for the first time is loaded the way
//! a table added to the spec is (`control::backfill`), so one created while the job runs
//! joins when [`watch_for_new_tables`] sees it and the runner starts over. A pattern
//! carries the plain and partitioned tables (not partitions) of its schema (or of every
//! schema its schema part matches, `app_*.orders`) that match, are not excluded, and have the entry's tenant column (and valid-time column, if it
//! names one): a table without them (a lookup table shared by every tenant, say) is left
//! out with the reason, as is one the job's role may not read or publish (with a warning:
//! someone should grant the rights). A table an entry names outright takes that entry's
//! settings; one that two patterns match, the first's. With `tenant_from = "schema"`, each
//! table is its schema's tenant's whole (`tenant = "<id>"` in the resolved spec), and
//! only the job's tenants' schemas are read.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cdc::catalog::{self, SchemaTable};
use crate::cdc::error::CdcError;
use crate::cdc::watch_session::WatchSession;
use crate::control::job_spec::{
    is_name_part, is_pattern, JobSpec, TablePattern, TableSpec, TenantFrom,
};

/// How often a running job with patterns looks for new tables that match them.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How soon it looks again once it has seen new tables, to tell whether more are coming
/// (a migration creating tables one after another): a new tenant's schema joins within
/// [`CHECK_EVERY`] and this, not two full checks.
pub const SETTLE_EVERY: Duration = Duration::from_secs(2);

/// A spec's patterns resolved against the source's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The spec with every pattern replaced by the tables it carries, sorted by name, at
    /// its place.
    pub spec: JobSpec,
    /// Tables a pattern matched but cannot carry.
    pub left_out: Vec<LeftOut>,
    /// Patterns (`tables[i].name`) that carry no table.
    pub empty: Vec<String>,
}

/// A table a pattern matched and left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    /// The pattern, as the spec writes it.
    pub pattern: String,
    /// `schema.table`.
    pub table: String,
    pub reason: String,
    /// Whether someone should act: the job's role lacks rights on a table the pattern
    /// would carry (rather than the table not being a tenant table).
    pub needs_rights: bool,
}

/// Replaces `spec`'s patterns by the tables of `schemas` (each schema's tables, by name)
/// they carry. Fails when no table is left at all.
pub fn expand(
    spec: &JobSpec,
    schemas: &BTreeMap<String, Vec<SchemaTable>>,
) -> Result<Resolution, CdcError> {
    let named: BTreeSet<&str> = spec
        .tables
        .iter()
        .filter(|t| !t.is_pattern())
        .map(|t| t.name.as_str())
        .collect();
    let mut carried: BTreeSet<String> = BTreeSet::new();
    let mut tables = Vec::with_capacity(spec.tables.len());
    let mut left_out = Vec::new();
    let mut empty = Vec::new();
    for (i, entry) in spec.tables.iter().enumerate() {
        if !entry.is_pattern() {
            tables.push(entry.clone());
            continue;
        }
        let pattern = TablePattern::parse(&format!("tables[{i}]"), &entry.name, &entry.exclude)
            .map_err(|e| CdcError::Definite(e.to_string()))?;
        let tenant_key = spec.tenant_key_of(entry);
        let mut found = 0;
        let covered = schemas
            .iter()
            .filter(|(schema, _)| pattern.covers_schema(schema));
        let matched = covered.flat_map(|(schema, tables)| tables.iter().map(move |t| (schema, t)));
        for (schema, table) in matched {
            if !pattern.carries(schema, &table.name) {
                continue;
            }
            let name = format!("{schema}.{}", table.name);
            // With `tenant_from = "schema"`, the schema names the tenant.
            if other_tenants_schema(spec, entry, &pattern, schema) {
                continue;
            }
            let tenant = match entry.tenant_from {
                Some(TenantFrom::Schema) => match pattern.schema_star(schema) {
                    Some(id) if !id.is_empty() => Some(id.to_string()),
                    _ => {
                        left_out.push(LeftOut {
                            pattern: entry.name.clone(),
                            table: name,
                            reason: "its schema's name holds no tenant id where the \
                                     pattern's `*` is"
                                .to_string(),
                            needs_rights: false,
                        });
                        continue;
                    }
                },
                None => None,
            };
            if !is_name_part(schema) {
                left_out.push(LeftOut {
                    pattern: entry.name.clone(),
                    table: name,
                    reason: "its schema's name is not [A-Za-z_][A-Za-z0-9_]{0,62}, which a job \
                             spec cannot name: rename the schema to carry it"
                        .to_string(),
                    needs_rights: false,
                });
                continue;
            }
            let column = tenant.is_none().then(|| tenant_key.column()).flatten();
            if let Some((reason, needs_rights)) = why_left_out(table, entry, column) {
                left_out.push(LeftOut {
                    pattern: entry.name.clone(),
                    table: name,
                    reason,
                    needs_rights,
                });
                continue;
            }
            found += 1;
            if named.contains(name.as_str()) || !carried.insert(name.clone()) {
                continue;
            }
            tables.push(TableSpec {
                name,
                exclude: Vec::new(),
                tenant,
                tenant_from: None,
                ..entry.clone()
            });
        }
        if found == 0 {
            empty.push(entry.name.clone());
        }
    }
    if tables.is_empty() {
        return Err(CdcError::Definite(format!(
            "tables: no table on the source matches {} with the tenant column{}",
            empty.join(", "),
            if left_out.is_empty() {
                String::new()
            } else {
                let why: Vec<String> = left_out
                    .iter()
                    .map(|l| format!("{} ({})", l.table, l.reason))
                    .collect();
                format!(" (matched and left out: {})", why.join("; "))
            }
        )));
    }
    let mut resolved = spec.clone();
    resolved.tables = tables;
    Ok(Resolution {
        spec: resolved,
        left_out,
        empty,
    })
}

/// Whether `schema` is the schema of a tenant `spec` does not carry, for an entry with
/// `tenant_from = "schema"`: such schemas are neither read nor listed as left out. Never
/// for other entries, nor for a schema whose `*` part is empty (left out with the reason).
fn other_tenants_schema(
    spec: &JobSpec,
    entry: &TableSpec,
    pattern: &TablePattern,
    schema: &str,
) -> bool {
    entry.tenant_from.is_some()
        && pattern
            .schema_star(schema)
            .is_some_and(|id| !id.is_empty() && !spec.includes_tenant(id))
}

/// Why pattern `entry` cannot carry `table`, which it matches, and whether that is for
/// lack of rights; `None` when it carries it.
fn why_left_out(
    table: &SchemaTable,
    entry: &TableSpec,
    tenant_column: Option<&str>,
) -> Option<(String, bool)> {
    let has = |column: &str| table.columns.iter().any(|c| c == column);
    if !is_name_part(&table.name) {
        return Some((
            "its name is not [A-Za-z_][A-Za-z0-9_]{0,62}, which a job spec cannot name: \
             rename it to carry it"
                .to_string(),
            false,
        ));
    }
    if let Some(column) = tenant_column.filter(|c| !has(c)) {
        return Some((format!("it has no tenant column `{column}`"), false));
    }
    if let Some(valid) = entry.valid_time_column.as_deref().filter(|v| !has(v)) {
        return Some((format!("it has no valid-time column `{valid}`"), false));
    }
    if !table.readable {
        return Some((
            "the job's role may not read it: GRANT SELECT on it to carry it".to_string(),
            true,
        ));
    }
    if !table.publishable {
        return Some((
            "the job's role does not own it, and only its owner may add it to a \
             publication: carry it by making the job's role a member of its owner"
                .to_string(),
            true,
        ));
    }
    None
}

/// Resolves `spec`'s patterns on the source (`spec` itself when it has none).
pub async fn resolve(
    source: &tokio_postgres::Client,
    spec: &JobSpec,
) -> Result<Resolution, CdcError> {
    let mut looked_in = BTreeSet::new();
    // Every schema of the source, read once if a pattern's schema part is a pattern.
    let mut all_schemas: Option<Vec<String>> = None;
    for entry in spec.tables.iter().filter(|t| t.is_pattern()) {
        if !is_pattern(entry.schema()) {
            looked_in.insert(entry.schema().to_string());
            continue;
        }
        let pattern = TablePattern::parse("tables[]", &entry.name, &entry.exclude)
            .map_err(|e| CdcError::Definite(e.to_string()))?;
        if all_schemas.is_none() {
            all_schemas = Some(catalog::schema_names(source).await?);
        }
        let covered = all_schemas
            .iter()
            .flatten()
            .filter(|s| pattern.covers_schema(s))
            // A schema per tenant: other tenants' schemas are not read (there may be
            // thousands).
            .filter(|s| !other_tenants_schema(spec, entry, &pattern, s));
        looked_in.extend(covered.cloned());
    }
    let looked_in: Vec<String> = looked_in.into_iter().collect();
    let schemas = if looked_in.is_empty() {
        BTreeMap::new()
    } else {
        catalog::schemas_tables(source, &looked_in).await?
    };
    expand(spec, &schemas)
}

/// Logs what the patterns carry and leave out, once per start.
pub fn report(job: &str, resolution: &Resolution) {
    for pattern in &resolution.empty {
        tracing::warn!(job, pattern, "no table on the source matches this pattern");
    }
    let mut by_reason: BTreeMap<(&str, &str, bool), Vec<&str>> = BTreeMap::new();
    for l in &resolution.left_out {
        by_reason
            .entry((l.pattern.as_str(), l.reason.as_str(), l.needs_rights))
            .or_default()
            .push(l.table.as_str());
    }
    for ((pattern, reason, needs_rights), tables) in by_reason {
        let tables = names(tables.into_iter());
        if needs_rights {
            tracing::warn!(job, pattern, tables = %tables, "matched tables left out: {reason}");
        } else {
            tracing::info!(job, pattern, tables = %tables, "matched tables left out: {reason}");
        }
    }
}

/// Waits until tables that `spec`'s patterns carry on the source are not among `carried`'s
/// tables: created (or given their tenant column) since the start. Returns what it found,
/// for the log. Reads the source every [`CHECK_EVERY`], every [`SETTLE_EVERY`] while it
/// has seen new tables, and returns once two reads in a row find the same new tables
/// ([`Settling`]): a migration creating tables one after another restarts the job once,
/// not once per table. A failed read is tried again at the next check on a new session.
pub async fn watch_for_new_tables(
    source: &WatchSession,
    spec: &JobSpec,
    carried: &JobSpec,
) -> String {
    let known: BTreeSet<&str> = carried.tables.iter().map(|t| t.name.as_str()).collect();
    let mut settling = Settling::default();
    loop {
        tokio::time::sleep(if settling.seen.is_empty() {
            CHECK_EVERY
        } else {
            SETTLE_EVERY
        })
        .await;
        let Ok(client) = source.client().await else {
            continue;
        };
        match resolve(&client, spec).await {
            Ok(now) => {
                let new: BTreeSet<String> = now
                    .spec
                    .tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .filter(|t| !known.contains(t))
                    .map(String::from)
                    .collect();
                if let Some(new) = settling.observe(new) {
                    return format!(
                        "new tables match the job's patterns: {}",
                        names(new.iter().map(String::as_str))
                    );
                }
            }
            Err(e) => {
                tracing::debug!(job = %spec.name, error = %e, "cannot read the source's tables for the job's patterns");
                source.failed(&client).await;
            }
        }
    }
}

/// New tables seen at one check, waiting for the next check to find the same.
#[derive(Debug, Default)]
struct Settling {
    seen: BTreeSet<String>,
}

impl Settling {
    /// The new tables once a check finds the same (non-empty) set as the one before.
    fn observe(&mut self, new: BTreeSet<String>) -> Option<BTreeSet<String>> {
        let settled = !new.is_empty() && new == self.seen;
        self.seen = new;
        settled.then(|| self.seen.clone())
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::job_spec::MINIMAL_SPEC;
    use proptest::prelude::*;

    fn table(name: &str, columns: &[&str]) -> SchemaTable {
        SchemaTable {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            readable: true,
            publishable: true,
        }
    }

    fn spec_with(tables: &str) -> JobSpec {
        let toml = MINIMAL_SPEC.replace("[[tables]]\nname = \"public.orders\"\n", tables);
        JobSpec::from_toml_str(&toml).unwrap()
    }

    fn source() -> BTreeMap<String, Vec<SchemaTable>> {
        BTreeMap::from([
            (
                "public".to_string(),
                vec![
                    table("audit_log", &["id", "tenant_id"]),
                    table("countries", &["code", "name"]),
                    table("orders", &["id", "tenant_id", "placed_at"]),
                    table("schema_migrations", &["version", "tenant_id"]),
                    table("Weird-Name", &["tenant_id"]),
                ],
            ),
            ("app".to_string(), vec![table("orders", &["id", "org_id"])]),
        ])
    }

    fn carried(r: &Resolution) -> Vec<(&str, bool, Option<&str>)> {
        r.spec
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.history, t.tenant_column.as_deref()))
            .collect()
    }

    #[test]
    fn a_schema_tenant_pattern_carries_the_job_tenants_schemas_each_as_its_tenant() {
        // MINIMAL_SPEC carries tenants 3 and 7.
        let spec = spec_with(
            "[[tables]]\nname = \"tenant_*.*\"\nexclude = [\"audit\"]\ntenant_from = \"schema\"\n",
        );
        let one_tenant = |cols: &[&str]| vec![table("orders", cols), table("audit", &["id"])];
        let source = BTreeMap::from([
            ("tenant_3".to_string(), one_tenant(&["id"])),
            ("tenant_5".to_string(), one_tenant(&["id"])),
            ("tenant_7".to_string(), one_tenant(&["id", "tenant_id"])),
            ("tenant_".to_string(), one_tenant(&["id"])),
            ("public".to_string(), one_tenant(&["id", "tenant_id"])),
        ]);
        let r = expand(&spec, &source).unwrap();
        let tables: Vec<(&str, Option<&str>, Option<TenantFrom>)> = r
            .spec
            .tables
            .iter()
            .map(|t| (t.name.as_str(), t.tenant.as_deref(), t.tenant_from))
            .collect();
        assert_eq!(
            tables,
            [
                ("tenant_3.orders", Some("3"), None),
                ("tenant_7.orders", Some("7"), None)
            ],
            "tenant 5 is not the job's, `tenant_` names none, `public` is not matched"
        );
        assert_eq!(
            r.spec.tenant_key_for("tenant_7", "orders"),
            Some(crate::control::job_spec::TenantKey::Table("7".into())),
            "the schema names the tenant even where a tenant column exists"
        );
        assert_eq!(r.left_out.len(), 1, "{:?}", r.left_out);
        assert_eq!(r.left_out[0].table, "tenant_.orders");
        // The resolved spec is valid as it stands: each table names its tenant.
        r.spec.validate().expect("a resolved spec validates");
    }

    #[test]
    fn a_pattern_carries_its_schemas_tables_with_the_tenant_column() {
        let spec = spec_with(
            "[[tables]]\nname = \"public.*\"\nexclude = [\"schema_migrations\"]\nhistory = true\n\
             [[tables]]\nname = \"app.orders\"\ntenant_column = \"org_id\"\n",
        );
        let r = expand(&spec, &source()).unwrap();
        assert_eq!(
            carried(&r),
            [
                ("public.audit_log", true, None),
                ("public.orders", true, None),
                ("app.orders", false, Some("org_id")),
            ]
        );
        assert!(r
            .spec
            .tables
            .iter()
            .all(|t| !t.is_pattern() && t.exclude.is_empty()));
        r.spec.validate().unwrap();
        let left: Vec<(&str, &str)> = r
            .left_out
            .iter()
            .map(|l| (l.table.as_str(), l.reason.as_str()))
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(left[0].0, "public.countries");
        assert!(left[0].1.contains("no tenant column `tenant_id`"));
        assert_eq!(left[1].0, "public.Weird-Name");
        assert!(r.empty.is_empty());
    }

    #[test]
    fn an_entry_naming_a_table_outright_wins_over_a_pattern_and_the_first_pattern_over_later_ones()
    {
        let spec = spec_with(
            "[[tables]]\nname = \"public.*\"\n\
             [[tables]]\nname = \"public.orders\"\nhistory = true\nvalid_time_column = \"placed_at\"\n\
             [[tables]]\nname = \"public.a*\"\nhistory = true\n",
        );
        let r = expand(&spec, &source()).unwrap();
        assert_eq!(
            carried(&r),
            [
                ("public.audit_log", false, None),
                ("public.schema_migrations", false, None),
                ("public.orders", true, None),
            ]
        );
        assert_eq!(r.empty, Vec::<String>::new(), "public.a* matched audit_log");
    }

    #[test]
    fn tables_the_role_may_not_read_or_publish_are_left_out_as_needing_rights() {
        let mut source = source();
        let public = source.get_mut("public").unwrap();
        public[0].readable = false; // audit_log
        public[2].publishable = false; // orders
        let r = expand(&spec_with("[[tables]]\nname = \"public.*\"\n"), &source).unwrap();
        assert_eq!(carried(&r), [("public.schema_migrations", false, None)]);
        let rights: Vec<(&str, &str)> = r
            .left_out
            .iter()
            .filter(|l| l.needs_rights)
            .map(|l| (l.table.as_str(), l.reason.as_str()))
            .collect();
        assert_eq!(rights.len(), 2, "{rights:?}");
        assert!(rights[0].0 == "public.audit_log" && rights[0].1.contains("GRANT SELECT"));
        assert!(rights[1].0 == "public.orders" && rights[1].1.contains("owner"));
        assert!(r.left_out.iter().filter(|l| !l.needs_rights).count() == 2);
    }

    #[test]
    fn a_valid_time_column_a_table_lacks_leaves_it_out() {
        let spec = spec_with(
            "[[tables]]\nname = \"public.*\"\nhistory = true\nvalid_time_column = \"placed_at\"\n",
        );
        let r = expand(&spec, &source()).unwrap();
        assert_eq!(carried(&r), [("public.orders", true, None)]);
        assert!(r
            .left_out
            .iter()
            .any(|l| l.table == "public.audit_log" && l.reason.contains("`placed_at`")));
    }

    #[test]
    fn patterns_without_tables_are_reported_and_a_job_with_none_left_is_refused() {
        let spec = spec_with(
            "[[tables]]\nname = \"public.nothing_*\"\n[[tables]]\nname = \"app.orders\"\ntenant_column = \"org_id\"\n",
        );
        let r = expand(&spec, &source()).unwrap();
        assert_eq!(r.empty, ["public.nothing_*"]);
        assert_eq!(carried(&r), [("app.orders", false, Some("org_id"))]);

        let only =
            spec_with("[[tables]]\nname = \"public.count*\"\n[[tables]]\nname = \"none.*\"\n");
        let e = expand(&only, &source()).unwrap_err().to_string();
        assert!(e.contains("public.count*, none.*"), "{e}");
        assert!(
            e.contains(
                "(matched and left out: public.countries (it has no tenant column `tenant_id`))"
            ),
            "{e}"
        );
    }

    #[test]
    fn new_tables_settle_when_two_checks_in_a_row_find_the_same() {
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        let mut s = Settling::default();
        assert_eq!(s.observe(set(&[])), None);
        assert_eq!(s.observe(set(&[])), None, "nothing new is never settled");
        assert_eq!(s.observe(set(&["s.a"])), None, "first seen");
        assert_eq!(s.observe(set(&["s.a", "s.b"])), None, "still growing");
        assert_eq!(s.observe(set(&["s.a", "s.b"])), Some(set(&["s.a", "s.b"])));
        let mut gone = Settling::default();
        assert_eq!(gone.observe(set(&["s.a"])), None);
        assert_eq!(
            gone.observe(set(&[])),
            None,
            "dropped again before it settled"
        );
        assert_eq!(gone.observe(set(&["s.a"])), None);
    }

    proptest! {
        /// Whatever the source holds, the resolved spec names tables only, each once, each
        /// with the tenant column, and carries every matching table that has it, in the
        /// schemas the pattern's schema part matches, schema by schema.
        #[test]
        fn resolution_carries_exactly_the_matching_tables_with_the_tenant_column(
            names in proptest::collection::btree_set("[ab]{1,3}", 0..8),
            with_column in proptest::collection::vec(any::<bool>(), 8),
            glob in "[ab*?]{0,2}[*?][ab]?",
            schema in prop_oneof![Just("s"), Just("s*"), Just("*"), Just("?"), Just("s?")],
        ) {
            let tables: Vec<SchemaTable> = names
                .iter()
                .zip(&with_column)
                .map(|(n, has)| table(n, if *has { &["tenant_id"] } else { &["id"] }))
                .collect();
            let source: BTreeMap<String, Vec<SchemaTable>> = ["s", "sx", "t", "pg_x"]
                .iter()
                .map(|s| (s.to_string(), tables.clone()))
                .collect();
            let name = format!("{schema}.{glob}");
            let spec = spec_with(&format!("[[tables]]\nname = \"{name}\"\n"));
            let pattern = TablePattern::parse("t", &name, &[]).unwrap();
            let matching: Vec<(&String, &SchemaTable)> = source
                .iter()
                .flat_map(|(s, ts)| ts.iter().map(move |t| (s, t)))
                .filter(|(s, t)| pattern.carries(s, &t.name))
                .collect();
            let expected: Vec<String> = matching
                .iter()
                .filter(|(_, t)| t.columns[0] == "tenant_id")
                .map(|(s, t)| format!("{s}.{}", t.name))
                .collect();
            prop_assert!(expected.iter().all(|t| !t.starts_with("pg_")));
            match expand(&spec, &source) {
                Ok(r) => {
                    let got: Vec<String> = r.spec.tables.iter().map(|t| t.name.clone()).collect();
                    prop_assert_eq!(&got, &expected);
                    prop_assert!(r.spec.validate().is_ok());
                    prop_assert_eq!(r.left_out.len() + got.len(), matching.len());
                }
                Err(_) => prop_assert!(expected.is_empty()),
            }
        }
    }
}
