//! Fixture, error and property tests for the pgoutput decoder and encoder.

use super::*;
use proptest::prelude::*;

/// Concatenates byte pieces into one message.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Asserts `bytes` decodes to `expected` and `expected` encodes back to exactly `bytes`.
fn check_fixture(bytes: &[u8], expected: PgOutputMessage) {
    assert_eq!(decode(bytes), Ok(expected.clone()));
    let mut out = Vec::new();
    encode(&expected, &mut out);
    assert_eq!(out, bytes, "encode is not the inverse of the fixture");
}

/// Asserts `bytes`, received inside a stream block, decode to `expected` and
/// that `encode_in_stream` of it gives back exactly `bytes`.
fn check_stream_fixture(bytes: &[u8], expected: Streamed) {
    assert_eq!(decode_in_stream(bytes), Ok(expected.clone()));
    let mut out = Vec::new();
    encode_in_stream(
        expected.xid.unwrap_or(0xDEAD_BEEF),
        &expected.message,
        &mut out,
    );
    assert_eq!(
        out, bytes,
        "encode_in_stream is not the inverse of the fixture"
    );
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode(bytes) {
        Ok(msg) => panic!("expected an error, decoded {msg:?}"),
        Err(err) => err,
    }
}

fn is_truncation(err: &DecodeError) -> bool {
    matches!(
        err,
        DecodeError::Empty | DecodeError::Truncated { .. } | DecodeError::MissingNul { .. }
    )
}

fn text(s: &str) -> ColumnValue {
    ColumnValue::Text(s.into())
}

// ---------------------------------------------------------------- fixtures

#[test]
fn begin_fixture() {
    let bytes = [
        b'B', // tag
        0x00, 0x00, 0x00, 0x00, 0x01, 0x62, 0x3A, 0x58, // final LSN 0/1623A58
        0x00, 0x02, 0x8A, 0x1C, 0x00, 0x00, 0x12, 0x34, // commit timestamp
        0x00, 0x00, 0x02, 0xE5, // xid 741
    ];
    check_fixture(
        &bytes,
        PgOutputMessage::Begin(Begin {
            final_lsn: 0x0162_3A58,
            commit_time_micros: 0x0002_8A1C_0000_1234,
            xid: 741,
        }),
    );
}

#[test]
fn commit_fixture() {
    let bytes = [
        b'C', // tag
        0x00, // flags
        0x00, 0x00, 0x00, 0x00, 0x01, 0x62, 0x3A, 0x58, // commit LSN
        0x00, 0x00, 0x00, 0x00, 0x01, 0x62, 0x3A, 0x88, // end LSN
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, // timestamp -2 (before 2000)
    ];
    check_fixture(
        &bytes,
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: 0x0162_3A58,
            end_lsn: 0x0162_3A88,
            commit_time_micros: -2,
        }),
    );
}

