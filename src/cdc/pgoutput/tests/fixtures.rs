//! Fixtures: each message kind's bytes decode to the expected message and encode back.

use super::*;

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
