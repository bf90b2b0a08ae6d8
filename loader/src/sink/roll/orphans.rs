//! A database restored behind the lake: files a roll committed after the backup are in the
//! tables, and the restored ledger does not know them. Rolled again from the records read
//! again, in other groups than before, they would put those records in the tables twice. So
//! before a partition's records are read again, its table files the ledger does not know are
//! adopted: their records go into PostgreSQL from the raw file (what a load would have written,
//! and linked to the file), and the file into the ledger as published. The records read again
//! from Kafka are then duplicates, written nowhere.

use super::Rolls;
use super::paths::in_table;
use crate::batch::{self, SourceRecord};
use crate::sink::parquet::Dataset;
use crate::sink::postgres;
use anyhow::Context;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use std::collections::{BTreeMap, HashSet};
use uuid::Uuid;

/// A live table file the ledger does not know.
#[derive(Debug, Clone)]
struct Orphan {
    /// Ledger path, `raw/date=…/name.parquet`.
    path: String,
    /// Its object, the table's file (relative to the store root).
    object: String,
    /// Its rewrite generation (`-g<n>-` in the object's name; 0 for an unversioned object).
    generation: i64,
}

impl Rolls {
    /// Adopts the files of `topic`'s `partition` that the lake's tables hold and the ledger
    /// does not (see the module docs); returns how many raw files were adopted.
    pub async fn adopt_orphans(&self, topic: &str, partition: i32) -> anyhow::Result<usize> {
        let Some(raw) = self.tables.existing_state(Dataset::Raw).await? else {
            return Ok(0);
        };
        let processed = self.tables.existing_state(Dataset::Processed).await?;
        let prefix = format!("{topic}-p{partition}-");
        let live = |state: &crate::sink::table::TableState, dataset: Dataset| {
            state
                .live()
                .filter(|p| file_name(p).starts_with(&prefix))
                .filter_map(|p| ledger_of(dataset, p))
                .collect::<BTreeMap<String, Orphan>>()
        };
        let raw_live = live(&raw, Dataset::Raw);
        if raw_live.is_empty() {
            return Ok(0);
        }
        let processed_live = processed
            .as_ref()
            .map(|s| live(s, Dataset::Processed))
            .unwrap_or_default();
        let paths: Vec<&str> = raw_live.keys().map(String::as_str).collect();
        let known: HashSet<String> =
            sqlx::query_scalar("SELECT path FROM parquet_files WHERE path = ANY($1)")
                .bind(&paths)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let mut adopted = 0;
        for (path, orphan) in raw_live.iter().filter(|(p, _)| !known.contains(*p)) {
            let processed_path = format!("processed/{}", in_table(path));
            let processed_orphan = processed_live.get(&processed_path);
            if self
                .adopt(
                    topic,
                    partition,
                    orphan,
                    &processed_path,
                    processed_orphan,
                    raw.version(),
                )
                .await
                .with_context(|| format!("adopting {path}"))?
            {
                adopted += 1;
            }
        }
        if adopted > 0 {
            tracing::warn!(%topic, partition, files = adopted, "the lake held files the database did not know (restored behind it): adopted their records, which are not rolled again");
        }
        Ok(adopted)
    }

