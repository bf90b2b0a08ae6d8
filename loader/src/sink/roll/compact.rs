//! Compaction: the small files of one partition and date (rolls cut by the interval on a quiet
//! topic) rewritten as files of about a roll's size, each in one table commit that removes the
//! files it replaces (`dataChange: false`, so streaming readers skip it).
//!
//! A compaction is registered in PostgreSQL first, in one transaction: the new file is
//! `compact`, its members `compacted` into it, and their records name it. It is then built
//! from the members' objects (a raw payload is copied byte for byte) and committed like any
//! other file, through the same fenced commit ([`Rolls::publish`]): a crash at any point
//! leaves a `compact` file that any sweep finishes, and until its commit lands the table still
//! holds the members. A `--reprocess` of a member's records rewrites the compacted file.

use super::{Rolls, paths::date_of};
use crate::sink::SinkError;
use crate::sink::ledger::{self, SmallFile, Unpublished};
use crate::sink::parquet::{self, Dataset};
use std::collections::BTreeMap;

/// Files compacted into one must be at least this many: one file alone is left as it is.
const MIN_FILES: usize = 2;

/// One compaction: the files that become one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The new file's ledger path.
    pub path: String,
    /// The files it replaces.
    pub members: Vec<SmallFile>,
}

/// What a compaction pass did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// The compactions planned (all of them, dry; else the ones registered).
    pub planned: Vec<Compaction>,
    /// Files that were compacted (the members of the planned compactions now in the tables).
    pub replaced: usize,
    /// Compacted files committed.
    pub written: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Planned compactions another writer changed first (skipped).
    pub skipped: usize,
}

impl Rolls {
    /// Compacts both tables' small files (`dry_run`: only plans). Safe beside running loaders,
    /// another compaction and `--reprocess`: a file being changed by someone else is skipped.
    pub async fn compact(&self, dry_run: bool) -> Result<CompactReport, SinkError> {
        self.new_attempt();
        let target = i64::try_from(self.policy().max_bytes).unwrap_or(i64::MAX);
        let mut report = CompactReport::default();
        for dataset in [Dataset::Raw, Dataset::Processed] {
            let small = {
                let mut conn = self.pool.acquire().await?;
                ledger::small_files(&mut conn, dataset, target).await?
            };
            let plans = plan(dataset, &small, target).map_err(SinkError::Parquet)?;
            if dry_run {
                report.planned.extend(plans);
                continue;
            }
            let mut registered = Vec::new();
            for plan in plans {
                let mut tx = self.pool.begin().await?;
                if ledger::register_compaction(&mut tx, &plan.path, &plan.members).await? {
                    tx.commit().await?;
                    crate::failpoint::hit("after-compaction-register");
                    registered.push(Unpublished {
                        path: plan.path.clone(),
                        state: "compact".into(),
                        generation: 0,
                    });
                    report.planned.push(plan);
                } else {
                    report.skipped += 1;
                }
            }
            if registered.is_empty() {
                continue;
            }
            let written = self.publish(&registered).await?;
            report.written += written.written;
            report.bytes += written.bytes;
        }
        report.replaced = {
            let mut conn = self.pool.acquire().await?;
            let paths: Vec<String> = report.planned.iter().map(|p| p.path.clone()).collect();
            ledger::published_members(&mut conn, &paths).await?
        };
        Ok(report)
    }
}

/// Bins each partition's and date's small files (in offset order) into compactions of at most
/// `target` payload bytes and at least [`MIN_FILES`] files.
pub fn plan(dataset: Dataset, small: &[SmallFile], target: i64) -> anyhow::Result<Vec<Compaction>> {
    let mut groups: BTreeMap<(String, i32, chrono::NaiveDate), Vec<&SmallFile>> = BTreeMap::new();
    for f in small {
        if Dataset::of_path(&f.path) != dataset {
            continue;
        }
        groups
            .entry((f.topic.clone(), f.partition, date_of(&f.path)?))
            .or_default()
            .push(f);
    }
    let mut plans = Vec::new();
    for ((topic, partition, date), mut files) in groups {
        files.sort_by_key(|f| (f.first_offset, f.path.clone()));
        let mut bins: Vec<Vec<&SmallFile>> = vec![Vec::new()];
        let mut bytes = 0i64;
        for f in files {
            let bin = bins.last_mut().expect("never empty");
            if !bin.is_empty() && bytes + f.input_bytes > target {
                bins.push(vec![f]);
                bytes = f.input_bytes;
            } else {
                bin.push(f);
                bytes += f.input_bytes;
            }
        }
        for bin in bins.into_iter().filter(|b| b.len() >= MIN_FILES) {
            let members: Vec<SmallFile> = bin.into_iter().cloned().collect();
            let name = parquet::compacted_name(
                &topic,
                partition,
                members
                    .iter()
                    .map(|m| m.first_offset)
                    .min()
                    .unwrap_or_default(),
                members
                    .iter()
                    .map(|m| m.last_offset)
                    .max()
                    .unwrap_or_default(),
                members.iter().map(|m| m.path.as_str()),
            );
            plans.push(Compaction {
                path: parquet::path_of(dataset, date, &name),
                members,
            });
        }
    }
    Ok(plans)
}
