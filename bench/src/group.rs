//! Real `loader run` processes in one consumer group, as users scale the loader out: each its own
//! process with its own status port (`METRICS_ADDR`) and data directory, all on one database and
//! group. The scale-out and rebalance steps start, watch and stop them through [`Member`].

use crate::Config;
use crate::loader_run::{free_addr, loader_env, metric, spawn, tail};
use crate::procfs;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One loader process of a group, and what has been read from it so far.
pub struct Member {
    /// Its number in the group, from 1 (for logs and the report).
    pub index: usize,
    child: Child,
    /// Its status server (`/metrics`, `/ready`).
    pub status: SocketAddr,
    log: PathBuf,
    /// When it was started.
    pub started: Instant,
    /// `etl_loader_records_loaded_total`, the highest value seen (kept after the process exits).
    pub loaded: f64,
    /// `etl_loader_records_consumed_total`, the highest value seen.
    pub consumed: f64,
    /// Peak resident set (VmHWM) seen, bytes.
    pub peak_rss: u64,
    /// User + system CPU time, as last read while it ran.
    pub cpu: Duration,
    /// When SIGTERM was sent, if it was.
    pub terminated: Option<Instant>,
    /// SIGTERM to exit, once it has exited after one.
    pub close: Option<Duration>,
}

impl Member {
    /// Starts member `index` of `group` on `topic`, writing into `db_url`, with its data
    /// directory and log under `dir`, at default settings.
    pub fn spawn(
        config: &Config,
        bin_dir: &Path,
        topic: &str,
        group: &str,
        db_url: &str,
        dir: &Path,
        index: usize,
    ) -> anyhow::Result<Self> {
        let status = free_addr()?;
        let data_dir = dir.join(format!("data-{index}"));
        let log = dir.join(format!("loader-{index}.log"));
        let env = loader_env(
            &config.brokers,
            db_url,
            topic,
            group,
            &data_dir,
            status,
            &[],
        );
        let child = spawn(&bin_dir.join("loader"), &["run"], &env, &log)?;
        Ok(Self {
            index,
            child,
            status,
            log,
            started: Instant::now(),
            loaded: 0.0,
            consumed: 0.0,
            peak_rss: 0,
            cpu: Duration::ZERO,
            terminated: None,
            close: None,
        })
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.close.is_none()
    }

    /// Reads, while it runs, its memory and CPU from `/proc`. An exit that was not asked for (or
    /// an unclean one after SIGTERM) is an error carrying the log's tail.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        if !self.running() {
            return Ok(());
        }
        if let Some(code) = self.child.try_wait().context("waiting on a loader")? {
            let Some(term) = self.terminated else {
                anyhow::bail!(
                    "loader {} exited early ({code}):\n{}",
                    self.index,
                    tail(&self.log)
                );
            };
            anyhow::ensure!(
                code.success(),
                "loader {} exited with {code} after SIGTERM:\n{}",
                self.index,
                tail(&self.log)
            );
            self.close = Some(term.elapsed());
            return Ok(());
        }
        if let Ok(rss) = procfs::peak_rss(self.child.id()) {
            self.peak_rss = self.peak_rss.max(rss);
        }
        if self.terminated.is_none()
            && let Ok(cpu) = procfs::cpu(self.child.id())
        {
            self.cpu = cpu;
        }
        Ok(())
    }

    /// Reads its record counters from `/metrics` (an HTTP request: not every few milliseconds).
    pub async fn read_counters(&mut self) {
        if !self.running() {
            return;
        }
        // A process shutting down stops answering: its counters keep their last values.
        self.loaded = self
            .loaded
            .max(metric(self.status, "etl_loader_records_loaded_total").await);
        self.consumed = self
            .consumed
            .max(metric(self.status, "etl_loader_records_consumed_total").await);
    }

    /// Sends SIGTERM (once): the loader commits, leaves the group and closes its Parquet rolls.
    pub fn terminate(&mut self) {
        if self.terminated.is_some() || !self.running() {
            return;
        }
        if let Ok(cpu) = procfs::cpu(self.child.id()) {
            self.cpu = cpu;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.terminated = Some(Instant::now());
    }

    /// Kills it outright (cleanup after a failure).
    pub fn kill(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.close = Some(Duration::ZERO);
        }
    }
}

/// Waits (at most `limit`) until the running members own all `partitions` between them, as a
/// group does once a rebalance is over: each member then closes the rolls of what it owns when
/// stopped. Stopped mid-rebalance, a partition revoked in a cooperative rebalance's first round
/// belongs to nobody, and its rows wait in PostgreSQL for the next loader to start (the lake
/// check would count them missing). Not reaching it is not an error: the check says what waits.
pub async fn settle(members: &[Member], partitions: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut owned = 0.0;
        for m in members.iter().filter(|m| m.running()) {
            owned += metric(m.status, "etl_loader_assigned_partitions").await;
        }
        if owned >= f64::from(partitions) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to every member still running and waits (watching memory) until all have
/// exited cleanly, at most `limit`.
pub async fn stop_all(members: &mut [Member], limit: Duration) -> anyhow::Result<()> {
    for m in members.iter_mut() {
        m.terminate();
    }
    let deadline = Instant::now() + limit;
    while members.iter().any(Member::running) {
        if Instant::now() > deadline {
            let stuck: Vec<String> = members
                .iter()
                .filter(|m| m.running())
                .map(|m| format!("loader {}:\n{}", m.index, tail(&m.log)))
                .collect();
            for m in members.iter_mut() {
                m.kill();
            }
            anyhow::bail!(
                "the loaders did not close their rolls within {limit:?}:\n{}",
                stuck.join("\n")
            );
        }
        for m in members.iter_mut() {
            m.poll()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Kills every member still running: for the error path, where nothing more is measured.
pub fn kill_all(members: &mut [Member]) {
    for m in members.iter_mut() {
        m.kill();
    }
}
