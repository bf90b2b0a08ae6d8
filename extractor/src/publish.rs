//! The idempotent producer and the raw-message contract (see `etl_common::contract`).
//!
//! `enable.idempotence` + `acks=all` make librdkafka's own retries duplicate-free, and an
//! unbounded `message.timeout.ms` means a broker outage is waited out inside librdkafka rather
//! than surfacing as a failure we would have to re-send (which could duplicate). A delivery
//! error that still comes back is permanent (too large, not authorised) and stops the service.

use crate::source::Fetched;
use anyhow::Context;
use etl_common::contract::{self, header};
use etl_common::kafka::KafkaArgs;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use std::time::Duration;
use uuid::Uuid;

/// A raw message ready to publish.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The key: a UUIDv7 naming this fetch end to end.
    pub fetch_id: Uuid,
    /// The accepted response.
    pub fetched: Fetched,
    /// The URL fetched, credentials removed.
    pub source_url: String,
}

/// What purging did to a send that had not been acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purged {
    /// It was still queued in this process: it never reached the broker.
    Queued,
    /// It was on the wire: the broker may have written it.
    InFlight,
}

/// Whether `e` is a purge (after the shutdown grace), and of which kind.
pub fn purged(e: &KafkaError) -> Option<Purged> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::PurgeQueue) => Some(Purged::Queued),
        Some(C::PurgeInflight) => Some(Purged::InFlight),
        _ => None,
    }
}

/// Whether a delivery error means the record can never fit: the producer's `message.max.bytes`
/// or the topic's `max.message.bytes`.
pub fn is_too_large(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge)
    )
}

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Landed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Publishes raw messages to one topic.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    instance: String,
}

impl Publisher {
    /// Creates the producer; no connection is made until the first send.
    pub fn new(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Self> {
        let mut cfg = kafka.client_config()?;
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("compression.type", "lz4")
            .set("message.max.bytes", contract::MAX_MESSAGE_BYTES.to_string())
            .set("linger.ms", "5")
            // Never auto-create the topic by producing to it or asking for its metadata: a
            // broker-made topic has the broker's ~1 MB limit; the start-up check creates it.
            .set("allow.auto.create.topics", "false")
            .set("client.id", "randomuser-extractor");
        let producer: FutureProducer = cfg.create().context("cannot create the Kafka producer")?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_string());
        Ok(Self {
            producer,
            topic: topic.to_string(),
            instance: format!("{host}/{}", std::process::id()),
        })
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one message and waits for the broker's acknowledgement (however long an outage lasts).
    pub async fn send(&self, msg: &RawMessage) -> Result<Landed, KafkaError> {
        let key = msg.fetch_id.to_string();
        let fetched_at = contract::format_fetched_at(msg.fetched.fetched_at);
        let users = msg.fetched.users.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: header::SCHEMA,
                value: Some(contract::SCHEMA_VERSION),
            })
            .insert(Header {
                key: header::FETCHED_AT,
                value: Some(fetched_at.as_str()),
            })
            .insert(Header {
                key: header::SOURCE_URL,
                value: Some(msg.source_url.as_str()),
            })
            .insert(Header {
                key: header::PRODUCER,
                value: Some(self.instance.as_str()),
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
        let record = FutureRecord::to(&self.topic)
            .key(key.as_str())
            .payload(&msg.fetched.body[..])
            .timestamp(msg.fetched.fetched_at.timestamp_millis())
            .headers(headers);
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|d| Landed {
                partition: d.partition,
                offset: d.offset,
            })
            .map_err(|(e, _)| e)
    }

    /// True when the broker answers a metadata request for our topic within `timeout`.
    pub async fn broker_reachable(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Gives up on everything not yet acknowledged (after the shutdown grace), so the producer
    /// can be closed while the broker is unreachable instead of waiting for it forever.
    pub fn abandon(&self) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
    }

    /// Waits up to `timeout` for everything queued to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}
