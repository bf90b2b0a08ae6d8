//! The row shapes, each declared once: the raw record and the processed user.
//!
//! A shape's column list (name, Rust type, where the value comes from, how Parquet and
//! PostgreSQL store it) is written in one `row_shape!` invocation (`shapes.rs`); the struct,
//! the Arrow schema, the Arrow columns, the PostgreSQL `UNNEST` binds and their SQL all come
//! from it, so a column added, renamed or moved changes every sink at once.
//!
//! The Arrow type, nullability and PostgreSQL array type follow from the column's Rust type
//! ([`Cell`]); a struct field's Rust type is owned and read through [`AsCell`] as a borrow, so
//! neither sink clones a string.

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

#[macro_use]
mod declare;
mod shapes;

pub use shapes::{ProcessedColumns, ProcessedUser, RawColumns};

/// A query whose binds a [`Shape`] appends (sqlx's PostgreSQL query, spelled once).
pub type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// UTC microsecond timestamps, as DuckDB, Spark and pyarrow read them.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// How the Parquet file stores a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parquet {
    /// Dictionary-encoded: few distinct values (gender, country, topic), so a dictionary pays.
    Dictionary,
    /// Plain: mostly distinct values (ids, payload, email), where a dictionary only costs time
    /// before the writer falls back to plain anyway.
    Plain,
    /// Not in the Parquet file (a PostgreSQL-only column).
    Skip,
}

/// How PostgreSQL stores a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pg {
    /// The column of the same name, as bound.
    Column,
    /// The column of the same name, bound as text and cast to `jsonb`.
    Jsonb,
    /// Not in PostgreSQL (a Parquet-only column).
    Skip,
}

/// One column of a shape, as `row_shape!` declared it.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The Parquet field and PostgreSQL column name.
    pub name: &'static str,
    /// Its Arrow field (type and nullability).
    pub field: fn(&str) -> Field,
    /// PostgreSQL's element type of its `UNNEST` array (`text` for `text[]`).
    pub pg_type: &'static str,
    /// How Parquet stores it.
    pub parquet: Parquet,
    /// How PostgreSQL stores it.
    pub pg: Pg,
}

