//! Leases while a file is built: the ledger's lease renewed every third of [`LEASE`] (so a
//! crashed writer's files are taken over within one), and an in-process guard so that two tasks
//! of one loader (a batch's `--reprocess`, the roller) never build the same file — the lease is
//! the process's.

use super::{LEASE, Rolls};
use crate::sink::ledger;

/// A file this process is building: its lease renewed, and no other task of the process
/// building it, while this lives ([`Rolls::keep_lease`]).
pub(super) struct LeaseKeeper {
    renewal: Option<tokio::task::JoinHandle<()>>,
    building: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    path: String,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(renewal) = &self.renewal {
            renewal.abort();
        }
        if let Ok(mut building) = self.building.lock() {
            building.remove(&self.path);
        }
    }
}

impl Rolls {
    /// Marks `path` as being built by this task; `None` if another task of this process is
    /// building it.
    pub(super) fn building(&self, path: &str) -> Option<LeaseKeeper> {
        let mut building = self.building.lock().ok()?;
        building.insert(path.to_string()).then(|| LeaseKeeper {
            renewal: None,
            building: self.building.clone(),
            path: path.to_string(),
        })
    }

    /// Renews this writer's lease on the keeper's file every third of [`LEASE`] until the
    /// keeper is dropped, or until the lease is gone (the file published, or taken over after
    /// the lease ran out while this process was paused).
    pub(super) fn keep_lease(&self, keeper: &mut LeaseKeeper) {
        let (pool, path, owner) = (self.pool.clone(), keeper.path.clone(), self.owner);
        keeper.renewal = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                let renewed = match pool.acquire().await {
                    Ok(mut conn) => ledger::lease(&mut conn, &path, owner, LEASE).await,
                    Err(e) => Err(e),
                };
                match renewed {
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(path, error = %e, "could not renew a file's lease; trying again")
                    }
                }
            }
        }));
    }
}
