//! PostgreSQL's rows: `raw_data` and `processed_data`, in bulk (one `UNNEST` statement per table
//! per batch), and the records a Parquet file holds. The Parquet ledger is [`super::ledger`].
//!
//! Re-delivery is absorbed by the natural keys: a raw row's `record_key` is the record's
//! identity (never its position), `INSERT ... ON CONFLICT DO NOTHING RETURNING` tells which
//! records are new, and only those get processed rows and Parquet files; [`loaded_before`]
//! tells a re-delivery (same bytes) from a conflict (same identity, other bytes).

use crate::batch::{LoadRecord, SourceRecord};
use crate::rows::{Pg, ProcessedColumns, RawColumns, Shape, pg_columns};
use crate::sink::parquet::Dataset;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use uuid::Uuid;

/// Migrations embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Inserts the raw rows, waiting for a Parquet roll; returns the ids that were new (the rest
/// were already loaded).
pub async fn insert_raw(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<HashSet<Uuid>> {
    // A statement per few MB of payload: the driver holds each statement's parameters twice
    // while sending, so this bounds memory without adding round trips worth measuring.
    let mut new = HashSet::with_capacity(records.len());
    for chunk in crate::sink::parquet::chunks_by_bytes(records, RAW_STATEMENT_BYTES) {
        new.extend(insert_raw_chunk(&mut *tx, chunk, created_at).await?);
    }
    Ok(new)
}

/// Payload bytes per raw `INSERT` statement.
const RAW_STATEMENT_BYTES: usize = 4 << 20;

/// `INSERT INTO raw_data` from one array per [`RawColumns`] PostgreSQL column (the payload as
/// `jsonb`), then `created_at`; the new rows' payload text goes to the unlogged
/// `raw_payload_text`, where it waits for the raw Parquet file (migration 9), and their ids come
/// back. One statement: the payload crosses the wire once.
pub(crate) static INSERT_RAW: LazyLock<String> = LazyLock::new(|| {
    let extra = [("created_at", None), ("parquet_pending", Some("true"))];
    let insert = Unnest::<RawColumns>::new(&extra);
    format!(
        "WITH r AS MATERIALIZED (SELECT * FROM {source}), \
         new AS ({insert} ON CONFLICT DO NOTHING RETURNING raw_id) \
         INSERT INTO raw_payload_text (raw_id, payload_text) \
         SELECT r.raw_id, r.payload FROM r JOIN new USING (raw_id) RETURNING raw_id",
        source = insert.source(),
        insert = insert.insert_from("raw_data", "r"),
    )
});

async fn insert_raw_chunk(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<Vec<Uuid>> {
    let rows = RawColumns::bind(sqlx::query(INSERT_RAW.as_str()), records)
        .bind(created_at)
        .fetch_all(tx)
        .await?;
    rows.iter().map(|row| row.try_get::<Uuid, _>(0)).collect()
}

/// `INSERT INTO {table}` of one `UNNEST` array per PostgreSQL column of shape `S`, bound in
/// [`Shape::COLUMNS`] order, plus `extra` columns: SQL, or `None` for the next bind parameter.
fn insert_unnest<S: Shape>(table: &str, extra: &[(&str, Option<&str>)]) -> String {
    let unnest = Unnest::<S>::new(extra);
    unnest.insert_from(table, &unnest.source())
}

/// The parts of an `INSERT … SELECT … FROM UNNEST(…) AS r(…)` of shape `S`.
struct Unnest<S> {
    targets: String,
    values: String,
    arrays: String,
    aliases: String,
    shape: std::marker::PhantomData<S>,
}

impl<S: Shape> Unnest<S> {
    fn new(extra: &[(&str, Option<&str>)]) -> Self {
        let columns: Vec<_> = pg_columns::<S>().collect();
        let mut next = columns.len();
        let names: Vec<&str> = columns.iter().map(|c| c.name).collect();
        let targets = names
            .iter()
            .copied()
            .chain(extra.iter().map(|(name, _)| *name))
            .collect::<Vec<_>>()
            .join(", ");
        let values = columns
            .iter()
            .map(|c| match c.pg {
                Pg::Jsonb => format!("r.{}::jsonb", c.name),
                _ => format!("r.{}", c.name),
            })
            .chain(extra.iter().map(|(_, sql)| match sql {
                Some(sql) => (*sql).to_string(),
                None => {
                    next += 1;
                    format!("${next}")
                }
            }))
            .collect::<Vec<_>>()
            .join(", ");
        let arrays = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, c.pg_type))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            targets,
            values,
            arrays,
            aliases: names.join(", "),
            shape: std::marker::PhantomData,
        }
    }

    /// `UNNEST(…) AS r(…)`: one row per record, its columns named as the shape's.
    fn source(&self) -> String {
        format!("UNNEST({}) AS r({})", self.arrays, self.aliases)
    }

    /// The `INSERT` of `table` from `from`, a source whose rows are named `r`.
    fn insert_from(&self, table: &str, from: &str) -> String {
        format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {from}",
            self.targets, self.values
        )
    }
}

