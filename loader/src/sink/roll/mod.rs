//! Parquet files of a useful size, rolled from PostgreSQL into the lake's Delta tables.
//!
//! A batch writes only PostgreSQL; its records wait in `raw_data` (`parquet_pending`) until a
//! partition's waiting records reach `PARQUET_ROLL_MAX_BYTES` or the oldest has waited
//! `PARQUET_ROLL_INTERVAL`. A roll then:
//!
//! 1. **claims** them, in one transaction: each file's name is fixed (from its partition,
//!    offsets and records) and registered `pending`, and its records name it;
//! 2. **writes** each pending file from the rows that name it, under a lease, as one immutable
//!    object that appears whole (a single conditional PUT, or a link of a fsynced file);
//! 3. **commits** the roll's files into their table, one commit per table ([`Rolls::publish`]
//!    says how that stays exactly once whoever else is writing);
//! 4. marks them `published`.
//!
//! A crash before 1 commits leaves the records waiting; after it, the files are pending and
//! any replica writes them again from the same rows under the same names (an object already
//! there from before the crash is checked by its footer and kept; a file already in its table
//! is not added again). So nothing is lost, nothing is in a table twice, and a half-written
//! object is never visible. Offsets are committed once the records are in PostgreSQL: the rows
//! are the roll's durable buffer, so a crash re-reads nothing from Kafka, and consumer lag never
//! counts an open roll as backlog.

use super::SinkError;
use super::ledger::{self, Claim};
use super::parquet::{self, Dataset};
use super::store::Store;
use super::table::Tables;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

/// Records read from PostgreSQL at a time while a raw file is built: about this many payload
/// bytes (and its Arrow copy while it is written).
/// 2 MiB rather than 4: a roll built during a load adds its pages to what the batches hold.
const READ_BYTES: i64 = 2 << 20;

/// Users read from PostgreSQL at a time while a processed file is built (a few MB of rows;
/// row groups are cut by their encoded size, [`parquet::ROW_GROUP_BYTES`]).
const READ_USERS: i64 = 2_500;

/// Temporary files older than this in the local store's staging directory are a crash's leftovers.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// When a partition's waiting records are rolled into files.
#[derive(Debug, Clone, Copy)]
pub struct RollPolicy {
    /// A file closes at this many payload bytes of input.
    pub max_bytes: u64,
    /// Waiting records are rolled once the oldest has waited this long (zero: at once).
    pub interval: Duration,
}

/// Which of a partition's waiting records to roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Only full files (`max_bytes` each); the rest keeps waiting.
    Full,
    /// Everything: the interval is up, or the loader is closing (SIGTERM, end of a backfill).
    All,
}

impl RollPolicy {
    /// Whether `w` is due, and how much of it.
    pub fn due(&self, w: &ledger::Waiting, now: DateTime<Utc>) -> Option<Cut> {
        let waited = (now - w.oldest).to_std().unwrap_or_default();
        if waited >= self.interval {
            Some(Cut::All)
        } else if u64::try_from(w.bytes).unwrap_or(0) >= self.max_bytes {
            Some(Cut::Full)
        } else {
            None
        }
    }
}

/// What a roll or a sweep wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollReport {
    /// Files claimed (a raw and a processed file each).
    pub claimed: usize,
    /// Files written (or found whole from before a crash) and marked published.
    pub written: usize,
    /// Bytes of Parquet written.
    pub bytes: u64,
    /// Raw rows in the files written.
    pub raw_rows: u64,
    /// Processed rows in the files written.
    pub processed_rows: u64,
    /// Files another writer was writing at the time (left to it).
    pub busy: usize,
    /// Pending files no record names, or whose records no longer transform: not writable.
    pub unbuildable: usize,
    /// Leftover temporary files removed from the local store.
    pub removed: usize,
}

impl RollReport {
    /// Sums two reports.
    pub fn add(&mut self, o: RollReport) {
        self.claimed += o.claimed;
        self.written += o.written;
        self.bytes += o.bytes;
        self.raw_rows += o.raw_rows;
        self.processed_rows += o.processed_rows;
        self.busy += o.busy;
        self.unbuildable += o.unbuildable;
        self.removed += o.removed;
    }
}

