//! Arrow encoding of the two datasets and the Parquet file format: the schemas, a batch of
//! records as Arrow rows, row groups of a few MB, Snappy, fsynced files. No paths, no ledger:
//! where files go and when they become visible is [`super`]'s business.

use crate::batch::LoadRecord;
use crate::rows::{Parquet, ProcessedColumns, RawColumns, Shape, parquet_columns};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::sync::{Arc, LazyLock};

/// The Arrow schema of shape `S`'s Parquet columns.
fn schema_of<S: Shape>() -> SchemaRef {
    let fields: Vec<_> = parquet_columns::<S>().map(|c| (c.field)(c.name)).collect();
    Arc::new(Schema::new(fields))
}

static RAW_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(schema_of::<RawColumns>);
static PROCESSED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(schema_of::<ProcessedColumns>);

/// Schema of `raw/` files.
pub fn raw_schema() -> SchemaRef {
    RAW_SCHEMA.clone()
}

/// Schema of `processed/` files.
pub fn processed_schema() -> SchemaRef {
    PROCESSED_SCHEMA.clone()
}

/// Builds the raw rows of `records` as one Arrow batch.
pub fn raw_batch(records: &[&LoadRecord]) -> arrow::error::Result<RecordBatch> {
    RecordBatch::try_new(raw_schema(), RawColumns::arrays(records)?)
}

/// Builds the processed rows of `records` as one Arrow batch.
pub fn processed_batch(records: &[&LoadRecord]) -> arrow::error::Result<RecordBatch> {
    let users: Vec<_> = records
        .iter()
        .flat_map(|r| r.users.iter().map(move |u| (*r, u)))
        .collect();
    RecordBatch::try_new(processed_schema(), ProcessedColumns::arrays(&users)?)
}

/// Snappy, our name as the writer, and dictionary encoding per column as shape `S` declares it.
pub fn writer_properties<S: Shape>() -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(concat!("randomuser-etl-loader ", env!("CARGO_PKG_VERSION")).to_string());
    parquet_columns::<S>()
        .fold(builder, |b, c| {
            b.set_column_dictionary_enabled(
                ColumnPath::from(c.name),
                c.parquet == Parquet::Dictionary,
            )
        })
        .build()
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
        let (schema, props) = match dataset {
            super::Dataset::Raw => (raw_schema(), writer_properties::<RawColumns>()),
            super::Dataset::Processed => {
                (processed_schema(), writer_properties::<ProcessedColumns>())
            }
        };
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
