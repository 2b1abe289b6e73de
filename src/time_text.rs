//! Times as text: PostgreSQL's output forms of `timestamptz`, `timestamp` and `date`
//! (what pgoutput carries for a valid-time column), RFC 3339 (what users type), and the
//! way we hand times back to PostgreSQL. Times are microseconds since PostgreSQL's epoch
//! (2000-01-01 00:00 UTC), as the server counts them; `infinity` maps to the extremes.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Microseconds between 1970-01-01 and 2000-01-01.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

fn from_unix_micros(unix: i64) -> Option<i64> {
    unix.checked_sub(PG_EPOCH_UNIX_MICROS)
}

/// Parses a PostgreSQL `timestamptz` / `timestamp` / `date` text form (ISO DateStyle):
/// `2026-03-01 12:00:00.5+01`, `2026-03-01 12:00:00` (taken as UTC), `2026-03-01`,
/// `infinity`, `-infinity`. `None` for anything else (BC dates included).
pub fn parse_pg_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    match text {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return from_unix_micros(t.timestamp_micros());
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
        return from_unix_micros(t.and_utc().timestamp_micros());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return from_unix_micros(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros());
    }
    None
}

/// Parses an RFC 3339 time (`2026-03-01T00:00:00Z`, `2026-03-01T01:00:00+01:00`); a
/// bare date (`2026-03-01`) means its midnight UTC.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return from_unix_micros(t.timestamp_micros());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|t| from_unix_micros(t.and_utc().timestamp_micros()))
}

fn utc(micros: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?)
        .single()
}

/// The time as a `timestamptz` literal PostgreSQL reads back exactly
/// (`2026-03-01 00:00:00.000000+00`, `infinity`).
pub fn format_timestamptz(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => match utc(micros) {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
            None => "infinity".into(),
        },
    }
}

/// The time in RFC 3339 (`2026-03-01T00:00:00.000000Z`), for API answers.
pub fn format_rfc3339(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => match utc(micros) {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            None => "infinity".into(),
        },
    }
}

/// The UTC date of the time (`2026-03-01`), for partitioning files.
pub fn utc_date(micros: i64) -> String {
    match utc(micros) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None if micros < 0 => "0000-01-01".into(),
        None => "9999-12-31".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn postgres_forms() {
        assert_eq!(parse_pg_timestamp("2000-01-01 00:00:00+00"), Some(0));
        assert_eq!(parse_pg_timestamp("2000-01-01 01:00:00+01"), Some(0));
        assert_eq!(
            parse_pg_timestamp("2000-01-01 00:00:00.5+00"),
            Some(500_000)
        );
        assert_eq!(parse_pg_timestamp("2000-01-01 05:30:00+05:30"), Some(0));
        assert_eq!(
            parse_pg_timestamp("2000-01-02 00:00:00"),
            Some(86_400_000_000)
        );
        assert_eq!(parse_pg_timestamp("2000-01-02"), Some(86_400_000_000));
        assert_eq!(parse_pg_timestamp("infinity"), Some(i64::MAX));
        assert_eq!(parse_pg_timestamp("-infinity"), Some(i64::MIN));
        assert_eq!(parse_pg_timestamp("yesterday"), None);
        assert_eq!(parse_pg_timestamp(""), None);
    }

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_rfc3339("2000-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339("2000-01-02"), Some(86_400_000_000));
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("0/16B3748"), None);
    }

    proptest! {
        #[test]
        fn formatted_times_parse_back(micros in -3_000_000_000_000_000i64..3_000_000_000_000_000) {
            prop_assert_eq!(parse_pg_timestamp(&format_timestamptz(micros)), Some(micros));
            prop_assert_eq!(parse_rfc3339(&format_rfc3339(micros)), Some(micros));
        }
    }
}
