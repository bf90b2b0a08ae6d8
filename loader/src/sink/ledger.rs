//! The Parquet ledger in PostgreSQL: which records wait for a roll (`raw_data.parquet_pending`),
//! which files are claimed, in their table or to be rewritten (`parquet_files`), the advisory lock
//! that keeps two rolls off one partition's claim, and the leases that keep two writers off one
//! file.

use super::parquet::Dataset;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// Advisory-lock class of a partition's roll (the object id is a hash of topic and partition):
/// one claim at a time per partition, so files never interleave offsets.
pub const ROLL_LOCK: i32 = 0x726f_6c6c; // "roll"

/// Asks for the files `paths` to be written again from their rows (`--reprocess`); returns the
/// files marked. A file a compaction has replaced is followed to the file that holds its
/// records now.
pub async fn mark_rewrite(tx: &mut PgConnection, paths: &[String]) -> sqlx::Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    // The lease goes: a writer of the older generation (a compaction under way) is fenced at
    // its commit, and the rewrite need not wait for its lease to run out.
    // Locked first, and followed in a statement of its own: a compaction registering a file of
    // these at this moment is waited for and then seen (a statement's snapshot is taken when
    // it starts).
    sqlx::query("SELECT 1 FROM parquet_files WHERE path = ANY($1) ORDER BY path FOR UPDATE")
        .bind(paths.to_vec())
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar(
        "WITH RECURSIVE holder(path) AS (
             SELECT path FROM parquet_files WHERE path = ANY($1)
             UNION SELECT f.compacted_into FROM parquet_files f JOIN holder h ON f.path = h.path
             WHERE f.compacted_into IS NOT NULL)
         UPDATE parquet_files SET state = 'rewrite', generation = generation + 1, published_at = NULL,
             lease_owner = NULL, lease_until = NULL
         WHERE path IN (SELECT path FROM holder) AND state <> 'compacted'
         RETURNING path",
    )
    .bind(paths.to_vec())
    .fetch_all(tx)
    .await
}

/// A partition's records waiting for a roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Records waiting.
    pub records: i64,
    /// Their payload bytes.
    pub bytes: i64,
    /// When the oldest was loaded.
    pub oldest: DateTime<Utc>,
}

/// What waits for a roll, per partition.
pub async fn waiting(conn: &mut PgConnection) -> sqlx::Result<Vec<Waiting>> {
    let rows = sqlx::query(
        "SELECT topic, kafka_partition, count(*), coalesce(sum(payload_bytes), 0)::int8, min(created_at)
         FROM raw_data WHERE parquet_pending GROUP BY topic, kafka_partition ORDER BY topic, kafka_partition",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Waiting {
                topic: r.try_get(0)?,
                partition: r.try_get(1)?,
                records: r.try_get(2)?,
                bytes: r.try_get(3)?,
                oldest: r.try_get(4)?,
            })
        })
        .collect()
}

/// A record waiting for a roll, as the claim needs it.
#[derive(Debug, Clone)]
pub struct WaitingRecord {
    /// Its raw id.
    pub raw_id: Uuid,
    /// Its offset.
    pub offset: i64,
    /// When it was fetched (its date partition).
    pub fetched_at: DateTime<Utc>,
    /// Payload bytes.
    pub bytes: i64,
    /// Users in it.
    pub users: i64,
}

/// The records of `topic`'s `partition` waiting for a roll, in offset order.
pub async fn waiting_records(
    tx: &mut PgConnection,
    topic: &str,
    partition: i32,
) -> sqlx::Result<Vec<WaitingRecord>> {
    let rows = sqlx::query(
        "SELECT raw_id, kafka_offset, fetched_at, coalesce(payload_bytes, 0)::int8, user_count::int8
         FROM raw_data WHERE parquet_pending AND topic = $1 AND kafka_partition = $2 ORDER BY kafka_offset",
    )
    .bind(topic)
    .bind(partition)
    .fetch_all(tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(WaitingRecord {
                raw_id: r.try_get(0)?,
                offset: r.try_get(1)?,
                fetched_at: r.try_get(2)?,
                bytes: r.try_get(3)?,
                users: r.try_get(4)?,
            })
        })
        .collect()
}

