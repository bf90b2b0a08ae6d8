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
use std::collections::{BTreeMap, HashMap};

/// Why a write stopped short of its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    /// Shutdown came first.
    Cancelled,
    /// PostgreSQL restarted or changed ([`sink::SinkError::ServerChanged`]): the partitions must
    /// be read again from the positions it holds before anything more is written.
    ServerChanged,
}

impl From<Cancelled> for Halt {
    fn from(_: Cancelled) -> Self {
        Halt::Cancelled
    }
}

/// What a write that gave up leaves to handle: the sink's refusal (`Ok`), or the halt that ends
/// the batch — shutdown, or a changed server that means reading again.
fn refusal(gave_up: GaveUp<SinkError>) -> Result<SinkError, Halt> {
    match gave_up {
        GaveUp::Cancelled => Err(Halt::Cancelled),
        GaveUp::Permanent(SinkError::ServerChanged) => Err(Halt::ServerChanged),
        GaveUp::Permanent(e) => Ok(e),
    }
}

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
        &self,
        good: &[LoadRecord],
        positions: Option<&Positions>,
    ) -> Result<sink::WriteOutcome, Halt> {
        let outcome = match self.write_with_retry(good, positions).await {
            Ok(outcome) => outcome,
            Err(gave_up) => {
                let e = refusal(gave_up)?;
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
                        Err(gave_up) => {
                            let e = refusal(gave_up)?;
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
            // The positions alone refused: left unstored, as at shutdown (read again later).
            if let Err(gave_up) = self.write_with_retry(&[], Some(positions)).await {
                refusal(gave_up)?;
                return Err(Halt::Cancelled);
            }
        }
        Ok(outcome)
    }

    /// [`Pipeline::write`] in up to `BATCH_WRITERS` transactions at once, the batch's partitions
    /// shared between them by payload bytes. Each holds whole partitions with their positions,
    /// so each is complete on its own: a crash between two commits re-delivers only what the
    /// other held. A record on two partitions at once (a copy without headers) meets itself in
    /// PostgreSQL's unique indexes, as it would between two loaders.
    pub(super) async fn write_split(
        &self,
        good: Vec<LoadRecord>,
        positions: Option<Positions>,
    ) -> Result<sink::WriteOutcome, Halt> {
        let writers = self.config.writers();
        let groups = split_by_partition(good, positions, writers);
        let outcomes = futures::future::try_join_all(
            groups
                .iter()
                .map(|(records, positions)| self.write(records, positions.as_ref())),
        )
        .await?;
        let mut total = sink::WriteOutcome {
            positions_stored: true,
            ..Default::default()
        };
        for outcome in outcomes {
            total.add(outcome);
        }
        Ok(total)
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

/// Up to `writers` groups of whole partitions, balanced by payload bytes (the largest partition
/// first, each to the lightest group), records in their batch order; every partition's position
/// goes with its records (the positions of partitions with no loadable record, with the first
/// group). Never an empty group, and one group when there is one partition.
fn split_by_partition(
    good: Vec<LoadRecord>,
    positions: Option<Positions>,
    writers: usize,
) -> Vec<(Vec<LoadRecord>, Option<Positions>)> {
    let mut bytes: BTreeMap<(&str, i32), usize> = BTreeMap::new();
    for r in &good {
        *bytes
            .entry((r.source.topic.as_str(), r.source.partition))
            .or_default() += r.payload_text.len();
    }
    let mut by_size: Vec<((&str, i32), usize)> = bytes.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let groups = writers.clamp(1, by_size.len().max(1));
    let mut load = vec![0usize; groups];
    let mut group_of: HashMap<(&str, i32), usize> = HashMap::with_capacity(by_size.len());
    for (key, size) in by_size {
        let lightest = (0..groups).min_by_key(|&g| (load[g], g)).unwrap_or(0);
        load[lightest] += size;
        group_of.insert(key, lightest);
    }
    let group = |topic: &str, partition: i32| group_of.get(&(topic, partition)).copied();
    // Decided while `good` is borrowed, so no key is copied per record.
    let of_record: Vec<usize> = good
        .iter()
        .map(|r| group(&r.source.topic, r.source.partition).unwrap_or(0))
        .collect();
    let mut out: Vec<(Vec<LoadRecord>, Option<Positions>)> = (0..groups)
        .map(|_| {
            let positions = positions.as_ref().map(|p| Positions {
                group: p.group.clone(),
                by: p.by.clone(),
                next: BTreeMap::new(),
            });
            (Vec::new(), positions)
        })
        .collect();
    if let Some(positions) = positions {
        for ((topic, partition), next) in positions.next {
            let g = group(&topic, partition).unwrap_or(0);
            if let Some(p) = out[g].1.as_mut() {
                p.next.insert((topic, partition), next);
            }
        }
    }
    for (r, g) in good.into_iter().zip(of_record) {
        out[g].0.push(r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SourceRecord;

    fn record(partition: i32, offset: i64, bytes: usize) -> LoadRecord {
        LoadRecord {
            raw_id: uuid::Uuid::new_v4(),
            record_key: format!("fetch:{partition}-{offset}"),
            digest: [0; 32],
            source: SourceRecord {
                topic: "t".into(),
                partition,
                offset,
                key: None,
                fetch_id: None,
                payload: None,
                fetched_at: chrono::Utc::now(),
                headers: Vec::new(),
            },
            payload_text: "x".repeat(bytes),
            users: Vec::new(),
            stored_user_count: None,
        }
    }

    fn positions(partitions: &[i32]) -> Positions {
        Positions {
            group: "g".into(),
            by: "loader 1".into(),
            next: partitions.iter().map(|&p| (("t".into(), p), 100)).collect(),
        }
    }

    /// (partition, offset) of each record of a group, in order, and its positions' partitions.
    type Shape = (Vec<(i32, i64)>, Vec<i32>);

    fn shape(groups: &[(Vec<LoadRecord>, Option<Positions>)]) -> Vec<Shape> {
        groups
            .iter()
            .map(|(records, positions)| {
                (
                    records
                        .iter()
                        .map(|r| (r.source.partition, r.source.offset))
                        .collect(),
                    positions
                        .iter()
                        .flat_map(|p| p.next.keys().map(|(_, p)| *p))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn whole_partitions_balanced_by_bytes_with_their_positions() {
        // Partition 0 is as heavy as 1 and 2 together; 3 has only poison (a position, no record).
        let good = vec![
            record(1, 10, 30),
            record(0, 5, 60),
            record(2, 7, 30),
            record(1, 11, 1),
            record(0, 6, 1),
        ];
        let groups = split_by_partition(good, Some(positions(&[0, 1, 2, 3])), 2);
        assert_eq!(
            shape(&groups),
            vec![
                (vec![(0, 5), (0, 6)], vec![0, 3]),
                (vec![(1, 10), (2, 7), (1, 11)], vec![1, 2]),
            ]
        );
    }

    #[test]
    fn never_more_groups_than_partitions_nor_an_empty_one() {
        let one = split_by_partition(vec![record(4, 1, 5), record(4, 2, 5)], None, 4);
        assert_eq!(shape(&one), vec![(vec![(4, 1), (4, 2)], vec![])]);
        let poison_only = split_by_partition(Vec::new(), Some(positions(&[0, 1])), 2);
        assert_eq!(shape(&poison_only), vec![(vec![], vec![0, 1])]);
        let single = split_by_partition(vec![record(0, 1, 5), record(1, 1, 5)], None, 1);
        assert_eq!(single.len(), 1);
    }
}
