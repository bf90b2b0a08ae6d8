//! The figures the targets rest on, repeated: `--reps` pairs of PostgreSQL's COPY ceiling and the
//! loader at defaults, interleaved (COPY, loader, COPY, loader, …) so that drift on a shared
//! machine (another build starting, the page cache filling) lands on both sides alike. Each
//! figure is reported as the median with its range, and loader ÷ COPY is taken per pair, each
//! loader run against the COPY run just before it.

use crate::loader_run::{self, LoaderRun};
use crate::preload::Topic;
use crate::stats::{self, Spread};
use crate::{Config, Rate, ceiling};
use std::path::Path;

/// Interleaved repetitions of the ceiling and the loader at defaults, in the order run.
#[derive(Debug, Clone)]
pub struct Repeated {
    /// PostgreSQL COPY of the loader's rows, one per pair.
    pub ceilings: Vec<Rate>,
    /// The loader at default settings, one per pair, each run just after its COPY.
    pub loaders: Vec<LoaderRun>,
    /// The `--baseline-bin-dir` loader at its defaults, run just after each pair (none without
    /// it).
    pub baselines: Vec<LoaderRun>,
}

/// Runs `config.reps` pairs over the preloaded topic.
pub async fn measure(
    config: &Config,
    bin_dir: &Path,
    topic_name: &str,
    topic: &Topic,
) -> anyhow::Result<Repeated> {
    let reps = config.reps.max(1);
    let mut r = Repeated {
        ceilings: Vec::with_capacity(reps),
        loaders: Vec::with_capacity(reps),
        baselines: Vec::new(),
    };
    for i in 1..=reps {
        let c = ceiling::measure(&config.database_url, topic_name, topic, 1).await?;
        eprintln!(
            "[bench] repetition {i}/{reps}: COPY ceiling {:.0} users/s",
            c.users_per_sec()
        );
        let l = loader_run::measure(config, bin_dir, topic_name, topic, &[]).await?;
        eprintln!(
            "[bench] repetition {i}/{reps}: loader (defaults) {:.0} users/s, {:.2} of the COPY before it",
            l.rate.users_per_sec(),
            l.rate.users_per_sec() / c.users_per_sec().max(1e-9)
        );
        r.ceilings.push(c);
        r.loaders.push(l);
        if let Some(dir) = &config.baseline_bin_dir {
            let b = loader_run::measure(config, dir, topic_name, topic, &[]).await?;
            eprintln!(
                "[bench] repetition {i}/{reps}: baseline loader ({}) {:.0} users/s",
                config.baseline_label,
                b.rate.users_per_sec()
            );
            r.baselines.push(b);
        }
    }
    Ok(r)
}

impl Repeated {
    /// Loader ÷ COPY in users/s, per pair, in the order run.
    pub fn ratios(&self) -> Vec<f64> {
        self.ceilings
            .iter()
            .zip(&self.loaders)
            .map(|(c, l)| l.rate.users_per_sec() / c.users_per_sec().max(1e-9))
            .collect()
    }

    /// The COPY run with the median users/s: the ceiling the single runs (best settings, the
    /// bucket, the naive loader) are compared with.
    pub fn median_ceiling(&self) -> &Rate {
        let v: Vec<f64> = self.ceilings.iter().map(Rate::users_per_sec).collect();
        &self.ceilings[stats::median_index(&v).unwrap_or(0)]
    }

    /// The loader run with the median users/s: the run at defaults the single runs are compared
    /// with.
    pub fn median_loader(&self) -> &LoaderRun {
        let v: Vec<f64> = self
            .loaders
            .iter()
            .map(|l| l.rate.users_per_sec())
            .collect();
        &self.loaders[stats::median_index(&v).unwrap_or(0)]
    }

    /// The spread of `f` over the COPY runs.
    pub fn ceiling(&self, f: impl Fn(&Rate) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = self.ceilings.iter().filter_map(f).collect();
        Spread::of(&v)
    }

    /// The spread of `f` over the loader runs.
    pub fn loader(&self, f: impl Fn(&LoaderRun) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = self.loaders.iter().filter_map(f).collect();
        Spread::of(&v)
    }

    /// The spread of loader ÷ COPY over the pairs.
    pub fn ratio(&self) -> Option<Spread> {
        Spread::of(&self.ratios())
    }

