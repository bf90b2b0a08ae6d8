//! How large a record `EXTRACT_RESULTS` can make, for the start-up check of `KAFKA_TOPIC`
//! ([`etl_common::topic`]): the topic's `max.message.bytes` must hold the largest response for
//! the configured number of users, so a topic too small for it stops the extractor before the
//! first fetch instead of failing after it.
//!
//! Sizes are of the body as the API sends it, uncompressed. The producer compresses with LZ4,
//! and the broker compares a compressed batch as sent with the limit, but the ratio depends on
//! the data (the stub's responses repeat 131 real users; the API's do not), and a topic whose
//! `compression.type` is not `producer` is recompressed, or stored uncompressed, before the
//! comparison. Only the uncompressed size is sure to fit: a topic that would hold a response
//! thanks to compression is refused all the same (the refusal says which limit would do).

use etl_common::topic::{RECORD_OVERHEAD_BYTES, Sizing};

/// The most bytes one user takes in a response, with a margin. Measured on the real captures in
/// `fixtures/randomuser/`, each user as compact JSON in UTF-8 as the API sends it (the v1.3
/// capture is its byte-exact output: no whitespace, non-ASCII as UTF-8, not `\u` escapes): the
/// largest is 1,123 bytes (an NL user of the 111-user 1.4 capture; 1,105 in the v1.3 capture),
/// 1,124 with the comma between users, and the mean about 1,080 (the contract's "5,000 users
/// is about 5.5 MB"). 1,500 is a third above the largest: room for longer names, streets and
/// e-mail addresses than the 131 captured users have, and for a response that escaped every
/// non-ASCII character (the largest user would be 1,277 bytes).
pub const MAX_USER_BYTES: usize = 1_500;

/// The envelope around the users: `{"results":[`…`],"info":{"seed":"…","results":5000,
/// "page":1,"version":"1.4"}}`, 88 bytes in the captures with a 16-character seed; 512 leaves
/// room for a longer seed and page number.
pub const ENVELOPE_BYTES: usize = 512;

/// The largest response body for `results` users.
pub fn largest_response_bytes(results: u64) -> usize {
    usize::try_from(results)
        .unwrap_or(usize::MAX)
        .saturating_mul(MAX_USER_BYTES)
        .saturating_add(ENVELOPE_BYTES)
}

/// The largest record for `results` users: the response plus the key, the headers and the
/// batch framing ([`RECORD_OVERHEAD_BYTES`]).
pub fn largest_record_bytes(results: u64) -> usize {
    largest_response_bytes(results).saturating_add(RECORD_OVERHEAD_BYTES)
}

/// `EXTRACT_RESULTS` and the records it makes, for the topic check.
pub fn sizing(results: u32) -> Sizing {
    Sizing {
        variable: "EXTRACT_RESULTS",
        value: u64::from(results),
        record_bytes: largest_record_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V14: &str =
        include_str!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    const V13: &str = include_str!("../../fixtures/randomuser/v1.3-compact-20-users.json");

    /// The largest user of a capture, as compact JSON (what the API sends), and the envelope.
    fn measure(capture: &str) -> (usize, usize) {
        let mut doc: serde_json::Value = serde_json::from_str(capture).unwrap();
        let users = doc["results"].as_array().unwrap().clone();
        let largest = users
            .iter()
            .map(|u| serde_json::to_vec(u).unwrap().len())
            .max()
            .unwrap();
        doc["results"] = serde_json::json!([]);
        (largest, serde_json::to_vec(&doc).unwrap().len())
    }

    /// The constants keep their documented margin over the real captures.
    #[test]
    fn the_estimate_is_a_third_above_the_largest_captured_user() {
        let (v14, v14_envelope) = measure(V14);
        let (v13, v13_envelope) = measure(V13);
        assert_eq!(
            (v14, v13),
            (1123, 1105),
            "the figures in MAX_USER_BYTES's doc"
        );
        let largest = v14.max(v13) + 1; // the comma between users
        assert!(MAX_USER_BYTES * 3 >= largest * 4, "a third above {largest}");
        assert!(v14_envelope.max(v13_envelope) * 4 <= ENVELOPE_BYTES);
        // The v1.3 capture is the API's own compact output: serde's form is the same size.
        let raw_v13 = V13.trim_end().len();
        let (users, envelope) = (20, v13_envelope);
        assert!(raw_v13 <= users * largest + envelope, "{raw_v13}");
    }

    /// The figures RELIABILITY.md gives: 5,000 users need 7.5 MB, which Kafka's default limit
    /// (1,048,588 bytes) does not hold and the project's does; 687 users fit the default.
    #[test]
    fn the_size_arithmetic() {
        assert_eq!(largest_response_bytes(5000), 7_500_512);
        assert_eq!(largest_record_bytes(5000), 7_516_896);
        assert_eq!(largest_record_bytes(1), 1_500 + 512 + 16_384);
        let s = sizing(5000);
        assert!(
            s.refusal("t", etl_common::contract::MAX_MESSAGE_BYTES)
                .is_none()
        );
        assert_eq!(s.largest_value_within(1_048_588), Some(687));
        let text = s.refusal("randomuser.raw", 1_048_588).unwrap();
        assert!(text.contains("EXTRACT_RESULTS=5000"), "{text}");
        assert!(text.contains("lower EXTRACT_RESULTS to 687"), "{text}");
        // The default, 500 users, fits Kafka's default limit.
        assert!(sizing(500).refusal("t", 1_048_588).is_none());
    }
}
