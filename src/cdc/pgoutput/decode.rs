//! Decoding of one pgoutput message from bytes.
//!
//! Every read goes through [`Reader`], which checks that the bytes are present
//! before slicing and never allocates more than the input actually holds.

use bytes::Bytes;
use bytestring::ByteString;

use super::{
    carries_stream_xid, Begin, ColumnValue, Commit, DecodeError, Delete, Insert, LogicalMessage,
    OldTuple, Origin, PgOutputMessage, Relation, RelationColumn, ReplicaIdentity, StreamAbort,
    StreamCommit, StreamStart, Streamed, Truncate, TupleData, TypeMessage, Update,
};

/// Smallest possible encoding of one Relation column: flags, empty name's NUL, type oid, typmod.
const MIN_RELATION_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Decodes one pgoutput message: the whole payload of one `XLogData` frame.
///
/// This is the layout of every message outside a stream block; for a message
/// received between Stream Start and Stream Stop use [`decode_in_stream`].
///
/// Never panics, whatever the input, and never allocates more than the
/// input's size.
///
/// # Errors
///
/// Any [`DecodeError`]: an empty buffer, an unknown or unsupported (two-phase,
/// protocol v3) tag, a field cut short, a bad string, marker or length, or
/// bytes left over after a complete message ([`DecodeError::TrailingBytes`]).
pub fn decode(buf: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    let Some((&tag, body)) = buf.split_first() else {
        return Err(DecodeError::Empty);
    };
    let (message, decode_body) = body_decoder(tag)?;
    let mut reader = Reader { buf: body, message };
    let decoded = decode_body(&mut reader)?;
    reader.finish()?;
    Ok(decoded)
}

/// Decodes one message received between Stream Start and Stream Stop.
///
/// Relation, Type, Insert, Update, Delete, Truncate and Message carry the
/// Int32 xid of the (sub)transaction that made the change between the tag
/// byte and their usual body; they decode to `xid: Some(..)` and the same
/// message [`decode`] returns for the body without the xid. Every other tag
/// decodes exactly as [`decode`] does, with `xid: None`.
///
/// Never panics, whatever the input, and never allocates more than the
/// input's size.
///
/// # Errors
///
/// As [`decode`]; a data message too short to hold its xid is
/// [`DecodeError::Truncated`] with field `"xid"`.
pub fn decode_in_stream(buf: &[u8]) -> Result<Streamed, DecodeError> {
    let Some((&tag, body)) = buf.split_first() else {
        return Err(DecodeError::Empty);
    };
    if !carries_stream_xid(tag) {
        return decode(buf).map(|message| Streamed { xid: None, message });
    }
    let (message, decode_body) = body_decoder(tag)?;
    let mut reader = Reader { buf: body, message };
    let xid = reader.u32("xid")?;
    let decoded = decode_body(&mut reader)?;
    reader.finish()?;
    Ok(Streamed {
        xid: Some(xid),
        message: decoded,
    })
}

/// Reads only the xid of a message received between Stream Start and Stream
/// Stop, without decoding the rest of it (for a caller that keeps the raw
/// message and decodes it later with [`decode_in_stream`]).
///
/// Returns `Some(xid)` for the data messages that carry one (Relation, Type,
/// Insert, Update, Delete, Truncate, Message) and `None` for every other
/// known tag; whenever [`decode_in_stream`] succeeds, this returns its `xid`.
///
/// # Errors
///
/// An empty buffer, an unknown or unsupported tag, or a data message too
/// short to hold its xid ([`DecodeError::Truncated`] with field `"xid"`).
/// The body after the xid is not checked.
pub fn streamed_xid(buf: &[u8]) -> Result<Option<u32>, DecodeError> {
    let Some((&tag, body)) = buf.split_first() else {
        return Err(DecodeError::Empty);
    };
    let (message, _) = body_decoder(tag)?;
    if !carries_stream_xid(tag) {
        return Ok(None);
    }
    let mut reader = Reader { buf: body, message };
    reader.u32("xid").map(Some)
}

