//! Logging to stdout and to daily-rolled files in `LOG_DIR`, as text or JSON.

use crate::config::{LogArgs, LogFormat};
use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Keep the returned guard alive until exit: dropping it flushes
/// the file writer.
pub fn init(service: &str, args: &LogArgs) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = EnvFilter::try_new(&args.level)
        .with_context(|| format!("LOG_LEVEL={}: not a valid filter", args.level))?;
    let (file_writer, guard) = if args.dir.is_empty() {
        (None, None)
    } else {
        std::fs::create_dir_all(&args.dir).map_err(|e| {
            anyhow::anyhow!("LOG_DIR={}: cannot create the log directory: {e}", args.dir)
        })?;
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix(service)
            .filename_suffix("log")
            .build(&args.dir)
            .with_context(|| format!("LOG_DIR={}: cannot open a log file", args.dir))?;
        let (writer, guard) = tracing_appender::non_blocking(appender);
        (Some(writer), Some(guard))
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.format {
        LogFormat::Text => registry
            .with(fmt::layer())
            .with(file_writer.map(|w| fmt::layer().with_ansi(false).with_writer(w)))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json())
            .with(file_writer.map(|w| fmt::layer().json().with_writer(w)))
            .try_init(),
    };
    result.context("cannot install the logger")?;
    Ok(guard)
}
