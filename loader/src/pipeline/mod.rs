//! The loader's data path: consume → batch (count or age) → decode → dead-letter the poison →
//! write PostgreSQL (rows and the batch's next offsets, one transaction) → commit offsets to
//! Kafka → roll the Parquet files that are due. Offsets are committed once the batch is in
//! PostgreSQL, so a crash before re-delivers the batch and the natural keys absorb it; a
//! partition taken starts from PostgreSQL's stored offset ([`assign`]), so a
//! database restored behind the group reads again what it lost. Records waiting for a Parquet
//! roll are held by PostgreSQL's ledger, not by uncommitted offsets (see [`crate::sink::roll`]).
//!
//! Rebalances: librdkafka runs the rebalance callbacks during our poll, never during a flush, so
//! a batch being written is finished and committed first. The callbacks queue ordered events
//! ([`crate::consumer`]) that the loop applies before it adds the next record: records of a
//! revoked partition still waiting in the open batch are dropped uncommitted (their owner reads
//! them from the committed offset), and a record fetched after a re-assignment is never among them.

use crate::backfill::{Progress, Range};
use crate::batch::{self, Batch};
use crate::config::RunConfig;
use crate::consumer::{self, LoaderConsumer};
use crate::dlq::DeadLetters;
use crate::events::{
    BatchCommitted, BatchWriting, CommitFailed, ConsumerFailed, DatabaseNotReady, DatabaseReady,
    LeftGroup, OffsetsNotStored, ParquetLeftOpen, ReadingAgain, RecordConsumed,
    RevokedRecordsDropped, Telemetry,
};
use crate::migrate;
use crate::roller::Roller;
use crate::sink::Sinks;
use crate::sink::offsets::Positions;
use anyhow::Context;
use etl_common::backoff::Backoff;
use etl_common::retry::{Cancelled, Outage, retry};
use etl_common::status::Liveness;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

mod assign;
mod write;

/// How often the `DATA_DIR` free-space gauges are refreshed.
const DISK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
/// How long leaving the group at shutdown may wait for librdkafka to revoke the partitions.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often an idle loop turns, to give its heartbeat.
const BEAT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The consume → batch → decode → dead-letter → write → commit loop of one loader.
pub struct Pipeline {
    pub(crate) config: RunConfig,
    pub(crate) sinks: Sinks,
    pub(crate) dlq: DeadLetters,
    pub(crate) consumer: Arc<LoaderConsumer>,
    pub(crate) telemetry: Telemetry,
    /// Beaten on every turn of the loop and while it waits out an outage (`/health`).
    pub(crate) liveness: Liveness,
    pub(crate) shutdown: CancellationToken,
    pub(crate) range: Option<Range>,
}

