//! Extractor idle cost: the real `extractor` binary polls the local stub at `--idle-interval`
//! with `--idle-users` users per fetch for `--idle-for`. What a mostly idle extractor costs: its
//! resident set halfway between two fetches (VmRSS), its peak (VmHWM), and its CPU time (user +
//! system from `/proc`) per fetch once running. Fetches are counted by the stub in this process,
//! so the measurement adds no requests to the extractor.

use crate::loader_run::{extractor_env, spawn, stop, tail};
use crate::{Config, procfs};
use anyhow::Context;
use randomuser_stub::{FaultPlan, Stub};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the idle extractor cost.
#[derive(Debug, Clone)]
pub struct ExtractorIdle {
    /// Time between fetches.
    pub interval: Duration,
    /// Users per fetch.
    pub users: usize,
    /// Fetches the stub answered over the run.
    pub fetches: u64,
    /// Median VmRSS read halfway between two fetches, bytes (0 if never read).
    pub idle_rss: u64,
    /// VmRSS readings between fetches.
    pub idle_samples: usize,
    /// VmHWM at the end of the run, bytes.
    pub peak_rss: u64,
    /// CPU time from process start to the first fetch answered (start-up).
    pub startup_cpu: Duration,
    /// CPU time per fetch between the first and the last fetch (the fetch and the wait after
    /// it); `None` with fewer than two fetches.
    pub cpu_per_fetch: Option<Duration>,
    /// That CPU time over that wall time, in cores.
    pub cores: Option<f64>,
}

/// Runs the extractor against a fresh stub and topic and measures it.
pub async fn measure(
    config: &Config,
    bin_dir: &Path,
    run_id: &str,
) -> anyhow::Result<ExtractorIdle> {
    let topic = format!("{run_id}.idle");
    crate::kafka::create_topic(&config.brokers, &topic, config.partitions).await?;
    let dir = tempfile::tempdir().context("creating a log directory")?;
    let stub = Stub::start("127.0.0.1:0".parse()?, FaultPlan::default()).await?;
    let result = run(config, bin_dir, &topic, dir.path(), &stub).await;
    stub.stop().await;
    crate::kafka::delete_topic(&config.brokers, &topic).await;
    result
}

async fn run(
    config: &Config,
    bin_dir: &Path,
    topic: &str,
    dir: &Path,
    stub: &Stub,
) -> anyhow::Result<ExtractorIdle> {
    let env = extractor_env(
        &config.brokers,
        topic,
        stub,
        config.idle_interval,
        config.idle_users,
    )?;
    let log = dir.join("extractor.log");
    let mut child = spawn(&bin_dir.join("extractor"), &[], &env, &log)?;
    let pid = child.id();
    let outcome = async {
        let started = Instant::now();
        let mut seen = stub.stats().requests;
        // (when, fetches answered, CPU time then) at each new fetch.
        let mut marks: Vec<(Instant, u64, Duration)> = Vec::new();
        let mut idle = Vec::new();
        let mut read_rss_at: Option<Instant> = None;
        while started.elapsed() < config.idle_for {
            if let Some(code) = child.try_wait().context("waiting on the extractor")? {
                anyhow::bail!("the extractor exited early ({code}):\n{}", tail(&log));
            }
            let requests = stub.stats().requests;
            if requests > seen {
                seen = requests;
                marks.push((Instant::now(), requests, procfs::cpu(pid)?));
                read_rss_at = Some(Instant::now() + config.idle_interval / 2);
            }
            if read_rss_at.is_some_and(|at| Instant::now() >= at) {
                idle.push(procfs::rss(pid)?);
                read_rss_at = None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peak_rss = procfs::peak_rss(pid)?;
        anyhow::ensure!(
            !marks.is_empty(),
            "the extractor fetched nothing in {:?}:\n{}",
            config.idle_for,
            tail(&log)
        );
        idle.sort_unstable();
        let (per_fetch, cores) = match (marks.first(), marks.last()) {
            (Some(a), Some(b)) if b.1 > a.1 => {
                let cpu = b.2.saturating_sub(a.2);
                (
                    Some(cpu / (b.1 - a.1) as u32),
                    Some(procfs::cores(cpu, b.0 - a.0)),
                )
            }
            _ => (None, None),
        };
        Ok(ExtractorIdle {
            interval: config.idle_interval,
            users: config.idle_users,
            fetches: seen,
            idle_rss: idle.get(idle.len() / 2).copied().unwrap_or(0),
            idle_samples: idle.len(),
            peak_rss,
            startup_cpu: marks[0].2,
            cpu_per_fetch: per_fetch,
            cores,
        })
    }
    .await;
    stop(&mut child);
    outcome
}

impl ExtractorIdle {
    /// The step's line, as Markdown.
    pub fn render(&self) -> String {
        let mb = |b: u64| format!("{:.1} MB", b as f64 / 1024.0 / 1024.0);
        let per_fetch = match (self.cpu_per_fetch, self.cores) {
            (Some(cpu), Some(cores)) => format!(
                "{:.1} ms CPU per fetch ({:.4} cores)",
                cpu.as_secs_f64() * 1e3,
                cores
            ),
            _ => "CPU per fetch not measured (fewer than two fetches)".to_string(),
        };
        format!(
            "- extractor idle (stub every {} ms, {} users per fetch, {} fetches): idle RSS {} (median of {} readings halfway between fetches), peak RSS {}, {per_fetch}, {:.0} ms CPU to start and make its first fetch\n",
            self.interval.as_millis(),
            self.users,
            self.fetches,
            mb(self.idle_rss),
            self.idle_samples,
            mb(self.peak_rss),
            self.startup_cpu.as_secs_f64() * 1e3
        )
    }
}
