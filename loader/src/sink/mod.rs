//! The two sinks. A batch is one PostgreSQL transaction: raw rows (`ON CONFLICT DO NOTHING
//! RETURNING` says which records are new), the new records' processed rows, and — with
//! `--reprocess` — recomputed rows and their Parquet files marked for rewriting. The new records
//! wait in `raw_data` for a Parquet roll ([`roll`]), which claims them into files of a useful
//! size through the ledger and writes each file whole ([`store`]). A re-delivered record finds
//! its raw row and is written nowhere twice.

pub mod ledger;
pub mod offsets;
pub mod parquet;
pub mod postgres;
pub mod roll;
pub mod store;
pub mod table;
pub mod vacuum;

use crate::batch::LoadRecord;
use anyhow::Context;
use chrono::Utc;
pub use roll::{Cut, RollPolicy, RollReport, Rolls};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
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
    /// Payload bytes of the new records.
    pub bytes_written: u64,
    /// Parquet files rewritten (`--reprocess`).
    pub files_rewritten: usize,
    /// Records recomputed by `--reprocess` (rows updated in place, files rewritten).
    pub reprocessed_records: usize,
    /// Records whose identity was loaded before with other bytes: poison for the caller.
    pub conflicts: Vec<Conflict>,
    /// True when the batch's positions were written in its transaction: false when none were
    /// given, or when there were conflicts (their dead letters must be sent before the
    /// positions move past them: the caller stores them then, [`Sinks::store_positions`]).
    pub positions_stored: bool,
}

impl WriteOutcome {
    /// Sums two outcomes (a batch written record by record).
    pub fn add(&mut self, other: WriteOutcome) {
        self.new_records += other.new_records;
        self.duplicate_records += other.duplicate_records;
        self.users_written += other.users_written;
        self.bytes_written += other.bytes_written;
        self.files_rewritten += other.files_rewritten;
        self.reprocessed_records += other.reprocessed_records;
        self.conflicts.extend(other.conflicts);
        self.positions_stored &= other.positions_stored;
    }
}

/// Where a write failed, so operators (and readiness) can tell which sink is out.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL refused or is unreachable.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    /// The Parquet store is unwritable, full, throttling or gone.
    #[error("Parquet: {0:#}")]
    Parquet(anyhow::Error),
    /// The pool reached a PostgreSQL server other than the one the loader's read positions
    /// were checked against (a restart, a promoted standby): a batch committed asynchronously
    /// before may be gone, so nothing more is written until the partitions are read again from
    /// the positions the server holds ([`Sinks::caught_up`]). Not retried, not poison.
    #[error(
        "PostgreSQL: the server restarted or changed; the partitions are read again from its positions"
    )]
    ServerChanged,
}

/// An outage is waited out; PostgreSQL refusing the data is not ([`SinkError::is_data_error`]).
impl etl_common::retry::Transient for SinkError {
    fn is_transient(&self) -> bool {
        !self.is_data_error() && !matches!(self, SinkError::ServerChanged)
    }
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
    pub fn sink(&self) -> crate::events::Sink {
        match self {
            SinkError::Postgres(_) | SinkError::ServerChanged => crate::events::Sink::Postgres,
            SinkError::Parquet(_) => crate::events::Sink::Parquet,
        }
    }
}

/// PostgreSQL + Parquet.
#[derive(Debug, Clone)]
pub struct Sinks {
    pool: PgPool,
    rolls: Rolls,
    /// The server the pool's connections reach ([`watched_pool`]).
    server: std::sync::Arc<ServerWatch>,
    /// The [`ServerWatch::epoch`] the pipeline's read positions were last checked against.
    caught_up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// `synchronous_commit` for a batch that stores its positions (`None`: the server's).
    synchronous_commit: Option<SynchronousCommit>,
}

