//! Fuzzes the pgoutput decoder: `decode` and `decode_in_stream` must never
//! panic on any input, and whatever they decode must survive an encode/decode
//! round trip unchanged and re-encode to the same number of bytes.
//!
//! Run from the repository root with `cargo fuzz run pgoutput_decode`.

#![no_main]

use helios_repl::cdc::pgoutput::{decode, decode_in_stream, encode, encode_in_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every field is fixed-width or length-prefixed and decoding consumes the
    // whole input, so re-encoding can differ only in unmodelled flag bits,
    // never in length; a length change would mean a field was misparsed.

    // The input as a message outside a stream block.
    if let Ok(msg) = decode(data) {
        let mut encoded = Vec::new();
        encode(&msg, &mut encoded);
        let again = match decode(&encoded) {
            Ok(again) => again,
            Err(err) => panic!("re-encoded {msg:?} failed to decode: {err}"),
        };
        assert_eq!(msg, again, "decode(encode(m)) != m");
        assert_eq!(encoded.len(), data.len(), "re-encoding changed the length");
    }

    // The same input as a message between Stream Start and Stream Stop.
    if let Ok(streamed) = decode_in_stream(data) {
        let mut encoded = Vec::new();
        // Messages without an xid in a stream block ignore the xid argument.
        encode_in_stream(streamed.xid.unwrap_or(0), &streamed.message, &mut encoded);
        let again = match decode_in_stream(&encoded) {
            Ok(again) => again,
            Err(err) => panic!("re-encoded {streamed:?} failed to decode in stream: {err}"),
        };
        assert_eq!(
            streamed, again,
            "decode_in_stream(encode_in_stream(m)) != m"
        );
        assert_eq!(
            encoded.len(),
            data.len(),
            "in-stream re-encoding changed the length"
        );
    }
});