/// Deletes the waiting payload text of the records of the raw file `path`, once it is
/// published: in `raw_payload_text`, and (left by a loader of an earlier version, migration 9)
/// in `raw_data.payload_text`.
pub async fn forget_waiting_text(conn: &mut PgConnection, path: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM raw_payload_text w USING raw_data r WHERE r.raw_file = $1 AND w.raw_id = r.raw_id",
    )
    .bind(path)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE raw_data SET payload_text = NULL WHERE raw_file = $1 AND payload_text IS NOT NULL",
    )
    .bind(path)
    .execute(conn)
    .await?;
    Ok(())
}

/// A record loaded before, as `raw_data` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its raw id (for rows loaded before migration 3, derived from its position).
    pub raw_id: Uuid,
    /// Digest of its payload; `None` for rows loaded before migration 3.
    pub digest: Option<Vec<u8>>,
}

/// The rows already holding `record_keys` or `digests` (the same bytes under another key kind):
/// by key, and by digest.
pub async fn loaded_before(
    tx: &mut PgConnection,
    record_keys: &[&str],
    digests: &[&[u8]],
) -> sqlx::Result<(HashMap<String, Loaded>, HashMap<Vec<u8>, Loaded>)> {
    if record_keys.is_empty() && digests.is_empty() {
        return Ok(Default::default());
    }
    let rows = sqlx::query(
        "SELECT record_key, raw_id, payload_sha256 FROM raw_data
         WHERE record_key = ANY($1) OR payload_sha256 = ANY($2)",
    )
    .bind(record_keys)
    .bind(digests)
    .fetch_all(tx)
    .await?;
    let (mut by_key, mut by_digest) = (HashMap::new(), HashMap::new());
    for r in &rows {
        let loaded = Loaded {
            raw_id: r.try_get(1)?,
            digest: r.try_get(2)?,
        };
        if let Some(d) = &loaded.digest {
            by_digest.insert(d.clone(), loaded.clone());
        }
        by_key.insert(r.try_get::<String, _>(0)?, loaded);
    }
    Ok((by_key, by_digest))
}

/// `INSERT INTO processed_data` from one array per [`ProcessedColumns`] PostgreSQL column, then
/// `created_at`.
fn insert_processed_sql() -> String {
    insert_unnest::<ProcessedColumns>("processed_data", &[("created_at", None)])
}

/// The processed rows, new ones only.
static INSERT_PROCESSED: LazyLock<String> =
    LazyLock::new(|| insert_processed_sql() + " ON CONFLICT DO NOTHING");

/// The same rows, recomputed: existing rows are updated in place (their `created_at` kept).
static UPSERT_PROCESSED: LazyLock<String> = LazyLock::new(|| {
    let key = ["raw_id", "user_index"];
    let set = pg_columns::<ProcessedColumns>()
        .filter(|c| !key.contains(&c.name))
        .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{} ON CONFLICT ({}) DO UPDATE SET {set}",
        insert_processed_sql(),
        key.join(", ")
    )
});

/// Inserts the processed rows of `records`; returns rows written.
pub async fn insert_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    write_processed(tx, records, created_at, INSERT_PROCESSED.as_str()).await
}

/// Recomputes the processed rows of `records` in place (`--reprocess`); returns rows written.
pub async fn upsert_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    write_processed(tx, records, created_at, UPSERT_PROCESSED.as_str()).await
}

async fn write_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
    sql: &'static str,
) -> sqlx::Result<u64> {
    let users: Vec<_> = records
        .iter()
        .flat_map(|r| r.users.iter().map(move |u| (*r, u)))
        .collect();
    if users.is_empty() {
        return Ok(0);
    }
    let result = ProcessedColumns::bind(sqlx::query(sql), &users)
        .bind(created_at)
        .execute(tx)
        .await?;
    Ok(result.rows_affected())
}

