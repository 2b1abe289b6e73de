//! Decoder (and test encoder) for the PostgreSQL `pgoutput` logical replication
//! message format, protocol versions 1 and 2 (streaming of in-progress
//! transactions), text format.
//!
//! # What this module owns
//!
//! * [`decode()`]: turns the payload of one `XLogData` (`'w'`) copy-data frame,
//!   which is exactly one pgoutput message, into a [`PgOutputMessage`].
//! * [`decode_in_stream()`]: the same for a message received between Stream
//!   Start and Stream Stop, where data messages carry a transaction id; it
//!   returns a [`Streamed`]. [`streamed_xid()`] reads only such a message's
//!   xid, for a caller that keeps the raw message to decode later.
//! * [`encode()`] and [`encode_in_stream()`]: the exact inverses, used by
//!   tests, fuzzing and fixtures.
//! * The typed model of every protocol-v1 and v2 message and [`DecodeError`],
//!   which names the message kind and the field where decoding went wrong.
//!
//! The reader starts replication with `proto_version '1'`, or with
//! `proto_version '2', streaming 'on'` when the server supports it
//! (PostgreSQL 14+). With streaming on, the server may send a large
//! transaction before it commits, in blocks that each begin with Stream Start
//! (`'S'`) and end with Stream Stop (`'E'`); the transaction ends with Stream
//! Commit (`'c'`), or Stream Abort (`'A'`) for it or one of its
//! subtransactions. Inside a block the data messages (Relation, Type, Insert,
//! Update, Delete, Truncate, Message) carry the Int32 xid of the
//! (sub)transaction that made the change right after the tag byte; Origin and
//! the stream control messages carry none. Outside a block every message has
//! its protocol-v1 layout. The bytes do not say which case applies, so the
//! caller, which has seen the Stream Start and Stream Stop messages, chooses
//! [`decode()`] or [`decode_in_stream()`].
//!
//! Two-phase messages (begin-prepare, prepare, commit-prepared,
//! rollback-prepared, stream-prepare) need protocol version 3 with
//! `two_phase`, which we never request; they are rejected with
//! [`DecodeError::UnsupportedTag`] rather than misparsed. So is anything
//! protocol version 4 adds: a v4 Stream Abort (with abort LSN and time) fails
//! with [`DecodeError::TrailingBytes`].
//!
//! Wire format (PostgreSQL 15 docs, "Logical Replication Message Formats"):
//! integers are big-endian, strings are NUL-terminated and must be UTF-8
//! (the database encoding must be `UTF8`). Column values arrive as `'t'`
//! (text), `'b'` (binary, only with the `binary` option), `'n'` (NULL) or
//! `'u'` (unchanged TOASTed value that was not sent). Timestamps are
//! microseconds since 2000-01-01 00:00:00 UTC (the PostgreSQL epoch) and are
//! kept as sent.
//!
//! Flag bits this module does not model (column flags other than bit 0,
//! Truncate option bits other than 1 and 2, Message flag bits other than 0)
//! are ignored on decode, as PostgreSQL's own reader does; Stream Start's
//! first-segment byte means "first" only when it is exactly 1, as in
//! PostgreSQL's reader. The Commit and Stream Commit flags bytes are kept
//! verbatim.
//!
//! # What this module never does
//!
//! * No I/O: it does not talk to the server, parse the replication copy-data
//!   framing (`'w'` header with LSNs, `'k'` keepalives) or send feedback.
//! * No state: it keeps no relation or type cache and does not track whether
//!   a stream block is open; resolving a data message's `relation_oid` to a
//!   [`Relation`], choosing between [`decode()`] and [`decode_in_stream()`],
//!   and buffering, applying or discarding streamed changes on Stream Commit
//!   or Stream Abort are the caller's job.
//! * No value conversion: text column values stay strings, binary values stay
//!   bytes.
//! * No panics on input: every length is checked against the bytes actually
//!   present before anything is allocated or sliced, so hostile or corrupt
//!   input yields a [`DecodeError`], never a panic or a huge allocation.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use self::decode::{decode, decode_in_stream, streamed_xid};
pub use self::encode::{encode, encode_in_stream};

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

