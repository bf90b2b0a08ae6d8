//! The loader: consume raw randomuser responses from Kafka and load them into PostgreSQL and
//! Parquet, effectively once: offsets are committed once a batch is in PostgreSQL, whose ledger
//! then holds its records until they are rolled into Parquet files of a useful size.
//!
//! - [`config`]: `loader run` / `loader migrate`, typed and validated.
//! - [`batch`]: gathering records by count and age; decoding into loadable vs poison.
//! - [`poison`]: a record that will not load, and why (for the dead-letter topic).
//! - [`transform`]: the pure 1.4-response → user-rows function, and a record's identity.
//! - [`rows`]: the raw and processed row shapes, each declared once for both sinks.
//! - [`sink`]: the PostgreSQL write, the Parquet rolls and ledger, the stores (local or bucket).
//! - [`roller`]: the task that rolls due Parquet files and sweeps unpublished ones.
//! - [`consumer`]: client settings, rebalance callbacks as ordered events, the offset commit.
//! - [`dlq`]: the dead-letter topic.
//! - [`app`]: builds the clients and the status endpoint and runs the pipeline, bounded on shutdown.
//! - [`pipeline`]: the consume → batch → decode → dead-letter → write → commit loop.
//! - [`backfill`]: a bounded range read and its progress.
//! - [`failpoint`]: crash injection for the fault suite (off unless `ETL_FAILPOINTS` is set).
//! - [`replay`]: positions, group offsets and replay plans (`loader replay|status|backfill`).
//! - [`commands`]: `loader replay`, `status` and `backfill`.
//! - [`migrate`]: applying and verifying migrations.
//! - [`events`]: telemetry as typed events (log line, metrics, readiness, run summary at once).
//! - [`metrics`]: the `etl_loader_*` series.

pub mod app;
pub mod backfill;
pub mod batch;
pub mod commands;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod events;
pub mod failpoint;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod pipeline;
pub mod poison;
pub mod priority;
pub mod replay;
pub mod roller;
pub mod rows;
pub mod sink;
pub mod transform;

pub use app::Application;
pub use config::{Cli, Command, MigrateConfig, RunConfig};
pub use events::RunSummary;
