//! The loader's benchmark: one run, one machine, every figure measured against a baseline
//! taken in the same run.
//!
//! 1. [`preload`] a topic with responses built from the real captures;
//! 2. [`ceiling`]: PostgreSQL's own `COPY` of exactly the rows the loader writes;
//! 3. [`consume`]: rdkafka reading the topic into nothing;
//! 4. [`loader_run`]: the real `loader run` binary from offset 0 to zero lag, offsets committed,
//!    at default settings and at the best settings found; the ceiling and the defaults are
//!    [`reps`]: `--reps` interleaved pairs, reported as medians with their range ([`stats`]);
//! 5. [`naive`]: one INSERT per user, an offset commit per record;
//! 6. [`freshness`]: fetch-to-row latency with the real extractor polling the stub steadily;
//! 7. [`scale`]: 1, 2, 4… loader processes in one group against as many parallel COPY sessions;
//!    then [`volume`]: ten times the topic, the rate, cost and memory per tenth of it;
//! 8. [`rebalance`]: how long the group's throughput stalls when a member joins and one leaves;
//! 9. [`lake`]: freshness to the Delta tables, commits and objects per million users,
//!    compaction against a copy, peak RSS with a 1 GiB roll of 5,000-user responses;
//! 10. [`extractor_idle`]: the extractor's resident set between fetches and CPU per fetch.
//! 11. [`peer`]: Kafka Connect with Debezium's JDBC sink on the same users (`--skip-peer`).
//!
//! [`report`] writes the figures to `BENCHMARKS.md`, newest run first.

pub mod baseline;
pub mod ceiling;
pub mod consume;
pub mod db;
pub mod extractor_idle;
pub mod freshness;
pub mod group;
pub mod kafka;
pub mod lake;
pub mod loader_run;
pub mod naive;
pub mod peer;
pub mod preload;
pub mod procfs;
pub mod rebalance;
pub mod report;
pub mod reps;
pub mod scale;
pub mod stats;
pub mod volume;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// What to measure, and how big.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    version,
    about = "Loader vs. PostgreSQL COPY, raw consume and a naive loader; scale-out, rebalance stall, extractor idle cost"
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
    /// Pairs of COPY ceiling and loader at defaults, run interleaved: their medians and ranges
    /// are the figures the targets rest on (one run on a shared machine can be off by a fifth).
    #[arg(long, default_value_t = 3, value_parser = positive)]
    pub reps: usize,
    /// Records (of `--users` users) in the volume step's own topic, loaded by one loader at
    /// defaults and watched per tenth; 0 skips the step.
    #[arg(long, default_value_t = 20_000)]
    pub volume_records: usize,
    /// Records the naive loader gets through (it is slow; its rate is what counts).
    #[arg(long, default_value_t = 100)]
    pub naive_records: usize,
    /// `NAME=VALUE` settings of the "best" loader run, comma-separated (by default the trial
    /// that is not the default: batches committed asynchronously).
    #[arg(long, default_value = "DATABASE_SYNCHRONOUS_COMMIT=off")]
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
    /// Loader processes per scale-out configuration, comma-separated: each runs as one consumer
    /// group on the preloaded topic against as many parallel COPY sessions (its ceiling).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4", value_parser = positive)]
    pub scale_loaders: Vec<usize>,
    /// Records (of `--users` users) in the rebalance step's own topic: long enough for a steady
    /// rate before a 2nd loader joins (at 1/3) and after the 1st leaves (at 2/3). 8,000: at
    /// ~30,000 users/s, 4,000 left too little before the join to measure a steady rate.
    #[arg(long, default_value_t = 8000, value_parser = positive)]
    pub rebalance_records: usize,
    /// Time between the rebalance step's samples of the group's committed offsets.
    #[arg(long, default_value = "250ms", value_parser = humantime_duration)]
    pub rebalance_sample: Duration,
    /// The window the rebalance step judges the rate over (the loader commits in batches, so a
    /// single sample is too coarse); stalls are known to about this.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    pub rebalance_window: Duration,
    /// How long the idle extractor runs.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    pub idle_for: Duration,
    /// Time between the idle extractor's fetches.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    pub idle_interval: Duration,
    /// Users per fetch of the idle extractor.
    #[arg(long, default_value_t = 500)]
    pub idle_users: usize,
    /// How long the extractor runs in the lake step (at the freshness step's rate).
    #[arg(long, default_value = "90s", value_parser = humantime_duration)]
    pub lake_for: Duration,
    /// The loader's `PARQUET_ROLL_INTERVAL` in the lake step.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    pub lake_roll_interval: Duration,
    /// Responses in the lake step's big roll (195 × 5,000 users is just over 1 GiB of JSON).
    #[arg(long, default_value_t = 195, value_parser = positive)]
    pub lake_big_responses: usize,
    /// Users per response in the big roll.
    #[arg(long, default_value_t = 5000, value_parser = positive)]
    pub lake_big_users: usize,
    /// Another build of `loader` (a directory holding it: e.g. `main` before a change) run at
    /// its defaults after each COPY/loader pair, so the change is measured against it in one run.
    #[arg(long)]
    pub baseline_bin_dir: Option<PathBuf>,
    /// What `--baseline-bin-dir` is, for the report.
    #[arg(long, default_value = "the baseline loader")]
    pub baseline_label: String,
    /// Run only the lake step, and add only its figures to the results file.
    #[arg(long)]
    pub lake_only: bool,
    /// Run only the rebalance step and print it (the results file is left alone); the loaders'
    /// logs are kept in `--rebalance-logs` when given, to read what each did around a change.
    #[arg(long)]
    pub rebalance_only: bool,
    /// Run only the COPY/loader repetitions (and `--baseline-bin-dir` after each pair) and print
    /// their figures (the results file is left alone): an A/B of two builds or settings.
    #[arg(long)]
    pub reps_only: bool,
    /// Run only the 10× volume step (`--volume-records`) and print it (the results file is left
    /// alone).
    #[arg(long)]
    pub volume_only: bool,
    /// Where the rebalance step keeps its loaders' logs (by default they go with its data).
    #[arg(long)]
    pub rebalance_logs: Option<PathBuf>,
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
    /// The peer step: Kafka Connect with Debezium's JDBC sink on the same users.
    #[command(flatten)]
    pub peer: peer::PeerArgs,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number above 0")),
    }
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

    /// PostgreSQL's CPU time per 1,000 users moved, in seconds, where measured: the cost per
    /// user the targets are set on, which does not move with how busy the machine was.
    pub fn pg_cpu_per_1000(&self) -> Option<f64> {
        self.pg_cores
            .map(|c| per_1000(c * self.elapsed.as_secs_f64(), self.users))
    }
}

