//! A configuration of the peer: connector properties, JDBC driver parameters, the JVM and the
//! worker's properties, from `--peer-config KEY=VALUE,…`.

use super::connect;
use anyhow::Context;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;

/// The tuned configuration run beside the documented defaults unless `--peer-config` says
/// otherwise, the best found on the 2-core development machine: idempotent like the loader
/// (upsert on the primary key); as many tasks as cores (6 fought over them); 5,000-record batches
/// with the consumer polling as many (its 500 caps a batch); the driver rewriting a batch into
/// multi-row INSERTs (half of PostgreSQL's CPU per user); the newest JVM the machine has (Temurin 25
/// there, faster than OpenJDK 17; OpenJDK 17 where it is the only one); plugins found by their
/// ServiceLoader manifests (a shorter start-up).
pub const BEST: &str = "insert.mode=upsert,primary.key.mode=record_key,tasks.max=2,batch.size=5000,consumer.override.max.poll.records=5000,jdbc.reWriteBatchedInserts=true,jvm=newest,worker.plugin.discovery=service_load";

/// One configuration of the peer, parsed from `KEY=VALUE,…`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// As written, for the report.
    pub label: String,
    /// Connector properties over the base ones.
    pub connector: Vec<(String, String)>,
    /// Parameters added to the JDBC URL.
    pub jdbc: Vec<(String, String)>,
    /// `scripts/peer.sh`'s environment: the JVM, its heap, extra worker properties.
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// The documented defaults: nothing set but what the connector cannot run without.
    pub fn defaults() -> Self {
        Self {
            label: "documented defaults (insert.mode=insert, primary.key.mode=none, batch.size=500, tasks.max=1; java on PATH, Kafka's -Xms256M -Xmx2G)".to_string(),
            connector: Vec::new(),
            jdbc: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Parses `KEY=VALUE,…`.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut setup = Self {
            label: spec.trim().to_string(),
            connector: Vec::new(),
            jdbc: Vec::new(),
            env: Vec::new(),
        };
        let mut worker = Vec::new();
        for kv in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .with_context(|| format!("--peer-config: {kv:?} is not KEY=VALUE"))?;
            match k {
                "jvm" => setup.env.push(("PEER_JVM".into(), v.into())),
                "heap" => setup.env.push(("PEER_HEAP_OPTS".into(), v.into())),
                _ => {
                    if let Some(prop) = k.strip_prefix("worker.") {
                        worker.push(format!("{prop}={v}"));
                    } else if let Some(param) = k.strip_prefix("jdbc.") {
                        setup.jdbc.push((param.into(), v.into()));
                    } else {
                        setup.connector.push((k.into(), v.into()));
                    }
                }
            }
        }
        if !worker.is_empty() {
            setup
                .env
                .push(("PEER_WORKER_PROPS".into(), worker.join("\n")));
        }
        Ok(setup)
    }

    /// The connector's configuration: the base (class, topic, database, target table) and this
    /// setup's properties over it.
    pub fn connector_config(&self, topic: &str, db_url: &str) -> anyhow::Result<Value> {
        let (mut jdbc, user, password) = jdbc_url(db_url)?;
        for (k, v) in &self.jdbc {
            jdbc.push(if jdbc.contains('?') { '&' } else { '?' });
            let _ = write!(jdbc, "{k}={v}");
        }
        let mut config = Map::new();
        for (k, v) in [
            ("connector.class", connect::JDBC_SINK),
            ("tasks.max", "1"),
            ("topics", topic),
            ("connection.url", jdbc.as_str()),
            ("connection.username", user.as_str()),
            ("connection.password", password.as_str()),
            ("collection.name.format", "processed_data"),
        ] {
            config.insert(k.to_string(), json!(v));
        }
        for (k, v) in &self.connector {
            config.insert(k.clone(), json!(v));
        }
        Ok(Value::Object(config))
    }
}

/// `postgres://user:password@host:port/db?sslmode=…` as a JDBC URL, user and password.
pub fn jdbc_url(db_url: &str) -> anyhow::Result<(String, String, String)> {
    let url = url::Url::parse(db_url).context("DATABASE_URL is not a URL")?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let host = url.host_str().context("DATABASE_URL has no host")?;
    let mut jdbc = format!(
        "jdbc:postgresql://{host}:{}{}",
        url.port().unwrap_or(5432),
        url.path()
    );
    if let Some((_, mode)) = url.query_pairs().find(|(k, _)| k == "sslmode") {
        let _ = write!(jdbc, "?sslmode={mode}");
    }
    let password = url.password().map(decode).unwrap_or_default();
    Ok((jdbc, decode(url.username()), password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_config_of_a_setup() {
        let setup = Setup::parse(
            "insert.mode=upsert, primary.key.mode=record_key,tasks.max=6,jvm=temurin,heap=-Xms1G -Xmx1G,worker.plugin.discovery=service_load,jdbc.reWriteBatchedInserts=true",
        )
        .unwrap();
        assert_eq!(
            setup.env,
            vec![
                ("PEER_JVM".to_string(), "temurin".to_string()),
                ("PEER_HEAP_OPTS".to_string(), "-Xms1G -Xmx1G".to_string()),
                (
                    "PEER_WORKER_PROPS".to_string(),
                    "plugin.discovery=service_load".to_string()
                ),
            ]
        );
        let config = setup
            .connector_config("t.users", "postgres://etl:p%40ss@localhost:35432/bench_x")
            .unwrap();
        assert_eq!(
            config,
            json!({
                "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
                "tasks.max": "6",
                "topics": "t.users",
                "connection.url": "jdbc:postgresql://localhost:35432/bench_x?reWriteBatchedInserts=true",
                "connection.username": "etl",
                "connection.password": "p@ss",
                "collection.name.format": "processed_data",
                "insert.mode": "upsert",
                "primary.key.mode": "record_key",
            })
        );
        let defaults = Setup::defaults()
            .connector_config("t", "postgres://u@h/d?sslmode=require")
            .unwrap();
        assert_eq!(defaults["tasks.max"], "1");
        assert_eq!(
            defaults["connection.url"],
            "jdbc:postgresql://h:5432/d?sslmode=require"
        );
        assert!(defaults.get("insert.mode").is_none(), "the default, insert");
        assert!(Setup::parse("batch.size").is_err());
        assert!(Setup::parse(BEST).is_ok());
    }
}
