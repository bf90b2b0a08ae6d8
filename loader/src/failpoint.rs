//! Crash injection for the fault suite: `ETL_FAILPOINTS=after-db-commit=0.3,after-sinks=0.2`
//! makes the process abort (as abruptly as `kill -9`) at the named point with that probability.
//! Unset in production, where each check is one relaxed load of an already-parsed empty list.
//!
//! Points: `mid-batch` (rows inserted, transaction open), `after-db-commit` (rows and ledger
//! committed, Parquet not yet moved into place), `after-sinks` (both sinks hold the batch,
//! offsets not yet committed).

use rand::Rng;
use std::sync::OnceLock;

static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();

fn points() -> &'static [(String, f64)] {
    POINTS.get_or_init(|| {
        std::env::var("ETL_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect()
    })
}

/// Aborts the process here if `name` is armed and the dice say so.
pub fn hit(name: &str) {
    if let Some((_, p)) = points().iter().find(|(k, _)| k == name)
        && rand::rng().random_bool(p.clamp(0.0, 1.0))
    {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}
