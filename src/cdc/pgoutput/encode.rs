//! Encoding of one pgoutput message to bytes: the inverse of [`decode`](super::decode())
//! and [`decode_in_stream`](super::decode_in_stream()).
//!
//! Used by tests, fuzzing and fixtures; production code only decodes.

use super::{carries_stream_xid, ColumnValue, OldTuple, PgOutputMessage, TupleData};

/// Appends the wire encoding of `msg` to `out`; `decode` of the appended bytes yields `msg`.
///
/// This is the layout outside a stream block; see [`encode_in_stream`] for
/// messages sent between Stream Start and Stream Stop.
///
/// # Panics
///
/// Panics if `msg` cannot be represented on the wire: a string containing a
/// NUL byte, more than `i16::MAX` columns, more than `i32::MAX` truncated
/// relations, or a value longer than `i32::MAX` bytes. Every message produced
/// by `decode` is representable.
pub fn encode(msg: &PgOutputMessage, out: &mut Vec<u8>) {
    out.push(tag(msg));
    put_body(msg, out);
}

/// Appends the encoding of `msg` as sent inside a stream block (between Stream
/// Start and Stream Stop) to `out`; `decode_in_stream` of the appended bytes
/// yields `msg` with `xid: Some(xid)` for the data messages (Relation, Type,
/// Insert, Update, Delete, Truncate, Message), which carry `xid` right after
/// the tag byte. Every other message is encoded exactly as by [`encode`],
/// without `xid`, and decodes with `xid: None`.
///
/// # Panics
///
/// As [`encode`].
pub fn encode_in_stream(xid: u32, msg: &PgOutputMessage, out: &mut Vec<u8>) {
    let tag = tag(msg);
    out.push(tag);
    if carries_stream_xid(tag) {
        out.extend_from_slice(&xid.to_be_bytes());
    }
    put_body(msg, out);
}

/// The tag byte of `msg`.
fn tag(msg: &PgOutputMessage) -> u8 {
    match msg {
        PgOutputMessage::Begin(_) => b'B',
        PgOutputMessage::Commit(_) => b'C',
        PgOutputMessage::Origin(_) => b'O',
        PgOutputMessage::Relation(_) => b'R',
        PgOutputMessage::Type(_) => b'Y',
        PgOutputMessage::Insert(_) => b'I',
        PgOutputMessage::Update(_) => b'U',
        PgOutputMessage::Delete(_) => b'D',
        PgOutputMessage::Truncate(_) => b'T',
        PgOutputMessage::Message(_) => b'M',
        PgOutputMessage::StreamStart(_) => b'S',
        PgOutputMessage::StreamStop => b'E',
        PgOutputMessage::StreamCommit(_) => b'c',
        PgOutputMessage::StreamAbort(_) => b'A',
    }
}

