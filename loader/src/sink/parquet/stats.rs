//! A Parquet file's statistics as its Delta table's add action carries them (`numRecords`,
//! `nullCount`, `minValues`, `maxValues`), gathered a row group at a time as the file is
//! written, and the Delta types of the files' columns.

use super::Dataset;
use anyhow::Context;
use arrow::array::{RecordBatch, StructArray};
use arrow::datatypes::{DataType as ArrowType, Schema as ArrowSchema, TimeUnit};
use delta_kernel::expressions::ColumnName;
use delta_kernel::schema::{DataType, StructField, StructType};
use delta_kernel_default_engine::stats::FileStatsAccumulator;

/// The Delta fields of the Parquet columns (the table's schema less its partition column).
pub fn delta_fields(arrow: &ArrowSchema) -> Vec<StructField> {
    arrow
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                ArrowType::Int32 => DataType::INTEGER,
                ArrowType::Int64 => DataType::LONG,
                ArrowType::Timestamp(TimeUnit::Microsecond, Some(_)) => DataType::TIMESTAMP,
                _ => DataType::STRING,
            };
            StructField::new(f.name(), ty, f.is_nullable())
        })
        .collect()
}

/// Accumulates a file's statistics one row group at a time, as it is written.
pub struct Stats(FileStatsAccumulator);

impl Stats {
    /// For a file of `dataset`: every column but the payload (statistics on a JSON document
    /// skip nothing and cost a comparison of kilobytes per row). A file's rows come from
    /// PostgreSQL as they are, so two writers of one file build the same rows and the same
    /// statistics, whichever object the table gets.
    pub fn new(dataset: Dataset) -> Self {
        let arrow = match dataset {
            Dataset::Raw => super::raw_schema(),
            Dataset::Processed => super::processed_schema(),
        };
        let physical = StructType::new_unchecked(delta_fields(&arrow));
        let columns: Vec<ColumnName> = arrow
            .fields()
            .iter()
            .filter(|f| f.name() != "payload")
            .map(|f| ColumnName::new([f.name().as_str()]))
            .collect();
        Self(FileStatsAccumulator::new(&columns, &physical))
    }

    /// Adds one row group.
    pub fn merge(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        self.0.merge(batch).map_err(anyhow::Error::new)
    }

    /// The file's statistics row.
    pub fn finish(self) -> anyhow::Result<StructArray> {
        self.0
            .finish()
            .map_err(anyhow::Error::new)?
            .context("a Parquet file without a row group")
    }
}
