//! The loader's config: `loader run` and `loader migrate`, every field a flag with its env var.

use clap::{Args, Parser, Subcommand};
use etl_common::config::{HealthArgs, LogArgs, Secret, parse_duration, secret_from};
use etl_common::kafka::KafkaArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod parquet;
pub use parquet::{ParquetArgs, Upkeep, VacuumRetention};

/// Loads raw randomuser responses from Kafka into PostgreSQL and Parquet.
#[derive(Debug, Clone, Parser)]
#[command(name = "loader", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The loader's commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume the topic and load it (applies migrations first unless told not to).
    Run(Box<RunArgs>),
    /// Apply the database migrations (or, with --check, verify them) and exit.
    Migrate(MigrateConfig),
    /// Move a consumer group's offsets (dry run unless --execute) so the loader replays or skips.
    Replay(ReplayArgs),
    /// Show a consumer group's committed offsets, end offsets and lag.
    Status(StatusArgs),
    /// Load exactly a range of the topic, with its own consumer group, then exit.
    Backfill(Box<BackfillArgs>),
    /// Delete the lake's data files that no live table version holds, once past the retention.
    Vacuum(VacuumArgs),
    /// Rewrite the lake's small files as files of a roll's size (one commit each, no data
    /// change), then exit.
    Compact(CompactArgs),
}

/// `loader compact`.
#[derive(Debug, Clone, Args)]
pub struct CompactArgs {
    /// The database (the Parquet ledger).
    #[command(flatten)]
    pub db: DbArgs,
    /// Where the tables are, and the roll size a compacted file grows to
    /// (`PARQUET_ROLL_MAX_BYTES`).
    #[command(flatten)]
    pub lake: LakeArgs,
    /// List what would be compacted; change nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The lake, for the upkeep commands: the same flags and variables as `loader run`'s.
#[derive(Debug, Clone, Args)]
pub struct LakeArgs {
    /// Root of the tables when `PARQUET_URL` is not set.
    #[arg(
        long = "data-dir",
        env = "DATA_DIR",
        value_name = "DATA_DIR",
        default_value = "data"
    )]
    pub data_dir: PathBuf,
    /// Where the tables are.
    #[command(flatten)]
    pub parquet: ParquetArgs,
}

impl LakeArgs {
    /// The store, with `_FILE` secrets read.
    pub fn store(&self) -> anyhow::Result<crate::sink::store::Store> {
        self.parquet.store(&self.data_dir)
    }
}

/// `loader vacuum`.
#[derive(Debug, Clone, Args)]
pub struct VacuumArgs {
    /// Where the tables are.
    #[command(flatten)]
    pub lake: LakeArgs,
    /// What is kept.
    #[command(flatten)]
    pub retention: VacuumRetention,
    /// List what would be deleted; delete nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The loaders' consumer group: `--group` / `KAFKA_GROUP_ID`, the same flag for `run`, `replay`
/// and `status` (a backfill has a group of its own, never this one).
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Consumer group; its committed offsets are the loaders' position (replay moves them).
    #[arg(
        long = "group",
        visible_alias = "kafka-group-id",
        env = "KAFKA_GROUP_ID",
        value_name = "KAFKA_GROUP_ID",
        default_value = "loader"
    )]
    pub group: String,
}

/// The topic of raw responses: `--topic` / `KAFKA_TOPIC`, the same flag for every command.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Topic of raw responses.
    #[arg(
        long = "topic",
        visible_alias = "kafka-topic",
        env = "KAFKA_TOPIC",
        value_name = "KAFKA_TOPIC",
        default_value = "randomuser.raw"
    )]
    pub topic: String,
}

/// Which group and topic an offsets command acts on.
#[derive(Debug, Clone, Args)]
pub struct GroupTopic {
    /// The brokers and how to reach them (TLS, SASL).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The loaders' consumer group.
    #[command(flatten)]
    pub group: GroupArgs,
    /// The topic of raw responses.
    #[command(flatten)]
    pub topic: TopicArgs,
    /// The database holding the group's stored positions (`consumer_offsets`), which the
    /// loaders start from.
    #[command(flatten)]
    pub db: DbArgs,
}

/// `loader run`: the loader's settings and the group it joins.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The loaders' consumer group.
    #[command(flatten)]
    pub group: GroupArgs,
    /// Everything else `loader run` takes.
    #[command(flatten)]
    pub config: RunConfig,
}

impl RunArgs {
    /// The config, joined to its group.
    pub fn into_config(self) -> RunConfig {
        let mut config = self.config;
        config.group_id = self.group.group;
        config
    }
}