/// `seconds` of CPU per 1,000 of `users`.
pub fn per_1000(seconds: f64, users: u64) -> f64 {
    seconds / users.max(1) as f64 * 1000.0
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
    if config.lake_only {
        let lake = lake::measure(&config, &bin_dir, &run_id).await?;
        let text = report::render_lake(started, &config, &lake);
        println!("{text}");
        report::prepend(&config.out, &text)?;
        eprintln!("[bench] written to {}", config.out.display());
        return Ok(());
    }
    if config.peer.peer_only {
        return peer::only(&config, &run_id, started).await;
    }
    if config.volume_only {
        let volume = volume::measure(&config, &bin_dir, &run_id).await?;
        println!("{}", volume.render());
        return Ok(());
    }
    if config.rebalance_only {
        let rebalance = rebalance::measure(&config, &bin_dir, &run_id).await?;
        println!("{}", rebalance.render());
        return Ok(());
    }
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

    let reps = reps::measure(&config, &bin_dir, &topic, &produced).await?;
    // The median repetitions stand for the ceiling and the defaults where one run is compared.
    let ceiling = reps.median_ceiling().clone();
    let default_run = reps.median_loader().clone();
    eprintln!(
        "[bench] COPY ceiling: {} users/s; loader (defaults): {} users/s; loader ÷ COPY per pair: {}",
        stats::show(
            &reps
                .ceilings
                .iter()
                .map(Rate::users_per_sec)
                .collect::<Vec<_>>(),
            0
        ),
        stats::show(
            &reps
                .loaders
                .iter()
                .map(|l| l.rate.users_per_sec())
                .collect::<Vec<_>>(),
            0
        ),
        stats::show(&reps.ratios(), 2)
    );

    if config.reps_only {
        print!(
            "{}{}",
            reps.render(),
            baseline::render(&reps, &config.baseline_label)
        );
        kafka::delete_topic(&config.brokers, &topic).await;
        return Ok(());
    }
    let consume = consume::measure(&config.brokers, &topic, &produced).await?;
    eprintln!("[bench] consume: {:.0} users/s", consume.users_per_sec());
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

    let scale = scale::measure(&config, &bin_dir, &topic, &produced).await?;
    let peer_section = peer::step(&config, &run_id, &produced).await?;
    kafka::delete_topic(&config.brokers, &topic).await;
    // The bodies are not needed any more: free them before the rebalance step builds its own.
    let (produced_records, produced_users, produced_bytes) =
        (produced.records.len(), produced.users, produced.bytes);
    drop(produced);

    let volume = if config.volume_records > 0 {
        let v = volume::measure(&config, &bin_dir, &run_id).await?;
        eprintln!(
            "[bench] volume: {:.0} users/s over {:.0} s, peak RSS {:.0} MB loading",
            v.rate.users_per_sec(),
            v.rate.elapsed.as_secs_f64(),
            v.loading_rss as f64 / 1024.0 / 1024.0
        );
        Some(v)
    } else {
        None
    };

    let rebalance = rebalance::measure(&config, &bin_dir, &run_id).await?;
    eprintln!(
        "[bench] rebalance: steady {:?} records/s, join {:?}, leave {:?}",
        rebalance.steady,
        rebalance.join.as_ref().map(|c| &c.dip),
        rebalance.leave.as_ref().map(|c| &c.dip)
    );

    let lake = lake::measure(&config, &bin_dir, &run_id).await?;
    eprintln!("[bench] lake: {}", lake.render().trim());

    let idle = extractor_idle::measure(&config, &bin_dir, &run_id).await?;
    eprintln!(
        "[bench] extractor idle: {} fetches, {:.1} MB between fetches, {:?} CPU per fetch",
        idle.fetches,
        idle.idle_rss as f64 / 1024.0 / 1024.0,
        idle.cpu_per_fetch
    );

    let results = report::Results {
        started,
        config: config.clone(),
        produced_records,
        produced_users,
        produced_bytes,
        ceiling,
        reps,
        consume,
        default_run,
        best_run,
        bucket_run,
        naive,
        fresh,
        scale,
        volume,
        rebalance,
        idle,
        lake,
    };
    let text = report::render(&results);
    let text = text + &peer_section;
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
