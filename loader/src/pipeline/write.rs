//! The pipeline's writes: the sinks and the dead-letter topic, each waiting out outages with
//! backoff (an outage is never poison), and the record-by-record fallback that isolates a
//! record PostgreSQL refuses.

use super::Pipeline;
use crate::batch::{self, LoadRecord};
use crate::events::{
    BatchRefused, BatchWritten, DeadLetterFailed, RecordDeadLettered, SinkWriteFailed,
};
use crate::poison::{Poison, PoisonReason};
use crate::sink::offsets::Positions;
use crate::sink::{self, SinkError};
use etl_common::backoff::Backoff;
use etl_common::retry::{Cancelled, GaveUp, Outage, retry, until_cancelled};

impl Pipeline {
    pub(super) async fn dead_letter(&self, p: &Poison) -> Result<(), Cancelled> {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        // The producer waits out a broker outage itself (no delivery timeout), so a send may
        // wait for good: shutdown ends it anywhere. What the producer does report is retried.
        let send = || async { self.dlq.send(p).await.map_err(Outage) };
        let sent = retry(&self.shutdown, backoff, send, |Outage(error), retry_in| {
            self.telemetry.emit(DeadLetterFailed { error, retry_in });
        });
        until_cancelled(&self.shutdown, self.liveness.waiting(sent))
            .await?
            .map_err(|_| Cancelled)?;
        self.telemetry.emit(RecordDeadLettered {
            poison: p,
            dlq: self.dlq.topic(),
        });
        Ok(())
    }

    /// Writes to both sinks, waiting out outages with backoff; an outage is never poison. If
    /// PostgreSQL refuses the batch's *data*, the batch is written record by record and the
    /// records it refuses are dead-lettered, so one bad record cannot hold its partition.
    /// With `positions`, the batch's next offsets are stored in PostgreSQL: in the batch's
    /// transaction, or after the records it refused or found in conflict are dead-lettered.
    pub(super) async fn write(
        &mut self,
        good: &[LoadRecord],
        positions: Option<&Positions>,
    ) -> Result<sink::WriteOutcome, Cancelled> {
        let outcome = match self.write_with_retry(good, positions).await {
            Ok(outcome) => outcome,
            Err(GaveUp::Cancelled) => return Err(Cancelled),
            Err(GaveUp::Permanent(e)) => {
                self.telemetry.emit(BatchRefused {
                    error: &e,
                    records: good.len(),
                });
                let mut total = sink::WriteOutcome::default();
                for (i, record) in good.iter().enumerate() {
                    match self
                        .write_with_retry(std::slice::from_ref(record), None)
                        .await
                    {
                        Ok(mut outcome) => {
                            for c in &mut outcome.conflicts {
                                c.index = i;
                            }
                            total.add(outcome)
                        }
                        Err(GaveUp::Cancelled) => return Err(Cancelled),
                        Err(GaveUp::Permanent(e)) => {
                            let poison = Poison {
                                source: original_source(record),
                                error: PoisonReason::RejectedBySink(e.to_string()),
                            };
                            self.dead_letter(&poison).await?;
                        }
                    }
                }
                total
            }
        };
        // Same identity, other bytes: the loaded record stays, this one goes to the DLQ.
        for c in &outcome.conflicts {
            let poison = Poison {
                source: original_source(&good[c.index]),
                error: PoisonReason::Conflict {
                    record_key: c.record_key.clone(),
                    loaded: c.loaded.clone(),
                    this: c.this.clone(),
                },
            };
            self.dead_letter(&poison).await?;
        }
        if let Some(positions) = positions
            && !outcome.positions_stored
        {
            self.write_with_retry(&[], Some(positions))
                .await
                .map_err(|_| Cancelled)?;
        }
        Ok(outcome)
    }

    /// Writes `records`, waiting out outages; hands back the error if PostgreSQL refused the
    /// data (permanent), or `Cancelled` if shutdown came first.
    async fn write_with_retry(
        &self,
        records: &[LoadRecord],
        positions: Option<&Positions>,
    ) -> Result<sink::WriteOutcome, GaveUp<SinkError>> {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let mut failed_before = false;
        let write = || {
            self.sinks
                .write_with(records, self.config.reprocess, positions)
        };
        let written = retry(
            &self.shutdown,
            backoff,
            write,
            |error: &SinkError, retry_in| {
                failed_before = true;
                self.telemetry.emit(SinkWriteFailed { error, retry_in });
            },
        );
        let outcome = self.liveness.waiting(written).await?;
        self.telemetry.emit(BatchWritten {
            after_failures: failed_before,
        });
        Ok(outcome)
    }
}

/// The record as the topic held it, payload byte for byte (for the DLQ).
fn original_source(record: &LoadRecord) -> batch::SourceRecord {
    let mut source = record.source.clone();
    source.payload = Some(record.original().to_vec());
    source
}
