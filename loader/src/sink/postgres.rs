//! PostgreSQL: the `raw_data` and `processed_data` rows, in bulk (one `UNNEST` statement per
//! table per batch), and the Parquet ledger (`parquet_files`).
//!
//! Re-delivery is absorbed by the natural keys: a raw row's `record_key` is the record's
//! identity (never its position), `INSERT ... ON CONFLICT DO NOTHING RETURNING` tells which
//! records are new, and only those get processed rows and Parquet files; [`loaded_before`]
//! tells a re-delivery (same bytes) from a conflict (same identity, other bytes).

use crate::batch::{LoadRecord, SourceRecord};
use crate::sink::parquet::{Dataset, StagedFile};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Advisory-lock key guarding the Parquet staging area: batches hold it shared while they stage
/// and register files, recovery holds it exclusively while it sweeps, so recovery never removes
/// a file another loader is about to register.
pub const LEDGER_LOCK: i64 = 0x7261_6e64_6f6d_7573; // "randomus"

/// Migrations embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Takes the shared ledger lock for the rest of the transaction.
pub async fn lock_ledger_shared(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(LEDGER_LOCK)
        .execute(tx)
        .await?;
    Ok(())
}

/// Inserts the raw rows, each with the Parquet files `links` names for it (or none, to be
/// linked later); returns the ids that were new (the rest were already loaded).
pub async fn insert_raw(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
    links: &HashMap<Uuid, (&str, &str)>,
) -> sqlx::Result<HashSet<Uuid>> {
    // A statement per few MB of payload: the driver holds each statement's parameters twice
    // while sending, so this bounds memory without adding round trips worth measuring.
    let mut new = HashSet::with_capacity(records.len());
    for chunk in crate::sink::parquet::chunks_by_bytes(records, RAW_STATEMENT_BYTES) {
        new.extend(insert_raw_chunk(&mut *tx, chunk, created_at, links).await?);
    }
    Ok(new)
}

/// Payload bytes per raw `INSERT` statement.
const RAW_STATEMENT_BYTES: usize = 4 << 20;

async fn insert_raw_chunk(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
    links: &HashMap<Uuid, (&str, &str)>,
) -> sqlx::Result<Vec<Uuid>> {
    let n = records.len();
    let mut ids = Vec::with_capacity(n);
    let mut topics = Vec::with_capacity(n);
    let mut partitions = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n);
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut record_keys = Vec::with_capacity(n);
    let mut digests: Vec<&[u8]> = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut fetched = Vec::with_capacity(n);
    let mut raw_files: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut processed_files: Vec<Option<&str>> = Vec::with_capacity(n);
    for r in records {
        ids.push(r.raw_id);
        topics.push(r.source.topic.as_str());
        partitions.push(r.source.partition);
        offsets.push(r.source.offset);
        keys.push(r.source.key.as_deref());
        record_keys.push(r.record_key.as_str());
        digests.push(&r.digest[..]);
        payloads.push(r.payload_text.as_str());
        counts.push(r.users.len() as i32);
        fetched.push(r.source.fetched_at);
        let link = links.get(&r.raw_id);
        raw_files.push(link.map(|l| l.0));
        processed_files.push(link.map(|l| l.1));
    }
    let rows = sqlx::query(
        "INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at, created_at, raw_file, processed_file, record_key, payload_sha256)
         SELECT r.raw_id, r.topic, r.p, r.o, r.k, r.payload::jsonb, r.n, r.f, $9, r.rf, r.pf, r.rk, r.d
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::text[], $6::text[], $7::int4[], $8::timestamptz[], $10::text[], $11::text[], $12::text[], $13::bytea[])
              AS r(raw_id, topic, p, o, k, payload, n, f, rf, pf, rk, d)
         ON CONFLICT DO NOTHING
         RETURNING raw_id",
    )
    .bind(ids)
    .bind(topics)
    .bind(partitions)
    .bind(offsets)
    .bind(keys)
    .bind(payloads)
    .bind(counts)
    .bind(fetched)
    .bind(created_at)
    .bind(raw_files)
    .bind(processed_files)
    .bind(record_keys)
    .bind(digests)
    .fetch_all(tx)
    .await?;
    rows.iter().map(|row| row.try_get::<Uuid, _>(0)).collect()
}

/// A record loaded before, as `raw_data` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its raw id (for rows loaded before migration 3, derived from its position).
    pub raw_id: Uuid,
    /// Digest of its payload; `None` for rows loaded before migration 3.
    pub digest: Option<Vec<u8>>,
}

/// The rows already holding `record_keys`, by key.
pub async fn loaded_before(
    tx: &mut PgConnection,
    record_keys: &[&str],
) -> sqlx::Result<HashMap<String, Loaded>> {
    if record_keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT record_key, raw_id, payload_sha256 FROM raw_data WHERE record_key = ANY($1)",
    )
    .bind(record_keys)
    .fetch_all(tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>(0)?,
                Loaded {
                    raw_id: r.try_get(1)?,
                    digest: r.try_get(2)?,
                },
            ))
        })
        .collect()
}

