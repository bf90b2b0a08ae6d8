//! The pipeline's writes: the sinks and the dead-letter topic, each waiting out outages with
//! backoff (an outage is never poison), and the record-by-record fallback that isolates a
//! record PostgreSQL refuses.

use super::Pipeline;
use crate::batch::{self, LoadRecord};
use crate::poison::{Poison, PoisonReason};
use crate::sink::{self, SinkError};
use etl_common::backoff::Backoff;
use etl_common::retry::{Cancelled, GaveUp, Outage, retry, until_cancelled};

impl Pipeline {
    pub(super) async fn dead_letter(&self, p: &Poison) -> Result<(), Cancelled> {
        tracing::warn!(
            topic = %p.source.topic,
            partition = p.source.partition,
            offset = p.source.offset,
            kind = p.error.kind(),
            error = %p.error,
            dlq = %self.dlq.topic(),
            "poison record; dead-lettering"
        );
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        // The producer waits out a broker outage itself (no delivery timeout), so a send may
        // wait for good: shutdown ends it anywhere. What the producer does report is retried.
        let send = || async { self.dlq.send(p).await.map_err(Outage) };
        let sent = retry(&self.shutdown, backoff, send, |Outage(e), delay| {
            tracing::warn!(error = %e, retry_in = ?delay, "cannot dead-letter; retrying");
            self.readiness.set_failed("kafka", e.to_string());
        });
        until_cancelled(&self.shutdown, self.liveness.waiting(sent))
            .await?
            .map_err(|_| Cancelled)?;
        self.metrics
            .dead_lettered
            .with_label_values(&[p.error.kind()])
            .inc();
        Ok(())
    }

    /// Writes to both sinks, waiting out outages with backoff; an outage is never poison. If
    /// PostgreSQL refuses the batch's *data*, the batch is written record by record and the
    /// records it refuses are dead-lettered, so one bad record cannot hold its partition.
    pub(super) async fn write(
        &mut self,
        good: &[LoadRecord],
    ) -> Result<sink::WriteOutcome, Cancelled> {
        let outcome = match self.write_with_retry(good).await {
            Ok(outcome) => outcome,
            Err(GaveUp::Cancelled) => return Err(Cancelled),
            Err(GaveUp::Permanent(e)) => {
                tracing::warn!(error = %e, records = good.len(), "PostgreSQL refused the batch's data; writing it record by record");
                let mut total = sink::WriteOutcome::default();
                for (i, record) in good.iter().enumerate() {
                    match self.write_with_retry(std::slice::from_ref(record)).await {
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
                            self.summary.dead_lettered += 1;
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
            self.summary.dead_lettered += 1;
        }
        Ok(outcome)
    }

    /// Writes `records`, waiting out outages; hands back the error if PostgreSQL refused the
    /// data (permanent), or `Cancelled` if shutdown came first.
    async fn write_with_retry(
        &self,
        records: &[LoadRecord],
    ) -> Result<sink::WriteOutcome, GaveUp<SinkError>> {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let mut failed_before = false;
        let write = || self.sinks.write_with(records, self.config.reprocess);
        let written = retry(&self.shutdown, backoff, write, |e: &SinkError, delay| {
            failed_before = true;
            self.metrics
                .sink_errors
                .with_label_values(&[e.sink()])
                .inc();
            self.readiness.set_failed(e.sink(), e.to_string());
            tracing::warn!(sink = e.sink(), error = %e, retry_in = ?delay, "sink write failed; batch held, retrying");
        });
        let outcome = self.liveness.waiting(written).await?;
        if failed_before {
            tracing::info!("sinks are back; batch written");
        }
        // The batch is PostgreSQL's; the Parquet check is the roller's to clear.
        self.readiness.set_ok("postgres");
        Ok(outcome)
    }
}

/// The record as the topic held it, payload byte for byte (for the DLQ).
fn original_source(record: &LoadRecord) -> batch::SourceRecord {
    let mut source = record.source.clone();
    source.payload = Some(record.original().to_vec());
    source
}
