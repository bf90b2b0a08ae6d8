//! `loader`: thin entry point; everything lives in the library so tests run the real thing.

use clap::Parser;
use loader::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    few_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loader: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli())
}

/// Two malloc arenas instead of glibc's eight per core, before any thread starts: with many,
/// memory a batch frees on one runtime thread is not reused by a roll on another, and a loader
/// that loaded 5,000-user responses and then rolled them held half as much again
/// (346 MiB against 233 MiB, `loader/tests/memory.rs`). Same as `MALLOC_ARENA_MAX=2`, which
/// still wins when set.
///
/// And buffers of 1 MiB or more (a batch's records, a row group, an upload part) get pages of
/// their own, handed back when freed, instead of glibc's threshold that grows to 32 MiB as
/// large buffers are freed, after which they stay in the heap: a loader building 128 MiB rolls
/// during a long load grew from 102 to 206 MB (`bench --volume-only`, BENCHMARKS.md). Same as
/// `MALLOC_MMAP_THRESHOLD_=1048576`, which still wins when set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn few_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists,
    // as glibc asks.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn few_malloc_arenas() {}

async fn cli() -> ExitCode {
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Run(c) => &c.config.log,
        Command::Migrate(c) => &c.log,
        Command::Replay(c) => &c.log,
        Command::Status(c) => &c.log,
        Command::Backfill(c) => &c.run.log,
        Command::Vacuum(c) => &c.log,
        Command::Compact(c) => &c.log,
    };
    let _guard = match etl_common::telemetry::init("loader", log) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("loader: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run(args) => run(args.into_config()).await,
        Command::Migrate(config) => migrate(config).await,
        Command::Replay(args) => loader::commands::replay(&args).await,
        Command::Status(args) => loader::commands::status(&args).await,
        Command::Backfill(args) => backfill(*args).await,
        Command::Vacuum(args) => loader::commands::vacuum(&args).await,
        Command::Compact(args) => loader::commands::compact(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "loader failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: loader::RunConfig) -> anyhow::Result<()> {
    let shutdown = etl_common::shutdown::on_signal();
    let app = loader::Application::build(config).await?;
    let summary = app.run(shutdown).await?;
    tracing::info!(?summary, "loader stopped");
    Ok(())
}

async fn backfill(args: loader::config::BackfillArgs) -> anyhow::Result<()> {
    let shutdown = etl_common::shutdown::on_signal();
    let app = loader::commands::backfill_app(args).await?;
    let summary = app.run(shutdown).await?;
    tracing::info!(?summary, "backfill finished");
    println!(
        "backfill finished: {} records read, {} loaded, {} already loaded, {} dead-lettered",
        summary.consumed, summary.loaded, summary.duplicates, summary.dead_lettered
    );
    Ok(())
}

async fn migrate(config: loader::MigrateConfig) -> anyhow::Result<()> {
    loader::migrate::run(&config).await
}