/// A file a roll claims: its two paths and what they will hold.
#[derive(Debug, Clone)]
pub struct Claim {
    /// `raw/date=…/name`.
    pub raw_path: String,
    /// `processed/date=…/name`.
    pub processed_path: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Lowest offset.
    pub first_offset: i64,
    /// Highest offset.
    pub last_offset: i64,
    /// Records (raw rows).
    pub records: Vec<Uuid>,
    /// Users (processed rows).
    pub users: i64,
    /// Payload bytes of the records.
    pub bytes: i64,
}

/// Registers `claim`'s two files as pending and takes its records off the waiting list; false
/// (nothing changed) if another roll took any of them first.
pub async fn claim(tx: &mut PgConnection, claim: &Claim) -> sqlx::Result<bool> {
    let taken = sqlx::query(
        "UPDATE raw_data SET parquet_pending = false, raw_file = $2, processed_file = $3
         WHERE raw_id = ANY($1) AND parquet_pending",
    )
    .bind(&claim.records)
    .bind(&claim.raw_path)
    .bind(&claim.processed_path)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken != claim.records.len() as u64 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO parquet_files (path, dataset, topic, kafka_partition, first_offset, last_offset, row_count, state, input_bytes)
         VALUES ($1, 'raw', $3, $4, $5, $6, $7, 'pending', $9), ($2, 'processed', $3, $4, $5, $6, $8, 'pending', $9)",
    )
    .bind(&claim.raw_path)
    .bind(&claim.processed_path)
    .bind(&claim.topic)
    .bind(claim.partition)
    .bind(claim.first_offset)
    .bind(claim.last_offset)
    .bind(claim.records.len() as i64)
    .bind(claim.users)
    .bind(claim.bytes)
    .execute(tx)
    .await?;
    Ok(true)
}

/// A file the ledger has not marked published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublished {
    /// Its path.
    pub path: String,
    /// `pending`, `rewrite`, `adopt`, `compact` or `staged`.
    pub state: String,
    /// Its rewrite generation.
    pub generation: i64,
}

/// Files not yet published, oldest first; only `topic`'s `partition` when given.
pub async fn unpublished(
    conn: &mut PgConnection,
    only: Option<(&str, i32)>,
) -> sqlx::Result<Vec<Unpublished>> {
    let rows = sqlx::query(
        "SELECT path, state, generation FROM parquet_files
         WHERE state NOT IN ('published', 'compacted', 'failed') AND ($1::text IS NULL OR (topic = $1 AND kafka_partition = $2))
         ORDER BY created_at, path",
    )
    .bind(only.map(|(t, _)| t))
    .bind(only.map_or(0, |(_, p)| p))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Unpublished {
                path: r.try_get(0)?,
                state: r.try_get(1)?,
                generation: r.try_get(2)?,
            })
        })
        .collect()
}

