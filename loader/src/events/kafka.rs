//! Events of the broker: records in, consumer errors, rebalances, statistics, the DLQ.

use super::{Check, Event, Telemetry};
use crate::sink::offsets::{KafkaOffset, Start};
use std::time::Duration;

/// A record received from Kafka (and admitted to the batch): the broker answers.
pub struct RecordConsumed;

impl Event for RecordConsumed {
    fn emit(self, t: &Telemetry) {
        t.metrics.consumed.inc();
        t.ok(Check::Kafka);
        t.update(|s| s.consumed += 1);
    }
}

/// The consumer reported an error (the broker is out, a topic is gone, …).
pub struct ConsumerFailed<'a>(pub &'a rdkafka::error::KafkaError);

impl Event for ConsumerFailed<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(error = %self.0, "Kafka consumer error");
        t.failed(Check::Kafka, self.0.to_string());
    }
}

/// The group took partitions away; their uncommitted records in the open batch are dropped.
pub struct RevokedRecordsDropped {
    /// Records dropped from the open batch.
    pub records: usize,
}

impl Event for RevokedRecordsDropped {
    fn emit(self, _: &Telemetry) {
        if self.records > 0 {
            tracing::info!(
                records = self.records,
                "dropped uncommitted records of revoked partitions; their owner re-reads them"
            );
        }
    }
}

/// The group gave this replica partitions.
pub struct PartitionsAssigned<'a>(pub &'a [(String, i32)]);

impl Event for PartitionsAssigned<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::info!(partitions = ?self.0, "partitions assigned");
        t.metrics.assigned_partitions.add(self.0.len() as i64);
        t.ok(Check::Kafka);
    }
}

/// Where a partition taken starts ([`crate::sink::offsets::start_of`]), logged always and
/// counted when the stored position and the group's offset in Kafka differ.
pub struct StartedFromDatabase<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The next offset PostgreSQL holds, if it holds one.
    pub database: Option<i64>,
    /// The group's committed offset in Kafka; `None` when it could not be read.
    pub kafka: Option<KafkaOffset>,
    /// Where it starts.
    pub start: Start,
}

impl Event for StartedFromDatabase<'_> {
    fn emit(self, t: &Telemetry) {
        let (topic, partition) = (self.topic, self.partition);
        let count = |direction: &str| {
            t.metrics
                .start_mismatches
                .with_label_values(&[direction])
                .inc()
        };
        let (database, kafka, start) = (self.database, self.kafka, self.start);
        match (start, kafka) {
            (Start::At(d), Some(KafkaOffset::Loaders(k))) if k > d => {
                tracing::warn!(%topic, partition, database = d, kafka = k, records = k - d, "PostgreSQL holds less of this partition than the group committed (restored or failed over behind it): reading again from its position");
                count("behind");
            }
            (Start::At(d), Some(KafkaOffset::Loaders(k))) if k < d => {
                tracing::info!(%topic, partition, database = d, kafka = k, "the group's offset in Kafka lags PostgreSQL's (a commit lost in a crash): starting from PostgreSQL's position, nothing read twice");
                count("ahead");
            }
            (Start::At(d), _) => {
                tracing::info!(%topic, partition, offset = d, "starting from PostgreSQL's position")
            }
            (Start::Beginning, Some(KafkaOffset::Loaders(k))) => {
                tracing::warn!(%topic, partition, kafka = k, "PostgreSQL holds nothing of this partition although the group committed offsets (restored from before its first record): reading it from the beginning");
                count("behind");
            }
            (Start::Beginning, _) => {
                tracing::info!(%topic, partition, "PostgreSQL holds nothing of this partition: reading it from the beginning")
            }
            (Start::Kafka, Some(KafkaOffset::Others(k))) if Some(k) != database => {
                tracing::warn!(%topic, partition, ?database, kafka = k, "another tool moved the group's offset in Kafka: following it (records loaded before are absorbed by their identity)");
                count("moved_in_kafka");
            }
            (Start::Kafka, Some(KafkaOffset::Absent)) if database.is_some() => {
                tracing::warn!(%topic, partition, ?database, "the group has no offset in Kafka here (the topic re-created, or its offsets deleted or expired): starting where Kafka starts it, not at PostgreSQL's position, which may belong to another log; records loaded before are absorbed by their identity");
                count("no_kafka_offset");
            }
            (Start::Kafka, _) => {
                tracing::info!(%topic, partition, "starting from the group's offset in Kafka")
            }
        }
    }
}

/// The group took partitions from this replica: their lag is no longer ours to report.
pub struct PartitionsRevoked<'a>(pub &'a [(String, i32)]);

impl Event for PartitionsRevoked<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::info!(partitions = ?self.0, "partitions revoked");
        for (topic, partition) in self.0 {
            // Absent when no statistics came while we owned it: nothing to remove.
            let _ = t
                .metrics
                .consumer_lag
                .remove_label_values(&[topic.as_str(), &partition.to_string()]);
        }
        t.metrics.assigned_partitions.sub(self.0.len() as i64);
    }
}

/// librdkafka's periodic statistics: the lag and partition-count gauges, and the Kafka check
/// cleared once a broker is up (only ever cleared here: errors seen by the run loop set it).
pub struct BrokerStatistics<'a>(pub &'a rdkafka::Statistics);

impl Event for BrokerStatistics<'_> {
    fn emit(self, t: &Telemetry) {
        let stats = self.0;
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            t.ok(Check::Kafka);
        }
        for (topic, tp) in &stats.topics {
            let known = tp.partitions.keys().filter(|p| **p >= 0).count();
            t.metrics
                .topic_partitions
                .with_label_values(&[topic.as_str()])
                .set(i64::try_from(known).unwrap_or(i64::MAX));
            for (partition, p) in &tp.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    t.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

/// The dead-letter topic refused a record; it is retried (the batch waits).
pub struct DeadLetterFailed<'a> {
    /// Why.
    pub error: &'a rdkafka::error::KafkaError,
    /// The next attempt's delay.
    pub retry_in: Duration,
}

impl Event for DeadLetterFailed<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(error = %self.error, retry_in = ?self.retry_in, "cannot dead-letter; retrying");
        t.failed(Check::Kafka, self.error.to_string());
    }
}

/// This replica left its group at shutdown: its partitions are the others' now, while it closes
/// its Parquet rolls (at a lower CPU priority unless `LOADER_CLOSING_NICE` is 0).
pub struct LeftGroup {
    /// The nice value it closes at (`LOADER_CLOSING_NICE`; 0: its priority is left alone).
    pub nice: i32,
    /// Threads lowered to it, or why they could not be.
    pub lowered: std::io::Result<usize>,
}

impl Event for LeftGroup {
    fn emit(self, t: &Telemetry) {
        match self.lowered {
            _ if self.nice == 0 => tracing::info!(
                "left the consumer group; closing the Parquet rolls of its partitions"
            ),
            Ok(threads) => tracing::info!(
                threads,
                nice = self.nice,
                "left the consumer group; closing the Parquet rolls of its partitions at a lower CPU priority"
            ),
            Err(e) => tracing::info!(
                error = %e,
                "left the consumer group; closing the Parquet rolls of its partitions (at its own CPU priority)"
            ),
        }
        t.failed(Check::Kafka, "shutting down: left the consumer group");
    }
}
