//! Table patterns in a job spec: `[[tables]] name = "public.*"` carries every table of
//! schema `public` that has the tenant column, with the entry's settings.
//!
//! Both parts may hold `*` (any run of characters) and `?` (one character):
//! `"app_*.orders"` carries the `orders` table of every schema whose name starts with
//! `app_` (schemas `pg_*`, `information_schema` and our own `helios` are never matched by
//! a wildcard). `exclude` leaves tables out of a pattern, by name or pattern, with or
//! without a schema (itself a name or pattern). Which tables a pattern carries is decided
//! on the source at each start (`control::table_patterns`); this module only parses and
//! matches.

use regex::Regex;

use super::{is_name_part, JobSpecError, MAX_IDENTIFIER_LEN};

/// Schema of the metadata we keep on targets: never matched by a schema wildcard.
const OWN_SCHEMA: &str = "helios";

/// Whether a `tables[].name` is a pattern (has a wildcard) rather than one table's name.
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// A compiled `tables[].name` pattern with its exclusions.
#[derive(Debug, Clone)]
pub struct TablePattern {
    /// The schema part as written.
    schema: String,
    /// The schema part compiled, when it has a wildcard.
    schema_glob: Option<Regex>,
    table: Regex,
    exclude: Vec<Exclusion>,
}

/// One `exclude` entry: a table name or pattern, in any schema the pattern covers or in
/// those its own schema part (a name or pattern) matches.
#[derive(Debug, Clone)]
struct Exclusion {
    schema: Option<Regex>,
    table: Regex,
}

