//! Crash injection for the fault suite: `ETL_FAILPOINTS=after-db-commit=0.3,after-sinks=0.2`
//! makes the process abort (as abruptly as `kill -9`) at the named point with that probability;
//! `mid-batch=stop` makes it stop itself (`SIGSTOP`, as a paused container or a stalled VM would)
//! the first time it gets there, holding whatever it holds, until someone sends `SIGCONT`;
//! `after-sinks=hang` blocks the thread that gets there for good (a deadlock in our own code),
//! while the rest of the process — its status endpoint — goes on.
//! Unset in production, where each check is one relaxed load of an already-parsed empty list.
//!
//! Points: `mid-batch` (rows inserted, transaction open), `after-db-commit` (rows and ledger
//! committed, Parquet not yet moved into place), `after-sinks` (both sinks hold the batch,
//! offsets not yet committed), `after-roll-claim` (a roll's files claimed in the ledger),
//! `after-object-write` (a file's object in the store, not yet in its table; and
//! `after-processed-object-write`, the same for processed files only),
//! `after-table-commit` (the table's commit made, the ledger not yet told),
//! `after-compaction-register` (a compaction's files registered in the ledger, nothing built), `before-roll-close` (shutting down: the group left, the open
//! Parquet rolls not yet closed).

use rand::Rng;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    /// Abort with this probability.
    Abort(f64),
    /// Stop the process, once.
    Stop,
    /// Block the calling thread forever.
    Hang,
}

static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
static STOPPED: AtomicBool = AtomicBool::new(false);

fn points() -> &'static [(String, Action)] {
    POINTS.get_or_init(|| {
        std::env::var("ETL_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                let action = match v.trim() {
                    "stop" => Action::Stop,
                    "hang" => Action::Hang,
                    p => Action::Abort(p.parse().ok()?),
                };
                Some((k.trim().to_string(), action))
            })
            .collect()
    })
}

/// Aborts, stops or hangs the process here if `name` is armed (and, to abort, the dice say so).
pub fn hit(name: &str) {
    match points().iter().find(|(k, _)| k == name).map(|(_, a)| *a) {
        Some(Action::Abort(p)) if rand::rng().random_bool(p.clamp(0.0, 1.0)) => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Some(Action::Stop) if !STOPPED.swap(true, Ordering::SeqCst) => {
            eprintln!("failpoint {name}: stopping the process (SIGSTOP) until SIGCONT");
            let pid = std::process::id().to_string();
            // The process stops while `kill` runs and goes on where it was once continued.
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status();
            eprintln!("failpoint {name}: continued");
        }
        Some(Action::Hang) => {
            eprintln!("failpoint {name}: blocking this thread for good");
            loop {
                std::thread::park();
            }
        }
        _ => {}
    }
}