/// `synchronous_commit` for the batches that store their positions (`DATABASE_SYNCHRONOUS_COMMIT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynchronousCommit {
    /// The commit returns before its WAL is flushed: a server crash can take back the last
    /// fraction of a second of batches, which the loader reads again ([`SinkError::ServerChanged`]).
    Off,
    /// Flushed locally; a standby may still miss it.
    Local,
    /// Received by the synchronous standbys.
    #[value(name = "remote_write")]
    RemoteWrite,
    /// Flushed locally and by the synchronous standbys.
    On,
    /// Applied by the synchronous standbys.
    #[value(name = "remote_apply")]
    RemoteApply,
}

impl SynchronousCommit {
    fn sql(self) -> &'static str {
        match self {
            SynchronousCommit::Off => "SET LOCAL synchronous_commit = off",
            SynchronousCommit::Local => "SET LOCAL synchronous_commit = local",
            SynchronousCommit::RemoteWrite => "SET LOCAL synchronous_commit = remote_write",
            SynchronousCommit::On => "SET LOCAL synchronous_commit = on",
            SynchronousCommit::RemoteApply => "SET LOCAL synchronous_commit = remote_apply",
        }
    }
}

/// Which PostgreSQL server the pool's connections reach, told by its start time: every
/// connection made after a restart, a crash or a failover sees another. The epoch counts the
/// changes; the pipeline compares it with the one it caught up with before it writes.
#[derive(Debug, Default)]
pub struct ServerWatch {
    started: std::sync::Mutex<Option<String>>,
    epoch: std::sync::atomic::AtomicU64,
}

impl ServerWatch {
    /// Notes the start time a new connection saw.
    pub fn observe(&self, started: String) {
        let mut known = self.started.lock().unwrap_or_else(|p| p.into_inner());
        match known.as_deref() {
            None => *known = Some(started),
            Some(k) if k != started => {
                tracing::warn!(was = k, now = %started, "PostgreSQL restarted or changed: batches it did not keep are read again");
                *known = Some(started);
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Some(_) => {}
        }
    }

    /// How many times the server has changed since the first connection.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }
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
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url)?))
}

/// [`lazy_pool`], each new connection telling `watch` which server it reached.
pub fn watched_pool(
    url: &str,
    max_connections: u32,
    watch: std::sync::Arc<ServerWatch>,
) -> anyhow::Result<PgPool> {
    Ok(pool_options(max_connections)
        .after_connect(move |conn, _| {
            let watch = watch.clone();
            Box::pin(async move {
                let started: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
                    .fetch_one(conn)
                    .await?;
                watch.observe(started);
                Ok(())
            })
        })
        .connect_lazy_with(connect_options(url)?))
}

fn connect_options(url: &str) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    Ok(sqlx::postgres::PgConnectOptions::from_str(url)
        .context("DATABASE_URL")?
        .options(SESSION_LIMITS))
}

/// Every pool's settings. A connection going back to the pool gives up the buffers its last use
/// grew: sqlx keeps a connection's write buffer as large as the largest message it sent (a
/// batch's `Bind`, tens of MB) for its whole life, so each pooled connection that ever wrote a
/// batch held one, and the loader's memory grew with the connections in use (heaptrack, 10×
/// run: 35 MB in sqlx's `encode_body` at the peak, over five buffers).
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .after_release(|conn, _| {
            Box::pin(async move {
                sqlx::Connection::shrink_buffers(conn);
                Ok(true)
            })
        })
}

impl Sinks {
    /// Both sinks, on the server's own `synchronous_commit` and with no server watch (a pool
    /// not made by [`watched_pool`]).
    pub fn new(pool: PgPool, rolls: Rolls) -> Self {
        Self {
            pool,
            rolls,
            server: Default::default(),
            caught_up: Default::default(),
            synchronous_commit: None,
        }
    }