    /// Loads the records of one orphan raw file into PostgreSQL, linked to it and to its
    /// processed file, and registers both. False when it holds another partition's records.
    async fn adopt(
        &self,
        topic: &str,
        partition: i32,
        raw: &Orphan,
        processed_path: &str,
        processed: Option<&Orphan>,
        version: u64,
    ) -> anyhow::Result<bool> {
        let bytes = self.store.read(&raw.object).await?;
        let (sources, ids) = records_of(bytes)?;
        if sources
            .iter()
            .any(|s| s.topic != topic || s.partition != partition)
        {
            return Ok(false);
        }
        let (good, poison) = batch::decode(sources, usize::MAX, chrono::Utc::now(), false);
        if let Some(p) = poison.first() {
            anyhow::bail!("a record of the file no longer transforms: {}", p.error);
        }
        let records: Vec<batch::LoadRecord> = good
            .into_iter()
            .zip(&ids)
            .map(|(r, id)| adopted_record(r, *id))
            .collect();
        let refs: Vec<&batch::LoadRecord> = records.iter().collect();
        let now = chrono::Utc::now();
        let first = records.iter().map(|r| r.source.offset).min().unwrap_or(0);
        let last = records.iter().map(|r| r.source.offset).max().unwrap_or(0);
        let users: i64 = records.iter().map(|r| r.users.len() as i64).sum();
        let input: i64 = records.iter().map(|r| r.payload_text.len() as i64).sum();
        let mut tx = self.pool.begin().await?;
        let new = postgres::insert_raw(&mut tx, &refs, now).await?;
        let fresh: Vec<&batch::LoadRecord> = refs
            .iter()
            .copied()
            .filter(|r| new.contains(&r.raw_id))
            .collect();
        postgres::insert_processed(&mut tx, &fresh, now).await?;
        // The raw file holds the payload as stored (without login secrets, by default), not as
        // the topic held it: the digest of the adopted rows is unknown.
        let fresh_ids: Vec<Uuid> = fresh.iter().map(|r| r.raw_id).collect();
        sqlx::query("UPDATE raw_data SET payload_sha256 = NULL WHERE raw_id = ANY($1)")
            .bind(&fresh_ids)
            .execute(&mut *tx)
            .await?;
        // Files of the restored ledger whose records this one holds now (a compaction committed
        // after the backup): superseded by it.
        sqlx::query(
            "UPDATE parquet_files SET state = 'compacted', compacted_into = CASE dataset WHEN 'raw' THEN $2 ELSE $3 END
             WHERE path IN (SELECT raw_file FROM raw_data WHERE raw_id = ANY($1) AND raw_file IS NOT NULL
                            UNION SELECT processed_file FROM raw_data WHERE raw_id = ANY($1) AND processed_file IS NOT NULL)
               AND path NOT IN ($2, $3)",
        )
        .bind(&ids)
        .bind(&raw.path)
        .bind(processed_path)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM raw_payload_text WHERE raw_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE raw_data SET raw_file = $2, processed_file = $3, parquet_pending = false, payload_text = NULL
             WHERE raw_id = ANY($1)",
        )
        .bind(&ids)
        .bind(&raw.path)
        .bind(processed_path)
        .execute(&mut *tx)
        .await?;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let register = "INSERT INTO parquet_files (path, dataset, topic, kafka_partition, first_offset, last_offset,
                 row_count, state, generation, object, table_version, published_at, input_bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $8 = 'published' THEN now() END, $12)
             ON CONFLICT (path) DO NOTHING";
        sqlx::query(register)
            .bind(&raw.path)
            .bind("raw")
            .bind(topic)
            .bind(partition)
            .bind(first)
            .bind(last)
            .bind(records.len() as i64)
            .bind("published")
            .bind(raw.generation)
            .bind(&raw.object)
            .bind(version)
            .bind(input)
            .execute(&mut *tx)
            .await?;
        // The processed file: adopted as it is if its table holds it, else built from the rows
        // and committed like any other.
        let (state, generation, object) = match processed {
            Some(p) => ("published", p.generation, Some(p.object.as_str())),
            None => ("pending", raw.generation, None),
        };
        sqlx::query(register)
            .bind(processed_path)
            .bind("processed")
            .bind(topic)
            .bind(partition)
            .bind(first)
            .bind(last)
            .bind(users)
            .bind(state)
            .bind(generation)
            .bind(object)
            .bind(version)
            .bind(input)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The name of a table path (`date=…/name`).
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The ledger path, object and generation of a live table file of `dataset`.
fn ledger_of(dataset: Dataset, live: &str) -> Option<(String, Orphan)> {
    let stem = live.strip_suffix(".parquet")?;
    // `<name>-g<generation>-<tag>`, or an unversioned `<name>` (adopted before generations).
    let (name, generation) = match stem.rsplit_once("-g") {
        Some((name, rest)) => match rest.split_once('-') {
            Some((g, tag)) if !tag.contains('-') => (name, g.parse().ok()?),
            _ => (stem, 0),
        },
        None => (stem, 0),
    };
    let path = format!("{}/{name}.parquet", dataset.as_str());
    let object = format!("{}/{live}", dataset.as_str());
    Some((
        path.clone(),
        Orphan {
            path,
            object,
            generation,
        },
    ))
}

/// The records of a raw file, as they were consumed (the payload as stored), with the raw ids
/// the file gives them.
fn records_of(bytes: bytes::Bytes) -> anyhow::Result<(Vec<SourceRecord>, Vec<Uuid>)> {
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut sources = Vec::new();
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch?;
        let column = |name: &str, to: DataType| -> anyhow::Result<arrow::array::ArrayRef> {
            let c = batch
                .column_by_name(name)
                .with_context(|| format!("the raw file has no column {name}"))?;
            Ok(arrow::compute::cast(c, &to)?)
        };
        let raw_id = column("raw_id", DataType::Utf8)?;
        let topic = column("topic", DataType::Utf8)?;
        let partition = column("kafka_partition", DataType::Int32)?;
        let offset = column("kafka_offset", DataType::Int64)?;
        let fetch_id = column("fetch_id", DataType::Utf8)?;
        let fetched_at = column(
            "fetched_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?;
        let payload = column("payload", DataType::Utf8)?;
        let (raw_id, topic, fetch_id, payload) = (
            raw_id.as_string::<i32>(),
            topic.as_string::<i32>(),
            fetch_id.as_string::<i32>(),
            payload.as_string::<i32>(),
        );
        let partition = partition.as_primitive::<Int32Type>();
        let offset = offset.as_primitive::<Int64Type>();
        let fetched_at = fetched_at.as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let id: Uuid = raw_id.value(i).parse().context("raw_id")?;
            let key = (!fetch_id.is_null(i)).then(|| fetch_id.value(i).to_string());
            // The extractor's record when its key names its raw id; else another tool's,
            // whose identity (the digest of the bytes the topic held) the file cannot give.
            let is_fetch = key
                .as_deref()
                .is_some_and(|k| crate::transform::Identity::of(Some(k), b"").raw_id == id);
            sources.push(SourceRecord {
                topic: topic.value(i).to_string(),
                partition: partition.value(i),
                offset: offset.value(i),
                fetch_id: if is_fetch { key.clone() } else { None },
                key,
                payload: Some(payload.value(i).as_bytes().to_vec()),
                fetched_at: chrono::DateTime::from_timestamp_micros(fetched_at.value(i))
                    .context("fetched_at")?,
                headers: Vec::new(),
            });
            ids.push(id);
        }
    }
    Ok((sources, ids))
}

/// `record` under the raw id its file gives it, keyed by its fetch id or, for another tool's
/// record, by that raw id (the only identity the file keeps).
fn adopted_record(record: batch::LoadRecord, raw_id: Uuid) -> batch::LoadRecord {
    let mut record = crate::sink::with_raw_id(record, raw_id);
    if record.source.fetch_id.is_none() {
        record.record_key = format!("lake:{raw_id}");
    }
    record
}
