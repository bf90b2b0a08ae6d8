//! Taking an assignment from where PostgreSQL's rows end: each partition starts at the next
//! offset the database holds for the group (`consumer_offsets`), written in the same
//! transaction as the rows, so a database restored from a backup or a promoted standby reads
//! again exactly what it lost, and a loader's Kafka commit that lags it reads nothing twice.
//! Kafka decides instead when there is no stored position, when the group has no offset in
//! Kafka at all (the topic re-created, its offsets deleted or expired: the stored position may
//! belong to another log), and when another tool moved the group's offset (an operator's
//! `kafka-consumer-groups --reset-offsets`, which the loaders follow as they always did).

use super::Pipeline;
use crate::consumer::{self, KafkaOffset};
use crate::events::{DatabaseNotReady, StartedFromDatabase};
use crate::sink::offsets;
use etl_common::backoff::Backoff;
use etl_common::retry::{Cancelled, Outage, retry};
use std::collections::BTreeMap;

impl Pipeline {
    /// Takes `parts` (a deferred assignment), each from its stored position; waits out a
    /// database outage (the partitions are not loaded meanwhile). `Cancelled` if shutdown came
    /// first: then they are not taken, and the group gives them to another member.
    pub(super) async fn take_assignment(&self, parts: &[(String, i32)]) -> Result<(), Cancelled> {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let (pool, group, topic) = (self.sinks.pool(), &self.config.group_id, &self.config.topic);
        let load = || async {
            let mut conn = pool.acquire().await.map_err(Outage)?;
            offsets::load(&mut conn, group, topic).await.map_err(Outage)
        };
        let stored = retry(&self.shutdown, backoff, load, |Outage(error), retry_in| {
            self.telemetry.emit(DatabaseNotReady {
                error: &anyhow::anyhow!("reading the stored positions: {error}"),
                retry_in,
            });
        });
        let stored = self.liveness.waiting(stored).await.map_err(|_| Cancelled)?;
        let held: Vec<(String, i32)> = parts
            .iter()
            .filter(|(t, p)| *t == *topic && stored.contains_key(p))
            .cloned()
            .collect();
        // Kafka's side, to tell a re-created topic from a restored database (and to log which).
        let kafka = if held.is_empty() {
            Ok(BTreeMap::new())
        } else {
            let (c, asked) = (self.consumer.clone(), held.clone());
            tokio::task::spawn_blocking(move || consumer::committed_in_kafka(&c, &asked))
                .await
                .map_err(|_| Cancelled)?
        };
        let mut starts = BTreeMap::new();
        for (t, p) in &held {
            let database = stored[p].next_offset;
            let in_kafka = kafka.as_ref().ok().map(|k| {
                k.get(&(t.clone(), *p))
                    .copied()
                    .unwrap_or(KafkaOffset::Absent)
            });
            self.telemetry.emit(StartedFromDatabase {
                topic: t,
                partition: *p,
                database,
                kafka: in_kafka,
            });
            // Unknown (the broker did not answer in time): the database's position.
            if matches!(in_kafka, None | Some(KafkaOffset::Loaders(_))) {
                starts.insert((t.clone(), *p), database);
            }
        }
        if let Err(e) = consumer::assign_at(&self.consumer, parts, &starts) {
            tracing::error!(error = %format!("{e:#}"), partitions = ?parts, "cannot take the assigned partitions");
        }
        Ok(())
    }
}