/// `loader replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The group and topic acted on.
    #[command(flatten)]
    pub target: GroupTopic,
    /// earliest | latest | an offset | an RFC 3339 time | a duration ago (e.g. 2h).
    #[arg(long = "to", value_name = "POSITION")]
    pub to: crate::replay::Position,
    /// Only these partitions (comma-separated).
    #[arg(long = "partitions", value_delimiter = ',', value_name = "PARTITIONS")]
    pub partitions: Option<Vec<i32>>,
    /// Move the offsets. Without it, only the plan is printed.
    #[arg(long = "execute")]
    pub execute: bool,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

/// `loader status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The group and topic acted on.
    #[command(flatten)]
    pub target: GroupTopic,
    /// Print JSON instead of a table.
    #[arg(long = "json")]
    pub json: bool,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

/// `loader backfill`: the sinks' settings are `loader run`'s.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// First record: earliest | an offset | an RFC 3339 time | a duration ago.
    #[arg(long = "from", value_name = "POSITION")]
    pub from: crate::replay::Position,
    /// End of the range, exclusive: an offset or a time; default the end offsets as of start.
    #[arg(long = "to", value_name = "POSITION")]
    pub to: Option<crate::replay::Position>,
    /// The backfill's own consumer group (default backfill-<topic>-<unix time>); never the
    /// running loaders' KAFKA_GROUP_ID.
    #[arg(long = "group", value_name = "GROUP")]
    pub group: Option<String>,
    /// The sinks and batching, as `loader run` takes them.
    #[command(flatten)]
    pub run: RunConfig,
}

/// The URL used when neither `DATABASE_URL` nor `DATABASE_URL_FILE` is set: the local dev database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://etl:etl@localhost:5432/etl";

/// Database connection flags.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL [default: the local dev database, postgres://etl:***@localhost:5432/etl].
    /// Prefer `DATABASE_URL_FILE` outside development.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub url: Option<Secret>,
    /// File holding the PostgreSQL URL (a mounted secret); used when `DATABASE_URL` is unset.
    #[arg(
        long = "database-url-file",
        env = "DATABASE_URL_FILE",
        value_name = "DATABASE_URL_FILE"
    )]
    pub url_file: Option<PathBuf>,
    /// Connections in the pool.
    #[arg(long = "database-max-connections", env = "DATABASE_MAX_CONNECTIONS", value_name = "DATABASE_MAX_CONNECTIONS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_connections: u32,
}

impl DbArgs {
    /// The URL: `DATABASE_URL`, else the contents of `DATABASE_URL_FILE`, else the dev default.
    pub fn url(&self) -> anyhow::Result<Secret> {
        Ok(
            secret_from(self.url.clone(), self.url_file.as_ref(), "DATABASE_URL")?
                .unwrap_or_else(|| Secret::from(DEFAULT_DATABASE_URL)),
        )
    }
}

