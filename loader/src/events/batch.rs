//! Events of a batch's life: start-up's database wait, the write, the DLQ, the commit.

use super::{Check, Event, Sink, Telemetry};
use crate::poison::Poison;
use crate::sink::{SinkError, WriteOutcome};
use std::time::Duration;

/// PostgreSQL cannot be reached or migrated yet; start-up waits.
pub struct DatabaseNotReady<'a> {
    /// Why.
    pub error: &'a anyhow::Error,
    /// The next attempt's delay.
    pub retry_in: Duration,
}

impl Event for DatabaseNotReady<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(error = format!("{:#}", self.error), retry_in = ?self.retry_in, "database not ready; waiting");
        t.failed(Check::Postgres, format!("{:#}", self.error));
    }
}

/// Migrations are in place and the Parquet recovery ran: the sinks are ready.
pub struct DatabaseReady;

impl Event for DatabaseReady {
    fn emit(self, t: &Telemetry) {
        t.ok(Check::Postgres);
        t.ok(Check::Parquet);
    }
}

/// A batch was decoded and its write begins.
pub struct BatchWriting {
    /// Records in the batch.
    pub records: usize,
}

impl Event for BatchWriting {
    fn emit(self, t: &Telemetry) {
        t.update(|s| s.in_flight = self.records as u64);
    }
}

/// A record that will not load, sent to the dead-letter topic with its reason.
pub struct RecordDeadLettered<'a> {
    /// The record and why.
    pub poison: &'a Poison,
    /// The dead-letter topic.
    pub dlq: &'a str,
}

impl Event for RecordDeadLettered<'_> {
    fn emit(self, t: &Telemetry) {
        let p = self.poison;
        tracing::warn!(
            topic = %p.source.topic,
            partition = p.source.partition,
            offset = p.source.offset,
            kind = p.error.kind(),
            error = %p.error,
            dlq = %self.dlq,
            "poison record; dead-lettered"
        );
        t.metrics
            .dead_lettered
            .with_label_values(&[p.error.kind()])
            .inc();
        t.update(|s| s.dead_lettered += 1);
    }
}

/// A sink write failed with an outage; the batch is held and retried.
pub struct SinkWriteFailed<'a> {
    /// Why (its sink names the check that fails).
    pub error: &'a SinkError,
    /// The next attempt's delay.
    pub retry_in: Duration,
}

impl Event for SinkWriteFailed<'_> {
    fn emit(self, t: &Telemetry) {
        let sink = self.error.sink();
        tracing::warn!(sink = sink.as_str(), error = %self.error, retry_in = ?self.retry_in, "sink write failed; batch held, retrying");
        t.sink_failed(self.error, sink.check());
    }
}

/// PostgreSQL refused a batch's data (not an outage): it is written record by record, so the
/// record it refuses goes to the DLQ alone.
pub struct BatchRefused<'a> {
    /// PostgreSQL's answer.
    pub error: &'a SinkError,
    /// Records in the batch.
    pub records: usize,
}

impl Event for BatchRefused<'_> {
    fn emit(self, _: &Telemetry) {
        tracing::warn!(error = %self.error, records = self.records, "PostgreSQL refused the batch's data; writing it record by record");
    }
}

/// A batch is in PostgreSQL (after `failures` failed attempts).
pub struct BatchWritten {
    /// Whether attempts failed before this one.
    pub after_failures: bool,
}

impl Event for BatchWritten {
    fn emit(self, t: &Telemetry) {
        if self.after_failures {
            tracing::info!("sinks are back; batch written");
        }
        // The batch is PostgreSQL's; the Parquet check is the roller's to clear.
        t.ok(Check::Postgres);
    }
}

/// The batch's offsets are committed.
pub struct OffsetsCommitted;

impl Event for OffsetsCommitted {
    fn emit(self, t: &Telemetry) {
        t.metrics.last_commit.set(chrono::Utc::now().timestamp());
    }
}

/// A commit of the stored offsets failed (or storing them did): not retried, the next commit
/// carries later offsets, and a partition's next owner starts from PostgreSQL's position.
pub struct CommitFailed<'a> {
    /// Why.
    pub error: &'a anyhow::Error,
    /// The offsets that were not committed.
    pub offsets: &'a dyn std::fmt::Debug,
}

impl Event for CommitFailed<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(error = format!("{:#}", self.error), offsets = ?self.offsets, "offset commit failed; the next one carries later offsets");
        t.metrics.commit_errors.inc();
        t.update(|s| s.commit_errors += 1);
    }
}

/// PostgreSQL restarted or changed under the loader: its partitions are read again from the
/// positions the server holds.
pub struct ReadingAgain<'a> {
    /// The partitions.
    pub partitions: &'a [(String, i32)],
}

impl Event for ReadingAgain<'_> {
    fn emit(self, t: &Telemetry) {
        tracing::warn!(partitions = ?self.partitions, "PostgreSQL restarted or changed: reading the partitions again from the positions it holds");
        t.metrics.read_again.inc();
    }
}

/// Partitions revoked while their batch was written: their offsets are not stored (not ours
/// to commit); their next owner starts from the position the batch stored in PostgreSQL.
pub struct OffsetsNotStored<'a> {
    /// The partitions.
    pub partitions: &'a [(String, i32)],
}

impl Event for OffsetsNotStored<'_> {
    fn emit(self, _t: &Telemetry) {
        tracing::info!(partitions = ?self.partitions, "partitions moved while their batch was written; their next owner starts from PostgreSQL's position");
    }
}

/// A batch is written and its offsets stored for commit (a failure: [`CommitFailed`]).
pub struct BatchCommitted<'a> {
    /// Records in the batch, poison included.
    pub records: usize,
    /// What the write did.
    pub outcome: &'a WriteOutcome,
    /// Records of the batch dead-lettered.
    pub dead_lettered: u64,
    /// From the batch's flush to its commit.
    pub elapsed: Duration,
}

impl Event for BatchCommitted<'_> {
    fn emit(self, t: &Telemetry) {
        let o = self.outcome;
        tracing::info!(
            records = self.records,
            new = o.new_records,
            duplicates = o.duplicate_records,
            dead_lettered = self.dead_lettered,
            users = o.users_written,
            reprocessed = o.reprocessed_records,
            files_rewritten = o.files_rewritten,
            ms = self.elapsed.as_millis() as u64,
            "batch committed"
        );
        let m = &t.metrics;
        m.loaded.inc_by(o.new_records as u64);
        m.duplicates.inc_by(o.duplicate_records as u64);
        t.rows_written(
            Sink::Postgres,
            o.new_records as u64,
            o.users_written,
            o.bytes_written,
        );
        m.batch_records.observe(self.records as f64);
        m.batch_seconds.observe(self.elapsed.as_secs_f64());
        t.update(|s| {
            s.loaded += o.new_records as u64;
            s.duplicates += o.duplicate_records as u64;
            s.reprocessed += o.reprocessed_records as u64;
            s.batches += 1;
            s.in_flight = 0;
        });
    }
}