/// One decoded pgoutput message (the payload of one `XLogData` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PgOutputMessage {
    /// `'B'`: start of a transaction.
    Begin(Begin),
    /// `'C'`: end of a transaction.
    Commit(Commit),
    /// `'O'`: replication origin of the current transaction.
    Origin(Origin),
    /// `'R'`: description of a relation, sent before its first data message.
    Relation(Relation),
    /// `'Y'`: description of a non-builtin type used by a relation.
    Type(TypeMessage),
    /// `'I'`: a row was inserted.
    Insert(Insert),
    /// `'U'`: a row was updated.
    Update(Update),
    /// `'D'`: a row was deleted.
    Delete(Delete),
    /// `'T'`: one or more relations were truncated.
    Truncate(Truncate),
    /// `'M'`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage),
    /// `'S'`: start of a block of changes of an in-progress transaction (protocol v2).
    StreamStart(StreamStart),
    /// `'E'`: end of the current stream block (protocol v2).
    StreamStop,
    /// `'c'`: a streamed transaction committed (protocol v2).
    StreamCommit(StreamCommit),
    /// `'A'`: a streamed transaction or one of its subtransactions aborted (protocol v2).
    StreamAbort(StreamAbort),
}

/// One message received between Stream Start and Stream Stop, as returned by
/// [`decode_in_stream()`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streamed {
    /// Xid of the (sub)transaction that made the change: `Some` for the data
    /// messages that carry one inside a stream block (Relation, Type, Insert,
    /// Update, Delete, Truncate, Message), `None` for every other message.
    pub xid: Option<u32>,
    /// The message itself, exactly as [`decode()`] returns it for the same
    /// body without the xid.
    pub message: PgOutputMessage,
}

/// Begin message: the transaction's final LSN, commit time and xid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: u64,
    /// Commit timestamp, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
    /// Transaction id.
    pub xid: u32,
}

/// Commit message: flags, commit and end LSNs and commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Flags byte (currently always 0), kept verbatim.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// End LSN of the transaction.
    pub end_lsn: u64,
    /// Commit timestamp, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
}

/// Stream Start message: the following changes, up to Stream Stop, belong to
/// the in-progress transaction `xid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStart {
    /// Top-level transaction id.
    pub xid: u32,
    /// Whether this is the first stream block of this transaction (wire byte 1).
    pub first_segment: bool,
}

/// Stream Commit message: the streamed transaction `xid` committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: u32,
    /// Flags byte (currently always 0), kept verbatim.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// End LSN of the transaction.
    pub end_lsn: u64,
    /// Commit timestamp, microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
}

/// Stream Abort message: a streamed transaction, or one of its
/// subtransactions, aborted; its streamed changes must be discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// Id of the aborted subtransaction; equal to `xid` when the whole
    /// transaction aborted.
    pub subxid: u32,
}

/// Origin message: the transaction was replayed from another origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: u64,
    /// Name of the origin.
    pub name: String,
}

/// Relation message: schema of a table as of this point in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    /// Relation OID.
    pub oid: u32,
    /// Schema name as sent; an empty string means `pg_catalog`.
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity setting of the relation.
    pub replica_identity: ReplicaIdentity,
    /// Columns in attribute order (dropped and generated columns excluded by the server).
    pub columns: Vec<RelationColumn>,
}

/// Replica identity of a relation (`REPLICA IDENTITY ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReplicaIdentity {
    /// `'d'`: primary key columns.
    Default,
    /// `'n'`: no old values are logged.
    Nothing,
    /// `'f'`: all columns are logged.
    Full,
    /// `'i'`: columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The wire byte for this replica identity.
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }

    /// Parses a wire byte; `None` for an unknown byte.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity key (flags bit 0).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// Type message: name of a non-builtin type referenced by a relation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeMessage {
    /// Type OID.
    pub oid: u32,
    /// Schema name as sent; an empty string means `pg_catalog`.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// Insert message: the new row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Insert {
    /// OID of the relation (described by an earlier [`Relation`] message).
    pub relation_oid: u32,
    /// The inserted row.
    pub new: TupleData,
}

/// Update message: optional old key or row, and the new row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// OID of the relation (described by an earlier [`Relation`] message).
    pub relation_oid: u32,
    /// Old key (`'K'`) or old row (`'O'`), sent only when the key changed or identity is FULL.
    pub old: Option<OldTuple>,
    /// The new row; unchanged TOASTed columns are [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

/// Delete message: the old key or old row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    /// OID of the relation (described by an earlier [`Relation`] message).
    pub relation_oid: u32,
    /// Old key (`'K'`) or old row (`'O'`) of the deleted row.
    pub old: OldTuple,
}

