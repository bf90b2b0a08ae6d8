//! The lake (issue 19), with the release `loader` and `extractor`:
//!
//! - **freshness and commits**: the extractor polls the stub steadily while the loader rolls
//!   into its Delta tables every `--lake-roll-interval`; each record's latency to the tables is
//!   when the later of its two files was committed (the ledger's `published_at`, set right
//!   after the commit) minus its fetch time, against its latency to PostgreSQL (`created_at`)
//!   in the same run. Commits are the tables' log entries made, and objects written are data
//!   files, log entries and checkpoints (each one PUT on a bucket; a file over 10 MiB is a
//!   multipart upload), per million users;
//! - **compaction**: `loader compact` over that lake's small files, timed, against copying the
//!   same files (read, written, fsynced) in the same run;
//! - **a big roll**: `--lake-big-responses` responses of `--lake-big-users` users into one roll
//!   of up to 1 GiB, closed by SIGTERM: the loader's peak RSS while loading them and with the
//!   roll, against the roll's input.

use crate::Config;
use crate::db::FreshDb;
use crate::freshness::percentile;
use crate::loader_run::{extractor_env, free_addr, loader_env, spawn, stop, tail};
use crate::procfs;
use anyhow::Context;
use randomuser_stub::{FaultPlan, Stub};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the lake step measured.
#[derive(Debug, Clone)]
pub struct Lake {
    /// The roll interval of the freshness run.
    pub roll_interval: Duration,
    /// Users loaded in the freshness run.
    pub users: u64,
    /// Fetch to both tables, p50 / p99 / max.
    pub to_tables: [Duration; 3],
    /// Fetch to PostgreSQL, p50 / p99 / max (same records).
    pub to_postgres: [Duration; 3],
    /// Commits made to the two tables.
    pub commits: u64,
    /// Objects written: data files, log entries, checkpoints.
    pub objects: u64,
    /// The compaction after the freshness run.
    pub compaction: Compaction,
    /// The big roll.
    pub big: BigRoll,
}

/// `loader compact` against a plain copy of the same files.
#[derive(Debug, Clone)]
pub struct Compaction {
    /// Data files before.
    pub files_before: usize,
    /// Data files in the tables after.
    pub files_after: usize,
    /// Bytes of the files before.
    pub bytes: u64,
    /// The compaction's wall time (the whole process).
    pub elapsed: Duration,
    /// Copying the same files.
    pub copy: Duration,
}

/// One roll of big responses.
#[derive(Debug, Clone)]
pub struct BigRoll {
    /// Responses in it.
    pub responses: usize,
    /// Users per response.
    pub users: usize,
    /// JSON bytes in it.
    pub input: u64,
    /// Peak RSS once every response was in PostgreSQL.
    pub loading_rss: u64,
    /// Peak RSS over the whole life, the roll included.
    pub peak_rss: u64,
    /// SIGTERM to exit: the roll built, uploaded and committed.
    pub close: Duration,
}

/// Runs the three measurements.
pub async fn measure(config: &Config, bin_dir: &Path, run_id: &str) -> anyhow::Result<Lake> {
    let (roll_interval, users, to_tables, to_postgres, commits, objects, compaction) =
        freshness_and_compaction(config, bin_dir, run_id).await?;
    let big = big_roll(config, bin_dir, run_id).await?;
    Ok(Lake {
        roll_interval,
        users,
        to_tables,
        to_postgres,
        commits,
        objects,
        compaction,
        big,
    })
}

type FreshnessOutcome = (
    Duration,
    u64,
    [Duration; 3],
    [Duration; 3],
    u64,
    u64,
    Compaction,
);

