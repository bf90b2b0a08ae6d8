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

/// An object being written, a chunk at a time, so a file never has to fit in memory: a
/// staging file for a directory (linked into place when complete), a buffered upload for a
/// bucket (one PUT when small, a multipart upload of 10 MiB parts when not; the object appears
/// whole when the upload completes, or never), or a buffer (tests, conversions).
pub enum Sink {
    /// In memory.
    Memory(Vec<u8>),
    /// A file under `_staging/`.
    Staged {
        /// The open file.
        file: tokio::fs::File,
        /// Its path.
        tmp: PathBuf,
    },
    /// An upload to a bucket.
    Upload(Box<object_store::buffered::BufWriter>),
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Memory(b) => write!(f, "Sink::Memory({} bytes)", b.len()),
            Sink::Staged { tmp, .. } => write!(f, "Sink::Staged({})", tmp.display()),
            Sink::Upload(_) => write!(f, "Sink::Upload"),
        }
    }
}

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Sink::Memory(b) => std::pin::Pin::new(b).poll_write(cx, buf),
            Sink::Staged { file, .. } => std::pin::Pin::new(file).poll_write(cx, buf),
            Sink::Upload(w) => std::pin::Pin::new(w.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Sink::Memory(b) => std::pin::Pin::new(b).poll_flush(cx),
            Sink::Staged { file, .. } => std::pin::Pin::new(file).poll_flush(cx),
            Sink::Upload(w) => std::pin::Pin::new(w.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Sink::Memory(b) => std::pin::Pin::new(b).poll_shutdown(cx),
            Sink::Staged { file, .. } => std::pin::Pin::new(file).poll_shutdown(cx),
            Sink::Upload(w) => std::pin::Pin::new(w.as_mut()).poll_shutdown(cx),
        }
    }
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

    /// Starts writing a new object (see [`Sink`]); [`Store::complete`] makes it visible as
    /// `key`, [`Store::discard`] drops it.
    pub async fn begin(&self, key: &str) -> Result<Sink, StoreError> {
        match self {
            Store::Local(root) => {
                create_dir_durably(&root.join(STAGING_DIR)).map_err(|e| self.error(key, e))?;
                let tmp = root
                    .join(STAGING_DIR)
                    .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
                let file = tokio::fs::File::create(&tmp)
                    .await
                    .map_err(|e| self.error(key, e))?;
                Ok(Sink::Staged { file, tmp })
            }
            Store::Object { store, .. } => Ok(Sink::Upload(Box::new(
                object_store::buffered::BufWriter::with_capacity(
                    store.clone(),
                    self.key(key),
                    UPLOAD_PART_BYTES,
                ),
            ))),
        }
    }

    /// Makes a finished sink (its writer shut down) visible as `key`, which must be free:
    /// a staging file is fsynced and linked into place (its directory fsynced); an upload is
    /// complete already. Returns the object's size.
    pub async fn complete(&self, key: &str, sink: Sink) -> Result<u64, StoreError> {
        match sink {
            Sink::Memory(bytes) => {
                let size = bytes.len() as u64;
                match self.create(key, Bytes::from(bytes)).await? {
                    Created::New => Ok(size),
                    Created::Existed => Err(self.error(key, anyhow::anyhow!("the object exists"))),
                }
            }
            Sink::Staged { file, tmp } => {
                let Store::Local(root) = self else {
                    return Err(self.error(key, anyhow::anyhow!("a staged file for a bucket")));
                };
                let to = root.join(key);
                let linked = async {
                    file.sync_all().await?;
                    let size = file.metadata().await?.len();
                    drop(file);
                    let (tmp, to) = (tmp.clone(), to.clone());
                    tokio::task::spawn_blocking(move || -> io::Result<u64> {
                        let dir = to.parent().map(Path::to_path_buf).unwrap_or_default();
                        create_dir_durably(&dir)?;
                        std::fs::hard_link(&tmp, &to)?;
                        fsync_dir(&dir)?;
                        Ok(size)
                    })
                    .await
                    .map_err(io::Error::other)?
                }
                .await;
                let _ = tokio::fs::remove_file(&tmp).await;
                linked.map_err(|e| self.error(key, e))
            }
            Sink::Upload(_) => self
                .size(key)
                .await?
                .ok_or_else(|| self.error(key, anyhow::anyhow!("the upload left no object"))),
        }
    }

    /// Drops an unfinished sink: the staging file is removed, the upload aborted.
    pub async fn discard(&self, sink: Sink) {
        match sink {
            Sink::Memory(_) => {}
            Sink::Staged { file, tmp } => {
                drop(file);
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            Sink::Upload(mut w) => {
                let _ = w.abort().await;
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

/// The files under `root/prefix`, recursively, with keys relative to `root`.
fn list_local(root: &Path, prefix: &str) -> io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.join(prefix)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                dirs.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(Listed {
                    key: rel.to_string_lossy().into_owned(),
                    modified: meta.modified()?.into(),
                    size: meta.len(),
                });
            }
        }
    }
    Ok(out)
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

/// Writes `rel` under `root`: the bytes go to a fsynced file in staging first, then are linked
/// (create: fails if the name exists) or renamed (replace) into place, and the directory synced.
fn local_write(root: &Path, rel: &str, bytes: &[u8], replace: bool) -> io::Result<Created> {
    use std::io::Write;
    let to = root.join(rel);
    let dir = to
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.to_path_buf());
    let tmp = root
        .join(STAGING_DIR)
        .join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    create_dir_durably(&root.join(STAGING_DIR))?;
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        create_dir_durably(&dir)?;
        if replace {
            std::fs::rename(&tmp, &to)?;
            Ok(Created::New)
        } else {
            match std::fs::hard_link(&tmp, &to) {
                Ok(()) => Ok(Created::New),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Existed),
                Err(e) => Err(e),
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let created = written?;
    if created == Created::New {
        fsync_dir(&dir)?;
    }
    Ok(created)
}

/// Creates `dir` and any missing parents, and fsyncs the parent of each directory it created:
/// a new `date=` directory is an entry in its parent, and until the parent is synced an OS
/// crash can lose the directory (and every file linked into it) while the ledger says
/// published. Returns the directories it created, outermost first.
pub fn create_dir_durably(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    missing.reverse();
    std::fs::create_dir_all(dir)?;
    for created in &missing {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(missing)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an OS crash can lose is a directory entry not yet synced into its parent: every
    /// directory created on the way to a new `date=` partition is synced into its parent.
    #[test]
    fn new_partition_directories_are_created_durably() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("processed/date=2026-12-01");
        assert_eq!(
            create_dir_durably(&dir).unwrap(),
            vec![root.path().join("processed"), dir.clone()]
        );
        assert!(dir.is_dir());
        assert!(
            create_dir_durably(&dir).unwrap().is_empty(),
            "nothing new, nothing synced"
        );
    }

    #[tokio::test]
    async fn create_never_overwrites_and_replace_does() {
        let root = tempfile::tempdir().unwrap();
        let store =
            Store::from_url(&url::Url::from_directory_path(root.path()).unwrap(), &[]).unwrap();
        store.prepare().unwrap();
        let key = "raw/date=2026-12-01/a.parquet";
        assert_eq!(store.size(key).await.unwrap(), None);
        assert_eq!(
            store.create(key, Bytes::from_static(b"one")).await.unwrap(),
            Created::New
        );
        assert_eq!(
            store
                .create(key, Bytes::from_static(b"two!"))
                .await
                .unwrap(),
            Created::Existed
        );
        assert_eq!(&store.read(key).await.unwrap()[..], b"one");
        store
            .replace(key, Bytes::from_static(b"three"))
            .await
            .unwrap();
        assert_eq!(store.size(key).await.unwrap(), Some(5));
        let staging: Vec<_> = std::fs::read_dir(root.path().join(STAGING_DIR))
            .unwrap()
            .collect();
        assert!(staging.is_empty(), "no temporary left behind: {staging:?}");
    }

    #[test]
    fn stale_temporaries_go_and_fresh_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local(root.path().to_path_buf());
        store.prepare().unwrap();
        std::fs::write(root.path().join(STAGING_DIR).join("x.tmp"), b"x").unwrap();
        assert_eq!(
            store
                .remove_stale_temporaries(Duration::from_secs(3600))
                .unwrap(),
            0
        );
        assert_eq!(store.remove_stale_temporaries(Duration::ZERO).unwrap(), 1);
    }
}
