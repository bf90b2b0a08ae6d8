//! The Kafka consumer: its client settings, librdkafka's rebalance callbacks turned into
//! ordered events, the offsets a batch stores once it is in PostgreSQL (committed to Kafka by
//! librdkafka in the background) and the synchronous commit `loader replay` makes.
//!
//! Why the pipeline stores offsets rather than committing them itself: a commit sent while the
//! group rebalances waits for the rebalance and is then refused (`IllegalGeneration`), so a loop
//! that waits for its commit stops loading the partitions it keeps for as long as the other
//! members take to rejoin (3.5 s measured with a member joining). librdkafka's own commit skips
//! a rebalance, commits a revoked partition's stored offset as it is revoked, and commits the
//! rest at close. Kafka's committed offset is not what a loader starts from (PostgreSQL's stored
//! position is, [`crate::pipeline`]): it serves lag monitoring and `loader status`, and lags the
//! rows by at most [`COMMIT_INTERVAL`].
//!
//! The callbacks run inside our own poll, before the poll returns the next record, so the run
//! loop applies every queued event before it adds that record: the order in which the loop sees
//! revocations, assignments and records is the order in which they happened.
//!
//! An assigned partition starts where PostgreSQL says its records end, not at the offset
//! committed to Kafka: the callback only queues the assignment, and the run loop takes it with
//! the positions in it ([`assign_at`]; a seek after the assignment would race the fetcher).
//! librdkafka goes no further with the group until an assignment it reported is answered, so a
//! member that stops before taking one answers it first ([`leaving`]): otherwise its leave (and
//! the close at exit, which polls until librdkafka is done) would wait for ever.

use crate::batch::Rebalanced;
use crate::config::RunConfig;
use crate::events::{
    BrokerStatistics, CommitFailed, OffsetsCommitted, PartitionsAssigned, PartitionsRevoked,
    Telemetry,
};
use crate::sink::offsets::KafkaOffset;
use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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
        // Offsets are stored by the pipeline once a batch is in PostgreSQL, never by librdkafka
        // as records are handed over; librdkafka commits what was stored (see the module doc).
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            COMMIT_INTERVAL.as_millis().to_string(),
        )
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
            heartbeat_interval(config.session_timeout)
                .as_millis()
                .to_string(),
        )
        // librdkafka prefetches up to 64 MiB by default; 8 MiB keeps two batches' worth of
        // responses ready (it fetches ~35x faster than PostgreSQL loads) while holding peak
        // memory down (BENCHMARKS.md).
        .set("queued.max.messages.kbytes", "8192")
        // Once that queue is full librdkafka postpones the partition's next fetch by this much
        // (default 1 s): the batch loop drained the 8 MiB in a quarter of a second and then
        // waited (~0.5 s in every second in a 4 MiB-batch log). At 10 ms one loader went from
        // 21,780 to 32,799 users/s in the same run (BENCHMARKS.md).
        .set("fetch.queue.backoff.ms", "10")
        .set("client.id", "randomuser-loader");
    let mut context = LoaderContext::new(telemetry.clone());
    // A subscribed loader starts each partition where PostgreSQL's rows end; a backfill reads
    // the range it was given.
    context.defer_assignments = !bounded;
    cfg.create_with_context(context)
        .context("cannot create the Kafka consumer")
}

/// How often librdkafka commits the offsets the pipeline stored.
pub const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A third of the session timeout (the client's rule), at most a second: a member learns that
/// the group rebalances from its next heartbeat, and a rebalance waits for every member to
/// rejoin, so this bounds how long a joining member waits for the others (a cooperative
/// rebalance takes two rounds). One small request a second per member.
pub fn heartbeat_interval(session_timeout: std::time::Duration) -> std::time::Duration {
    (session_timeout / 3).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(1),
    )
}

/// The offset metadata every loader stamps: `{"committed_at", "by"}`, because Kafka does not
/// report when an offset was committed and `loader status` shows it. `committed_at` is when the
/// rows were in PostgreSQL (the pipeline stores offsets then; the commit follows within
/// [`COMMIT_INTERVAL`]).
fn stamp(by: &str) -> String {
    serde_json::json!({
        "committed_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "by": by,
    })
    .to_string()
}

/// `offsets` (topic, partition, next offset) as a list, each with [`stamp`]'s metadata.
fn stamped<'a>(
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
    by: &str,
) -> anyhow::Result<TopicPartitionList> {
    let meta = stamp(by);
    let mut tpl = TopicPartitionList::new();
    for (topic, p, o) in offsets {
        let mut e = tpl.add_partition(topic, p);
        e.set_offset(Offset::Offset(o))?;
        e.set_metadata(&meta);
    }
    Ok(tpl)
}

/// Stores `offsets` (topic, partition, next offset) for librdkafka's next commit, stamped as
/// [`stamp`] says. Returns the partitions it could not store: no longer assigned to this member
/// (revoked while the batch was written; their next owner starts from PostgreSQL's position).
pub fn store<'a>(
    consumer: &LoaderConsumer,
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
    by: &str,
) -> anyhow::Result<Vec<(String, i32)>> {
    let tpl = stamped(offsets, by)?;
    if tpl.count() == 0 {
        return Ok(Vec::new());
    }
    // Fails as a whole only when no partition could be stored; each element says why.
    let stored = consumer.store_offsets(&tpl);
    let moved: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .filter(|e| e.error().is_err())
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    match stored {
        Ok(()) => Ok(moved),
        Err(KafkaError::StoreOffset(RDKafkaErrorCode::State))
        | Err(KafkaError::StoreOffset(RDKafkaErrorCode::UnknownPartition)) => Ok(moved),
        Err(e) => Err(e).context("cannot store the batch's offsets for commit"),
    }
}

