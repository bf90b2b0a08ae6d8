//! Batching: records gather until the batch holds `BATCH_MAX_RECORDS`, its oldest record is
//! `BATCH_MAX_AGE` old, or nothing has arrived for `BATCH_LINGER` (the consumer has caught up),
//! whichever comes first: a backlog is written in whole batches, a trickle at once.
//! Then the batch is decoded into loadable records and poison, and knows the offsets to commit.

use crate::poison::Poison;
use crate::transform::{self, ProcessedUser, TransformError};
use chrono::{DateTime, Utc};
use etl_common::contract::{self, header};
use rdkafka::Message;
use rdkafka::message::Headers;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// A consumed record, owned, with the fields the loader needs.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The message key (the extractor's fetch id; anything for other producers).
    pub key: Option<String>,
    /// The extractor's fetch id: the `etl-fetch-id` header, or the key of a record that carries
    /// the extractor's `etl-schema` header (written before that header existed). `None` for
    /// records other tools produced: their identity is their payload's digest.
    pub fetch_id: Option<String>,
    /// The value.
    pub payload: Option<Vec<u8>>,
    /// The fetch time: the `etl-fetched-at` header, else the message timestamp.
    pub fetched_at: DateTime<Utc>,
    /// The message's headers as the topic holds them: a dead letter carries them on, so a
    /// fixed dead letter re-published with its headers keeps its identity and fetch time.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl SourceRecord {
    /// Takes what the loader needs from a consumed message, borrowed from librdkafka's buffer:
    /// the payload is copied once, here (detaching the message first would copy it twice).
    pub fn from_message<M: Message>(m: &M) -> Self {
        let text_header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
            })
        };
        let header_time = text_header(header::FETCHED_AT).and_then(contract::parse_fetched_at);
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let fetch_id = match text_header(header::FETCH_ID) {
            Some(id) => usable_fetch_id(id.as_bytes()),
            None if text_header(header::SCHEMA) == Some(contract::SCHEMA_VERSION) => {
                m.key().and_then(usable_fetch_id)
            }
            None => None,
        };
        let fetched_at = header_time
            .or_else(|| {
                m.timestamp()
                    .to_millis()
                    .and_then(DateTime::from_timestamp_millis)
            })
            .unwrap_or_else(Utc::now);
        Self {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key,
            fetch_id,
            payload: m.payload().map(<[u8]>::to_vec),
            fetched_at,
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The longest fetch id taken as an identity (the extractor's are 36-byte UUIDs); a longer one
/// would not fit a btree index entry and is no identity anyone meant.
pub const MAX_FETCH_ID_BYTES: usize = 256;

/// `raw` as a fetch id: non-empty UTF-8 of at most [`MAX_FETCH_ID_BYTES`], else `None` (the
/// record is then identified by its payload). Empty or mangled ids would make unrelated records
/// one identity.
pub fn usable_fetch_id(raw: &[u8]) -> Option<String> {
    let id = std::str::from_utf8(raw).ok()?;
    (!id.is_empty() && id.len() <= MAX_FETCH_ID_BYTES).then(|| id.to_string())
}

/// A record that transformed: its raw row and its users.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    /// Deterministic id from the record's identity (see [`transform::Identity`]).
    pub raw_id: Uuid,
    /// The identity's key: `raw_data.record_key`, unique.
    pub record_key: String,
    /// SHA-256 of the payload as the topic holds it: same key, other digest = a conflict.
    pub digest: [u8; 32],
    /// Where it came from, and its payload as text.
    pub source: SourceRecord,
    /// The payload as UTF-8 JSON text (validated by the transform).
    pub payload_text: String,
    /// The users.
    pub users: Vec<ProcessedUser>,
    /// How many users `raw_data` says the payload holds, for a raw file built from the stored
    /// rows without decoding them again (`users` is then empty); `None` everywhere else.
    pub stored_user_count: Option<i32>,
}

impl LoadRecord {
    /// Users in the payload: the decoded ones, or the stored count of a raw roll's row.
    pub fn user_count(&self) -> i32 {
        self.stored_user_count
            .unwrap_or_else(|| i32::try_from(self.users.len()).unwrap_or(i32::MAX))
    }

    /// The record's payload byte for byte, as the topic holds it (for the dead-letter topic).
    pub fn original(&self) -> &[u8] {
        self.source
            .payload
            .as_deref()
            .unwrap_or(self.payload_text.as_bytes())
    }
}

/// A rebalance, as librdkafka reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// These (topic, partition) are no longer ours.
    Revoked(Vec<(String, i32)>),
    /// These are ours now, read from their stored positions (else their committed offsets).
    Assigned(Vec<(String, i32)>),
}

/// Records gathering towards a flush.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<SourceRecord>,
    bytes: usize,
    opened: Option<Instant>,
    last: Option<Instant>,
}

