//! Arrow encoding of the two datasets and the Parquet file format: the schemas, a batch of
//! records as Arrow rows, row groups of about 8 MB encoded, Snappy, fsynced files. No paths, no ledger:
//! where files go and when they become visible is [`super`]'s business.

use crate::batch::LoadRecord;
use crate::rows::{Parquet, ProcessedColumns, RawColumns, Shape, parquet_columns};
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::AsyncArrowWriter;
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

/// Payload bytes per Arrow batch of a raw file: what memory holds of the rows at once.
pub const RAW_ROW_GROUP_BYTES: usize = 4 << 20;

/// A row group is written out once its encoded, compressed data held in memory reaches this:
/// row groups of a size engines read well, and memory that holds one, whatever the size of
/// the pages read from PostgreSQL (or of the row groups of the files a compaction reads).
pub const ROW_GROUP_BYTES: usize = 8 << 20;

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

/// One Parquet file written as it is built, a row group per pushed chunk, into a
/// [`Sink`](crate::sink::store::Sink): a roll is read from PostgreSQL a page at a time, and each
/// row group leaves for the store (a staging file, or an upload's next part) once encoded, so
/// memory holds a page and a row group, never the file.
pub struct FileWriter {
    dataset: super::Dataset,
    writer: AsyncArrowWriter<crate::sink::store::Sink>,
    rows: usize,
    /// The file's statistics for its table's add action, a row group at a time.
    stats: super::Stats,
}

impl FileWriter {
    /// An empty file of `dataset`, written into `sink`.
    pub fn new(
        dataset: super::Dataset,
        sink: crate::sink::store::Sink,
    ) -> parquet::errors::Result<Self> {
        let (schema, props) = match dataset {
            super::Dataset::Raw => (raw_schema(), writer_properties::<RawColumns>()),
            super::Dataset::Processed => {
                (processed_schema(), writer_properties::<ProcessedColumns>())
            }
        };
        Ok(Self {
            dataset,
            writer: AsyncArrowWriter::try_new(sink, schema, Some(props))?,
            rows: 0,
            stats: super::Stats::new(dataset),
        })
    }

    /// An empty file of `dataset` in memory.
    pub fn in_memory(dataset: super::Dataset) -> parquet::errors::Result<Self> {
        Self::new(dataset, crate::sink::store::Sink::Memory(Vec::new()))
    }

    /// Appends `records` (raw: a row each, in row groups of a few MB; processed: a row per user).
    pub async fn push(&mut self, records: &[&LoadRecord]) -> anyhow::Result<()> {
        let batches = match self.dataset {
            super::Dataset::Raw => chunks_by_bytes(records, RAW_ROW_GROUP_BYTES)
                .map(raw_batch)
                .collect::<Result<Vec<_>, _>>()?,
            super::Dataset::Processed => vec![processed_batch(records)?],
        };
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            self.push_batch(batch).await?;
        }
        Ok(())
    }

    /// Appends rows already in this dataset's schema; the row group is written out once it
    /// holds [`ROW_GROUP_BYTES`].
    pub async fn push_batch(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        self.stats.merge(batch)?;
        self.writer.write(batch).await?;
        if self.writer.memory_size() >= ROW_GROUP_BYTES {
            self.writer.flush().await?;
        }
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the footer and finishes the sink (an upload completes); returns the sink, for
    /// the store to make visible, and the file's statistics for the table.
    pub async fn finish(
        mut self,
    ) -> anyhow::Result<(crate::sink::store::Sink, arrow::array::StructArray)> {
        let stats = self.stats.finish()?;
        self.writer.finish().await?;
        Ok((self.writer.into_inner(), stats))
    }

    /// Gives the sink back unfinished (to be discarded).
    pub fn abandon(self) -> crate::sink::store::Sink {
        self.writer.into_inner()
    }
}

/// A file written before the tables (raw_id as 16 bytes, or text) rebuilt with today's schema
/// into `writer`: each column taken by name and cast to its type, ids as their canonical text.
/// An error if a column is missing or will not cast.
pub async fn convert(old: bytes::Bytes, writer: &mut FileWriter) -> anyhow::Result<()> {
    use anyhow::Context;
    use arrow::array::{Array, AsArray, StringArray};
    use arrow::datatypes::DataType;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(old)?.build()?;
    let schema = match writer.dataset {
        super::Dataset::Raw => raw_schema(),
        super::Dataset::Processed => processed_schema(),
    };
    for batch in reader {
        let batch = batch?;
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let old = batch
                .column_by_name(field.name())
                .with_context(|| format!("the old file has no column {}", field.name()))?;
            let new: arrow::array::ArrayRef = match old.data_type() {
                DataType::FixedSizeBinary(16) => {
                    let ids: StringArray = old
                        .as_fixed_size_binary()
                        .iter()
                        .map(|v| {
                            v.map(|b| uuid::Uuid::from_slice(b).map(|u| u.to_string()))
                                .transpose()
                        })
                        .collect::<Result<_, _>>()?;
                    Arc::new(ids)
                }
                t if t == field.data_type() => old.clone(),
                _ => arrow::compute::cast(old, field.data_type()).with_context(|| {
                    format!("casting {} to {}", field.name(), field.data_type())
                })?,
            };
            anyhow::ensure!(
                field.is_nullable() || new.null_count() == 0,
                "{} holds nulls",
                field.name()
            );
            columns.push(new);
        }
        let rows = RecordBatch::try_new(schema.clone(), columns)?;
        if rows.num_rows() > 0 {
            writer.push_batch(&rows).await?;
        }
    }
    Ok(())
}

/// Rows in the Parquet file `bytes`, from its footer; an error if it is not a whole file.
pub fn rows_in(bytes: bytes::Bytes) -> parquet::errors::Result<i64> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(bytes)?;
    Ok(reader.metadata().file_metadata().num_rows())
}
