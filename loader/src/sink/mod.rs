//! The two sinks behind one write, with PostgreSQL as the ledger that makes Parquet
//! effectively-once:
//!
//! 1. begin; take the shared ledger lock;
//! 2. insert raw rows, `ON CONFLICT DO NOTHING RETURNING` → which records are new;
//! 3. insert the new records' processed rows;
//! 4. write the new records' Parquet files to staging (fsynced) and register them as `staged`;
//! 5. commit — rows and ledger entries become durable together;
//! 6. rename the files into place, fsync, mark them `published`.
//!
//! In steady running every record of a batch is new, so 2–4 overlap: the rows are inserted
//! already naming their files while the files are encoded. If the insert reports records that
//! were loaded before (a replay), the speculative files are discarded, the new records' files
//! written and linked, and the next batch takes the careful order until a batch is all new.
//!
//! A crash before 5 leaves unregistered staged files (removed by recovery) and no rows; a crash
//! after 5 leaves registered staged files (moved into place by recovery). Either way a
//! re-delivered record finds its raw row and writes nothing twice.

pub mod parquet;
pub mod postgres;

use crate::batch::LoadRecord;
use chrono::Utc;
use parquet::{ParquetSink, StagedFile};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A record whose identity was loaded before with other bytes: written nowhere, for the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Its index in the records given to [`Sinks::write_with`].
    pub index: usize,
    /// The shared identity.
    pub record_key: String,
    /// The loaded record's payload digest, hex.
    pub loaded: String,
    /// This record's payload digest, hex.
    pub this: String,
}

/// What one batch write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Records loaded for the first time.
    pub new_records: usize,
    /// Records already loaded (re-delivery, replay): written nowhere.
    pub duplicate_records: usize,
    /// `processed_data` rows inserted.
    pub users_written: u64,
    /// Parquet files moved into place.
    pub files_published: usize,
    /// Records recomputed by `--reprocess` (rows updated in place, files rewritten).
    pub reprocessed_records: usize,
    /// Records whose identity was loaded before with other bytes: poison for the caller.
    pub conflicts: Vec<Conflict>,
}

impl WriteOutcome {
    /// Sums two outcomes (a batch written record by record).
    pub fn add(&mut self, other: WriteOutcome) {
        self.new_records += other.new_records;
        self.duplicate_records += other.duplicate_records;
        self.users_written += other.users_written;
        self.files_published += other.files_published;
        self.reprocessed_records += other.reprocessed_records;
        self.conflicts.extend(other.conflicts);
    }
}

/// What start-up recovery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Registered staged files moved into place.
    pub finished: usize,
    /// Unregistered staged files removed.
    pub removed: usize,
    /// Registered files found neither staged nor in place, rebuilt from `raw_data`.
    pub rebuilt: usize,
    /// Registered files found neither staged nor in place that no record names.
    pub missing: usize,
    /// Another replica was mid-batch, so the parts that need the ledger to itself (removing
    /// unregistered staged files, rebuilding lost ones) were left for the next sweep.
    pub deferred: bool,
}

/// Where a write failed, so operators (and readiness) can tell which sink is out.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL refused or is unreachable.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The data directory is unwritable, full or gone.
    #[error("Parquet: {0:#}")]
    Parquet(anyhow::Error),
}

impl SinkError {
    /// True when PostgreSQL refused the *data* (SQLSTATE class 22 data exception, 23 integrity
    /// violation, 54 program limit such as an index row too large): retrying cannot help, and the
    /// record responsible is poison. Anything else is an outage and is waited out.
    pub fn is_data_error(&self) -> bool {
        match self {
            SinkError::Postgres(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54")),
            _ => false,
        }
    }

    /// The `sink` label.
    pub fn sink(&self) -> &'static str {
        match self {
            SinkError::Postgres(_) => "postgres",
            SinkError::Parquet(_) => "parquet",
        }
    }
}

/// PostgreSQL + Parquet.
#[derive(Debug, Clone)]
pub struct Sinks {
    pool: PgPool,
    parquet: ParquetSink,
    /// Whether the last batch was all new records: if so the next one is written
    /// speculatively (see [`Sinks::write_with`]); a replay falls back to the careful order.
    all_new_last_time: Arc<AtomicBool>,
}

