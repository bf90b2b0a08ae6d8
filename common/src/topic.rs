//! The topic a service writes to, checked at start: it exists (or is created with the project's
//! settings), and its `max.message.bytes` holds the largest record the service will write.
//!
//! Without the check, a topic made by broker auto-creation (about 1 MB per record) fails only at
//! the first large record, after the work that produced it (a 5,000-user fetch) was done, with a
//! `MessageSizeTooLarge` that names neither the topic's limit nor the setting behind the record's
//! size. The chart's topics Job and compose's `topics` service create the topics beforehand; the
//! services' own creation is the fallback for everywhere else (a plain broker, a fresh cluster).
//!
//! A broker outage is waited out, like every other outage at start. A cluster that refuses to
//! describe the topic's configuration (ACLs without `DESCRIBE_CONFIGS`) is not a reason to stop:
//! the check is skipped with a warning naming the permission, and a record too large for the
//! topic is still refused at produce time, with the topic and the setting in the error.

use crate::backoff::Backoff;
use crate::retry::{self, GaveUp, Transient};
use crate::status::Liveness;
use anyhow::Context;
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The topic setting the check reads and the project sets on the topics it creates.
pub const MAX_MESSAGE_BYTES_CONFIG: &str = "max.message.bytes";

/// Room for what a record carries beside its payload: the key, the headers and the record
/// batch's framing (61 bytes of batch header plus a few bytes per record). The extractor's seven
/// headers and key take about 300 bytes plus its `RANDOMUSER_URL`; a dead letter's eleven headers
/// hold an error message of a few hundred bytes and the source record's key. 16 KiB holds all of
/// them with a wide margin, and is under the 1 MiB that `contract::MAX_MESSAGE_BYTES` leaves
/// above `contract::MAX_PAYLOAD_BYTES`, so the project's own topics pass the check.
pub const RECORD_OVERHEAD_BYTES: usize = 16 << 10;

/// How a service creates the topic it writes to when the topic is absent.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Create the topic this service writes to when it is absent (the extractor its
    /// KAFKA_TOPIC, the loader its KAFKA_DLQ_TOPIC), with max.message.bytes set to the
    /// project's limit. `false` where topics are owned elsewhere (a platform team, Terraform,
    /// Strimzi): an absent topic then stops the service at start, named.
    #[arg(
        long = "kafka-create-topics",
        env = "KAFKA_CREATE_TOPICS",
        value_name = "KAFKA_CREATE_TOPICS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub create: bool,
    /// Replication factor of a topic this service creates; -1 takes the broker's
    /// `default.replication.factor` (a one-broker development cluster and a production one
    /// both get what they are set up for).
    #[arg(
        long = "kafka-topic-replication-factor",
        env = "KAFKA_TOPIC_REPLICATION_FACTOR",
        value_name = "KAFKA_TOPIC_REPLICATION_FACTOR",
        default_value_t = -1,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1..=1000)
    )]
    pub replication_factor: i32,
}

impl CreateArgs {
    /// Checks what clap cannot: 0 is in the parser's range but is no replication factor.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.replication_factor == 0 {
            anyhow::bail!(
                "KAFKA_TOPIC_REPLICATION_FACTOR must be -1 (the broker's default) or at least 1"
            );
        }
        Ok(())
    }

    /// Defaults (create, the broker's replication factor), for tests and tools.
    pub fn defaults() -> Self {
        Self {
            create: true,
            replication_factor: -1,
        }
    }
}

/// The setting that decides how large a service's records get, and that size as a function of
/// it: what the refusal names and what it proposes instead.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// The variable, e.g. `EXTRACT_RESULTS`.
    pub variable: &'static str,
    /// Its value.
    pub value: u64,
    /// The largest record (overhead included) the service writes for a value of the variable;
    /// must not decrease as the value grows.
    pub record_bytes: fn(u64) -> usize,
}

impl Sizing {
    /// The largest record at the configured value.
    pub fn largest_record(&self) -> usize {
        (self.record_bytes)(self.value)
    }

