//! `BENCHMARKS.md`: one section per run, newest first, under a fixed header.

use crate::extractor_idle::ExtractorIdle;
use crate::freshness::Freshness;
use crate::loader_run::LoaderRun;
use crate::rebalance::Rebalance;
use crate::scale::ScaleRun;
use crate::{Config, Rate};
use anyhow::Context;
use chrono::{DateTime, Utc};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Where new runs go: everything above it is the file's fixed header.
pub const MARKER: &str = "<!-- runs, newest first -->";

/// Everything one run measured.
pub struct Results {
    /// When the run started.
    pub started: DateTime<Utc>,
    /// Its configuration.
    pub config: Config,
    /// Records in the topic.
    pub produced_records: usize,
    /// Users in the topic.
    pub produced_users: u64,
    /// Payload bytes in the topic.
    pub produced_bytes: u64,
    /// PostgreSQL COPY: the repetition with the median users/s, for the single runs' ratios.
    pub ceiling: Rate,
    /// The interleaved repetitions of the ceiling and the loader at defaults.
    pub reps: crate::reps::Repeated,
    /// rdkafka into nothing.
    pub consume: Rate,
    /// The loader at default settings: the repetition with the median users/s.
    pub default_run: LoaderRun,
    /// The loader at the best settings.
    pub best_run: LoaderRun,
    /// The loader at defaults, Parquet to a bucket, when an S3 endpoint was given.
    pub bucket_run: Option<LoaderRun>,
    /// One INSERT per user.
    pub naive: Rate,
    /// Fetch-to-row latency.
    pub fresh: Freshness,
    /// N loaders in one group against N COPY sessions.
    pub scale: Vec<ScaleRun>,
    /// Ten times the volume, per tenth; `None` when skipped (`--volume-records 0`).
    pub volume: Option<crate::volume::Volume>,
    /// The stall when a member joins and one leaves.
    pub rebalance: Rebalance,
    /// What an idle extractor costs.
    pub idle: ExtractorIdle,
    /// The lake.
    pub lake: crate::lake::Lake,
}

/// The machine, for a run's header.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB")
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// CPU seconds per 1,000 users as milliseconds, about three significant digits.
fn per_user(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    format!("{:.*} ms", crate::stats::decimals_for(ms), ms)
}

