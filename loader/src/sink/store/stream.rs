//! Objects written as they are built: a [`Sink`] takes a file a chunk at a time, and the store
//! makes it visible whole when it is complete, or drops it.

use super::{
    Created, STAGING_DIR, Store, StoreError, UPLOAD_PART_BYTES, create_dir_durably, fsync_dir,
};
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};

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

impl Store {
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
}
