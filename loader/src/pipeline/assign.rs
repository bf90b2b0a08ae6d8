//! Taking an assignment from where PostgreSQL's rows end: each partition starts at the next
//! offset the database holds for the group (`consumer_offsets`), written in the same
//! transaction as the rows, so a database restored from a backup or a promoted standby reads
//! again exactly what it lost, and a loader's Kafka commit that lags it reads nothing twice.
//! Kafka decides instead when there is no stored position, when the group has no offset in
//! Kafka at all (the topic re-created, its offsets deleted or expired: the stored position may
//! belong to another log), and when another tool moved the group's offset (an operator's
//! `kafka-consumer-groups --reset-offsets`, which the loaders follow as they always did).

use super::Pipeline;
use crate::consumer;
use crate::events::{DatabaseNotReady, StartedFromDatabase};
use crate::sink::offsets::{self, KafkaOffset, Start};
use etl_common::backoff::Backoff;
use etl_common::retry::{Cancelled, Outage, retry};
use rdkafka::Offset;
use std::collections::BTreeMap;

impl Pipeline {
    /// Takes `parts` (a deferred assignment), each from its stored position; waits out a
    /// database outage (the partitions are not loaded meanwhile). `Cancelled` if shutdown came
    /// first: then they are not taken, and the group gives them to another member.
    pub(super) async fn take_assignment(&self, parts: &[(String, i32)]) -> Result<(), Cancelled> {
        let backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let (pool, group, topic) = (self.sinks.pool(), &self.config.group_id, &self.config.topic);
        let mine: Vec<i32> = parts
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect();
        let load = || async {
            let mut conn = pool.acquire().await.map_err(Outage)?;
            offsets::read(&mut conn, group, topic, &mine)
                .await
                .map_err(Outage)
        };
        let read = retry(&self.shutdown, backoff, load, |Outage(error), retry_in| {
            self.telemetry.emit(DatabaseNotReady {
                error: &anyhow::anyhow!("reading the stored positions: {error}"),
                retry_in,
            });
        });
        // Shutdown does not wait for a read stuck on an unreachable server (the pool's timeout).
        let (stored, loaded_before) =
            etl_common::retry::until_cancelled(&self.shutdown, self.liveness.waiting(read))
                .await?
                .map_err(|_| Cancelled)?;
        // Kafka's side, to tell a re-created topic from a restored database (and to log which).
        let (c, asked) = (self.consumer.clone(), parts.to_vec());
        let kafka = tokio::task::spawn_blocking(move || consumer::committed_in_kafka(&c, &asked))
            .await
            .map_err(|_| Cancelled)?;
        let mut starts = BTreeMap::new();
        for (t, p) in parts {
            if t != topic {
                continue;
            }
            let in_kafka = kafka.as_ref().ok().map(|k| {
                k.get(&(t.clone(), *p))
                    .copied()
                    .unwrap_or(KafkaOffset::Absent)
            });
            let position = stored.get(p).copied();
            let start = offsets::start_of(position, loaded_before.contains(p), in_kafka);
            self.telemetry.emit(StartedFromDatabase {
                topic: t,
                partition: *p,
                database: position,
                kafka: in_kafka,
                start,
            });
            let behind = match (start, in_kafka) {
                (Start::At(d), Some(KafkaOffset::Loaders(k))) => k > d,
                (Start::Beginning, Some(KafkaOffset::Loaders(_))) => true,
                _ => false,
            };
            if behind {
                self.adopt_orphans(t, *p).await?;
            }
            match start {
                Start::At(offset) => starts.insert((t.clone(), *p), Offset::Offset(offset)),
                Start::Beginning => starts.insert((t.clone(), *p), Offset::Beginning),
                Start::Kafka => None,
            };
        }
        if let Err(e) = consumer::assign_at(&self.consumer, parts, &starts) {
            tracing::error!(error = %format!("{e:#}"), partitions = ?parts, "cannot take the assigned partitions");
        }
        Ok(())
    }

    /// The database is behind the loaders' commits (restored): before the partition's records
    /// are read again, its lake files the ledger does not know are adopted
    /// ([`crate::sink::Rolls::adopt_orphans`]), so the records they hold are not rolled twice.
    /// An outage is waited out; a file that cannot be adopted after a few tries is logged and
    /// left (its records may then be in the tables twice).
    async fn adopt_orphans(&self, topic: &str, partition: i32) -> Result<(), Cancelled> {
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        for attempt in 1..=5 {
            match self.sinks.rolls().adopt_orphans(topic, partition).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 5 => {
                    tracing::error!(%topic, partition, error = %format!("{e:#}"), "cannot adopt the lake's files the restored database does not know; their records may be in the tables twice");
                }
                Err(e) => {
                    let retry_in = backoff.next_delay();
                    tracing::warn!(%topic, partition, error = %format!("{e:#}"), ?retry_in, "cannot adopt the lake's files yet");
                    etl_common::retry::until_cancelled(
                        &self.shutdown,
                        tokio::time::sleep(retry_in),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}