/// What a row shape gives the sinks; implemented by `row_shape!`.
pub trait Shape {
    /// One row as the shape reads it.
    type Row<'a>;
    /// Every column, Parquet's file order (PostgreSQL binds in the same order).
    const COLUMNS: &'static [Column];
    /// The Parquet columns of `rows`, in [`Self::COLUMNS`] order.
    fn arrays(rows: &[Self::Row<'_>]) -> Result<Vec<ArrayRef>, ArrowError>;
    /// `query` with one array bind per PostgreSQL column of `rows`, in [`Self::COLUMNS`] order.
    fn bind<'q>(query: PgQuery<'q>, rows: &[Self::Row<'_>]) -> PgQuery<'q>;
}

/// The columns of shape `S` that Parquet stores, in file order.
pub fn parquet_columns<S: Shape>() -> impl Iterator<Item = &'static Column> {
    S::COLUMNS.iter().filter(|c| c.parquet != Parquet::Skip)
}

/// The columns of shape `S` that PostgreSQL stores, in bind order.
pub fn pg_columns<S: Shape>() -> impl Iterator<Item = &'static Column> {
    S::COLUMNS.iter().filter(|c| c.pg != Pg::Skip)
}

/// A column value as both sinks take it: its Arrow type and array, its PostgreSQL array type.
pub trait Cell: Sized {
    /// Whether the column holds nulls.
    const NULLABLE: bool;
    /// PostgreSQL's element type for the `UNNEST` array.
    const PG: &'static str;
    /// The Arrow field `name` of this type.
    fn field(name: &str) -> Field;
    /// The Arrow array of `values`.
    fn array(values: impl Iterator<Item = Self>) -> Result<ArrayRef, ArrowError>;
}

impl Cell for Uuid {
    const NULLABLE: bool = false;
    const PG: &'static str = "uuid";
    /// Its canonical 36-character text: Delta has no UUID type, and Spark refuses Parquet's UUID
    /// logical type (`PARQUET_TYPE_ILLEGAL`), so text is what every engine reads alike.
    fn field(name: &str) -> Field {
        Field::new(name, DataType::Utf8, false)
    }
    fn array(values: impl Iterator<Item = Self>) -> Result<ArrayRef, ArrowError> {
        let mut b = arrow::array::StringBuilder::with_capacity(values.size_hint().0, 0);
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        for v in values {
            b.append_value(v.hyphenated().encode_lower(&mut buf));
        }
        Ok(Arc::new(b.finish()))
    }
}

/// `Cell` for a type whose Arrow array `$build`s from an iterator of it.
macro_rules! collected_cell {
    ($ty:ty, $nullable:literal, $pg:literal, $data_type:expr, $build:path) => {
        impl Cell for $ty {
            const NULLABLE: bool = $nullable;
            const PG: &'static str = $pg;
            fn field(name: &str) -> Field {
                Field::new(name, $data_type, $nullable)
            }
            fn array(values: impl Iterator<Item = Self>) -> Result<ArrayRef, ArrowError> {
                Ok(Arc::new($build(values)))
            }
        }
    };
}

collected_cell!(
    i32,
    false,
    "int4",
    DataType::Int32,
    Int32Array::from_iter_values
);
collected_cell!(
    i64,
    false,
    "int8",
    DataType::Int64,
    Int64Array::from_iter_values
);
collected_cell!(
    &str,
    false,
    "text",
    DataType::Utf8,
    StringArray::from_iter_values
);
collected_cell!(
    Option<&str>,
    true,
    "text",
    DataType::Utf8,
    StringArray::from_iter
);
collected_cell!(
    &[u8],
    false,
    "bytea",
    DataType::Binary,
    BinaryArray::from_iter_values
);

impl Cell for DateTime<Utc> {
    const NULLABLE: bool = false;
    const PG: &'static str = "timestamptz";
    fn field(name: &str) -> Field {
        Field::new(name, ts_type(), false)
    }
    fn array(values: impl Iterator<Item = Self>) -> Result<ArrayRef, ArrowError> {
        Ok(ts_array(values.map(|t| Some(t.timestamp_micros()))))
    }
}

impl Cell for Option<DateTime<Utc>> {
    const NULLABLE: bool = true;
    const PG: &'static str = "timestamptz";
    fn field(name: &str) -> Field {
        Field::new(name, ts_type(), true)
    }
    fn array(values: impl Iterator<Item = Self>) -> Result<ArrayRef, ArrowError> {
        Ok(ts_array(values.map(|t| t.map(|t| t.timestamp_micros()))))
    }
}

/// UTC microsecond timestamps, [`ts_type`].
fn ts_array(micros: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        micros
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

/// A struct field's owned type read as the [`Cell`] both sinks take (`&str` for `String`), so
/// a row is encoded without cloning.
pub trait AsCell {
    /// The borrowed value.
    type Cell<'a>: Cell
    where
        Self: 'a;
    /// The value, borrowed.
    fn as_cell(&self) -> Self::Cell<'_>;
}

impl AsCell for String {
    type Cell<'a> = &'a str;
    fn as_cell(&self) -> &str {
        self
    }
}

impl AsCell for Option<String> {
    type Cell<'a> = Option<&'a str>;
    fn as_cell(&self) -> Option<&str> {
        self.as_deref()
    }
}

/// `AsCell` for `Copy` types that are their own cell.
macro_rules! copy_cell {
    ($($ty:ty),*) => {$(
        impl AsCell for $ty {
            type Cell<'a> = $ty;
            fn as_cell(&self) -> $ty {
                *self
            }
        }
    )*};
}

copy_cell!(Uuid, i32, i64, DateTime<Utc>, Option<DateTime<Utc>>);

#[cfg(test)]
mod tests;
