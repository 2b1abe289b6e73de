//! Unit and property tests of the NATS sink's pure parts: subject tokens, message ids,
//! and which rows a subject already has.

use arrow_array::UInt64Array;
use proptest::prelude::*;

use super::sink::{covered_prefix, ordinals_in_transaction};
use super::subjects::{default_stream_name, message_id, subject, token, untoken};

#[test]
fn subjects_escape_every_separator_and_wildcard() {
    assert_eq!(
        subject("helios", "job.1", "a b", "public", "t*>"),
        "helios.job~2E1.a~20b.public.t~2A~3E"
    );
    assert_eq!(token(""), "~");
    assert_eq!(default_stream_name("my job.v2"), "HELIOS_my_job_v2");
    assert_eq!(
        message_id("j", "3", "public.t", 0x1_0000_0010, 0x1_0000_0020),
        "j/3/public~2Et/1/10-1/20"
    );
}

proptest! {
    #[test]
    fn tokens_round_trip_and_are_single_valid_tokens(name in any::<String>()) {
        let t = token(&name);
        prop_assert!(!t.is_empty());
        prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'~'));
        prop_assert_eq!(untoken(&t), Some(name));
    }

    #[test]
    fn distinct_names_get_distinct_tokens(a in any::<String>(), b in any::<String>()) {
        prop_assume!(a != b);
        prop_assert_ne!(token(&a), token(&b));
    }
}

#[test]
fn covered_prefix_skips_whole_and_partial_transactions() {
    let lsns = UInt64Array::from(vec![10, 10, 20, 20, 20, 30]);
    let ord = ordinals_in_transaction(&lsns);
    assert_eq!(ord, vec![0, 1, 0, 1, 2, 0]);
    assert_eq!(covered_prefix(&lsns, &ord, 0, None), 0);
    assert_eq!(covered_prefix(&lsns, &ord, 10, None), 2);
    assert_eq!(covered_prefix(&lsns, &ord, 20, Some(2)), 4);
    assert_eq!(covered_prefix(&lsns, &ord, 20, None), 5);
    assert_eq!(covered_prefix(&lsns, &ord, 25, None), 5);
    assert_eq!(covered_prefix(&lsns, &ord, 99, None), 6);
}
