//! Rebalance stall: one real loader loads a topic of its own steadily; when a third of it is
//! loaded a second loader joins the group, and when two thirds are loaded (and the newcomer has
//! loaded something) the first one gets SIGTERM and leaves. The group's records/s is sampled
//! from the positions its batches store in PostgreSQL (`consumer_offsets`, written in each
//! batch's own transaction: what a loader restarts from, so what the group has durably loaded),
//! summed over the partitions so a member that left still counts; and for each membership change
//! the report says how long the rate stayed under half the steady one-member rate. The offsets
//! committed to Kafka are sampled beside them: a commit made while the group rebalances is
//! refused and only the next batch's carries the progress, so Kafka's figure lags the data.
//!
//! The loader commits in batches (about a second each at full size), so the rate is judged over
//! a centred window (`--rebalance-window`) rather than per sample: a stall is known to about
//! that window.

use crate::group::{self, Member};
use crate::loader_run::check_loaded;
use crate::{Config, db::FreshDb, preload};
use anyhow::Context;
use etl_common::kafka::KafkaArgs;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A dip of the group's rate under half the steady rate after a membership change.
#[derive(Debug, Clone, PartialEq)]
pub struct Dip {
    /// When the rate fell under half, from the start of the step.
    pub start: Duration,
    /// When it was back at half or more; `None` if not before the next change or the end.
    pub end: Option<Duration>,
}

/// A membership change and what it did to the rate.
#[derive(Debug, Clone)]
pub struct Change {
    /// When it was made (the process started, or SIGTERM sent), from the start of the step.
    pub at: Duration,
    /// The dip after it, if the rate fell under half; `None` also when there was no steady rate
    /// to compare with.
    pub dip: Option<Dip>,
}

/// Everything the rebalance step measured.
#[derive(Debug, Clone)]
pub struct Rebalance {
    /// Records in its topic.
    pub records: usize,
    /// Users in its topic.
    pub users: u64,
    /// Time between samples.
    pub sample: Duration,
    /// The window the rate is judged over (`--rebalance-window`, or longer: [`judging_window`]).
    pub window: Duration,
    /// (time from the step's start, records the group has stored positions past so far).
    pub samples: Vec<(Duration, f64)>,
    /// (time from the step's start, records below the group's offsets committed to Kafka).
    pub kafka_samples: Vec<(Duration, f64)>,
    /// Records/s of the first member alone before the join, if long enough to tell.
    pub steady: Option<f64>,
    /// The second member's start, if the topic lasted that long.
    pub join: Option<Change>,
    /// When the newcomer's first records were loaded.
    pub joiner_first: Option<Duration>,
    /// The first member's SIGTERM, if the topic lasted that long.
    pub leave: Option<Change>,
    /// The same two changes judged on the offsets committed to Kafka.
    pub kafka: (Option<Change>, Option<Change>),
    /// When the group had committed the end of every partition.
    pub done: Duration,
}

/// Preloads the step's own topic (`--rebalance-records` × `--users`), runs it and cleans up.
pub async fn measure(config: &Config, bin_dir: &Path, run_id: &str) -> anyhow::Result<Rebalance> {
    let topic_name = format!("{run_id}.rebalance");
    crate::kafka::create_topic(&config.brokers, &topic_name, config.partitions).await?;
    let result = async {
        let data = preload::build(config.rebalance_records, config.users, run_id)?;
        let mut topic = preload::produce(&config.brokers, &topic_name, data).await?;
        // Only the counts and ends are checked here: the bodies need not stay in memory.
        topic.payloads = Vec::new();
        let db = FreshDb::create(&config.database_url, "bench_rebalance", false).await?;
        let dir = tempfile::tempdir().context("creating a data directory")?;
        let result = run(config, bin_dir, &topic_name, &topic, &db, dir.path()).await;
        db.drop().await;
        if let Some(keep) = &config.rebalance_logs {
            keep_logs(dir.path(), keep)?;
        }
        result
    }
    .await;
    crate::kafka::delete_topic(&config.brokers, &topic_name).await;
    result
}

/// Copies the step's loader logs (`loader-<i>.log`) into `to`.
fn keep_logs(dir: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, to.join(name))
                .with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
        }
    }
    Ok(())
}