/// The processed files holding any of `raw_ids`.
pub async fn processed_files_of(
    tx: &mut PgConnection,
    raw_ids: &[Uuid],
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT processed_file FROM raw_data WHERE raw_id = ANY($1) AND processed_file IS NOT NULL ORDER BY 1")
        .bind(raw_ids.to_vec())
        .fetch_all(tx)
        .await
}

/// The records of the processed file `path`, as the loader consumed them (the payload as the raw
/// file holds it), with their raw ids: what a processed file is recomputed from.
pub async fn records_in_file(
    tx: &mut PgConnection,
    path: &str,
) -> sqlx::Result<Vec<(Uuid, SourceRecord)>> {
    let page = stored_records(
        tx,
        Dataset::Processed,
        path,
        (i64::MIN, Uuid::nil()),
        i64::MAX,
    );
    Ok(page
        .await?
        .into_iter()
        .map(|r| {
            let mut source = r.source;
            source.payload = Some(r.payload_text.into_bytes());
            (r.raw_id, source)
        })
        .collect())
}

/// The rows (at most `limit`, after `after` in (offset, raw id) order) of the raw file `path`
/// as `raw_data` holds them, with the stored user count: a raw file needs no users, so its rows
/// are not decoded again to be written. Only the fields the raw Parquet columns read are filled.
pub async fn raw_rows_in(
    conn: &mut PgConnection,
    path: &str,
    after: (i64, Uuid),
    limit: i64,
) -> sqlx::Result<Vec<LoadRecord>> {
    let page = stored_records(conn, Dataset::Raw, path, after, limit).await?;
    Ok(page
        .into_iter()
        .map(|r| LoadRecord {
            raw_id: r.raw_id,
            record_key: String::new(),
            digest: [0; 32],
            source: r.source,
            payload_text: r.payload_text,
            users: Vec::new(),
            stored_user_count: Some(r.user_count),
        })
        .collect())
}

/// Binds a page query's `$1`–`$4`: the file, the (offset, raw id) to read after, the page size.
fn page_of<'q>(
    query: crate::rows::PgQuery<'q>,
    path: &'q str,
    after: (i64, Uuid),
    limit: i64,
) -> crate::rows::PgQuery<'q> {
    query.bind(path).bind(after.0).bind(after.1).bind(limit)
}

/// A record of a file as `raw_data` holds it.
struct StoredRecord {
    raw_id: Uuid,
    /// Where it was consumed from (no payload).
    source: SourceRecord,
    /// The payload as the raw file holds it.
    payload_text: String,
    user_count: i32,
}

/// Up to `limit` records of the `dataset` file `path` after `after` in (offset, raw id) order.
/// (A re-created topic can put two records at one offset, hence the raw id.) The payload text is
/// the one waiting for the raw file, else (left by an earlier version) in raw_data, else rendered
/// from the jsonb (a crash emptied the unlogged table, or the file is rewritten).
async fn stored_records(
    conn: &mut PgConnection,
    dataset: Dataset,
    path: &str,
    after: (i64, Uuid),
    limit: i64,
) -> sqlx::Result<Vec<StoredRecord>> {
    let file = match dataset {
        Dataset::Raw => "raw_file",
        Dataset::Processed => "processed_file",
    };
    let sql = format!(
        "SELECT r.topic, r.kafka_partition, r.kafka_offset, r.fetch_id,
                coalesce(w.payload_text, r.payload_text, r.payload::text), r.fetched_at, r.raw_id,
                r.user_count
         FROM raw_data r LEFT JOIN raw_payload_text w USING (raw_id)
         WHERE r.{file} = $1 AND (r.kafka_offset, r.raw_id) > ($2, $3)
         ORDER BY r.kafka_offset, r.raw_id LIMIT $4"
    );
    let rows = page_of(sqlx::query(sqlx::AssertSqlSafe(sql)), path, after, limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            let fetch_id: Option<String> = r.try_get(3)?;
            Ok(StoredRecord {
                raw_id: r.try_get(6)?,
                source: SourceRecord {
                    topic: r.try_get(0)?,
                    partition: r.try_get(1)?,
                    offset: r.try_get(2)?,
                    key: fetch_id.clone(),
                    fetch_id,
                    payload: None,
                    fetched_at: r.try_get(5)?,
                    headers: Vec::new(),
                },
                payload_text: r.try_get(4)?,
                user_count: r.try_get(7)?,
            })
        })
        .collect()
}

