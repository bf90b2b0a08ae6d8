//! What the extractor and the loader share.
//!
//! The two services meet only at the Kafka topic; this crate holds the shape of what crosses it
//! ([`contract`]) and the operational plumbing both need to behave the same way in production:
//! typed config helpers, logging, the status/metrics endpoint, shutdown, retry pacing and the
//! one retry loop, and the start-up check of the topic a service writes to.

pub mod backoff;
pub mod config;
pub mod contract;
pub mod kafka;
pub mod retry;
pub mod shutdown;
pub mod status;
pub mod table;
pub mod telemetry;
pub mod topic;