    /// The largest value, up to the configured one, whose records fit in `limit`; `None` when
    /// not even 1 does.
    pub fn largest_value_within(&self, limit: usize) -> Option<u64> {
        let (mut fits, mut too_big) = (0u64, self.value.saturating_add(1));
        while too_big - fits > 1 {
            let mid = fits + (too_big - fits) / 2;
            if (self.record_bytes)(mid) <= limit {
                fits = mid;
            } else {
                too_big = mid;
            }
        }
        (fits > 0).then_some(fits)
    }

    /// The refusal for a topic whose `limit` is below the largest record, or `None` if it fits.
    pub fn refusal(&self, topic: &str, limit: usize) -> Option<String> {
        let need = self.largest_record();
        if need <= limit {
            return None;
        }
        let lower = match self.largest_value_within(limit) {
            Some(v) => format!("or lower {} to {v} or less", self.variable),
            None => format!("(no value of {} fits its limit)", self.variable),
        };
        Some(format!(
            "topic {topic}: its max.message.bytes is {limit} bytes, but with {}={} a record can \
             be up to {need} bytes; raise the topic's max.message.bytes to at least {need} (the \
             project creates its topics with {}) {lower}",
            self.variable,
            self.value,
            crate::contract::MAX_MESSAGE_BYTES,
        ))
    }
}

/// What a service needs of its topic.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The topic.
    pub topic: String,
    /// The variable naming the topic (`KAFKA_TOPIC`, `KAFKA_DLQ_TOPIC`), for the errors.
    pub topic_variable: &'static str,
    /// Partitions if it is created.
    pub partitions: i32,
    /// Whether to create it when absent, and with which replication factor.
    pub create: CreateArgs,
    /// How large its records get.
    pub sizing: Sizing,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The service created the topic.
    pub created: bool,
    /// The topic's `max.message.bytes`; `None` when the cluster would not say (ACLs).
    pub limit: Option<usize>,
}

/// Why one attempt at the check did not end it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The broker did not answer: waited out.
    #[error("{0:#}")]
    Outage(anyhow::Error),
    /// The topic cannot be used as it is: the service must not start.
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

impl Transient for CheckError {
    fn is_transient(&self) -> bool {
        matches!(self, CheckError::Outage(_))
    }
}

/// The admin client the check uses. It never auto-creates a topic by asking about it (a topic
/// the broker made with its own ~1 MB default is the problem the check exists for).
#[derive(Clone)]
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
}

impl TopicAdmin {
    /// Creates the client; no connection is made until the check runs.
    pub fn new(kafka: &crate::kafka::KafkaArgs) -> anyhow::Result<Self> {
        let mut cfg = kafka.client_config()?;
        cfg.set("allow.auto.create.topics", "false");
        let admin = cfg
            .create()
            .context("cannot create the Kafka admin client")?;
        Ok(Self {
            admin: Arc::new(admin),
        })
    }

    /// Whether the topic exists, from the cluster's metadata (the only sure answer: a
    /// DescribeConfigs of an absent topic is answered with an empty configuration by KRaft
    /// brokers, not an error).
    async fn presence(&self, topic: &str) -> Result<Presence, CheckError> {
        let (admin, name) = (self.admin.clone(), topic.to_string());
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&name), REQUEST_TIMEOUT)
        })
        .await
        .map_err(|e| {
            outage(format!(
                "the metadata request for topic {topic} failed: {e}"
            ))
        })?
        .map_err(|e| outage(format!("cannot read the metadata of topic {topic}: {e}")))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(Presence::Absent);
        };
        Ok(match found.error().map(RDKafkaErrorCode::from) {
            None => Presence::Present,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Presence::Absent,
            Some(code) if is_denied(code) => Presence::Denied(code),
            // Leaderless for a moment (just created, a broker restarting): it exists.
            Some(_) => Presence::Present,
        })
    }
}

enum Presence {
    Present,
    Absent,
    Denied(RDKafkaErrorCode),
}

