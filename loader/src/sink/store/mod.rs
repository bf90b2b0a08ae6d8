//! Where Parquet objects go: a local directory (`file://`, the default) or a bucket (`s3://`,
//! `gs://`, `az://`). Two writes only, both atomic to a reader: *create* an object that must
//! not exist yet, and *replace* one. Nothing is ever visible half-written: a bucket takes one PUT
//! whole or not at all; the local store writes and fsyncs under `_staging/`, then links or
//! renames the file into place and fsyncs the directory.

use anyhow::Context;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the local store writes files before they are linked into place. Readers skip
/// `_`-prefixed directories (Spark, Hive, DuckDB's hive partitioning).
pub const STAGING_DIR: &str = "_staging";

/// What [`Store::create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object is new.
    New,
    /// An object was already there (a write that finished before a crash): left untouched.
    Existed,
}

/// An object a listing found.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key, relative to the store's root.
    pub key: String,
    /// When it was last written.
    pub modified: chrono::DateTime<chrono::Utc>,
    /// Its size.
    pub size: u64,
}

/// A Parquet destination.
#[derive(Debug, Clone)]
pub enum Store {
    /// A directory on a local or mounted filesystem.
    Local(PathBuf),
    /// A bucket, under a prefix.
    Object {
        /// The client.
        store: Arc<dyn ObjectStore>,
        /// Key prefix from the URL's path (may be empty).
        prefix: String,
        /// `scheme://bucket/prefix`, for logs (credentials never live in the URL).
        url: String,
    },
}

/// A store failure, with the key it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {key}: {source}")]
pub struct StoreError {
    url: String,
    key: String,
    #[source]
    source: anyhow::Error,
}