/// `loader run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// The database.
    #[command(flatten)]
    pub db: DbArgs,
    /// The brokers and how to reach them (TLS, SASL).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic of raw responses.
    #[arg(
        long = "topic",
        visible_alias = "kafka-topic",
        env = "KAFKA_TOPIC",
        value_name = "KAFKA_TOPIC",
        default_value = "randomuser.raw"
    )]
    pub topic: String,
    /// The consumer group: `loader run`'s `--group` / `KAFKA_GROUP_ID` ([`RunArgs`]), or a
    /// backfill's own group; never read from the environment for a backfill.
    #[arg(skip = String::from("loader"))]
    pub group_id: String,
    /// How long the group waits for a silent (crashed) replica before giving its partitions to
    /// the others. librdkafka sends heartbeats from its own thread, so a busy loader stays alive.
    #[arg(long = "kafka-session-timeout", env = "KAFKA_SESSION_TIMEOUT", value_name = "KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// Dead-letter topic for poison records.
    #[arg(
        long = "dlq-topic",
        visible_alias = "kafka-dlq-topic",
        env = "KAFKA_DLQ_TOPIC",
        value_name = "KAFKA_DLQ_TOPIC",
        default_value = "randomuser.raw.dlq"
    )]
    pub dlq_topic: String,
    /// Whether and how KAFKA_DLQ_TOPIC is created when absent (one partition).
    #[command(flatten)]
    pub dlq_create: etl_common::topic::CreateArgs,
    /// A batch closes at this many records...
    #[arg(long = "batch-max-records", env = "BATCH_MAX_RECORDS", value_name = "BATCH_MAX_RECORDS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_max_records: u32,
    /// ...or holds this many payload bytes, which bounds the loader's memory whatever the size
    /// of a response (a 5,000-user response is ~5.5 MB).
    #[arg(long = "batch-max-bytes", env = "BATCH_MAX_BYTES", value_name = "BATCH_MAX_BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_max_bytes: u64,
    /// Transactions a batch is written in at once, whole partitions each with their positions
    /// (DESIGN.md); at most DATABASE_MAX_CONNECTIONS − 1 ([`RunConfig::writers`]).
    #[arg(long = "batch-writers", env = "BATCH_WRITERS", value_name = "BATCH_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub batch_writers: u32,
    /// PostgreSQL's `synchronous_commit` for the batches (unset: the server's own). `off` does
    /// not wait for each batch's WAL flush: a batch a server crash takes back is read again from
    /// the positions the server kept (DESIGN.md); it measured no faster here (1.01x), so it is
    /// not the default. `local`, `remote_write`, `on`, `remote_apply` as PostgreSQL has them.
    #[arg(
        long = "database-synchronous-commit",
        env = "DATABASE_SYNCHRONOUS_COMMIT",
        value_name = "DATABASE_SYNCHRONOUS_COMMIT",
        value_enum
    )]
    pub synchronous_commit: Option<crate::sink::SynchronousCommit>,
    /// ...or when its oldest record is this old, even if nothing else arrives.
    #[arg(long = "batch-max-age", env = "BATCH_MAX_AGE", value_name = "BATCH_MAX_AGE", default_value = "5s", value_parser = parse_duration)]
    pub batch_max_age: Duration,
    /// ...or when no record has arrived for this long (the topic is caught up): light traffic
    /// is written at once, a backlog still fills whole batches.
    #[arg(long = "batch-linger", env = "BATCH_LINGER", value_name = "BATCH_LINGER", default_value = "50ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Root of the Parquet datasets (`raw/`, `processed/`, `_staging/`) when `PARQUET_URL` is
    /// not set.
    #[arg(
        long = "data-dir",
        env = "DATA_DIR",
        value_name = "DATA_DIR",
        default_value = "data"
    )]
    pub data_dir: PathBuf,
    /// Where and how Parquet files are written.
    #[command(flatten)]
    pub parquet: ParquetArgs,
    /// The tables' compaction and vacuum.
    #[command(flatten)]
    pub upkeep: Upkeep,
    /// Records larger than this are poison (dead-lettered as `too_large`).
    #[arg(long = "loader-max-record-bytes", env = "LOADER_MAX_RECORD_BYTES", value_name = "LOADER_MAX_RECORD_BYTES", default_value_t = etl_common::contract::MAX_PAYLOAD_BYTES)]
    pub max_record_bytes: usize,
    /// Keep the raw copies whole: Parquet byte for byte, PostgreSQL's jsonb as the same JSON
    /// value. Off (the default), the users' `login.password`, `salt`, `md5`, `sha1` and
    /// `sha256` are removed from them; the topic always keeps the unmodified response, bounded
    /// by its retention.
    #[arg(
        long = "raw-keep-login-secrets",
        env = "LOADER_RAW_KEEP_LOGIN_SECRETS",
        value_name = "LOADER_RAW_KEEP_LOGIN_SECRETS"
    )]
    pub raw_keep_login_secrets: bool,
    /// Recompute records that are already loaded (after a transform change): their rows are
    /// updated in place and the Parquet files holding them rewritten. Off: re-delivered records
    /// change nothing.
    #[arg(
        long = "reprocess",
        env = "LOADER_REPROCESS",
        value_name = "LOADER_REPROCESS"
    )]
    pub reprocess: bool,
    /// Do not apply migrations at start (when a migrate Job owns them).
    #[arg(
        long = "skip-migrations",
        env = "LOADER_SKIP_MIGRATIONS",
        value_name = "LOADER_SKIP_MIGRATIONS"
    )]
    pub skip_migrations: bool,
    /// First retry delay after a sink or broker failure; doubles per failure, with jitter.
    #[arg(long = "loader-backoff-base", env = "LOADER_BACKOFF_BASE", value_name = "LOADER_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long = "loader-backoff-max", env = "LOADER_BACKOFF_MAX", value_name = "LOADER_BACKOFF_MAX", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// How often to write the Parquet files a crashed or failed roll claimed but never wrote, on
    /// any partition (also done at start and on SIGTERM).
    #[arg(long = "loader-recovery-interval", env = "LOADER_RECOVERY_INTERVAL", value_name = "LOADER_RECOVERY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub recovery_interval: Duration,
    /// On SIGTERM, how long the open batch may take to be written and committed. Past it (a
    /// hung database, say) the loader exits anyway, leaving the batch uncommitted to be
    /// re-delivered; keep it below the orchestrator's kill timeout.
    #[arg(long = "loader-shutdown-grace", env = "LOADER_SHUTDOWN_GRACE", value_name = "LOADER_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// The nice value (0–19) a replica drops to once it has handed its partitions over at
    /// SIGTERM: closing its rolls then leaves the cores it shares (one host, one cgroup) to the
    /// members still loading. `0` keeps its priority.
    #[arg(long = "loader-closing-nice", env = "LOADER_CLOSING_NICE", value_name = "LOADER_CLOSING_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub closing_nice: i32,
    /// Where `/metrics`, `/health` and `/ready` are served.
    #[arg(
        long = "metrics-addr",
        env = "METRICS_ADDR",
        value_name = "METRICS_ADDR",
        default_value = "0.0.0.0:2113"
    )]
    pub metrics_addr: SocketAddr,
    /// When `/health` reports the main loop as stalled.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