/// Checks (and if need be creates) `wanted.topic`, waiting out broker outages with `backoff`
/// (`on_retry` hears of each), until it is settled or `cancel` fires.
pub async fn ensure(
    admin: &TopicAdmin,
    wanted: &Wanted,
    cancel: &CancellationToken,
    backoff: Backoff,
    mut on_retry: impl FnMut(&anyhow::Error, Duration),
) -> Result<Checked, GaveUp<CheckError>> {
    let created = AtomicBool::new(false);
    retry::retry(
        cancel,
        backoff,
        || check_once(admin, wanted, &created),
        |e, delay| {
            if let CheckError::Outage(e) = e {
                on_retry(e, delay);
            }
        },
    )
    .await
}

/// [`ensure`] as a service's start-up runs it: the loop beating (`liveness`) while a broker
/// outage is waited out (`on_retry` hears of each attempt), what was found logged. `Ok(None)`
/// when shutdown came first; an error when the topic cannot take the service's records.
pub async fn check(
    admin: &TopicAdmin,
    wanted: &Wanted,
    shutdown: &CancellationToken,
    backoff: Backoff,
    liveness: &Liveness,
    on_retry: impl FnMut(&anyhow::Error, Duration),
) -> anyhow::Result<Option<Checked>> {
    let ensured = ensure(admin, wanted, shutdown, backoff, on_retry);
    match liveness
        .waiting(retry::until_cancelled(shutdown, ensured))
        .await
    {
        Ok(Ok(checked)) => {
            tracing::info!(
                topic = %wanted.topic,
                created = checked.created,
                max_message_bytes = checked.limit,
                largest_record = wanted.sizing.largest_record(),
                "topic checked"
            );
            Ok(Some(checked))
        }
        Ok(Err(GaveUp::Permanent(e))) => Err(anyhow::Error::new(e)),
        Ok(Err(GaveUp::Cancelled)) | Err(_) => Ok(None),
    }
}

/// How long one admin request may take before it counts as an outage and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn check_once(
    admin: &TopicAdmin,
    wanted: &Wanted,
    created: &AtomicBool,
) -> Result<Checked, CheckError> {
    let topic = wanted.topic.as_str();
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    match admin.presence(topic).await? {
        Presence::Present => {}
        Presence::Denied(code) => {
            tracing::warn!(
                topic,
                error = %code,
                "not allowed to see the topic (missing DESCRIBE on it): whether it exists and its max.message.bytes are not checked; producing to it will say"
            );
            return Ok(Checked {
                created: false,
                limit: None,
            });
        }
        // Created by an earlier attempt, not yet known to the broker that answered.
        Presence::Absent if created.load(Ordering::Relaxed) => {
            return Err(outage(format!(
                "topic {topic} was created but the broker does not know it yet"
            )));
        }
        Presence::Absent if !wanted.create.create => {
            return Err(CheckError::Refused(anyhow::anyhow!(
                "topic {topic} ({}) does not exist and KAFKA_CREATE_TOPICS=false: create it \
                 (with max.message.bytes={}) or let the service create it",
                wanted.topic_variable,
                crate::contract::MAX_MESSAGE_BYTES,
            )));
        }
        Presence::Absent => {
            create(admin, wanted, &opts).await?;
            created.store(true, Ordering::Relaxed);
        }
    }
    let created = created.load(Ordering::Relaxed);
    // Creation is asynchronous: the topic's configuration reaches every broker a moment later.
    let mut described = describe(admin, topic, &opts).await?;
    for _ in 0..PROPAGATION_POLLS {
        if described != Ok(None) {
            break;
        }
        tokio::time::sleep(PROPAGATION_POLL).await;
        described = describe(admin, topic, &opts).await?;
    }
    match described {
        Ok(Some(limit)) => {
            if let Some(refusal) = wanted.sizing.refusal(topic, limit) {
                return Err(CheckError::Refused(anyhow::anyhow!(refusal)));
            }
            Ok(Checked {
                created,
                limit: Some(limit),
            })
        }
        Ok(None) => Err(outage(format!(
            "topic {topic}: the broker did not say its max.message.bytes"
        ))),
        Err(code) if is_denied(code) => {
            tracing::warn!(
                topic,
                error = %code,
                "not allowed to describe the topic's configuration (missing DESCRIBE_CONFIGS on the topic): its max.message.bytes is not checked; a record too large for it will be refused when it is produced"
            );
            Ok(Checked {
                created,
                limit: None,
            })
        }
        Err(code) => Err(outage(format!("cannot describe topic {topic}: {code}"))),
    }
}

