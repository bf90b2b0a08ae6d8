//! Kafka client settings shared by both services: brokers plus TLS/SASL passed through to
//! librdkafka, so a managed cluster needs no code change.

use crate::config::{Secret, secret_from};
use clap::Args;
use rdkafka::ClientConfig;
use std::path::PathBuf;

/// Connection flags for every Kafka client the services create.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        value_name = "KAFKA_BROKERS",
        default_value = "localhost:9092"
    )]
    pub brokers: String,
    /// librdkafka `security.protocol`: plaintext, ssl, sasl_plaintext, sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_name = "KAFKA_SECURITY_PROTOCOL"
    )]
    pub security_protocol: Option<String>,
    /// librdkafka `sasl.mechanism`, e.g. PLAIN, SCRAM-SHA-512.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_name = "KAFKA_SASL_MECHANISM"
    )]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(
        long = "kafka-sasl-username",
        env = "KAFKA_SASL_USERNAME",
        value_name = "KAFKA_SASL_USERNAME"
    )]
    pub sasl_username: Option<String>,
    /// SASL password; prefer `KAFKA_SASL_PASSWORD_FILE`.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        value_name = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,
    /// File holding the SASL password (a mounted secret).
    #[arg(
        long = "kafka-sasl-password-file",
        env = "KAFKA_SASL_PASSWORD_FILE",
        value_name = "KAFKA_SASL_PASSWORD_FILE"
    )]
    pub sasl_password_file: Option<PathBuf>,
    /// CA bundle for TLS to the brokers.
    #[arg(
        long = "kafka-ssl-ca-location",
        env = "KAFKA_SSL_CA_LOCATION",
        value_name = "KAFKA_SSL_CA_LOCATION"
    )]
    pub ssl_ca_location: Option<PathBuf>,
}

impl KafkaArgs {
    /// A librdkafka config with the connection settings applied; callers add their role's own.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        if let Some(p) = &self.security_protocol {
            cfg.set("security.protocol", p);
        }
        if let Some(m) = &self.sasl_mechanism {
            cfg.set("sasl.mechanism", m);
        }
        if let Some(u) = &self.sasl_username {
            cfg.set("sasl.username", u);
        }
        let password: Option<Secret> = secret_from(
            self.sasl_password.clone(),
            self.sasl_password_file.as_ref(),
            "KAFKA_SASL_PASSWORD",
        )?;
        if let Some(p) = password {
            cfg.set("sasl.password", p.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            cfg.set("ssl.ca.location", ca.to_string_lossy());
        }
        // librdkafka logs through `log`; route its level from ours.
        cfg.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        Ok(cfg)
    }

    /// Defaults pointing at `brokers`, for tests and tools.
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    /// TLS and SASL (PLAIN, SCRAM) pass through to a librdkafka built with SSL support: creating
    /// clients with them must succeed (a build without SSL refuses `ssl`/`sasl_ssl` here).
    #[test]
    fn tls_and_sasl_settings_reach_librdkafka() {
        for (protocol, mechanism) in [
            ("ssl", None),
            ("sasl_ssl", Some("SCRAM-SHA-512")),
            ("sasl_ssl", Some("SCRAM-SHA-256")),
            ("sasl_plaintext", Some("PLAIN")),
        ] {
            let mut args = KafkaArgs::for_brokers("localhost:1");
            args.security_protocol = Some(protocol.to_string());
            args.sasl_mechanism = mechanism.map(str::to_string);
            args.sasl_username = mechanism.map(|_| "etl".to_string());
            args.sasl_password = mechanism.map(|_| Secret::new("not-printed"));
            let created: Result<BaseProducer, _> = args.client_config().unwrap().create();
            assert!(
                created.is_ok(),
                "{protocol}/{mechanism:?}: {:?}",
                created.err()
            );
        }
    }
}
