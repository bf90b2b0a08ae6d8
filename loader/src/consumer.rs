//! The Kafka consumer: its client settings, librdkafka's rebalance callbacks turned into
//! ordered events, and the one offset commit (the pipeline's and `loader replay`'s).
//!
//! The callbacks run inside our own poll, before the poll returns the next record, so the run
//! loop applies every queued event before it adds that record: the order in which the loop sees
//! revocations, assignments and records is the order in which they happened.

use crate::batch::Rebalanced;
use crate::config::RunConfig;
use crate::events::{BrokerStatistics, PartitionsAssigned, PartitionsRevoked, Telemetry};
use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::VecDeque;
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
    let context = LoaderContext::new(telemetry.clone());
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
}

impl LoaderContext {
    /// A context reporting to `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            telemetry,
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Rebalanced> {
        lock(&self.events).drain(..).collect()
    }
}

impl ClientContext for LoaderContext {
    fn stats(&self, stats: Statistics) {
        self.telemetry.emit(BrokerStatistics(&stats));
    }
}

impl ConsumerContext for LoaderContext {
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
