use super::*;

fn per_kib(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX) * 1024 + 100
}

fn sizing(value: u64) -> Sizing {
    Sizing {
        variable: "THINGS",
        value,
        record_bytes: per_kib,
    }
}

#[test]
fn the_largest_value_that_fits_is_found() {
    let s = sizing(5000);
    assert_eq!(s.largest_record(), 5000 * 1024 + 100);
    assert_eq!(s.largest_value_within(10 * 1024 + 100), Some(10));
    assert_eq!(s.largest_value_within(10 * 1024 + 99), Some(9));
    assert_eq!(s.largest_value_within(1124), Some(1));
    assert_eq!(s.largest_value_within(1123), None);
    // Never more than what is configured.
    assert_eq!(s.largest_value_within(usize::MAX), Some(5000));
}

#[test]
fn the_refusal_names_the_topic_its_limit_the_need_and_the_variable() {
    let s = sizing(5000);
    assert_eq!(s.refusal("t", 5000 * 1024 + 100), None);
    let text = s.refusal("t", 1_048_588).expect("too small");
    for part in [
        "topic t",
        "max.message.bytes is 1048588 bytes",
        "THINGS=5000",
        "up to 5120100 bytes",
        "at least 5120100",
        "lower THINGS to 1023 or less",
    ] {
        assert!(text.contains(part), "{part:?} missing from {text}");
    }
    let text = s.refusal("t", 10).expect("too small");
    assert!(text.contains("no value of THINGS fits"), "{text}");
}

#[test]
fn the_project_limit_holds_the_largest_payload_with_its_overhead() {
    let s = Sizing {
        variable: "LOADER_MAX_RECORD_BYTES",
        value: crate::contract::MAX_PAYLOAD_BYTES as u64,
        record_bytes: |n| usize::try_from(n).unwrap_or(usize::MAX) + RECORD_OVERHEAD_BYTES,
    };
    assert_eq!(s.refusal("dlq", crate::contract::MAX_MESSAGE_BYTES), None);
}

#[test]
fn replication_factor_zero_is_refused() {
    let mut args = CreateArgs::defaults();
    args.validate().unwrap();
    args.replication_factor = 0;
    let err = args.validate().unwrap_err().to_string();
    assert!(err.contains("KAFKA_TOPIC_REPLICATION_FACTOR"), "{err}");
}
