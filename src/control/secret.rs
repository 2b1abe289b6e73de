//! Secret-bearing values of the control plane.
//!
//! Owns [`Dsn`], a PostgreSQL connection string (libpq `key=value` form or a
//! `postgresql://` / `postgres://` URL). Its `Debug` and `Display` print any
//! password as `***` so a DSN can go into logs, error messages and `{:?}` of a
//! job spec without leaking credentials; [`Dsn::expose`] gives the raw string
//! to the code that actually connects. Serialization is transparent (the raw
//! string), because job specs must round-trip.
//!
//! Redaction and the shape check [`Dsn::check_syntax`] that job spec validation applies
//! use the libpq conninfo tokenizer of `crate::conninfo`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::conninfo::{parse_conninfo, url_rest, value_end};

/// The text printed in place of a password.
pub const REDACTED: &str = "***";

/// A PostgreSQL connection string whose `Debug`/`Display` never show the password.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Dsn(String);

impl Dsn {
    /// Wraps a raw connection string. No validation happens here; see
    /// [`Dsn::check_syntax`].
    pub fn new(raw: String) -> Self {
        Dsn(raw)
    }

    /// The raw connection string, password included. Only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the string is empty or only whitespace.
    pub fn is_blank(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The connection string with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }

    /// Checks the shape of the string: either a `postgresql://`/`postgres://`
    /// URL, or a non-empty list of libpq `key=value` pairs (keys made of
    /// `[A-Za-z0-9_]`, values optionally single-quoted with `\` escapes).
    pub fn check_syntax(&self) -> Result<(), String> {
        let s = self.0.trim();
        if s.is_empty() {
            return Err("must not be empty".to_owned());
        }
        // libpq recognises the URL schemes case-sensitively.
        if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            return Ok(());
        }
        let pairs = parse_conninfo(s)?;
        if pairs.is_empty() {
            return Err("expected libpq `key=value` pairs or a postgresql:// URL".to_owned());
        }
        Ok(())
    }
}

impl From<String> for Dsn {
    fn from(raw: String) -> Self {
        Dsn(raw)
    }
}

impl From<&str> for Dsn {
    fn from(raw: &str) -> Self {
        Dsn(raw.to_owned())
    }
}

impl fmt::Debug for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dsn").field(&self.redacted()).finish()
    }
}

impl fmt::Display for Dsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces every password in a DSN with `***`. Errs on the side of hiding
/// too much when the string is malformed.
pub fn redact(s: &str) -> String {
    match url_rest(s) {
        Some(rest) => redact_url(s, s.len() - rest.len()),
        None => redact_conninfo(s),
    }
}

/// Replaces the password of any `scheme://user:password@host…` URL (a NATS URL, say)
/// with `***`, and `password=` query parameters; text without `://` is treated as a DSN.
pub fn redact_any_url(s: &str) -> String {
    match s.find("://") {
        Some(i) => redact_url(s, i + 3),
        None => redact(s),
    }
}

fn redact_url(s: &str, rest_start: usize) -> String {
    let rest = &s[rest_start..];
    // The userinfo ends at the last `@` before the query: a raw `@` or `/`
    // inside the password then still lands in the redacted part.
    let query_at = rest.find('?').unwrap_or(rest.len());
    let mut out = String::with_capacity(s.len());
    out.push_str(&s[..rest_start]);
    match rest[..query_at].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&rest[at..query_at]);
        }
        None => out.push_str(&rest[..query_at]),
    }
    if query_at < rest.len() {
        out.push_str(&redact_query(&rest[query_at..]));
    }
    out
}

/// Whether a DSN key's value is a secret: the login password, or the client key's
/// (`sslpassword`).
fn is_secret_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword")
}

/// Redacts `password=` and `sslpassword=` parameters of a URL query (starting with `?`).
fn redact_query(query: &str) -> String {
    let (params, fragment) = match query.find('#') {
        Some(hash) => (&query[..hash], &query[hash..]),
        None => (query, ""),
    };
    let body = params[1..]
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if is_secret_key(key) => {
                format!("{key}={REDACTED}")
            }
            _ => param.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("?{body}{fragment}")
}

