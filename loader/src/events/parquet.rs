//! Events of the Parquet roller: files written, rolls failed, the output caught up.

use super::{Check, Event, Rows, Sink, Telemetry};
use crate::sink::{RollReport, SinkError};
use std::time::Duration;

/// Parquet files were written and published (a roll, a sweep, a recovery, the closing roll).
pub struct ParquetWritten<'a> {
    /// What was written.
    pub report: &'a RollReport,
    /// Which of those it was, for the log line.
    pub what: &'static str,
}

impl Event for ParquetWritten<'_> {
    fn emit(self, t: &Telemetry) {
        let r = self.report;
        let m = &t.metrics;
        let pq = Sink::Parquet;
        m.rows_written
            .with_label_values(&[pq.as_str(), Rows::Raw.label(pq)])
            .inc_by(r.raw_rows);
        m.rows_written
            .with_label_values(&[pq.as_str(), Rows::Processed.label(pq)])
            .inc_by(r.processed_rows);
        m.sink_bytes
            .with_label_values(&[pq.as_str()])
            .inc_by(r.bytes);
        m.parquet_files.inc_by(r.written as u64);
        if r.written + r.missing + r.removed > 0 {
            tracing::info!(
                files = r.written,
                bytes = r.bytes,
                raw_rows = r.raw_rows,
                processed_rows = r.processed_rows,
                busy = r.busy,
                missing = r.missing,
                removed = r.removed,
                "{}",
                self.what
            );
        }
    }
}

/// Every roll due on this replica's partitions is written: the Parquet output is current.
pub struct ParquetCaughtUp;

impl Event for ParquetCaughtUp {
    fn emit(self, t: &Telemetry) {
        t.ok(Check::Parquet);
    }
}

/// A roll or a sweep failed; its records wait in PostgreSQL and it is retried.
pub struct ParquetRollFailed<'a> {
    /// Why (either side may have failed; it is the Parquet output that is late).
    pub error: &'a SinkError,
    /// The next attempt's delay, when one is scheduled now (a sweep waits for its next turn).
    pub retry_in: Option<Duration>,
}

impl Event for ParquetRollFailed<'_> {
    fn emit(self, t: &Telemetry) {
        let sink = self.error.sink();
        match self.retry_in {
            Some(delay) => {
                tracing::warn!(sink = sink.as_str(), error = %self.error, retry_in = ?delay, "Parquet roll failed; its records wait in PostgreSQL, retrying")
            }
            None => {
                tracing::warn!(sink = sink.as_str(), error = %self.error, "Parquet sweep failed; will retry")
            }
        }
        t.metrics
            .sink_errors
            .with_label_values(&[sink.as_str()])
            .inc();
        t.failed(Check::Parquet, self.error.to_string());
        t.update(|s| s.sink_errors += 1);
    }
}

/// The open rolls could not be closed at shutdown: they wait in PostgreSQL for the partitions'
/// next owner.
pub struct ParquetLeftOpen<'a>(pub &'a SinkError);

impl Event for ParquetLeftOpen<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::warn!(
            error = %self.0,
            "open Parquet rolls left in PostgreSQL for the partitions' next owner"
        );
    }
}