/// How often, and how long apart, a topic just created is looked for before the attempt counts
/// as an outage (and is retried with the backoff).
const PROPAGATION_POLLS: u32 = 25;
const PROPAGATION_POLL: Duration = Duration::from_millis(200);

/// The topic's `max.message.bytes` (`None` while the broker does not have it yet), or the
/// broker's error for the topic (not allowed, say).
async fn describe(
    admin: &TopicAdmin,
    topic: &str,
    opts: &AdminOptions,
) -> Result<Result<Option<usize>, RDKafkaErrorCode>, CheckError> {
    let described = admin
        .admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], opts)
        .await
        .map_err(|e| outage(format!("cannot describe topic {topic}: {e}")))?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| outage(format!("the broker described nothing for topic {topic}")))?;
    let config = match resource {
        Ok(config) => config,
        Err(code) => return Ok(Err(code)),
    };
    let Some(limit) = config
        .get(MAX_MESSAGE_BYTES_CONFIG)
        .and_then(|e| e.value.as_deref())
    else {
        return Ok(Ok(None));
    };
    limit.parse().map(|l| Ok(Some(l))).map_err(|_| {
        outage(format!(
            "topic {topic}: max.message.bytes={limit} is not a number"
        ))
    })
}

async fn create(
    admin: &TopicAdmin,
    wanted: &Wanted,
    opts: &AdminOptions,
) -> Result<(), CheckError> {
    let topic = wanted.topic.as_str();
    let limit = crate::contract::MAX_MESSAGE_BYTES.to_string();
    let new = NewTopic::new(
        topic,
        wanted.partitions,
        TopicReplication::Fixed(wanted.create.replication_factor),
    )
    .set(MAX_MESSAGE_BYTES_CONFIG, &limit);
    let results = admin
        .admin
        .create_topics(&[new], opts)
        .await
        .map_err(|e| outage(format!("cannot create topic {topic}: {e}")))?;
    for result in results {
        match result {
            Ok(_) => {
                tracing::info!(
                    topic,
                    partitions = wanted.partitions,
                    replication_factor = wanted.create.replication_factor,
                    max_message_bytes = crate::contract::MAX_MESSAGE_BYTES,
                    "topic created"
                );
            }
            // Another replica (or the topics Job) was first: checked like any existing topic.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) if is_denied(code) => {
                return Err(CheckError::Refused(anyhow::anyhow!(
                    "topic {topic} ({}) does not exist and this client may not create it \
                     (missing CREATE on the topic or the cluster: {code}); create it with \
                     max.message.bytes={limit}, or grant CREATE",
                    wanted.topic_variable,
                )));
            }
            Err((
                _,
                code @ (RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidTopic),
            )) => {
                return Err(CheckError::Refused(anyhow::anyhow!(
                    "cannot create topic {topic} ({}) with {} partitions, replication factor {} \
                     (KAFKA_TOPIC_REPLICATION_FACTOR) and max.message.bytes={limit}: the broker \
                     refused it ({code})",
                    wanted.topic_variable,
                    wanted.partitions,
                    wanted.create.replication_factor,
                )));
            }
            Err((_, code)) => {
                return Err(outage(format!("cannot create topic {topic}: {code}")));
            }
        }
    }
    Ok(())
}

fn outage(message: String) -> CheckError {
    CheckError::Outage(anyhow::anyhow!(message))
}

fn is_denied(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
    )
}

#[cfg(test)]
mod tests;
