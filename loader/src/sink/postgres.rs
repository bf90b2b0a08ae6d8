//! PostgreSQL's rows: `raw_data` and `processed_data`, in bulk (one `UNNEST` statement per table
//! per batch), and the records a Parquet file holds. The Parquet ledger is [`super::ledger`].
//!
//! Re-delivery is absorbed by the natural keys: a raw row's `record_key` is the record's
//! identity (never its position), `INSERT ... ON CONFLICT DO NOTHING RETURNING` tells which
//! records are new, and only those get processed rows and Parquet files; [`loaded_before`]
//! tells a re-delivery (same bytes) from a conflict (same identity, other bytes).

use crate::batch::{LoadRecord, SourceRecord};
use crate::sink::parquet::Dataset;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
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

async fn insert_raw_chunk(
    tx: &mut PgConnection,
    records: &[&LoadRecord],
    created_at: DateTime<Utc>,
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
    let mut sizes = Vec::with_capacity(n);
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
        sizes.push(i32::try_from(r.payload_text.len()).unwrap_or(i32::MAX));
    }
    let rows = sqlx::query(
        "INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at, created_at, record_key, payload_sha256, payload_bytes, parquet_pending, payload_text)
         SELECT r.raw_id, r.topic, r.p, r.o, r.k, r.payload::jsonb, r.n, r.f, $9, r.rk, r.d, r.b, true, r.payload
         FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::text[], $6::text[], $7::int4[], $8::timestamptz[], $10::text[], $11::bytea[], $12::int4[])
              AS r(raw_id, topic, p, o, k, payload, n, f, rk, d, b)
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
    .bind(record_keys)
    .bind(digests)
    .bind(sizes)
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
    records_in(
        tx,
        Dataset::Processed,
        path,
        (i64::MIN, Uuid::nil()),
        i64::MAX,
    )
    .await
}

/// Up to `limit` records of the `dataset` file `path` after `after` in (offset, raw id) order,
/// as the loader consumed them, with their raw ids. (A re-created topic can put two records at
/// one offset, hence the raw id.)
pub async fn records_in(
    tx: &mut PgConnection,
    dataset: Dataset,
    path: &str,
    after: (i64, Uuid),
    limit: i64,
) -> sqlx::Result<Vec<(Uuid, SourceRecord)>> {
    let sql = match dataset {
        Dataset::Raw => {
            "SELECT topic, kafka_partition, kafka_offset, fetch_id, coalesce(payload_text, payload::text), fetched_at, raw_id
             FROM raw_data WHERE raw_file = $1 AND (kafka_offset, raw_id) > ($2, $3) ORDER BY kafka_offset, raw_id LIMIT $4"
        }
        Dataset::Processed => {
            "SELECT topic, kafka_partition, kafka_offset, fetch_id, coalesce(payload_text, payload::text), fetched_at, raw_id
             FROM raw_data WHERE processed_file = $1 AND (kafka_offset, raw_id) > ($2, $3) ORDER BY kafka_offset, raw_id LIMIT $4"
        }
    };
    let rows = sqlx::query(sql)
        .bind(path)
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .fetch_all(tx)
        .await?;
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
