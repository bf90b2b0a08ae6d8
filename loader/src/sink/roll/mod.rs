//! Parquet files of a useful size, rolled from PostgreSQL.
//!
//! A batch writes only PostgreSQL; its records wait in `raw_data` (`parquet_pending`) until a
//! partition's waiting records reach `PARQUET_ROLL_MAX_BYTES` or the oldest has waited
//! `PARQUET_ROLL_INTERVAL`. A roll then:
//!
//! 1. **claims** them, in one transaction: each file's name is fixed (from its partition,
//!    offsets and records) and registered `pending`, and its records name it;
//! 2. **writes** each pending file from the rows that name it, as one object that appears
//!    whole (a single PUT, or a link/rename of a fsynced file), with a conditional create;
//! 3. marks it `published`.
//!
//! A crash before 1 commits leaves the records waiting; after it, the files are pending and
//! any replica writes them again from the same rows under the same names (an object already
//! there from before the crash is checked whole and kept). So nothing is lost, nothing is
//! written twice, and a half-written object is never visible. Offsets are committed once the
//! records are in PostgreSQL: the rows are the roll's durable buffer, so a crash re-reads
//! nothing from Kafka, and consumer lag never counts an open roll as backlog.

use super::SinkError;
use super::ledger::{self, Claim, Unpublished};
use super::parquet::{self, Dataset, FileWriter};
use super::postgres;
use super::store::{Created, Store};
use crate::batch::LoadRecord;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

/// Records read from PostgreSQL per row group while a file is built: about this many bytes.
const READ_BYTES: usize = 4 << 20;

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
    pub missing: usize,
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
        self.missing += o.missing;
        self.removed += o.removed;
    }
}

/// What writing one file came to.
enum Outcome {
    Written { bytes: u64, rows: u64 },
    AlreadyPublished,
    Busy,
    Missing,
}

/// Claims, writes and recovers Parquet files.
#[derive(Debug, Clone)]
pub struct Rolls {
    pool: PgPool,
    store: Store,
    policy: RollPolicy,
}

impl Rolls {
    /// Rolls into `store` by `policy`.
    pub fn new(pool: PgPool, store: Store, policy: RollPolicy) -> Self {
        Self {
            pool,
            store,
            policy,
        }
    }

    /// Where files go.
    pub fn store(&self) -> &Store {
        &self.store
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
        let mut report = RollReport::default();
        let pending = {
            let mut conn = self.pool.acquire().await?;
            ledger::unpublished(&mut conn, Some((topic, partition))).await?
        };
        for file in pending {
            report.add(self.write(&file).await?);
        }
        Ok(report)
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

    /// Writes the pending file `file` from its rows and marks it published. The file's advisory
    /// lock keeps a roll and a sweep from building it at once; it is a transaction's, so a
    /// writer that dies or is dropped mid-write frees it with its connection or its rollback.
    async fn write(&self, file: &Unpublished) -> Result<RollReport, SinkError> {
        let mut tx = self.pool.begin().await?;
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
            .bind(ledger::FILE_LOCK)
            .bind(&file.path)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            return Ok(RollReport {
                busy: 1,
                ..RollReport::default()
            });
        }
        let outcome = self.write_locked(&mut tx, file).await?;
        tx.commit().await?;
        Ok(match outcome {
            Outcome::Written { bytes, rows } => {
                let mut r = RollReport {
                    written: 1,
                    bytes,
                    ..RollReport::default()
                };
                match Dataset::of_path(&file.path) {
                    Dataset::Raw => r.raw_rows = rows,
                    Dataset::Processed => r.processed_rows = rows,
                }
                r
            }
            Outcome::AlreadyPublished => RollReport::default(),
            Outcome::Busy => RollReport {
                busy: 1,
                ..RollReport::default()
            },
            Outcome::Missing => RollReport {
                missing: 1,
                ..RollReport::default()
            },
        })
    }

