//! The Kafka consumer's side of the loop: librdkafka's rebalance callbacks turned into ordered
//! events. The callbacks run inside our own poll, before the poll returns the next record, so
//! the run loop applies every queued event before it adds that record: the order in which the
//! loop sees revocations, assignments and records is the order in which they happened.

use crate::batch::Rebalanced;
use crate::metrics::Metrics;
use etl_common::status::Readiness;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Statistics};
use std::collections::VecDeque;
use std::sync::Mutex;

/// The loader's consumer.
pub type LoaderConsumer = StreamConsumer<LoaderContext>;

/// librdkafka callbacks: rebalances as ordered events for the run loop, statistics for the lag
/// gauge, and the Kafka readiness check (an idle replica that joined its group is ready, not
/// waiting for a record).
pub struct LoaderContext {
    events: Mutex<VecDeque<Rebalanced>>,
    metrics: Metrics,
    readiness: Readiness,
}

impl LoaderContext {
    /// A context reporting to `metrics` and `readiness`.
    pub fn new(metrics: Metrics, readiness: Readiness) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            metrics,
            readiness,
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Rebalanced> {
        lock(&self.events).drain(..).collect()
    }
}

impl ClientContext for LoaderContext {
    fn stats(&self, stats: Statistics) {
        // Only ever clears a failure: errors seen by the run loop set it.
        if stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP")
        {
            self.readiness.set_ok("kafka");
        }
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoaderContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, "partitions revoked");
                for (t, p) in &parts {
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[t.as_str(), &p.to_string()]);
                }
                self.metrics.assigned_partitions.sub(parts.len() as i64);
                lock(&self.events).push_back(Rebalanced::Revoked(parts));
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, "partitions assigned");
                self.metrics.assigned_partitions.add(parts.len() as i64);
                self.readiness.set_ok("kafka");
                lock(&self.events).push_back(Rebalanced::Assigned(parts));
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
