//! The dead-letter topic: poison records, byte for byte, with their own headers and headers
//! saying why and where from, so the partition moves on and nothing is lost. An operator can
//! inspect, fix and re-publish: with its headers (`kcat -H`, any tool that copies them) a fixed
//! dead letter keeps its fetch id, so it loads once, however often it is re-published.
//!
//! At least once: a crash after the DLQ acknowledged a record but before the source offsets were
//! committed dead-letters it again on re-delivery. Each dead letter carries a stable id
//! (`etl-dlq-id`) so readers can dedupe.

use crate::poison::Poison;
use anyhow::Context;
use etl_common::contract::{self, dlq_header, header};
use etl_common::kafka::KafkaArgs;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// Publishes poison to `KAFKA_DLQ_TOPIC`.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    /// An idempotent, acks=all producer that waits out broker outages (no delivery timeout).
    pub fn new(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Self> {
        let mut cfg = kafka.client_config()?;
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("message.max.bytes", contract::MAX_MESSAGE_BYTES.to_string())
            .set("client.id", "randomuser-loader-dlq");
        let producer: FutureProducer = cfg
            .create()
            .context("cannot create the dead-letter producer")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one poison record and waits for the broker's acknowledgement. A record too large
    /// for the dead-letter topic (the producer's or the broker's limit) is sent as its headers
    /// alone, with the payload's digest and size, instead of being retried forever.
    pub async fn send(&self, poison: &Poison) -> Result<(), KafkaError> {
        match self.send_as(poison, true).await {
            Err(e) if is_too_large(&e) => {
                let size = poison.source.payload.as_ref().map_or(0, Vec::len);
                tracing::warn!(
                    bytes = size,
                    error = %e,
                    "poison too large for the dead-letter topic; dead-lettering its headers, digest and size without the payload"
                );
                self.send_as(poison, false).await
            }
            other => other,
        }
    }

    async fn send_as(&self, poison: &Poison, with_payload: bool) -> Result<(), KafkaError> {
        let src = &poison.source;
        let empty: [u8; 0] = [];
        let original: &[u8] = src.payload.as_deref().unwrap_or(&empty);
        let identity = crate::transform::Identity::of(src.fetch_id.as_deref(), original);
        // Stable across re-deliveries: the same record and bytes, the same id. A record with a
        // fetch id keeps it at any offset; one without (its identity its bytes alone, which
        // empty or identical junk payloads share) is told apart by where it sits.
        let name = match src.fetch_id {
            Some(_) => format!("{}/{}", identity.key, hex::encode(identity.digest)),
            None => format!(
                "{}/{}/{}/{}",
                identity.key, src.topic, src.partition, src.offset
            ),
        };
        let id = uuid::Uuid::new_v5(&DEAD_LETTER_NAMESPACE, name.as_bytes()).to_string();
        let digest = hex::encode(identity.digest);
        let size = original.len().to_string();
        let partition = src.partition.to_string();
        let offset = src.offset.to_string();
        let message = poison.error.to_string();
        // The original headers first (its fetch id, schema and fetch time), so a dead letter
        // fixed and re-published with its headers is the same record, fetched when it was;
        // a dead letter's own reasons from an earlier round are replaced by this one's.
        let mut headers = OwnedHeaders::new();
        let mut has_fetched_at = false;
        for (key, value) in &src.headers {
            if key.starts_with(dlq_header::PREFIX) {
                continue;
            }
            has_fetched_at |= key == header::FETCHED_AT;
            headers = headers.insert(Header {
                key: key.as_str(),
                value: value.as_deref(),
            });
        }
        let fetched_at = contract::format_fetched_at(src.fetched_at);
        if !has_fetched_at {
            headers = headers.insert(Header {
                key: header::FETCHED_AT,
                value: Some(fetched_at.as_str()),
            });
        }
        for (key, value) in [
            (dlq_header::ERROR_KIND, poison.error.kind()),
            (dlq_header::ERROR_MESSAGE, message.as_str()),
            (dlq_header::SOURCE_TOPIC, src.topic.as_str()),
            (dlq_header::SOURCE_PARTITION, partition.as_str()),
            (dlq_header::SOURCE_OFFSET, offset.as_str()),
            (dlq_header::LOADER_VERSION, env!("CARGO_PKG_VERSION")),
            (dlq_header::DEAD_LETTER_ID, id.as_str()),
            (dlq_header::PAYLOAD_SHA256, digest.as_str()),
            (dlq_header::PAYLOAD_BYTES, size.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        if !with_payload {
            headers = headers.insert(Header {
                key: dlq_header::PAYLOAD_OMITTED,
                value: Some("true"),
            });
        }
        let payload: &[u8] = if with_payload { original } else { &empty };
        // No timestamp of its own: the broker's clock (CreateTime, now) makes it new to the DLQ
        // topic's retention and time bounds; its fetch time is in `etl-fetched-at`.
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = src.key.as_deref() {
            record = record.key(k);
        }
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// Namespace of the dead-letter ids.
const DEAD_LETTER_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3d5e_8a41_0b7c_4f2e_9d16_52a0_c4e7_19b8);

/// Whether a produce error means the record can never fit (the producer's `message.max.bytes`
/// or the topic's `max.message.bytes`): retrying cannot help.
pub fn is_too_large(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge)
    )
}