/// The `raw_file`/`processed_file` of each record in `files`.
pub fn links_of(files: &[StagedFile]) -> HashMap<Uuid, (&str, &str)> {
    let mut out: HashMap<Uuid, (&str, &str)> = HashMap::new();
    for f in files {
        for id in &f.raw_ids {
            let e = out.entry(*id).or_insert(("", ""));
            match f.dataset {
                Dataset::Raw => e.0 = &f.final_rel,
                Dataset::Processed => e.1 = &f.final_rel,
            }
        }
    }
    out
}

const INSERT_PROCESSED: &str = "INSERT INTO processed_data (raw_id, user_index, user_uuid, full_name, title, first_name, last_name, email,
                                     gender, nationality, city, state, country, postcode, date_of_birth,
                                     registered_date, fetched_at, processed_at, created_at)
         SELECT u.*, $19 FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                                     $14::text[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[],
                                     $18::timestamptz[]) AS u
         ON CONFLICT DO NOTHING";

/// The same rows, recomputed: existing rows are updated in place (their `created_at` kept).
const UPSERT_PROCESSED: &str = "INSERT INTO processed_data (raw_id, user_index, user_uuid, full_name, title, first_name, last_name, email,
                                     gender, nationality, city, state, country, postcode, date_of_birth,
                                     registered_date, fetched_at, processed_at, created_at)
         SELECT u.*, $19 FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                                     $14::text[], $15::timestamptz[], $16::timestamptz[], $17::timestamptz[],
                                     $18::timestamptz[]) AS u
         ON CONFLICT (raw_id, user_index) DO UPDATE SET
             user_uuid = EXCLUDED.user_uuid, full_name = EXCLUDED.full_name, title = EXCLUDED.title,
             first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, email = EXCLUDED.email,
             gender = EXCLUDED.gender, nationality = EXCLUDED.nationality, city = EXCLUDED.city,
             state = EXCLUDED.state, country = EXCLUDED.country, postcode = EXCLUDED.postcode,
             date_of_birth = EXCLUDED.date_of_birth, registered_date = EXCLUDED.registered_date,
             fetched_at = EXCLUDED.fetched_at, processed_at = EXCLUDED.processed_at";

/// Inserts the processed rows of `records`; returns rows written.
pub async fn insert_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    write_processed(tx, records, created_at, INSERT_PROCESSED).await
}

/// Recomputes the processed rows of `records` in place (`--reprocess`); returns rows written.
pub async fn upsert_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
) -> sqlx::Result<u64> {
    write_processed(tx, records, created_at, UPSERT_PROCESSED).await
}

async fn write_processed(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
    sql: &'static str,
) -> sqlx::Result<u64> {
    let n: usize = records.iter().map(|r| r.users.len()).sum();
    if n == 0 {
        return Ok(0);
    }
    let mut raw_ids = Vec::with_capacity(n);
    let mut idx = Vec::with_capacity(n);
    let mut uuids: Vec<Option<String>> = Vec::with_capacity(n);
    let mut full = Vec::with_capacity(n);
    let mut titles: Vec<Option<String>> = Vec::with_capacity(n);
    let mut firsts = Vec::with_capacity(n);
    let mut lasts = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut genders: Vec<Option<String>> = Vec::with_capacity(n);
    let mut nats: Vec<Option<String>> = Vec::with_capacity(n);
    let mut cities: Vec<Option<String>> = Vec::with_capacity(n);
    let mut states: Vec<Option<String>> = Vec::with_capacity(n);
    let mut countries: Vec<Option<String>> = Vec::with_capacity(n);
    let mut postcodes: Vec<Option<String>> = Vec::with_capacity(n);
    let mut dobs: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut registered = Vec::with_capacity(n);
    let mut fetched = Vec::with_capacity(n);
    let mut processed = Vec::with_capacity(n);
    for r in records {
        for u in &r.users {
            raw_ids.push(u.raw_id);
            idx.push(u.user_index);
            uuids.push(u.user_uuid.clone());
            full.push(u.full_name.clone());
            titles.push(u.title.clone());
            firsts.push(u.first_name.clone());
            lasts.push(u.last_name.clone());
            emails.push(u.email.clone());
            genders.push(u.gender.clone());
            nats.push(u.nationality.clone());
            cities.push(u.city.clone());
            states.push(u.state.clone());
            countries.push(u.country.clone());
            postcodes.push(u.postcode.clone());
            dobs.push(u.date_of_birth);
            registered.push(u.registered_date);
            fetched.push(r.source.fetched_at);
            processed.push(u.processed_at);
        }
    }
    let result = sqlx::query(sql)
        .bind(raw_ids)
        .bind(idx)
        .bind(uuids)
        .bind(full)
        .bind(titles)
        .bind(firsts)
        .bind(lasts)
        .bind(emails)
        .bind(genders)
        .bind(nats)
        .bind(cities)
        .bind(states)
        .bind(countries)
        .bind(postcodes)
        .bind(dobs)
        .bind(registered)
        .bind(fetched)
        .bind(processed)
        .bind(created_at)
        .execute(tx)
        .await?;
    Ok(result.rows_affected())
}