/// The records (at most `limit`, after `after` in (offset, raw id) order) of the processed file
/// `path` with their users exactly as `processed_data` holds them: a processed file is built
/// from the rows PostgreSQL holds, not recomputed at roll time, so the two sinks agree and a
/// transform change cannot make a file unbuildable. Only the fields the processed columns read
/// are filled (no payload).
pub async fn processed_rows_in(
    conn: &mut PgConnection,
    path: &str,
    after: (i64, Uuid),
    limit: i64,
) -> sqlx::Result<Vec<LoadRecord>> {
    let query = sqlx::query(
        "WITH recs AS (
             SELECT raw_id, record_key, topic, kafka_partition, kafka_offset, fetch_id, fetched_at
             FROM raw_data WHERE processed_file = $1 AND (kafka_offset, raw_id) > ($2, $3)
             ORDER BY kafka_offset, raw_id LIMIT $4)
         SELECT r.raw_id, r.record_key, r.topic, r.kafka_partition, r.kafka_offset, r.fetch_id, r.fetched_at,
                p.user_index, p.user_uuid, p.full_name, p.title, p.first_name, p.last_name, p.email,
                p.gender, p.nationality, p.city, p.state, p.country, p.postcode, p.date_of_birth,
                p.registered_date, p.processed_at
         FROM recs r LEFT JOIN processed_data p USING (raw_id)
         ORDER BY r.kafka_offset, r.raw_id, p.user_index",
    );
    let rows = page_of(query, path, after, limit).fetch_all(conn).await?;
    let mut out: Vec<LoadRecord> = Vec::new();
    for r in &rows {
        let raw_id: Uuid = r.try_get(0)?;
        if out.last().is_none_or(|l| l.raw_id != raw_id) {
            let fetch_id: Option<String> = r.try_get(5)?;
            out.push(LoadRecord {
                raw_id,
                record_key: r.try_get(1)?,
                digest: [0; 32],
                source: SourceRecord {
                    topic: r.try_get(2)?,
                    partition: r.try_get(3)?,
                    offset: r.try_get(4)?,
                    key: fetch_id.clone(),
                    fetch_id,
                    payload: None,
                    fetched_at: r.try_get(6)?,
                    headers: Vec::new(),
                },
                payload_text: String::new(),
                users: Vec::new(),
                stored_user_count: None,
            });
        }
        let Some(user_index) = r.try_get::<Option<i32>, _>(7)? else {
            continue;
        };
        if let Some(record) = out.last_mut() {
            record.users.push(crate::rows::ProcessedUser {
                raw_id,
                user_index,
                user_uuid: r.try_get(8)?,
                full_name: r.try_get(9)?,
                title: r.try_get(10)?,
                first_name: r.try_get(11)?,
                last_name: r.try_get(12)?,
                email: r.try_get(13)?,
                gender: r.try_get(14)?,
                nationality: r.try_get(15)?,
                city: r.try_get(16)?,
                state: r.try_get(17)?,
                country: r.try_get(18)?,
                postcode: r.try_get(19)?,
                date_of_birth: r.try_get(20)?,
                registered_date: r.try_get(21)?,
                processed_at: r.try_get(22)?,
            });
        }
    }
    Ok(out)
}

/// How many records of the `dataset` file `path` to read per page so that a page holds about
/// `bytes` of payload (raw) or `rows` users (processed), judged by the file's largest record —
/// never a fixed count whatever their size (64 records of 5.5 MB were a whole file at once).
pub async fn page_size(
    conn: &mut PgConnection,
    dataset: Dataset,
    path: &str,
    bytes: i64,
    rows: i64,
) -> sqlx::Result<i64> {
    let (sql, budget) = match dataset {
        // Rows loaded before payload_bytes existed count as the largest response the API makes.
        Dataset::Raw => (
            "SELECT coalesce(max(coalesce(payload_bytes, 6000000)), 1)::int8 FROM raw_data WHERE raw_file = $1",
            bytes,
        ),
        Dataset::Processed => (
            "SELECT coalesce(max(user_count), 1)::int8 FROM raw_data WHERE processed_file = $1",
            rows,
        ),
    };
    let largest: i64 = sqlx::query_scalar(sql).bind(path).fetch_one(conn).await?;
    Ok((budget / largest.max(1)).clamp(1, 10_000))
}
