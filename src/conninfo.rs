//! The libpq connection-string tokenizer: `key=value` pairs (values optionally
//! single-quoted, with `\` escapes) and the `postgresql://` URL scheme test.
//!
//! Shared by the redaction of secrets (`control::secret`) and by the TLS settings read out
//! of a DSN (`pg_connect::dsn`). Works on byte ranges so callers can cut pairs out of the
//! string as written.

use std::ops::Range;

/// One `key=value` pair of a libpq conninfo string, as byte ranges into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub key: Range<usize>,
    /// The value as written, quotes included.
    pub value: Range<usize>,
}

/// The part after `scheme://` when `s` looks like a PostgreSQL URL. The scheme
/// is matched case-insensitively so that redaction errs towards hiding.
pub fn url_rest(s: &str) -> Option<&str> {
    ["postgresql://", "postgres://"].iter().find_map(|scheme| {
        s.get(..scheme.len())
            .filter(|head| head.eq_ignore_ascii_case(scheme))
            .map(|_| &s[scheme.len()..])
    })
}

/// Tokenizes a libpq conninfo string. Errors describe the first problem.
pub fn parse_conninfo(s: &str) -> Result<Vec<Pair>, String> {
    let b = s.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(pairs);
        }
        let key_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = key_start..i;
        if key.is_empty() {
            return Err(format!(
                "expected a libpq `key=value` pair at byte {key_start}"
            ));
        }
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err(format!("missing `=` after `{}`", &s[key.clone()]));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        i = value_end(b, i)
            .ok_or_else(|| format!("unterminated quoted value for `{}`", &s[key.clone()]))?;
        pairs.push(Pair {
            key,
            value: value_start..i,
        });
    }
}

/// End (exclusive) of the value starting at `i`; `None` for an unterminated quote.
pub fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    if i < b.len() && b[i] == b'\'' {
        i += 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'\'' => return Some(i + 1),
                _ => i += 1,
            }
        }
        return None;
    }
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    Some(i.min(b.len()))
}

/// A value as libpq reads it: surrounding single quotes dropped, each `\` taking the
/// next byte literally.
pub fn unquote(raw: &str) -> String {
    let inner = raw
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// A value written so that [`parse_conninfo`] and libpq read it back as `value`.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_lose_their_quotes_and_escapes() {
        assert_eq!(unquote("plain"), "plain");
        assert_eq!(unquote("'a b'"), "a b");
        assert_eq!(unquote(r"'it\'s'"), "it's");
        assert_eq!(unquote(r"back\\slash"), r"back\slash");
    }

    proptest! {
        #[test]
        fn a_quoted_value_reads_back_as_itself(value in "[ -~]{0,20}") {
            let text = format!("key={} other=x", quote(&value));
            let pairs = parse_conninfo(&text).expect("tokenizes");
            prop_assert_eq!(pairs.len(), 2);
            prop_assert_eq!(unquote(&text[pairs[0].value.clone()]), value);
        }
    }
}
