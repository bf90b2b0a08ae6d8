//! CPU and memory of processes, from `/proc`: the loader's own, and PostgreSQL's (every process
//! named `postgres`), so a run can say which side was busy.

use anyhow::Context;
use std::process::Command;
use std::time::Duration;

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (command name, user + system CPU ticks) of one process.
fn stat(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let (name, rest) = stat[open + 1..].rsplit_once(')')?;
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name.to_string(), ticks))
}

/// CPU time used so far by process `pid` (all its threads).
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let (_, ticks) = stat(&pid.to_string()).with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

/// Peak resident set (VmHWM) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmHWM:")
}

/// Resident set now (VmRSS) of process `pid`, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc status"))?;
    Ok(kb * 1024)
}

/// CPU ticks of every live `postgres` process, by pid: what [`postgres_cpu_since`] measures from.
pub type PgSnapshot = std::collections::BTreeMap<u32, u64>;

/// [`PgSnapshot`] now.
pub fn postgres_snapshot() -> PgSnapshot {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                    stat(&pid.to_string())
                        .filter(|(n, _)| n == "postgres")
                        .map(|(_, t)| (pid, t))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time the live `postgres` processes used since `snapshot`, each against its own earlier
/// reading (from zero if it started since): unlike a difference of two totals, a process that
/// exited in between (an autovacuum worker, a closed connection) cannot take its whole past off
/// the figure; what it used in between is missed all the same, so read it before closing the
/// connections whose work is measured.
pub fn postgres_cpu_since(snapshot: &PgSnapshot) -> Duration {
    let ticks: u64 = postgres_snapshot()
        .into_iter()
        .map(|(pid, t)| t.saturating_sub(snapshot.get(&pid).copied().unwrap_or(0)))
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// Cores busy on average: CPU time over wall time.
pub fn cores(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let before = cpu(me).unwrap();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu(me).unwrap() > before, "a busy loop uses CPU");
        assert!(peak_rss(me).unwrap() > 1 << 20);
        assert!(rss(me).unwrap() > 1 << 20 && rss(me).unwrap() <= peak_rss(me).unwrap());
        assert!(cpu(u32::MAX).is_err());
        assert!((cores(Duration::from_secs(1), Duration::from_secs(2)) - 0.5).abs() < 1e-9);
    }
}