/// Old values of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OldTuple {
    /// `'K'`: only replica identity key columns are set; the rest are NULL.
    Key(TupleData),
    /// `'O'`: the full old row (replica identity FULL).
    Full(TupleData),
}

/// Truncate message: the truncated relations and options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncate {
    /// `TRUNCATE ... CASCADE` (option bit 1).
    pub cascade: bool,
    /// `TRUNCATE ... RESTART IDENTITY` (option bit 2).
    pub restart_identity: bool,
    /// OIDs of the truncated relations.
    pub relation_oids: Vec<u32>,
}

/// Logical decoding message emitted by `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalMessage {
    /// Whether the message is part of a transaction (flags bit 0).
    pub transactional: bool,
    /// LSN of the message.
    pub lsn: u64,
    /// Prefix given by the emitter.
    pub prefix: String,
    /// Raw content bytes.
    pub content: Vec<u8>,
}

/// The column values of one row, in relation column order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column value of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnValue {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: unchanged TOASTed value; the actual value was not sent.
    UnchangedToast,
    /// `'t'`: value in text format (a slice of the row's one copy of the message).
    Text(ByteString),
    /// `'b'`: value in binary format (only with the `binary` option).
    Binary(Vec<u8>),
}

/// Why a pgoutput message could not be decoded; names the message kind and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload was empty (no tag byte).
    #[error("empty pgoutput message (no tag byte)")]
    Empty,
    /// The tag byte is not a known pgoutput message tag.
    #[error("unknown pgoutput message tag {}", tag_display(*.0))]
    UnknownTag(u8),
    /// The tag belongs to a protocol feature we never negotiate (protocol v3 two-phase).
    #[error("unsupported pgoutput message tag {}: {reason}", tag_display(*.tag))]
    UnsupportedTag {
        /// The tag byte.
        tag: u8,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// The message ended before the named field was complete.
    #[error("truncated {message} message: {field} is missing or incomplete")]
    Truncated {
        /// Message kind, e.g. `"Relation"`.
        message: &'static str,
        /// Field being read, e.g. `"column type oid"`.
        field: &'static str,
    },
    /// A string or text value was not valid UTF-8.
    #[error("{message} message: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A string field had no NUL terminator before the end of the message.
    #[error("{message} message: {field} has no NUL terminator")]
    MissingNul {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A count or length field was negative.
    #[error("{message} message: {field} is negative ({value})")]
    NegativeLength {
        /// Message kind.
        message: &'static str,
        /// Field being read.
        field: &'static str,
        /// The negative value as sent.
        value: i32,
    },
    /// The byte introducing a tuple was not one of the expected markers (`'K'`, `'O'`, `'N'`).
    #[error("{message} message: expected {expected} tuple marker, found {}", tag_display(*.byte))]
    BadTupleKind {
        /// Message kind.
        message: &'static str,
        /// Which markers were allowed, e.g. `"'K', 'O' or 'N'"`.
        expected: &'static str,
        /// The byte found.
        byte: u8,
    },
    /// A column value kind byte was not `'n'`, `'u'`, `'t'` or `'b'`.
    #[error("{message} message: column {index} has unknown value kind {}", tag_display(*.byte))]
    BadColumnKind {
        /// Message kind.
        message: &'static str,
        /// Zero-based column index in the tuple.
        index: usize,
        /// The byte found.
        byte: u8,
    },
    /// The Relation message's replica identity byte was not `'d'`, `'n'`, `'f'` or `'i'`.
    #[error("Relation message: unknown replica identity {}", tag_display(*.0))]
    BadReplicaIdentity(u8),
    /// Bytes remained after a complete message, which means the message was misparsed.
    #[error("{message} message: {count} trailing byte(s) after a complete message")]
    TrailingBytes {
        /// Message kind.
        message: &'static str,
        /// Number of bytes left over.
        count: usize,
    },
}

/// Whether a message with this tag carries an Int32 xid after the tag byte
/// when it is sent inside a stream block (between Stream Start and Stream Stop).
fn carries_stream_xid(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

/// Renders a tag byte as `'B' (0x42)` when printable, else `0x00`.
fn tag_display(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}' (0x{byte:02x})", char::from(byte))
    } else {
        format!("0x{byte:02x}")
    }
}
