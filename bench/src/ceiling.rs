//! The ceiling: PostgreSQL's own `COPY` of exactly the rows the loader writes for the topic
//! (`raw_data` with its stripped JSONB payload; waiting for its Parquet roll, the same payload as
//! text in the unlogged `raw_payload_text`; `processed_data`), into a fresh
//! database with the loader's schema and indexes, in one transaction per session. With N
//! sessions (the ceiling of N loaders), N connections each COPY 1/N of the rows at once. Building
//! the rows is not timed; sending them and committing is.

use crate::Rate;
use crate::db::FreshDb;
use crate::preload::Topic;
use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Connection;
use std::fmt::Write as _;
use std::time::Instant;

/// Rows as `COPY ... (FORMAT csv)` text, one buffer per table.
pub struct CopyData {
    /// `raw_data` rows.
    pub raw: String,
    /// `raw_payload_text` rows (the payload text waiting for its raw file).
    pub waiting: String,
    /// `processed_data` rows.
    pub processed: String,
    /// Users in them.
    pub users: u64,
}

fn field(out: &mut String, value: Option<&str>) {
    if let Some(v) = value {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    }
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// What the loader would write for `topic`'s records (login secrets stripped, as by default).
pub fn rows(topic_name: &str, topic: &Topic) -> anyhow::Result<CopyData> {
    rows_of(topic_name, topic, topic.records.iter())
}

/// [`rows`] for some of `topic`'s records only: one session's share.
pub fn rows_of<'a>(
    topic_name: &str,
    topic: &Topic,
    records: impl Iterator<Item = &'a crate::preload::Produced>,
) -> anyhow::Result<CopyData> {
    let now = Utc::now();
    let mut raw = String::new();
    let mut waiting = String::new();
    let mut processed = String::new();
    let mut users = 0;
    for r in records {
        let body = &topic.payloads[r.payload].body;
        let identity = loader::transform::Identity::of(Some(&r.key), body);
        let raw_id = identity.raw_id;
        let rows = loader::transform::transform(body, raw_id, now)
            .map_err(|e| anyhow::anyhow!("a preloaded record does not transform: {e}"))?;
        let text = std::str::from_utf8(body).context("a preloaded record is not UTF-8")?;
        let stored =
            loader::transform::strip_login_secrets(text).unwrap_or_else(|| text.to_string());
        let _ = write!(raw, "{raw_id},");
        field(&mut raw, Some(topic_name));
        let _ = write!(raw, ",{},{},", r.partition, r.offset);
        field(&mut raw, Some(&r.key));
        raw.push(',');
        field(&mut raw, Some(&stored));
        let _ = write!(raw, ",{},{},{},", rows.len(), ts(r.fetched_at), ts(now));
        field(&mut raw, Some(&identity.key));
        let _ = write!(
            raw,
            ",\\x{},{},true",
            hex::encode(identity.digest),
            stored.len()
        );
        raw.push('\n');
        let _ = write!(waiting, "{raw_id},");
        field(&mut waiting, Some(&stored));
        waiting.push('\n');
        for u in &rows {
            let _ = write!(processed, "{},{},", u.raw_id, u.user_index);
            for v in [
                u.user_uuid.as_deref(),
                Some(u.full_name.as_str()),
                u.title.as_deref(),
                Some(u.first_name.as_str()),
                Some(u.last_name.as_str()),
                Some(u.email.as_str()),
                u.gender.as_deref(),
                u.nationality.as_deref(),
                u.city.as_deref(),
                u.state.as_deref(),
                u.country.as_deref(),
                u.postcode.as_deref(),
            ] {
                field(&mut processed, v);
                processed.push(',');
            }
            if let Some(d) = u.date_of_birth {
                processed.push_str(&ts(d));
            }
            let _ = writeln!(
                processed,
                ",{},{},{},{}",
                ts(u.registered_date),
                ts(r.fetched_at),
                ts(u.processed_at),
                ts(now)
            );
        }
        users += rows.len() as u64;
    }
    Ok(CopyData {
        raw,
        waiting,
        processed,
        users,
    })
}

const COPY_RAW: &str = "COPY raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at, created_at, record_key, payload_sha256, payload_bytes, parquet_pending) FROM STDIN (FORMAT csv)";
const COPY_WAITING: &str = "COPY raw_payload_text (raw_id, payload_text) FROM STDIN (FORMAT csv)";
const COPY_PROCESSED: &str = "COPY processed_data (raw_id, user_index, user_uuid, full_name, title, first_name, last_name, email, gender, nationality, city, state, country, postcode, date_of_birth, registered_date, fetched_at, processed_at, created_at) FROM STDIN (FORMAT csv)";

async fn copy(conn: &mut sqlx::PgConnection, statement: &str, data: &str) -> anyhow::Result<u64> {
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .with_context(|| format!("starting {statement}"))?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await.context("sending COPY data")?;
    }
    copy.finish().await.context("finishing COPY")
}

/// Times the COPY of the loader's rows for `topic` into a fresh database, over `sessions`
/// connections at once (record `i` goes to session `i % sessions`), from the first COPY started
/// to the last commit.
pub async fn measure(
    admin_url: &str,
    topic_name: &str,
    topic: &Topic,
    sessions: usize,
) -> anyhow::Result<Rate> {
    let sessions = sessions.max(1);
    let shares = (0..sessions)
        .map(|k| {
            rows_of(
                topic_name,
                topic,
                topic.records.iter().skip(k).step_by(sessions),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let users: u64 = shares.iter().map(|d| d.users).sum();
    let db = FreshDb::create(admin_url, "bench_ceiling", true).await?;
    let result = async {
        let mut conns = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            let mut conn = sqlx::PgConnection::connect(&db.url)
                .await
                .with_context(|| format!("connecting to {}", db.name))?;
            sqlx::raw_sql("BEGIN")
                .execute(&mut conn)
                .await
                .context("beginning a COPY transaction")?;
            conns.push(conn);
        }
        let pg_before = crate::procfs::postgres_snapshot();
        let started = Instant::now();
        let copies = conns
            .iter_mut()
            .zip(&shares)
            .map(|(conn, data)| async move {
                let raw = copy(conn, COPY_RAW, &data.raw).await?;
                copy(conn, COPY_WAITING, &data.waiting).await?;
                let processed = copy(conn, COPY_PROCESSED, &data.processed).await?;
                sqlx::raw_sql("COMMIT")
                    .execute(&mut *conn)
                    .await
                    .context("committing a COPY")?;
                anyhow::Ok((raw, processed))
            });
        let counts = futures::future::try_join_all(copies).await?;
        let elapsed = started.elapsed();
        let pg = crate::procfs::postgres_cpu_since(&pg_before);
        for conn in conns {
            let _ = conn.close().await;
        }
        let raw_rows: u64 = counts.iter().map(|c| c.0).sum();
        let processed_rows: u64 = counts.iter().map(|c| c.1).sum();
        anyhow::ensure!(
            raw_rows == topic.records.len() as u64 && processed_rows == users,
            "COPY wrote {raw_rows} raw and {processed_rows} processed rows, expected {} and {}",
            topic.records.len(),
            users
        );
        Ok(Rate {
            users,
            bytes: topic.bytes,
            elapsed,
            pg_cores: Some(crate::procfs::cores(pg, elapsed)),
        })
    }
    .await;
    db.drop().await;
    result
}