/// Registers staged files in the ledger, in the batch's transaction.
pub async fn register_files(tx: &mut PgConnection, files: &[StagedFile]) -> sqlx::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut path = Vec::new();
    let mut staged = Vec::new();
    let mut dataset = Vec::new();
    let mut topic = Vec::new();
    let mut partition = Vec::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut rows = Vec::new();
    for f in files {
        path.push(f.final_rel.clone());
        staged.push(f.staged_rel.clone());
        dataset.push(f.dataset.as_str().to_string());
        topic.push(f.topic.clone());
        partition.push(f.partition);
        first.push(f.first_offset);
        last.push(f.last_offset);
        rows.push(f.rows as i64);
    }
    sqlx::query(
        "INSERT INTO parquet_files (path, staged_path, dataset, topic, kafka_partition, first_offset, last_offset, row_count, state)
         SELECT f.*, 'staged' FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::int8[], $8::int8[]) AS f",
    )
    .bind(path)
    .bind(staged)
    .bind(dataset)
    .bind(topic)
    .bind(partition)
    .bind(first)
    .bind(last)
    .bind(rows)
    .execute(tx)
    .await?;
    Ok(())
}

/// Records which files hold which records (see migration 2).
pub async fn link_files(tx: &mut PgConnection, files: &[StagedFile]) -> sqlx::Result<()> {
    for dataset in [Dataset::Raw, Dataset::Processed] {
        let mut ids = Vec::new();
        let mut paths = Vec::new();
        for f in files.iter().filter(|f| f.dataset == dataset) {
            for id in &f.raw_ids {
                ids.push(*id);
                paths.push(f.final_rel.clone());
            }
        }
        if ids.is_empty() {
            continue;
        }
        let sql = match dataset {
            Dataset::Raw => {
                "UPDATE raw_data r SET raw_file = u.path FROM UNNEST($1::uuid[], $2::text[]) AS u(raw_id, path) WHERE r.raw_id = u.raw_id"
            }
            Dataset::Processed => {
                "UPDATE raw_data r SET processed_file = u.path FROM UNNEST($1::uuid[], $2::text[]) AS u(raw_id, path) WHERE r.raw_id = u.raw_id"
            }
        };
        sqlx::query(sql)
            .bind(ids)
            .bind(paths)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
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

/// Every record in the processed file `path`, as the loader consumed it, with its stored raw id.
pub async fn records_in_file(
    tx: &mut PgConnection,
    path: &str,
) -> sqlx::Result<Vec<(Uuid, SourceRecord)>> {
    records_in(tx, Dataset::Processed, path).await
}

/// Every record the `dataset` file `path` holds, as the loader consumed it, with its raw id.
pub async fn records_in(
    tx: &mut PgConnection,
    dataset: Dataset,
    path: &str,
) -> sqlx::Result<Vec<(Uuid, SourceRecord)>> {
    let sql = match dataset {
        Dataset::Raw => {
            "SELECT topic, kafka_partition, kafka_offset, fetch_id, payload::text, fetched_at, raw_id
             FROM raw_data WHERE raw_file = $1 ORDER BY kafka_partition, kafka_offset"
        }
        Dataset::Processed => {
            "SELECT topic, kafka_partition, kafka_offset, fetch_id, payload::text, fetched_at, raw_id
             FROM raw_data WHERE processed_file = $1 ORDER BY kafka_partition, kafka_offset"
        }
    };
    let rows = sqlx::query(sql).bind(path).fetch_all(tx).await?;
    rows.iter()
        .map(|r| {
            let key: Option<String> = r.try_get(3)?;
            Ok((
                r.try_get(6)?,
                SourceRecord {
                    topic: r.try_get(0)?,
                    partition: r.try_get(1)?,
                    offset: r.try_get(2)?,
                    fetch_id: key.clone(),
                    key,
                    payload: Some(r.try_get::<String, _>(4)?.into_bytes()),
                    fetched_at: r.try_get(5)?,
                },
            ))
        })
        .collect()
}

/// Puts a published file back in the ledger as staged, pointing at its rewritten version.
pub async fn restage_file(tx: &mut PgConnection, file: &StagedFile) -> sqlx::Result<()> {
    sqlx::query("UPDATE parquet_files SET state = 'staged', staged_path = $2, row_count = $3, published_at = NULL WHERE path = $1")
        .bind(&file.final_rel)
        .bind(&file.staged_rel)
        .bind(file.rows as i64)
        .execute(tx)
        .await?;
    Ok(())
}

/// Marks files as moved into place.
pub async fn mark_published(conn: &mut PgConnection, final_paths: &[String]) -> sqlx::Result<()> {
    if final_paths.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE parquet_files SET state = 'published', published_at = now() WHERE path = ANY($1) AND state = 'staged'")
        .bind(final_paths.to_vec())
        .execute(conn)
        .await?;
    Ok(())
}

/// A file the ledger says is staged: (final path, staged path), both relative to `DATA_DIR`.
pub async fn staged_files(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query(
        "SELECT path, staged_path FROM parquet_files WHERE state = 'staged' ORDER BY created_at",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
        .collect()
}
