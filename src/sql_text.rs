//! Building SQL text safely: identifier and literal quoting, and error descriptions that
//! never carry row values.

/// Quotes an identifier for PostgreSQL (`"a""b"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `schema.name` as two identifiers.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A glob of `*` (any run of characters) and `?` (one character) as a `LIKE` pattern:
/// every other character, `_`, `%` and `\\` too, matches itself.
pub fn like_pattern(glob: &str) -> String {
    let mut like = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => like.push('%'),
            '?' => like.push('_'),
            '_' | '%' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            c => like.push(c),
        }
    }
    like
}

/// Quotes a string literal (`'it''s'`), with standard_conforming_strings on.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A PostgreSQL error as SQLSTATE and message, without DETAIL (which can quote row values).
pub fn describe_pg_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = err.to_string();
            if let Some(src) = std::error::Error::source(err) {
                text = format!("{text}: {src}");
            }
            text
        }
    }
}

/// The SQLSTATE of a database error, if the server sent one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<&str> {
    err.as_db_error().map(|db| db.code().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_match_what_the_glob_matches() {
        assert_eq!(like_pattern("app_*"), "app\\_%");
        assert_eq!(like_pattern("t?%"), "t_\\%");
        assert_eq!(like_pattern("plain"), "plain");
    }

    #[test]
    fn quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_qualified("app", "Orders"), "\"app\".\"Orders\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
