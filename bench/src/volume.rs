//! Ten times the volume (`--volume-records`, 20,000 records × 100 users = 2 M users by default):
//! one real `loader run` at defaults on a topic of its own, from offset 0 to the last commit,
//! sampled every second — its resident set, its CPU, PostgreSQL's CPU and the group's committed
//! records. The run is cut into tenths of the records loaded, in order, so the report shows
//! whether the rate falls and the cost per user grows as the tables and their indexes grow, and
//! where the memory goes over the run; then SIGTERM closes the rolls, and the whole-life peak is
//! read as in [`crate::loader_run`].

use crate::db::FreshDb;
use crate::loader_run::{Launched, check_loaded, close, launch, stop, watch};
use crate::preload::{self, Topic};
use crate::{Config, Rate, per_1000, procfs};
use anyhow::Context;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time between samples.
pub const SAMPLE: Duration = Duration::from_secs(1);

/// Bodies built and produced at a time while preloading: ~55 MB of JSON at 100 users each, so
/// the 2.2 GB topic is never held whole.
const PRELOAD_CHUNK: usize = 500;

/// One sample of the run, from the first record consumed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time since the first record was consumed.
    pub at: Duration,
    /// Records the group has committed past (summed over the partitions).
    pub records: f64,
    /// The loader's resident set now (VmRSS), bytes.
    pub rss: u64,
    /// The loader's user + system CPU time so far.
    pub loader_cpu: Duration,
    /// PostgreSQL's CPU time since the first record was consumed.
    pub pg_cpu: Duration,
}

/// One tenth of the records loaded, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenth {
    /// When the group had committed the tenth's first record, from the first record consumed.
    pub from: Duration,
    /// When it had committed its last.
    pub to: Duration,
    /// Users in it ÷ (to − from).
    pub users_per_sec: f64,
    /// The loader's CPU over it, seconds per 1,000 users.
    pub loader_cpu_per_1000: f64,
    /// PostgreSQL's CPU over it, seconds per 1,000 users.
    pub pg_cpu_per_1000: f64,
    /// Lowest and highest VmRSS sampled in it, bytes.
    pub rss: (u64, u64),
}

/// Everything the volume step measured.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Records in its topic.
    pub records: usize,
    /// How long building and producing the topic took.
    pub preload: Duration,
    /// From the first record consumed to the last offset committed.
    pub rate: Rate,
    /// The loader's CPU up to the last commit (start-up included).
    pub cpu: Duration,
    /// Peak resident set (VmHWM) up to the last commit, bytes.
    pub loading_rss: u64,
    /// Peak resident set over the whole life, closing the rolls included, bytes.
    pub peak_rss: u64,
    /// SIGTERM to exit.
    pub close: Duration,
    /// The loader's CPU over its whole life: `cpu` plus closing, whose rolls hold the Parquet
    /// work a short run leaves to the end.
    pub whole_cpu: Duration,
    /// Parquet files published.
    pub parquet_files: i64,
    /// The samples, the last taken at the last commit.
    pub samples: Vec<Sample>,
}

/// Preloads the step's own topic, runs the loader over it and cleans up.
pub async fn measure(config: &Config, bin_dir: &Path, run_id: &str) -> anyhow::Result<Volume> {
    let topic_name = format!("{run_id}.volume");
    crate::kafka::create_topic(&config.brokers, &topic_name, config.partitions).await?;
    let result = async {
        let t = Instant::now();
        let topic = preload::produce_in_chunks(
            &config.brokers,
            &topic_name,
            config.volume_records,
            config.users,
            &format!("{run_id}-volume"),
            PRELOAD_CHUNK,
        )
        .await?;
        let preload = t.elapsed();
        eprintln!(
            "[bench] volume: preloaded {} records, {:.1} MB in {:.0} s",
            topic.records.len(),
            topic.bytes as f64 / 1e6,
            preload.as_secs_f64()
        );
        let db = FreshDb::create(&config.database_url, "bench_volume", false).await?;
        let dir = tempfile::tempdir().context("creating a data directory")?;
        let result = run(config, bin_dir, &topic_name, &topic, &db, dir.path()).await;
        db.drop().await;
        let mut volume = result?;
        volume.preload = preload;
        Ok(volume)
    }
    .await;
    crate::kafka::delete_topic(&config.brokers, &topic_name).await;
    result
}

