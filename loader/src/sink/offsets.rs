//! Offsets kept where the data is: per consumer group and partition, the next offset whose
//! records this database holds (`consumer_offsets`). A batch writes them in its own transaction,
//! so whatever state PostgreSQL comes back in — restored from a dump, a promoted standby that
//! missed the last commits — its offsets match its rows, and a loader taking a partition starts
//! from here rather than from the offset committed to Kafka. See docs/DESIGN.md, "Offsets".

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
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

/// A position as PostgreSQL holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stored {
    /// The next offset to read.
    pub next_offset: i64,
    /// When it was written.
    pub updated_at: DateTime<Utc>,
    /// Who wrote it: `loader <pid>` or `loader replay`.
    pub updated_by: String,
}

/// Writes `positions` (last writer wins: a replay moves them back on purpose, and a zombie
/// writing an older position only makes its successor read again what the identity absorbs).
pub async fn store(conn: &mut PgConnection, positions: &Positions) -> sqlx::Result<()> {
    if positions.next.is_empty() {
        return Ok(());
    }
    let (topics, parts, offsets): (Vec<&str>, Vec<i32>, Vec<i64>) = positions
        .next
        .iter()
        .map(|((t, p), o)| (t.as_str(), *p, *o))
        .fold(Default::default(), |(mut t, mut p, mut o), (a, b, c)| {
            t.push(a);
            p.push(b);
            o.push(c);
            (t, p, o)
        });
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

/// The positions PostgreSQL holds for `group` on `topic`, by partition.
pub async fn load(
    conn: &mut PgConnection,
    group: &str,
    topic: &str,
) -> sqlx::Result<BTreeMap<i32, Stored>> {
    let rows = sqlx::query(
        "SELECT kafka_partition, next_offset, updated_at, updated_by FROM consumer_offsets
         WHERE group_id = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                Stored {
                    next_offset: r.try_get(1)?,
                    updated_at: r.try_get(2)?,
                    updated_by: r.try_get(3)?,
                },
            ))
        })
        .collect()
}
