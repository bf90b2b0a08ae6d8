//! Vacuum: deletes the data files no table version within the retention holds — a rewrite's or
//! a compaction's old files once the retention has passed since they left the table, an
//! adopted file's leftover, a crashed roll's upload that was written again under another
//! generation. The log (`_delta_log/`) and anything under a `_`-prefixed directory
//! (`_staging/`) are never touched. Safe beside running loaders and readers: a file being
//! written is younger than the retention, and a file that the latest version, or the version
//! current at the retention's start (so every version since), holds is never deleted — a
//! reader of an older version, or a time-travel query within the retention, finds its files.

use super::parquet::Dataset;
use super::store::Listed;
use super::store::Store;
use super::table::Tables;
use anyhow::Context;
use std::collections::HashSet;
use std::time::Duration;

/// What a vacuum did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Files deleted (or to delete), relative to `PARQUET_URL`.
    pub deleted: Vec<String>,
    /// Their bytes.
    pub bytes: u64,
    /// Files not in the latest version but younger than the retention, or held by a version
    /// within it: kept.
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
        // The version current when the retention began: every file it holds was held by every
        // version since until one removed it, which was within the retention.
        let log = format!("{}/_delta_log/", dataset.as_str());
        let listed = store.list(&log).await?;
        let mut commits: Vec<(u64, &Listed)> = Vec::new();
        for o in &listed {
            if let Some(v) = o.key.strip_prefix(&log).and_then(log_version) {
                commits.push((v, o));
            }
        }
        let at_cutoff = commits
            .iter()
            .filter(|(_, o)| o.modified <= cutoff)
            .map(|(v, _)| *v)
            .max();
        let then = match at_cutoff {
            Some(v) if v < state.version() => Some(tables.state_at(dataset, v).await?),
            _ => None,
        };
        // And every file a version since then added, removed or not.
        let mut added = HashSet::new();
        for (v, o) in &commits {
            if at_cutoff.is_none_or(|c| *v > c) {
                added.extend(added_by(&store.read(&o.key).await?)?);
            }
        }
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
            } else if object.modified < cutoff
                && !then.as_ref().is_some_and(|t| t.is_live(rel))
                && !added.contains(rel)
            {
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

/// The version of a commit file of the log (`00000000000000000012.json`).
fn log_version(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The data files (relative to the table) a commit file adds.
fn added_by(commit: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut added = Vec::new();
    for line in commit.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: serde_json::Value =
            serde_json::from_slice(line).context("a line of the Delta log is not JSON")?;
        if let Some(path) = action.pointer("/add/path").and_then(|p| p.as_str()) {
            added.push(percent_decoded(path));
        }
    }
    Ok(added)
}

/// A log path as a relative path (the log percent-encodes what a URI must, such as `=`).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_names_the_files_it_adds_decoded() {
        let commit = br#"{"commitInfo":{"timestamp":1}}
{"add":{"path":"date%3D2026-12-06/t-p0-o0-o1-g0-ab.parquet","size":1}}
{"remove":{"path":"date=2026-12-06/old.parquet"}}
"#;
        assert_eq!(
            added_by(commit).unwrap(),
            vec!["date=2026-12-06/t-p0-o0-o1-g0-ab.parquet".to_string()]
        );
        assert_eq!(log_version("00000000000000000012.json"), Some(12));
        assert_eq!(log_version("00000000000000000012.checkpoint.parquet"), None);
        assert_eq!(log_version("_last_checkpoint"), None);
    }
}
