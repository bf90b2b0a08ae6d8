//! The Parquet roller: a task beside the pipeline that rolls the files due on this replica's
//! partitions (woken after each batch, and on a timer for age) and sweeps unpublished files.
//! It runs apart from the batch loop so a slow or unreachable store never holds PostgreSQL
//! loading up: records wait in PostgreSQL (counted by `etl_loader_parquet_waiting_*`) and the
//! roller waits the store out with backoff, naming the `parquet` check on `/ready` meanwhile.

use crate::consumer::LoaderConsumer;
use crate::events::{
    CompactionFailed, ParquetCaughtUp, ParquetRollFailed, ParquetWritten, TablesCompacted,
    Telemetry,
};
use crate::sink::{Cut, RollReport, SinkError, Sinks};
use etl_common::backoff::Backoff;
use etl_common::retry::{Outage, retry};
use rdkafka::consumer::Consumer;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Rolls and sweeps Parquet files for one loader.
#[derive(Clone)]
pub struct Roller {
    sinks: Sinks,
    consumer: Arc<LoaderConsumer>,
    telemetry: Telemetry,
    backoff: (Duration, Duration),
    sweep_every: Duration,
    vacuum: Option<(Duration, Duration)>,
    compact: Option<Duration>,
    wake: Arc<Notify>,
}

