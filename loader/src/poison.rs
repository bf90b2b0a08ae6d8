//! Poison: a record the pipeline will not load, and why. It goes to the dead-letter topic with
//! its reason ([`crate::dlq`]) and never holds up its partition.

use crate::batch::SourceRecord;
use crate::transform::TransformError;

/// A record that did not, and why.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The record.
    pub source: SourceRecord,
    /// The reason.
    pub error: PoisonReason,
}

/// Why a record goes to the dead-letter topic instead of the sinks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    /// The transform refused it.
    #[error(transparent)]
    Transform(#[from] TransformError),
    /// Transformed, but PostgreSQL refused its values (a data error, not an outage).
    #[error("PostgreSQL refused the record's data: {0}")]
    RejectedBySink(String),
    /// A record with the same identity but other bytes was loaded before: which one is right
    /// is for a person to decide, and the first one stays.
    #[error("{record_key} was loaded before with other bytes (SHA-256 {loaded}, this one {this})")]
    Conflict {
        /// The shared identity.
        record_key: String,
        /// Digest of the loaded record's payload, hex.
        loaded: String,
        /// Digest of this record's payload, hex.
        this: String,
    },
}

impl PoisonReason {
    /// The `kind` header / metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            PoisonReason::Transform(e) => e.kind(),
            PoisonReason::RejectedBySink(_) => "rejected_by_sink",
            PoisonReason::Conflict { .. } => "conflict",
        }
    }
}
