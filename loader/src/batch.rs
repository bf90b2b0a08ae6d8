//! Batching: records gather until the batch holds `BATCH_MAX_RECORDS`, its oldest record is
//! `BATCH_MAX_AGE` old, or nothing has arrived for `BATCH_LINGER` (the consumer has caught up),
//! whichever comes first: a backlog is written in whole batches, a trickle at once.
//! Then the batch is decoded into loadable records and poison, and knows the offsets to commit.

use crate::transform::{self, ProcessedUser, TransformError};
use chrono::{DateTime, Utc};
use etl_common::contract::{self, header};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedMessage};
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
}

impl SourceRecord {
    /// Takes what the loader needs from a consumed message.
    pub fn from_message(m: &OwnedMessage) -> Self {
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
}

impl LoadRecord {
    /// The record's payload byte for byte, as the topic holds it (for the dead-letter topic).
    pub fn original(&self) -> &[u8] {
        self.source
            .payload
            .as_deref()
            .unwrap_or(self.payload_text.as_bytes())
    }
}

/// A record that did not, and why.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The record.
    pub source: SourceRecord,
    /// The reason.
    pub error: PoisonReason,
}

/// Why a record goes to the dead-letter topic instead of the sinks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    /// The transform refused it.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// Transformed, but PostgreSQL refused its values (a data error, not an outage).
    #[error("PostgreSQL refused the record's data: {0}")]
    RejectedBySink(String),
    /// A record with the same identity but other bytes was loaded before: which one is right
    /// is for a person to decide, and the first one stays.
    #[error("{record_key} was loaded before with other bytes (SHA-256 {loaded}, this one {this})")]
    Conflict {
        /// The shared identity.
        record_key: String,
        /// Digest of the loaded record's payload, hex.
        loaded: String,
        /// Digest of this record's payload, hex.
        this: String,
    },
}

impl PoisonReason {
    /// The `kind` header / metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            PoisonReason::Transform(e) => e.kind(),
            PoisonReason::RejectedBySink(_) => "rejected_by_sink",
            PoisonReason::Conflict { .. } => "conflict",
        }
    }
}

/// A rebalance, as librdkafka reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rebalanced {
    /// These (topic, partition) are no longer ours.
    Revoked(Vec<(String, i32)>),
    /// These are ours now, read from their committed offsets.
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
    let mut good = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    for mut source in records {
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
            transform::transform_owned(p, raw_id, now, strip_login_secrets).map_err(
                |(error, bytes)| {
                    source.payload = Some(bytes);
                    error
                },
            )
        });
        match result {
            Ok(t) => {
                source.payload = t.original;
                good.push(LoadRecord {
                    raw_id,
                    record_key: identity.key,
                    digest: identity.digest,
                    source,
                    payload_text: t.stored,
                    users: t.users,
                })
            }
            Err(error) => bad.push(Poison {
                source,
                error: error.into(),
            }),
        }
    }
    (good, bad)
}