/// The partitions with files not yet published.
pub async fn unpublished_partitions(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, i32)>> {
    let rows = sqlx::query(
        "SELECT DISTINCT topic, kafka_partition FROM parquet_files WHERE state NOT IN ('published', 'compacted', 'failed') ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The file's state and generation, if the ledger knows it.
pub async fn file_state(conn: &mut PgConnection, path: &str) -> sqlx::Result<Option<Unpublished>> {
    let row = sqlx::query("SELECT path, state, generation FROM parquet_files WHERE path = $1")
        .bind(path)
        .fetch_optional(conn)
        .await?;
    row.map(|r| {
        Ok(Unpublished {
            path: r.try_get(0)?,
            state: r.try_get(1)?,
            generation: r.try_get(2)?,
        })
    })
    .transpose()
}

/// Takes `owner`'s lease on `path` for `ttl` (free, run out, or ours already) and returns the
/// file as it stands; `None` if another writer holds it, or it is published or failed.
pub async fn lease(
    conn: &mut PgConnection,
    path: &str,
    owner: Uuid,
    ttl: std::time::Duration,
) -> sqlx::Result<Option<Unpublished>> {
    let row = sqlx::query(
        "UPDATE parquet_files SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
         WHERE path = $1 AND state NOT IN ('published', 'compacted', 'failed')
           AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $2)
         RETURNING path, state, generation",
    )
    .bind(path)
    .bind(owner)
    .bind(ttl.as_secs_f64())
    .fetch_optional(conn)
    .await?;
    row.map(|r| {
        Ok(Unpublished {
            path: r.try_get(0)?,
            state: r.try_get(1)?,
            generation: r.try_get(2)?,
        })
    })
    .transpose()
}

/// Gives `owner`'s lease on `path` up (its write failed: let the next writer go at once).
pub async fn release(conn: &mut PgConnection, path: &str, owner: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE parquet_files SET lease_owner = NULL, lease_until = NULL WHERE path = $1 AND lease_owner = $2")
        .bind(path)
        .bind(owner)
        .execute(conn)
        .await?;
    Ok(())
}

/// The generation of each of `paths` the ledger still wants written (not published, not failed).
pub async fn generations(
    conn: &mut PgConnection,
    paths: &[String],
) -> sqlx::Result<std::collections::HashMap<String, i64>> {
    let rows = sqlx::query(
        "SELECT path, generation FROM parquet_files WHERE path = ANY($1) AND state NOT IN ('published', 'compacted', 'failed')",
    )
    .bind(paths)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The rows the ledger expects in `path` (raw: records, processed: users).
pub async fn row_count(conn: &mut PgConnection, path: &str) -> sqlx::Result<i64> {
    let sql = match Dataset::of_path(path) {
        Dataset::Raw => "SELECT count(*) FROM raw_data WHERE raw_file = $1",
        Dataset::Processed => {
            "SELECT count(*) FROM processed_data p JOIN raw_data r USING (raw_id) WHERE r.processed_file = $1"
        }
    };
    sqlx::query_scalar(sql).bind(path).fetch_one(conn).await
}

/// Marks the file in the table — its object `object`, added by table version `version` — unless
/// a newer rewrite was asked for meanwhile. A published raw file holds its records' exact
/// payloads, so their waiting copies (`raw_payload_text`) go.
pub async fn mark_published(
    conn: &mut PgConnection,
    path: &str,
    generation: i64,
    object: &str,
    version: u64,
    rows: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE parquet_files SET state = 'published', published_at = now(), row_count = $3,
             object = $4, table_version = $5, lease_owner = NULL, lease_until = NULL, failed_reason = NULL
         WHERE path = $1 AND generation = $2 AND state NOT IN ('published', 'compacted')",
    )
    .bind(path)
    .bind(generation)
    .bind(rows)
    .bind(object)
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 1 && Dataset::of_path(path) == Dataset::Raw {
        super::postgres::forget_waiting_text(conn, path).await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Marks the file as one that cannot be built (`reason`): counted, alerted, and left for an
/// operator (`UPDATE parquet_files SET state = 'pending' WHERE state = 'failed'` retries it).
pub async fn mark_failed(
    conn: &mut PgConnection,
    path: &str,
    generation: i64,
    reason: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE parquet_files SET state = 'failed', failed_reason = $3, lease_owner = NULL, lease_until = NULL
         WHERE path = $1 AND generation = $2 AND state NOT IN ('published', 'compacted', 'failed')",
    )
    .bind(path)
    .bind(generation)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Files that cannot be built, for the gauge and `loader status`.
pub async fn failed_files(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM parquet_files WHERE state = 'failed'")
        .fetch_one(conn)
        .await
}

/// A published file a compaction may take: smaller than a roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallFile {
    /// Its path.
    pub path: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Lowest offset.
    pub first_offset: i64,
    /// Highest offset.
    pub last_offset: i64,
    /// Rows in it.
    pub rows: i64,
    /// Payload bytes of its records.
    pub input_bytes: i64,
}

/// The published `dataset` files under `below` payload bytes, in partition and offset order.
pub async fn small_files(
    conn: &mut PgConnection,
    dataset: Dataset,
    below: i64,
) -> sqlx::Result<Vec<SmallFile>> {
    let rows = sqlx::query(
        "SELECT path, topic, kafka_partition, first_offset, last_offset, coalesce(row_count, 0)::int8, coalesce(input_bytes, 0)
         FROM parquet_files WHERE state = 'published' AND dataset = $1 AND coalesce(input_bytes, 0) < $2
         ORDER BY topic, kafka_partition, first_offset, path",
    )
    .bind(dataset.as_str())
    .bind(below)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SmallFile {
                path: r.try_get(0)?,
                topic: r.try_get(1)?,
                partition: r.try_get(2)?,
                first_offset: r.try_get(3)?,
                last_offset: r.try_get(4)?,
                rows: r.try_get(5)?,
                input_bytes: r.try_get(6)?,
            })
        })
        .collect()
}

