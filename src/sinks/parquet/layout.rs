//! Where cold-tier files live:
//! `<root>/tenant=<t>/table=<table>/date=<yyyy-mm-dd>/part-<lsn_lo>-<lsn_hi>.parquet`.
//!
//! `tenant` and `table` values are Hive-style escaped ([`encode_path_value`]): bytes in
//! `[A-Za-z0-9._-]` are kept, every other byte becomes `%XX` (uppercase hex), and a value
//! that is `.` or `..` is escaped entirely (`%2E%2E`), the empty value is written `%`.
//! So a path component built from user data never contains `/`, is never `.` or `..`,
//! and never leaves its directory. [`decode_path_value`] is the exact inverse.
//!
//! The date is the UTC date of the rows' `system_from`; LSNs are 16 uppercase hex
//! digits. Inside a table directory, `_manifest.json` lists the published files and
//! `_tmp/` holds files not yet published (never visible under a `date=` directory).

use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate};

use super::schema::pg_to_arrow_micros;
use crate::change::Lsn;

/// The manifest's file name inside a table directory.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// Name the manifest is written under before it is renamed into place.
pub const MANIFEST_TMP_FILE: &str = "_manifest.json.tmp";
/// Directory (inside a table directory) of files written but not yet published.
pub const TEMP_DIR: &str = "_tmp";

/// Escapes a `tenant` or `table` value for a path component (see the module doc).
pub fn encode_path_value(value: &str) -> String {
    if value.is_empty() {
        return "%".to_string();
    }
    let escape_all = value == "." || value == "..";
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if !escape_all && (byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0F));
        }
    }
    out
}

/// The inverse of [`encode_path_value`]. `None` for anything `encode_path_value` would
/// not produce (stray characters, lowercase or malformed escapes, escaped bytes that
/// should have been kept, invalid UTF-8).
pub fn decode_path_value(encoded: &str) -> Option<String> {
    if encoded == "%" {
        return Some(String::new());
    }
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hi = unhex(*bytes.get(i + 1)?)?;
            let lo = unhex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(byte);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    // Only the canonical encoding decodes: this makes the mapping a bijection.
    (encode_path_value(&decoded) == encoded).then_some(decoded)
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0F)])
}

fn unhex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The directory component for a tenant: `tenant=<escaped>`.
pub fn tenant_component(tenant: &str) -> String {
    format!("tenant={}", encode_path_value(tenant))
}

/// The directory component for a table: `table=<escaped>`.
pub fn table_component(table: &str) -> String {
    format!("table={}", encode_path_value(table))
}

/// The directory of one (tenant, table): `<root>/tenant=<t>/table=<table>`.
pub fn table_dir(root: &Path, tenant: &str, table: &str) -> PathBuf {
    root.join(tenant_component(tenant))
        .join(table_component(table))
}

/// The UTC date of a PostgreSQL timestamp (µs since 2000-01-01); `None` outside the
/// range chrono can represent.
pub fn utc_date_of(pg_micros: i64) -> Option<NaiveDate> {
    let unix = pg_to_arrow_micros(pg_micros)?;
    Some(DateTime::from_timestamp_micros(unix)?.date_naive())
}

/// The date directory component: `date=yyyy-mm-dd` (years beyond 9999 get a `+`,
/// years before 1 a `-`).
pub fn date_component(date: NaiveDate) -> String {
    format!("date={}", date.format("%Y-%m-%d"))
}

/// A data file's name: `part-<lsn_lo>-<lsn_hi>.parquet`, LSNs as 16 uppercase hex digits.
pub fn file_name(lsn_lo: Lsn, lsn_hi: Lsn) -> String {
    format!("part-{lsn_lo:016X}-{lsn_hi:016X}.parquet")
}

/// A data file's path relative to its table directory, as the manifest lists it:
/// `date=yyyy-mm-dd/part-<lsn_lo>-<lsn_hi>.parquet`.
pub fn relative_path(date: NaiveDate, lsn_lo: Lsn, lsn_hi: Lsn) -> String {
    format!("{}/{}", date_component(date), file_name(lsn_lo, lsn_hi))
}

/// The path of piece `piece` of a range written in several pieces (one large
/// transaction): `date=yyyy-mm-dd/part-<lsn_lo>-<lsn_hi>-<piece>.parquet`, the piece in at
/// least 4 decimal digits, so a range's pieces sort in order.
pub fn relative_piece_path(date: NaiveDate, lsn_lo: Lsn, lsn_hi: Lsn, piece: u32) -> String {
    format!(
        "{}/part-{lsn_lo:016X}-{lsn_hi:016X}-{piece:04}.parquet",
        date_component(date)
    )
}

/// Parses a manifest-relative path `date=<d>/part-<lo>-<hi>.parquet` into
/// `(date directory component, lsn_lo, lsn_hi)`. `None` for anything else, in particular
/// for any path that could leave the table directory.
pub fn parse_relative_path(relative: &str) -> Option<(&str, Lsn, Lsn)> {
    let (dir, file) = relative.split_once('/')?;
    let date = dir.strip_prefix("date=")?;
    if date.is_empty()
        || !date
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        return None;
    }
    let (lo, hi) = parse_file_name(file)?;
    Some((dir, lo, hi))
}

/// Parses `part-<lo>-<hi>.parquet` (16 uppercase hex digits each), or a piece's
/// `part-<lo>-<hi>-<piece>.parquet` (the piece in 4 to 10 decimal digits).
pub fn parse_file_name(file: &str) -> Option<(Lsn, Lsn)> {
    let inner = file.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (lo, rest) = inner.split_once('-')?;
    let hi = match rest.split_once('-') {
        None => rest,
        Some((hi, piece)) => {
            let digits =
                (4..=10).contains(&piece.len()) && piece.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                return None;
            }
            hi
        }
    };
    Some((parse_hex16(lo)?, parse_hex16(hi)?))
}

fn parse_hex16(text: &str) -> Option<Lsn> {
    if text.len() != 16 || !text.bytes().all(|b| unhex(b).is_some()) {
        return None;
    }
    Lsn::from_str_radix(text, 16).ok()
}

/// Where a file bound for `relative` (a manifest path) is staged before it is
/// published: `<table_dir>/_tmp/<date-dir>_<file>`, flat, so never under a `date=`
/// directory.
pub fn temp_path(table_dir: &Path, relative: &str) -> PathBuf {
    table_dir.join(TEMP_DIR).join(relative.replace('/', "_"))
}