    async fn write_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        file: &Unpublished,
    ) -> Result<Outcome, SinkError> {
        // Look again under the lock: another writer may have finished it meanwhile.
        let Some(now) = ledger::file_state(conn, &file.path).await? else {
            return Ok(Outcome::Missing);
        };
        if now.state == "published" {
            return Ok(Outcome::AlreadyPublished);
        }
        let Some((bytes, rows)) = self.build(conn, &file.path).await? else {
            return Ok(Outcome::Missing);
        };
        let size = bytes.len() as u64;
        if now.state == "rewrite" {
            self.store
                .replace(&file.path, bytes)
                .await
                .map_err(|e| SinkError::Parquet(e.into()))?;
        } else {
            let created = self
                .store
                .create(&file.path, bytes.clone())
                .await
                .map_err(|e| SinkError::Parquet(e.into()))?;
            crate::failpoint::hit("after-object-write");
            if created == Created::Existed {
                // Written before a crash, or by a writer whose lock we outlived: keep it if it
                // is whole and holds what the ledger says; otherwise it is not ours to keep.
                let found = self
                    .store
                    .read(&file.path)
                    .await
                    .map_err(|e| SinkError::Parquet(e.into()))?;
                if parquet::rows_in(found).ok() != Some(rows as i64) {
                    tracing::warn!(path = %file.path, "an object under a pending file's name is torn or holds other rows; replacing it");
                    self.store
                        .replace(&file.path, bytes)
                        .await
                        .map_err(|e| SinkError::Parquet(e.into()))?;
                }
            }
        }
        if !ledger::mark_published(conn, &file.path, now.generation, rows as i64).await? {
            // A newer rewrite was asked for while this one ran: the next write does it.
            return Ok(Outcome::Busy);
        }
        Ok(Outcome::Written {
            bytes: size,
            rows: rows as u64,
        })
    }

    /// The Parquet bytes of `path` from the rows that name it, read a few MB at a time, and
    /// its row count; `None` if no record names it or one no longer transforms.
    async fn build(
        &self,
        conn: &mut sqlx::PgConnection,
        path: &str,
    ) -> Result<Option<(bytes::Bytes, usize)>, SinkError> {
        let dataset = Dataset::of_path(path);
        let mut writer = FileWriter::new(dataset).map_err(|e| SinkError::Parquet(e.into()))?;
        let mut after = (i64::MIN, uuid::Uuid::nil());
        let mut limit: i64 = 64;
        let mut records = 0usize;
        loop {
            let page = postgres::records_in(conn, dataset, path, after, limit).await?;
            let Some((last_id, last)) = page.last() else {
                break;
            };
            after = (last.offset, *last_id);
            let full = page.len() as i64 == limit;
            let bytes: usize = page
                .iter()
                .map(|(_, s)| s.payload.as_ref().map_or(0, Vec::len))
                .sum();
            let (ids, sources): (Vec<uuid::Uuid>, Vec<_>) = page.into_iter().unzip();
            // The stored payloads are what the first load stored: no stripping, no size limit.
            let (decoded, poison) = crate::batch::decode(sources, usize::MAX, Utc::now(), false);
            if let Some(p) = poison.first() {
                tracing::error!(path, offset = p.source.offset, error = %p.error, "cannot write a Parquet file: a stored record no longer transforms");
                return Ok(None);
            }
            let decoded: Vec<LoadRecord> = decoded
                .into_iter()
                .zip(ids)
                .map(|(r, id)| super::with_raw_id(r, id))
                .collect();
            records += decoded.len();
            let refs: Vec<&LoadRecord> = decoded.iter().collect();
            writer.push(&refs).map_err(SinkError::Parquet)?;
            if !full {
                break;
            }
            let per_record = (bytes / refs.len().max(1)).max(1);
            limit = i64::try_from((READ_BYTES / per_record).clamp(1, 10_000)).unwrap_or(64);
        }
        if records == 0 {
            tracing::error!(path, "the ledger names a Parquet file that no record names");
            return Ok(None);
        }
        let rows = writer.rows();
        let bytes = writer.finish().map_err(|e| SinkError::Parquet(e.into()))?;
        Ok(Some((bytes, rows)))
    }

    /// Writes every file not yet published (a crashed roll's, a failed rewrite's, or those of a
    /// loader of the previous version that staged files and died), and clears leftovers.
    pub async fn recover(&self) -> Result<RollReport, SinkError> {
        let files = {
            let mut conn = self.pool.acquire().await?;
            ledger::unpublished(&mut conn, None).await?
        };
        let mut report = RollReport::default();
        for file in &files {
            report.add(self.write(file).await?);
        }
        report.removed = self
            .store
            .remove_stale_temporaries(STALE_TEMPORARY)
            .map_err(|e| SinkError::Parquet(e.into()))?;
        Ok(report)
    }

    /// Writes the files `paths` asked to be rewritten (`--reprocess`).
    pub async fn rewrite(&self, paths: &[String]) -> Result<RollReport, SinkError> {
        let mut report = RollReport::default();
        for path in paths {
            let file = {
                let mut conn = self.pool.acquire().await?;
                ledger::file_state(&mut conn, path).await?
            };
            if let Some(file) = file.filter(|f| f.state != "published") {
                report.add(self.write(&file).await?);
            }
        }
        Ok(report)
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
            });
        }
    }
    claims
}

#[cfg(test)]
mod tests;
