//! Properties: encode and decode are inverses; truncated or corrupted input is an error.

use super::*;

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