#[test]
fn origin_fixture() {
    let bytes = cat(&[
        b"O",
        &[0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x10],
        b"node_a\0",
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Origin(Origin {
            commit_lsn: 0x0000_0001_0000_0010,
            name: "node_a".into(),
        }),
    );
}

#[test]
fn relation_fixture() {
    let bytes = cat(&[
        b"R",
        &[0x00, 0x00, 0x40, 0x01], // oid 16385
        b"public\0",
        b"accounts\0",
        b"d",          // replica identity default
        &[0x00, 0x03], // 3 columns
        &[0x01],
        b"id\0",
        &[0x00, 0x00, 0x00, 0x17], // int4
        &[0xFF, 0xFF, 0xFF, 0xFF], // typmod -1
        &[0x00],
        b"name\0",
        &[0x00, 0x00, 0x04, 0x13], // varchar
        &[0x00, 0x00, 0x00, 0x44], // typmod 68 = varchar(64)
        &[0x00],
        b"\xC3\xA9t\xC3\xA9\0",    // "été"
        &[0x00, 0x00, 0x00, 0x19], // text
        &[0xFF, 0xFF, 0xFF, 0xFF],
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Relation(Relation {
            oid: 16385,
            namespace: "public".into(),
            name: "accounts".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
                RelationColumn {
                    is_key: false,
                    name: "name".into(),
                    type_oid: 1043,
                    type_modifier: 68,
                },
                RelationColumn {
                    is_key: false,
                    name: "été".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        }),
    );
}

#[test]
fn relation_in_pg_catalog_keeps_empty_namespace_and_every_identity_decodes() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let bytes = cat(&[
            b"R",
            &[0, 0, 0x04, 0xEB],
            b"\0",
            b"pg_x\0",
            &[byte],
            &[0, 0],
        ]);
        check_fixture(
            &bytes,
            PgOutputMessage::Relation(Relation {
                oid: 1259,
                namespace: String::new(),
                name: "pg_x".into(),
                replica_identity: identity,
                columns: vec![],
            }),
        );
    }
}

#[test]
fn relation_column_flag_bits_other_than_key_are_ignored() {
    for (flags, is_key) in [(0x03u8, true), (0x02, false), (0xFE, false), (0xFF, true)] {
        let bytes = cat(&[
            b"R",
            &[0, 0, 0, 1],
            b"s\0t\0f",
            &[0, 1],
            &[flags],
            b"c\0",
            &[0, 0, 0, 23],
            &[0, 0, 0, 0],
        ]);
        let PgOutputMessage::Relation(rel) = decode(&bytes).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(rel.columns[0].is_key, is_key, "flags {flags:#04x}");
    }
}

#[test]
fn type_fixture() {
    let bytes = cat(&[b"Y", &[0x00, 0x00, 0x40, 0x06], b"public\0", b"mood\0"]);
    check_fixture(
        &bytes,
        PgOutputMessage::Type(TypeMessage {
            oid: 16390,
            namespace: "public".into(),
            name: "mood".into(),
        }),
    );
}

#[test]
fn insert_fixture_with_every_value_kind() {
    let bytes = cat(&[
        b"I",
        &[0x00, 0x00, 0x40, 0x01],
        b"N",
        &[0x00, 0x06], // 6 columns
        b"t",
        &[0x00, 0x00, 0x00, 0x02],
        b"42",
        b"n",
        b"u",
        b"b",
        &[0x00, 0x00, 0x00, 0x03],
        &[0xDE, 0x00, 0xAD],
        b"t",
        &[0x00, 0x00, 0x00, 0x00], // empty text
        b"t",
        &[0x00, 0x00, 0x00, 0x0A],
        "h\u{e9}\u{2713}\u{1F980}".as_bytes(), // 1 + 2 + 3 + 4 bytes
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Insert(Insert {
            relation_oid: 16385,
            new: TupleData(vec![
                text("42"),
                ColumnValue::Null,
                ColumnValue::UnchangedToast,
                ColumnValue::Binary(vec![0xDE, 0x00, 0xAD]),
                text(""),
                text("hé✓🦀"),
            ]),
        }),
    );
}

#[test]
fn insert_fixture_with_zero_columns() {
    let bytes = cat(&[b"I", &[0, 0, 0, 9], b"N", &[0, 0]]);
    check_fixture(
        &bytes,
        PgOutputMessage::Insert(Insert {
            relation_oid: 9,
            new: TupleData(vec![]),
        }),
    );
}

#[test]
fn update_fixture_without_old_tuple() {
    let bytes = cat(&[
        b"U",
        &[0x00, 0x00, 0x40, 0x01],
        b"N",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 1],
        b"7",
        b"u",
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Update(Update {
            relation_oid: 16385,
            old: None,
            new: TupleData(vec![text("7"), ColumnValue::UnchangedToast]),
        }),
    );
}

#[test]
fn update_fixture_with_old_key() {
    let bytes = cat(&[
        b"U",
        &[0x00, 0x00, 0x40, 0x01],
        b"K",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 1],
        b"7",
        b"n",
        b"N",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 1],
        b"8",
        b"t",
        &[0, 0, 0, 3],
        b"bob",
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Update(Update {
            relation_oid: 16385,
            old: Some(OldTuple::Key(TupleData(vec![text("7"), ColumnValue::Null]))),
            new: TupleData(vec![text("8"), text("bob")]),
        }),
    );
}

#[test]
fn update_fixture_with_old_full_row() {
    let bytes = cat(&[
        b"U",
        &[0x00, 0x00, 0x40, 0x02],
        b"O",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 1],
        b"1",
        b"t",
        &[0, 0, 0, 5],
        b"alice",
        b"N",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 1],
        b"1",
        b"t",
        &[0, 0, 0, 3],
        b"ann",
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Update(Update {
            relation_oid: 16386,
            old: Some(OldTuple::Full(TupleData(vec![text("1"), text("alice")]))),
            new: TupleData(vec![text("1"), text("ann")]),
        }),
    );
}

#[test]
fn delete_fixture_with_old_key() {
    let bytes = cat(&[
        b"D",
        &[0x00, 0x00, 0x40, 0x01],
        b"K",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 2],
        b"99",
        b"n",
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Delete(Delete {
            relation_oid: 16385,
            old: OldTuple::Key(TupleData(vec![text("99"), ColumnValue::Null])),
        }),
    );
}

