//! Parquet: `raw/date=YYYY-MM-DD/` and `processed/date=YYYY-MM-DD/` under `PARQUET_URL`, Snappy,
//! UTC timestamps, partitioned by the record's fetch date so a replay lands where the first
//! load did, and named for the Kafka partition and offsets they hold.
//!
//! This module names files and turns records into Parquet bytes ([`encode`]); which records go
//! in which file, and when a file is written, is the ledger's business ([`crate::sink::roll`]);
//! where the bytes go is the store's ([`crate::sink::store`]).

mod encode;
mod stats;

pub use encode::{
    FileWriter, RAW_ROW_GROUP_BYTES, ROW_GROUP_BYTES, chunks_by_bytes, convert, processed_batch,
    processed_schema, raw_batch, raw_schema, rows_in, writer_properties,
};
pub use stats::{Stats, delta_fields};

use crate::batch::LoadRecord;
use chrono::NaiveDate;
use sha2::{Digest, Sha256};

/// The two datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// One row per Kafka record, the payload as UTF-8 JSON.
    Raw,
    /// One row per user.
    Processed,
}

impl Dataset {
    /// The directory and ledger name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dataset::Raw => "raw",
            Dataset::Processed => "processed",
        }
    }

    /// The dataset a ledger path belongs to.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("raw/") {
            Dataset::Raw
        } else {
            Dataset::Processed
        }
    }
}

/// The name of the file holding `raw_ids`, offsets `first..=last` of `topic`'s `partition`:
/// the same records always get the same name (a retried roll writes the same object), and
/// other records another one, even at the same offsets (a topic deleted and re-created).
pub fn file_name(
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
    raw_ids: &[uuid::Uuid],
) -> String {
    let mut ids = raw_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.as_bytes());
    }
    let tag = hex::encode(&h.finalize()[..4]);
    format!("{topic}-p{partition}-o{first}-o{last}-{tag}.parquet")
}

/// The name of the file that compacts the files `members` of `topic`'s `partition` (offsets
/// `first` to `last`): told apart from a roll's by `-compact-`, and fixed by its members.
pub fn compacted_name<'a>(
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
    members: impl Iterator<Item = &'a str>,
) -> String {
    let mut members: Vec<&str> = members.collect();
    members.sort_unstable();
    let mut h = Sha256::new();
    for m in members {
        h.update(m.as_bytes());
        h.update([0]);
    }
    let tag = hex::encode(&h.finalize()[..4]);
    format!("{topic}-p{partition}-o{first}-o{last}-compact-{tag}.parquet")
}

/// Where the `dataset` file `name` of fetch date `date` goes.
pub fn path_of(dataset: Dataset, date: NaiveDate, name: &str) -> String {
    format!(
        "{}/date={}/{name}",
        dataset.as_str(),
        date.format("%Y-%m-%d")
    )
}

/// A new object for the file `path` at rewrite generation `generation`, written by one writer:
/// `<name>-g<generation>-<8 random hex>.parquet`. Objects are never overwritten — two writers of
/// one file never share an object — and the table's commit decides which one is the file
/// ([`crate::sink::roll::Rolls::publish`]); the others are left to vacuum.
pub fn new_object(path: &str, generation: i64) -> String {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{}{tag}.parquet", generation_prefix(path, generation))
}

/// What every object of the file `path` at `generation` starts with.
pub fn generation_prefix(path: &str, generation: i64) -> String {
    let stem = path.strip_suffix(".parquet").unwrap_or(path);
    format!("{stem}-g{generation}-")
}

