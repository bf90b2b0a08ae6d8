//! The loader's benchmark: one run, one machine, every figure measured against a baseline
//! taken in the same run.
//!
//! 1. [`preload`] a topic with responses built from the real captures;
//! 2. [`ceiling`]: PostgreSQL's own `COPY` of exactly the rows the loader writes;
//! 3. [`consume`]: rdkafka reading the topic into nothing;
//! 4. [`loader_run`]: the real `loader run` binary from offset 0 to zero lag, offsets committed,
//!    at default settings and at the best settings found;
//! 5. [`naive`]: one INSERT per user, an offset commit per record;
//! 6. [`freshness`]: fetch-to-row latency with the real extractor polling the stub steadily.
//!
//! [`report`] writes the figures to `BENCHMARKS.md`, newest run first.

pub mod ceiling;
pub mod consume;
pub mod db;
pub mod freshness;
pub mod kafka;
pub mod loader_run;
pub mod naive;
pub mod preload;
pub mod procfs;
pub mod report;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// What to measure, and how big.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    version,
    about = "Loader vs. PostgreSQL COPY, raw consume and a naive loader"
)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,
    /// A PostgreSQL URL whose role may create databases: every step gets a fresh one.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://etl:etl@localhost:5432/etl",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Records (API responses) in the preloaded topic.
    #[arg(long, default_value_t = 2000)]
    pub records: usize,
    /// Users per record.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Partitions of the preloaded topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Records the naive loader gets through (it is slow; its rate is what counts).
    #[arg(long, default_value_t = 100)]
    pub naive_records: usize,
    /// `NAME=VALUE` settings of the "best" loader run, comma-separated.
    #[arg(long, default_value = "BATCH_MAX_BYTES=16777216")]
    pub best: String,
    /// How long the freshness run lasts.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    pub freshness_for: Duration,
    /// Time between the extractor's fetches in the freshness run.
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    pub freshness_interval: Duration,
    /// Users per fetch in the freshness run.
    #[arg(long, default_value_t = 100)]
    pub freshness_users: usize,
    /// Where the `loader` and `extractor` binaries are (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The results file; the run is added at the top.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The command line recorded with the results.
    #[arg(long, env = "BENCH_COMMAND", default_value = "scripts/bench.sh")]
    pub command: String,
    /// An S3 API endpoint (the local moto of `scripts/dev-services.sh`): the loader is also run
    /// at defaults with its Parquet going to a bucket there, beside the local directory.
    #[arg(long, env = "ETL_TEST_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    etl_common::config::parse_duration(s).map_err(|e| e.to_string())
}

impl Config {
    /// The directory holding `loader` and `extractor`.
    pub fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.bin_dir {
            return Ok(d.clone());
        }
        let exe = std::env::current_exe().context("cannot find the bench binary's own path")?;
        exe.parent()
            .map(PathBuf::from)
            .context("the bench binary has no parent directory")
    }

    /// The `--best` settings as pairs.
    pub fn best_settings(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.best
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .with_context(|| format!("--best: {kv:?} is not NAME=VALUE"))
            })
            .collect()
    }
}

/// One measured throughput.
#[derive(Debug, Clone)]
pub struct Rate {
    /// Users moved.
    pub users: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// PostgreSQL's CPU over that time, in cores busy, where measured.
    pub pg_cores: Option<f64>,
}

impl Rate {
    /// Users per second.
    pub fn users_per_sec(&self) -> f64 {
        self.users as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every step and writes the report.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let bin_dir = config.bin_dir()?;
    for bin in ["loader", "extractor"] {
        anyhow::ensure!(
            bin_dir.join(bin).is_file(),
            "{} not found: build it first (cargo build --release -p loader -p extractor) or pass --bin-dir",
            bin_dir.join(bin).display()
        );
    }
    let best = config.best_settings()?;
    let started = chrono::Utc::now();
    let run_id = format!("bench-{}", uuid::Uuid::new_v4().simple());
    eprintln!(
        "[bench] {run_id}: {} records x {} users, {} partitions",
        config.records, config.users, config.partitions
    );

    let topic = format!("{run_id}.raw");
    kafka::create_topic(&config.brokers, &topic, config.partitions).await?;
    let data = preload::build(config.records, config.users, &run_id)?;
    let produced = preload::produce(&config.brokers, &topic, data).await?;
    eprintln!(
        "[bench] preloaded {} records, {:.1} MB",
        produced.records.len(),
        produced.bytes as f64 / 1e6
    );

    let ceiling = ceiling::measure(&config.database_url, &topic, &produced).await?;
    eprintln!(
        "[bench] COPY ceiling: {:.0} users/s",
        ceiling.users_per_sec()
    );

    let consume = consume::measure(&config.brokers, &topic, &produced).await?;
    eprintln!("[bench] consume: {:.0} users/s", consume.users_per_sec());

    let default_run = loader_run::measure(&config, &bin_dir, &topic, &produced, &[]).await?;
    eprintln!(
        "[bench] loader (defaults): {:.0} users/s",
        default_run.rate.users_per_sec()
    );
    let best_run = loader_run::measure(&config, &bin_dir, &topic, &produced, &best).await?;
    eprintln!(
        "[bench] loader ({}): {:.0} users/s",
        config.best,
        best_run.rate.users_per_sec()
    );

    let bucket_run = match &config.s3_endpoint {
        Some(endpoint) => {
            let settings = bucket_settings(endpoint, &run_id).await?;
            let run = loader_run::measure(&config, &bin_dir, &topic, &produced, &settings).await?;
            eprintln!(
                "[bench] loader (bucket): {:.0} users/s, rolls closed in {:?}",
                run.rate.users_per_sec(),
                run.close
            );
            Some(run)
        }
        None => None,
    };

    let naive = naive::measure(&config, &topic, &produced).await?;
    eprintln!("[bench] naive: {:.0} users/s", naive.users_per_sec());

    let fresh = freshness::measure(&config, &bin_dir, &run_id).await?;
    eprintln!(
        "[bench] freshness p50 {:?} p99 {:?} over {} records",
        fresh.p50, fresh.p99, fresh.samples
    );

    kafka::delete_topic(&config.brokers, &topic).await;
    let results = report::Results {
        started,
        config: config.clone(),
        produced_records: produced.records.len(),
        produced_users: produced.users,
        produced_bytes: produced.bytes,
        ceiling,
        consume,
        default_run,
        best_run,
        bucket_run,
        naive,
        fresh,
    };
    let text = report::render(&results);
    println!("{text}");
    report::prepend(&config.out, &text)?;
    eprintln!("[bench] written to {}", config.out.display());
    Ok(())
}

/// A new bucket on the S3 endpoint (moto takes an unsigned CreateBucket) and the loader's
/// settings to write to it.
async fn bucket_settings(endpoint: &str, run_id: &str) -> anyhow::Result<Vec<(String, String)>> {
    use anyhow::Context;
    let bucket = run_id.replace('_', "-");
    let resp = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("creating bucket {bucket} at {endpoint}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "creating bucket {bucket}: {}",
        resp.status()
    );
    Ok([
        ("PARQUET_URL", format!("s3://{bucket}/parquet")),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "bench".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "bench".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}