#[test]
fn delete_fixture_with_old_full_row() {
    let bytes = cat(&[
        b"D",
        &[0x00, 0x00, 0x40, 0x02],
        b"O",
        &[0x00, 0x02],
        b"t",
        &[0, 0, 0, 2],
        b"99",
        b"b",
        &[0, 0, 0, 1],
        &[0x00],
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Delete(Delete {
            relation_oid: 16386,
            old: OldTuple::Full(TupleData(vec![text("99"), ColumnValue::Binary(vec![0])])),
        }),
    );
}

#[test]
fn truncate_fixtures_for_each_option() {
    for (options, cascade, restart_identity) in [
        (0u8, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, true),
    ] {
        let bytes = cat(&[
            b"T",
            &[0, 0, 0, 2],
            &[options],
            &[0, 0, 0x40, 0x01],
            &[0, 0, 0x40, 0x02],
        ]);
        check_fixture(
            &bytes,
            PgOutputMessage::Truncate(Truncate {
                cascade,
                restart_identity,
                relation_oids: vec![16385, 16386],
            }),
        );
    }
}

#[test]
fn message_fixture() {
    let bytes = cat(&[
        b"M",
        &[0x01],
        &[0, 0, 0, 0, 0x01, 0x62, 0x3A, 0x60],
        b"helios\0",
        &[0, 0, 0, 4],
        &[b'a', 0x00, 0xFF, b'z'],
    ]);
    check_fixture(
        &bytes,
        PgOutputMessage::Message(LogicalMessage {
            transactional: true,
            lsn: 0x0162_3A60,
            prefix: "helios".into(),
            content: vec![b'a', 0x00, 0xFF, b'z'],
        }),
    );
    let bytes = cat(&[b"M", &[0x00], &[0; 8], b"\0", &[0, 0, 0, 0]]);
    check_fixture(
        &bytes,
        PgOutputMessage::Message(LogicalMessage {
            transactional: false,
            lsn: 0,
            prefix: String::new(),
            content: vec![],
        }),
    );
}

#[test]
fn messages_round_trip_through_serde_json() {
    let msg = PgOutputMessage::Update(Update {
        relation_oid: 1,
        old: Some(OldTuple::Key(TupleData(vec![ColumnValue::Binary(vec![
            1, 2,
        ])]))),
        new: TupleData(vec![
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            text("x"),
        ]),
    });
    let json = serde_json::to_string(&msg).unwrap();
    assert_eq!(serde_json::from_str::<PgOutputMessage>(&json).unwrap(), msg);
}

// ---------------------------------------------------------------- streaming (protocol v2)

#[test]
fn stream_start_fixtures() {
    for (flag, first_segment) in [(1u8, true), (0, false)] {
        let bytes = [
            b'S', // tag
            0x00, 0x00, 0x02, 0xE5, // xid 741
            flag, // first segment
        ];
        let expected = PgOutputMessage::StreamStart(StreamStart {
            xid: 741,
            first_segment,
        });
        check_fixture(&bytes, expected.clone());
        check_stream_fixture(
            &bytes,
            Streamed {
                xid: None,
                message: expected,
            },
        );
    }
}

#[test]
fn stream_start_first_segment_only_when_exactly_one() {
    // PostgreSQL's reader compares the byte with 1.
    for flag in [2u8, 0x80, 0xFF] {
        assert_eq!(
            decode(&[b'S', 0, 0, 0, 7, flag]),
            Ok(PgOutputMessage::StreamStart(StreamStart {
                xid: 7,
                first_segment: false
            })),
            "flag {flag:#04x}"
        );
    }
}

#[test]
fn stream_stop_fixture() {
    check_fixture(b"E", PgOutputMessage::StreamStop);
    check_stream_fixture(
        b"E",
        Streamed {
            xid: None,
            message: PgOutputMessage::StreamStop,
        },
    );
}

#[test]
fn stream_commit_fixture() {
    let bytes = [
        b'c', // tag
        0x00, 0x00, 0x02, 0xE5, // xid 741
        0x00, // flags
        0x00, 0x00, 0x00, 0x00, 0x01, 0x62, 0x3A, 0x58, // commit LSN 0/1623A58
        0x00, 0x00, 0x00, 0x00, 0x01, 0x62, 0x3A, 0x88, // end LSN 0/1623A88
        0x00, 0x02, 0x8A, 0x1C, 0x00, 0x00, 0x12, 0x34, // commit timestamp
    ];
    let expected = PgOutputMessage::StreamCommit(StreamCommit {
        xid: 741,
        flags: 0,
        commit_lsn: 0x0162_3A58,
        end_lsn: 0x0162_3A88,
        commit_time_micros: 0x0002_8A1C_0000_1234,
    });
    check_fixture(&bytes, expected.clone());
    check_stream_fixture(
        &bytes,
        Streamed {
            xid: None,
            message: expected,
        },
    );
}

#[test]
fn stream_abort_fixtures() {
    // A subtransaction aborted: subxid differs from the top-level xid.
    let bytes = [
        b'A', // tag
        0x00, 0x00, 0x02, 0xE5, // xid 741
        0x00, 0x00, 0x02, 0xE7, // subxid 743
    ];
    check_fixture(
        &bytes,
        PgOutputMessage::StreamAbort(StreamAbort {
            xid: 741,
            subxid: 743,
        }),
    );
    // The whole transaction aborted: subxid == xid.
    let bytes = [b'A', 0xFF, 0xFF, 0xFF, 0xF0, 0xFF, 0xFF, 0xFF, 0xF0];
    let expected = PgOutputMessage::StreamAbort(StreamAbort {
        xid: 0xFFFF_FFF0,
        subxid: 0xFFFF_FFF0,
    });
    check_fixture(&bytes, expected.clone());
    check_stream_fixture(
        &bytes,
        Streamed {
            xid: None,
            message: expected,
        },
    );
}

#[test]
fn in_stream_insert_fixture() {
    let bytes = cat(&[
        b"I",
        &[0x00, 0x00, 0x02, 0xE6], // xid 742 (a subtransaction)
        &[0x00, 0x00, 0x40, 0x01], // relation oid 16385
        b"N",
        &[0x00, 0x03], // 3 columns
        b"t",
        &[0x00, 0x00, 0x00, 0x02],
        b"42",
        b"n",
        b"t",
        &[0x00, 0x00, 0x00, 0x03],
        "h\u{e9}".as_bytes(),
    ]);
    check_stream_fixture(
        &bytes,
        Streamed {
            xid: Some(742),
            message: PgOutputMessage::Insert(Insert {
                relation_oid: 16385,
                new: TupleData(vec![text("42"), ColumnValue::Null, text("hé")]),
            }),
        },
    );
    // Read outside a stream block, the xid would be taken for the relation
    // oid and the oid's first byte for the tuple marker.
    assert_eq!(
        decode_err(&bytes),
        DecodeError::BadTupleKind {
            message: "Insert",
            expected: "'N'",
            byte: 0x00
        }
    );
}

#[test]
fn in_stream_relation_fixture() {
    let bytes = cat(&[
        b"R",
        &[0x00, 0x00, 0x02, 0xE5], // xid 741
        &[0x00, 0x00, 0x40, 0x01], // oid 16385
        b"public\0",
        b"accounts\0",
        b"f",          // replica identity full
        &[0x00, 0x02], // 2 columns
        &[0x01],
        b"id\0",
        &[0x00, 0x00, 0x00, 0x14], // int8
        &[0xFF, 0xFF, 0xFF, 0xFF], // typmod -1
        &[0x00],
        b"note\0",
        &[0x00, 0x00, 0x00, 0x19], // text
        &[0xFF, 0xFF, 0xFF, 0xFF],
    ]);
    check_stream_fixture(
        &bytes,
        Streamed {
            xid: Some(741),
            message: PgOutputMessage::Relation(Relation {
                oid: 16385,
                namespace: "public".into(),
                name: "accounts".into(),
                replica_identity: ReplicaIdentity::Full,
                columns: vec![
                    RelationColumn {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 20,
                        type_modifier: -1,
                    },
                    RelationColumn {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 25,
                        type_modifier: -1,
                    },
                ],
            }),
        },
    );
}

/// Every data message in a stream block is its v1 layout with an xid inserted after the tag.
#[test]
fn in_stream_data_messages_are_v1_bodies_after_the_xid() {
    let v1_messages: [Vec<u8>; 7] = [
        cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0d", &[0, 0]]),
        cat(&[b"Y", &[0, 0, 0x40, 0x06], b"public\0", b"mood\0"]),
        cat(&[b"I", &[0, 0, 0, 9], b"N", &[0, 1], b"u"]),
        cat(&[
            b"U",
            &[0, 0, 0, 9],
            b"K",
            &[0, 1],
            b"n",
            b"N",
            &[0, 1],
            b"n",
        ]),
        cat(&[
            b"D",
            &[0, 0, 0, 9],
            b"O",
            &[0, 1],
            b"t",
            &[0, 0, 0, 1],
            b"x",
        ]),
        cat(&[b"T", &[0, 0, 0, 1], &[3], &[0, 0, 0, 9]]),
        cat(&[b"M", &[1], &[0; 8], b"p\0", &[0, 0, 0, 1], b"z"]),
    ];
    for v1 in v1_messages {
        let message = decode(&v1).unwrap();
        let in_stream = cat(&[&v1[..1], &[0x12, 0x34, 0x56, 0x78], &v1[1..]]);
        check_stream_fixture(
            &in_stream,
            Streamed {
                xid: Some(0x1234_5678),
                message,
            },
        );
    }
}

/// Origin and every message that is not a data message decode in a stream
/// block exactly as outside one, with no xid.
#[test]
fn in_stream_messages_without_xid_decode_as_outside() {
    let messages: [Vec<u8>; 7] = [
        cat(&[b"O", &[0; 8], b"node_a\0"]),
        cat(&[b"B", &[0; 8], &[0; 8], &[0, 0, 0, 5]]),
        cat(&[b"C", &[0], &[0; 8], &[0; 8], &[0; 8]]),
        cat(&[b"S", &[0, 0, 0, 5], &[1]]),
        b"E".to_vec(),
        cat(&[b"c", &[0, 0, 0, 5], &[0], &[0; 8], &[0; 8], &[0; 8]]),
        cat(&[b"A", &[0, 0, 0, 5], &[0, 0, 0, 6]]),
    ];
    for bytes in messages {
        let message = decode(&bytes).unwrap();
        check_stream_fixture(&bytes, Streamed { xid: None, message });
    }
    // ... and so do their errors.
    for bytes in [&b"Z"[..], b"", b"O\0", b"A\0\0\0\0", b"E\0"] {
        assert_eq!(decode_in_stream(bytes), Err(decode_err(bytes)), "{bytes:?}");
    }
}

/// The text values of an in-stream row still share one copy of the row's bytes.
#[test]
fn in_stream_text_values_share_one_copy() {
    let bytes = cat(&[
        b"I",
        &[0, 0, 0, 7],
        &[0, 0, 0, 9],
        b"N",
        &[0, 2],
        b"t",
        &[0, 0, 0, 2],
        b"ab",
        b"t",
        &[0, 0, 0, 2],
        b"cd",
    ]);
    let Ok(Streamed {
        xid: Some(7),
        message: PgOutputMessage::Insert(insert),
    }) = decode_in_stream(&bytes)
    else {
        panic!("not an in-stream insert");
    };
    let [ColumnValue::Text(first), ColumnValue::Text(second)] = &insert.new.0[..] else {
        panic!("not two text values: {insert:?}");
    };
    assert_eq!((&first[..], &second[..]), ("ab", "cd"));
    // "ab", then the second value's kind byte and Int32 length, then "cd".
    assert_eq!(
        second.as_ptr(),
        first.as_ptr().wrapping_add(2 + 1 + 4),
        "text values are not slices of one shared copy"
    );
}

/// Asserts every strict prefix (past the tag) of the complete message `bytes`
/// fails as truncated at the field that starts at or last before the cut;
/// `fields` lists each field's start offset and name.
fn check_field_truncations(bytes: &[u8], message: &'static str, fields: &[(usize, &'static str)]) {
    assert!(decode(bytes).is_ok(), "{message}");
    for cut in 1..bytes.len() {
        let field = fields
            .iter()
            .rev()
            .find(|(start, _)| *start <= cut)
            .map(|(_, field)| *field)
            .unwrap();
        let expected = DecodeError::Truncated { message, field };
        assert_eq!(
            decode(&bytes[..cut]),
            Err(expected.clone()),
            "{message} cut {cut}"
        );
        assert_eq!(
            decode_in_stream(&bytes[..cut]),
            Err(expected),
            "{message} cut {cut}"
        );
    }
}

