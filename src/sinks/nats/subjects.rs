//! Names on the NATS side: the stream of a job, the subject of a (tenant, table), the
//! deterministic message id of a frame, and the headers that carry a frame's LSN range.
//!
//! Subjects are `<prefix>.<job>.<tenant>.<schema>.<table>`. Each token is escaped so that
//! any job, tenant or table name makes exactly one valid token: bytes outside
//! `[A-Za-z0-9_-]` become `~XX` (hex), so `.`, `*`, `>` and spaces never split or widen a
//! subject, and different names never share a subject.

use crate::change::{format_lsn, parse_lsn, Lsn};

/// Header: commit LSN of the frame's first transaction (`X/XXXXXXXX`).
pub const FIRST_LSN_HEADER: &str = "Helios-First-Lsn";
/// Header: commit LSN of the frame's last transaction.
pub const LAST_LSN_HEADER: &str = "Helios-Last-Lsn";
/// Header: rows in the frame.
pub const ROWS_HEADER: &str = "Helios-Rows";
/// Header: the tenant id, unescaped.
pub const TENANT_HEADER: &str = "Helios-Tenant";
/// Header: the table, `schema.name`, unescaped.
pub const TABLE_HEADER: &str = "Helios-Table";
/// Header: rows of the frame's last transaction in this and earlier messages, present
/// only when that transaction goes on in the subject's next message.
pub const PARTIAL_ROWS_HEADER: &str = "Helios-Partial-Rows";

/// Escapes one subject token (see the module doc). The empty name is `~`.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    out
}

/// Reverses [`token`]; `None` for text `token` never produces.
pub fn untoken(token: &str) -> Option<String> {
    if token == "~" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of a (tenant, table) stream of job `job`.
pub fn subject(prefix: &str, job: &str, tenant: &str, schema: &str, table: &str) -> String {
    format!(
        "{prefix}.{}.{}.{}.{}",
        token(job),
        token(tenant),
        token(schema),
        token(table)
    )
}

/// The subjects filter of a job's stream: every subject under the job.
pub fn job_filter(prefix: &str, job: &str) -> String {
    format!("{prefix}.{}.>", token(job))
}

/// The default stream name of a job: `HELIOS_<job>` with characters JetStream does not
/// allow in stream names replaced by `_`.
pub fn default_stream_name(job: &str) -> String {
    let clean: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("HELIOS_{clean}")
}

/// The deterministic message id of a frame: the same frame after a crash gets the same
/// id, so JetStream's duplicate window drops the replay.
pub fn message_id(job: &str, tenant: &str, table: &str, first: Lsn, last: Lsn) -> String {
    format!(
        "{}/{}/{}/{}-{}",
        token(job),
        token(tenant),
        token(table),
        format_lsn(first),
        format_lsn(last)
    )
}

/// Parses an LSN header value.
pub fn lsn_header(value: &str) -> Option<Lsn> {
    parse_lsn(value)
}