/// How long a writer's lease on a file lasts unless renewed: a live writer renews it every
/// third of it however long its upload takes, so a crashed writer's files are taken over this
/// soon. Correctness does not rest on it (the commit protocol fences writers,
/// [`Rolls::publish`]); it saves duplicated work.
const LEASE: Duration = Duration::from_secs(30);

/// Files failing one after another in one attempt before it stops: one failing file never holds
/// the others up, but a store that is down fails them all, each after its timeouts, and the
/// failure is reported only once the attempt ends.
const FAILURES_IN_A_ROW: usize = 2;

/// Attempts at a commit whose outcome was unknown or lost a race, before the roll gives up
/// (and its files wait for the next roll or sweep).
const COMMIT_ATTEMPTS: usize = 20;

/// Claims, writes and recovers Parquet files.
#[derive(Debug, Clone)]
pub struct Rolls {
    pool: PgPool,
    store: Store,
    tables: Tables,
    policy: RollPolicy,
    /// This process, as a lease owner.
    owner: uuid::Uuid,
    /// The files this process is building now: the lease is the process's, so it alone cannot
    /// keep a batch's `--reprocess` and the roller of the same loader off one file.
    building: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Files (and table reads) that failed one after another in this attempt
    /// ([`Rolls::new_attempt`]): past [`FAILURES_IN_A_ROW`] the store is out, not a file.
    failing: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Rolls {
    /// Rolls into `store`'s Delta tables by `policy`. Inside the Tokio runtime.
    pub fn new(pool: PgPool, store: Store, policy: RollPolicy) -> anyhow::Result<Self> {
        let tables = Tables::new(&store)?;
        Ok(Self {
            pool,
            store,
            tables,
            policy,
            owner: uuid::Uuid::new_v4(),
            building: Default::default(),
            failing: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Starts an attempt (a roller's pass over what is due, a sweep): failures counted afresh.
    pub fn new_attempt(&self) {
        self.failing.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether this attempt has seen the store fail [`FAILURES_IN_A_ROW`] times in a row: the
    /// rest of the attempt would only wait out the same timeouts.
    pub fn store_is_failing(&self) -> bool {
        self.failing() >= FAILURES_IN_A_ROW
    }

    fn failing(&self) -> usize {
        self.failing.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn failed(&self, failed: bool) {
        use std::sync::atomic::Ordering;
        if failed {
            self.failing.fetch_add(1, Ordering::SeqCst);
        } else {
            self.failing.store(0, Ordering::SeqCst);
        }
    }

    /// Where files go.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lake's Delta tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The roll policy.
    pub fn policy(&self) -> RollPolicy {
        self.policy
    }

    /// What waits for a roll, per partition.
    pub async fn waiting(&self) -> Result<Vec<ledger::Waiting>, SinkError> {
        let mut conn = self.pool.acquire().await?;
        Ok(ledger::waiting(&mut conn).await?)
    }

    /// Files marked as ones that cannot be built (their records no longer transform).
    pub async fn failed_files(&self) -> Result<i64, SinkError> {
        let mut conn = self.pool.acquire().await?;
        Ok(ledger::failed_files(&mut conn).await?)
    }

    /// The partitions with claimed files not yet written (a failed or crashed roll's).
    pub async fn unfinished(&self) -> Result<Vec<(String, i32)>, SinkError> {
        let mut conn = self.pool.acquire().await?;
        Ok(ledger::unpublished_partitions(&mut conn).await?)
    }

    /// Claims `topic`'s `partition`'s waiting records by `cut`, then writes every file of the
    /// partition still pending (these, and any a crash or a failed attempt left).
    pub async fn roll(
        &self,
        topic: &str,
        partition: i32,
        cut: Cut,
    ) -> Result<RollReport, SinkError> {
        let claimed = self.claim(topic, partition, cut).await?;
        let mut report = self.finish(topic, partition).await?;
        report.claimed = claimed;
        Ok(report)
    }

    /// Writes every file of `topic`'s `partition` that is claimed and not yet published.
    pub async fn finish(&self, topic: &str, partition: i32) -> Result<RollReport, SinkError> {
        let pending = {
            let mut conn = self.pool.acquire().await?;
            ledger::unpublished(&mut conn, Some((topic, partition))).await?
        };
        self.publish(&pending).await
    }

    /// Fixes the files of the waiting records and registers them; returns how many files
    /// (raw + processed) it claimed. Another replica rolling the partition at the same moment
    /// makes this one claim nothing.
    async fn claim(&self, topic: &str, partition: i32, cut: Cut) -> Result<usize, SinkError> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2 || '/' || $3::text))",
        )
        .bind(ledger::ROLL_LOCK)
        .bind(topic)
        .bind(partition)
        .fetch_one(&mut *tx)
        .await?;
        if !mine {
            return Ok(0);
        }
        let waiting = ledger::waiting_records(&mut tx, topic, partition).await?;
        let claims = plan(topic, partition, &waiting, self.policy.max_bytes, cut);
        for c in &claims {
            if !ledger::claim(&mut tx, c).await? {
                tracing::info!(topic, partition, "another roll took these records first");
                return Ok(0);
            }
        }
        tx.commit().await?;
        crate::failpoint::hit("after-roll-claim");
        Ok(claims.len() * 2)
    }

    /// Writes every file not yet published (a crashed roll's, a failed rewrite's, an adopted
    /// one's), and clears leftovers.
    pub async fn recover(&self) -> Result<RollReport, SinkError> {
        self.new_attempt();
        let files = {
            let mut conn = self.pool.acquire().await?;
            ledger::unpublished(&mut conn, None).await?
        };
        let mut report = self.publish(&files).await?;
        report.removed = self
            .store
            .remove_stale_temporaries(STALE_TEMPORARY)
            .map_err(|e| SinkError::Parquet(e.into()))?;
        Ok(report)
    }

    /// Writes the files `paths` asked to be rewritten (`--reprocess`).
    pub async fn rewrite(&self, paths: &[String]) -> Result<RollReport, SinkError> {
        let files = {
            let mut conn = self.pool.acquire().await?;
            let mut files = Vec::new();
            for path in paths {
                if let Some(f) = ledger::file_state(&mut conn, path).await?
                    && f.state != "published"
                {
                    files.push(f);
                }
            }
            files
        };
        self.publish(&files).await
    }
}

/// Cuts a partition's waiting records (in offset order) into files of about `max_bytes` of
/// input, each split by fetch date; with [`Cut::Full`] a last, unfilled file keeps waiting.
pub fn plan(
    topic: &str,
    partition: i32,
    waiting: &[ledger::WaitingRecord],
    max_bytes: u64,
    cut: Cut,
) -> Vec<Claim> {
    let mut rolls: Vec<&[ledger::WaitingRecord]> = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, r) in waiting.iter().enumerate() {
        bytes += u64::try_from(r.bytes).unwrap_or(0);
        if bytes >= max_bytes {
            rolls.push(&waiting[start..=i]);
            start = i + 1;
            bytes = 0;
        }
    }
    if cut == Cut::All && start < waiting.len() {
        rolls.push(&waiting[start..]);
    }
    let mut claims = Vec::new();
    for roll in rolls {
        let mut by_date: BTreeMap<NaiveDate, Vec<&ledger::WaitingRecord>> = BTreeMap::new();
        for r in roll {
            by_date
                .entry(r.fetched_at.date_naive())
                .or_default()
                .push(r);
        }
        for (date, recs) in by_date {
            let ids: Vec<uuid::Uuid> = recs.iter().map(|r| r.raw_id).collect();
            let first = recs.iter().map(|r| r.offset).min().unwrap_or_default();
            let last = recs.iter().map(|r| r.offset).max().unwrap_or_default();
            let name = parquet::file_name(topic, partition, first, last, &ids);
            claims.push(Claim {
                raw_path: parquet::path_of(Dataset::Raw, date, &name),
                processed_path: parquet::path_of(Dataset::Processed, date, &name),
                topic: topic.to_string(),
                partition,
                first_offset: first,
                last_offset: last,
                records: ids,
                users: recs.iter().map(|r| r.users).sum(),
                bytes: recs.iter().map(|r| r.bytes).sum(),
            });
        }
    }
    claims
}

mod compact;
mod lease;
mod orphans;
mod paths;
mod publish;

pub use compact::{CompactReport, Compaction};

#[cfg(test)]
mod tests;
