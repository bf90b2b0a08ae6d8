//! The extractor's config: one struct, every field a flag with its environment variable.

use clap::Parser;
use etl_common::config::{HealthArgs, LogArgs, parse_duration};
use etl_common::kafka::KafkaArgs;
use etl_common::topic::CreateArgs;
use std::net::SocketAddr;
use std::time::Duration;

/// Polls randomuser.me and publishes each raw response to Kafka.
#[derive(Debug, Clone, Parser)]
#[command(name = "extractor", version, about)]
pub struct Config {
    /// The API endpoint, pinned to a version (the loader's transform expects 1.4).
    #[arg(
        long = "randomuser-url",
        env = "RANDOMUSER_URL",
        value_name = "RANDOMUSER_URL",
        default_value = "https://randomuser.me/api/1.4/"
    )]
    pub url: url::Url,
    /// Time between fetches (`100ms`, `2s`, `1m`).
    #[arg(long = "extract-interval", env = "EXTRACT_INTERVAL", value_name = "EXTRACT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Users per fetch, 1..=5000. The default, 500 every 30 s, is 5,000 users per 5 minutes:
    /// a quarter of the API's ~20,000 per 5 minutes per IP.
    #[arg(long = "extract-results", env = "EXTRACT_RESULTS", value_name = "EXTRACT_RESULTS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub results: u32,
    /// Stop after this many successful fetches, flush, exit 0 (one-off loads, tests).
    #[arg(
        long = "extract-max-fetches",
        env = "EXTRACT_MAX_FETCHES",
        value_name = "EXTRACT_MAX_FETCHES"
    )]
    pub max_fetches: Option<u64>,
    /// Connect timeout for the API.
    #[arg(long = "extract-connect-timeout", env = "EXTRACT_CONNECT_TIMEOUT", value_name = "EXTRACT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Whole-request timeout for the API (5,000 users is a few MB).
    #[arg(long = "extract-request-timeout", env = "EXTRACT_REQUEST_TIMEOUT", value_name = "EXTRACT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// First retry delay after a failed fetch; doubles per failure, with jitter.
    #[arg(long = "extract-backoff-base", env = "EXTRACT_BACKOFF_BASE", value_name = "EXTRACT_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long = "extract-backoff-max", env = "EXTRACT_BACKOFF_MAX", value_name = "EXTRACT_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Refused answers in a row that open the circuit breaker (no requests for a cool-down).
    #[arg(long = "extract-breaker-threshold", env = "EXTRACT_BREAKER_THRESHOLD", value_name = "EXTRACT_BREAKER_THRESHOLD", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_threshold: u32,
    /// First cool-down of an open breaker; doubles after each failed probe, up to EXTRACT_BACKOFF_MAX.
    #[arg(long = "extract-breaker-cooldown", env = "EXTRACT_BREAKER_COOLDOWN", value_name = "EXTRACT_BREAKER_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// Fetched payloads awaiting broker acknowledgement before fetching pauses (the backlog bound).
    #[arg(long = "extract-max-in-flight", env = "EXTRACT_MAX_IN_FLIGHT", value_name = "EXTRACT_MAX_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_in_flight: u32,
    /// How long SIGTERM waits for unacknowledged payloads before giving up on them (and saying so).
    #[arg(long = "extract-shutdown-grace", env = "EXTRACT_SHUTDOWN_GRACE", value_name = "EXTRACT_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Topic the raw responses go to.
    #[arg(
        long = "topic",
        visible_alias = "kafka-topic",
        env = "KAFKA_TOPIC",
        value_name = "KAFKA_TOPIC",
        default_value = "randomuser.raw"
    )]
    pub topic: String,
    /// Partitions of KAFKA_TOPIC if the extractor creates it (the loaders' ceiling: more
    /// replicas than partitions sit idle). The chart's and compose's topics use 6.
    #[arg(long = "kafka-topic-partitions", env = "KAFKA_TOPIC_PARTITIONS", value_name = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// Whether and how KAFKA_TOPIC is created when absent.
    #[command(flatten)]
    pub topic_create: CreateArgs,
    /// The brokers and how to reach them (TLS, SASL).
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Where `/metrics`, `/health` and `/ready` are served.
    #[arg(
        long = "metrics-addr",
        env = "METRICS_ADDR",
        value_name = "METRICS_ADDR",
        default_value = "0.0.0.0:2112"
    )]
    pub metrics_addr: SocketAddr,
    /// When `/health` reports the main loop as stalled.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Where and how to log.
    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// Checks what clap cannot: relations between values.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !matches!(self.url.scheme(), "http" | "https") {
            anyhow::bail!("RANDOMUSER_URL={}: must be an http(s) URL", self.url);
        }
        if self.interval.is_zero() {
            anyhow::bail!("EXTRACT_INTERVAL must be greater than zero");
        }
        if self.backoff_base.is_zero() {
            anyhow::bail!("EXTRACT_BACKOFF_BASE must be greater than zero");
        }
        if self.topic.trim().is_empty() {
            anyhow::bail!("KAFKA_TOPIC must not be empty");
        }
        self.topic_create.validate()?;
        self.health.validate()
    }

    /// A config for tests: defaults, pointed at `url` and `brokers`, status on an ephemeral port.
    /// Only with the `test-util` feature: shipped builds have no test constructors.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_test(url: &str, brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let args = [
            "extractor",
            "--randomuser-url",
            url,
            "--kafka-brokers",
            brokers,
            "--topic",
            topic,
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-dir",
            "",
            "--extract-interval",
            "10ms",
            "--extract-backoff-base",
            "10ms",
            "--extract-backoff-max",
            "200ms",
            "--extract-breaker-cooldown",
            "200ms",
        ];
        Ok(Self::try_parse_from(args)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec!["extractor"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    #[test]
    fn defaults_are_sane() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.results, 500);
        assert_eq!(c.url.as_str(), "https://randomuser.me/api/1.4/");
        assert_eq!(c.topic, "randomuser.raw");
        assert_eq!(c.partitions, 6);
        assert!(c.topic_create.create);
        assert_eq!(c.topic_create.replication_factor, -1);
        assert_eq!(c.metrics_addr.port(), 2112);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (flag, bad, var) in [
            ("--extract-interval", "soon", "EXTRACT_INTERVAL"),
            ("--extract-results", "5001", "EXTRACT_RESULTS"),
            ("--extract-results", "0", "EXTRACT_RESULTS"),
            ("--extract-max-fetches", "many", "EXTRACT_MAX_FETCHES"),
            ("--metrics-addr", "localhost", "METRICS_ADDR"),
            ("--randomuser-url", "not a url", "RANDOMUSER_URL"),
            ("--kafka-topic-partitions", "0", "KAFKA_TOPIC_PARTITIONS"),
            ("--kafka-create-topics", "maybe", "KAFKA_CREATE_TOPICS"),
            (
                "--kafka-topic-replication-factor",
                "-2",
                "KAFKA_TOPIC_REPLICATION_FACTOR",
            ),
        ] {
            let err = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(err.contains(var), "{flag}={bad}: {err}");
        }
        let c = parse(&["--randomuser-url", "ftp://x/"]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("RANDOMUSER_URL")
        );
    }

    #[test]
    fn every_flag_shows_its_env_var_in_help() {
        use clap::CommandFactory;
        let help = Config::command().render_long_help().to_string();
        for var in [
            "RANDOMUSER_URL",
            "EXTRACT_INTERVAL",
            "EXTRACT_RESULTS",
            "EXTRACT_MAX_FETCHES",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC",
            "KAFKA_TOPIC_PARTITIONS",
            "KAFKA_CREATE_TOPICS",
            "KAFKA_TOPIC_REPLICATION_FACTOR",
            "METRICS_ADDR",
            "LOG_DIR",
            "LOG_FORMAT",
            "KAFKA_SASL_PASSWORD_FILE",
        ] {
            assert!(
                help.contains(&format!("[env: {var}")),
                "{var} missing from --help"
            );
        }
    }
}