    /// The ceiling's and the defaults' rows of the main table (its columns: users/s, MB/s,
    /// time, closing, peak RSS, loader CPU, PostgreSQL CPU, each per 1,000 users), every cell
    /// `median (min–max)`.
    pub fn rows(&self) -> String {
        let n = self.ceilings.len();
        // `None` decimals: about three significant digits (the CPU per user columns).
        let show = |s: Option<Spread>, decimals: Option<usize>| {
            s.map_or(String::new(), |s| {
                s.show(decimals.unwrap_or_else(|| stats::decimals_for(s.median)))
            })
        };
        let c = |f: &dyn Fn(&Rate) -> Option<f64>, decimals| show(self.ceiling(f), decimals);
        let l = |f: &dyn Fn(&LoaderRun) -> Option<f64>, decimals| show(self.loader(f), decimals);
        let mib = |b: u64| Some(b as f64 / 1024.0 / 1024.0);
        let ms = |secs: Option<f64>| secs.map(|v| v * 1000.0);
        let files = self.loaders.iter().map(|l| l.parquet_files);
        let (fewest, most) = (files.clone().min().unwrap_or(0), files.max().unwrap_or(0));
        let files = if fewest == most {
            format!("{most} files")
        } else {
            format!("{fewest}–{most} files")
        };
        format!(
            "| PostgreSQL COPY (ceiling), median (min–max) of {n} | {} | {} | {} s | | | | {} | | {} ms |\n\
             | loader, defaults, median (min–max) of {n} | {} | {} | {} s | {} s ({files}) | {} / {} MB | {} | {} | {} ms | {} ms |\n",
            c(&|r| Some(r.users_per_sec()), Some(0)),
            c(&|r| Some(r.mb_per_sec()), Some(1)),
            c(&|r| Some(r.elapsed.as_secs_f64()), Some(2)),
            c(&|r| r.pg_cores, Some(2)),
            c(&|r| ms(r.pg_cpu_per_1000()), None),
            l(&|r| Some(r.rate.users_per_sec()), Some(0)),
            l(&|r| Some(r.rate.mb_per_sec()), Some(1)),
            l(&|r| Some(r.rate.elapsed.as_secs_f64()), Some(2)),
            l(&|r| Some(r.close.as_secs_f64()), Some(2)),
            l(&|r| mib(r.loading_rss), Some(0)),
            l(&|r| mib(r.peak_rss), Some(0)),
            l(&|r| Some(r.cores()), Some(2)),
            l(&|r| r.rate.pg_cores, Some(2)),
            l(&|r| ms(Some(r.cpu_per_1000())), None),
            l(&|r| ms(r.rate.pg_cpu_per_1000()), None),
        )
    }

    /// The line on loader ÷ COPY per pair, under the main table, as Markdown.
    pub fn render(&self) -> String {
        let ratios = self.ratios();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        format!(
            "- loader ÷ ceiling at defaults, per interleaved pair (each loader run against the COPY just before it): median {}; the pairs in the order run: {}\n",
            stats::show(&ratios, 2),
            each.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(users_per_sec: u64, pg_cores: f64) -> Rate {
        Rate {
            users: users_per_sec * 10,
            bytes: 0,
            elapsed: Duration::from_secs(10),
            pg_cores: Some(pg_cores),
        }
    }

    fn loader(users_per_sec: u64, rss_mib: u64) -> LoaderRun {
        LoaderRun {
            settings: Vec::new(),
            rate: rate(users_per_sec, 0.8),
            wall: Duration::from_secs(10),
            peak_rss: (rss_mib + 20) << 20,
            loading_rss: rss_mib << 20,
            cpu: Duration::from_secs(2),
            close: Duration::from_secs(3),
            parquet_files: 12,
        }
    }

    #[test]
    fn ratios_are_per_pair_and_the_medians_pick_the_middle_run() {
        // The noisy machine: the second pair ran slow on both sides.
        let r = Repeated {
            ceilings: vec![rate(8000, 1.0), rate(6000, 0.9), rate(10_000, 1.0)],
            loaders: vec![loader(5840, 96), loader(5220, 100), loader(8000, 90)],
            baselines: Vec::new(),
        };
        let ratios = r.ratios();
        assert_eq!(ratios.len(), 3);
        for (got, want) in ratios.iter().zip([0.73, 0.87, 0.80]) {
            assert!((got - want).abs() < 1e-9, "{ratios:?}");
        }
        assert_eq!(
            r.ratio().map(|s| s.show(2)).as_deref(),
            Some("0.80 (0.73–0.87)")
        );
        assert_eq!(r.median_ceiling().users, 80_000);
        assert_eq!(r.median_loader().rate.users, 58_400);
        // PostgreSQL at 1 core for 10 s over 80,000 users: 125 ms per 1,000.
        let pg = r.ceiling(Rate::pg_cpu_per_1000).unwrap();
        assert!((pg.median - 0.125).abs() < 1e-9, "{pg:?}");
        let rows = r.rows();
        assert_eq!(rows.lines().count(), 2, "{rows}");
        assert!(rows.contains("| 8000 (6000–10000) |"), "{rows}");
        assert!(
            rows.contains("| 96 (90–100) / 116 (110–120) MB |"),
            "{rows}"
        );
        assert!(rows.contains("125 (100–150) ms"), "{rows}");
        assert_eq!(
            rows.lines()
                .map(|l| l.matches('|').count())
                .collect::<Vec<_>>(),
            [11, 11]
        );
        assert!(r.render().contains("0.73, 0.87, 0.80"), "{}", r.render());
    }
}
