//! Freshness: the real extractor polls the stub at a steady rate while the real loader runs at
//! default settings; each raw row's latency is the moment it became visible in PostgreSQL
//! (polled every 20 ms) minus its fetch time (the `etl-fetched-at` header the loader stores).

use crate::Config;
use crate::db::FreshDb;
use crate::loader_run::{extractor_env, free_addr, loader_env, spawn, stop, tail};
use anyhow::Context;
use chrono::{DateTime, Utc};
use randomuser_stub::{FaultPlan, Stub};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Fetch-to-row latencies.
#[derive(Debug, Clone)]
pub struct Freshness {
    /// Records observed.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Worst.
    pub max: Duration,
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the extractor and the loader together and measures.
pub async fn measure(config: &Config, bin_dir: &Path, run_id: &str) -> anyhow::Result<Freshness> {
    let topic = format!("{run_id}.fresh");
    crate::kafka::create_topic(&config.brokers, &topic, config.partitions).await?;
    let db = FreshDb::create(&config.database_url, "bench_fresh", false).await?;
    let dir = tempfile::tempdir().context("creating a data directory")?;
    let stub = Stub::start("127.0.0.1:0".parse()?, FaultPlan::default()).await?;
    let result = run(config, bin_dir, &topic, &db, dir.path(), &stub).await;
    stub.stop().await;
    db.drop().await;
    crate::kafka::delete_topic(&config.brokers, &topic).await;
    result
}

async fn run(
    config: &Config,
    bin_dir: &Path,
    topic: &str,
    db: &FreshDb,
    dir: &Path,
    stub: &Stub,
) -> anyhow::Result<Freshness> {
    let loader_status = free_addr()?;
    let env = loader_env(
        &config.brokers,
        &db.url,
        topic,
        &format!("bench-fresh-{}", uuid::Uuid::new_v4().simple()),
        &dir.join("data"),
        loader_status,
        &[],
    );
    let loader_log = dir.join("loader.log");
    let mut loader = spawn(&bin_dir.join("loader"), &["run"], &env, &loader_log)?;
    let extractor_log = dir.join("extractor.log");
    let outcome = async {
        let ready = Instant::now();
        loop {
            let ok = reqwest::get(format!("http://{loader_status}/ready"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            anyhow::ensure!(
                ready.elapsed() < Duration::from_secs(60),
                "the loader was not ready within 60 s:\n{}",
                tail(&loader_log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let extractor_env = extractor_env(
            &config.brokers,
            topic,
            stub,
            config.freshness_interval,
            config.freshness_users,
        )?;
        let mut extractor = spawn(
            &bin_dir.join("extractor"),
            &[],
            &extractor_env,
            &extractor_log,
        )?;
        let pool = db.pool().await?;
        let mut seen = HashSet::new();
        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut extracting = true;
        let mut quiet_since = Instant::now();
        loop {
            let rows: Vec<(uuid::Uuid, DateTime<Utc>)> =
                sqlx::query_as("SELECT raw_id, fetched_at FROM raw_data")
                    .fetch_all(&pool)
                    .await
                    .context("polling raw_data")?;
            let now = Utc::now();
            for (id, fetched_at) in rows {
                if seen.insert(id) {
                    latencies.push((now - fetched_at).to_std().unwrap_or_default());
                    quiet_since = Instant::now();
                }
            }
            if extracting && started.elapsed() >= config.freshness_for {
                stop(&mut extractor);
                extracting = false;
                quiet_since = Instant::now();
            }
            if !extracting && quiet_since.elapsed() > Duration::from_secs(10) {
                break;
            }
            if let Some(code) = loader.try_wait().context("waiting on the loader")? {
                anyhow::bail!("the loader exited early ({code}):\n{}", tail(&loader_log));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pool.close().await;
        anyhow::ensure!(
            !latencies.is_empty(),
            "no record arrived during the freshness run:\n{}",
            tail(&extractor_log)
        );
        latencies.sort_unstable();
        Ok(Freshness {
            samples: latencies.len(),
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: *latencies.last().unwrap_or(&Duration::ZERO),
        })
    }
    .await;
    stop(&mut loader);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
