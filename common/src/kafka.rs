//! Kafka client settings shared by both services: brokers plus TLS/SASL passed through to
//! librdkafka, so a managed cluster needs no code change.

use crate::config::{Secret, secret_from};
use clap::Args;
use rdkafka::ClientConfig;
use secrecy::ExposeSecret;
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
    /// Client certificate (PEM), for brokers that authenticate clients by TLS (mTLS).
    #[arg(
        long = "kafka-ssl-certificate-location",
        env = "KAFKA_SSL_CERTIFICATE_LOCATION",
        value_name = "KAFKA_SSL_CERTIFICATE_LOCATION"
    )]
    pub ssl_certificate_location: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long = "kafka-ssl-key-location",
        env = "KAFKA_SSL_KEY_LOCATION",
        value_name = "KAFKA_SSL_KEY_LOCATION"
    )]
    pub ssl_key_location: Option<PathBuf>,
    /// Passphrase of the private key, if it is encrypted; prefer `KAFKA_SSL_KEY_PASSWORD_FILE`.
    #[arg(
        long = "kafka-ssl-key-password",
        env = "KAFKA_SSL_KEY_PASSWORD",
        value_name = "KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<Secret>,
    /// File holding the key's passphrase (a mounted secret).
    #[arg(
        long = "kafka-ssl-key-password-file",
        env = "KAFKA_SSL_KEY_PASSWORD_FILE",
        value_name = "KAFKA_SSL_KEY_PASSWORD_FILE"
    )]
    pub ssl_key_password_file: Option<PathBuf>,
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
            cfg.set("sasl.password", p.expose_secret());
        }
        if let Some(ca) = &self.ssl_ca_location {
            cfg.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some(cert) = &self.ssl_certificate_location {
            cfg.set("ssl.certificate.location", cert.to_string_lossy());
        }
        if let Some(key) = &self.ssl_key_location {
            cfg.set("ssl.key.location", key.to_string_lossy());
        }
        let key_password: Option<Secret> = secret_from(
            self.ssl_key_password.clone(),
            self.ssl_key_password_file.as_ref(),
            "KAFKA_SSL_KEY_PASSWORD",
        )?;
        if let Some(p) = key_password {
            cfg.set("ssl.key.password", p.expose_secret());
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
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            ssl_key_password_file: None,
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
            args.sasl_password = mechanism.map(|_| Secret::from("not-printed"));
            let created: Result<BaseProducer, _> = args.client_config().unwrap().create();
            assert!(
                created.is_ok(),
                "{protocol}/{mechanism:?}: {:?}",
                created.err()
            );
        }
    }

    /// mTLS: certificate and key paths pass through, the key's passphrase comes from its file
    /// (trailing newline dropped), and a file that cannot be read is named in the error.
    #[test]
    fn client_certificate_settings_and_the_key_password_file() {
        let dir = std::env::temp_dir().join(format!("kafka-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key-password");
        std::fs::write(&file, "s3cret-passphrase\n").unwrap();
        let mut args = KafkaArgs::for_brokers("localhost:1");
        args.security_protocol = Some("ssl".to_string());
        args.ssl_certificate_location = Some(dir.join("client.pem"));
        args.ssl_key_location = Some(dir.join("client.key"));
        args.ssl_key_password_file = Some(file.clone());
        let cfg = args.client_config().unwrap();
        assert_eq!(cfg.get("ssl.key.password"), Some("s3cret-passphrase"));
        assert_eq!(
            cfg.get("ssl.certificate.location"),
            Some(dir.join("client.pem").to_string_lossy().as_ref())
        );
        assert_eq!(
            cfg.get("ssl.key.location"),
            Some(dir.join("client.key").to_string_lossy().as_ref())
        );
        // The plain variable wins over the file.
        args.ssl_key_password = Some(Secret::from("from-env"));
        let cfg = args.client_config().unwrap();
        assert_eq!(cfg.get("ssl.key.password"), Some("from-env"));

        args.ssl_key_password = None;
        args.ssl_key_password_file = Some(dir.join("missing"));
        let err = args.client_config().unwrap_err().to_string();
        assert!(err.contains("KAFKA_SSL_KEY_PASSWORD_FILE="), "{err}");
        assert!(!format!("{args:?}").contains("from-env"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
