//! The Kafka consumer: its client settings, librdkafka's rebalance callbacks turned into
//! ordered events, and the one offset commit (the pipeline's and `loader replay`'s).
//!
//! The callbacks run inside our own poll, before the poll returns the next record, so the run
//! loop applies every queued event before it adds that record: the order in which the loop sees
//! revocations, assignments and records is the order in which they happened.
//!
//! An assigned partition starts where PostgreSQL says its records end ([`StartPositions`],
//! asked inside the assignment callback, so the position is in the assignment itself: a seek
//! after it races the fetcher), not at the offset committed to Kafka.

use crate::batch::Rebalanced;
use crate::config::RunConfig;
use crate::events::{BrokerStatistics, PartitionsAssigned, PartitionsRevoked, Telemetry};
use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;

/// The loader's consumer.
pub type LoaderConsumer = StreamConsumer<LoaderContext>;

/// The loader's consumer for `config`: manual commits only (offsets last), cooperative
/// rebalancing, and partition EOF reported when `bounded` (a backfill must know when a
/// partition has nothing more).
pub fn create(
    config: &RunConfig,
    bounded: bool,
    telemetry: &Telemetry,
    positions: Option<Box<dyn StartPositions>>,
) -> anyhow::Result<LoaderConsumer> {
    let mut cfg = config.kafka.client_config()?;
    cfg.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "enable.partition.eof",
            if bounded { "true" } else { "false" },
        )
        .set("statistics.interval.ms", "10000")
        .set(
            "session.timeout.ms",
            config.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout.as_millis() / 3)
                .max(100)
                .to_string(),
        )
        // librdkafka prefetches up to 64 MiB by default; 8 MiB keeps two batches' worth of
        // responses ready (it fetches ~35x faster than PostgreSQL loads) while holding peak
        // memory down (BENCHMARKS.md).
        .set("queued.max.messages.kbytes", "8192")
        .set("client.id", "randomuser-loader");
    let mut context = LoaderContext::new(telemetry.clone());
    context.positions = positions;
    cfg.create_with_context(context)
        .context("cannot create the Kafka consumer")
}

/// Commits `offsets` (topic, partition, next offset) synchronously, each stamped with
/// `{"committed_at", "by"}` as offset metadata, because Kafka does not report when an offset was
/// committed and `loader status` shows it. The pipeline and `loader replay` both commit here.
pub fn commit<'a, C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
    by: &str,
) -> anyhow::Result<()> {
    let meta = serde_json::json!({
        "committed_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "by": by,
    })
    .to_string();
    let mut tpl = TopicPartitionList::new();
    for (topic, p, o) in offsets {
        let mut e = tpl.add_partition(topic, p);
        e.set_offset(Offset::Offset(o))?;
        e.set_metadata(&meta);
    }
    consumer.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// librdkafka callbacks: rebalances as ordered events for the run loop, statistics for the lag
/// gauge, and the Kafka readiness check (an idle replica that joined its group is ready, not
/// waiting for a record).
pub struct LoaderContext {
    events: Mutex<VecDeque<Rebalanced>>,
    telemetry: Telemetry,
    positions: Option<Box<dyn StartPositions>>,
    /// Partitions assigned without a known start (shutdown came first): their records are
    /// neither loaded nor stored as positions, so no gap can be stored over.
    unpositioned: Mutex<HashSet<(String, i32)>>,
}

/// Where assigned partitions start: the next offset of each that has one (the others start at
/// the group's offset committed to Kafka). Blocks until it knows; an error means it never will
/// (shutdown).
pub trait StartPositions: Send + Sync {
    /// The start of each of `partitions` (topic, partition) that has one.
    fn starts(&self, partitions: &[(String, i32)]) -> anyhow::Result<BTreeMap<(String, i32), i64>>;
}

impl LoaderContext {
    /// A context reporting to `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            telemetry,
            positions: None,
            unpositioned: Mutex::new(HashSet::new()),
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Rebalanced> {
        lock(&self.events).drain(..).collect()
    }

    /// False for a partition assigned without a known start: its records must be dropped.
    pub fn positioned(&self, topic: &str, partition: i32) -> bool {
        let unpositioned = lock(&self.unpositioned);
        unpositioned.is_empty() || !unpositioned.contains(&(topic.to_string(), partition))
    }

    /// Puts each partition of an assignment at its start from [`StartPositions`].
    fn position(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let Some(positions) = &self.positions else {
            return;
        };
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        if parts.is_empty() {
            return;
        }
        let starts = match positions.starts(&parts) {
            Ok(starts) => starts,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), partitions = ?parts, "assigned without their stored positions; their records are not loaded");
                lock(&self.unpositioned).extend(parts);
                return;
            }
        };
        let committed = consumer
            .committed_offsets(tpl.clone(), std::time::Duration::from_secs(10))
            .ok();
        for ((topic, partition), start) in &starts {
            let kafka = committed.as_ref().map(|c| {
                c.find_partition(topic, *partition)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
            });
            self.telemetry.emit(crate::events::StartedFromDatabase {
                topic,
                partition: *partition,
                database: *start,
                kafka,
            });
            // No offset in Kafka at all: the topic was deleted and created again (Kafka drops
            // a deleted topic's offsets), or the group's offsets were deleted or expired. A
            // stored position may then point into another log: start where Kafka would (the
            // earliest), and let the identity absorb what was loaded before.
            if kafka == Some(None) {
                continue;
            }
            if let Err(e) = tpl.set_partition_offset(topic, *partition, Offset::Offset(*start)) {
                tracing::warn!(%topic, partition, error = %e, "cannot set the start of a partition");
            }
        }
        let mut unpositioned = lock(&self.unpositioned);
        for part in &parts {
            unpositioned.remove(part);
        }
    }
}

impl ClientContext for LoaderContext {
    fn stats(&self, stats: Statistics) {
        self.telemetry.emit(BrokerStatistics(&stats));
    }
}

impl ConsumerContext for LoaderContext {
    /// rdkafka's own rebalance, with the assignment's starts set first ([`StartPositions`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assigning = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoking = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
        if assigning {
            self.position(consumer, tpl);
        }
        let rebalance = if assigning {
            Rebalance::Assign(tpl)
        } else if revoking {
            Rebalance::Revoke(tpl)
        } else {
            Rebalance::Error(KafkaError::Rebalance(err.into()))
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let applied = match (assigning, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = applied {
            tracing::error!(error = %e, "cannot apply a rebalance");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<(String, i32)> {
            tpl.elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect()
        };
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = parts(tpl);
                self.telemetry.emit(PartitionsRevoked(&parts));
                lock(&self.events).push_back(Rebalanced::Revoked(parts));
            }
            Rebalance::Assign(tpl) => {
                let parts = parts(tpl);
                self.telemetry.emit(PartitionsAssigned(&parts));
                lock(&self.events).push_back(Rebalanced::Assigned(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
