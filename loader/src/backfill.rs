//! Backfill: a bounded read of `[start, end)` of every partition, assigned rather than
//! subscribed (no group membership, no rebalances), and how far it has got. The pipeline asks
//! [`Range::admit`] for every record and stops once [`Range::is_done`].

use crate::consumer::LoaderConsumer;
use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Instant;

/// What is left of a bounded read: per partition, the end offset (exclusive).
#[derive(Debug, Clone)]
pub struct Range {
    topic: String,
    ends: BTreeMap<i32, i64>,
    total: i64,
}

impl Range {
    /// Assigns `consumer` the partitions of `topic` at their `starts`; partitions whose range is
    /// empty are left out.
    pub fn assign(
        consumer: &LoaderConsumer,
        topic: &str,
        starts: &BTreeMap<i32, i64>,
        ends: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<Self> {
        let mut tpl = TopicPartitionList::new();
        let mut remaining = BTreeMap::new();
        let mut total = 0;
        for (p, start) in starts {
            let end = ends.get(p).copied().unwrap_or(*start);
            if end > *start {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*start))?;
                remaining.insert(*p, end);
                total += end - start;
            }
        }
        consumer
            .assign(&tpl)
            .with_context(|| format!("KAFKA_TOPIC={topic}: cannot assign the range"))?;
        Ok(Self {
            topic: topic.to_string(),
            ends: remaining,
            total,
        })
    }

    /// Records in the range.
    pub fn total(&self) -> i64 {
        self.total
    }

    /// Whether the record at `partition`/`offset` is inside the range; a partition whose end is
    /// reached is paused and dropped from the remaining set.
    pub fn admit(&mut self, consumer: &LoaderConsumer, partition: i32, offset: i64) -> bool {
        let Some(end) = self.ends.get(&partition).copied() else {
            return false;
        };
        if offset + 1 >= end {
            self.finish(consumer, partition);
        }
        offset < end
    }

    /// The partition has nothing more to read (its end, or partition EOF when retention has
    /// deleted the range's last records meanwhile).
    pub fn finish(&mut self, consumer: &LoaderConsumer, partition: i32) {
        if self.ends.remove(&partition).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            if let Err(e) = consumer.pause(&tpl) {
                tracing::debug!(error = %e, partition, "cannot pause a finished partition");
            }
            tracing::info!(
                partition,
                remaining = self.ends.len(),
                "partition reached the end of the range"
            );
        }
    }

    /// True when nothing is left to read.
    pub fn is_done(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Backfill progress: a progress bar (records, records/s, ETA) when stderr is a terminal,
/// periodic log lines otherwise (containers, CI, log shippers).
pub struct Progress {
    total: i64,
    started: Instant,
    every: tokio::time::Interval,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// Progress over `total` records.
    pub fn new(total: i64) -> Self {
        use std::io::IsTerminal;
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            total,
            started: Instant::now(),
            every,
            bar,
        }
    }

    /// Resolves every few seconds, when a progress line is due.
    pub async fn tick(&mut self) {
        self.every.tick().await;
    }

    /// `done` records read so far.
    pub fn record(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// A progress line, when there is no progress bar.
    pub fn log(&self, done: u64) {
        if self.bar.is_some() {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let left = (self.total - done as i64).max(0) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left / rate)
        } else {
            "?".to_string()
        };
        let pct = if self.total > 0 {
            100.0 * done as f64 / self.total as f64
        } else {
            100.0
        };
        tracing::info!(
            records = done,
            total = self.total,
            percent = format!("{pct:.1}"),
            per_second = format!("{rate:.1}"),
            eta,
            "backfill progress"
        );
    }

    /// The range is complete.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