async fn run(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &preload::Topic,
    db: &FreshDb,
    dir: &Path,
) -> anyhow::Result<Rebalance> {
    let group_id = format!("bench-rebalance-{}", uuid::Uuid::new_v4().simple());
    let offsets = loader::replay::GroupOffsets::new(
        &KafkaArgs::for_brokers(&config.brokers),
        &group_id,
        topic_name,
    )?;
    let total = topic.records.len() as f64;
    let spawn = |i| Member::spawn(config, bin_dir, topic_name, &group_id, &db.url, dir, i);
    let t0 = Instant::now();
    let mut members = vec![spawn(1)?];
    let mut samples = Vec::new();
    let mut kafka_samples = Vec::new();
    let stored = crate::db::StoredPositions::new(&db.url, &group_id, topic_name).await?;
    let (mut join_at, mut leave_at, mut joiner_first) = (None, None, None);
    // A zero sample or window would spin or divide by zero: at least 10 ms, and one sample.
    let sample = config.rebalance_sample.max(Duration::from_millis(10));
    let floor = config.rebalance_window.max(sample);
    let mut tick = tokio::time::interval(sample);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = async {
        loop {
            tick.tick().await;
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(1800),
                "the rebalance step did not finish within 30 min"
            );
            for m in members.iter_mut() {
                m.poll()?;
            }
            if joiner_first.is_none()
                && let Some(joiner) = members.get_mut(1)
            {
                joiner.read_counters().await;
            }
            let now = t0.elapsed();
            let in_kafka = crate::kafka::committed_records(&offsets, &topic.ends)? as f64;
            kafka_samples.push((now, in_kafka));
            let loaded = stored.records().await? as f64;
            samples.push((now, loaded));
            if loaded >= total && in_kafka >= total {
                return Ok(now);
            }
            if join_at.is_none() && loaded >= total / 3.0 {
                members.push(spawn(2)?);
                join_at = Some(now);
            }
            // The newcomer's own count (its `/metrics`): when it began to take part.
            let joiner_loaded = members.get(1).is_some_and(|m| m.loaded > 0.0);
            if joiner_first.is_none() && joiner_loaded {
                joiner_first = Some(now);
            }
            if leave_at.is_none() && joiner_loaded && loaded >= total * 2.0 / 3.0 {
                members[0].terminate();
                leave_at = Some(now);
            }
        }
    }
    .await;
    let done = match outcome {
        Ok(done) => done,
        Err(e) => {
            group::kill_all(&mut members);
            return Err(e);
        }
    };
    group::settle(&members, config.partitions, Duration::from_secs(60)).await;
    group::stop_all(&mut members, Duration::from_secs(120)).await?;
    check_loaded(db, topic).await?;

    // (the window, the steady rate, the join, the leave) as `samples` tell them.
    let changes = |samples: &[(Duration, f64)]| {
        let window = join_at.map_or(floor, |j| judging_window(samples, j, floor));
        let steady = join_at.and_then(|j| steady_rate(samples, j, window));
        let change = |at: Duration, until: Duration| Change {
            at,
            dip: steady.and_then(|s| dip(samples, window, s, at, until)),
        };
        (
            window,
            steady,
            join_at.map(|j| change(j, leave_at.unwrap_or(done))),
            leave_at.map(|l| change(l, done)),
        )
    };
    let (window, steady, join, leave) = changes(&samples);
    let (_, _, kafka_join, kafka_leave) = changes(&kafka_samples);
    stored.close().await;
    Ok(Rebalance {
        records: topic.records.len(),
        users: topic.users,
        sample,
        window,
        samples,
        kafka_samples,
        steady,
        join,
        joiner_first,
        leave,
        kafka: (kafka_join, kafka_leave),
        done,
    })
}

/// Records loaded at `t`: the last sample at or before it.
fn loaded_at(samples: &[(Duration, f64)], t: Duration) -> f64 {
    let i = samples.partition_point(|(s, _)| *s <= t);
    if i == 0 { 0.0 } else { samples[i - 1].1 }
}

/// Records/s over the window centred on `t`.
fn rate_around(samples: &[(Duration, f64)], window: Duration, t: Duration) -> f64 {
    let half = window / 2;
    let from = t.saturating_sub(half);
    (loaded_at(samples, t + half) - loaded_at(samples, from)) / (t + half - from).as_secs_f64()
}

