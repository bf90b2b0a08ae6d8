//! The loader end to end: the real release `loader run` binary as its own process, on a fresh
//! database, data directory and group, from offset 0 until the group has committed the end of
//! every partition. Its peak RSS and CPU time are read from `/proc` just before it is stopped.

use crate::Config;
use crate::Rate;
use crate::db::FreshDb;
use crate::preload::Topic;
use crate::procfs;
use anyhow::Context;
use etl_common::kafka::KafkaArgs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One loader run.
#[derive(Debug, Clone)]
pub struct LoaderRun {
    /// Settings on top of the defaults.
    pub settings: Vec<(String, String)>,
    /// From the first record consumed to the last offset committed.
    pub rate: Rate,
    /// From process start to the last offset committed (start-up and group join included).
    pub wall: Duration,
    /// Peak resident set (VmHWM), bytes, over the whole life: loading and closing the rolls.
    pub peak_rss: u64,
    /// Peak resident set up to the last commit (loading only), bytes: tells the batch path's
    /// memory from the closing rolls'.
    pub loading_rss: u64,
    /// User + system CPU time of the process, up to the last offset committed.
    pub cpu: Duration,
    /// From SIGTERM to exit: the open Parquet rolls written and published.
    pub close: Duration,
    /// Parquet files published (raw and processed).
    pub parquet_files: i64,
}

impl LoaderRun {
    /// CPU time ÷ wall time: 1.0 is one core busy.
    pub fn cores(&self) -> f64 {
        procfs::cores(self.cpu, self.wall)
    }

    /// The loader's CPU time (user + system, start-up included) per 1,000 users, in seconds.
    pub fn cpu_per_1000(&self) -> f64 {
        crate::per_1000(self.cpu.as_secs_f64(), self.rate.users)
    }
}

/// A free local port for the loader's status server.
pub fn free_addr() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    l.local_addr().context("reading the probe port")
}