async fn freshness_and_compaction(
    config: &Config,
    bin_dir: &Path,
    run_id: &str,
) -> anyhow::Result<FreshnessOutcome> {
    let topic = format!("{run_id}.lake");
    crate::kafka::create_topic(&config.brokers, &topic, config.partitions).await?;
    let db = FreshDb::create(&config.database_url, "bench_lake", false).await?;
    let dir = tempfile::tempdir().context("creating a data directory")?;
    let stub = Stub::start("127.0.0.1:0".parse()?, FaultPlan::default()).await?;
    let data = dir.path().join("data");
    let status = free_addr()?;
    let interval = format!("{}ms", config.lake_roll_interval.as_millis());
    let env = loader_env(
        &config.brokers,
        &db.url,
        &topic,
        &format!("bench-lake-{}", uuid::Uuid::new_v4().simple()),
        &data,
        status,
        &[("PARQUET_ROLL_INTERVAL".to_string(), interval)],
    );
    let log = dir.path().join("loader.log");
    let outcome = async {
        let mut loader = spawn(&bin_dir.join("loader"), &["run"], &env, &log)?;
        let extractor_env = extractor_env(
            &config.brokers,
            &topic,
            &stub,
            config.freshness_interval,
            config.freshness_users,
        )?;
        let extractor_log = dir.path().join("extractor.log");
        let mut extractor = spawn(&bin_dir.join("extractor"), &[], &extractor_env, &extractor_log)?;
        tokio::time::sleep(config.lake_for).await;
        stop(&mut extractor);
        let pool = db.pool().await?;
        // Everything fetched is in the tables: nothing waits, nothing is unpublished.
        let deadline = Instant::now() + config.lake_roll_interval * 3 + Duration::from_secs(120);
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM raw_data WHERE parquet_pending) + (SELECT count(*) FROM parquet_files WHERE state <> 'published')",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(1);
            if left == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the lake did not catch up:\n{}",
                tail(&log)
            );
            if let Some(code) = loader.try_wait()? {
                anyhow::bail!("the loader exited early ({code}):\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop(&mut loader);
        let rows: Vec<(f64, f64)> = sqlx::query_as(
            "SELECT extract(epoch FROM greatest(rf.published_at, pf.published_at) - r.fetched_at)::float8,
                    extract(epoch FROM r.created_at - r.fetched_at)::float8
             FROM raw_data r JOIN parquet_files rf ON rf.path = r.raw_file JOIN parquet_files pf ON pf.path = r.processed_file",
        )
        .fetch_all(&pool)
        .await
        .context("reading the latencies")?;
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_data")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        anyhow::ensure!(!rows.is_empty(), "no record arrived:\n{}", tail(&extractor_log));
        let spread = |mut v: Vec<Duration>| {
            v.sort_unstable();
            [percentile(&v, 50.0), percentile(&v, 99.0), *v.last().unwrap_or(&Duration::ZERO)]
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let to_tables = spread(rows.iter().map(|r| secs(r.0)).collect());
        let to_postgres = spread(rows.iter().map(|r| secs(r.1)).collect());
        let (commits, checkpoints) = log_entries(&data);
        let files = data_files(&data);
        let objects = commits + checkpoints + files.len() as u64;

        // Compaction, against copying the same files.
        let bytes: u64 = files.iter().map(|(_, size)| size).sum();
        let copy_dir = dir.path().join("copy");
        std::fs::create_dir_all(&copy_dir)?;
        let copying = Instant::now();
        for (i, (path, _)) in files.iter().enumerate() {
            let to = copy_dir.join(format!("{i}.parquet"));
            std::fs::copy(path, &to)?;
            std::fs::File::open(&to)?.sync_all()?;
        }
        let copy = copying.elapsed();
        let compact_log = dir.path().join("compact.log");
        let compacting = Instant::now();
        let mut compact = spawn(&bin_dir.join("loader"), &["compact"], &env, &compact_log)?;
        let status = compact.wait()?;
        let elapsed = compacting.elapsed();
        anyhow::ensure!(status.success(), "loader compact failed:\n{}", tail(&compact_log));
        let after = live_files(&data).await.context("reading the tables after compaction")?;
        Ok((
            config.lake_roll_interval,
            users as u64,
            to_tables,
            to_postgres,
            commits,
            objects,
            Compaction {
                files_before: files.len(),
                files_after: after,
                bytes,
                elapsed,
                copy,
            },
        ))
    }
    .await;
    stub.stop().await;
    db.drop().await;
    crate::kafka::delete_topic(&config.brokers, &topic).await;
    outcome
}

/// The tables' commit files (version 0, the creation, not counted) and checkpoint files.
fn log_entries(data: &Path) -> (u64, u64) {
    let (mut commits, mut checkpoints) = (0, 0);
    for table in ["raw", "processed"] {
        let Ok(entries) = std::fs::read_dir(data.join(table).join("_delta_log")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") && name != format!("{:020}.json", 0) {
                commits += 1;
            } else if name.contains(".checkpoint.") {
                checkpoints += 1;
            }
        }
    }
    (commits, checkpoints)
}

