//! Offsets kept where the data is: per consumer group and partition, the next offset whose
//! records this database holds (`consumer_offsets`). A batch writes them in its own transaction,
//! so whatever state PostgreSQL comes back in — restored from a dump, a promoted standby that
//! missed the last commits — its offsets match its rows, and a loader taking a partition starts
//! from here rather than from the offset committed to Kafka. See docs/DESIGN.md, "Offsets".

use sqlx::PgConnection;
use std::collections::BTreeMap;

/// A batch's positions: for `group`, per (topic, partition), the next offset to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions {
    /// The consumer group the positions belong to (`KAFKA_GROUP_ID`).
    pub group: String,
    /// Who writes them (`loader <pid>`, `loader replay`): shown by `loader status`.
    pub by: String,
    /// Next offset per (topic, partition).
    pub next: BTreeMap<(String, i32), i64>,
}

/// A group's committed offset in Kafka, and whether a loader committed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaOffset {
    /// The group has no offset here.
    Absent,
    /// Committed by a loader (its commits carry a stamp as metadata).
    Loaders(i64),
    /// Committed by another tool (`kafka-consumer-groups --reset-offsets`, `rpk group seek`,
    /// MirrorMaker's offset sync): an operator's move.
    Others(i64),
}

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this offset: the position stored in PostgreSQL.
    At(i64),
    /// At the partition's first retained record.
    Beginning,
    /// Where Kafka starts it: the group's committed offset, else the earliest.
    Kafka,
}

/// Where a partition starts, from the position stored for it (if any), whether `raw_data`
/// holds any of its records, and the group's offset in Kafka (`None`: it could not be read).
/// The stored position, except: an operator's move in Kafka is followed; a group with no offset
/// in Kafka (the topic re-created, offsets deleted or expired) starts where Kafka starts it,
/// since the stored position may describe another log; without a stored position, records in
/// the database mean they were loaded before positions were stored (Kafka decides, as it did),
/// and none mean the database has loaded nothing of the partition (the beginning, whatever the
/// loaders committed: a database restored from before its first record).
pub fn start_of(stored: Option<i64>, holds_records: bool, kafka: Option<KafkaOffset>) -> Start {
    match (stored, kafka) {
        (_, Some(KafkaOffset::Others(_))) => Start::Kafka,
        (Some(_), Some(KafkaOffset::Absent)) => Start::Kafka,
        (Some(position), _) => Start::At(position),
        (None, _) if holds_records => Start::Kafka,
        (None, _) => Start::Beginning,
    }
}

/// Writes `positions` (last writer wins: a replay moves them back on purpose, and a zombie
/// writing an older position only makes its successor read again what the identity absorbs).
pub async fn store(conn: &mut PgConnection, positions: &Positions) -> sqlx::Result<()> {
    if positions.next.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = positions.next.keys().map(|(t, _)| t.as_str()).collect();
    let parts: Vec<i32> = positions.next.keys().map(|(_, p)| *p).collect();
    let offsets: Vec<i64> = positions.next.values().copied().collect();
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, kafka_partition, next_offset, updated_by)
         SELECT $1, t, p, o, $5 FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS x(t, p, o)
         ON CONFLICT (group_id, topic, kafka_partition) DO UPDATE
         SET next_offset = EXCLUDED.next_offset, updated_at = now(), updated_by = EXCLUDED.updated_by",
    )
    .bind(&positions.group)
    .bind(topics)
    .bind(parts)
    .bind(offsets)
    .bind(&positions.by)
    .execute(conn)
    .await?;
    Ok(())
}

/// The positions PostgreSQL holds for `group` on `topic` (the next offset, by partition), and
/// which of `partitions` without one `raw_data` holds records of (loaded before positions were
/// stored): what [`start_of`] needs from the database.
pub async fn read(
    conn: &mut PgConnection,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<(BTreeMap<i32, i64>, Vec<i32>)> {
    let stored: BTreeMap<i32, i64> = sqlx::query_as(
        "SELECT kafka_partition, next_offset FROM consumer_offsets
         WHERE group_id = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let missing: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| !stored.contains_key(p))
        .collect();
    let holding = partitions_with_records(conn, topic, &missing).await?;
    Ok((stored, holding))
}

/// Of `partitions` of `topic`, those `raw_data` holds any record of (an index probe each).
async fn partitions_with_records(
    conn: &mut PgConnection,
    topic: &str,
    partitions: &[i32],
) -> sqlx::Result<Vec<i32>> {
    let mut held = Vec::new();
    for p in partitions {
        let any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM raw_data WHERE topic = $1 AND kafka_partition = $2)",
        )
        .bind(topic)
        .bind(p)
        .fetch_one(&mut *conn)
        .await?;
        if any {
            held.push(*p);
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_starts_where_the_rules_say() {
        use KafkaOffset::*;
        let cases = [
            // restored behind the loaders' commit, or their commit lost: the database's
            (Some(4), true, Some(Loaders(8)), Start::At(4)),
            (Some(8), true, Some(Loaders(4)), Start::At(8)),
            // the broker did not answer: the database's
            (Some(4), true, None, Start::At(4)),
            // an operator moved it with Kafka's tools: followed
            (Some(4), true, Some(Others(0)), Start::Kafka),
            (None, false, Some(Others(7)), Start::Kafka),
            // no offset in Kafka (re-created topic, offsets gone): Kafka's start
            (Some(3), true, Some(Absent), Start::Kafka),
            // loaded before positions were stored: Kafka, as before
            (None, true, Some(Loaders(5)), Start::Kafka),
            // nothing of it in the database: from the beginning
            (None, false, Some(Loaders(5)), Start::Beginning),
            (None, false, Some(Absent), Start::Beginning),
        ];
        for (stored, holds, kafka, want) in cases {
            assert_eq!(
                start_of(stored, holds, kafka),
                want,
                "{stored:?} {holds} {kafka:?}"
            );
        }
    }
}
