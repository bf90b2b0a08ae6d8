//! Vacuum: deletes the data files no live table version holds — a rewrite's old file, an
//! adopted file's leftover, a crashed roll's upload that was written again under another
//! generation — once they are older than the retention. The log (`_delta_log/`) and anything
//! under a `_`-prefixed directory (`_staging/`) are never touched. Safe beside running loaders:
//! a file being written is younger than the retention, and a file in the table is never deleted.

use super::parquet::Dataset;
use super::store::Store;
use super::table::Tables;
use std::time::Duration;

/// What a vacuum did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Files deleted (or to delete), relative to `PARQUET_URL`.
    pub deleted: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
    /// Files in no live version but younger than the retention: kept.
    pub kept_recent: usize,
    /// Files in the tables.
    pub live: usize,
}

/// Vacuums both tables of `store` (a table that does not exist yet is skipped).
pub async fn vacuum(
    store: &Store,
    tables: &Tables,
    retention: Duration,
    dry_run: bool,
) -> anyhow::Result<VacuumReport> {
    let mut report = VacuumReport::default();
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    for dataset in [Dataset::Raw, Dataset::Processed] {
        let Some(state) = tables.existing_state(dataset).await? else {
            continue;
        };
        let root = format!("{}/", dataset.as_str());
        for object in store.list(&root).await? {
            let Some(rel) = object.key.strip_prefix(&root) else {
                continue;
            };
            if rel.split('/').any(|part| part.starts_with('_')) || !rel.ends_with(".parquet") {
                continue;
            }
            if state.is_live(rel) {
                report.live += 1;
            } else if object.modified < cutoff {
                if !dry_run {
                    store.delete(&object.key).await?;
                }
                report.bytes += object.size;
                report.deleted.push(object.key);
            } else {
                report.kept_recent += 1;
            }
        }
    }
    report.deleted.sort();
    Ok(report)
}
