//! What the extractor's integration tests share: the real broker from `KAFKA_BROKERS` (default:
//! the one `scripts/dev-services.sh up` starts) and the TLS settings its `env` command exports.
#![allow(dead_code)]

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The broker under test (its plain listener).
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".to_string())
}

/// A setting `scripts/dev-services.sh env` exports; the test fails (never skips) without it.
pub fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(scripts/dev-services.sh env)\"` (scripts/test.sh does)")
    })
}

/// Creates a one-partition topic as the project creates its topics (`max.message.bytes`).
pub async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let limit = etl_common::contract::MAX_MESSAGE_BYTES.to_string();
    for r in admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1)).set("max.message.bytes", &limit)],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
}
