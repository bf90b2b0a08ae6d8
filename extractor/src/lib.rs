//! The extractor: poll randomuser.me on a schedule and publish each accepted raw response to
//! Kafka, at least once and never twice from our own retries.
//!
//! - [`config`]: the typed, validated config (clap + env).
//! - [`breaker`]: the circuit breaker in front of the API.
//! - [`source`]: one HTTP fetch and the verdict on its answer (accept or a classified error).
//! - [`publish`]: the idempotent producer and the raw-message contract.
//! - [`app`]: the schedule, retries, bounded in-flight backlog and graceful shutdown.
//! - [`topic`]: how large a record `EXTRACT_RESULTS` makes, for the start-up check of the topic.
//! - [`metrics`]: the `etl_extractor_*` series.

pub mod app;
pub mod breaker;
pub mod config;
pub mod metrics;
pub mod publish;
pub mod source;
pub mod topic;

pub use app::{Application, RunSummary};
pub use config::Config;