async fn run(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
    db: &FreshDb,
    dir: &Path,
) -> anyhow::Result<Volume> {
    let Launched {
        mut child,
        status,
        log,
        offsets,
        started,
    } = launch(config, bin_dir, topic_name, db, dir, &[], "bench-volume")?;
    let partitions: Vec<i32> = topic.ends.keys().copied().collect();
    let pid = child.id();
    let outcome = async {
        let mut first: Option<(Instant, procfs::PgSnapshot)> = None;
        let mut samples = Vec::new();
        let mut next = Instant::now();
        let mut last = -1i64;
        loop {
            let limit = Duration::from_secs(3600);
            if watch(&mut child, &log, started, limit, status, &mut first).await? {
                next = Instant::now();
            }
            if let Some((at, pg_before)) = &first {
                let at = *at;
                let committed = offsets.committed(&partitions)?;
                let done = topic
                    .ends
                    .iter()
                    .all(|(p, end)| committed.get(p).and_then(|c| c.offset) == Some(*end));
                let now = Instant::now();
                let records: i64 = committed.values().filter_map(|c| c.offset).sum();
                // Every second, and at each commit (to within the 50 ms poll) for the tenths.
                if done || now >= next || records != last {
                    samples.push(Sample {
                        at: now - at,
                        records: records as f64,
                        rss: procfs::rss(pid)?,
                        loader_cpu: procfs::cpu(pid)?,
                        pg_cpu: procfs::postgres_cpu_since(pg_before),
                    });
                    last = records;
                    while next <= now {
                        next += SAMPLE;
                    }
                }
                if done {
                    return Ok((now - at, samples, procfs::peak_rss(pid)?, procfs::cpu(pid)?));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    let (elapsed, samples, loading_rss, cpu) = match outcome {
        Ok(v) => v,
        Err(e) => {
            stop(&mut child);
            return Err(e);
        }
    };
    let closed = close(&mut child, &log, loading_rss).await?;
    let parquet_files = check_loaded(db, topic).await?;
    let pg = samples.last().map_or(Duration::ZERO, |s| s.pg_cpu);
    Ok(Volume {
        records: topic.records.len(),
        preload: Duration::ZERO,
        rate: Rate {
            users: topic.users,
            bytes: topic.bytes,
            elapsed,
            pg_cores: Some(procfs::cores(pg, elapsed)),
        },
        cpu,
        loading_rss,
        peak_rss: closed.peak_rss,
        close: closed.took,
        whole_cpu: closed.cpu.max(cpu),
        parquet_files,
        samples,
    })
}

/// When `records` had been loaded: linear between the two commits around it. A batch's records
/// were loaded between its commit and the one before, so only each commit's first sample counts
/// (the samples taken in between, nothing new committed, would put the work too late).
fn crossing(samples: &[Sample], records: f64) -> Option<Duration> {
    let mut before: Option<&Sample> = None;
    for s in samples {
        if before.is_some_and(|b| s.records <= b.records) {
            continue;
        }
        if s.records >= records {
            let Some(a) = before else {
                return Some(s.at);
            };
            let f = (records - a.records) / (s.records - a.records);
            return Some(a.at + (s.at - a.at).mul_f64(f.clamp(0.0, 1.0)));
        }
        before = Some(s);
    }
    None
}

/// `value` at time `t`: linear between the two samples around it, the first or last outside.
fn value_at(samples: &[Sample], t: Duration, value: impl Fn(&Sample) -> f64) -> f64 {
    let i = samples.partition_point(|s| s.at <= t);
    match (i.checked_sub(1).map(|j| &samples[j]), samples.get(i)) {
        (Some(a), Some(b)) => {
            let f = (t - a.at).as_secs_f64() / (b.at - a.at).as_secs_f64().max(1e-9);
            value(a) + (value(b) - value(a)) * f
        }
        (Some(a), None) => value(a),
        (None, Some(b)) => value(b),
        (None, None) => 0.0,
    }
}

/// The run cut into ten equal parts of the records committed by the last sample, in order;
/// empty without samples or records.
pub fn tenths(samples: &[Sample], users_per_record: f64) -> Vec<Tenth> {
    let Some(total) = samples.last().map(|s| s.records).filter(|t| *t > 0.0) else {
        return Vec::new();
    };
    let loader = |s: &Sample| s.loader_cpu.as_secs_f64();
    let pg = |s: &Sample| s.pg_cpu.as_secs_f64();
    (0..10)
        .filter_map(|k| {
            let (lo, hi) = (total * k as f64 / 10.0, total * (k + 1) as f64 / 10.0);
            let (from, to) = (crossing(samples, lo)?, crossing(samples, hi)?);
            let users = (hi - lo) * users_per_record;
            let per_1000 = |f: &dyn Fn(&Sample) -> f64| {
                (value_at(samples, to, f) - value_at(samples, from, f)) / users.max(1e-9) * 1000.0
            };
            let inside: Vec<u64> = samples
                .iter()
                .filter(|s| s.at >= from && s.at <= to)
                .map(|s| s.rss)
                .collect();
            let rss = if inside.is_empty() {
                // No sample fell in it (a tenth shorter than a sample): the one nearest its middle.
                let mid = from + (to - from) / 2;
                let near = samples
                    .iter()
                    .min_by_key(|s| s.at.abs_diff(mid))
                    .map_or(0, |s| s.rss);
                (near, near)
            } else {
                (
                    inside.iter().copied().min().unwrap_or(0),
                    inside.iter().copied().max().unwrap_or(0),
                )
            };
            Some(Tenth {
                from,
                to,
                users_per_sec: users / (to - from).as_secs_f64().max(1e-9),
                loader_cpu_per_1000: per_1000(&loader),
                pg_cpu_per_1000: per_1000(&pg),
                rss,
            })
        })
        .collect()
}

/// Seconds as milliseconds, about three significant digits.
fn ms(seconds: f64) -> String {
    let ms = seconds * 1000.0;
    format!("{:.*} ms", crate::stats::decimals_for(ms), ms)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

impl Volume {
    /// Users per record in the topic.
    fn users_per_record(&self) -> f64 {
        self.rate.users as f64 / self.records.max(1) as f64
    }

    /// The step's lines and its table of tenths, as Markdown.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let tenths = tenths(&self.samples, self.users_per_record());
        let _ = writeln!(
            s,
            "- 10× volume ({} records, {} users, {:.0} MB of JSON, its own topic preloaded in {:.0} s; one loader at defaults from offset 0 to the last commit, sampled every {} s and at each commit, single run): {:.0} users/s over {:.1} s; loader CPU {} and PostgreSQL CPU {} per 1,000 users ({} of loader CPU over its whole life, closing's rolls included); peak RSS {:.0} MB loading, {:.0} MB with closing (SIGTERM → Parquet closed {:.1} s, {} files)",
            self.records,
            self.rate.users,
            self.rate.bytes as f64 / 1e6,
            self.preload.as_secs_f64(),
            SAMPLE.as_secs(),
            self.rate.users_per_sec(),
            self.rate.elapsed.as_secs_f64(),
            ms(per_1000(self.cpu.as_secs_f64(), self.rate.users)),
            ms(self.rate.pg_cpu_per_1000().unwrap_or(0.0)),
            ms(per_1000(self.whole_cpu.as_secs_f64(), self.rate.users)),
            mib(self.loading_rss),
            mib(self.peak_rss),
            self.close.as_secs_f64(),
            self.parquet_files,
        );
        if let (Some(first), Some(last)) = (tenths.first(), tenths.last()) {
            let _ = writeln!(
                s,
                "  - as the tables grow, last tenth ÷ first tenth: users/s {:.2}, PostgreSQL CPU per user {:.2}, loader CPU per user {:.2}; slowest tenth {:.0} users/s",
                last.users_per_sec / first.users_per_sec.max(1e-9),
                last.pg_cpu_per_1000 / first.pg_cpu_per_1000.max(1e-9),
                last.loader_cpu_per_1000 / first.loader_cpu_per_1000.max(1e-9),
                tenths
                    .iter()
                    .map(|t| t.users_per_sec)
                    .fold(f64::INFINITY, f64::min)
            );
            s.push('\n');
            s.push_str(&render_tenths(&tenths));
        }
        s
    }
}

/// The tenths as a table, one column each.
fn render_tenths(tenths: &[Tenth]) -> String {
    let mut s = String::new();
    let head: Vec<String> = (1..=tenths.len()).map(|k| k.to_string()).collect();
    let _ = writeln!(
        s,
        "| tenth of the records, in order | {} |",
        head.join(" | ")
    );
    let _ = writeln!(s, "|---|{}", "---:|".repeat(tenths.len()));
    let mut line = |name: &str, cell: &dyn Fn(&Tenth) -> String| {
        let cells: Vec<String> = tenths.iter().map(cell).collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    };
    line("done at (s)", &|t| format!("{:.0}", t.to.as_secs_f64()));
    line("users/s", &|t| format!("{:.0}", t.users_per_sec));
    line("loader CPU per 1,000 users", &|t| ms(t.loader_cpu_per_1000));
    line("PostgreSQL CPU per 1,000 users", &|t| ms(t.pg_cpu_per_1000));
    line("loader RSS, min–max (MB)", &|t| {
        format!("{:.0}–{:.0}", mib(t.rss.0), mib(t.rss.1))
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 records/s for 10 s, then 50 records/s for 10 s; RSS climbing 1 MiB a second;
    /// the loader at 0.1 core, PostgreSQL at 1 core throughout.
    fn slowing() -> Vec<Sample> {
        (0..=20u64)
            .map(|t| Sample {
                at: Duration::from_secs(t),
                records: if t <= 10 {
                    100.0 * t as f64
                } else {
                    1000.0 + 50.0 * (t - 10) as f64
                },
                rss: (50 + t) << 20,
                loader_cpu: Duration::from_millis(100 * t),
                pg_cpu: Duration::from_secs(t),
            })
            .collect()
    }

    #[test]
    fn tenths_follow_the_rate_and_the_cost() {
        let t = tenths(&slowing(), 10.0);
        assert_eq!(t.len(), 10);
        // 1,500 records: the first 1,000 at 100/s (tenths 1–6, the 7th straddles), the rest at 50/s.
        assert!((t[0].users_per_sec - 1000.0).abs() < 1e-6, "{:?}", t[0]);
        assert!((t[9].users_per_sec - 500.0).abs() < 1e-6, "{:?}", t[9]);
        assert_eq!(t[0].from, Duration::ZERO);
        assert_eq!(t[9].to, Duration::from_secs(20));
        // 1 core of PostgreSQL at 1,000 users/s is 1 s per 1,000 users; at 500/s, 2 s.
        assert!((t[0].pg_cpu_per_1000 - 1.0).abs() < 1e-6, "{:?}", t[0]);
        assert!((t[9].pg_cpu_per_1000 - 2.0).abs() < 1e-6, "{:?}", t[9]);
        assert!((t[9].loader_cpu_per_1000 - 0.2).abs() < 1e-6, "{:?}", t[9]);
        // The first tenth runs 0–1.5 s: samples at 0 and 1 s.
        assert_eq!(t[0].rss, (50 << 20, 51 << 20));
        assert_eq!(t[9].rss, (67 << 20, 70 << 20));
        // The tenths tile the run.
        for w in t.windows(2) {
            assert_eq!(w[0].to, w[1].from);
        }
    }

    #[test]
    fn a_tenth_between_two_samples_and_no_samples() {
        // One commit of everything between the samples at 0 s and 1 s.
        let s = [
            Sample {
                at: Duration::ZERO,
                records: 0.0,
                rss: 10,
                loader_cpu: Duration::ZERO,
                pg_cpu: Duration::ZERO,
            },
            Sample {
                at: Duration::from_secs(1),
                records: 40.0,
                rss: 20,
                loader_cpu: Duration::ZERO,
                pg_cpu: Duration::ZERO,
            },
        ];
        let t = tenths(&s, 1.0);
        assert_eq!(t.len(), 10);
        assert!((t[4].users_per_sec - 40.0).abs() < 1e-6, "{:?}", t[4]);
        assert_eq!(t[1].rss, (10, 10));
        assert_eq!(t[8].rss, (20, 20));
        assert!(tenths(&[], 1.0).is_empty());
        // A sample between two commits, nothing new committed, is no point of progress: the
        // batch committed at 2 s was loaded from 0 s on.
        let flat = [
            s[0],
            Sample {
                at: Duration::from_secs(1),
                ..s[0]
            },
            Sample {
                at: Duration::from_secs(2),
                ..s[1]
            },
        ];
        assert_eq!(crossing(&flat, 20.0), Some(Duration::from_secs(1)));
        assert!((tenths(&flat, 1.0)[0].users_per_sec - 20.0).abs() < 1e-6);
        assert!(tenths(&s[..1], 1.0).is_empty());
    }

    #[test]
    fn renders_the_table() {
        let v = Volume {
            records: 1500,
            preload: Duration::from_secs(3),
            rate: Rate {
                users: 15_000,
                bytes: 16_500_000,
                elapsed: Duration::from_secs(20),
                pg_cores: Some(1.0),
            },
            cpu: Duration::from_secs(2),
            loading_rss: 90 << 20,
            peak_rss: 120 << 20,
            close: Duration::from_secs(5),
            whole_cpu: Duration::from_secs(3),
            parquet_files: 12,
            samples: slowing(),
        };
        let text = v.render();
        assert!(text.contains("750 users/s over 20.0 s"), "{text}");
        assert!(
            text.contains("(200 ms of loader CPU over its whole life"),
            "{text}"
        );
        assert!(
            text.contains("last tenth ÷ first tenth: users/s 0.50"),
            "{text}"
        );
        assert!(text.contains("| users/s | 1000 |"), "{text}");
        assert_eq!(text.matches("\n| ").count(), 6, "{text}");
    }
}
