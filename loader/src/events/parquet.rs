//! Events of the Parquet roller: files written, rolls failed, the output caught up.

use super::{Check, Event, Sink, Telemetry};
use crate::sink::roll::CompactReport;
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
        t.rows_written(Sink::Parquet, r.raw_rows, r.processed_rows, r.bytes);
        t.metrics.parquet_files.inc_by(r.written as u64);
        if r.written + r.unbuildable + r.removed > 0 {
            tracing::info!(
                files = r.written,
                bytes = r.bytes,
                raw_rows = r.raw_rows,
                processed_rows = r.processed_rows,
                busy = r.busy,
                unbuildable = r.unbuildable,
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
        t.sink_failed(self.error, Check::Parquet);
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

/// A compaction pass ended: small files replaced by larger ones.
pub struct TablesCompacted<'a> {
    /// What it did.
    pub report: &'a CompactReport,
}

impl Event for TablesCompacted<'_> {
    fn emit(self, t: &Telemetry) {
        let r = self.report;
        t.metrics.lake_files_compacted.inc_by(r.replaced as u64);
        if r.written + r.skipped > 0 {
            tracing::info!(
                replaced = r.replaced,
                written = r.written,
                bytes = r.bytes,
                skipped = r.skipped,
                "tables compacted"
            );
        }
    }
}

/// A compaction pass failed: the small files stay as they are (nothing is lost), and the next
/// pass tries again.
pub struct CompactionFailed<'a>(pub &'a SinkError);

impl Event for CompactionFailed<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::warn!(error = %self.0, "compaction failed; the next one tries again");
    }
}
