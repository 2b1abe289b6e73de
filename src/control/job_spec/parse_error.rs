//! A job spec's parse errors: the field they concern and, for TOML, line and column.

use super::{JobSpecError, DOCUMENT_PATH};

/// Renders a `serde_path_to_error` path as `sinks[0].kind`; the root is "".
pub(super) fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Builds a parse error, making sure the path names the field itself: serde
/// reports a missing field at the enclosing table (`source`), so the field
/// named in the message is appended (`source.dsn`). Unknown keys already
/// carry their own name in the path.
pub(super) fn parse_error(mut path: String, message: String) -> JobSpecError {
    if let Some(field) = backticked_after(&message, "missing field `") {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field);
    }
    if path.is_empty() {
        path = DOCUMENT_PATH.to_owned();
    }
    JobSpecError::Parse { path, message }
}

fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// A TOML error's message with its position, on one line.
pub(super) fn toml_message(doc: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) if span.start <= doc.len() => {
            let (line, column) = line_column(doc, span.start);
            format!("{} (line {line}, column {column})", e.message())
        }
        _ => e.message().to_owned(),
    }
}

fn line_column(doc: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset;
    while !doc.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &doc[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
