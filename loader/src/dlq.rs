//! The dead-letter topic: poison records, byte for byte, with headers saying why and where from,
//! so the partition moves on and nothing is lost. An operator can inspect, fix and re-publish.

use crate::batch::Poison;
use etl_common::contract::dlq_header;
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
            .set("client.id", "randomuser-loader-dlq");
        let producer: FutureProducer = cfg
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the dead-letter producer: {e}"))?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one poison record and waits for the broker's acknowledgement.
    pub async fn send(&self, poison: &Poison) -> Result<(), KafkaError> {
        let src = &poison.source;
        let partition = src.partition.to_string();
        let offset = src.offset.to_string();
        let message = poison.error.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: dlq_header::ERROR_KIND,
                value: Some(poison.error.kind()),
            })
            .insert(Header {
                key: dlq_header::ERROR_MESSAGE,
                value: Some(message.as_str()),
            })
            .insert(Header {
                key: dlq_header::SOURCE_TOPIC,
                value: Some(src.topic.as_str()),
            })
            .insert(Header {
                key: dlq_header::SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: dlq_header::SOURCE_OFFSET,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: dlq_header::LOADER_VERSION,
                value: Some(env!("CARGO_PKG_VERSION")),
            });
        let empty: [u8; 0] = [];
        let payload: &[u8] = src.payload.as_deref().unwrap_or(&empty);
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
            .payload(payload)
            .timestamp(src.fetched_at.timestamp_millis())
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
