//! Streaming of in-progress transactions (protocol v2): the stream control messages and
//! the messages inside a stream block.

use super::*;

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
        check_control_fixture(&bytes, expected);
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
    check_control_fixture(b"E", PgOutputMessage::StreamStop);
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
    check_control_fixture(&bytes, expected);
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
    check_control_fixture(&bytes, expected);
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