impl Batch {
    /// Adds a record; the first one starts the age clock.
    pub fn push(&mut self, r: SourceRecord) {
        let now = Instant::now();
        if self.records.is_empty() {
            self.opened = Some(now);
        }
        self.last = Some(now);
        self.bytes += r.payload.as_ref().map_or(0, Vec::len);
        self.records.push(r);
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// When the batch must close, if it holds anything: its oldest record `max_age` old, or
    /// `linger` after the newest one arrived, whichever is sooner.
    pub fn deadline(&self, max_age: Duration, linger: Duration) -> Option<Instant> {
        let age = self.opened? + max_age;
        Some(self.last.map_or(age, |l| age.min(l + linger)))
    }

    /// Takes the records out, leaving an empty batch.
    pub fn take(&mut self) -> Vec<SourceRecord> {
        self.opened = None;
        self.last = None;
        self.bytes = 0;
        std::mem::take(&mut self.records)
    }

    /// Applies a rebalance: a revocation drops the (uncommitted) records of the revoked
    /// partitions, which their next owner reads again from the committed offset; an assignment
    /// changes nothing held. Returns the records dropped.
    pub fn apply(&mut self, event: &Rebalanced) -> usize {
        match event {
            Rebalanced::Revoked(parts) => {
                self.retain_partitions(|t, p| !parts.iter().any(|(rt, rp)| rt == t && *rp == p))
            }
            Rebalanced::Assigned(_) => 0,
        }
    }

    /// Drops the records of partitions no longer ours (after a revoke), uncommitted.
    pub fn retain_partitions(&mut self, keep: impl Fn(&str, i32) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|r| keep(&r.topic, r.partition));
        self.bytes = self
            .records
            .iter()
            .map(|r| r.payload.as_ref().map_or(0, Vec::len))
            .sum();
        if self.records.is_empty() {
            self.opened = None;
            self.last = None;
        }
        before - self.records.len()
    }
}

/// Splits records into loadable ones and poison. Pure apart from the clock it is given. A
/// loadable record's payload moves into its `payload_text` (without the users' login secrets
/// when `strip_login_secrets`; then `source.payload` keeps the original, else it is `None`);
/// poison keeps its payload byte for byte for the dead-letter topic. See [`LoadRecord::original`].
pub fn decode(
    records: Vec<SourceRecord>,
    max_bytes: usize,
    now: DateTime<Utc>,
    strip_login_secrets: bool,
) -> (Vec<LoadRecord>, Vec<Poison>) {
    split(
        records
            .into_iter()
            .map(|r| decode_one(r, max_bytes, now, strip_login_secrets)),
    )
}

/// [`decode`] over rayon's pool (order kept): parsing is most of the loader's own CPU, and
/// PostgreSQL sits idle while a batch is decoded. Call it off the async runtime.
pub fn decode_parallel(
    records: Vec<SourceRecord>,
    max_bytes: usize,
    now: DateTime<Utc>,
    strip_login_secrets: bool,
) -> (Vec<LoadRecord>, Vec<Poison>) {
    use rayon::prelude::*;
    let decoded: Vec<Decoded> = records
        .into_par_iter()
        .map(|r| decode_one(r, max_bytes, now, strip_login_secrets))
        .collect();
    split(decoded)
}

/// What one record decodes to.
enum Decoded {
    Load(LoadRecord),
    Poison(Poison),
}

fn split(decoded: impl IntoIterator<Item = Decoded>) -> (Vec<LoadRecord>, Vec<Poison>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for d in decoded {
        match d {
            Decoded::Load(record) => good.push(record),
            Decoded::Poison(poison) => bad.push(poison),
        }
    }
    (good, bad)
}

/// One record: loadable, or poison with its payload byte for byte.
fn decode_one(
    mut source: SourceRecord,
    max_bytes: usize,
    now: DateTime<Utc>,
    strip_login_secrets: bool,
) -> Decoded {
    let identity = transform::Identity::of(
        source.fetch_id.as_deref(),
        source.payload.as_deref().unwrap_or_default(),
    );
    let raw_id = identity.raw_id;
    let payload = match source.payload.take() {
        None => Err(TransformError::NoPayload),
        Some(p) => match transform::check_size(&p, max_bytes) {
            Ok(()) => Ok(p),
            Err(e) => {
                source.payload = Some(p);
                Err(e)
            }
        },
    };
    let result = payload.and_then(|p| {
        transform::transform_owned(p, raw_id, now, strip_login_secrets).map_err(|(error, bytes)| {
            source.payload = Some(bytes);
            error
        })
    });
    match result {
        Ok(t) => {
            source.payload = t.original;
            Decoded::Load(LoadRecord {
                raw_id,
                record_key: identity.key,
                digest: identity.digest,
                source,
                payload_text: t.stored,
                users: t.users,
                stored_user_count: None,
            })
        }
        Err(error) => Decoded::Poison(Poison {
            source,
            error: error.into(),
        }),
    }
}

/// The offsets to commit for `records`: per topic-partition, one past the highest offset.
pub fn next_offsets<'a>(
    records: impl IntoIterator<Item = &'a SourceRecord>,
) -> BTreeMap<(String, i32), i64> {
    let mut out: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in records {
        let e = out
            .entry((r.topic.clone(), r.partition))
            .or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    out
}

#[cfg(test)]
mod tests;
