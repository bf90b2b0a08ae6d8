//! The two row shapes. Column order is the Parquet files' order: add at the end, never move.
//!
//! Dictionary encoding only where a column holds few distinct values; ids, names, the payload
//! and timestamps are nearly unique per row and are written plain.

use crate::batch::LoadRecord;
use chrono::{DateTime, Utc};
use uuid::Uuid;

row_shape! {
    /// `raw/` Parquet rows and `raw_data` rows: one per Kafka record.
    pub shape RawColumns<'a> = &'a LoadRecord;
    columns {
        /// The record's deterministic id.
        raw_id: Uuid = |r| r.raw_id => Plain, Column;
        /// Source topic.
        topic: &str = |r| r.source.topic.as_str() => Dictionary, Column;
        /// Source partition.
        kafka_partition: i32 = |r| r.source.partition => Dictionary, Column;
        /// Source offset.
        kafka_offset: i64 = |r| r.source.offset => Plain, Column;
        /// The message key (the extractor's fetch id).
        fetch_id: Option<&str> = |r| r.source.key.as_deref() => Plain, Column;
        /// The fetch time.
        fetched_at: DateTime<Utc> = |r| r.source.fetched_at => Plain, Column;
        /// Users in the payload.
        user_count: i32 = |r| r.user_count() => Dictionary, Column;
        /// The payload as UTF-8 JSON (`jsonb` in PostgreSQL).
        payload: &str = |r| r.payload_text.as_str() => Plain, Jsonb;
        /// The record's identity, unique in PostgreSQL.
        record_key: &str = |r| r.record_key.as_str() => Skip, Column;
        /// SHA-256 of the payload as the topic holds it.
        payload_sha256: &[u8] = |r| &r.digest[..] => Skip, Column;
        /// Payload size in bytes.
        payload_bytes: i32 = |r| i32::try_from(r.payload_text.len()).unwrap_or(i32::MAX)
            => Skip, Column;
    }
}

row_shape! {
    /// `processed/` Parquet rows and `processed_data` rows: one per user, with its record.
    pub shape ProcessedColumns<'a> = (&'a LoadRecord, &'a ProcessedUser);
    /// One user, flattened: a `processed_data` row and a processed Parquet row.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProcessedUser;
    columns {
        /// The raw record it came from.
        raw_id: Uuid => Plain, Column;
        /// Position in the response's `results`: with `raw_id`, the natural key.
        user_index: i32 => Dictionary, Column;
        /// `login.uuid`.
        user_uuid: Option<String> => Plain, Column;
        /// Title, first and last name, space-separated.
        full_name: String => Plain, Column;
        /// `name.title`.
        title: Option<String> => Dictionary, Column;
        /// `name.first`.
        first_name: String => Plain, Column;
        /// `name.last`.
        last_name: String => Plain, Column;
        /// `email`.
        email: String => Plain, Column;
        /// `gender`.
        gender: Option<String> => Dictionary, Column;
        /// `nat`, the nationality code.
        nationality: Option<String> => Dictionary, Column;
        /// `location.city`.
        city: Option<String> => Plain, Column;
        /// `location.state`.
        state: Option<String> => Dictionary, Column;
        /// `location.country`.
        country: Option<String> => Dictionary, Column;
        /// `location.postcode`, a number or a string in the API, always text here (leading
        /// zeros kept).
        postcode: Option<String> => Plain, Column;
        /// `dob.date`.
        date_of_birth: Option<DateTime<Utc>> => Plain, Column;
        /// `registered.date`.
        registered_date: DateTime<Utc> => Plain, Column;
        /// The record's fetch time.
        fetched_at: DateTime<Utc> = |&(r, _)| r.source.fetched_at => Plain, Column;
        /// When the loader transformed it (one value per batch).
        processed_at: DateTime<Utc> => Dictionary, Column;
        /// The record's topic.
        source_topic: &str = |&(r, _)| r.source.topic.as_str() => Dictionary, Skip;
        /// The record's partition.
        source_partition: i32 = |&(r, _)| r.source.partition => Dictionary, Skip;
        /// The record's offset.
        source_offset: i64 = |&(r, _)| r.source.offset => Plain, Skip;
    }
}