/// Commits `offsets` (topic, partition, next offset) synchronously, each stamped with
/// `{"committed_at", "by"}` as offset metadata, because Kafka does not report when an offset was
/// committed and `loader status` shows it. `loader replay` commits here (the pipeline
/// [`store`]s).
pub fn commit<'a, C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    offsets: impl IntoIterator<Item = (&'a str, i32, i64)>,
    by: &str,
) -> anyhow::Result<()> {
    consumer.commit(&stamped(offsets, by)?, CommitMode::Sync)?;
    Ok(())
}

/// librdkafka callbacks: rebalances as ordered events for the run loop, statistics for the lag
/// gauge, and the Kafka readiness check (an idle replica that joined its group is ready, not
/// waiting for a record).
pub struct LoaderContext {
    events: Mutex<VecDeque<Rebalanced>>,
    /// Woken when an event is queued: a deferred assignment (or the empty one that lets a
    /// cooperative rebalance go on to its second round) must not wait for the next record, which
    /// never comes while nothing is assigned.
    queued: tokio::sync::Notify,
    telemetry: Telemetry,
    /// Assignments are left to the run loop ([`assign_at`]), which first asks PostgreSQL where
    /// each partition starts: the callback cannot wait for a database without stopping the
    /// consumer's thread, and librdkafka waits for the assignment call as long as it takes.
    defer_assignments: bool,
    /// Deferred assignments not answered yet, oldest first: librdkafka waits for each, even an
    /// empty one (a cooperative rebalance's first round).
    unanswered: Mutex<VecDeque<Vec<(String, i32)>>>,
    /// Set once the member stops ([`leaving`]): assignments are then applied in the callback.
    leaving: AtomicBool,
}

impl LoaderContext {
    /// A context reporting to `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            queued: tokio::sync::Notify::new(),
            telemetry,
            defer_assignments: false,
            unanswered: Mutex::new(VecDeque::new()),
            leaving: AtomicBool::new(false),
        }
    }

    /// The rebalances since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Rebalanced> {
        lock(&self.events).drain(..).collect()
    }

    /// Resolves once a rebalance event is queued (at once if one was queued since the last
    /// wait).
    pub async fn rebalanced(&self) {
        self.queued.notified().await;
    }

    /// The oldest deferred assignment has been taken (or tried: a failure is logged).
    pub fn answered(&self) {
        lock(&self.unanswered).pop_front();
    }

    /// True when assignments wait for the run loop's [`assign_at`].
    pub fn defers_assignments(&self) -> bool {
        self.defer_assignments && !self.leaving.load(Ordering::SeqCst)
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

/// The member stops: from now on an assignment is applied as librdkafka reports it, and those
/// reported but not taken yet are taken now, from the group's committed offsets, so librdkafka
/// can run the revocation that leaving (or closing) needs. Nothing is read from them: records
/// fetched while leaving are dropped. Returns those partitions (the member closes their rolls
/// as well as its own, which the ledger's claims make safe).
pub fn leaving(consumer: &LoaderConsumer) -> Vec<(String, i32)> {
    let context = consumer.context();
    context.leaving.store(true, Ordering::SeqCst);
    let waiting = std::mem::take(&mut *lock(&context.unanswered));
    let mut taken = Vec::new();
    for parts in waiting {
        if let Err(e) = assign_at(consumer, &parts, &BTreeMap::new()) {
            tracing::error!(error = %format!("{e:#}"), partitions = ?parts, "cannot answer the assignment before leaving");
        }
        taken.extend(parts);
    }
    taken
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
        let deferred = assigning && self.defer_assignments && !self.leaving.load(Ordering::SeqCst);
        if deferred {
            lock(&self.unanswered).push_back(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect(),
            );
        }
        let applied = match (assigning, cooperative) {
            (true, _) if deferred => Ok(()),
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

    /// librdkafka's commits of what the pipeline stored: counted, and a refusal logged (the
    /// partition's next owner starts from PostgreSQL's position, so nothing waits on it).
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => self.telemetry.emit(OffsetsCommitted),
            Err(e) => {
                let offsets: Vec<(String, i32, Option<i64>)> = offsets
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition(), e.offset().to_raw()))
                    .collect();
                self.telemetry.emit(CommitFailed {
                    error: &anyhow::Error::new(e),
                    offsets: &offsets,
                });
            }
        }
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
                self.queued.notify_one();
            }
            Rebalance::Assign(tpl) => {
                let parts = parts(tpl);
                self.telemetry.emit(PartitionsAssigned(&parts));
                lock(&self.events).push_back(Rebalanced::Assigned(parts));
                self.queued.notify_one();
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::heartbeat_interval;
    use std::time::Duration;

    #[test]
    fn heartbeats_come_every_third_of_the_session_but_at_least_every_second() {
        assert_eq!(
            heartbeat_interval(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            heartbeat_interval(Duration::from_secs(2)),
            Duration::from_secs(2) / 3
        );
        assert_eq!(
            heartbeat_interval(Duration::from_millis(150)),
            Duration::from_millis(100)
        );
    }
}
