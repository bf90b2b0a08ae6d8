//! The preloaded topic: responses built from the real captures the way the stub serves them
//! (each user a fresh `login.uuid`), produced with the headers the extractor sets.

use anyhow::Context;
use chrono::{DateTime, Utc};
use etl_common::contract::{self, header};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::time::Duration;

/// One response body to publish.
pub struct Payload {
    /// The body.
    pub body: Vec<u8>,
    /// Users in it.
    pub users: usize,
}

/// A record as it landed in the topic.
pub struct Produced {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The fetch time carried in its header.
    pub fetched_at: DateTime<Utc>,
    /// Its key (the fetch id).
    pub key: String,
    /// Index into the payloads.
    pub payload: usize,
}

/// The preloaded topic.
pub struct Topic {
    /// The bodies.
    pub payloads: Vec<Payload>,
    /// Where each landed.
    pub records: Vec<Produced>,
    /// Per partition, one past the last offset: what "zero lag" means.
    pub ends: BTreeMap<i32, i64>,
    /// Users in the topic.
    pub users: u64,
    /// Payload bytes in the topic.
    pub bytes: u64,
}

/// Builds `records` bodies of `users` users each, seeded by `seed`.
pub fn build(records: usize, users: usize, seed: &str) -> anyhow::Result<Vec<Payload>> {
    let pool = randomuser_stub::fixture_users()?;
    build_pages(&pool, 0..records, users, seed)
}

/// The bodies of pages `pages` (from 0) of [`build`]'s sequence, from the fixtures' `pool`: a
/// slice of a topic too big to hold at once.
fn build_pages(
    pool: &[serde_json::Value],
    pages: std::ops::Range<usize>,
    users: usize,
    seed: &str,
) -> anyhow::Result<Vec<Payload>> {
    pages
        .map(|page| {
            let (body, uuids) = randomuser_stub::response(pool, seed, page as u64 + 1, users);
            Ok(Payload {
                body: serde_json::to_vec(&body).context("serialising a response")?,
                users: uuids.len(),
            })
        })
        .collect()
}

fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("message.max.bytes", "16777216")
        .create()
        .context("cannot create a Kafka producer")
}

/// Publishes every body (idempotent, acks=all, lz4 — as the extractor does) and returns where
/// each landed.
pub async fn produce(brokers: &str, topic: &str, payloads: Vec<Payload>) -> anyhow::Result<Topic> {
    let producer = producer(brokers)?;
    let records = send(&producer, topic, &payloads, 0).await?;
    Ok(Topic {
        ends: ends(&records),
        users: payloads.iter().map(|p| p.users as u64).sum(),
        bytes: payloads.iter().map(|p| p.body.len() as u64).sum(),
        payloads,
        records,
    })
}

/// [`build`] and [`produce`] for a topic too big to hold: `records` bodies built and published
/// `chunk` at a time, each chunk's bodies dropped once acknowledged. The returned topic keeps
/// where every record landed and the counts, not the bodies (`payloads` is empty).
pub async fn produce_in_chunks(
    brokers: &str,
    topic: &str,
    records: usize,
    users: usize,
    seed: &str,
    chunk: usize,
) -> anyhow::Result<Topic> {
    let pool = randomuser_stub::fixture_users()?;
    let producer = producer(brokers)?;
    let chunk = chunk.max(1);
    let mut out = Topic {
        payloads: Vec::new(),
        records: Vec::with_capacity(records),
        ends: BTreeMap::new(),
        users: 0,
        bytes: 0,
    };
    for start in (0..records).step_by(chunk) {
        let payloads = build_pages(&pool, start..(start + chunk).min(records), users, seed)?;
        out.records
            .extend(send(&producer, topic, &payloads, start).await?);
        out.users += payloads.iter().map(|p| p.users as u64).sum::<u64>();
        out.bytes += payloads.iter().map(|p| p.body.len() as u64).sum::<u64>();
    }
    out.ends = ends(&out.records);
    Ok(out)
}

/// Sends `payloads` (numbered from `first`) 64 at a time and returns where each landed.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    payloads: &[Payload],
    first: usize,
) -> anyhow::Result<Vec<Produced>> {
    let mut records = Vec::with_capacity(payloads.len());
    for (chunk_start, chunk) in payloads
        .chunks(64)
        .enumerate()
        .map(|(i, c)| (first + i * 64, c))
    {
        let sends = chunk.iter().enumerate().map(|(i, p)| {
            let fetched_at = Utc::now();
            let key = uuid::Uuid::now_v7().to_string();
            async move {
                let users = p.users.to_string();
                let at = contract::format_fetched_at(fetched_at);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: header::SCHEMA,
                        value: Some(contract::SCHEMA_VERSION),
                    })
                    .insert(Header {
                        key: header::FETCHED_AT,
                        value: Some(at.as_str()),
                    })
                    .insert(Header {
                        key: header::SOURCE_URL,
                        value: Some("bench://preload"),
                    })
                    .insert(Header {
                        key: header::PRODUCER,
                        value: Some("etl-bench"),
                    })
                    .insert(Header {
                        key: header::API_VERSION,
                        value: Some(contract::API_VERSION),
                    })
                    .insert(Header {
                        key: header::USER_COUNT,
                        value: Some(users.as_str()),
                    })
                    .insert(Header {
                        key: header::FETCH_ID,
                        value: Some(key.as_str()),
                    });
                let record = FutureRecord::to(topic)
                    .key(&key)
                    .payload(&p.body)
                    .timestamp(fetched_at.timestamp_millis())
                    .headers(headers);
                let delivery = producer
                    .send(record, Duration::from_secs(60))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
                anyhow::Ok(Produced {
                    partition: delivery.partition,
                    offset: delivery.offset,
                    fetched_at,
                    key,
                    payload: chunk_start + i,
                })
            }
        });
        for r in futures::future::join_all(sends).await {
            records.push(r?);
        }
    }
    Ok(records)
}

/// Per partition, one past the last offset of `records`.
fn ends(records: &[Produced]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for r in records {
        let e = ends.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    ends
}
