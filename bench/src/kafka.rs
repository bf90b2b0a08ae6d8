//! Topic set-up and the group-lag probe the runs finish on.

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::collections::BTreeMap;
use std::time::Duration;

fn admin(brokers: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create a Kafka admin client")
}

/// Creates a topic as the project creates its topics (replication 1: the benchmark broker is a
/// single node).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let limit = etl_common::contract::MAX_MESSAGE_BYTES.to_string();
    let results = admin(brokers)?
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
                .set("max.message.bytes", &limit)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes a topic the run made; a failure only leaves disk used, so it is logged.
pub async fn delete_topic(brokers: &str, topic: &str) {
    let outcome = match admin(brokers) {
        Ok(a) => a
            .delete_topics(&[topic], &AdminOptions::new())
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        eprintln!("[bench] could not delete topic {topic}: {e:#}");
    }
}

/// True once `group` has committed the end offset of every partition in `ends`.
pub fn caught_up(
    offsets: &loader::replay::GroupOffsets,
    ends: &BTreeMap<i32, i64>,
) -> anyhow::Result<bool> {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let committed = offsets.committed(&partitions)?;
    Ok(ends
        .iter()
        .all(|(p, end)| committed.get(p).and_then(|c| c.offset) == Some(*end)))
}

/// Records `group` has committed past, summed over the partitions of `ends` (each topic here
/// starts at offset 0): the group's progress, whichever member made it and whether it is still
/// running.
pub fn committed_records(
    offsets: &loader::replay::GroupOffsets,
    ends: &BTreeMap<i32, i64>,
) -> anyhow::Result<i64> {
    let partitions: Vec<i32> = ends.keys().copied().collect();
    let committed = offsets.committed(&partitions)?;
    Ok(committed.values().filter_map(|c| c.offset).sum())
}