/// Reads one message body (everything after the tag and, in a stream block, the xid).
type BodyDecoder = fn(&mut Reader<'_>) -> Result<PgOutputMessage, DecodeError>;

/// The message name (for errors) and body decoder for `tag`.
fn body_decoder(tag: u8) -> Result<(&'static str, BodyDecoder), DecodeError> {
    Ok(match tag {
        b'B' => ("Begin", decode_begin),
        b'C' => ("Commit", decode_commit),
        b'O' => ("Origin", decode_origin),
        b'R' => ("Relation", decode_relation),
        b'Y' => ("Type", decode_type),
        b'I' => ("Insert", decode_insert),
        b'U' => ("Update", decode_update),
        b'D' => ("Delete", decode_delete),
        b'T' => ("Truncate", decode_truncate),
        b'M' => ("Message", decode_message),
        b'S' => ("Stream Start", decode_stream_start),
        b'E' => ("Stream Stop", decode_stream_stop),
        b'c' => ("Stream Commit", decode_stream_commit),
        b'A' => ("Stream Abort", decode_stream_abort),
        _ => return Err(unsupported_or_unknown(tag)),
    })
}

/// Classifies a tag that protocol versions 1 and 2 never send.
fn unsupported_or_unknown(tag: u8) -> DecodeError {
    let reason = match tag {
        b'b' => "Begin Prepare requires protocol version 3 two-phase decoding, which we never request",
        b'P' => "Prepare requires protocol version 3 two-phase decoding, which we never request",
        b'K' => "Commit Prepared requires protocol version 3 two-phase decoding, which we never request",
        b'r' => "Rollback Prepared requires protocol version 3 two-phase decoding, which we never request",
        b'p' => "Stream Prepare requires protocol version 3 two-phase decoding, which we never request",
        _ => return DecodeError::UnknownTag(tag),
    };
    DecodeError::UnsupportedTag { tag, reason }
}

fn decode_begin(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Begin(Begin {
        final_lsn: r.u64("final LSN")?,
        commit_time_micros: r.i64("commit timestamp")?,
        xid: r.u32("xid")?,
    }))
}

fn decode_commit(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Commit(Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.u64("commit LSN")?,
        end_lsn: r.u64("end LSN")?,
        commit_time_micros: r.i64("commit timestamp")?,
    }))
}

fn decode_origin(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Origin(Origin {
        commit_lsn: r.u64("commit LSN")?,
        name: r.string("origin name")?,
    }))
}

fn decode_relation(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let oid = r.u32("relation oid")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let identity_byte = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(identity_byte)
        .ok_or(DecodeError::BadReplicaIdentity(identity_byte))?;
    let ncols = r.count_i16("column count")?;
    let mut columns = Vec::with_capacity(r.capacity_for(ncols, MIN_RELATION_COLUMN_LEN));
    for _ in 0..ncols {
        let flags = r.u8("column flags")?;
        columns.push(RelationColumn {
            is_key: flags & 1 != 0,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(PgOutputMessage::Relation(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    }))
}

fn decode_type(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::Type(TypeMessage {
        oid: r.u32("type oid")?,
        namespace: r.string("namespace")?,
        name: r.string("type name")?,
    }))
}

fn decode_insert(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let relation_oid = r.u32("relation oid")?;
    match r.u8("tuple marker")? {
        b'N' => {}
        byte => return Err(r.bad_tuple_kind("'N'", byte)),
    }
    let new = r.tuple()?;
    Ok(PgOutputMessage::Insert(Insert { relation_oid, new }))
}

fn decode_update(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let relation_oid = r.u32("relation oid")?;
    let old = match r.u8("tuple marker")? {
        b'N' => None,
        b'K' => Some(OldTuple::Key(r.tuple()?)),
        b'O' => Some(OldTuple::Full(r.tuple()?)),
        byte => return Err(r.bad_tuple_kind("'K', 'O' or 'N'", byte)),
    };
    if old.is_some() {
        match r.u8("new tuple marker")? {
            b'N' => {}
            byte => return Err(r.bad_tuple_kind("'N'", byte)),
        }
    }
    let new = r.tuple()?;
    Ok(PgOutputMessage::Update(Update {
        relation_oid,
        old,
        new,
    }))
}

fn decode_delete(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let relation_oid = r.u32("relation oid")?;
    let old = match r.u8("tuple marker")? {
        b'K' => OldTuple::Key(r.tuple()?),
        b'O' => OldTuple::Full(r.tuple()?),
        byte => return Err(r.bad_tuple_kind("'K' or 'O'", byte)),
    };
    Ok(PgOutputMessage::Delete(Delete { relation_oid, old }))
}

fn decode_truncate(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let nrels = r.length_i32("relation count")?;
    let options = r.u8("options")?;
    let mut relation_oids = Vec::with_capacity(r.capacity_for(nrels, 4));
    for _ in 0..nrels {
        relation_oids.push(r.u32("relation oid")?);
    }
    Ok(PgOutputMessage::Truncate(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_oids,
    }))
}

fn decode_message(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    let flags = r.u8("flags")?;
    let lsn = r.u64("LSN")?;
    let prefix = r.string("prefix")?;
    let len = r.length_i32("content length")?;
    let content = r.take(len, "content")?.to_vec();
    Ok(PgOutputMessage::Message(LogicalMessage {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content,
    }))
}

fn decode_stream_start(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::StreamStart(StreamStart {
        xid: r.u32("xid")?,
        // PostgreSQL's reader treats only 1 as "first segment".
        first_segment: r.u8("first segment flag")? == 1,
    }))
}