/// Writes the body of `msg`: everything after the tag (and, in a stream block, the xid).
fn put_body(msg: &PgOutputMessage, out: &mut Vec<u8>) {
    match msg {
        PgOutputMessage::Begin(m) => {
            out.extend_from_slice(&m.final_lsn.to_be_bytes());
            out.extend_from_slice(&m.commit_time_micros.to_be_bytes());
            out.extend_from_slice(&m.xid.to_be_bytes());
        }
        PgOutputMessage::Commit(m) => {
            out.push(m.flags);
            out.extend_from_slice(&m.commit_lsn.to_be_bytes());
            out.extend_from_slice(&m.end_lsn.to_be_bytes());
            out.extend_from_slice(&m.commit_time_micros.to_be_bytes());
        }
        PgOutputMessage::Origin(m) => {
            out.extend_from_slice(&m.commit_lsn.to_be_bytes());
            put_string(out, &m.name);
        }
        PgOutputMessage::Relation(m) => {
            out.extend_from_slice(&m.oid.to_be_bytes());
            put_string(out, &m.namespace);
            put_string(out, &m.name);
            out.push(m.replica_identity.to_byte());
            put_count_i16(out, m.columns.len());
            for column in &m.columns {
                out.push(u8::from(column.is_key));
                put_string(out, &column.name);
                out.extend_from_slice(&column.type_oid.to_be_bytes());
                out.extend_from_slice(&column.type_modifier.to_be_bytes());
            }
        }
        PgOutputMessage::Type(m) => {
            out.extend_from_slice(&m.oid.to_be_bytes());
            put_string(out, &m.namespace);
            put_string(out, &m.name);
        }
        PgOutputMessage::Insert(m) => {
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            out.push(b'N');
            put_tuple(out, &m.new);
        }
        PgOutputMessage::Update(m) => {
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            if let Some(old) = &m.old {
                put_old_tuple(out, old);
            }
            out.push(b'N');
            put_tuple(out, &m.new);
        }
        PgOutputMessage::Delete(m) => {
            out.extend_from_slice(&m.relation_oid.to_be_bytes());
            put_old_tuple(out, &m.old);
        }
        PgOutputMessage::Truncate(m) => {
            put_length_i32(out, m.relation_oids.len());
            out.push(u8::from(m.cascade) | (u8::from(m.restart_identity) << 1));
            for oid in &m.relation_oids {
                out.extend_from_slice(&oid.to_be_bytes());
            }
        }
        PgOutputMessage::Message(m) => {
            out.push(u8::from(m.transactional));
            out.extend_from_slice(&m.lsn.to_be_bytes());
            put_string(out, &m.prefix);
            put_length_i32(out, m.content.len());
            out.extend_from_slice(&m.content);
        }
        PgOutputMessage::StreamStart(m) => {
            out.extend_from_slice(&m.xid.to_be_bytes());
            out.push(u8::from(m.first_segment));
        }
        PgOutputMessage::StreamStop => {}
        PgOutputMessage::StreamCommit(m) => {
            out.extend_from_slice(&m.xid.to_be_bytes());
            out.push(m.flags);
            out.extend_from_slice(&m.commit_lsn.to_be_bytes());
            out.extend_from_slice(&m.end_lsn.to_be_bytes());
            out.extend_from_slice(&m.commit_time_micros.to_be_bytes());
        }
        PgOutputMessage::StreamAbort(m) => {
            out.extend_from_slice(&m.xid.to_be_bytes());
            out.extend_from_slice(&m.subxid.to_be_bytes());
        }
    }
}

/// Writes a NUL-terminated string.
fn put_string(out: &mut Vec<u8>, s: &str) {
    assert!(
        !s.as_bytes().contains(&0),
        "pgoutput strings cannot contain NUL bytes: {s:?}"
    );
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Writes an Int16 count.
fn put_count_i16(out: &mut Vec<u8>, count: usize) {
    let count = i16::try_from(count)
        .unwrap_or_else(|_| panic!("pgoutput column count {count} exceeds i16::MAX"));
    out.extend_from_slice(&count.to_be_bytes());
}

/// Writes an Int32 count or byte length.
fn put_length_i32(out: &mut Vec<u8>, len: usize) {
    let len =
        i32::try_from(len).unwrap_or_else(|_| panic!("pgoutput length {len} exceeds i32::MAX"));
    out.extend_from_slice(&len.to_be_bytes());
}

/// Writes `'K'` or `'O'` followed by the tuple.
fn put_old_tuple(out: &mut Vec<u8>, old: &OldTuple) {
    let (marker, tuple) = match old {
        OldTuple::Key(tuple) => (b'K', tuple),
        OldTuple::Full(tuple) => (b'O', tuple),
    };
    out.push(marker);
    put_tuple(out, tuple);
}

/// Writes `TupleData`.
fn put_tuple(out: &mut Vec<u8>, tuple: &TupleData) {
    put_count_i16(out, tuple.0.len());
    for value in &tuple.0 {
        match value {
            ColumnValue::Null => out.push(b'n'),
            ColumnValue::UnchangedToast => out.push(b'u'),
            ColumnValue::Text(text) => {
                out.push(b't');
                put_length_i32(out, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            ColumnValue::Binary(bytes) => {
                out.push(b'b');
                put_length_i32(out, bytes.len());
                out.extend_from_slice(bytes);
            }
        }
    }
}