impl Pipeline {
    /// Loads until shutdown (or, for a backfill, the end of its range).
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let roller = Roller::new(
            self.sinks.clone(),
            self.consumer.clone(),
            self.telemetry.clone(),
            (self.config.backoff_base, self.config.backoff_max),
            self.config.recovery_interval,
        )
        .with_upkeep(&self.config.upkeep);
        // Read before the loader can report ready, and every DISK_INTERVAL after.
        self.observe_data_dir();
        if !self.prepare_database().await {
            return Ok(());
        }
        let mut rolling = roller.spawn(self.shutdown.child_token());
        let mut batch = Batch::default();
        let max_records = self.config.batch_max_records as usize;
        let max_bytes = usize::try_from(self.config.batch_max_bytes).unwrap_or(usize::MAX);
        let max_age = self.config.batch_max_age;
        let linger = self.config.batch_linger;
        let consumer = self.consumer.clone();
        let mut disk =
            tokio::time::interval_at(tokio::time::Instant::now() + DISK_INTERVAL, DISK_INTERVAL);
        disk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(BEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = Progress::new(self.range.as_ref().map_or(0, Range::total));
        if self.range_done() {
            tracing::info!("backfill range is empty: nothing to load");
            return Ok(());
        }
        loop {
            self.liveness.beat();
            let deadline = batch.deadline(max_age, linger);
            let flush_now = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = beat.tick() => false,
                _ = progress.tick(), if self.range.is_some() => {
                    progress.log(self.telemetry.snapshot().consumed);
                    false
                }
                _ = disk.tick() => {
                    self.observe_data_dir();
                    false
                }
                // Applied below, before anything else is added.
                _ = consumer.context().rebalanced() => false,
                _ = sleep_until(deadline) => true,
                msg = consumer.recv() => match msg {
                    Ok(m) => {
                        let record = batch::SourceRecord::from_message(&m);
                        // Whatever librdkafka did while fetching it happened before it.
                        if let Err(Cancelled) = self.apply_rebalances(&mut batch).await {
                            break;
                        }
                        let admitted = match &mut self.range {
                            Some(range) => range.admit(&consumer, record.partition, record.offset),
                            None => true,
                        };
                        if admitted {
                            self.telemetry.emit(RecordConsumed);
                            if self.range.is_some() {
                                progress.record(self.telemetry.snapshot().consumed);
                            }
                            batch.push(record);
                        }
                        self.range_done()
                    }
                    Err(KafkaError::PartitionEOF(p)) => {
                        if let Some(range) = &mut self.range {
                            range.finish(&consumer, p);
                        }
                        self.range_done()
                    }
                    Err(e) => {
                        self.telemetry.emit(ConsumerFailed(&e));
                        false
                    }
                },
            };
            if let Err(Cancelled) = self.apply_rebalances(&mut batch).await {
                break;
            }
            if flush_now || batch.len() >= max_records || batch.bytes() >= max_bytes {
                if let Err(Cancelled) = self.flush(batch.take()).await {
                    break;
                }
                roller.wake();
            }
            if self.range_done() && batch.is_empty() {
                progress.finish();
                let records = self.telemetry.snapshot().consumed;
                tracing::info!(records, "backfill range complete");
                rolling.stop().await;
                // The backfill is done when its files are: wait the store out.
                roller.roll_until_done(&self.shutdown, true).await;
                return Ok(());
            }
        }
        rolling.stop().await;
        // Shutdown: finish what is open if the sinks answer at once; otherwise leave it uncommitted.
        // (A partition assigned now is not taken: shutdown stops the lookup of its start.)
        let _ = self.apply_rebalances(&mut batch).await;
        if !batch.is_empty() {
            let n = batch.len();
            match self.flush(batch.take()).await {
                Ok(()) => tracing::info!(records = n, "final batch committed"),
                Err(Cancelled) => {
                    tracing::warn!(
                        records = n,
                        "final batch left uncommitted; it will be re-delivered"
                    )
                }
            }
        }
        // Hand the partitions over before closing the rolls, which may take seconds: the group
        // goes on loading meanwhile. Then close the rolls of what we owned, once: if the store is
        // out they wait in PostgreSQL for the partitions' next owner.
        // An assignment not taken yet is answered first: librdkafka cannot revoke before it is.
        consumer::leaving(&self.consumer);
        let mut owned = roller.owned();
        if self.range.is_none() {
            owned.extend(self.leave_group().await);
        }
        crate::failpoint::hit("before-roll-close");
        if let Err(e) = roller.close_for(&owned).await {
            self.telemetry.emit(ParquetLeftOpen(&e));
        }
        Ok(())
    }

    /// Leaves the consumer group: unsubscribes and polls until librdkafka has run the revocation
    /// (it runs during a poll), so the group rebalances now rather than when this process exits.
    /// Records fetched meanwhile are dropped uncommitted: their next owner reads them. Returns
    /// the partitions the group gave this member while it left (a rebalance under way finishes
    /// first), whose rolls it closes with its own, at `LOADER_CLOSING_NICE`.
    async fn leave_group(&self) -> Vec<(String, i32)> {
        self.consumer.unsubscribe();
        let gone = tokio::time::sleep(LEAVE_TIMEOUT);
        tokio::pin!(gone);
        let mut given = Vec::new();
        loop {
            for event in self.consumer.context().take_events() {
                if let batch::Rebalanced::Assigned(parts) = event {
                    given.extend(parts);
                }
            }
            if self.consumer.assignment().is_ok_and(|a| a.count() == 0) {
                break;
            }
            tokio::select! {
                _ = &mut gone => {
                    tracing::warn!("partitions not revoked in time; leaving the group on exit");
                    break;
                }
                _ = self.consumer.recv() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        // What is left is closing: let the members still loading have the shared cores.
        let nice = self.config.closing_nice;
        let lowered = match nice {
            0 => Ok(0),
            nice => crate::priority::lower_for_closing(nice),
        };
        self.telemetry.emit(LeftGroup { nice, lowered });
        given
    }

    /// Refreshes the `DATA_DIR` free-space gauges (a local lake only).
    fn observe_data_dir(&self) {
        if let Some(root) = self.sinks.rolls().store().local_root()
            && let Err(e) = self.telemetry.metrics().observe_data_dir(root)
        {
            tracing::debug!(error = %e, "cannot read DATA_DIR's free space");
        }
    }

    /// True when a bounded read has nothing left to read.
    fn range_done(&self) -> bool {
        self.range.as_ref().is_some_and(Range::is_done)
    }

    /// Waits for PostgreSQL and applies migrations (unless skipped).
    /// False when shutdown came first.
    async fn prepare_database(&mut self) -> bool {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let (sinks, skip_migrations, telemetry) =
            (&self.sinks, self.config.skip_migrations, &self.telemetry);
        let attempt = || async move {
            if skip_migrations {
                let problems = migrate::problems(sinks.pool()).await?;
                if !problems.is_empty() {
                    anyhow::bail!(
                        "schema not up to date and LOADER_SKIP_MIGRATIONS is set: {}",
                        problems.join("; ")
                    );
                }
            } else {
                migrate::apply(sinks.pool()).await?;
            }
            // Parquet recovery is the roller's first sweep: a store that is down at start must
            // not hold PostgreSQL up.
            anyhow::Ok(())
        };
        let prepared = retry(&self.shutdown, backoff, attempt, |error, retry_in| {
            telemetry.emit(DatabaseNotReady { error, retry_in });
        });
        if self.liveness.waiting(prepared).await.is_err() {
            return false;
        }
        self.telemetry.emit(DatabaseReady);
        true
    }

    /// Applies the rebalances librdkafka reported since the last call, in the order they
    /// happened. Called before a record is added, so a revocation only ever drops records
    /// fetched before it: a partition revoked and assigned back within one poll keeps the first
    /// record of its new assignment. A deferred assignment is taken here, from the positions
    /// PostgreSQL holds ([`Pipeline::take_assignment`]); `Cancelled` if shutdown came first.
    async fn apply_rebalances(&mut self, batch: &mut Batch) -> Result<(), Cancelled> {
        // After a shutdown, the later events still drop what they revoke from the final batch;
        // the assignments left untaken are answered as the member leaves (`consumer::leaving`).
        let mut cancelled = false;
        for event in self.consumer.context().take_events() {
            let records = batch.apply(&event);
            self.telemetry.emit(RevokedRecordsDropped { records });
            if let batch::Rebalanced::Assigned(parts) = &event
                && self.consumer.context().defers_assignments()
                && !cancelled
            {
                match self.take_assignment(parts).await {
                    Ok(()) => self.consumer.context().answered(),
                    Err(Cancelled) => cancelled = true,
                }
            }
        }
        if cancelled { Err(Cancelled) } else { Ok(()) }
    }

    /// Decode, dead-letter, write, commit: offsets last.
    async fn flush(&mut self, records: Vec<batch::SourceRecord>) -> Result<(), Cancelled> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let offsets = batch::next_offsets(&records);
        let n = records.len();
        let (max_bytes, strip) = (
            self.config.max_record_bytes,
            !self.config.raw_keep_login_secrets,
        );
        let decoded = tokio::task::spawn_blocking(move || {
            batch::decode_parallel(records, max_bytes, chrono::Utc::now(), strip)
        })
        .await;
        let (good, poison) = match decoded {
            Ok(v) => v,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(Cancelled),
        };
        self.telemetry.emit(BatchWriting { records: n });
        let dead_before = self.telemetry.snapshot().dead_lettered;
        for p in &poison {
            self.dead_letter(p).await?;
        }
        // A backfill reads a range under a group of its own: the group's stored positions are
        // the subscribed loaders'.
        let positions = self.range.is_none().then(|| Positions {
            group: self.config.group_id.clone(),
            by: format!("loader {}", std::process::id()),
            next: offsets.clone(),
        });
        let outcome = match self.write_split(good, positions).await {
            Ok(outcome) => outcome,
            Err(write::Halt::Cancelled) => return Err(Cancelled),
            // Nothing of this batch is committed on the server as it is now, and what it held
            // before may be gone: read everything again from what it holds.
            Err(write::Halt::ServerChanged) => return self.read_again().await,
        };
        crate::failpoint::hit("after-sinks");
        self.commit(&offsets);
        self.telemetry.emit(BatchCommitted {
            records: n,
            outcome: &outcome,
            dead_lettered: self.telemetry.snapshot().dead_lettered - dead_before,
            elapsed: started.elapsed(),
        });
        Ok(())
    }

    /// PostgreSQL restarted or changed under a running loader: a batch it committed
    /// asynchronously may be gone, so every partition this member owns is read again from the
    /// position the server holds — given up and taken again at once, as an assignment is taken
    /// ([`Pipeline::take_assignment`]). Records already fetched are dropped with the old
    /// assignment.
    async fn read_again(&self) -> Result<(), Cancelled> {
        let epoch = self.sinks.server_epoch();
        // librdkafka refusing is retried with backoff, as a database outage is: no batch may be
        // written before the partitions are read again.
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let give_up = || async {
            let owned = self
                .consumer
                .assignment()
                .context("cannot list the partitions to read again")
                .map_err(Outage)?;
            self.consumer
                .incremental_unassign(&owned)
                .context("cannot give the partitions up to read them again")
                .map_err(Outage)?;
            Ok(owned)
        };
        let owned = retry(&self.shutdown, backoff, give_up, |Outage(error), retry_in| {
            tracing::error!(error = %format!("{error:#}"), ?retry_in, "cannot read the partitions again yet");
        })
        .await
        .map_err(|_| Cancelled)?;
        let parts: Vec<(String, i32)> = owned
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.telemetry.emit(ReadingAgain { partitions: &parts });
        self.take_assignment(&parts).await?;
        self.sinks.caught_up(epoch);
        Ok(())
    }

    /// Stores the batch's offsets for librdkafka's next commit ([`consumer::store`]): the rows
    /// are in PostgreSQL, so this is the last step, and it never waits on the group coordinator.
    /// A partition revoked meanwhile cannot be stored; its next owner starts from the position
    /// PostgreSQL holds, so nothing is re-delivered for it.
    fn commit(&self, offsets: &BTreeMap<(String, i32), i64>) {
        let by = format!("loader {}", std::process::id());
        let stored = consumer::store(
            self.consumer.as_ref(),
            offsets.iter().map(|((t, p), o)| (t.as_str(), *p, *o)),
            &by,
        );
        match stored {
            Ok(moved) if moved.is_empty() => {}
            Ok(moved) => self.telemetry.emit(OffsetsNotStored { partitions: &moved }),
            Err(error) => self.telemetry.emit(CommitFailed {
                error: &error,
                offsets,
            }),
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