#[test]
fn stream_message_truncation_names_the_field() {
    check_field_truncations(
        &cat(&[b"S", &[0, 0, 0, 5], &[1]]),
        "Stream Start",
        &[(1, "xid"), (5, "first segment flag")],
    );
    check_field_truncations(
        &cat(&[b"c", &[0, 0, 0, 5], &[0], &[1; 8], &[2; 8], &[3; 8]]),
        "Stream Commit",
        &[
            (1, "xid"),
            (5, "flags"),
            (6, "commit LSN"),
            (14, "end LSN"),
            (22, "commit timestamp"),
        ],
    );
    check_field_truncations(
        &cat(&[b"A", &[0, 0, 0, 5], &[0, 0, 0, 6]]),
        "Stream Abort",
        &[(1, "xid"), (5, "subtransaction xid")],
    );
    assert_eq!(
        decode_err(b"c\0\0\0\x05\0\0").to_string(),
        "truncated Stream Commit message: commit LSN is missing or incomplete"
    );
}

#[test]
fn in_stream_missing_xid_is_truncated() {
    for (tag, message) in [
        (b'R', "Relation"),
        (b'Y', "Type"),
        (b'I', "Insert"),
        (b'U', "Update"),
        (b'D', "Delete"),
        (b'T', "Truncate"),
        (b'M', "Message"),
    ] {
        for len in 0..4 {
            let mut bytes = vec![tag];
            bytes.resize(1 + len, 0x01);
            assert_eq!(
                decode_in_stream(&bytes),
                Err(DecodeError::Truncated {
                    message,
                    field: "xid"
                }),
                "{bytes:?}"
            );
        }
    }
    assert_eq!(
        decode_in_stream(b"I\0\0").unwrap_err().to_string(),
        "truncated Insert message: xid is missing or incomplete"
    );
}