/// Server-side limits on every loader connection, so no session can hold the others up for
/// good: a statement that runs away, a lock that cannot be had, and above all a replica that
/// hangs inside a transaction (a paused process, a black-holed connection) while holding the
/// shared ledger lock — the server ends its session and the lock is free again.
pub const SESSION_LIMITS: [(&str, &str); 3] = [
    ("statement_timeout", "120s"),
    ("lock_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// A pool that connects lazily, so a database that is down at start is waited for, not fatal.
pub fn lazy_pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?
        .options(SESSION_LIMITS);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

impl Sinks {
    /// Both sinks.
    pub fn new(pool: PgPool, parquet: ParquetSink) -> Self {
        Self {
            pool,
            parquet,
            all_new_last_time: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes a batch of decoded records to both sinks (see the module docs for the protocol).
    pub async fn write(&self, records: &[LoadRecord]) -> Result<WriteOutcome, SinkError> {
        self.write_with(records, false).await
    }

    /// As [`Sinks::write`]; with `reprocess`, records already loaded are transformed again:
    /// their processed rows are updated in place and every processed Parquet file holding them
    /// is rewritten whole (all its records recomputed) and atomically replaced.
    pub async fn write_with(
        &self,
        records: &[LoadRecord],
        reprocess: bool,
    ) -> Result<WriteOutcome, SinkError> {
        if records.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let now = Utc::now();
        // A record can appear twice in one batch (re-fetched after a rebalance, re-published
        // close behind itself): write it once; with other bytes it is a conflict.
        let mut conflicts = Vec::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::with_capacity(records.len());
        let mut unique: Vec<&LoadRecord> = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            match first_seen.get(r.record_key.as_str()).map(|&i| &records[i]) {
                None => {
                    first_seen.insert(&r.record_key, index);
                    unique.push(r);
                }
                Some(first) if first.digest == r.digest => {}
                Some(first) => conflicts.push(Conflict {
                    index,
                    record_key: r.record_key.clone(),
                    loaded: hex::encode(first.digest),
                    this: hex::encode(r.digest),
                }),
            }
        }
        let mut tx = self.pool.begin().await?;
        postgres::lock_ledger_shared(&mut tx).await?;
        let speculate = !reprocess && self.all_new_last_time.load(Ordering::Relaxed);
        let (new_ids, users_written, mut staged, linked) = if speculate {
            // Expect every record to be new, as in steady running: the rows carry their file
            // names and the files are encoded while PostgreSQL inserts.
            let plan = self.parquet.plan(&unique);
            let links = postgres::links_of(&plan);
            let rows = async {
                let ids = postgres::insert_raw(&mut tx, &unique, now, &links).await?;
                let users = if ids.len() == unique.len() {
                    postgres::insert_processed(&mut tx, &unique, now).await?
                } else {
                    let fresh: Vec<&LoadRecord> = unique
                        .iter()
                        .copied()
                        .filter(|r| ids.contains(&r.raw_id))
                        .collect();
                    postgres::insert_processed(&mut tx, &fresh, now).await?
                };
                Ok::<_, sqlx::Error>((ids, users))
            };
            let (rows, files) = tokio::join!(rows, self.parquet.write_plan(plan.clone(), &unique));
            let (ids, users) = match rows {
                Ok(v) => v,
                Err(e) => {
                    if let Ok(files) = &files {
                        self.parquet.discard(files).await;
                    }
                    return Err(e.into());
                }
            };
            let files = files.map_err(SinkError::Parquet)?;
            crate::failpoint::hit("mid-batch");
            if ids.len() == unique.len() {
                (ids, users, files, true)
            } else {
                // Some were loaded before (re-delivery, replay): only the new ones get files.
                self.parquet.discard(&files).await;
                self.all_new_last_time.store(false, Ordering::Relaxed);
                let fresh: Vec<&LoadRecord> = unique
                    .iter()
                    .copied()
                    .filter(|r| ids.contains(&r.raw_id))
                    .collect();
                let files = if fresh.is_empty() {
                    Vec::new()
                } else {
                    self.parquet
                        .stage(&fresh)
                        .await
                        .map_err(SinkError::Parquet)?
                };
                (ids, users, files, false)
            }
        } else {
            let ids = postgres::insert_raw(&mut tx, &unique, now, &HashMap::new()).await?;
            let fresh: Vec<&LoadRecord> = unique
                .iter()
                .copied()
                .filter(|r| ids.contains(&r.raw_id))
                .collect();
            let users = postgres::insert_processed(&mut tx, &fresh, now).await?;
            crate::failpoint::hit("mid-batch");
            let files = if fresh.is_empty() {
                Vec::new()
            } else {
                self.parquet
                    .stage(&fresh)
                    .await
                    .map_err(SinkError::Parquet)?
            };
            self.all_new_last_time
                .store(fresh.len() == unique.len(), Ordering::Relaxed);
            (ids, users, files, false)
        };
        let known: Vec<&LoadRecord> = unique
            .iter()
            .copied()
            .filter(|r| !new_ids.contains(&r.raw_id))
            .collect();
        // Loaded before: the same bytes are a re-delivery, other bytes a conflict.
        let keys: Vec<&str> = known.iter().map(|r| r.record_key.as_str()).collect();
        let loaded = match postgres::loaded_before(&mut tx, &keys).await {
            Ok(l) => l,
            Err(e) => {
                self.parquet.discard(&staged).await;
                return Err(e.into());
            }
        };
        let mut again = Vec::with_capacity(known.len());
        for r in known {
            let before = loaded.get(&r.record_key);
            match before.and_then(|l| l.digest.as_deref()) {
                Some(d) if d != r.digest => conflicts.push(Conflict {
                    index: first_seen[r.record_key.as_str()],
                    record_key: r.record_key.clone(),
                    loaded: hex::encode(d),
                    this: hex::encode(r.digest),
                }),
                _ => again.push((r, before.map_or(r.raw_id, |l| l.raw_id))),
            }
        }
        let mut reprocessed = 0;
        if reprocess && !again.is_empty() {
            match self.reprocess(&mut tx, &again, now).await {
                Ok((n, files)) => {
                    reprocessed = n;
                    staged.extend(files);
                }
                Err(e) => {
                    self.parquet.discard(&staged).await;
                    return Err(e);
                }
            }
        }
        let (new_files, rewritten): (Vec<StagedFile>, Vec<StagedFile>) =
            staged.iter().cloned().partition(|f| !f.replaces);
        let registered = async {
            postgres::register_files(&mut tx, &new_files).await?;
            for f in &rewritten {
                postgres::restage_file(&mut tx, f).await?;
            }
            if !linked {
                postgres::link_files(&mut tx, &new_files).await?;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        if let Err(e) = registered {
            // Not committed (the transaction rolls back as it drops): the files are nobody's.
            self.parquet.discard(&staged).await;
            return Err(e.into());
        }
        // Once COMMIT is sent its outcome can be unknown (the connection dropped after the
        // server committed): the staged files are left for recovery, which publishes them if
        // the ledger names them and removes them if it does not.
        tx.commit().await?;
        crate::failpoint::hit("after-db-commit");
        let pairs: Vec<(String, String)> = staged
            .iter()
            .map(|f| (f.final_rel.clone(), f.staged_rel.clone()))
            .collect();
        let finals: Vec<String> = pairs.iter().map(|(f, _)| f.clone()).collect();
        self.parquet
            .publish(pairs)
            .await
            .map_err(|e| SinkError::Parquet(e.into()))?;
        let mut conn = self.pool.acquire().await?;
        postgres::mark_published(&mut conn, &finals).await?;
        conflicts.sort_by_key(|c| c.index);
        Ok(WriteOutcome {
            new_records: new_ids.len(),
            duplicate_records: records.len() - new_ids.len() - conflicts.len(),
            users_written,
            files_published: finals.len(),
            reprocessed_records: reprocessed,
            conflicts,
        })
    }

    /// Recomputes `known` records (and every other record sharing a processed file with them):
    /// rows upserted in the transaction, rewritten files staged. Returns records recomputed.
    async fn reprocess(
        &self,
        tx: &mut sqlx::PgConnection,
        known: &[(&LoadRecord, uuid::Uuid)],
        now: chrono::DateTime<Utc>,
    ) -> Result<(usize, Vec<StagedFile>), SinkError> {
        // Rows loaded before migration 3 keep the raw id of their position: recompute under it.
        let known: Vec<LoadRecord> = known
            .iter()
            .map(|(r, stored)| with_raw_id((*r).clone(), *stored))
            .collect();
        let ids: Vec<uuid::Uuid> = known.iter().map(|r| r.raw_id).collect();
        let files = postgres::processed_files_of(tx, &ids).await?;
        let mut covered = HashSet::new();
        let mut restaged = Vec::new();
        let mut count = 0;
        for path in files {
            let (stored_ids, sources): (Vec<uuid::Uuid>, Vec<_>) =
                postgres::records_in_file(tx, &path)
                    .await?
                    .into_iter()
                    .unzip();
            let (records, poison) = crate::batch::decode(sources, usize::MAX, now, false);
            if let Some(p) = poison.first() {
                // The new transform refuses a record it accepted before: keep the old output.
                tracing::error!(file = %path, offset = p.source.offset, error = %p.error, "reprocess: the transform now refuses a loaded record; its file is left as it was");
                continue;
            }
            let records: Vec<LoadRecord> = records
                .into_iter()
                .zip(stored_ids)
                .map(|(r, id)| with_raw_id(r, id))
                .collect();
            let refs: Vec<&LoadRecord> = records.iter().collect();
            postgres::upsert_processed(tx, &refs, now).await?;
            restaged.push(
                self.parquet
                    .restage_processed(&path, &refs)
                    .await
                    .map_err(SinkError::Parquet)?,
            );
            covered.extend(records.iter().map(|r| r.raw_id));
            count += records.len();
        }
        // Records loaded before files were linked to records: rows only.
        let rest: Vec<&LoadRecord> = known
            .iter()
            .filter(|r| !covered.contains(&r.raw_id))
            .collect();
        if !rest.is_empty() {
            postgres::upsert_processed(tx, &rest, now).await?;
            count += rest.len();
        }
        Ok((count, restaged))
    }

    /// Finishes registered staged files, rebuilds registered files that are gone, and removes
    /// unregistered staged files.
    ///
    /// Publishing a registered file needs no lock: registered means committed, and the move is
    /// idempotent, so committed files reach their place however busy the ledger is. Removing an
    /// unregistered file (a batch may be about to register it) and rebuilding a lost one (two
    /// replicas must not write the same staging path) need the ledger to itself: that lock is
    /// only *tried*, because a waiting exclusive request would queue every later shared request
    /// (every batch of every replica) behind it. While a batch holds it those parts are
    /// `deferred` to the next sweep.
    pub async fn recover(&self) -> Result<RecoveryReport, SinkError> {
        let mut conn = self.pool.acquire().await?;
        let exclusive: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(postgres::LEDGER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        let result = self.recover_with(&mut conn, exclusive).await;
        if exclusive {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(postgres::LEDGER_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn recover_with(
        &self,
        conn: &mut sqlx::PgConnection,
        exclusive: bool,
    ) -> Result<RecoveryReport, SinkError> {
        let staged = postgres::staged_files(conn).await?;
        let root = self.parquet.root().to_path_buf();
        let mut report = RecoveryReport {
            deferred: !exclusive,
            ..RecoveryReport::default()
        };
        let mut to_publish = Vec::new();
        let mut done = Vec::new();
        for (final_rel, staged_rel) in &staged {
            if root.join(staged_rel).exists() {
                to_publish.push((final_rel.clone(), staged_rel.clone()));
            } else if root.join(final_rel).exists() {
                done.push(final_rel.clone());
            } else if !exclusive {
                // Lost, or moved between our two looks: the next exclusive sweep decides.
            } else if self.rebuild(conn, final_rel, staged_rel).await? {
                // Committed, but the file is gone (lost with a disk, or removed by an older
                // loader after a COMMIT whose outcome it did not know): rebuilt from raw_data.
                tracing::warn!(path = %final_rel, "ledger names a Parquet file that is gone; rebuilt it from raw_data");
                report.rebuilt += 1;
                to_publish.push((final_rel.clone(), staged_rel.clone()));
            } else {
                report.missing += 1;
                tracing::error!(path = %final_rel, "ledger names a Parquet file that is neither staged nor in place, and no record in raw_data names it");
            }
        }
        report.finished = to_publish.len() - report.rebuilt;
        done.extend(to_publish.iter().map(|(f, _)| f.clone()));
        self.parquet
            .publish(to_publish)
            .await
            .map_err(|e| SinkError::Parquet(e.into()))?;
        postgres::mark_published(&mut *conn, &done).await?;
        if exclusive {
            let keep: HashSet<String> = staged.into_iter().map(|(_, s)| s).collect();
            report.removed = self
                .parquet
                .remove_orphans(&keep)
                .map_err(|e| SinkError::Parquet(e.into()))?;
        }
        Ok(report)
    }

    /// Writes the registered file `final_rel` again, at `staged_rel`, from the records
    /// `raw_data` says it holds; false when no record names it.
    async fn rebuild(
        &self,
        conn: &mut sqlx::PgConnection,
        final_rel: &str,
        staged_rel: &str,
    ) -> Result<bool, SinkError> {
        let dataset = if final_rel.starts_with("raw/") {
            parquet::Dataset::Raw
        } else {
            parquet::Dataset::Processed
        };
        let (ids, sources): (Vec<uuid::Uuid>, Vec<_>) =
            postgres::records_in(conn, dataset, final_rel)
                .await?
                .into_iter()
                .unzip();
        if sources.is_empty() {
            return Ok(false);
        }
        // The stored payloads are what the first load stored: no stripping again, no limit.
        let (records, poison) = crate::batch::decode(sources, usize::MAX, Utc::now(), false);
        if let Some(p) = poison.first() {
            tracing::error!(path = %final_rel, offset = p.source.offset, error = %p.error, "cannot rebuild: a stored record no longer transforms");
            return Ok(false);
        }
        let records: Vec<LoadRecord> = records
            .into_iter()
            .zip(ids)
            .map(|(r, id)| with_raw_id(r, id))
            .collect();
        let refs: Vec<&LoadRecord> = records.iter().collect();
        self.parquet
            .rebuild(dataset, final_rel, staged_rel, &refs)
            .await
            .map_err(SinkError::Parquet)?;
        Ok(true)
    }
}

/// `record` under another raw id (its users too).
fn with_raw_id(mut record: LoadRecord, raw_id: uuid::Uuid) -> LoadRecord {
    record.raw_id = raw_id;
    for u in &mut record.users {
        u.raw_id = raw_id;
    }
    record
}
