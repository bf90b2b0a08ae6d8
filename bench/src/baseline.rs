//! The loader as it was: another build of `loader` (`--baseline-bin-dir`, e.g. `main` before a
//! change) run at its defaults on the same topic after each COPY/loader pair ([`crate::reps`]),
//! so a change's effect on what the database spends per user is measured in the same run as the
//! change, not against a figure from another day.

use crate::loader_run::LoaderRun;
use crate::reps::Repeated;
use crate::stats::{Spread, show};
use std::fmt::Write as _;

/// One figure of a run, `None` where not measured.
type Figure = fn(&LoaderRun) -> Option<f64>;

fn pg_ms(r: &LoaderRun) -> Option<f64> {
    r.rate.pg_cpu_per_1000().map(|s| s * 1000.0)
}

fn cpu_ms(r: &LoaderRun) -> Option<f64> {
    Some(r.cpu_per_1000() * 1000.0)
}

fn users(r: &LoaderRun) -> Option<f64> {
    Some(r.rate.users_per_sec())
}

fn rss_mb(r: &LoaderRun) -> Option<f64> {
    Some(r.peak_rss as f64 / 1024.0 / 1024.0)
}

fn values(runs: &[LoaderRun], f: Figure) -> Vec<f64> {
    runs.iter().filter_map(f).collect()
}

/// Median now ÷ median then, two decimals.
fn ratio(now: &[LoaderRun], then: &[LoaderRun], f: Figure) -> String {
    match (Spread::of(&values(now, f)), Spread::of(&values(then, f))) {
        (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}", a.median / b.median),
        _ => "—".to_string(),
    }
}

/// The comparison lines (empty without a baseline): the baseline's medians (min–max) and the
/// defaults' beside them, and now ÷ then.
pub fn render(r: &Repeated, label: &str) -> String {
    let (now, then) = (&r.loaders, &r.baselines);
    if then.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    let both = |f: Figure, decimals: usize| {
        (
            show(&values(then, f), decimals),
            show(&values(now, f), decimals),
        )
    };
    let _ = writeln!(
        s,
        "- against {label} (`--baseline-bin-dir`: its defaults, the same topic, run after each pair; medians (min–max) of {}):",
        then.len()
    );
    let (a, b) = both(pg_ms, 1);
    let _ = writeln!(
        s,
        "  - PostgreSQL CPU per 1,000 users: {a} ms then, {b} ms now — now ÷ then {}",
        ratio(now, then, pg_ms)
    );
    let (a, b) = both(users, 0);
    let (c, d) = both(cpu_ms, 1);
    let _ = writeln!(
        s,
        "  - users/s: {a} then, {b} now — now ÷ then {}; loader CPU per 1,000 users: {c} ms then, {d} ms now",
        ratio(now, then, users)
    );
    let (a, b) = both(rss_mb, 0);
    let _ = writeln!(s, "  - peak RSS with closing: {a} MB then, {b} MB now");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rate;
    use std::time::Duration;

    fn run(users_per_sec: f64, pg_cores: f64) -> LoaderRun {
        LoaderRun {
            settings: Vec::new(),
            rate: Rate {
                users: 10_000,
                bytes: 0,
                elapsed: Duration::from_secs_f64(10_000.0 / users_per_sec),
                pg_cores: Some(pg_cores),
            },
            wall: Duration::from_secs(1),
            peak_rss: 100 << 20,
            loading_rss: 90 << 20,
            cpu: Duration::from_secs(1),
            close: Duration::from_secs(1),
            parquet_files: 2,
        }
    }

    #[test]
    fn medians_then_and_now_and_their_ratio() {
        let r = Repeated {
            ceilings: Vec::new(),
            // 10,000 users in 1 s at 0.5 cores: 50 ms of PostgreSQL per 1,000 users.
            loaders: vec![run(10_000.0, 0.5), run(10_000.0, 0.4), run(10_000.0, 0.6)],
            // 10,000 users in 2 s at 0.5 cores: 100 ms.
            baselines: vec![run(5_000.0, 0.5), run(5_000.0, 0.5), run(5_000.0, 0.5)],
        };
        let text = render(&r, "main before");
        assert!(
            text.contains(
                "PostgreSQL CPU per 1,000 users: 100.0 (100.0–100.0) ms then, 50.0 (40.0–60.0) ms now — now ÷ then 0.50"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "users/s: 5000 (5000–5000) then, 10000 (10000–10000) now — now ÷ then 2.00"
            ),
            "{text}"
        );
        let none = Repeated {
            baselines: Vec::new(),
            ..r
        };
        assert_eq!(render(&none, "x"), "");
    }
}