#[test]
fn streamed_xid_reads_only_the_xid() {
    // An in-stream Insert whose body is garbage: only the xid is read.
    assert_eq!(
        streamed_xid(&cat(&[b"I", &[0, 0, 0x02, 0xE6], b"junk"])),
        Ok(Some(742))
    );
    assert_eq!(streamed_xid(b"T\0\0\0\x07"), Ok(Some(7)));
    for bytes in [&b"E"[..], b"S\0\0\0\x05\x01", b"A", b"O", b"B", b"C", b"c"] {
        assert_eq!(streamed_xid(bytes), Ok(None), "{bytes:?}");
    }
    assert_eq!(streamed_xid(b""), Err(DecodeError::Empty));
    assert_eq!(streamed_xid(b"Z"), Err(DecodeError::UnknownTag(b'Z')));
    assert!(matches!(
        streamed_xid(b"P\0\0\0\x05"),
        Err(DecodeError::UnsupportedTag { tag: b'P', .. })
    ));
    assert_eq!(
        streamed_xid(b"M\0\0\0"),
        Err(DecodeError::Truncated {
            message: "Message",
            field: "xid"
        })
    );
}

#[test]
fn stream_messages_reject_trailing_bytes() {
    assert_eq!(
        decode_err(b"E\0"),
        DecodeError::TrailingBytes {
            message: "Stream Stop",
            count: 1
        }
    );
    // A protocol-v4 Stream Abort adds the abort LSN and time; we never request v4.
    let v4_abort = cat(&[b"A", &[0, 0, 0, 5], &[0, 0, 0, 5], &[0; 8], &[0; 8]]);
    assert_eq!(
        decode_err(&v4_abort),
        DecodeError::TrailingBytes {
            message: "Stream Abort",
            count: 16
        }
    );
    assert_eq!(
        decode_in_stream(&cat(&[
            b"I",
            &[0, 0, 0, 7],
            &[0, 0, 0, 9],
            b"N",
            &[0, 0],
            &[0]
        ])),
        Err(DecodeError::TrailingBytes {
            message: "Insert",
            count: 1
        })
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn empty_input_is_an_error() {
    assert_eq!(decode_err(&[]), DecodeError::Empty);
}

#[test]
fn unknown_tag_is_reported() {
    let err = decode_err(b"Z\0\0");
    assert_eq!(err, DecodeError::UnknownTag(b'Z'));
    assert_eq!(err.to_string(), "unknown pgoutput message tag 'Z' (0x5a)");
    assert_eq!(
        decode_err(&[0x00]).to_string(),
        "unknown pgoutput message tag 0x00"
    );
}

#[test]
fn two_phase_tags_are_unsupported() {
    for tag in [b'b', b'P', b'K', b'r', b'p'] {
        for bytes in [vec![tag], vec![tag, 0, 0, 0, 1]] {
            let err = decode_err(&bytes);
            assert!(
                matches!(err, DecodeError::UnsupportedTag { tag: t, .. } if t == tag),
                "{err:?}"
            );
            assert_eq!(decode_in_stream(&bytes), Err(err));
        }
    }
    let msg = decode_err(b"P").to_string();
    assert!(
        msg.contains("'P'") && msg.contains("Prepare") && msg.contains("protocol version 3"),
        "{msg}"
    );
}

#[test]
fn truncation_names_message_and_field() {
    // Relation whose single column stops inside its type oid.
    let bytes = cat(&[
        b"R",
        &[0, 0, 0, 1],
        b"s\0t\0d",
        &[0, 1],
        &[1],
        b"id\0",
        &[0, 0],
    ]);
    let err = decode_err(&bytes);
    assert_eq!(
        err,
        DecodeError::Truncated {
            message: "Relation",
            field: "column type oid"
        }
    );
    assert_eq!(
        err.to_string(),
        "truncated Relation message: column type oid is missing or incomplete"
    );
    assert_eq!(
        decode_err(&[b'B', 0, 0]).to_string(),
        "truncated Begin message: final LSN is missing or incomplete"
    );
}

#[test]
fn missing_nul_names_message_and_field() {
    let err = decode_err(&cat(&[b"O", &[0; 8], b"node"]));
    assert_eq!(
        err.to_string(),
        "Origin message: origin name has no NUL terminator"
    );
}

#[test]
fn invalid_utf8_is_reported() {
    let err = decode_err(&cat(&[
        b"I",
        &[0, 0, 0, 1],
        b"N",
        &[0, 1],
        b"t",
        &[0, 0, 0, 1],
        &[0xFF],
    ]));
    assert_eq!(
        err.to_string(),
        "Insert message: text column value is not valid UTF-8"
    );
    let err = decode_err(&cat(&[b"Y", &[0, 0, 0, 1], b"\xC3\0", b"t\0"]));
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            message: "Type",
            field: "namespace"
        }
    );
}

