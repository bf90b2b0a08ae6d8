//! The Kafka consumer: its client settings, librdkafka's rebalance callbacks turned into
//! ordered events, and the one offset commit (the pipeline's and `loader replay`'s).
//!
//! The callbacks run inside our own poll, before the poll returns the next record, so the run
//! loop applies every queued event before it adds that record: the order in which the loop sees
//! revocations, assignments and records is the order in which they happened.
//!
//! An assigned partition starts where PostgreSQL says its records end, not at the offset
//! committed to Kafka: the callback only queues the assignment, and the run loop takes it with
//! the positions in it ([`assign_at`]; a seek after the assignment would race the fetcher).

use crate::batch::Rebalanced;
use crate::config::RunConfig;
use crate::events::{BrokerStatistics, PartitionsAssigned, PartitionsRevoked, Telemetry};
use crate::sink::offsets::KafkaOffset;
use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
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
    // A subscribed loader starts each partition where PostgreSQL's rows end; a backfill reads
    // the range it was given.
    context.defer_assignments = !bounded;
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
    /// Assignments are left to the run loop ([`assign_at`]), which first asks PostgreSQL where
    /// each partition starts: the callback cannot wait for a database without stopping the
    /// consumer's thread, and librdkafka waits for the assignment call as long as it takes.
    defer_assignments: bool,
}

impl LoaderContext {
    /// A context reporting to `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            telemetry,
            defer_assignments: false,
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Rebalanced> {
        lock(&self.events).drain(..).collect()
    }

    /// True when assignments wait for the run loop's [`assign_at`].
    pub fn defers_assignments(&self) -> bool {
        self.defer_assignments
    }
}

/// Takes the `partitions` a deferred assignment gave us, each from its offset in `starts`
/// (the others from the group's committed offset).
pub fn assign_at(
    consumer: &LoaderConsumer,
    partitions: &[(String, i32)],
    starts: &BTreeMap<(String, i32), Offset>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        let offset = starts
            .get(&(topic.clone(), *partition))
            .copied()
            .unwrap_or(Offset::Invalid);
        tpl.add_partition_offset(topic, *partition, offset)?;
    }
    consumer
        .incremental_assign(&tpl)
        .context("cannot take the assigned partitions")
}

/// The group's committed offsets in Kafka for `partitions` (a blocking broker call).
pub fn committed_in_kafka(
    consumer: &LoaderConsumer,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), KafkaOffset>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(tpl, std::time::Duration::from_secs(10))
        .context("cannot read the group's committed offsets")?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset().to_raw().filter(|o| *o >= 0) {
                None => KafkaOffset::Absent,
                Some(o) if is_loaders_stamp(e.metadata()) => KafkaOffset::Loaders(o),
                Some(o) => KafkaOffset::Others(o),
            };
            ((e.topic().to_string(), e.partition()), offset)
        })
        .collect())
}

/// True for the metadata [`commit`] stamps on every loader commit.
pub fn is_loaders_stamp(metadata: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(metadata)
        .is_ok_and(|v| v["by"].as_str().is_some_and(|by| by.starts_with("loader")))
}

impl ClientContext for LoaderContext {
    fn stats(&self, stats: Statistics) {
        self.telemetry.emit(BrokerStatistics(&stats));
    }
}

impl ConsumerContext for LoaderContext {
    /// rdkafka's own rebalance, except that an assignment is only queued when deferred: the
    /// run loop takes it once it knows where each partition starts ([`assign_at`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assigning = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoking = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
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
            (true, _) if self.defer_assignments => Ok(()),
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
