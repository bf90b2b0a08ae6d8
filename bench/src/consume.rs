//! The consume rate: rdkafka reading the whole topic from offset 0 into nothing (payloads
//! touched, nothing stored or committed) — what the broker and client give before any work.

use crate::Rate;
use crate::preload::Topic;
use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Reads every record of `topic` once.
pub async fn measure(brokers: &str, topic_name: &str, topic: &Topic) -> anyhow::Result<Rate> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("bench-consume-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in topic.ends.keys() {
        tpl.add_partition_offset(topic_name, *p, Offset::Beginning)
            .context("building the assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let want = topic.records.len();
    let users = topic.users;
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut seen = 0usize;
        let mut bytes = 0u64;
        let mut idle = Instant::now();
        while seen < want {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    seen += 1;
                    bytes += m.payload().map_or(0, |p| p.len() as u64);
                    idle = Instant::now();
                }
                Some(Err(e)) => anyhow::bail!("consuming: {e}"),
                None => anyhow::ensure!(
                    idle.elapsed() < Duration::from_secs(60),
                    "no record for 60 s after {seen} of {want}"
                ),
            }
        }
        Ok(Rate {
            users,
            bytes,
            elapsed: started.elapsed(),
            pg_cores: None,
        })
    })
    .await
    .context("the consume task panicked")?
}