/// The environment of an extractor polling `stub` every `interval` for `users` users, published
/// to `topic` (the freshness and idle-cost steps run it the same way).
pub fn extractor_env(
    brokers: &str,
    topic: &str,
    stub: &randomuser_stub::Stub,
    interval: Duration,
    users: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok([
        ("KAFKA_BROKERS", brokers.to_string()),
        ("KAFKA_TOPIC", topic.to_string()),
        ("RANDOMUSER_URL", stub.url()),
        ("EXTRACT_INTERVAL", format!("{}ms", interval.as_millis())),
        ("EXTRACT_RESULTS", users.to_string()),
        ("METRICS_ADDR", free_addr()?.to_string()),
        ("LOG_DIR", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

/// Sends SIGTERM and waits for the process to finish its drain.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts a service binary with only the given environment; output goes to `log`.
pub fn spawn(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log handle")?;
    Command::new(bin)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The tail of a log, for an error message.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A counter's value from a `/metrics` page (summed over labels), 0 when absent.
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The environment of a loader run: defaults, plus `settings`.
pub fn loader_env(
    brokers: &str,
    db_url: &str,
    topic: &str,
    group: &str,
    data_dir: &Path,
    status: std::net::SocketAddr,
    settings: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("KAFKA_BROKERS", brokers.to_string()),
        ("DATABASE_URL", db_url.to_string()),
        ("KAFKA_TOPIC", topic.to_string()),
        ("KAFKA_GROUP_ID", group.to_string()),
        ("KAFKA_DLQ_TOPIC", format!("{topic}.dlq")),
        ("DATA_DIR", data_dir.display().to_string()),
        ("LOG_DIR", String::new()),
        ("METRICS_ADDR", status.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(settings.iter().cloned());
    env
}

/// A `loader run` process started by [`launch`], and what watching it needs.
pub struct Launched {
    /// The process.
    pub child: Child,
    /// Its status server (`/metrics`).
    pub status: std::net::SocketAddr,
    /// Its output.
    pub log: PathBuf,
    /// Its group's committed offsets on the topic.
    pub offsets: loader::replay::GroupOffsets,
    /// When it was started.
    pub started: Instant,
}

/// Starts the real `loader run` on `topic_name` into `db`, in a new group named after
/// `group_prefix`, with its data directory and log under `dir` and `settings` on top of the
/// defaults.
pub fn launch(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    db: &FreshDb,
    dir: &Path,
    settings: &[(String, String)],
    group_prefix: &str,
) -> anyhow::Result<Launched> {
    let group = format!("{group_prefix}-{}", uuid::Uuid::new_v4().simple());
    let status = free_addr()?;
    let log = dir.join("loader.log");
    let env = loader_env(
        &config.brokers,
        &db.url,
        topic_name,
        &group,
        &dir.join("data"),
        status,
        settings,
    );
    let offsets = loader::replay::GroupOffsets::new(
        &KafkaArgs::for_brokers(&config.brokers),
        &group,
        topic_name,
    )?;
    let started = Instant::now();
    let child = spawn(&bin_dir.join("loader"), &["run"], &env, &log)?;
    Ok(Launched {
        child,
        status,
        log,
        offsets,
        started,
    })
}

/// Runs the loader over the whole preloaded topic.
pub async fn measure(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
    settings: &[(String, String)],
) -> anyhow::Result<LoaderRun> {
    let db = FreshDb::create(&config.database_url, "bench_loader", false).await?;
    let dir = tempfile::tempdir().context("creating a data directory")?;
    let result = run_once(
        config,
        bin_dir,
        topic_name,
        topic,
        settings,
        &db,
        dir.path(),
    )
    .await;
    db.drop().await;
    result
}

async fn run_once(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
    settings: &[(String, String)],
    db: &FreshDb,
    dir: &Path,
) -> anyhow::Result<LoaderRun> {
    let Launched {
        mut child,
        status,
        log,
        offsets,
        started,
    } = launch(
        config,
        bin_dir,
        topic_name,
        db,
        dir,
        settings,
        "bench-loader",
    )?;
    let outcome = async {
        let mut first: Option<(Instant, procfs::PgSnapshot)> = None;
        loop {
            watch(
                &mut child,
                &log,
                started,
                Duration::from_secs(1800),
                status,
                &mut first,
            )
            .await?;
            if let Some((at, pg_before)) = &first
                && crate::kafka::caught_up(&offsets, &topic.ends)?
            {
                let done = Instant::now();
                let pg = procfs::postgres_cpu_since(pg_before);
                let peak_rss = procfs::peak_rss(child.id())?;
                let cpu = procfs::cpu(child.id())?;
                return Ok((*at, done, peak_rss, cpu, pg));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let (first, done, peak_rss, cpu, pg_cpu) = match outcome {
        Ok(v) => v,
        Err(e) => {
            stop(&mut child);
            return Err(e);
        }
    };
    let loading_rss = peak_rss;
    let Closed {
        took: closed,
        peak_rss,
        ..
    } = close(&mut child, &log, peak_rss).await?;
    let files = check_loaded(db, topic).await?;
    Ok(LoaderRun {
        settings: settings.to_vec(),
        rate: Rate {
            users: topic.users,
            bytes: topic.bytes,
            elapsed: done - first,
            pg_cores: Some(procfs::cores(pg_cpu, done - first)),
        },
        wall: done - started,
        peak_rss,
        loading_rss,
        cpu,
        close: closed,
        parquet_files: files,
    })
}

/// One turn of watching a loader load: an error if it exited or has run past `limit`; notes
/// its first record consumed (when, and PostgreSQL's CPU then) in `first`. True on the turn
/// that noted it.
pub async fn watch(
    child: &mut Child,
    log: &Path,
    started: Instant,
    limit: Duration,
    status: std::net::SocketAddr,
    first: &mut Option<(Instant, procfs::PgSnapshot)>,
) -> anyhow::Result<bool> {
    if let Some(code) = child.try_wait().context("waiting on the loader")? {
        anyhow::bail!("the loader exited early ({code}):\n{}", tail(log));
    }
    anyhow::ensure!(
        started.elapsed() < limit,
        "the loader did not catch up within {} s:\n{}",
        limit.as_secs(),
        tail(log)
    );
    if first.is_none() && metric(status, "etl_loader_records_consumed_total").await > 0.0 {
        *first = Some((Instant::now(), procfs::postgres_snapshot()));
        return Ok(true);
    }
    Ok(false)
}

/// Sends SIGTERM, which closes the open Parquet rolls, and waits for a clean exit (at most
/// 120 s), watching the peak resident set and the CPU (at least `peak_rss`, the peak read
/// before).
pub async fn close(child: &mut Child, log: &Path, peak_rss: u64) -> anyhow::Result<Closed> {
    let term = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut peak_rss = peak_rss;
    let mut cpu = procfs::cpu(child.id()).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait().context("waiting on the loader")? {
            anyhow::ensure!(
                status.success(),
                "the loader exited with {status}:\n{}",
                tail(log)
            );
            return Ok(Closed {
                took: term.elapsed(),
                peak_rss,
                cpu,
            });
        }
        if term.elapsed() > Duration::from_secs(120) {
            stop(child);
            anyhow::bail!(
                "the loader did not close its rolls within 120 s:\n{}",
                tail(log)
            );
        }
        if let Ok(rss) = procfs::peak_rss(child.id()) {
            peak_rss = peak_rss.max(rss);
        }
        if let Ok(now) = procfs::cpu(child.id()) {
            cpu = cpu.max(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loader's close, as [`close`] saw it.
pub struct Closed {
    /// SIGTERM to exit.
    pub took: Duration,
    /// Peak resident set over the whole life, closing included.
    pub peak_rss: u64,
    /// CPU over the whole life (to within the last 20 ms poll before exit): what the rolls
    /// written at closing cost is in it, which the figure to the last commit leaves out.
    pub cpu: Duration,
}

/// Checks that `db` holds every record and user of `topic` exactly once and that every user is in
/// a published Parquet file (nothing left pending), so a fast run cannot be a wrong one; returns
/// the published files.
pub async fn check_loaded(db: &FreshDb, topic: &Topic) -> anyhow::Result<i64> {
    let pool = db.pool().await?;
    let (raw, processed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM raw_data), (SELECT count(*) FROM processed_data)",
    )
    .fetch_one(&pool)
    .await
    .context("counting the loaded rows")?;
    let (files, in_files, waiting): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM parquet_files WHERE state = 'published'),
                (SELECT coalesce(sum(row_count), 0)::int8 FROM parquet_files WHERE state = 'published' AND dataset = 'processed'),
                (SELECT count(*) FROM raw_data WHERE parquet_pending) + (SELECT count(*) FROM parquet_files WHERE state <> 'published')",
    )
    .fetch_one(&pool)
    .await
    .context("reading the Parquet ledger")?;
    pool.close().await;
    anyhow::ensure!(
        raw == topic.records.len() as i64 && processed == topic.users as i64,
        "the loader wrote {raw} raw and {processed} processed rows, expected {} and {}",
        topic.records.len(),
        topic.users
    );
    anyhow::ensure!(
        in_files == topic.users as i64 && waiting == 0,
        "the Parquet files hold {in_files} users ({waiting} records or files unpublished), expected {}",
        topic.users
    );
    Ok(files)
}
