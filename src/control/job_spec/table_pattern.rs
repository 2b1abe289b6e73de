//! Table patterns in a job spec: `[[tables]] name = "public.*"` carries every table of
//! schema `public` that has the tenant column, with the entry's settings.
//!
//! The schema part is a literal name; the table part may hold `*` (any run of characters)
//! and `?` (one character). `exclude` leaves tables out of a pattern, by name or pattern,
//! with or without the pattern's schema. Which tables a pattern carries is decided on the
//! source at each start (`control::table_patterns`); this module only parses and matches.

use regex::Regex;

use super::{is_name_part, JobSpecError, MAX_IDENTIFIER_LEN};

/// Whether a `tables[].name` is a pattern (has a wildcard) rather than one table's name.
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// A compiled `tables[].name` pattern with its exclusions.
#[derive(Debug, Clone)]
pub struct TablePattern {
    schema: String,
    table: Regex,
    exclude: Vec<Regex>,
}

impl TablePattern {
    /// Parses `name` (`schema.pattern`) and `exclude`; `field` names the entry in errors
    /// (`tables[2]`).
    pub fn parse(field: &str, name: &str, exclude: &[String]) -> Result<Self, JobSpecError> {
        let Some((schema, table)) = name.split_once('.') else {
            return Err(not_a_pattern(&format!("{field}.name"), name));
        };
        if !is_name_part(schema) || !is_table_pattern(table) {
            return Err(not_a_pattern(&format!("{field}.name"), name));
        }
        let mut excluded = Vec::with_capacity(exclude.len());
        for (i, entry) in exclude.iter().enumerate() {
            let entry_field = format!("{field}.exclude[{i}]");
            let part = match entry.split_once('.') {
                Some((other, _)) if other != schema => {
                    return Err(JobSpecError::invalid(
                        entry_field,
                        format!(
                            "`{entry}` is in schema `{other}`, but the pattern covers schema \
                             `{schema}` only"
                        ),
                    ))
                }
                Some((_, part)) => part,
                None => entry.as_str(),
            };
            if !is_table_pattern(part) {
                return Err(JobSpecError::invalid(
                    entry_field,
                    format!(
                        "`{entry}` is not a table name or pattern: expected [A-Za-z0-9_*?], \
                         optionally after `{schema}.`"
                    ),
                ));
            }
            excluded.push(whole_match(&entry_field, part)?);
        }
        Ok(TablePattern {
            schema: schema.to_string(),
            table: whole_match(&format!("{field}.name"), table)?,
            exclude: excluded,
        })
    }

    /// The schema the pattern looks in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether the pattern carries table `name` of its schema (matched and not excluded).
    pub fn carries(&self, name: &str) -> bool {
        self.table.is_match(name) && !self.exclude.iter().any(|e| e.is_match(name))
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
             [A-Za-z_][A-Za-z0-9_]{{0,62}} and the pattern [A-Za-z0-9_*?] with `*` for any \
             characters and `?` for one"
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
    fn wildcards_match_whole_names_only() {
        let p = pattern("public.order_*", &[]);
        assert!(p.carries("order_items"));
        assert!(p.carries("order_"));
        assert!(!p.carries("orders"));
        assert!(!p.carries("my_order_items"));
        let q = pattern("app.t?", &[]);
        assert!(q.carries("t1") && q.carries("tx"));
        assert!(!q.carries("t") && !q.carries("t12"));
        assert_eq!(q.schema(), "app");
        // `_` is a literal, unlike in SQL's LIKE.
        let u = pattern("public.a_b*", &[]);
        assert!(u.carries("a_b") && !u.carries("axb"));
    }

    #[test]
    fn exclusions_take_names_or_patterns_with_or_without_the_schema() {
        let p = pattern("public.*", &["schema_migrations", "public.audit_*"]);
        assert!(p.carries("orders"));
        assert!(!p.carries("schema_migrations"));
        assert!(!p.carries("audit_log"));
        assert!(p.carries("audit"));
    }

    #[test]
    fn bad_patterns_name_the_field_and_the_problem() {
        let err = |name: &str, exclude: &[&str]| {
            let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
            TablePattern::parse("tables[1]", name, &exclude)
                .unwrap_err()
                .to_string()
        };
        let e = err("pub*.orders", &[]);
        assert!(e.contains("tables[1].name") && e.contains("schema"), "{e}");
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
            prop_assert_eq!(p.carries(&name), glob_matches(glob.as_bytes(), name.as_bytes()));
        }

        #[test]
        fn an_excluded_name_is_never_carried(
            glob in "[ab_*?]{1,6}",
            excluded in "[ab_*?]{1,6}",
            name in "[ab_]{1,8}",
        ) {
            let p = pattern(&format!("s.{glob}"), &[excluded.as_str()]);
            if glob_matches(excluded.as_bytes(), name.as_bytes()) {
                prop_assert!(!p.carries(&name));
            } else {
                prop_assert_eq!(p.carries(&name), glob_matches(glob.as_bytes(), name.as_bytes()));
            }
        }
    }
}