    /// Watches the server through `watch` (the one given to [`watched_pool`]), and commits the
    /// batches that store positions with `synchronous_commit` (`None`: the server's). Such a
    /// batch is refused with [`SinkError::ServerChanged`] once the server has changed since
    /// [`Sinks::caught_up`].
    pub fn with_server(
        mut self,
        watch: std::sync::Arc<ServerWatch>,
        synchronous_commit: Option<SynchronousCommit>,
    ) -> Self {
        self.caught_up = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(watch.epoch()));
        self.server = watch;
        self.synchronous_commit = synchronous_commit;
        self
    }

    /// The server's epoch now: read it before the positions are read again, and pass it to
    /// [`Sinks::caught_up`] after.
    pub fn server_epoch(&self) -> u64 {
        self.server.epoch()
    }

    /// The partitions were read again from the positions of the server as it was at `epoch`.
    pub fn caught_up(&self, epoch: u64) {
        self.caught_up
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// [`SinkError::ServerChanged`] if a connection has reached another server since the
    /// pipeline caught up. Called once the write's connection is open: a connection made after
    /// a change has told the watch before it is handed out.
    fn same_server(&self) -> Result<(), SinkError> {
        if self.server.epoch() == self.caught_up.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(SinkError::ServerChanged)
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The Parquet rolls.
    pub fn rolls(&self) -> &Rolls {
        &self.rolls
    }

    /// Writes a batch of decoded records (see the module docs).
    pub async fn write(&self, records: &[LoadRecord]) -> Result<WriteOutcome, SinkError> {
        self.write_with(records, false, None).await
    }

    /// Writes `positions` on their own (a batch of poison only, a batch written record by
    /// record, a batch with conflicts once they are dead-lettered).
    pub async fn store_positions(&self, positions: &offsets::Positions) -> Result<(), SinkError> {
        let mut conn = self.pool.acquire().await?;
        // The rows before these positions may have been committed asynchronously.
        self.same_server()?;
        offsets::store(&mut conn, positions).await?;
        Ok(())
    }

    /// As [`Sinks::write`]; with `reprocess`, records already loaded are transformed again:
    /// their processed rows are updated in place and every processed Parquet file holding them
    /// is rewritten whole (all its records recomputed) and replaced in one step. With
    /// `positions`, the batch's next offsets are written in the same transaction unless a
    /// record conflicts ([`WriteOutcome::positions_stored`]).
    pub async fn write_with(
        &self,
        records: &[LoadRecord],
        reprocess: bool,
        positions: Option<&offsets::Positions>,
    ) -> Result<WriteOutcome, SinkError> {
        if records.is_empty() {
            if let Some(positions) = positions {
                self.store_positions(positions).await?;
            }
            return Ok(WriteOutcome {
                positions_stored: positions.is_some(),
                ..WriteOutcome::default()
            });
        }
        let now = Utc::now();
        // A record can appear twice in one batch (re-fetched after a rebalance, re-published
        // close behind itself, copied without its headers): write it once; the same fetch id
        // with other bytes is a conflict.
        let mut conflicts = Vec::new();
        let mut first_seen: HashMap<&str, usize> = HashMap::with_capacity(records.len());
        let mut bytes_seen: HashSet<[u8; 32]> = HashSet::with_capacity(records.len());
        let mut unique: Vec<&LoadRecord> = Vec::with_capacity(records.len());
        for (index, r) in records.iter().enumerate() {
            match first_seen.get(r.record_key.as_str()).map(|&i| &records[i]) {
                None if bytes_seen.contains(&r.digest) => {}
                None => {
                    first_seen.insert(&r.record_key, index);
                    bytes_seen.insert(r.digest);
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
        if positions.is_some() {
            // A batch that stores its positions is read again if the server loses it, so it
            // may commit asynchronously; one without (a backfill, a record written on its own)
            // keeps the server's setting.
            self.same_server()?;
            if let Some(level) = self.synchronous_commit {
                sqlx::query(level.sql()).execute(&mut *tx).await?;
            }
        }
        let new_ids = postgres::insert_raw(&mut tx, &unique, now).await?;
        let fresh: Vec<&LoadRecord> = unique
            .iter()
            .copied()
            .filter(|r| new_ids.contains(&r.raw_id))
            .collect();
        let users_written = postgres::insert_processed(&mut tx, &fresh, now).await?;
        crate::failpoint::hit("mid-batch");
        let known: Vec<&LoadRecord> = unique
            .iter()
            .copied()
            .filter(|r| !new_ids.contains(&r.raw_id))
            .collect();
        // Loaded before: its fetch id with the same bytes, or its bytes under another key
        // (with or without the extractor's headers), is a re-delivery; its fetch id with other
        // bytes is a conflict — decided by the key first, as within the batch above.
        let keys: Vec<&str> = known.iter().map(|r| r.record_key.as_str()).collect();
        let digests: Vec<&[u8]> = known.iter().map(|r| r.digest.as_slice()).collect();
        let (by_key, by_digest) = postgres::loaded_before(&mut tx, &keys, &digests).await?;
        let mut again = Vec::with_capacity(known.len());
        for r in known {
            let before = by_key
                .get(&r.record_key)
                .or_else(|| by_digest.get(r.digest.as_slice()));
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
        let (reprocessed, rewrite) = if reprocess && !again.is_empty() {
            self.reprocess(&mut tx, &again, now).await?
        } else {
            (0, Vec::new())
        };
        let positions_stored = match positions {
            Some(positions) if conflicts.is_empty() => {
                offsets::store(&mut tx, positions).await?;
                true
            }
            _ => false,
        };
        tx.commit().await?;
        crate::failpoint::hit("after-db-commit");
        // Committed: the files are marked for rewriting, so if this fails (or we crash) the
        // retry, a roll or a sweep writes them.
        let rewritten = self.rolls.rewrite(&rewrite).await?;
        conflicts.sort_by_key(|c| c.index);
        Ok(WriteOutcome {
            new_records: new_ids.len(),
            duplicate_records: records.len() - new_ids.len() - conflicts.len(),
            users_written,
            bytes_written: fresh.iter().map(|r| r.payload_text.len() as u64).sum(),
            files_rewritten: rewritten.written,
            reprocessed_records: reprocessed,
            conflicts,
            positions_stored,
        })
    }

    /// Recomputes `known` records (and every other record sharing a processed file with them):
    /// rows upserted in the transaction, their processed files marked for rewriting. Returns
    /// the records recomputed and the files to rewrite.
    async fn reprocess(
        &self,
        tx: &mut sqlx::PgConnection,
        known: &[(&LoadRecord, uuid::Uuid)],
        now: chrono::DateTime<Utc>,
    ) -> Result<(usize, Vec<String>), SinkError> {
        // Rows loaded before migration 3 keep the raw id of their position: recompute under it.
        let known: Vec<LoadRecord> = known
            .iter()
            .map(|(r, stored)| with_raw_id((*r).clone(), *stored))
            .collect();
        let ids: Vec<uuid::Uuid> = known.iter().map(|r| r.raw_id).collect();
        let files = postgres::processed_files_of(tx, &ids).await?;
        let mut covered = HashSet::new();
        let mut rewrite = Vec::new();
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
            covered.extend(records.iter().map(|r| r.raw_id));
            count += records.len();
            rewrite.push(path);
        }
        let rewrite = ledger::mark_rewrite(tx, &rewrite).await?;
        // Records not in a file yet (waiting for a roll, or loaded before files were linked to
        // records): rows only; a roll builds their files from the recomputed state.
        let rest: Vec<&LoadRecord> = known
            .iter()
            .filter(|r| !covered.contains(&r.raw_id))
            .collect();
        if !rest.is_empty() {
            postgres::upsert_processed(tx, &rest, now).await?;
            count += rest.len();
        }
        Ok((count, rewrite))
    }

    /// Writes every Parquet file the ledger has not marked published (a crashed roll's, a
    /// failed rewrite's) and clears a crash's leftovers. Runs at start, periodically and after
    /// a failed write; safe beside other replicas (each file is written under its own lock).
    pub async fn recover(&self) -> Result<RollReport, SinkError> {
        self.rolls.recover().await
    }
}

/// `record` under another raw id (its users too).
pub(crate) fn with_raw_id(mut record: LoadRecord, raw_id: uuid::Uuid) -> LoadRecord {
    record.raw_id = raw_id;
    for u in &mut record.users {
        u.raw_id = raw_id;
    }
    record
}
