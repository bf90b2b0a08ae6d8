//! Batching: records gather until the batch holds `BATCH_MAX_RECORDS` or its oldest record is
//! `BATCH_MAX_AGE` old, whichever comes first, so an idle partition still flushes on time.
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
    /// The message key (the extractor's fetch id).
    pub key: Option<String>,
    /// The value.
    pub payload: Option<Vec<u8>>,
    /// The fetch time: the `etl-fetched-at` header, else the message timestamp.
    pub fetched_at: DateTime<Utc>,
}

impl SourceRecord {
    /// Takes what the loader needs from a consumed message.
    pub fn from_message(m: &OwnedMessage) -> Self {
        let header_time = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == header::FETCHED_AT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(contract::parse_fetched_at)
        });
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
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: m.payload().map(<[u8]>::to_vec),
            fetched_at,
        }
    }
}

/// A record that transformed: its raw row and its users.
#[derive(Debug, Clone)]
pub struct LoadRecord {
    /// Deterministic id from the coordinates.
    pub raw_id: Uuid,
    /// Where it came from, and its payload as text.
    pub source: SourceRecord,
    /// The payload as UTF-8 JSON text (validated by the transform).
    pub payload_text: String,
    /// The users.
    pub users: Vec<ProcessedUser>,
}

/// A record that did not, and why.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The record.
    pub source: SourceRecord,
    /// The reason.
    pub error: TransformError,
}

/// Records gathering towards a flush.
#[derive(Debug, Default)]
pub struct Batch {
    records: Vec<SourceRecord>,
    opened: Option<Instant>,
}

impl Batch {
    /// Adds a record; the first one starts the age clock.
    pub fn push(&mut self, r: SourceRecord) {
        if self.records.is_empty() {
            self.opened = Some(Instant::now());
        }
        self.records.push(r);
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// When the batch must close by age, if it holds anything.
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.opened.map(|t| t + max_age)
    }

    /// Takes the records out, leaving an empty batch.
    pub fn take(&mut self) -> Vec<SourceRecord> {
        self.opened = None;
        std::mem::take(&mut self.records)
    }

    /// Drops the records of partitions no longer ours (after a revoke), uncommitted.
    pub fn retain_partitions(&mut self, keep: impl Fn(&str, i32) -> bool) -> usize {
        let before = self.records.len();
        self.records.retain(|r| keep(&r.topic, r.partition));
        if self.records.is_empty() {
            self.opened = None;
        }
        before - self.records.len()
    }
}

/// Splits records into loadable ones and poison. Pure apart from the clock it is given.
pub fn decode(
    records: Vec<SourceRecord>,
    max_bytes: usize,
    now: DateTime<Utc>,
) -> (Vec<LoadRecord>, Vec<Poison>) {
    let mut good = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    for source in records {
        let raw_id = transform::raw_id(&source.topic, source.partition, source.offset);
        let result = match source.payload.as_deref() {
            None => Err(TransformError::NoPayload),
            Some(p) => transform::check_size(p, max_bytes)
                .and_then(|()| transform::transform(p, raw_id, now)),
        };
        match result {
            Ok(users) => {
                // The transform validated UTF-8; this cannot fail, but never panic on input.
                let payload_text =
                    String::from_utf8_lossy(source.payload.as_deref().unwrap_or_default())
                        .into_owned();
                good.push(LoadRecord {
                    raw_id,
                    source,
                    payload_text,
                    users,
                });
            }
            Err(error) => bad.push(Poison { source, error }),
        }
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
        let (ok, poison) = decode(recs, 1 << 20, Utc::now());
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
        let (_, too_big) = decode(vec![rec(0, 9, good)], 100, Utc::now());
        assert_eq!(too_big[0].error.kind(), "too_large");
    }

    #[tokio::test(start_paused = true)]
    async fn age_deadline_starts_with_the_first_record() {
        let mut b = Batch::default();
        assert_eq!(b.deadline(Duration::from_secs(1)), None);
        b.push(rec(0, 0, b""));
        let d = b.deadline(Duration::from_secs(1)).unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        b.push(rec(0, 1, b""));
        assert_eq!(
            b.deadline(Duration::from_secs(1)),
            Some(d),
            "later records do not extend the age"
        );
        assert_eq!(b.take().len(), 2);
        assert!(b.is_empty() && b.deadline(Duration::from_secs(1)).is_none());
    }
}