/// The window to judge the rate over: `floor`, or twice the mean time between the group's
/// commits before the join if that is longer, so that a window in steady running always holds
/// commits (a batch can take longer than `--rebalance-window`).
pub fn judging_window(samples: &[(Duration, f64)], join: Duration, floor: Duration) -> Duration {
    let before: Vec<&(Duration, f64)> = samples.iter().filter(|(t, _)| *t <= join).collect();
    // Gaps between commits: the first commit (from nothing loaded) opens the span.
    let gaps = before.windows(2).filter(|w| w[1].1 > w[0].1).count();
    let Some((first, _)) = before.iter().find(|(_, l)| *l > 0.0) else {
        return floor;
    };
    if gaps < 2 {
        return floor;
    }
    floor.max(join.saturating_sub(*first) * 2 / (gaps - 1) as u32)
}

/// The one-member rate: from the first sample with records loaded up to the join; `None` when
/// that is shorter than two windows.
pub fn steady_rate(samples: &[(Duration, f64)], join: Duration, window: Duration) -> Option<f64> {
    let (first, base) = *samples.iter().find(|(_, l)| *l > 0.0)?;
    let span = join.checked_sub(first)?;
    (span >= window * 2).then(|| (loaded_at(samples, join) - base) / span.as_secs_f64())
}

/// The first dip under half of `steady` between `at` and `until` (windows reaching past `until`
/// are not judged), and when the rate was back at half.
pub fn dip(
    samples: &[(Duration, f64)],
    window: Duration,
    steady: f64,
    at: Duration,
    until: Duration,
) -> Option<Dip> {
    let half = steady / 2.0;
    let mut times = samples
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= at && *t + window / 2 <= until);
    let start = times.find(|t| rate_around(samples, window, *t) < half)?;
    let end = times.find(|t| rate_around(samples, window, *t) >= half);
    Some(Dip { start, end })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

impl Rebalance {
    fn describe(&self, what: &str, change: &Option<Change>) -> String {
        let Some(c) = change else {
            return format!("{what}: did not happen (the topic was loaded first: too short)");
        };
        let head = format!("{what} at {}", secs(c.at));
        match (&self.steady, &c.dip) {
            (None, _) => format!("{head}: no steady rate before the join to compare with"),
            (Some(_), None) => format!("{head}: the rate never fell under half the steady rate"),
            (Some(_), Some(Dip { start, end: None })) => format!(
                "{head}: under half the steady rate from {} until the next change or the end (≥ {})",
                secs(*start),
                secs(self.done.saturating_sub(*start))
            ),
            (
                Some(_),
                Some(Dip {
                    start,
                    end: Some(end),
                }),
            ) => format!(
                "{head}: under half the steady rate from {} to {} — stalled {}, back {} after the change",
                secs(*start),
                secs(*end),
                secs(end.saturating_sub(*start)),
                secs(end.saturating_sub(c.at))
            ),
        }
    }

    /// A text chart of records/s over time, at most 60 columns, the join (J) and leave (L) marked
    /// under it.
    pub fn chart(&self) -> String {
        let end = self.done.max(self.sample);
        let per = (end.as_secs_f64() / 60.0).max(self.sample.as_secs_f64());
        let columns = (end.as_secs_f64() / per).ceil().max(1.0) as usize;
        let rates: Vec<f64> = (0..columns)
            .map(|c| {
                let from = Duration::from_secs_f64(c as f64 * per);
                let to = Duration::from_secs_f64((c + 1) as f64 * per);
                (loaded_at(&self.samples, to) - loaded_at(&self.samples, from)) / per
            })
            .collect();
        let peak = rates.iter().copied().fold(0.0, f64::max);
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let bars: String = rates
            .iter()
            .map(|r| {
                if *r <= 0.0 || peak <= 0.0 {
                    '·'
                } else {
                    BARS[((r / peak * 8.0).ceil() as usize).clamp(1, 8) - 1]
                }
            })
            .collect();
        let mut marks = vec![' '; columns];
        for (change, mark) in [(&self.join, 'J'), (&self.leave, 'L')] {
            if let Some(c) = change {
                marks[((c.at.as_secs_f64() / per) as usize).min(columns - 1)] = mark;
            }
        }
        let marks: String = marks.into_iter().collect();
        let label = secs(end);
        format!(
            "records/s loaded (positions stored), one column per {per:.2} s, █ = {peak:.0}/s, · = none; J join, L leave\n{bars}\n{}\n0 s{label:>width$}\n",
            marks.trim_end(),
            width = columns.saturating_sub(3).max(label.len() + 1)
        )
    }

