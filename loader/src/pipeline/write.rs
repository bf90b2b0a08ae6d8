//! The pipeline's writes: the sinks and the dead-letter topic, each waiting out outages with
//! backoff (an outage is never poison), and the record-by-record fallback that isolates a
//! record PostgreSQL refuses.

use super::{Abandoned, Pipeline};
use crate::batch::{self, LoadRecord};
use crate::poison::{Poison, PoisonReason};
use crate::sink::{self, SinkError};
use etl_common::backoff::Backoff;

impl Pipeline {
    pub(super) async fn dead_letter(&self, p: &Poison) -> Result<(), Abandoned> {
        tracing::warn!(
            topic = %p.source.topic,
            partition = p.source.partition,
            offset = p.source.offset,
            kind = p.error.kind(),
            error = %p.error,
            dlq = %self.dlq.topic(),
            "poison record; dead-lettering"
        );
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        loop {
            let sent = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Abandoned::Shutdown),
                // The producer waits out a broker outage (no delivery timeout).
                r = self.liveness.waiting(self.dlq.send(p)) => r,
            };
            match sent {
                Ok(()) => {
                    self.metrics
                        .dead_lettered
                        .with_label_values(&[p.error.kind()])
                        .inc();
                    return Ok(());
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot dead-letter; retrying");
                    self.readiness.set_failed("kafka", e.to_string());
                    if !self.sleep(delay).await {
                        return Err(Abandoned::Shutdown);
                    }
                }
            }
        }
    }

    /// Writes to both sinks, waiting out outages with backoff; an outage is never poison. If
    /// PostgreSQL refuses the batch's *data*, the batch is written record by record and the
    /// records it refuses are dead-lettered, so one bad record cannot hold its partition.
    pub(super) async fn write(
        &mut self,
        good: &[LoadRecord],
    ) -> Result<sink::WriteOutcome, Abandoned> {
        let outcome = match self.write_with_retry(good).await? {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(error = %e, records = good.len(), "PostgreSQL refused the batch's data; writing it record by record");
                let mut total = sink::WriteOutcome::default();
                for (i, record) in good.iter().enumerate() {
                    match self.write_with_retry(std::slice::from_ref(record)).await? {
                        Ok(mut outcome) => {
                            for c in &mut outcome.conflicts {
                                c.index = i;
                            }
                            total.add(outcome)
                        }
                        Err(e) => {
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

    /// Writes `records`, retrying outages; returns the data error if PostgreSQL refused the data.
    async fn write_with_retry(
        &self,
        records: &[LoadRecord],
    ) -> Result<Result<sink::WriteOutcome, SinkError>, Abandoned> {
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let mut failed_before = false;
        loop {
            let written = self
                .liveness
                .waiting(self.sinks.write_with(records, self.config.reprocess))
                .await;
            match written {
                Ok(outcome) => {
                    if failed_before {
                        tracing::info!("sinks are back; batch written");
                    }
                    // The batch is PostgreSQL's; the Parquet check is the roller's to clear.
                    self.readiness.set_ok("postgres");
                    return Ok(Ok(outcome));
                }
                Err(e) if e.is_data_error() => return Ok(Err(e)),
                Err(e) => {
                    failed_before = true;
                    self.metrics
                        .sink_errors
                        .with_label_values(&[e.sink()])
                        .inc();
                    let check = match &e {
                        SinkError::Postgres(_) => "postgres",
                        SinkError::Parquet(_) => "parquet",
                    };
                    self.readiness.set_failed(check, e.to_string());
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = e.sink(), error = %e, retry_in = ?delay, "sink write failed; batch held, retrying");
                    if !self.sleep(delay).await {
                        return Err(Abandoned::Shutdown);
                    }
                }
            }
        }
    }
}

/// The record as the topic held it, payload byte for byte (for the DLQ).
fn original_source(record: &LoadRecord) -> batch::SourceRecord {
    let mut source = record.source.clone();
    source.payload = Some(record.original().to_vec());
    source
}