#[test]
fn bad_replica_identity_is_reported() {
    let err = decode_err(&cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0x", &[0, 0]]));
    assert_eq!(err, DecodeError::BadReplicaIdentity(b'x'));
    assert_eq!(
        err.to_string(),
        "Relation message: unknown replica identity 'x' (0x78)"
    );
}

#[test]
fn bad_tuple_markers_are_reported() {
    let err = decode_err(&cat(&[b"U", &[0, 0, 0, 1], b"X", &[0, 0]]));
    assert_eq!(
        err,
        DecodeError::BadTupleKind {
            message: "Update",
            expected: "'K', 'O' or 'N'",
            byte: b'X'
        }
    );
    assert_eq!(
        err.to_string(),
        "Update message: expected 'K', 'O' or 'N' tuple marker, found 'X' (0x58)"
    );
    // Update with an old key must be followed by 'N', not a second old tuple.
    let err = decode_err(&cat(&[b"U", &[0, 0, 0, 1], b"K", &[0, 0], b"K", &[0, 0]]));
    assert!(
        matches!(err, DecodeError::BadTupleKind { byte: b'K', .. }),
        "{err:?}"
    );
    // Insert only takes 'N'; Delete only 'K' or 'O'.
    let err = decode_err(&cat(&[b"I", &[0, 0, 0, 1], b"K", &[0, 0]]));
    assert!(
        matches!(
            err,
            DecodeError::BadTupleKind {
                message: "Insert",
                ..
            }
        ),
        "{err:?}"
    );
    let err = decode_err(&cat(&[b"D", &[0, 0, 0, 1], b"N", &[0, 0]]));
    assert!(
        matches!(
            err,
            DecodeError::BadTupleKind {
                message: "Delete",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_column_kind_is_reported() {
    let err = decode_err(&cat(&[b"I", &[0, 0, 0, 1], b"N", &[0, 2], b"n", b"x"]));
    assert_eq!(
        err,
        DecodeError::BadColumnKind {
            message: "Insert",
            index: 1,
            byte: b'x'
        }
    );
    assert_eq!(
        err.to_string(),
        "Insert message: column 1 has unknown value kind 'x' (0x78)"
    );
}

#[test]
fn negative_counts_and_lengths_are_rejected() {
    let err = decode_err(&cat(&[b"I", &[0, 0, 0, 1], b"N", &[0xFF, 0xFF]]));
    assert_eq!(
        err,
        DecodeError::NegativeLength {
            message: "Insert",
            field: "tuple column count",
            value: -1
        }
    );
    let err = decode_err(&cat(&[
        b"I",
        &[0, 0, 0, 1],
        b"N",
        &[0, 1],
        b"t",
        &[0xFF; 4],
    ]));
    assert_eq!(
        err.to_string(),
        "Insert message: text column length is negative (-1)"
    );
    let err = decode_err(&cat(&[
        b"D",
        &[0, 0, 0, 1],
        b"K",
        &[0, 1],
        b"b",
        &[0x80, 0, 0, 0],
    ]));
    assert!(
        matches!(
            err,
            DecodeError::NegativeLength {
                value: i32::MIN,
                ..
            }
        ),
        "{err:?}"
    );
    let err = decode_err(&cat(&[b"T", &[0xFF, 0xFF, 0xFF, 0xFE], &[0]]));
    assert!(
        matches!(
            err,
            DecodeError::NegativeLength {
                message: "Truncate",
                ..
            }
        ),
        "{err:?}"
    );
    let err = decode_err(&cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0d", &[0x80, 0x00]]));
    assert!(
        matches!(
            err,
            DecodeError::NegativeLength {
                message: "Relation",
                value: -32768,
                ..
            }
        ),
        "{err:?}"
    );
    let err = decode_err(&cat(&[b"M", &[1], &[0; 8], b"p\0", &[0xFF; 4]]));
    assert!(
        matches!(
            err,
            DecodeError::NegativeLength {
                field: "content length",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = cat(&[b"I", &[0, 0, 0, 1], b"N", &[0, 1], b"n"]);
    assert!(decode(&bytes).is_ok());
    bytes.extend_from_slice(&[0, 0]);
    let err = decode_err(&bytes);
    assert_eq!(
        err,
        DecodeError::TrailingBytes {
            message: "Insert",
            count: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "Insert message: 2 trailing byte(s) after a complete message"
    );
}

/// Huge declared lengths with few bytes present must fail as truncated. The
/// decoder checks the bytes are present before slicing and caps every
/// `Vec::with_capacity` by the remaining input, so none of these allocates
/// more than the input size (a 2 GiB allocation would abort or be very slow).
#[test]
fn huge_declared_lengths_are_truncated_not_allocated() {
    let cases: [(Vec<u8>, &str, &str); 7] = [
        (
            cat(&[
                b"I",
                &[0, 0, 0, 1],
                b"N",
                &[0, 1],
                b"t",
                &[0x7F, 0xFF, 0xFF, 0xFF],
                b"abc",
            ]),
            "Insert",
            "text column value",
        ),
        (
            cat(&[
                b"U",
                &[0, 0, 0, 1],
                b"N",
                &[0, 1],
                b"b",
                &[0x7F, 0xFF, 0xFF, 0xFF],
                b"abc",
            ]),
            "Update",
            "binary column value",
        ),
        (
            cat(&[
                b"M",
                &[1],
                &[0; 8],
                b"p\0",
                &[0x7F, 0xFF, 0xFF, 0xFF],
                b"abc",
            ]),
            "Message",
            "content",
        ),
        (
            cat(&[b"T", &[0x7F, 0xFF, 0xFF, 0xFF], &[0], &[0, 0, 0, 1]]),
            "Truncate",
            "relation oid",
        ),
        (
            cat(&[b"D", &[0, 0, 0, 1], b"O", &[0x7F, 0xFF], b"n"]),
            "Delete",
            "tuple column kind",
        ),
        (
            cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0d", &[0x7F, 0xFF], &[1]]),
            "Relation",
            "column name",
        ),
        (
            cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0d", &[0x7F, 0xFF], &[1], b"c\0"]),
            "Relation",
            "column type oid",
        ),
    ];
    for (bytes, message, field) in cases {
        let err = decode_err(&bytes);
        let expected_truncated = DecodeError::Truncated { message, field };
        let expected_nul = DecodeError::MissingNul { message, field };
        assert!(
            err == expected_truncated || err == expected_nul,
            "{message}/{field}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------- properties

fn arb_name() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

fn arb_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        // Text values are length-prefixed, so any string (even with NUL) round-trips.
        any::<String>().prop_map(|s| ColumnValue::Text(s.into())),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(ColumnValue::Binary),
    ]
}

fn arb_tuple() -> impl Strategy<Value = TupleData> {
    prop::collection::vec(arb_value(), 0..8).prop_map(TupleData)
}

fn arb_old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_tuple().prop_map(OldTuple::Key),
        arb_tuple().prop_map(OldTuple::Full)
    ]
}

fn arb_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn arb_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| RelationColumn {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
    prop_oneof![
        (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, t, xid)| {
            PgOutputMessage::Begin(Begin {
                final_lsn,
                commit_time_micros: t,
                xid,
            })
        }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, t)| PgOutputMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros: t,
            })
        ),
        (any::<u64>(), arb_name())
            .prop_map(|(commit_lsn, name)| PgOutputMessage::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            arb_name(),
            arb_name(),
            arb_identity(),
            prop::collection::vec(arb_column(), 0..6)
        )
            .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                PgOutputMessage::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), arb_name(), arb_name()).prop_map(|(oid, namespace, name)| {
            PgOutputMessage::Type(TypeMessage {
                oid,
                namespace,
                name,
            })
        }),
        (any::<u32>(), arb_tuple())
            .prop_map(|(relation_oid, new)| PgOutputMessage::Insert(Insert { relation_oid, new })),
        (any::<u32>(), prop::option::of(arb_old_tuple()), arb_tuple()).prop_map(
            |(relation_oid, old, new)| PgOutputMessage::Update(Update {
                relation_oid,
                old,
                new,
            })
        ),
        (any::<u32>(), arb_old_tuple())
            .prop_map(|(relation_oid, old)| PgOutputMessage::Delete(Delete { relation_oid, old })),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u32>(), 0..8)
        )
            .prop_map(|(cascade, restart_identity, relation_oids)| {
                PgOutputMessage::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_oids,
                })
            }),
        (
            any::<bool>(),
            any::<u64>(),
            arb_name(),
            prop::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(transactional, lsn, prefix, content)| {
                PgOutputMessage::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }),
        (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| {
            PgOutputMessage::StreamStart(StreamStart { xid, first_segment })
        }),
        Just(PgOutputMessage::StreamStop),
        (
            any::<u32>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>()
        )
            .prop_map(|(xid, flags, commit_lsn, end_lsn, t)| {
                PgOutputMessage::StreamCommit(StreamCommit {
                    xid,
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time_micros: t,
                })
            }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(xid, subxid)| PgOutputMessage::StreamAbort(StreamAbort { xid, subxid })),
    ]
}