/// [`decode`] split over `threads` threads (order kept): parsing is most of the loader's own
/// CPU, and PostgreSQL sits idle while a batch is decoded. Call it off the async runtime.
pub fn decode_parallel(
    records: Vec<SourceRecord>,
    max_bytes: usize,
    now: DateTime<Utc>,
    strip_login_secrets: bool,
    threads: usize,
) -> (Vec<LoadRecord>, Vec<Poison>) {
    let threads = threads.clamp(1, records.len().max(1));
    if threads == 1 {
        return decode(records, max_bytes, now, strip_login_secrets);
    }
    let per = records.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = records;
    while rest.len() > per {
        let tail = rest.split_off(per);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let parts: Vec<(Vec<LoadRecord>, Vec<Poison>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| scope.spawn(move || decode(chunk, max_bytes, now, strip_login_secrets)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (g, b) in parts {
        good.extend(g);
        bad.extend(b);
    }
    (good, bad)
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
mod tests {
    use super::*;

    fn rec(p: i32, o: i64, payload: &[u8]) -> SourceRecord {
        SourceRecord {
            topic: "t".into(),
            partition: p,
            offset: o,
            key: None,
            fetch_id: Some(format!("f{p}-{o}")),
            payload: Some(payload.to_vec()),
            fetched_at: Utc::now(),
        }
    }

    #[test]
    fn commit_offsets_are_one_past_the_highest_per_partition() {
        let rs = [
            rec(0, 5, b""),
            rec(0, 7, b""),
            rec(1, 2, b""),
            rec(0, 6, b""),
        ];
        let offs = next_offsets(&rs);
        assert_eq!(offs.get(&("t".to_string(), 0)), Some(&8));
        assert_eq!(offs.get(&("t".to_string(), 1)), Some(&3));
        assert_eq!(offs.len(), 2);
    }

    #[test]
    fn decode_separates_poison_and_keeps_order() {
        let good = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
        let legacy = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");
        let recs = vec![
            rec(0, 0, good),
            rec(0, 1, legacy),
            rec(0, 2, b"nope"),
            rec(0, 3, good),
        ];
        let (ok, poison) = decode(recs, 1 << 20, Utc::now(), true);
        assert_eq!(
            ok.iter().map(|r| r.source.offset).collect::<Vec<_>>(),
            vec![0, 3]
        );
        assert_eq!(ok[0].users.len(), 20);
        assert_eq!(
            poison
                .iter()
                .map(|p| (p.source.offset, p.error.kind()))
                .collect::<Vec<_>>(),
            vec![(1, "legacy_shape"), (2, "not_json")]
        );
        // Poison keeps its bytes for the dead-letter topic; loaded records lose their secrets.
        assert_eq!(poison[0].source.payload.as_deref(), Some(&legacy[..]));
        assert_eq!(poison[1].source.payload.as_deref(), Some(&b"nope"[..]));
        assert!(!ok[0].payload_text.contains("\"password\""));
        assert_eq!(
            ok[0].original(),
            &good[..],
            "the original is kept for the DLQ"
        );
        assert!(ok[0].payload_text.contains("\"uuid\""));
        let (_, too_big) = decode(vec![rec(0, 9, good)], 100, Utc::now(), true);
        assert_eq!(too_big[0].error.kind(), "too_large");
        assert_eq!(too_big[0].source.payload.as_deref(), Some(&good[..]));
        let bad_utf8 = decode(vec![rec(0, 10, b"{\"a\":\"\xff\"}")], 100, Utc::now(), true).1;
        assert_eq!(bad_utf8[0].error.kind(), "invalid_utf8");
        assert_eq!(
            bad_utf8[0].source.payload.as_deref(),
            Some(&b"{\"a\":\"\xff\"}"[..])
        );
        let (kept, _) = decode(vec![rec(0, 11, good)], 1 << 20, Utc::now(), false);
        assert_eq!(
            kept[0].payload_text.as_bytes(),
            &good[..],
            "kept byte for byte"
        );
    }

    #[test]
    fn parallel_decode_matches_sequential_decode_in_order() {
        let good = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
        let recs: Vec<SourceRecord> = (0..23)
            .map(|o| rec(0, o, if o % 5 == 3 { b"nope" } else { good }))
            .collect();
        let now = Utc::now();
        let (g1, b1) = decode(recs.clone(), 1 << 20, now, true);
        for threads in [1, 2, 3, 8, 64] {
            let (g, b) = decode_parallel(recs.clone(), 1 << 20, now, true, threads);
            let offs = |v: &[LoadRecord]| v.iter().map(|r| r.source.offset).collect::<Vec<_>>();
            assert_eq!(offs(&g), offs(&g1), "{threads} threads");
            assert_eq!(
                b.iter().map(|p| p.source.offset).collect::<Vec<_>>(),
                b1.iter().map(|p| p.source.offset).collect::<Vec<_>>()
            );
            assert!(
                g.iter()
                    .zip(&g1)
                    .all(|(a, b)| a.users == b.users && a.payload_text == b.payload_text)
            );
        }
        assert!(decode_parallel(Vec::new(), 1, now, true, 4).0.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn age_deadline_starts_with_the_first_record() {
        let (age, linger) = (Duration::from_secs(1), Duration::from_secs(10));
        let mut b = Batch::default();
        assert_eq!(b.deadline(age, linger), None);
        b.push(rec(0, 0, b""));
        let d = b.deadline(age, linger).unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        b.push(rec(0, 1, b""));
        assert_eq!(
            b.deadline(age, linger),
            Some(d),
            "later records do not extend the age"
        );
        assert_eq!(b.bytes(), 0);
        b.push(rec(1, 2, b"12345"));
        assert_eq!(b.bytes(), 5);
        assert_eq!(b.retain_partitions(|_, p| p == 0), 1);
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.take().len(), 2);
        assert!(b.is_empty() && b.deadline(age, linger).is_none());
    }

    #[test]
    fn only_a_real_fetch_id_is_an_identity() {
        assert_eq!(usable_fetch_id(b"0190-a"), Some("0190-a".to_string()));
        assert_eq!(
            usable_fetch_id(b""),
            None,
            "empty: every such record would be one"
        );
        assert_eq!(
            usable_fetch_id(b"\xff\xfe"),
            None,
            "not UTF-8: would collapse when decoded lossily"
        );
        assert_eq!(
            usable_fetch_id(&[b'a'; MAX_FETCH_ID_BYTES]).map(|s| s.len()),
            Some(MAX_FETCH_ID_BYTES)
        );
        assert_eq!(usable_fetch_id(&[b'a'; MAX_FETCH_ID_BYTES + 1]), None);
    }

    /// A partition revoked and assigned back within one poll (a member leaving and coming
    /// back, a lost assignment): what was fetched before the revocation goes, the first record
    /// of the new assignment stays, and the commit covers it.
    #[test]
    fn events_apply_in_the_order_they_happened() {
        let p0 = vec![("t".to_string(), 0)];
        let mut b = Batch::default();
        b.push(rec(0, 5, b"a"));
        b.push(rec(0, 6, b"b"));
        b.push(rec(1, 9, b"c"));
        assert_eq!(b.apply(&Rebalanced::Revoked(p0.clone())), 2);
        assert_eq!(b.apply(&Rebalanced::Assigned(p0.clone())), 0);
        b.push(rec(0, 5, b"a")); // re-read from the committed offset
        assert_eq!(b.len(), 2);
        let offsets = next_offsets(&b.take());
        assert_eq!(offsets.get(&("t".to_string(), 0)), Some(&6));
        assert_eq!(offsets.get(&("t".to_string(), 1)), Some(&10));
    }

    #[tokio::test(start_paused = true)]
    async fn linger_closes_a_batch_once_records_stop_arriving() {
        let (age, linger) = (Duration::from_secs(5), Duration::from_millis(50));
        let mut b = Batch::default();
        b.push(rec(0, 0, b""));
        let first = b.deadline(age, linger).unwrap();
        tokio::time::advance(Duration::from_millis(30)).await;
        b.push(rec(0, 1, b""));
        let second = b.deadline(age, linger).unwrap();
        assert_eq!(
            second - first,
            Duration::from_millis(30),
            "each record restarts the linger"
        );
        assert_eq!(second, Instant::now() + linger);
        // A steady trickle never lingers out, but the age still bounds the batch.
        for i in 2..200 {
            tokio::time::advance(Duration::from_millis(40)).await;
            b.push(rec(0, i, b""));
        }
        let opened = b.opened.unwrap();
        assert_eq!(b.deadline(age, linger), Some(opened + age));
    }
}
