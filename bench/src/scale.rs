//! Scale-out as users run it: 1, 2, 4… real `loader run` processes in one consumer group on the
//! preloaded topic, each configuration against the ceiling of as many parallel `COPY` sessions
//! (N connections each loading 1/N of the same rows into a fresh database). Every configuration
//! gets a fresh database, data directory and group; it is done when the group has committed the
//! end of every partition, as in [`crate::loader_run`].

use crate::group::{self, Member};
use crate::loader_run::check_loaded;
use crate::preload::Topic;
use crate::{Config, Rate, ceiling, db::FreshDb, procfs};
use anyhow::Context;
use etl_common::kafka::KafkaArgs;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// One configuration: N loaders against N COPY sessions.
#[derive(Debug, Clone)]
pub struct ScaleRun {
    /// Loader processes in the group (and COPY sessions in the ceiling).
    pub loaders: usize,
    /// N parallel COPY sessions of the same rows.
    pub ceiling: Rate,
    /// The group, from the first record consumed by any member to the last offset committed.
    pub rate: Rate,
    /// From the first process start to the last offset committed.
    pub wall: Duration,
    /// Each member's peak resident set (VmHWM), bytes, including the closing of its rolls.
    pub peak_rss: Vec<u64>,
    /// User + system CPU time of all members together, up to the last offset committed.
    pub cpu: Duration,
    /// SIGTERM to the last member's exit (the Parquet rolls written and published).
    pub close: Duration,
    /// Parquet files published by the whole group.
    pub parquet_files: i64,
}

impl ScaleRun {
    /// The members' CPU over the wall time, in cores (all members together).
    pub fn loader_cores(&self) -> f64 {
        procfs::cores(self.cpu, self.wall)
    }

    /// Users/s of the group ÷ users/s of its N-session ceiling.
    pub fn ratio(&self) -> f64 {
        self.rate.users_per_sec() / self.ceiling.users_per_sec().max(1e-9)
    }
}

/// Runs every `--scale-loaders` configuration over the preloaded topic.
pub async fn measure(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
) -> anyhow::Result<Vec<ScaleRun>> {
    let mut runs = Vec::new();
    for &n in &config.scale_loaders {
        let ceiling = ceiling::measure(&config.database_url, topic_name, topic, n).await?;
        let db = FreshDb::create(&config.database_url, "bench_scale", false).await?;
        let dir = tempfile::tempdir().context("creating a data directory")?;
        let result = run_group(config, bin_dir, topic_name, topic, n, &db, dir.path()).await;
        db.drop().await;
        let (rate, wall, peak_rss, cpu, close, parquet_files) = result?;
        let run = ScaleRun {
            loaders: n,
            ceiling,
            rate,
            wall,
            peak_rss,
            cpu,
            close,
            parquet_files,
        };
        eprintln!(
            "[bench] scale-out, {n} loader(s): {:.0} users/s, {:.2} of {n} COPY session(s)",
            run.rate.users_per_sec(),
            run.ratio()
        );
        runs.push(run);
    }
    Ok(runs)
}

type GroupOutcome = (Rate, Duration, Vec<u64>, Duration, Duration, i64);

