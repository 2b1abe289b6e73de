//! Fixture, error and property tests for the pgoutput decoder and encoder, with the
//! helpers they share.

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

/// Asserts a stream-control message's `bytes` are the same message outside and inside a
/// stream block (it carries no xid prefix there), both ways.
fn check_control_fixture(bytes: &[u8], expected: PgOutputMessage) {
    check_fixture(bytes, expected.clone());
    check_stream_fixture(
        bytes,
        Streamed {
            xid: None,
            message: expected,
        },
    );
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    match decode(bytes) {
        Ok(msg) => panic!("expected an error, decoded {msg:?}"),
        Err(err) => err,
    }
}

/// Decodes `bytes`, which must fail with an error matching `pattern`.
macro_rules! assert_decode_err {
    ($bytes:expr, $pattern:pat) => {{
        let err = decode_err($bytes);
        assert!(matches!(err, $pattern), "{err:?}");
    }};
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

mod errors;
mod fixtures;
mod properties;
mod streaming;
