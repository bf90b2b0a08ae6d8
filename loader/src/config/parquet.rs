//! `PARQUET_URL`, the roll policy, the store's `_FILE` secrets and the tables' upkeep: the lake
//! side of `loader run`'s config.

use anyhow::Context;
use clap::Args;
use etl_common::config::{Secret, parse_duration, secret_from};
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::time::Duration;

/// Where Parquet goes and how files roll.
#[derive(Debug, Clone, Args)]
pub struct ParquetArgs {
    /// Where Parquet goes: `file:///path`, `s3://bucket/prefix` (AWS and S3-compatible stores),
    /// `gs://bucket/prefix` or `az://container/prefix`. Default: `DATA_DIR`. Bucket clients read
    /// the standard `AWS_*`, `GOOGLE_*` and `AZURE_*` variables.
    #[arg(long = "parquet-url", env = "PARQUET_URL", value_name = "PARQUET_URL")]
    pub parquet_url: Option<String>,
    /// A Parquet file closes at this many bytes of input (payload JSON; the Snappy file is a
    /// few times smaller), at most 1 GiB. Files are streamed to the store as they are built, so
    /// the size costs no memory; it bounds how much one commit publishes at once.
    #[arg(long = "parquet-roll-max-bytes", env = "PARQUET_ROLL_MAX_BYTES", value_name = "PARQUET_ROLL_MAX_BYTES", default_value_t = 128 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    pub roll_max_bytes: u64,
    /// ...or once its oldest record has waited this long (0s: after every batch).
    #[arg(long = "parquet-roll-interval", env = "PARQUET_ROLL_INTERVAL", value_name = "PARQUET_ROLL_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub roll_interval: Duration,
    /// A file holding `AWS_SECRET_ACCESS_KEY` (a mounted secret).
    #[arg(
        long = "aws-secret-access-key-file",
        env = "AWS_SECRET_ACCESS_KEY_FILE",
        value_name = "AWS_SECRET_ACCESS_KEY_FILE"
    )]
    pub aws_secret_access_key_file: Option<PathBuf>,
    /// A file holding `AWS_SESSION_TOKEN`.
    #[arg(
        long = "aws-session-token-file",
        env = "AWS_SESSION_TOKEN_FILE",
        value_name = "AWS_SESSION_TOKEN_FILE"
    )]
    pub aws_session_token_file: Option<PathBuf>,
    /// A file holding `AZURE_STORAGE_ACCOUNT_KEY`.
    #[arg(
        long = "azure-storage-account-key-file",
        env = "AZURE_STORAGE_ACCOUNT_KEY_FILE",
        value_name = "AZURE_STORAGE_ACCOUNT_KEY_FILE"
    )]
    pub azure_storage_account_key_file: Option<PathBuf>,
    /// Store settings that override the environment, as (variable, value): for a program that
    /// embeds the loader (and the tests) rather than setting process variables.
    #[arg(skip)]
    pub store_settings: Vec<(String, Secret)>,
}

impl ParquetArgs {
    /// `PARQUET_URL`, or `DATA_DIR` as a `file://` URL.
    pub fn url(&self, data_dir: &std::path::Path) -> anyhow::Result<url::Url> {
        match &self.parquet_url {
            Some(raw) => {
                let url = url::Url::parse(raw).map_err(|e| {
                    anyhow::anyhow!(
                        "PARQUET_URL={}: not a URL ({e})",
                        etl_common::config::redact_url(raw)
                    )
                })?;
                if url.password().is_some() || url.query().is_some() {
                    anyhow::bail!(
                        "PARQUET_URL must not carry credentials or options; use the store's variables (AWS_*, GOOGLE_*, AZURE_*)"
                    );
                }
                match url.scheme() {
                    "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" => {}
                    other => anyhow::bail!(
                        "PARQUET_URL: unsupported scheme {other}:// (file, s3, gs or az)"
                    ),
                }
                if url.scheme() != "file" && url.host_str().unwrap_or_default().is_empty() {
                    anyhow::bail!("PARQUET_URL={url}: no bucket");
                }
                Ok(url)
            }
            None => {
                let dir = std::path::absolute(data_dir)
                    .with_context(|| format!("DATA_DIR={}", data_dir.display()))?;
                url::Url::from_directory_path(&dir).map_err(|()| {
                    anyhow::anyhow!("DATA_DIR={}: not a usable path", data_dir.display())
                })
            }
        }
    }

    /// The store, with `_FILE` secrets read.
    pub fn store(&self, data_dir: &std::path::Path) -> anyhow::Result<crate::sink::store::Store> {
        let url = self.url(data_dir)?;
        let mut settings = Vec::new();
        for (var, file) in [
            ("AWS_SECRET_ACCESS_KEY", &self.aws_secret_access_key_file),
            ("AWS_SESSION_TOKEN", &self.aws_session_token_file),
            (
                "AZURE_STORAGE_ACCOUNT_KEY",
                &self.azure_storage_account_key_file,
            ),
        ] {
            let plain = std::env::var(var).ok().map(Secret::from);
            if plain.is_none()
                && let Some(secret) = secret_from(None, file.as_ref(), var)?
            {
                settings.push((var.to_string(), secret.expose_secret().to_string()));
            }
        }
        settings.extend(
            self.store_settings
                .iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_string())),
        );
        crate::sink::store::Store::from_url(&url, &settings)
            .with_context(|| format!("PARQUET_URL={url}"))
    }

    /// The roll policy.
    pub fn policy(&self) -> crate::sink::RollPolicy {
        crate::sink::RollPolicy {
            max_bytes: self.roll_max_bytes,
            interval: self.roll_interval,
        }
    }
}

/// How long a data file that is in no live table version is kept before a vacuum deletes it.
#[derive(Debug, Clone, Args)]
pub struct VacuumRetention {
    /// Data files that left their table (a rewrite's old file, an adopted file's leftover) or
    /// never entered it (a crashed roll's upload) are deleted by a vacuum once older than this:
    /// readers of older table versions, and a writer between its upload and its commit, need
    /// them until then. At least 1h; Delta's own default is 7 days.
    #[arg(long = "vacuum-retention", env = "LAKE_VACUUM_RETENTION", value_name = "LAKE_VACUUM_RETENTION", default_value = "168h", value_parser = parse_duration)]
    pub retention: Duration,
}

impl VacuumRetention {
    /// Refuses a retention under an hour, naming the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.retention < Duration::from_secs(3600) {
            anyhow::bail!(
                "LAKE_VACUUM_RETENTION must be at least 1h: a shorter one can delete a file a writer has uploaded and not yet committed"
            );
        }
        Ok(())
    }
}

/// Table upkeep while loading: compaction and vacuum, each off unless given an interval.
#[derive(Debug, Clone, Args)]
pub struct Upkeep {
    /// Vacuum the tables this often from every loader (`0s`, the default: never; run
    /// `loader vacuum` instead). Replicas vacuuming at once delete the same files harmlessly.
    #[arg(long = "vacuum-interval", env = "LAKE_VACUUM_INTERVAL", value_name = "LAKE_VACUUM_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub vacuum_interval: Duration,
    /// Compact the tables' small files this often from every loader (`0s`, the default: never;
    /// run `loader compact` instead). Replicas compacting at once share the work: a file being
    /// compacted by one is skipped by the others.
    #[arg(long = "compact-interval", env = "LAKE_COMPACT_INTERVAL", value_name = "LAKE_COMPACT_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub compact_interval: Duration,
    /// What a vacuum keeps.
    #[command(flatten)]
    pub retention: VacuumRetention,
}
