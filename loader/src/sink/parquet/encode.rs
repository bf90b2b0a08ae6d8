//! Arrow encoding of the two datasets and the Parquet file format: the schemas, a batch of
//! records as Arrow rows, row groups of a few MB, Snappy, fsynced files. No paths, no ledger:
//! where files go and when they become visible is [`super`]'s business.

use crate::batch::LoadRecord;
use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use std::sync::Arc;

/// UTC microsecond timestamps, as DuckDB, Spark and pyarrow read them.
pub(super) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of `raw/` files.
pub fn raw_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("raw_id", DataType::Utf8, false),
        Field::new("topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("fetch_id", DataType::Utf8, true),
        Field::new("fetched_at", ts_type(), false),
        Field::new("user_count", DataType::Int32, false),
        Field::new("payload", DataType::Utf8, false),
    ]))
}

/// Schema of `processed/` files.
pub fn processed_schema() -> Arc<Schema> {
    let s = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    Arc::new(Schema::new(vec![
        s("raw_id", false),
        Field::new("user_index", DataType::Int32, false),
        s("user_uuid", true),
        s("full_name", false),
        s("title", true),
        s("first_name", false),
        s("last_name", false),
        s("email", false),
        s("gender", true),
        s("nationality", true),
        s("city", true),
        s("state", true),
        s("country", true),
        s("postcode", true),
        Field::new("date_of_birth", ts_type(), true),
        Field::new("registered_date", ts_type(), false),
        Field::new("fetched_at", ts_type(), false),
        Field::new("processed_at", ts_type(), false),
        s("source_topic", false),
        Field::new("source_partition", DataType::Int32, false),
        Field::new("source_offset", DataType::Int64, false),
    ]))
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn ts(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Builds the raw rows of `records` as one Arrow batch.
pub fn raw_batch(records: &[&LoadRecord]) -> arrow::error::Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.raw_id.to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.source.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|r| r.source.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.source.offset),
        )),
        Arc::new(StringArray::from_iter(
            records.iter().map(|r| r.source.key.as_deref()),
        )),
        ts(records
            .iter()
            .map(|r| Some(micros(r.source.fetched_at)))
            .collect()),
        Arc::new(Int32Array::from_iter_values(
            records.iter().map(|r| r.users.len() as i32),
        )),
        Arc::new(StringArray::from_iter_values(
            records.iter().map(|r| r.payload_text.as_str()),
        )),
    ];
    RecordBatch::try_new(raw_schema(), cols)
}

/// Builds the processed rows of `records` as one Arrow batch.
pub fn processed_batch(records: &[&LoadRecord]) -> arrow::error::Result<RecordBatch> {
    let users: Vec<(&LoadRecord, &crate::transform::ProcessedUser)> = records
        .iter()
        .flat_map(|r| r.users.iter().map(move |u| (*r, u)))
        .collect();
    let text = |f: &dyn Fn(&crate::transform::ProcessedUser) -> Option<&str>| -> ArrayRef {
        Arc::new(StringArray::from_iter(users.iter().map(|(_, u)| f(u))))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            users.iter().map(|(_, u)| u.raw_id.to_string()),
        )),
        Arc::new(Int32Array::from_iter_values(
            users.iter().map(|(_, u)| u.user_index),
        )),
        text(&|u| u.user_uuid.as_deref()),
        text(&|u| Some(u.full_name.as_str())),
        text(&|u| u.title.as_deref()),
        text(&|u| Some(u.first_name.as_str())),
        text(&|u| Some(u.last_name.as_str())),
        text(&|u| Some(u.email.as_str())),
        text(&|u| u.gender.as_deref()),
        text(&|u| u.nationality.as_deref()),
        text(&|u| u.city.as_deref()),
        text(&|u| u.state.as_deref()),
        text(&|u| u.country.as_deref()),
        text(&|u| u.postcode.as_deref()),
        ts(users
            .iter()
            .map(|(_, u)| u.date_of_birth.map(micros))
            .collect()),
        ts(users
            .iter()
            .map(|(_, u)| Some(micros(u.registered_date)))
            .collect()),
        ts(users
            .iter()
            .map(|(r, _)| Some(micros(r.source.fetched_at)))
            .collect()),
        ts(users
            .iter()
            .map(|(_, u)| Some(micros(u.processed_at)))
            .collect()),
        Arc::new(StringArray::from_iter_values(
            users.iter().map(|(r, _)| r.source.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            users.iter().map(|(r, _)| r.source.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            users.iter().map(|(r, _)| r.source.offset),
        )),
    ];
    RecordBatch::try_new(processed_schema(), cols)
}

/// Payload bytes per row group of a raw file.
pub const RAW_ROW_GROUP_BYTES: usize = 4 << 20;

/// Consecutive runs of `records` holding about `limit` payload bytes each (at least one record).
pub fn chunks_by_bytes<'a, 'r>(
    records: &'a [&'r LoadRecord],
    limit: usize,
) -> impl Iterator<Item = &'a [&'r LoadRecord]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && (n == 0 || bytes + rest[n].payload_text.len() <= limit) {
            bytes += rest[n].payload_text.len();
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// One Parquet file built in memory, a row group per pushed chunk: a roll is read from
/// PostgreSQL a few MB at a time, so the only large buffer is the compressed output.
pub struct FileWriter {
    dataset: super::Dataset,
    writer: ArrowWriter<Vec<u8>>,
    rows: usize,
}

impl FileWriter {
    /// An empty file of `dataset`.
    pub fn new(dataset: super::Dataset) -> parquet::errors::Result<Self> {
        let schema = match dataset {
            super::Dataset::Raw => raw_schema(),
            super::Dataset::Processed => processed_schema(),
        };
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(
                concat!("randomuser-etl-loader ", env!("CARGO_PKG_VERSION")).to_string(),
            )
            .build();
        Ok(Self {
            dataset,
            writer: ArrowWriter::try_new(Vec::new(), schema, Some(props))?,
            rows: 0,
        })
    }

    /// Appends `records` (raw: a row each, in row groups of a few MB; processed: a row per user).
    pub fn push(&mut self, records: &[&LoadRecord]) -> anyhow::Result<()> {
        let batches = match self.dataset {
            super::Dataset::Raw => chunks_by_bytes(records, RAW_ROW_GROUP_BYTES)
                .map(raw_batch)
                .collect::<Result<Vec<_>, _>>()?,
            super::Dataset::Processed => vec![processed_batch(records)?],
        };
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            self.writer.write(batch)?;
            self.writer.flush()?;
            self.rows += batch.num_rows();
        }
        Ok(())
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The finished file.
    pub fn finish(self) -> parquet::errors::Result<bytes::Bytes> {
        Ok(bytes::Bytes::from(self.writer.into_inner()?))
    }
}

/// Rows in the Parquet file `bytes`, from its footer; an error if it is not a whole file.
pub fn rows_in(bytes: bytes::Bytes) -> parquet::errors::Result<i64> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(bytes)?;
    Ok(reader.metadata().file_metadata().num_rows())
}
