//! The peer's section of the report: medians and spread of its repetitions.

use super::{Peer, PeerRun, Rep};
use crate::procfs;
use std::fmt::Write as _;

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// Of `values` (not empty).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median (min–max)`, with `decimals` decimals; the median alone for one value.
    pub fn show(&self, decimals: usize) -> String {
        if self.min == self.max {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

impl PeerRun {
    fn spread(&self, f: impl Fn(&Rep) -> f64) -> Spread {
        Spread::of(self.reps.iter().map(f))
    }
}

/// The peer's section, as Markdown.
pub fn render(p: &Peer) -> String {
    let mut s = String::new();
    let users = p.users as f64;
    let reps = p.runs.first().map_or(0, |r| r.reps.len());
    let _ = writeln!(
        s,
        "\nPeer: Kafka Connect 4.1.1 (a standalone worker from the broker's release jars) with Debezium's JDBC sink 3.4.3.Final and the PostgreSQL driver (`scripts/peer.sh`), from a topic of one record per user ({} users, {:.1} MB with their JSON-schema envelopes, {} partitions, lz4) holding the rows the loader writes into `processed_data`, transformed before and untimed. Each repetition: a fresh worker, database (`processed_data` from the migrations: its primary key and indexes, without the foreign key to `raw_data`, which is not written) and consumer group. Medians of {reps} repetition(s) (min–max). Rate and CPU from the connector's consumer group having its partitions assigned (as the loader is timed from its first record consumed) until the last row is in PostgreSQL; apart from it the worker's start-up and the connector's own (created → partitions assigned: its tasks' Hibernate and connection pools, the group's join).\n",
        p.users,
        p.bytes as f64 / 1e6,
        p.partitions
    );
    let _ = writeln!(
        s,
        "| configuration | JVM | users/s | Connect CPU (cores) | Connect CPU per 1,000 users | Connect peak RSS | PostgreSQL CPU (cores) | PostgreSQL CPU per 1,000 users | worker start-up (its CPU) | connector start | assigned → first row |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &p.runs {
        let rate = run.spread(|r| users / r.load.as_secs_f64().max(1e-9));
        let cores = run.spread(|r| procfs::cores(r.cpu, r.load));
        let per_k = run.spread(|r| r.cpu.as_secs_f64() * 1e3 / users * 1e3);
        let rss = run.spread(|r| r.peak_rss as f64 / 1024.0 / 1024.0);
        let pg = run.spread(|r| procfs::cores(r.pg_cpu, r.load));
        let pg_per_k = run.spread(|r| r.pg_cpu.as_secs_f64() * 1e3 / users * 1e3);
        let startup = run.spread(|r| r.startup.as_secs_f64());
        let startup_cpu = run.spread(|r| r.startup_cpu.as_secs_f64());
        let start = run.spread(|r| r.connector_start.as_secs_f64());
        let first = run.spread(|r| r.first_row.as_secs_f64());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} ms | {} MB | {} | {} ms | {} s ({} s) | {} s | {} s |",
            run.setup.label,
            run.jvm,
            rate.show(0),
            cores.show(2),
            per_k.show(0),
            rss.show(0),
            pg.show(2),
            pg_per_k.show(0),
            startup.show(1),
            startup_cpu.show(1),
            start.show(1),
            first.show(1),
        );
    }
    let _ = writeln!(
        s,
        "\n- the documented defaults insert (`insert.mode=insert`): not idempotent, a record delivered again after a crash fails its task on the primary key; the docs advise `upsert` for idempotent writes, which is what the loader does (`ON CONFLICT`)"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_repetitions() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([5.0]).show(0), "5");
    }
}