async fn run_group(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
    n: usize,
    db: &FreshDb,
    dir: &Path,
) -> anyhow::Result<GroupOutcome> {
    let group_id = format!("bench-scale-{n}-{}", uuid::Uuid::new_v4().simple());
    let offsets = loader::replay::GroupOffsets::new(
        &KafkaArgs::for_brokers(&config.brokers),
        &group_id,
        topic_name,
    )?;
    let started = Instant::now();
    let mut members = Vec::with_capacity(n);
    for i in 1..=n {
        match Member::spawn(config, bin_dir, topic_name, &group_id, &db.url, dir, i) {
            Ok(m) => members.push(m),
            Err(e) => {
                group::kill_all(&mut members);
                return Err(e);
            }
        }
    }
    let outcome = async {
        let mut first: Option<(Instant, procfs::PgSnapshot)> = None;
        loop {
            for m in members.iter_mut() {
                m.poll()?;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(1800),
                "{n} loaders did not catch up within 30 min"
            );
            if first.is_none() {
                futures::future::join_all(members.iter_mut().map(Member::read_counters)).await;
                if members.iter().any(|m| m.consumed > 0.0) {
                    first = Some((Instant::now(), procfs::postgres_snapshot()));
                }
            }
            if let Some((at, pg_before)) = &first
                && crate::kafka::caught_up(&offsets, &topic.ends)?
            {
                let done = Instant::now();
                let pg = procfs::postgres_cpu_since(pg_before);
                for m in members.iter_mut() {
                    m.poll()?;
                }
                return Ok((*at, done, pg));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let (first, done, pg) = match outcome {
        Ok(v) => v,
        Err(e) => {
            group::kill_all(&mut members);
            return Err(e);
        }
    };
    let cpu = members.iter().map(|m| m.cpu).sum();
    group::settle(&members, config.partitions, Duration::from_secs(60)).await;
    let term = Instant::now();
    group::stop_all(&mut members, Duration::from_secs(120)).await?;
    let close = term.elapsed();
    let files = check_loaded(db, topic).await?;
    let rate = Rate {
        users: topic.users,
        bytes: topic.bytes,
        elapsed: done - first,
        pg_cores: Some(procfs::cores(pg, done - first)),
    };
    let peak_rss = members.iter().map(|m| m.peak_rss).collect();
    Ok((rate, done - started, peak_rss, cpu, close, files))
}

/// What bounds a loader configuration, from CPU alone: the whole machine when PostgreSQL and the
/// loaders together keep (nearly) every core busy, else PostgreSQL when its backends are as busy
/// as under its own COPY, else the loaders when each keeps a core busy, else neither side's CPU
/// (the time goes to waits: commits, round trips, group coordination).
pub fn bound(pg: f64, ceiling_pg: f64, loaders: f64, n: usize, machine: f64) -> &'static str {
    if pg + loaders >= 0.85 * machine {
        "the machine's cores"
    } else if pg >= 0.85 * ceiling_pg {
        "PostgreSQL"
    } else if loaders >= 0.85 * n as f64 {
        "loader CPU"
    } else {
        "waits (neither CPU busy)"
    }
}

/// What bounds a COPY ceiling of `sessions` sessions: PostgreSQL's CPU when its backends keep
/// each session's core (or every core) busy, else its writes and commits.
pub fn ceiling_bound(pg: f64, sessions: usize, machine: f64) -> &'static str {
    if pg >= 0.85 * (sessions as f64).min(machine) {
        "PostgreSQL CPU"
    } else {
        "PostgreSQL I/O, commits"
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / 1024.0 / 1024.0)
}

/// The scale-out table and its notes, as Markdown.
pub fn render(runs: &[ScaleRun]) -> String {
    let mut s = String::new();
    if runs.is_empty() {
        return s;
    }
    let machine = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let _ = writeln!(
        s,
        "Scale-out: N loader processes in one group (defaults, fresh database each) against N parallel COPY sessions of the same rows.\n"
    );
    let _ = writeln!(
        s,
        "| loaders | users/s | N COPY sessions, users/s | ÷ ceiling | time | SIGTERM → Parquet closed | peak RSS per loader (max; each) | loader CPU (cores, all) | PostgreSQL CPU (cores): loaders / COPY | bound: loaders / COPY |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for r in runs {
        let pg = r.rate.pg_cores.unwrap_or(0.0);
        let ceiling_pg = r.ceiling.pg_cores.unwrap_or(0.0);
        let each: Vec<String> = r.peak_rss.iter().map(|b| mb(*b)).collect();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} s | {:.2} s ({} files) | {} MB; {} | {:.2} | {:.2} / {:.2} | {} / {} |",
            r.loaders,
            r.rate.users_per_sec(),
            r.ceiling.users_per_sec(),
            r.ratio(),
            r.rate.elapsed.as_secs_f64(),
            r.close.as_secs_f64(),
            r.parquet_files,
            mb(r.peak_rss.iter().copied().max().unwrap_or(0)),
            each.join(" / "),
            r.loader_cores(),
            pg,
            ceiling_pg,
            bound(pg, ceiling_pg, r.loader_cores(), r.loaders, machine),
            ceiling_bound(ceiling_pg, r.loaders, machine),
        );
    }
    if let Some(one) = runs.iter().find(|r| r.loaders == 1) {
        let gains: Vec<String> = runs
            .iter()
            .filter(|r| r.loaders > 1)
            .map(|r| {
                format!(
                    "{} loaders {:.2} × (COPY {:.2} ×)",
                    r.loaders,
                    r.rate.users_per_sec() / one.rate.users_per_sec().max(1e-9),
                    r.ceiling.users_per_sec() / one.ceiling.users_per_sec().max(1e-9)
                )
            })
            .collect();
        if !gains.is_empty() {
            let _ = writeln!(
                s,
                "\n- scale-out over one loader: {}; {machine:.0} cores on this machine",
                gains.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_from_cpu() {
        assert_eq!(bound(1.5, 1.9, 0.4, 2, 2.0), "the machine's cores");
        assert_eq!(bound(0.9, 1.0, 0.3, 1, 2.0), "PostgreSQL");
        assert_eq!(bound(0.2, 1.0, 0.95, 1, 4.0), "loader CPU");
        assert_eq!(bound(0.2, 1.0, 0.3, 2, 4.0), "waits (neither CPU busy)");
        assert_eq!(ceiling_bound(0.98, 1, 2.0), "PostgreSQL CPU");
        assert_eq!(ceiling_bound(1.8, 4, 2.0), "PostgreSQL CPU");
        assert_eq!(ceiling_bound(0.4, 1, 2.0), "PostgreSQL I/O, commits");
    }
}
