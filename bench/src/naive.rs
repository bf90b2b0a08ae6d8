//! The naive baseline: what a first loader looks like — each record read, its raw row and then
//! each user inserted by its own autocommitted `INSERT`, and its offset committed synchronously
//! before the next record. Run over the first `--naive-records` records; its rate is the figure.

use crate::db::FreshDb;
use crate::preload::Topic;
use crate::{Config, Rate};
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

const INSERT_RAW: &str = "INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at, record_key, payload_sha256)
                          VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10)";
const INSERT_USER: &str = "INSERT INTO processed_data (raw_id, user_index, user_uuid, full_name, title, first_name, last_name, email,
                           gender, nationality, city, state, country, postcode, date_of_birth, registered_date, fetched_at, processed_at)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)";

/// Loads the first records of the topic the naive way.
pub async fn measure(config: &Config, topic_name: &str, topic: &Topic) -> anyhow::Result<Rate> {
    let db = FreshDb::create(&config.database_url, "bench_naive", true).await?;
    let result = run(config, topic_name, topic, &db).await;
    db.drop().await;
    result
}

async fn run(
    config: &Config,
    topic_name: &str,
    topic: &Topic,
    db: &FreshDb,
) -> anyhow::Result<Rate> {
    let pool = db.pool().await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("bench-naive-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create a Kafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in topic.ends.keys() {
        tpl.add_partition_offset(topic_name, *p, Offset::Beginning)
            .context("building the assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let want = config.naive_records.min(topic.records.len());
    let (mut users, mut bytes, mut seen) = (0u64, 0u64, 0usize);
    let mut started = None;
    let pg_before = crate::procfs::postgres_snapshot();
    while seen < want {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("no record for 60 s")?
            .context("consuming")?;
        started.get_or_insert_with(Instant::now);
        let payload = m.payload().unwrap_or_default();
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        let identity = loader::transform::Identity::of(key.as_deref(), payload);
        let raw_id = identity.raw_id;
        let now = chrono::Utc::now();
        let rows = loader::transform::transform(payload, raw_id, now)
            .map_err(|e| anyhow::anyhow!("a preloaded record does not transform: {e}"))?;
        let text = std::str::from_utf8(payload).context("not UTF-8")?;
        let stored =
            loader::transform::strip_login_secrets(text).unwrap_or_else(|| text.to_string());
        sqlx::query(INSERT_RAW)
            .bind(raw_id)
            .bind(m.topic())
            .bind(m.partition())
            .bind(m.offset())
            .bind(key)
            .bind(stored)
            .bind(rows.len() as i32)
            .bind(now)
            .bind(identity.key)
            .bind(&identity.digest[..])
            .execute(&pool)
            .await
            .context("naive raw insert")?;
        for u in &rows {
            sqlx::query(INSERT_USER)
                .bind(u.raw_id)
                .bind(u.user_index)
                .bind(&u.user_uuid)
                .bind(&u.full_name)
                .bind(&u.title)
                .bind(&u.first_name)
                .bind(&u.last_name)
                .bind(&u.email)
                .bind(&u.gender)
                .bind(&u.nationality)
                .bind(&u.city)
                .bind(&u.state)
                .bind(&u.country)
                .bind(&u.postcode)
                .bind(u.date_of_birth)
                .bind(u.registered_date)
                .bind(now)
                .bind(u.processed_at)
                .execute(&pool)
                .await
                .context("naive user insert")?;
        }
        consumer
            .commit_message(&m, CommitMode::Sync)
            .context("naive offset commit")?;
        users += rows.len() as u64;
        bytes += payload.len() as u64;
        seen += 1;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    // Before the pool closes: a backend that has exited can no longer be read.
    let pg = crate::procfs::postgres_cpu_since(&pg_before);
    pool.close().await;
    Ok(Rate {
        users,
        bytes,
        elapsed,
        pg_cores: Some(crate::procfs::cores(pg, elapsed)),
    })
}