/// Whether `msg` carries an xid inside a stream block (written out here, not
/// taken from the module, so the tests check the module's choice).
fn carries_xid_in_stream(msg: &PgOutputMessage) -> bool {
    match msg {
        PgOutputMessage::Relation(_)
        | PgOutputMessage::Type(_)
        | PgOutputMessage::Insert(_)
        | PgOutputMessage::Update(_)
        | PgOutputMessage::Delete(_)
        | PgOutputMessage::Truncate(_)
        | PgOutputMessage::Message(_) => true,
        PgOutputMessage::Begin(_)
        | PgOutputMessage::Commit(_)
        | PgOutputMessage::Origin(_)
        | PgOutputMessage::StreamStart(_)
        | PgOutputMessage::StreamStop
        | PgOutputMessage::StreamCommit(_)
        | PgOutputMessage::StreamAbort(_) => false,
    }
}

fn encoded_in_stream(xid: u32, msg: &PgOutputMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_in_stream(xid, msg, &mut out);
    out
}

fn encoded(msg: &PgOutputMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode(msg, &mut out);
    out
}

/// Every tag the decoder knows or explicitly rejects, plus a few it does not.
const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrpZ\0";

proptest! {
    #[test]
    fn decode_inverts_encode(msg in arb_message()) {
        let bytes = encoded(&msg);
        prop_assert_eq!(decode(&bytes), Ok(msg.clone()));
        let json = serde_json::to_string(&msg).unwrap();
        prop_assert_eq!(serde_json::from_str::<PgOutputMessage>(&json).unwrap(), msg);
    }

    #[test]
    fn encode_appends_without_touching_existing_bytes(
        prefix in prop::collection::vec(any::<u8>(), 0..8),
        msg in arb_message(),
    ) {
        let mut out = prefix.clone();
        encode(&msg, &mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &encoded(&msg)[..]);
    }

    #[test]
    fn every_strict_prefix_fails_as_truncated(msg in arb_message()) {
        let bytes = encoded(&msg);
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).expect_err("strict prefix decoded");
            prop_assert!(is_truncation(&err), "prefix {} of {:?}: {:?}", cut, msg, err);
        }
    }

    #[test]
    fn any_extra_bytes_are_trailing(
        msg in arb_message(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut bytes = encoded(&msg);
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::TrailingBytes { message: message_name(&msg), count: extra.len() }
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_after_real_tags_never_panic(
        tag in prop::sample::select(TAGS),
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        if let Ok(msg) = decode(&bytes) {
            let again = encoded(&msg);
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(decode(&again), Ok(msg));
        }
    }

    /// Mirrors the fuzz target: corrupt one byte of a valid message; decoding
    /// must not panic, and anything that decodes must survive a round trip.
    #[test]
    fn corrupted_messages_never_panic_and_reencode(
        msg in arb_message(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encoded(&msg);
        let i = index.index(bytes.len());
        bytes[i] = byte;
        if let Ok(decoded) = decode(&bytes) {
            let again = encoded(&decoded);
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(decode(&again), Ok(decoded));
        }
    }

    #[test]
    fn decode_in_stream_inverts_encode_in_stream(xid in any::<u32>(), msg in arb_message()) {
        let bytes = encoded_in_stream(xid, &msg);
        let expected_xid = carries_xid_in_stream(&msg).then_some(xid);
        prop_assert_eq!(
            decode_in_stream(&bytes),
            Ok(Streamed { xid: expected_xid, message: msg.clone() })
        );
        // The in-stream layout is the v1 layout with the xid after the tag, or
        // the v1 layout itself.
        let v1 = encoded(&msg);
        if expected_xid.is_some() {
            prop_assert_eq!(&bytes[..1], &v1[..1]);
            prop_assert_eq!(&bytes[1..5], &xid.to_be_bytes()[..]);
            prop_assert_eq!(&bytes[5..], &v1[1..]);
        } else {
            prop_assert_eq!(&bytes, &v1);
        }
    }

    #[test]
    fn encode_in_stream_appends_without_touching_existing_bytes(
        prefix in prop::collection::vec(any::<u8>(), 0..8),
        xid in any::<u32>(),
        msg in arb_message(),
    ) {
        let mut out = prefix.clone();
        encode_in_stream(xid, &msg, &mut out);
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &encoded_in_stream(xid, &msg)[..]);
    }

    #[test]
    fn every_strict_prefix_of_an_in_stream_message_fails_as_truncated(
        xid in any::<u32>(),
        msg in arb_message(),
    ) {
        let bytes = encoded_in_stream(xid, &msg);
        for cut in 0..bytes.len() {
            let err = decode_in_stream(&bytes[..cut]).expect_err("strict prefix decoded");
            prop_assert!(is_truncation(&err), "prefix {} of {:?}: {:?}", cut, msg, err);
            if (1..5).contains(&cut) && carries_xid_in_stream(&msg) {
                prop_assert_eq!(
                    err,
                    DecodeError::Truncated { message: message_name(&msg), field: "xid" }
                );
            }
        }
    }

    #[test]
    fn any_extra_bytes_after_an_in_stream_message_are_trailing(
        xid in any::<u32>(),
        msg in arb_message(),
        extra in prop::collection::vec(any::<u8>(), 1..8),
    ) {
        let mut bytes = encoded_in_stream(xid, &msg);
        bytes.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_in_stream(&bytes).unwrap_err(),
            DecodeError::TrailingBytes { message: message_name(&msg), count: extra.len() }
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_in_stream(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_in_stream(&bytes);
        let _ = streamed_xid(&bytes);
    }

    #[test]
    fn streamed_xid_agrees_with_decode_in_stream(xid in any::<u32>(), msg in arb_message()) {
        let bytes = encoded_in_stream(xid, &msg);
        prop_assert_eq!(streamed_xid(&bytes), Ok(carries_xid_in_stream(&msg).then_some(xid)));
        // On any prefix, whatever decode_in_stream decodes, streamed_xid agrees.
        for cut in 0..=bytes.len() {
            if let Ok(streamed) = decode_in_stream(&bytes[..cut]) {
                prop_assert_eq!(streamed_xid(&bytes[..cut]), Ok(streamed.xid));
            }
        }
    }

    #[test]
    fn arbitrary_bodies_after_real_tags_never_panic_in_stream(
        tag in prop::sample::select(TAGS),
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        if let Ok(streamed) = decode_in_stream(&bytes) {
            prop_assert_eq!(streamed.xid.is_some(), carries_xid_in_stream(&streamed.message));
            let again = encoded_in_stream(streamed.xid.unwrap_or(0), &streamed.message);
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(decode_in_stream(&again), Ok(streamed));
        }
    }

    /// Mirrors the fuzz target for messages inside a stream block.
    #[test]
    fn corrupted_in_stream_messages_never_panic_and_reencode(
        xid in any::<u32>(),
        msg in arb_message(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encoded_in_stream(xid, &msg);
        let i = index.index(bytes.len());
        bytes[i] = byte;
        if let Ok(streamed) = decode_in_stream(&bytes) {
            let again = encoded_in_stream(streamed.xid.unwrap_or(0), &streamed.message);
            prop_assert_eq!(again.len(), bytes.len());
            prop_assert_eq!(decode_in_stream(&again), Ok(streamed));
        }
    }
}

fn message_name(msg: &PgOutputMessage) -> &'static str {
    match msg {
        PgOutputMessage::Begin(_) => "Begin",
        PgOutputMessage::Commit(_) => "Commit",
        PgOutputMessage::Origin(_) => "Origin",
        PgOutputMessage::Relation(_) => "Relation",
        PgOutputMessage::Type(_) => "Type",
        PgOutputMessage::Insert(_) => "Insert",
        PgOutputMessage::Update(_) => "Update",
        PgOutputMessage::Delete(_) => "Delete",
        PgOutputMessage::Truncate(_) => "Truncate",
        PgOutputMessage::Message(_) => "Message",
        PgOutputMessage::StreamStart(_) => "Stream Start",
        PgOutputMessage::StreamStop => "Stream Stop",
        PgOutputMessage::StreamCommit(_) => "Stream Commit",
        PgOutputMessage::StreamAbort(_) => "Stream Abort",
    }
}
