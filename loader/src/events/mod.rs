//! Telemetry as typed events (vector's `internal_events` is the model). Each outcome of the
//! loader is one struct whose [`Event::emit`] writes its log line, its metrics, its readiness
//! check and the [`RunSummary`] together, so the three can never disagree, and label values
//! come from the [`Sink`], [`Rows`] and [`Check`] enums instead of strings at the call site.
//!
//! The run summary is a `watch` channel: tests and embedders wait for a state
//! (`summary.wait_for(|s| s.loaded >= n)`) instead of scraping `/metrics` or sleeping.

use crate::metrics::Metrics;
use etl_common::status::Readiness;
use std::sync::Arc;
use tokio::sync::watch;

mod batch;
mod kafka;
mod parquet;
#[cfg(test)]
mod tests;

pub use batch::{
    BatchCommitted, BatchRefused, BatchWriting, BatchWritten, CommitFailed, DatabaseNotReady,
    DatabaseReady, OffsetsCommitted, OffsetsNotStored, ReadingAgain, RecordDeadLettered,
    SinkWriteFailed,
};
pub use kafka::{
    BrokerStatistics, ConsumerFailed, DeadLetterFailed, LeftGroup, PartitionsAssigned,
    PartitionsRevoked, RecordConsumed, RevokedRecordsDropped, StartedFromDatabase,
};
pub use parquet::{
    CompactionFailed, ParquetCaughtUp, ParquetLeftOpen, ParquetRollFailed, ParquetWritten,
    TablesCompacted,
};

/// What a run did so far; [`Telemetry::summary`] hands out a receiver that sees every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records received.
    pub consumed: u64,
    /// Records loaded for the first time.
    pub loaded: u64,
    /// Records already loaded.
    pub duplicates: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Batches committed.
    pub batches: u64,
    /// Records recomputed by `--reprocess`.
    pub reprocessed: u64,
    /// Records of the batch being written now (0 between batches): a batch is in flight.
    pub in_flight: u64,
    /// Failed sink writes, retried.
    pub sink_errors: u64,
    /// Offset commits refused or failed (their records are re-delivered and absorbed).
    pub commit_errors: u64,
}

/// A sink, as the `sink` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The `raw_data` / `processed_data` tables.
    Postgres,
    /// The Parquet files (local directory or bucket).
    Parquet,
}

impl Sink {
    /// The label value (and the readiness check of the same name).
    pub const fn as_str(self) -> &'static str {
        match self {
            Sink::Postgres => "postgres",
            Sink::Parquet => "parquet",
        }
    }

    /// The readiness check an outage of this sink fails.
    pub const fn check(self) -> Check {
        match self {
            Sink::Postgres => Check::Postgres,
            Sink::Parquet => Check::Parquet,
        }
    }
}

/// The two row shapes every sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One row per Kafka record.
    Raw,
    /// One row per user.
    Processed,
}

impl Rows {
    /// The `table` label of `etl_loader_rows_written_total` (the dashboards' existing values).
    pub const fn label(self, sink: Sink) -> &'static str {
        match (sink, self) {
            (Sink::Postgres, Rows::Raw) => "raw_data",
            (Sink::Postgres, Rows::Processed) => "processed_data",
            (Sink::Parquet, Rows::Raw) => "raw",
            (Sink::Parquet, Rows::Processed) => "processed",
        }
    }
}

/// The loader's readiness checks (`/ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The broker: fetching, dead-lettering, group membership.
    Kafka,
    /// PostgreSQL: migrations, writes.
    Postgres,
    /// The Parquet output: rolls and sweeps.
    Parquet,
}

impl Check {
    /// Every check, registered as failing until first seen to pass.
    pub const ALL: [Check; 3] = [Check::Kafka, Check::Postgres, Check::Parquet];

    /// The key `/ready` reports it under.
    pub const fn as_str(self) -> &'static str {
        match self {
            Check::Kafka => "kafka",
            Check::Postgres => "postgres",
            Check::Parquet => "parquet",
        }
    }
}

/// Where events go: the Prometheus series, the readiness checks and the run summary.
#[derive(Clone)]
pub struct Telemetry {
    metrics: Metrics,
    readiness: Readiness,
    summary: Arc<watch::Sender<RunSummary>>,
}

impl Telemetry {
    /// Telemetry over fresh series, with every [`Check`] registered as failing.
    pub fn new() -> anyhow::Result<Self> {
        let readiness = Readiness::default();
        for check in Check::ALL {
            readiness.register(check.as_str());
        }
        Ok(Self {
            metrics: Metrics::new()?,
            readiness,
            summary: Arc::new(watch::Sender::new(RunSummary::default())),
        })
    }

    /// Records an event.
    pub fn emit(&self, event: impl Event) {
        event.emit(self);
    }

    /// The series (for `/metrics` and the gauges set outside events).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The readiness checks (for `/ready`).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// A receiver of the run summary: sees every change; `wait_for` waits for a state.
    pub fn summary(&self) -> watch::Receiver<RunSummary> {
        self.summary.subscribe()
    }

    /// The run summary now.
    pub fn snapshot(&self) -> RunSummary {
        self.summary.borrow().clone()
    }

    pub(crate) fn ok(&self, check: Check) {
        self.readiness.set_ok(check.as_str());
    }

    pub(crate) fn failed(&self, check: Check, reason: impl Into<String>) {
        self.readiness.set_failed(check.as_str(), reason);
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut RunSummary)) {
        self.summary.send_modify(f);
    }

    /// A failed write to `error`'s sink, counted against that sink; `late` is the check it fails
    /// (a failed roll makes the Parquet output late whichever side failed).
    pub(crate) fn sink_failed(&self, error: &crate::sink::SinkError, late: Check) {
        self.metrics
            .sink_errors
            .with_label_values(&[error.sink().as_str()])
            .inc();
        self.failed(late, error.to_string());
        self.update(|s| s.sink_errors += 1);
    }

    /// Rows and bytes `sink` wrote, under the label values the dashboards use.
    pub(crate) fn rows_written(&self, sink: Sink, raw: u64, processed: u64, bytes: u64) {
        let m = &self.metrics;
        for (rows, n) in [(Rows::Raw, raw), (Rows::Processed, processed)] {
            m.rows_written
                .with_label_values(&[sink.as_str(), rows.label(sink)])
                .inc_by(n);
        }
        m.sink_bytes
            .with_label_values(&[sink.as_str()])
            .inc_by(bytes);
    }
}

/// One outcome of the loader: its log line, metrics, readiness and summary, written together.
pub trait Event {
    /// Writes the event everywhere it shows.
    fn emit(self, t: &Telemetry);
}