fn redact_conninfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    // Walk the string like the tokenizer, but keep going past errors: any
    // `password` (or `sslpassword`) key hides everything up to the end of its value (or of the
    // string when the value is malformed).
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let key = &s[key_start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if key.is_empty() || j == b.len() || b[j] != b'=' {
            // Not a pair here: skip one token and resynchronize.
            i = i.max(key_start + 1);
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            continue;
        }
        j += 1;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let end = value_end(b, j).unwrap_or(b.len());
        if is_secret_key(key) {
            out.push_str(&s[copied..j]);
            out.push_str(REDACTED);
            copied = end;
        }
        i = end;
    }
    out.push_str(&s[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_url_hides_its_password_even_with_an_at_sign_in_it() {
        assert_eq!(
            redact_any_url("nats://app:p@ss@nats.local:4222"),
            "nats://app:***@nats.local:4222"
        );
        assert_eq!(
            redact_any_url("nats://nats.local:4222"),
            "nats://nats.local:4222"
        );
    }

    fn assert_hidden(raw: &str, secret: &str) {
        let dsn = Dsn::new(raw.to_owned());
        let debug = format!("{dsn:?}");
        let display = format!("{dsn}");
        assert!(!debug.contains(secret), "Debug leaks: {debug}");
        assert!(!display.contains(secret), "Display leaks: {display}");
        assert!(display.contains(REDACTED), "Display lacks ***: {display}");
        assert_eq!(dsn.expose(), raw);
    }

    #[test]
    fn redacts_key_value_password() {
        let dsn = Dsn::new("host=h user=u password=secret dbname=app".into());
        assert_eq!(dsn.to_string(), "host=h user=u password=*** dbname=app");
        assert_eq!(
            format!("{dsn:?}"),
            r#"Dsn("host=h user=u password=*** dbname=app")"#
        );
        assert_hidden("host=h user=u password=secret dbname=app", "secret");
    }

    #[test]
    fn redacts_the_client_key_password_in_both_forms() {
        let dsn = Dsn::new("host=h sslkey=/k.pem sslpassword='key pass' password=pw".into());
        assert_eq!(
            dsn.to_string(),
            "host=h sslkey=/k.pem sslpassword=*** password=***"
        );
        let dsn = Dsn::new("postgresql://u@h/app?sslpassword=kp&sslmode=require".into());
        assert_eq!(
            dsn.to_string(),
            "postgresql://u@h/app?sslpassword=***&sslmode=require"
        );
        assert_hidden("host=h SSLPASSWORD=topsecret", "topsecret");
    }

    #[test]
    fn redacts_quoted_password() {
        let raw = "host=h password='se cret' dbname=app";
        let dsn = Dsn::new(raw.into());
        assert_eq!(dsn.to_string(), "host=h password=*** dbname=app");
        assert_hidden(raw, "se cret");
        assert_hidden(raw, "cret");
        assert_hidden(r"password='it\'s se cret' host=h", "se cret");
    }

    #[test]
    fn redacts_spaced_and_uppercase_and_escaped_forms() {
        assert_hidden("host=h password = secret", "secret");
        assert_hidden("host=h PASSWORD=secret", "secret");
        assert_hidden(r"host=h password=sec\ ret", "ret");
        assert_hidden("password=secret", "secret");
        // Malformed: unterminated quote hides the rest of the string.
        assert_hidden("host=h password='secret dbname=x", "secret");
    }

    #[test]
    fn redacts_url_password() {
        let raw = "postgresql://u:secret@h/db";
        let dsn = Dsn::new(raw.into());
        assert_eq!(dsn.to_string(), "postgresql://u:***@h/db");
        assert_hidden(raw, "secret");
        assert_hidden("postgres://u:secret@h:5432/db?sslmode=disable", "secret");
        assert_hidden("postgresql://u:se@cr/et@h/db", "se@cr/et");
        assert_hidden("postgresql://u@h/db?password=secret&sslmode=off", "secret");
        assert_hidden("POSTGRESQL://u:secret@h/db", "secret");
    }

    #[test]
    fn leaves_password_free_dsns_alone() {
        for raw in [
            "host=127.0.0.1 port=5432 user=postgres dbname=app",
            "postgresql://u@h/db",
            "postgresql://h/db?sslmode=require",
            "passwordless=1 host=h",
        ] {
            let dsn = Dsn::new(raw.into());
            assert_eq!(dsn.to_string(), raw);
        }
    }

    #[test]
    fn expose_and_serde_are_raw() {
        let raw = "host=h password=secret";
        let dsn = Dsn::new(raw.into());
        assert_eq!(dsn.expose(), raw);
        assert_eq!(
            serde_json::to_string(&dsn).unwrap(),
            r#""host=h password=secret""#
        );
        let back: Dsn = serde_json::from_str(r#""host=h password=secret""#).unwrap();
        assert_eq!(back, dsn);
    }

    proptest::proptest! {
        // Passwords start with `Zq`, which nothing else in the DSN contains.
        #[test]
        fn key_value_passwords_never_shown(
            tail in "[ -~]{4,16}",
            before in proptest::sample::select(vec!["", "host=h ", "host='a b' port=1 "]),
            after in proptest::sample::select(vec!["", " dbname=app", "  sslmode=off"]),
            spaced in proptest::bool::ANY,
        ) {
            let secret = format!("Zq{tail}");
            let quoted = secret.replace('\\', "\\\\").replace('\'', "\\'");
            let eq = if spaced { " = " } else { "=" };
            let raw = format!("{before}password{eq}'{quoted}'{after}");
            let dsn = Dsn::new(raw.clone());
            proptest::prop_assert!(!dsn.to_string().contains("Zq"), "{}", dsn);
            let debug = format!("{dsn:?}");
            proptest::prop_assert!(!debug.contains("Zq"), "{}", debug);
            proptest::prop_assert_eq!(dsn.expose(), raw.as_str());
            proptest::prop_assert!(dsn.check_syntax().is_ok());
        }

        #[test]
        fn url_passwords_never_shown(tail in "[A-Za-z0-9%@/:._~-]{1,16}", db in "[a-z]{1,8}") {
            let raw = format!("postgresql://user:Zq{tail}@localhost:5432/{db}?sslmode=off");
            let dsn = Dsn::new(raw);
            proptest::prop_assert!(!dsn.to_string().contains("Zq"), "{}", dsn);
            let debug = format!("{dsn:?}");
            proptest::prop_assert!(!debug.contains("Zq"), "{}", debug);
        }
    }

    #[test]
    fn syntax_check() {
        for ok in [
            "host=h",
            "host = h port=5432",
            "password='a b' host=h",
            "postgresql://u:p@h/db",
            "postgres://h",
            "  host=h  ",
        ] {
            assert!(Dsn::from(ok).check_syntax().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "   ",
            "localhost",
            "host=h junk",
            "password='x",
            "=x",
            "POSTGRESQL://h/db",
        ] {
            assert!(Dsn::from(bad).check_syntax().is_err(), "{bad:?}");
        }
    }
}