impl Store {
    /// The store `url` names. Bucket clients take their settings from the standard variables
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`); `settings` (variable name, value: secrets read from
    /// `_FILE`s, or a test's endpoint) override them.
    pub fn from_url(url: &url::Url, settings: &[(String, String)]) -> anyhow::Result<Self> {
        let bucket = url.host_str().unwrap_or_default();
        let prefix = url.path().trim_matches('/').to_string();
        let shown = format!("{}://{bucket}/{prefix}", url.scheme());
        // Our own backoff waits out long outages and counts them; the client retries a few
        // transient errors (a dropped connection, one 503 SlowDown) quietly.
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| anyhow::anyhow!("not a local path: {url}"))?;
                return Ok(Store::Local(path));
            }
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (key, value) in timeouts("AWS").iter().chain(settings) {
                    if let Ok(k) = key.to_ascii_lowercase().parse() {
                        b = b.with_config(k, value);
                    }
                }
                Arc::new(b.build()?)
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (key, value) in timeouts("GOOGLE").iter().chain(settings) {
                    if let Ok(k) = key.to_ascii_lowercase().parse() {
                        b = b.with_config(k, value);
                    }
                }
                Arc::new(b.build()?)
            }
            "az" | "abfs" | "abfss" | "azure" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (key, value) in timeouts("AZURE").iter().chain(settings) {
                    if let Ok(k) = key.to_ascii_lowercase().parse() {
                        b = b.with_config(k, value);
                    }
                }
                Arc::new(b.build()?)
            }
            other => anyhow::bail!("unsupported scheme {other}:// (file, s3, gs or az)"),
        };
        Ok(Store::Object {
            store,
            prefix,
            url: shown,
        })
    }

    /// `file:///dir` or `s3://bucket/prefix`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Store::Local(root) => format!("file://{}", root.display()),
            Store::Object { url, .. } => url.clone(),
        }
    }

    /// What the Delta kernel reads and writes the tables through: a client rooted where URLs
    /// paths resolve (`/` for a directory, the bucket for a bucket), and the lake's root URL.
    pub fn table_access(&self) -> anyhow::Result<(Arc<dyn ObjectStore>, url::Url)> {
        match self {
            Store::Local(root) => {
                let url = url::Url::from_directory_path(root).map_err(|()| {
                    anyhow::anyhow!("PARQUET_URL: not an absolute path: {}", root.display())
                })?;
                Ok((Arc::new(object_store::local::LocalFileSystem::new()), url))
            }
            Store::Object { store, url, .. } => {
                let root = url::Url::parse(&format!("{}/", url.trim_end_matches('/')))
                    .with_context(|| format!("PARQUET_URL: {url}"))?;
                Ok((store.clone(), root))
            }
        }
    }

    /// The local root, when the store is a directory.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Store::Local(root) => Some(root),
            Store::Object { .. } => None,
        }
    }

    /// Makes sure the store can be written to at start, so a wrong path fails fast; a bucket is
    /// only checked on first write (it may be down now and up later, which is waited out).
    pub fn prepare(&self) -> io::Result<()> {
        if let Store::Local(root) = self {
            create_dir_durably(&root.join(STAGING_DIR))?;
        }
        Ok(())
    }

    fn key(&self, key: &str) -> ObjectPath {
        match self {
            Store::Object { prefix, .. } if !prefix.is_empty() => {
                ObjectPath::from(format!("{prefix}/{key}"))
            }
            _ => ObjectPath::from(key),
        }
    }

    fn error(&self, key: &str, source: impl Into<anyhow::Error>) -> StoreError {
        StoreError {
            url: self.describe(),
            key: key.to_string(),
            source: source.into(),
        }
    }

    /// Writes `key` unless it exists, in one step (a conditional PUT; a link on a filesystem).
    pub async fn create(&self, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
        match self {
            Store::Local(root) => {
                let (root, rel) = (root.clone(), key.to_string());
                tokio::task::spawn_blocking(move || local_write(&root, &rel, &bytes, false))
                    .await
                    .map_err(|e| self.error(key, e))?
                    .map_err(|e| self.error(key, e))
            }
            Store::Object { store, .. } => {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                let at = self.key(key);
                match store
                    .put_opts(&at, PutPayload::from(bytes.clone()), opts)
                    .await
                {
                    Ok(_) => Ok(Created::New),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(Created::Existed),
                    // A store without conditional writes is refused at start
                    // (`honours_conditional_writes`); here it is an error like any other.
                    Err(e) => Err(self.error(key, e)),
                }
            }
        }
    }

    /// Whether the store honours conditional writes (a PUT with `If-None-Match: *` creates an
    /// object and refuses to replace one), which the tables' commits rest on: a probe object
    /// under `_staging/` is created twice, the second must be refused, then deleted. `false`
    /// for a store that answers `501 Not Implemented`, is configured without them, or ignores
    /// the condition; an error when the store cannot be reached (nothing is decided).
    pub async fn honours_conditional_writes(&self) -> Result<bool, StoreError> {
        let Store::Object { store, .. } = self else {
            return Ok(true);
        };
        let key = format!(
            "{STAGING_DIR}/conditional-write-probe-{}",
            uuid::Uuid::new_v4().simple()
        );
        let at = self.key(&key);
        let create = || {
            store.put_opts(
                &at,
                PutPayload::from_static(b"probe"),
                PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                },
            )
        };
        let unsupported = |e: &object_store::Error| {
            matches!(
                e,
                object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
            ) || format!("{e}").contains("501")
        };
        let verdict = match create().await {
            Err(e) if unsupported(&e) => Ok(false),
            Err(e) => Err(self.error(&key, e)),
            Ok(_) => match create().await {
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(true),
                Err(e) if unsupported(&e) => Ok(false),
                // The second create replaced the first: the condition was ignored.
                Ok(_) => Ok(false),
                Err(e) => Err(self.error(&key, e)),
            },
        };
        let _ = store.delete(&at).await;
        verdict
    }

    /// Writes `key`, replacing what is there in one step.
    pub async fn replace(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => {
                let (root, rel) = (root.clone(), key.to_string());
                tokio::task::spawn_blocking(move || local_write(&root, &rel, &bytes, true))
                    .await
                    .map_err(|e| self.error(key, e))?
                    .map(|_| ())
                    .map_err(|e| self.error(key, e))
            }
            Store::Object { store, .. } => store
                .put(&self.key(key), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| self.error(key, e)),
        }
    }

    /// The object's size, or `None` if there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Local(root) => match tokio::fs::metadata(root.join(key)).await {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(self.error(key, e)),
            },
            Store::Object { store, .. } => match store.head(&self.key(key)).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.error(key, e)),
            },
        }
    }

    /// Whether any object's key starts with `prefix` (a directory: whether it has entries). For
    /// blocking threads (it waits on the runtime for a bucket).
    pub fn any_under_blocking(&self, prefix: &str) -> anyhow::Result<bool> {
        match self {
            Store::Local(root) => match std::fs::read_dir(root.join(prefix)) {
                Ok(mut entries) => Ok(entries.next().is_some()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(self.error(prefix, e).into()),
            },
            Store::Object { store, .. } => {
                use futures::StreamExt;
                let at = self.key(prefix.trim_end_matches('/'));
                let first = tokio::runtime::Handle::current()
                    .block_on(async { store.list(Some(&at)).next().await });
                match first {
                    None => Ok(false),
                    Some(Ok(_)) => Ok(true),
                    Some(Err(e)) => Err(self.error(prefix, e).into()),
                }
            }
        }
    }

    /// Every object under `prefix` (a directory, ending in `/`), recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        match self {
            Store::Local(root) => {
                let (root, prefix_owned) = (root.clone(), prefix.to_string());
                tokio::task::spawn_blocking(move || list_local(&root, &prefix_owned))
                    .await
                    .map_err(|e| self.error(prefix, e))?
                    .map_err(|e| self.error(prefix, e))
            }
            Store::Object {
                store,
                prefix: base,
                ..
            } => {
                use futures::TryStreamExt;
                let at = self.key(prefix.trim_end_matches('/'));
                let found: Vec<object_store::ObjectMeta> = store
                    .list(Some(&at))
                    .try_collect()
                    .await
                    .map_err(|e| self.error(prefix, e))?;
                let strip = if base.is_empty() {
                    String::new()
                } else {
                    format!("{base}/")
                };
                Ok(found
                    .into_iter()
                    .map(|m| Listed {
                        key: m
                            .location
                            .as_ref()
                            .strip_prefix(&strip)
                            .unwrap_or(m.location.as_ref())
                            .to_string(),
                        modified: m.last_modified,
                        size: m.size,
                    })
                    .collect())
            }
        }
    }

    /// Deletes `key` (gone already is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(root) => match tokio::fs::remove_file(root.join(key)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.error(key, e)),
            },
            Store::Object { store, .. } => match store.delete(&self.key(key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.error(key, e)),
            },
        }
    }

    /// The whole object.
    pub async fn read(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            Store::Local(root) => tokio::fs::read(root.join(key))
                .await
                .map(Bytes::from)
                .map_err(|e| self.error(key, e)),
            Store::Object { store, .. } => {
                let got = store
                    .get(&self.key(key))
                    .await
                    .map_err(|e| self.error(key, e))?;
                got.bytes().await.map_err(|e| self.error(key, e))
            }
        }
    }

    /// Removes temporary files a crash left in the local store's staging directory (older than
    /// `age`, so a write in progress is never touched); returns how many went.
    pub fn remove_stale_temporaries(&self, age: Duration) -> io::Result<usize> {
        let Store::Local(root) = self else {
            return Ok(0);
        };
        let mut removed = 0;
        let dir = root.join(STAGING_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|a| a >= age);
            if old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

/// Part size of an upload to a bucket (a file smaller than this is one PUT): what a file being
/// written holds in memory, whatever its size.
pub const UPLOAD_PART_BYTES: usize = 10 << 20;

/// Bounded requests, unless the environment says otherwise (`AWS_TIMEOUT`, ...): a store that
/// stops answering is an error to retry with backoff, not a hang.
fn timeouts(prefix: &str) -> Vec<(String, String)> {
    [("TIMEOUT", "30s"), ("CONNECT_TIMEOUT", "5s")]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}_{k}"), v.to_string()))
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect()
}

mod local;
pub use local::create_dir_durably;
use local::{fsync_dir, list_local, local_write};
mod stream;
pub use stream::Sink;

#[cfg(test)]
mod tests;
