//! The loader: consume raw randomuser responses from Kafka and load them into PostgreSQL and
//! Parquet, effectively once, committing offsets only after both sinks hold the batch.
//!
//! - [`config`]: `loader run` / `loader migrate`, typed and validated.
//! - [`batch`]: gathering records by count and age; decoding into loadable vs poison.
//! - [`transform`]: the pure 1.4-response → user-rows function.
//! - [`sink`]: PostgreSQL + Parquet behind one ledgered write; start-up recovery.
//! - [`consumer`]: rebalance callbacks as ordered events for the run loop.
//! - [`dlq`]: the dead-letter topic.
//! - [`app`]: the consume → batch → write → commit loop, rebalances and shutdown.
//! - [`failpoint`]: crash injection for the fault suite (off unless `ETL_FAILPOINTS` is set).
//! - [`replay`]: positions, group offsets and replay plans (`loader replay|status|backfill`).
//! - [`commands`]: `loader replay`, `status` and `backfill`.
//! - [`migrate`]: applying and verifying migrations.
//! - [`metrics`]: the `etl_loader_*` series.

pub mod app;
pub mod batch;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod failpoint;
pub mod metrics;
pub mod migrate;
pub mod replay;
pub mod sink;
pub mod transform;

pub use app::{Application, RunSummary};
pub use config::{Cli, Command, MigrateConfig, RunConfig};