fn settings(run: &LoaderRun) -> String {
    if let Some((_, url)) = run.settings.iter().find(|(k, _)| k == "PARQUET_URL") {
        let scheme = url.split("://").next().unwrap_or("s3");
        return format!("defaults, Parquet to a bucket (`{scheme}://`, moto)");
    }
    if run.settings.is_empty() {
        "defaults".to_string()
    } else {
        run.settings
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The run as Markdown.
pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let c = &r.config;
    let _ = writeln!(
        s,
        "## {} — {} records × {} users\n",
        r.started.format("%Y-%m-%d %H:%M UTC"),
        r.produced_records,
        c.users
    );
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(s, "- command: `{}`", c.command);
    let _ = writeln!(
        s,
        "- topic: {} records, {} users, {:.1} MB of JSON, {} partitions (lz4)",
        r.produced_records,
        r.produced_users,
        r.produced_bytes as f64 / 1e6,
        c.partitions
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| step | users/s | MB/s | time | SIGTERM → Parquet closed | loader peak RSS: loading / with closing | loader CPU (cores) | PostgreSQL CPU (cores) | loader CPU per 1,000 users | PostgreSQL CPU per 1,000 users |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let row = |s: &mut String, name: &str, rate: &Rate, extra: Option<&LoaderRun>| {
        let (close, rss, cpu, cpu_per_user) = extra.map_or(Default::default(), |l| {
            (
                format!("{} ({} files)", secs(l.close), l.parquet_files),
                format!(
                    "{:.0} / {:.0} MB",
                    l.loading_rss as f64 / 1024.0 / 1024.0,
                    l.peak_rss as f64 / 1024.0 / 1024.0
                ),
                format!("{:.2}", l.cores()),
                per_user(l.cpu_per_1000()),
            )
        });
        let pg = rate.pg_cores.map_or(String::new(), |c| format!("{c:.2}"));
        let pg_per_user = rate.pg_cpu_per_1000().map_or(String::new(), per_user);
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.1} | {} | {close} | {rss} | {cpu} | {pg} | {cpu_per_user} | {pg_per_user} |",
            rate.users_per_sec(),
            rate.mb_per_sec(),
            secs(rate.elapsed)
        );
    };
    s.push_str(&r.reps.rows());
    row(&mut s, "rdkafka consume into nothing", &r.consume, None);
    row(
        &mut s,
        &format!("loader, {}", settings(&r.best_run)),
        &r.best_run.rate,
        Some(&r.best_run),
    );
    if let Some(b) = &r.bucket_run {
        row(
            &mut s,
            &format!("loader, {}", settings(b)),
            &b.rate,
            Some(b),
        );
    }
    row(
        &mut s,
        &format!(
            "naive: INSERT per user, commit per record ({} records)",
            c.naive_records.min(r.produced_records)
        ),
        &r.naive,
        None,
    );
    let best = &r.best_run.rate;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- loader ÷ ceiling: {} (defaults, median (min–max) of the pairs), {:.2} (best, one run against the median COPY); loader ÷ naive: {:.1} (defaults, median run), {:.1} (best)",
        r.reps.ratio().map_or(String::new(), |ratio| ratio.show(2)),
        best.users_per_sec() / r.ceiling.users_per_sec(),
        r.default_run.rate.users_per_sec() / r.naive.users_per_sec(),
        best.users_per_sec() / r.naive.users_per_sec(),
    );
    let _ = write!(s, "{}", r.reps.render());
    let _ = write!(s, "{}", crate::baseline::render(&r.reps, &c.baseline_label));
    let _ = writeln!(
        s,
        "- {} repetitions, interleaved COPY, loader, COPY, loader…; the consume, best-settings, bucket and naive rows are single runs, compared with the median COPY and loader runs",
        r.reps.ceilings.len()
    );
    if let Some(b) = &r.bucket_run {
        let _ = writeln!(
            s,
            "- bucket ÷ local directory (both at defaults): {:.2} in users/s to the last commit; closing the rolls took {} against {}",
            b.rate.users_per_sec() / r.default_run.rate.users_per_sec(),
            secs(b.close),
            secs(r.default_run.close)
        );
    }
    let _ = writeln!(
        s,
        "- loader wall time incl. start-up and group join: {} (defaults, median run), {} (best)",
        secs(r.default_run.wall),
        secs(r.best_run.wall)
    );
    let _ = writeln!(
        s,
        "- freshness (extractor → stub every {}, {} users per fetch, loader at defaults): p50 {}, p99 {}, max {} over {} records",
        humanize(c.freshness_interval),
        c.freshness_users,
        ms(r.fresh.p50),
        ms(r.fresh.p99),
        ms(r.fresh.max),
        r.fresh.samples
    );
    if let Some(v) = &r.volume {
        let _ = write!(s, "{}", v.render());
        let _ = writeln!(s);
    }
    let _ = write!(s, "{}", r.rebalance.render());
    let _ = write!(s, "{}", r.lake.render());
    let _ = write!(s, "{}", r.idle.render());
    let scale = crate::scale::render(&r.scale);
    if !scale.is_empty() {
        let _ = write!(s, "\n{scale}");
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "ratio: {:.2}",
        best.users_per_sec() / r.ceiling.users_per_sec()
    );
    s
}

/// A run of the lake step alone (`--lake-only`).
pub fn render_lake(started: DateTime<Utc>, c: &Config, lake: &crate::lake::Lake) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## {} — the lake only\n",
        started.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(s, "- command: `{}`", c.command);
    let _ = writeln!(
        s,
        "- extractor → stub every {}, {} users per fetch, for {}; {} partitions",
        humanize(c.freshness_interval),
        c.freshness_users,
        humanize(c.lake_for),
        c.partitions
    );
    let _ = write!(s, "{}", lake.render());
    s
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

const HEADER: &str = "# Benchmarks\n\nWritten by `scripts/bench.sh` (the `bench` binary, release build). Each run measures, on one\nmachine in one go, the loader against PostgreSQL's own `COPY` of the same rows, raw rdkafka\nconsumption of the same topic, and a naive loader. Newest first.\n\n";

/// Adds `section` at the top of the runs in `path` (creating the file with its header).
pub fn prepend(path: &Path, section: &str) -> anyhow::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (head, runs) = match existing.split_once(MARKER) {
        Some((h, r)) => (h.to_string(), r.trim_start().to_string()),
        None => (HEADER.to_string(), String::new()),
    };
    let text = format!(
        "{}{MARKER}\n\n{section}\n{runs}",
        head.trim_end().to_string() + "\n\n"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_run_goes_first_under_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        prepend(&path, "## one\n").unwrap();
        prepend(&path, "## two\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let (head, runs) = text.split_once(MARKER).unwrap();
        assert!(head.starts_with("# Benchmarks"));
        let two = runs.find("## two").unwrap();
        let one = runs.find("## one").unwrap();
        assert!(two < one, "{text}");
        assert_eq!(text.matches("# Benchmarks").count(), 1);
    }
}