impl RunConfig {
    /// Writers per batch: `BATCH_WRITERS`, leaving the rolls a connection of the pool (≥ 1).
    pub fn writers(&self) -> usize {
        self.batch_writers
            .min(self.db.max_connections.saturating_sub(1))
            .max(1) as usize
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.topic.trim().is_empty() {
            anyhow::bail!("KAFKA_TOPIC must not be empty");
        }
        if self.group_id.trim().is_empty() {
            anyhow::bail!("KAFKA_GROUP_ID must not be empty");
        }
        if self.dlq_topic == self.topic {
            anyhow::bail!(
                "KAFKA_DLQ_TOPIC must differ from KAFKA_TOPIC ({})",
                self.topic
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.session_timeout) {
            anyhow::bail!(
                "KAFKA_SESSION_TIMEOUT must be between 1s and 5m (the broker's own limits apply too)"
            );
        }
        if self.batch_linger.is_zero() {
            anyhow::bail!("BATCH_LINGER must be greater than zero");
        }
        if self.batch_max_age.is_zero() {
            anyhow::bail!("BATCH_MAX_AGE must be greater than zero");
        }
        if self.recovery_interval.is_zero() {
            anyhow::bail!("LOADER_RECOVERY_INTERVAL must be greater than zero");
        }
        if self.max_record_bytes == 0 {
            anyhow::bail!("LOADER_MAX_RECORD_BYTES must be greater than zero");
        }
        self.dlq_create.validate()?;
        self.parquet.url(&self.data_dir)?;
        self.upkeep.retention.validate()?;
        self.health.validate()
    }

    /// A config for tests: defaults, the given endpoints, status on an ephemeral port, no log files.
    /// Only with the `test-util` feature: shipped builds have no test constructors.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_test(
        database_url: &str,
        brokers: &str,
        topic: &str,
        group: &str,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let data_dir = data_dir.to_string_lossy().into_owned();
        let dlq = format!("{topic}.dlq");
        let cli = Cli::try_parse_from([
            "loader",
            "run",
            "--database-url",
            database_url,
            "--kafka-brokers",
            brokers,
            "--topic",
            topic,
            "--group",
            group,
            "--dlq-topic",
            &dlq,
            "--data-dir",
            &data_dir,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-dir",
            "",
            "--batch-max-age",
            "300ms",
            "--loader-backoff-base",
            "50ms",
            "--loader-backoff-max",
            "1s",
            "--loader-recovery-interval",
            "2s",
            "--parquet-roll-interval",
            "0s",
            // In-process loaders share the test's process: closing one must not slow the rest.
            "--loader-closing-nice",
            "0",
        ])?;
        match cli.command {
            Command::Run(c) => Ok(c.into_config()),
            _ => anyhow::bail!("unreachable: parsed `run`"),
        }
    }
}

/// `loader migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// The database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Only verify that every migration is applied, unchanged; exit 1 if not.
    #[arg(long = "check")]
    pub check: bool,
    /// Wait this long for the database to answer and, with `--check`, for the schema to be
    /// brought up to date (by the migrate Job), looking again every 2 s; `0s` tries once.
    #[arg(long = "wait", env = "MIGRATE_WAIT", value_name = "MIGRATE_WAIT", default_value = "0s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

#[cfg(test)]
mod tests;