/// Every data file under the tables (outside `_` directories), with its size.
fn data_files(data: &Path) -> Vec<(PathBuf, u64)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with('_') {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push((p.clone(), e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    let mut out = Vec::new();
    for table in ["raw", "processed"] {
        walk(&data.join(table), &mut out);
    }
    out
}

/// Data files live in the two tables' latest versions (a compaction's old files stay on disk
/// until a vacuum), read as the loader reads them.
async fn live_files(data: &Path) -> anyhow::Result<usize> {
    use loader::sink::parquet::Dataset;
    let tables =
        loader::sink::table::Tables::new(&loader::sink::store::Store::Local(data.to_path_buf()))?;
    let mut n = 0;
    for dataset in [Dataset::Raw, Dataset::Processed] {
        n += tables.state(dataset).await?.live().count();
    }
    Ok(n)
}

async fn big_roll(config: &Config, bin_dir: &Path, run_id: &str) -> anyhow::Result<BigRoll> {
    let topic = format!("{run_id}.big");
    crate::kafka::create_topic(&config.brokers, &topic, 1).await?;
    let payloads = crate::preload::build(config.lake_big_responses, config.lake_big_users, run_id)?;
    let input: u64 = payloads.iter().map(|p| p.body.len() as u64).sum();
    let responses = payloads.len();
    crate::preload::produce(&config.brokers, &topic, payloads).await?;
    let db = FreshDb::create(&config.database_url, "bench_big", true).await?;
    let dir = tempfile::tempdir().context("creating a data directory")?;
    let env = loader_env(
        &config.brokers,
        &db.url,
        &topic,
        &format!("bench-big-{}", uuid::Uuid::new_v4().simple()),
        &dir.path().join("data"),
        free_addr()?,
        &[
            (
                "PARQUET_ROLL_MAX_BYTES".to_string(),
                (1u64 << 30).to_string(),
            ),
            ("PARQUET_ROLL_INTERVAL".to_string(), "1h".to_string()),
            ("LOADER_SHUTDOWN_GRACE".to_string(), "30m".to_string()),
        ],
    );
    let log = dir.path().join("loader.log");
    let outcome = async {
        let mut loader = spawn(&bin_dir.join("loader"), &["run"], &env, &log)?;
        let pool = db.pool().await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_data")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            if n as usize >= responses {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "not loaded in 30 min:\n{}",
                tail(&log)
            );
            if let Some(code) = loader.try_wait()? {
                anyhow::bail!("the loader exited early ({code}):\n{}", tail(&log));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let pid = loader.id();
        let loading_rss = procfs::peak_rss(pid)?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let closing = Instant::now();
        let mut peak_rss = loading_rss;
        let status = loop {
            if let Ok(p) = procfs::peak_rss(pid) {
                peak_rss = peak_rss.max(p);
            }
            if let Some(status) = loader.try_wait()? {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let close = closing.elapsed();
        anyhow::ensure!(status.success(), "the loader failed:\n{}", tail(&log));
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM parquet_files WHERE state = 'published'")
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        anyhow::ensure!(
            published == 2,
            "the roll was not one raw and one processed file ({published} published):\n{}",
            tail(&log)
        );
        Ok(BigRoll {
            responses,
            users: config.lake_big_users,
            input,
            loading_rss,
            peak_rss,
            close,
        })
    }
    .await;
    db.drop().await;
    crate::kafka::delete_topic(&config.brokers, &topic).await;
    outcome
}

impl Lake {
    /// The figures, as lines of the report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        let per_million = |n: u64| n as f64 * 1e6 / self.users.max(1) as f64;
        let _ = writeln!(
            s,
            "- lake freshness (extractor as above, `PARQUET_ROLL_INTERVAL={} s`): fetch → both tables p50 {}, p99 {}, max {}; fetch → PostgreSQL p50 {}, p99 {}, max {} (same {} users)",
            self.roll_interval.as_secs(),
            ms(self.to_tables[0]),
            ms(self.to_tables[1]),
            ms(self.to_tables[2]),
            ms(self.to_postgres[0]),
            ms(self.to_postgres[1]),
            ms(self.to_postgres[2]),
            self.users
        );
        let _ = writeln!(
            s,
            "- lake writes: {} commits ({:.0} per million users), {} objects written — data files, log entries, checkpoints ({:.0} per million users)",
            self.commits,
            per_million(self.commits),
            self.objects,
            per_million(self.objects)
        );
        let c = &self.compaction;
        let _ = writeln!(
            s,
            "- compaction (`loader compact`, whole process): {} files, {:.1} MB → {} files in {} ms ({:.1} MB/s); copying the same files {} ms ({:.1} MB/s): ratio {:.2}",
            c.files_before,
            c.bytes as f64 / 1e6,
            c.files_after,
            c.elapsed.as_millis(),
            c.bytes as f64 / 1e6 / c.elapsed.as_secs_f64().max(1e-9),
            c.copy.as_millis(),
            c.bytes as f64 / 1e6 / c.copy.as_secs_f64().max(1e-9),
            c.elapsed.as_secs_f64() / c.copy.as_secs_f64().max(1e-9)
        );
        let b = &self.big;
        let mib = |n: u64| n as f64 / (1 << 20) as f64;
        let _ = writeln!(
            s,
            "- big roll ({} responses × {} users, {:.0} MiB of JSON in one roll, `PARQUET_ROLL_MAX_BYTES=1 GiB`): peak RSS {:.0} MiB loading, {:.0} MiB with the roll (the roll adds {:.0} MiB, {:.2} × its input); closed in {:.1} s",
            b.responses,
            b.users,
            mib(b.input),
            mib(b.loading_rss),
            mib(b.peak_rss),
            mib(b.peak_rss.saturating_sub(b.loading_rss)),
            b.peak_rss.saturating_sub(b.loading_rss) as f64 / b.input.max(1) as f64,
            b.close.as_secs_f64()
        );
        s
    }
}