    /// The step's lines and chart, as Markdown.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "- rebalance stall ({} records, {} users, loaders at defaults; sampled every {} ms, rate judged over {} windows): steady one-loader rate {}",
            self.records,
            self.users,
            self.sample.as_millis(),
            secs(self.window),
            self.steady
                .map_or("not measured (too short)".to_string(), |r| format!(
                    "{r:.1} records/s"
                ))
        );
        let mut join = self.describe("a 2nd loader started", &self.join);
        if let Some(first) = self.joiner_first {
            let _ = write!(join, "; its first records loaded at {}", secs(first));
        }
        let _ = writeln!(s, "  - {join}");
        let _ = writeln!(
            s,
            "  - {}",
            self.describe("SIGTERM to the 1st loader", &self.leave)
        );
        let kafka = |c: &Option<Change>| match c {
            Some(Change {
                dip:
                    Some(Dip {
                        start,
                        end: Some(end),
                    }),
                ..
            }) => format!("under half for {}", secs(end.saturating_sub(*start))),
            Some(Change {
                dip: Some(Dip { end: None, .. }),
                ..
            }) => "under half until the next change or the end".to_string(),
            Some(Change { dip: None, .. }) => "never under half".to_string(),
            None => "—".to_string(),
        };
        let _ = writeln!(
            s,
            "  - judged on the offsets committed to Kafka instead (a commit refused during the rebalance is carried by the next batch's): join {}, leave {}",
            kafka(&self.kafka.0),
            kafka(&self.kafka.1)
        );
        let _ = writeln!(
            s,
            "  - the group had stored and committed the end of every partition at {}\n",
            secs(self.done)
        );
        let _ = writeln!(s, "```text\n{}```", self.chart());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// 10 records/s in 10-record batches each second, nothing from 10 s to 14 s, then again.
    fn stalled() -> Vec<(Duration, f64)> {
        let mut loaded = 0.0;
        (0..100u64)
            .map(|i| {
                let t = ms(i * 250);
                if i % 4 == 0 && i > 0 && !(40..56).contains(&i) {
                    loaded += 10.0;
                }
                (t, loaded)
            })
            .collect()
    }

    #[test]
    fn steady_rate_and_the_dip_after_a_change() {
        let s = stalled();
        let steady = steady_rate(&s, ms(9_000), ms(2_000)).unwrap();
        assert!((steady - 10.0).abs() < 0.5, "{steady}");
        let d = dip(&s, ms(2_000), steady, ms(9_000), ms(24_000)).unwrap();
        assert!(d.start >= ms(9_000) && d.start <= ms(11_000), "{d:?}");
        let end = d.end.unwrap();
        assert!(end >= ms(13_000) && end <= ms(15_000), "{d:?}");
        assert_eq!(dip(&s, ms(2_000), steady, ms(16_000), ms(24_000)), None);
        assert_eq!(steady_rate(&s, ms(2_000), ms(2_000)), None);
        // Commits every second before the join: twice that is the 2 s floor itself.
        assert_eq!(judging_window(&s, ms(9_000), ms(1_000)), ms(2_000));
        assert_eq!(judging_window(&s, ms(9_000), ms(3_000)), ms(3_000));
    }

    #[test]
    fn chart_marks_the_changes() {
        let r = Rebalance {
            records: 100,
            users: 1000,
            sample: ms(250),
            window: ms(2_000),
            samples: stalled(),
            kafka_samples: stalled(),
            steady: Some(10.0),
            join: Some(Change {
                at: ms(9_000),
                dip: None,
            }),
            joiner_first: None,
            leave: Some(Change {
                at: ms(18_000),
                dip: None,
            }),
            kafka: (None, None),
            done: ms(24_750),
        };
        let chart = r.chart();
        let lines: Vec<&str> = chart.lines().collect();
        assert_eq!(lines[1].chars().count(), 60, "{chart}");
        assert!(lines[1].contains('·') && lines[1].contains('█'), "{chart}");
        assert_eq!(
            lines[2].find('J').map(|i| i < lines[2].find('L').unwrap()),
            Some(true)
        );
        assert!(r.render().contains("```text"));
    }
}
