//! The raw message: the contract between the extractor and the loader.
//!
//! value = the exact response body randomuser.me returned; key = the fetch id (UUIDv7), also
//! in the `etl-fetch-id` header, the record's identity;
//! timestamp = the fetch time, so replay "from 09:00" means "what was fetched from 09:00";
//! headers = the names below.

use chrono::{DateTime, Utc};

/// Version of the message layout; a loader refuses (dead-letters) what it does not know.
pub const SCHEMA_VERSION: &str = "randomuser.raw.v1";

/// The largest payload the pipeline carries (16 MiB): the default of `LOADER_MAX_RECORD_BYTES`.
/// The API's largest answer, 5,000 users, is about 5.5 MB of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// The largest Kafka message (the payload plus key, headers and record-batch overhead): every
/// producer's `message.max.bytes` and the `max.message.bytes` of every topic the project
/// creates. One figure, so no stage refuses what another accepted. Kafka's own default is about
/// 1 MB, which a 1,000-user answer already exceeds.
pub const MAX_MESSAGE_BYTES: usize = MAX_PAYLOAD_BYTES + (1 << 20);

/// The randomuser.me API version the extractor pins and the loader's transform expects.
pub const API_VERSION: &str = "1.4";

/// Header names on every raw message.
pub mod header {
    /// Layout version, [`super::SCHEMA_VERSION`].
    pub const SCHEMA: &str = "etl-schema";
    /// RFC 3339 UTC instant the response was received.
    pub const FETCHED_AT: &str = "etl-fetched-at";
    /// The URL fetched, without credentials.
    pub const SOURCE_URL: &str = "etl-source-url";
    /// Which extractor instance produced it (host and pid), for tracing a bad producer.
    pub const PRODUCER: &str = "etl-producer";
    /// The API version the URL was pinned to.
    pub const API_VERSION: &str = "etl-api-version";
    /// How many users the response holds, so consumers can count without parsing.
    pub const USER_COUNT: &str = "etl-user-count";
    /// The fetch id (also the key): the record's identity, wherever it sits in the topic.
    /// The key alone is not trusted as an identity, because other producers key by anything.
    pub const FETCH_ID: &str = "etl-fetch-id";
}

/// Header names the loader adds to a dead-lettered record, beside the record's own headers
/// (which it keeps: a fixed dead letter re-published with them is the same record). A dead
/// letter is stamped with the time it was dead-lettered; its fetch time is `etl-fetched-at`.
pub mod dlq_header {
    /// What every name below starts with.
    pub const PREFIX: &str = "etl-dlq-";
    /// A short machine-readable kind, e.g. `not_json`, `legacy_shape`, `too_large`.
    pub const ERROR_KIND: &str = "etl-dlq-error-kind";
    /// The human-readable reason.
    pub const ERROR_MESSAGE: &str = "etl-dlq-error-message";
    /// Where the record came from, so it can be found and replayed.
    pub const SOURCE_TOPIC: &str = "etl-dlq-source-topic";
    /// Source partition.
    pub const SOURCE_PARTITION: &str = "etl-dlq-source-partition";
    /// Source offset.
    pub const SOURCE_OFFSET: &str = "etl-dlq-source-offset";
    /// The loader version that refused it.
    pub const LOADER_VERSION: &str = "etl-dlq-loader-version";
    /// A stable id of the dead letter (UUIDv5 of the record's fetch id and payload digest):
    /// the DLQ is at-least-once, so readers dedupe on it.
    pub const DEAD_LETTER_ID: &str = "etl-dlq-id";
    /// SHA-256 of the original payload, hex (always set; the only trace of a payload too
    /// large for the DLQ).
    pub const PAYLOAD_SHA256: &str = "etl-dlq-payload-sha256";
    /// Size of the original payload in bytes.
    pub const PAYLOAD_BYTES: &str = "etl-dlq-payload-bytes";
    /// `true` when the payload was left out because it is larger than the DLQ takes.
    pub const PAYLOAD_OMITTED: &str = "etl-dlq-payload-omitted";
}

/// Formats a fetch time the way the `etl-fetched-at` header carries it.
pub fn format_fetched_at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses an `etl-fetched-at` header value.
pub fn parse_fetched_at(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_at_round_trips_with_microseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T09:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let text = format_fetched_at(at);
        assert_eq!(text, "2026-11-24T09:00:00.123456Z");
        assert_eq!(parse_fetched_at(&text), Some(at));
        assert_eq!(parse_fetched_at("yesterday"), None);
    }
}