fn decode_stream_stop(_: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::StreamStop)
}

fn decode_stream_commit(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::StreamCommit(StreamCommit {
        xid: r.u32("xid")?,
        flags: r.u8("flags")?,
        commit_lsn: r.u64("commit LSN")?,
        end_lsn: r.u64("end LSN")?,
        commit_time_micros: r.i64("commit timestamp")?,
    }))
}

fn decode_stream_abort(r: &mut Reader<'_>) -> Result<PgOutputMessage, DecodeError> {
    Ok(PgOutputMessage::StreamAbort(StreamAbort {
        xid: r.u32("xid")?,
        subxid: r.u32("subtransaction xid")?,
    }))
}

/// One column of a `TupleData` as it lies in the message.
enum RawColumn<'a> {
    Null,
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// Bounds-checked cursor over one message body; errors name `message` and the field.
struct Reader<'a> {
    /// Bytes not yet consumed.
    buf: &'a [u8],
    /// Message kind, for error reports.
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn truncated(&self, field: &'static str) -> DecodeError {
        DecodeError::Truncated {
            message: self.message,
            field,
        }
    }

    fn bad_tuple_kind(&self, expected: &'static str, byte: u8) -> DecodeError {
        DecodeError::BadTupleKind {
            message: self.message,
            expected,
            byte,
        }
    }

    /// Takes exactly `len` bytes, or fails without consuming anything.
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.buf.split_at_checked(len) {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(head)
            }
            None => Err(self.truncated(field)),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(*head)
            }
            None => Err(self.truncated(field)),
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    /// Reads an Int16 count; negative is an error.
    fn count_i16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value: i32::from(value),
        })
    }

    /// Reads an Int32 count or byte length; negative is an error.
    fn length_i32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value,
        })
    }

    /// A `Vec` capacity for `count` elements of at least `min_len` bytes each,
    /// capped by what the remaining input could possibly hold.
    fn capacity_for(&self, count: usize, min_len: usize) -> usize {
        count.min(self.buf.len() / min_len.max(1))
    }

    /// Reads a NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(DecodeError::MissingNul {
                message: self.message,
                field,
            });
        };
        let (text, rest) = self.buf.split_at(nul);
        let text = self.utf8(text, field)?;
        self.buf = rest.get(1..).unwrap_or_default();
        Ok(text)
    }

    fn utf8(&self, bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 {
                message: self.message,
                field,
            }),
        }
    }

    /// Reads `TupleData`: Int16 column count, then one kind byte (and payload) per column.
    ///
    /// The text values share one copy of the tuple's bytes (one allocation per row, not
    /// one per column): a first pass checks the layout and finds the tuple's end, the
    /// second slices each value out of that copy.
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let ncols = self.count_i16("tuple column count")?;
        let mut scan = Reader {
            buf: self.buf,
            message: self.message,
        };
        for index in 0..ncols {
            scan.column(index)?;
        }
        let consumed = self.buf.len() - scan.buf.len();
        let shared = Bytes::copy_from_slice(&self.buf[..consumed]);
        self.buf = scan.buf;
        let mut cells = Reader {
            buf: &shared,
            message: self.message,
        };
        // Every column takes at least its kind byte.
        let mut values = Vec::with_capacity(cells.capacity_for(ncols, 1));
        for index in 0..ncols {
            let value = match cells.column(index)? {
                RawColumn::Null => ColumnValue::Null,
                RawColumn::Unchanged => ColumnValue::UnchangedToast,
                RawColumn::Text(bytes) => {
                    ColumnValue::Text(ByteString::try_from(shared.slice_ref(bytes)).map_err(
                        |_| DecodeError::InvalidUtf8 {
                            message: self.message,
                            field: "text column value",
                        },
                    )?)
                }
                RawColumn::Binary(bytes) => ColumnValue::Binary(bytes.to_vec()),
            };
            values.push(value);
        }
        Ok(TupleData(values))
    }

    /// Reads one column of a `TupleData`: its kind byte and, for values, the bytes.
    fn column(&mut self, index: usize) -> Result<RawColumn<'a>, DecodeError> {
        Ok(match self.u8("tuple column kind")? {
            b'n' => RawColumn::Null,
            b'u' => RawColumn::Unchanged,
            b't' => {
                let len = self.length_i32("text column length")?;
                RawColumn::Text(self.take(len, "text column value")?)
            }
            b'b' => {
                let len = self.length_i32("binary column length")?;
                RawColumn::Binary(self.take(len, "binary column value")?)
            }
            byte => {
                return Err(DecodeError::BadColumnKind {
                    message: self.message,
                    index,
                    byte,
                })
            }
        })
    }

    /// Succeeds only if every byte was consumed.
    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                message: self.message,
                count: self.buf.len(),
            })
        }
    }
}
