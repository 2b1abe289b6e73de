//! Malformed input: every error names what is wrong, never a panic.

use super::*;

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
    assert_decode_err!(
        &cat(&[b"U", &[0, 0, 0, 1], b"K", &[0, 0], b"K", &[0, 0]]),
        DecodeError::BadTupleKind { byte: b'K', .. }
    );
    // Insert only takes 'N'; Delete only 'K' or 'O'.
    assert_decode_err!(
        &cat(&[b"I", &[0, 0, 0, 1], b"K", &[0, 0]]),
        DecodeError::BadTupleKind {
            message: "Insert",
            ..
        }
    );
    assert_decode_err!(
        &cat(&[b"D", &[0, 0, 0, 1], b"N", &[0, 0]]),
        DecodeError::BadTupleKind {
            message: "Delete",
            ..
        }
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
    assert_decode_err!(
        &cat(&[b"D", &[0, 0, 0, 1], b"K", &[0, 1], b"b", &[0x80, 0, 0, 0]]),
        DecodeError::NegativeLength {
            value: i32::MIN,
            ..
        }
    );
    assert_decode_err!(
        &cat(&[b"T", &[0xFF, 0xFF, 0xFF, 0xFE], &[0]]),
        DecodeError::NegativeLength {
            message: "Truncate",
            ..
        }
    );
    assert_decode_err!(
        &cat(&[b"R", &[0, 0, 0, 1], b"s\0t\0d", &[0x80, 0x00]]),
        DecodeError::NegativeLength {
            message: "Relation",
            value: -32768,
            ..
        }
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
