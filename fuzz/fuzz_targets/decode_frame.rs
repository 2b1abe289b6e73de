//! Fuzzes `StreamDecoder::decode` with arbitrary bytes: the input is split into frames at
//! `0xFF 0x00` markers and one decoder sees them in order, so delta frames meet decoder
//! state. Each frame is tried as given and with a correct CRC-32 trailer appended (else
//! the checksum would stop nearly every input before the parsers). Decoding must return
//! `Ok` or a `FrameError`, never panic.
//!
//! Run from this directory with `cargo fuzz run decode_frame`.

#![no_main]

use helios_repl::codec::StreamDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut as_given = StreamDecoder::new();
    let mut sealed = StreamDecoder::new();
    let mut rest = data;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == [0xff, 0x00])
            .unwrap_or(rest.len());
        let frame = &rest[..end];
        let _ = as_given.decode(frame);
        let mut with_crc = frame.to_vec();
        with_crc.extend_from_slice(&crc32fast::hash(frame).to_le_bytes());
        let _ = sealed.decode(&with_crc);
        rest = rest.get(end + 2..).unwrap_or(&[]);
    }
});