/// The Parquet file of `dataset` holding `records`, whole, in memory.
pub async fn encode_file(
    dataset: Dataset,
    records: &[&LoadRecord],
) -> anyhow::Result<bytes::Bytes> {
    let mut w = FileWriter::in_memory(dataset)?;
    w.push(records).await?;
    match w.finish().await?.0 {
        crate::sink::store::Sink::Memory(bytes) => Ok(bytes::Bytes::from(bytes)),
        other => anyhow::bail!("an in-memory file ended in {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{SourceRecord, decode};
    use crate::rows::ts_type;
    use chrono::{DateTime, Utc};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::Compression;

    #[test]
    fn chunks_hold_about_the_limit_and_every_record_once() {
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let size = refs[0].payload_text.len();
        for (limit, want) in [
            (1, vec![1, 1, 1]),
            (size * 2, vec![2, 1]),
            (usize::MAX, vec![3]),
        ] {
            let chunks: Vec<usize> = chunks_by_bytes(&refs, limit).map(<[_]>::len).collect();
            assert_eq!(chunks, want, "limit {limit}");
        }
        assert_eq!(chunks_by_bytes(&[], 10).count(), 0);
    }

    #[tokio::test]
    async fn raw_files_get_row_groups_of_a_few_megabytes() {
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let big: Vec<&LoadRecord> = std::iter::repeat_n(refs[0], 3000).collect();
        let bytes = encode_file(Dataset::Raw, &big).await.unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
        use parquet::file::reader::FileReader;
        let groups = reader.metadata().num_row_groups();
        let total = big.len() * big[0].payload_text.len();
        assert!(groups > 1, "{total} bytes in one row group");
        for g in reader.metadata().row_groups() {
            // At most one Arrow batch past the threshold, compressed.
            let size = usize::try_from(g.compressed_size()).unwrap();
            assert!(
                size <= ROW_GROUP_BYTES + RAW_ROW_GROUP_BYTES,
                "a row group of {size} bytes"
            );
        }
        assert_eq!(reader.metadata().file_metadata().num_rows(), 3000);
    }

    fn records() -> Vec<LoadRecord> {
        let payload = include_bytes!("../../../../fixtures/randomuser/v1.3-compact-20-users.json");
        let day1 = DateTime::parse_from_rfc3339("2026-11-23T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let day2 = DateTime::parse_from_rfc3339("2026-11-24T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let recs = vec![(0, 10, day1), (0, 11, day2), (1, 3, day2)]
            .into_iter()
            .map(|(p, o, at)| SourceRecord {
                topic: "raw".into(),
                partition: p,
                offset: o,
                key: Some(format!("k{o}")),
                fetch_id: Some(format!("k{o}")),
                payload: Some(payload.to_vec()),
                fetched_at: at,
                headers: Vec::new(),
            })
            .collect();
        let (good, bad) = decode(recs, 1 << 20, Utc::now(), false);
        assert!(bad.is_empty());
        good
    }

    #[tokio::test]
    async fn files_are_readable_snappy_with_utc_timestamps() {
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let bytes = encode_file(Dataset::Processed, &refs).await.unwrap();
        assert_eq!(rows_in(bytes.clone()).unwrap(), 60);
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        assert_eq!(
            builder.metadata().row_group(0).column(0).compression(),
            Compression::SNAPPY
        );
        let mut users = 0;
        for b in builder.build().unwrap() {
            let b = b.unwrap();
            assert_eq!(
                b.schema()
                    .field_with_name("registered_date")
                    .unwrap()
                    .data_type(),
                &ts_type()
            );
            users += b.num_rows();
        }
        assert_eq!(users, 60);
        assert!(
            rows_in(bytes::Bytes::from_static(b"PAR1 not a whole file")).is_err(),
            "a torn file is told from a whole one"
        );
    }

    /// Spark refuses Parquet's UUID logical type and Delta has no UUID type: ids are their
    /// canonical text, and no column is of a type some engine cannot read (unsigned integers,
    /// nanosecond or zone-less timestamps, fixed-length binary).
    #[tokio::test]
    async fn every_column_has_a_type_every_engine_reads() {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, TimeUnit};
        use parquet::basic::{LogicalType, Type};
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        for (dataset, want) in [
            (
                Dataset::Raw,
                refs.iter().map(|r| r.raw_id).collect::<Vec<_>>(),
            ),
            (
                Dataset::Processed,
                refs.iter()
                    .flat_map(|r| r.users.iter().map(|u| u.raw_id))
                    .collect(),
            ),
        ] {
            let bytes = encode_file(dataset, &refs).await.unwrap();
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
            let descr = builder.metadata().file_metadata().schema_descr_ptr();
            for column in descr.columns() {
                assert_ne!(
                    column.physical_type(),
                    Type::FIXED_LEN_BYTE_ARRAY,
                    "{dataset:?}.{}",
                    column.name()
                );
                match column.logical_type_ref() {
                    None | Some(LogicalType::String) => {}
                    Some(LogicalType::Integer(int)) => {
                        assert!(int.is_signed, "{dataset:?}.{} is unsigned", column.name())
                    }
                    Some(LogicalType::Timestamp(ts)) => {
                        assert!(ts.is_adjusted_to_u_t_c, "{dataset:?}.{}", column.name());
                        assert!(
                            matches!(ts.unit, parquet::basic::TimeUnit::MICROS),
                            "{dataset:?}.{}: {:?}",
                            column.name(),
                            ts.unit
                        );
                    }
                    Some(other) => panic!("{dataset:?}.{}: {other:?}", column.name()),
                }
            }
            for field in builder.schema().fields() {
                assert!(
                    matches!(
                        field.data_type(),
                        DataType::Utf8
                            | DataType::Int32
                            | DataType::Int64
                            | DataType::Timestamp(TimeUnit::Microsecond, Some(_))
                    ),
                    "{dataset:?}.{}: {}",
                    field.name(),
                    field.data_type()
                );
            }
            assert_eq!(builder.schema().field(0).name(), "raw_id");
            let mut got = Vec::new();
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                let ids = b.column(0).as_string::<i32>();
                got.extend(
                    ids.iter()
                        .map(|v| uuid::Uuid::parse_str(v.unwrap()).unwrap()),
                );
            }
            assert_eq!(got, want, "{dataset:?}: ids round-trip as text");
        }
    }

    #[tokio::test]
    async fn dictionaries_only_for_few_distinct_values() {
        use parquet::basic::Encoding;
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        for (dataset, plain, dictionary) in [
            (
                Dataset::Raw,
                &["raw_id", "payload", "fetch_id", "kafka_offset"][..],
                &["topic", "kafka_partition"][..],
            ),
            (
                Dataset::Processed,
                &["raw_id", "user_uuid", "email", "full_name"][..],
                &["gender", "nationality", "country", "source_topic"][..],
            ),
        ] {
            let bytes = encode_file(dataset, &refs).await.unwrap();
            let reader = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
            use parquet::file::reader::FileReader;
            let group = reader.metadata().row_group(0);
            let dictionary_encoded = |name: &str| {
                let chunk = group
                    .columns()
                    .iter()
                    .find(|c| c.column_path().string() == name)
                    .unwrap_or_else(|| panic!("{dataset:?} has {name}"));
                let by_encoding = chunk
                    .encodings()
                    .any(|e| matches!(e, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY));
                assert_eq!(
                    by_encoding,
                    chunk.dictionary_page_offset().is_some(),
                    "{name}"
                );
                by_encoding
            };
            for name in plain {
                assert!(
                    !dictionary_encoded(name),
                    "{dataset:?}: {name} is written plain"
                );
            }
            for name in dictionary {
                assert!(
                    dictionary_encoded(name),
                    "{dataset:?}: {name} has a dictionary"
                );
            }
        }
    }

    #[test]
    fn names_follow_the_records_not_the_attempt() {
        let a = uuid::Uuid::from_u128(1);
        let b = uuid::Uuid::from_u128(2);
        let name = file_name("raw", 3, 10, 11, &[a, b]);
        assert!(name.starts_with("raw-p3-o10-o11-"), "{name}");
        assert_eq!(
            name,
            file_name("raw", 3, 10, 11, &[b, a]),
            "order does not matter"
        );
        assert_ne!(
            name,
            file_name("raw", 3, 10, 11, &[a]),
            "other records, other name"
        );
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(
            path_of(Dataset::Raw, day, &name),
            format!("raw/date=2026-12-01/{name}")
        );
        assert_eq!(
            Dataset::of_path(&path_of(Dataset::Raw, day, &name)),
            Dataset::Raw
        );
    }
}