/// Registers `path` as the compaction of `members` (published files of one dataset, topic and
/// partition): the file is `compact`, the members `compacted` into it, and their records name
/// it. False (nothing changed) when a member is no longer published or is being changed by
/// someone else (a `--reprocess`, another compaction).
pub async fn register_compaction(
    tx: &mut PgConnection,
    path: &str,
    members: &[SmallFile],
) -> sqlx::Result<bool> {
    let (Some(first), Some(_)) = (members.first(), members.get(1)) else {
        return Ok(false);
    };
    let dataset = Dataset::of_path(path);
    let paths: Vec<String> = members.iter().map(|m| m.path.clone()).collect();
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT path FROM parquet_files WHERE path = ANY($1) AND state = 'published'
         ORDER BY path FOR UPDATE SKIP LOCKED",
    )
    .bind(&paths)
    .fetch_all(&mut *tx)
    .await?;
    if locked.len() != paths.len() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO parquet_files (path, dataset, topic, kafka_partition, first_offset, last_offset, row_count, state, input_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'compact', $8)",
    )
    .bind(path)
    .bind(dataset.as_str())
    .bind(&first.topic)
    .bind(first.partition)
    .bind(members.iter().map(|m| m.first_offset).min().unwrap_or_default())
    .bind(members.iter().map(|m| m.last_offset).max().unwrap_or_default())
    .bind(members.iter().map(|m| m.rows).sum::<i64>())
    .bind(members.iter().map(|m| m.input_bytes).sum::<i64>())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE parquet_files SET state = 'compacted', compacted_into = $2 WHERE path = ANY($1)",
    )
    .bind(&paths)
    .bind(path)
    .execute(&mut *tx)
    .await?;
    let repoint = match dataset {
        Dataset::Raw => "UPDATE raw_data SET raw_file = $2 WHERE raw_file = ANY($1)",
        Dataset::Processed => {
            "UPDATE raw_data SET processed_file = $2 WHERE processed_file = ANY($1)"
        }
    };
    sqlx::query(repoint)
        .bind(&paths)
        .bind(path)
        .execute(tx)
        .await?;
    Ok(true)
}

/// The objects (relative to `PARQUET_URL`) that held the files compacted into `path`, in offset
/// order: what its object is built from, and what its commit removes.
pub async fn members_of(conn: &mut PgConnection, path: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT coalesce(object, path) FROM parquet_files WHERE compacted_into = $1 ORDER BY first_offset, path",
    )
    .bind(path)
    .fetch_all(conn)
    .await
}

/// How many files were compacted into `paths` that are now published (in their table).
pub async fn published_members(conn: &mut PgConnection, paths: &[String]) -> sqlx::Result<usize> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parquet_files m JOIN parquet_files c ON c.path = m.compacted_into
         WHERE c.path = ANY($1) AND c.state = 'published'",
    )
    .bind(paths)
    .fetch_one(conn)
    .await?;
    Ok(usize::try_from(n).unwrap_or_default())
}
