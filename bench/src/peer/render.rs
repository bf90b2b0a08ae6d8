//! The peer's section of the report: medians and spread of its repetitions.

use super::{Peer, PeerRun, Rep};
use crate::{procfs, stats};
use std::fmt::Write as _;

impl PeerRun {
    /// One figure over the repetitions: `median (min–max)`.
    fn show(&self, decimals: usize, f: impl Fn(&Rep) -> f64) -> String {
        let values: Vec<f64> = self.reps.iter().map(f).collect();
        stats::show(&values, decimals)
    }

    /// CPU per 1,000 users over the repetitions, in milliseconds to about three digits.
    fn per_1000(&self, users: u64, cpu: impl Fn(&Rep) -> std::time::Duration) -> String {
        let values: Vec<f64> = self
            .reps
            .iter()
            .map(|r| crate::per_1000(cpu(r).as_secs_f64(), users) * 1e3)
            .collect();
        let decimals = stats::median(&values).map_or(0, stats::decimals_for);
        format!("{} ms", stats::show(&values, decimals))
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
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} MB | {} | {} | {} s ({} s) | {} s | {} s |",
            run.setup.label,
            run.jvm,
            run.show(0, |r| users / r.load.as_secs_f64().max(1e-9)),
            run.show(2, |r| procfs::cores(r.cpu, r.load)),
            run.per_1000(p.users, |r| r.cpu),
            run.show(0, |r| r.peak_rss as f64 / 1024.0 / 1024.0),
            run.show(2, |r| procfs::cores(r.pg_cpu, r.load)),
            run.per_1000(p.users, |r| r.pg_cpu),
            run.show(1, |r| r.startup.as_secs_f64()),
            run.show(1, |r| r.startup_cpu.as_secs_f64()),
            run.show(1, |r| r.connector_start.as_secs_f64()),
            run.show(1, |r| r.first_row.as_secs_f64()),
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
    use crate::peer::Setup;
    use std::time::Duration;

    #[test]
    fn renders_medians_and_spread() {
        let rep = |load: u64, cpu: u64| Rep {
            startup: Duration::from_secs(3),
            startup_cpu: Duration::from_secs(4),
            connector_start: Duration::from_secs(2),
            first_row: Duration::from_millis(500),
            load: Duration::from_secs(load),
            cpu: Duration::from_secs(cpu),
            pg_cpu: Duration::from_secs(2),
            peak_rss: 1 << 30,
        };
        let peer = Peer {
            users: 200_000,
            bytes: 435_000_000,
            partitions: 6,
            runs: vec![PeerRun {
                setup: Setup::defaults(),
                jvm: "java-17-openjdk-amd64 17.0.15".into(),
                reps: vec![rep(20, 18), rep(10, 20), rep(16, 16)],
            }],
        };
        let text = render(&peer);
        let row = text
            .lines()
            .find(|l| l.starts_with("| documented defaults"))
            .unwrap();
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells[1], "java-17-openjdk-amd64 17.0.15");
        assert_eq!(cells[2], "12500 (10000–20000)", "users/s");
        assert_eq!(cells[3], "1.00 (0.90–2.00)", "Connect cores");
        assert_eq!(
            cells[4], "90.0 (80.0–100.0) ms",
            "Connect CPU per 1,000 users"
        );
        assert_eq!(cells[5], "1024 (1024–1024) MB");
        assert_eq!(
            cells[7], "10.0 (10.0–10.0) ms",
            "PostgreSQL CPU per 1,000 users"
        );
        assert!(text.contains("200000 users, 435.0 MB"));
    }
}