impl TablePattern {
    /// Parses `name` (`schema.pattern`) and `exclude`; `field` names the entry in errors
    /// (`tables[2]`).
    pub fn parse(field: &str, name: &str, exclude: &[String]) -> Result<Self, JobSpecError> {
        let Some((schema, table)) = name.split_once('.') else {
            return Err(not_a_pattern(&format!("{field}.name"), name));
        };
        let schema_ok = if is_pattern(schema) {
            is_table_pattern(schema)
        } else {
            is_name_part(schema)
        };
        if !schema_ok || !is_table_pattern(table) {
            return Err(not_a_pattern(&format!("{field}.name"), name));
        }
        let schema_glob = is_pattern(schema)
            .then(|| whole_match(&format!("{field}.name"), schema))
            .transpose()?;
        let mut pattern = TablePattern {
            schema: schema.to_string(),
            schema_glob,
            table: whole_match(&format!("{field}.name"), table)?,
            exclude: Vec::with_capacity(exclude.len()),
        };
        for (i, entry) in exclude.iter().enumerate() {
            let entry_field = format!("{field}.exclude[{i}]");
            let (other, part) = match entry.split_once('.') {
                Some((other, part)) => (Some(other), part),
                None => (None, entry.as_str()),
            };
            if other.is_some_and(|o| !is_table_pattern(o)) || !is_table_pattern(part) {
                return Err(JobSpecError::invalid(
                    entry_field,
                    format!(
                        "`{entry}` is not a table name or pattern: expected [A-Za-z0-9_*?], \
                         optionally after a schema name or pattern and a `.`"
                    ),
                ));
            }
            if let Some(other) = other.filter(|o| !is_pattern(o) && !pattern.covers_schema(o)) {
                return Err(JobSpecError::invalid(
                    entry_field,
                    format!(
                        "`{entry}` is in schema `{other}`, but the pattern covers schema{} \
                         `{schema}` only",
                        if pattern.schema_glob.is_some() {
                            "s"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            let schema = other.map(|o| whole_match(&entry_field, o)).transpose()?;
            let table = whole_match(&entry_field, part)?;
            pattern.exclude.push(Exclusion { schema, table });
        }
        Ok(pattern)
    }

    /// Whether the pattern looks in schema `schema`.
    pub fn covers_schema(&self, schema: &str) -> bool {
        match &self.schema_glob {
            None => self.schema == schema,
            Some(glob) => {
                glob.is_match(schema)
                    && schema != OWN_SCHEMA
                    && schema != "information_schema"
                    && !schema.starts_with("pg_")
            }
        }
    }

    /// Whether the pattern carries table `name` of schema `schema` (matched and not
    /// excluded).
    pub fn carries(&self, schema: &str, name: &str) -> bool {
        self.covers_schema(schema)
            && self.table.is_match(name)
            && !self.exclude.iter().any(|e| {
                e.schema.as_ref().is_none_or(|s| s.is_match(schema)) && e.table.is_match(name)
            })
    }

    /// What the one `*` of the schema part matched in `schema` (a schema it covers), for
    /// `tenant_from = "schema"`: `7` of `tenant_7` for `tenant_*`. `None` when the schema
    /// part is not one `*` between literals, or does not cover `schema`.
    pub fn schema_star<'s>(&self, schema: &'s str) -> Option<&'s str> {
        let (prefix, suffix) = self.schema.split_once('*')?;
        if suffix.contains('*') || self.schema.contains('?') || !self.covers_schema(schema) {
            return None;
        }
        schema.strip_prefix(prefix)?.strip_suffix(suffix)
    }
}

/// The table part of a pattern: identifier characters and wildcards, 1–63 of them.
fn is_table_pattern(s: &str) -> bool {
    (1..=MAX_IDENTIFIER_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'*' | b'?'))
}

/// A regex matching the whole of a name against a glob of `*` and `?`: the other
/// characters are identifier characters, matched as themselves.
fn whole_match(field: &str, glob: &str) -> Result<Regex, JobSpecError> {
    let mut source = String::with_capacity(glob.len() + 8);
    source.push('^');
    for c in glob.chars() {
        match c {
            '*' => source.push_str(".*"),
            '?' => source.push('.'),
            c => source.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    source.push('$');
    // Built from escaped literals, `.` and `.*` only, so only a size limit could refuse it.
    Regex::new(&source).map_err(|e| JobSpecError::invalid(field, format!("`{glob}`: {e}")))
}

fn not_a_pattern(field: &str, name: &str) -> JobSpecError {
    JobSpecError::invalid(
        field,
        format!(
            "`{name}` is not a table pattern: expected `schema.pattern`, the schema a name \
             [A-Za-z_][A-Za-z0-9_]{{0,62}} or a pattern, and a pattern [A-Za-z0-9_*?] with \
             `*` for any characters and `?` for one"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(name: &str, exclude: &[&str]) -> TablePattern {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        TablePattern::parse("tables[0]", name, &exclude).unwrap()
    }

    #[test]
    fn the_schema_star_is_what_the_one_star_matched() {
        let p = pattern("tenant_*.orders", &[]);
        assert_eq!(p.schema_star("tenant_7"), Some("7"));
        assert_eq!(p.schema_star("tenant_"), Some(""));
        assert_eq!(p.schema_star("other_7"), None);
        assert_eq!(
            pattern("*_eu.orders", &[]).schema_star("acme_eu"),
            Some("acme")
        );
        assert_eq!(pattern("t*x.orders", &[]).schema_star("tax"), Some("a"));
        assert_eq!(pattern("*.orders", &[]).schema_star("pg_catalog"), None);
        assert_eq!(pattern("a*b*.orders", &[]).schema_star("axbx"), None);
        assert_eq!(pattern("public.*", &[]).schema_star("public"), None);
    }

    #[test]
    fn wildcards_match_whole_names_only() {
        let p = pattern("public.order_*", &[]);
        assert!(p.carries("public", "order_items"));
        assert!(p.carries("public", "order_"));
        assert!(!p.carries("public", "orders"));
        assert!(!p.carries("public", "my_order_items"));
        assert!(!p.carries("app", "order_items"), "another schema");
        let q = pattern("app.t?", &[]);
        assert!(q.carries("app", "t1") && q.carries("app", "tx"));
        assert!(!q.carries("app", "t") && !q.carries("app", "t12"));
        // `_` is a literal, unlike in SQL's LIKE.
        let u = pattern("public.a_b*", &[]);
        assert!(u.carries("public", "a_b") && !u.carries("public", "axb"));
    }

    #[test]
    fn exclusions_take_names_or_patterns_with_or_without_the_schema() {
        let p = pattern("public.*", &["schema_migrations", "public.audit_*"]);
        assert!(p.carries("public", "orders"));
        assert!(!p.carries("public", "schema_migrations"));
        assert!(!p.carries("public", "audit_log"));
        assert!(p.carries("public", "audit"));
    }

    #[test]
    fn a_schema_pattern_looks_in_every_schema_it_matches_but_the_systems_and_ours() {
        let p = pattern("app_*.orders", &[]);
        assert!(p.carries("app_eu", "orders") && p.carries("app_", "orders"));
        assert!(!p.carries("app", "orders") && !p.carries("app_eu", "items"));
        let all = pattern("*.*", &["app_test.*", "*.schema_migrations", "audit"]);
        assert!(all.carries("public", "orders") && all.carries("app_eu", "items"));
        assert!(
            !all.carries("app_test", "orders"),
            "excluded with its schema"
        );
        assert!(!all.carries("public", "schema_migrations"));
        assert!(!all.carries("app_eu", "audit"), "excluded in every schema");
        for own in ["pg_catalog", "pg_toast", "information_schema", "helios"] {
            assert!(!all.covers_schema(own), "{own}");
        }
        // Named outright, our schema is one like any other.
        assert!(pattern("helios.*", &[]).carries("helios", "t"));
    }

    #[test]
    fn bad_patterns_name_the_field_and_the_problem() {
        let err = |name: &str, exclude: &[&str]| {
            let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
            TablePattern::parse("tables[1]", name, &exclude)
                .unwrap_err()
                .to_string()
        };
        let e = err("pu-b*.orders", &[]);
        assert!(e.contains("tables[1].name") && e.contains("schema"), "{e}");
        let e = err("app_*.orders", &["other.t"]);
        assert!(e.contains("schemas `app_*` only"), "{e}");
        assert!(TablePattern::parse("t", "app_*.orders", &["app_x.t".into()]).is_ok());
        assert!(err("*", &[]).contains("schema.pattern"));
        assert!(err("public.a-*", &[]).contains("tables[1].name"));
        let e = err("public.*", &["other.t"]);
        assert!(
            e.contains("tables[1].exclude[0]") && e.contains("`other`"),
            "{e}"
        );
        let e = err("public.*", &["a b"]);
        assert!(e.contains("tables[1].exclude[0]"), "{e}");
        assert!(is_pattern("public.*") && is_pattern("public.t?") && !is_pattern("public.t"));
    }

    /// A reference matcher over bytes, by recursion on the glob.
    fn glob_matches(glob: &[u8], name: &[u8]) -> bool {
        match (glob.first(), name.first()) {
            (None, None) => true,
            (Some(b'*'), _) => {
                glob_matches(&glob[1..], name)
                    || (!name.is_empty() && glob_matches(glob, &name[1..]))
            }
            (Some(b'?'), Some(_)) => glob_matches(&glob[1..], &name[1..]),
            (Some(g), Some(n)) if g == n => glob_matches(&glob[1..], &name[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn patterns_agree_with_a_reference_glob(
            glob in "[ab_*?]{1,8}",
            name in "[ab_]{0,10}",
        ) {
            let p = pattern(&format!("s.{glob}"), &[]);
            prop_assert_eq!(p.carries("s", &name), glob_matches(glob.as_bytes(), name.as_bytes()));
            let q = pattern(&format!("{glob}.t"), &[]);
            prop_assert_eq!(q.carries(&name, "t"), glob_matches(glob.as_bytes(), name.as_bytes()));
        }

        #[test]
        fn an_excluded_name_is_never_carried(
            glob in "[ab_*?]{1,6}",
            excluded in "[ab_*?]{1,6}",
            name in "[ab_]{1,8}",
        ) {
            let p = pattern(&format!("s.{glob}"), &[excluded.as_str()]);
            if glob_matches(excluded.as_bytes(), name.as_bytes()) {
                prop_assert!(!p.carries("s", &name));
            } else {
                prop_assert_eq!(p.carries("s", &name), glob_matches(glob.as_bytes(), name.as_bytes()));
            }
        }
    }
}
