//! The loader: consume raw randomuser responses from Kafka and load them into PostgreSQL and
//! Parquet, effectively once, committing offsets only after both sinks hold the batch.
//!
//! - [`config`]: `loader run` / `loader migrate`, typed and validated.
//! - [`batch`]: gathering records by count and age; decoding into loadable vs poison.
//! - [`transform`]: the pure 1.4-response → user-rows function.
//! - [`sink`]: PostgreSQL + Parquet behind one ledgered write; start-up recovery.
//! - [`consumer`]: client settings, rebalance callbacks as ordered events, the offset commit.
//! - [`dlq`]: the dead-letter topic.
//! - [`app`]: builds the clients and the status endpoint and runs the pipeline, bounded on shutdown.
//! - [`pipeline`]: the consume → batch → decode → dead-letter → write → commit loop.
//! - [`backfill`]: a bounded range read and its progress.
//! - [`failpoint`]: crash injection for the fault suite (off unless `ETL_FAILPOINTS` is set).
//! - [`replay`]: positions, group offsets and replay plans (`loader replay|status|backfill`).
//! - [`commands`]: `loader replay`, `status` and `backfill`.
//! - [`migrate`]: applying and verifying migrations.
//! - [`metrics`]: the `etl_loader_*` series.

pub mod app;
pub mod backfill;
pub mod batch;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod failpoint;
pub mod metrics;
pub mod migrate;
pub mod pipeline;
pub mod replay;
pub mod sink;
pub mod transform;

pub use app::{Application, RunSummary};
pub use config::{Cli, Command, MigrateConfig, RunConfig};