impl Roller {
    /// A roller for the partitions `consumer` owns.
    pub fn new(
        sinks: Sinks,
        consumer: Arc<LoaderConsumer>,
        telemetry: Telemetry,
        backoff: (Duration, Duration),
        sweep_every: Duration,
    ) -> Self {
        Self {
            sinks,
            consumer,
            telemetry,
            backoff,
            sweep_every,
            vacuum: None,
            compact: None,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Also compacts and vacuums the tables, as often as `upkeep` says (never, at zero).
    pub fn with_upkeep(mut self, upkeep: &crate::config::Upkeep) -> Self {
        let every = upkeep.vacuum_interval;
        self.vacuum = (!every.is_zero()).then_some((every, upkeep.retention.retention));
        self.compact = (!upkeep.compact_interval.is_zero()).then_some(upkeep.compact_interval);
        self
    }

    /// Runs [`Roller::run`] as a task until `stop`, or until the handle is stopped or dropped.
    pub fn spawn(&self, stop: CancellationToken) -> RollerTask {
        RollerTask(tokio::spawn(self.clone().run(stop)))
    }

    /// Asks for a look at what is due (after a batch is in PostgreSQL).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Rolls what is due until `stop`: after each wake, a few times per roll interval (for age),
    /// and sweeps every `sweep_every`.
    pub async fn run(self, stop: CancellationToken) {
        let interval = self.sinks.rolls().policy().interval;
        let mut check = tokio::time::interval(
            (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(self.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (vacuum_every, retention) = self.vacuum.unwrap_or((Duration::MAX, Duration::MAX));
        let mut vacuum = tokio::time::interval_at(
            tokio::time::Instant::now() + vacuum_every.min(Duration::from_secs(86400 * 365)),
            vacuum_every.min(Duration::from_secs(86400 * 365)),
        );
        vacuum.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let compact_every = self
            .compact
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(86400 * 365));
        let mut compact =
            tokio::time::interval_at(tokio::time::Instant::now() + compact_every, compact_every);
        compact.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: start-up recovery is the first sweep, here rather than
        // before consuming, so a store that is down at start never holds PostgreSQL up.
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = sweep.tick() => match self.sinks.recover().await {
                    Ok(report) => self.telemetry.emit(ParquetWritten { report: &report, what: "Parquet sweep wrote unpublished files" }),
                    Err(error) => self.telemetry.emit(ParquetRollFailed { error: &error, retry_in: None }),
                },
                _ = vacuum.tick(), if self.vacuum.is_some() => {
                    let rolls = self.sinks.rolls();
                    match crate::sink::vacuum::vacuum(rolls.store(), rolls.tables(), retention, false).await {
                        Ok(r) => tracing::info!(deleted = r.deleted.len(), bytes = r.bytes, live = r.live, "tables vacuumed"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "vacuum failed; the next one tries again"),
                    }
                }
                _ = compact.tick(), if self.compact.is_some() => {
                    match self.sinks.rolls().compact(false).await {
                        Ok(r) => self.telemetry.emit(TablesCompacted { report: &r }),
                        Err(error) => self.telemetry.emit(CompactionFailed(&error)),
                    }
                }
                _ = self.wake.notified() => {
                    self.roll_until_done(&stop, false).await;
                }
                _ = check.tick() => {
                    self.roll_until_done(&stop, false).await;
                }
            }
        }
    }

    /// Writes every file that waits on this replica's partitions, whatever its size (SIGTERM,
    /// the end of a backfill), plus what any crash left unpublished: one attempt. Errors leave
    /// the records waiting in PostgreSQL for the partitions' next owner.
    pub async fn close(&self) -> Result<RollReport, SinkError> {
        self.close_for(&self.owned()).await
    }

    /// [`Roller::close`] for the partitions this replica owned before it left its group: another
    /// member may own them now, and the ledger's claims keep the two from writing a file twice.
    pub async fn close_for(&self, owned: &HashSet<(String, i32)>) -> Result<RollReport, SinkError> {
        let mut report = self.sinks.recover().await?;
        crate::memory::release_freed();
        report.add(self.roll_once(true, owned).await?);
        self.telemetry.emit(ParquetCaughtUp);
        self.telemetry.emit(ParquetWritten {
            report: &report,
            what: "open Parquet rolls closed",
        });
        Ok(report)
    }

    /// Rolls what is due — everything, as [`Roller::close`] does, when `closing` — retrying
    /// failures with backoff until it succeeds or `stop` comes.
    pub async fn roll_until_done(&self, stop: &CancellationToken, closing: bool) {
        let backoff = Backoff::new(self.backoff.0, self.backoff.1);
        // Every failure of a roll is waited out: the records wait in PostgreSQL meanwhile.
        let attempt = || async {
            let rolled = if closing {
                self.close().await
            } else {
                self.roll_once(false, &self.owned()).await
            };
            rolled.map_err(Outage)
        };
        let rolled = retry(stop, backoff, attempt, |Outage(error), delay| {
            self.telemetry.emit(ParquetRollFailed {
                error,
                retry_in: Some(delay),
            });
        })
        .await;
        if let Ok(report) = rolled
            && !closing
        {
            self.telemetry.emit(ParquetCaughtUp);
            self.telemetry.emit(ParquetWritten {
                report: &report,
                what: "Parquet files rolled",
            });
        }
    }

    /// The partitions this replica owns now.
    pub fn owned(&self) -> HashSet<(String, i32)> {
        match self.consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "no assignment to roll for");
                HashSet::new()
            }
        }
    }

    /// Rolls what is due: this replica's partitions by the policy (everything when `closing`),
    /// and any partition whose records have waited past the interval and a grace as long again
    /// (at least [`ORPHAN_GRACE`]) whoever owns it — a partition nobody owns any more (the whole
    /// group stopped, the topic shrunk or renamed, a backfill stopped while the store was down)
    /// is rolled all the same; an owner that is merely slow loses nothing to it (claims are
    /// exclusive). A partition that fails does not stop the others: the first error is returned
    /// after them.
    async fn roll_once(
        &self,
        closing: bool,
        owned: &HashSet<(String, i32)>,
    ) -> Result<RollReport, SinkError> {
        let rolls = self.sinks.rolls();
        rolls.new_attempt();
        let now = chrono::Utc::now();
        let policy = rolls.policy();
        let orphaned_after = policy.interval + policy.interval.max(ORPHAN_GRACE);
        let waiting = rolls.waiting().await?;
        let mut report = RollReport::default();
        let mut failure = None;
        for w in &waiting {
            if failure.is_some() && rolls.store_is_failing() {
                break;
            }
            let mine = owned.contains(&(w.topic.clone(), w.partition));
            let cut = if mine && closing {
                Some(Cut::All)
            } else if mine {
                policy.due(w, now)
            } else if (now - w.oldest).to_std().unwrap_or_default() >= orphaned_after {
                Some(Cut::All)
            } else {
                None
            };
            if let Some(cut) = cut {
                match rolls.roll(&w.topic, w.partition, cut).await {
                    Ok(r) => report.add(r),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        // Files a failed attempt claimed and could not write: until they are written the roll
        // has not succeeded, whether or not new records wait.
        for (topic, partition) in rolls.unfinished().await? {
            if failure.is_some() && rolls.store_is_failing() {
                break;
            }
            if owned.contains(&(topic.clone(), partition)) {
                match rolls.finish(&topic, partition).await {
                    Ok(r) => report.add(r),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        let left = if report.claimed > 0 {
            rolls.waiting().await?
        } else {
            waiting
        };
        // What waits, whoever owns it.
        let metrics = self.telemetry.metrics();
        metrics
            .parquet_waiting_bytes
            .set(left.iter().map(|w| w.bytes).sum());
        metrics.parquet_waiting_age.set(
            left.iter()
                .map(|w| (now - w.oldest).num_seconds().max(0))
                .max()
                .unwrap_or(0),
        );
        metrics
            .parquet_files_failed
            .set(rolls.failed_files().await?);
        if report.written > 0 {
            crate::memory::release_freed();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// The least a partition's records wait past the roll interval before a replica that does not
/// own the partition rolls them.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// The running roller; aborted if dropped (the shutdown grace ran out mid-run).
pub struct RollerTask(tokio::task::JoinHandle<()>);

impl RollerTask {
    /// Stops the roller where it stands and waits for it to be gone. That is a crash mid-roll,
    /// which the ledger is built for; waiting out a slow PUT instead would eat the shutdown grace
    /// the final batch needs (the closing roll redoes the work anyway).
    pub async fn stop(&mut self) {
        self.0.abort();
        if let Err(e) = (&mut self.0).await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

impl Drop for RollerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
