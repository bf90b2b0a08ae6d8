//! Parquet: `DATA_DIR/raw/date=YYYY-MM-DD/` and `DATA_DIR/processed/date=YYYY-MM-DD/`, Snappy,
//! UTC timestamps, partitioned by the record's fetch date so a replay lands where the first
//! load did, and named for the Kafka partition and offsets they hold.
//!
//! Files are written whole or not at all: written and fsynced in `DATA_DIR/_staging/`, then
//! renamed into place (and the directory fsynced) once the ledger row that names them is
//! committed. See `sink::Sinks` for the protocol. This module stages and publishes; [`encode`]
//! turns records into Arrow rows and Parquet bytes.

mod encode;

pub use encode::{
    RAW_ROW_GROUP_BYTES, chunks_by_bytes, processed_batch, processed_schema, raw_batch, raw_schema,
};

use crate::batch::LoadRecord;
use arrow::array::RecordBatch;
use chrono::NaiveDate;
use encode::write_file;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

/// Where staged files wait for their ledger row.
pub const STAGING_DIR: &str = "_staging";

/// The two datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    /// One row per Kafka record, the payload as UTF-8 JSON.
    Raw,
    /// One row per user.
    Processed,
}

impl Dataset {
    /// The directory and ledger name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dataset::Raw => "raw",
            Dataset::Processed => "processed",
        }
    }
}

/// A file written to staging, not yet in place.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Which dataset.
    pub dataset: Dataset,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Lowest offset in the file.
    pub first_offset: i64,
    /// Highest offset in the file.
    pub last_offset: i64,
    /// Rows in the file.
    pub rows: usize,
    /// Path under `DATA_DIR` while staged.
    pub staged_rel: String,
    /// Path under `DATA_DIR` once in place.
    pub final_rel: String,
    /// The records in the file.
    pub raw_ids: Vec<uuid::Uuid>,
    /// A new version of a published file (`--reprocess`), not a new file.
    pub replaces: bool,
}

/// The Parquet sink rooted at `DATA_DIR`.
#[derive(Debug, Clone)]
pub struct ParquetSink {
    root: PathBuf,
}

impl ParquetSink {
    /// A sink rooted at `root`; creates the directories and proves they are writable.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for d in [
            STAGING_DIR,
            Dataset::Raw.as_str(),
            Dataset::Processed.as_str(),
        ] {
            create_dir_durably(&root.join(d))?;
        }
        Ok(Self { root })
    }

    /// `DATA_DIR`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes the Parquet files for `records` (the batch's *new* records) into staging:
    /// per topic-partition and fetch date, one raw and one processed file.
    pub async fn stage(&self, records: &[&LoadRecord]) -> anyhow::Result<Vec<StagedFile>> {
        self.write_plan(self.plan(records), records).await
    }

    /// Names the files [`ParquetSink::stage`] would write for `records`, writing nothing, so
    /// the rows can carry their file names before the files exist.
    pub fn plan(&self, records: &[&LoadRecord]) -> Vec<StagedFile> {
        let mut groups: BTreeMap<(String, i32, NaiveDate), Vec<&LoadRecord>> = BTreeMap::new();
        for r in records {
            groups
                .entry((
                    r.source.topic.clone(),
                    r.source.partition,
                    r.source.fetched_at.date_naive(),
                ))
                .or_default()
                .push(r);
        }
        let mut files = Vec::new();
        for ((topic, partition, date), recs) in groups {
            let (first, last) = offset_span(&recs);
            let tag = uuid::Uuid::new_v4().simple().to_string();
            let name = format!(
                "{topic}-p{partition}-o{first}-o{last}-{}.parquet",
                &tag[..8]
            );
            for dataset in [Dataset::Raw, Dataset::Processed] {
                files.push(StagedFile {
                    dataset,
                    topic: topic.clone(),
                    partition,
                    first_offset: first,
                    last_offset: last,
                    rows: match dataset {
                        Dataset::Raw => recs.len(),
                        Dataset::Processed => recs.iter().map(|r| r.users.len()).sum(),
                    },
                    staged_rel: format!("{STAGING_DIR}/{}-{name}", dataset.as_str()),
                    final_rel: format!(
                        "{}/date={}/{name}",
                        dataset.as_str(),
                        date.format("%Y-%m-%d")
                    ),
                    raw_ids: recs.iter().map(|r| r.raw_id).collect(),
                    replaces: false,
                });
            }
        }
        files
    }

    /// Writes the planned files, each with the records its `raw_ids` name.
    pub async fn write_plan(
        &self,
        plan: Vec<StagedFile>,
        records: &[&LoadRecord],
    ) -> anyhow::Result<Vec<StagedFile>> {
        let by_id: HashMap<uuid::Uuid, &LoadRecord> =
            records.iter().map(|r| (r.raw_id, *r)).collect();
        let mut jobs = Vec::with_capacity(plan.len());
        for file in plan {
            let recs =
                file.raw_ids
                    .iter()
                    .map(|id| {
                        by_id.get(id).copied().ok_or_else(|| {
                            anyhow::anyhow!("planned record {id} is not in the batch")
                        })
                    })
                    .collect::<anyhow::Result<Vec<&LoadRecord>>>()?;
            let batches = match file.dataset {
                // Raw rows are whole responses: a row group per few MB keeps the encoder's
                // buffers (and the Arrow copy) small and lets readers skip through big files.
                Dataset::Raw => chunks_by_bytes(&recs, RAW_ROW_GROUP_BYTES)
                    .map(raw_batch)
                    .collect::<Result<Vec<_>, _>>()?,
                Dataset::Processed => vec![processed_batch(&recs)?],
            };
            jobs.push((file, batches));
        }
        self.write_staged(jobs).await
    }

    /// Writes a new version of the processed file at `final_rel` (holding `records`) into
    /// staging; publishing it replaces the old one atomically.
    pub async fn restage_processed(
        &self,
        final_rel: &str,
        records: &[&LoadRecord],
    ) -> anyhow::Result<StagedFile> {
        let (first, last) = offset_span(records);
        let batch = processed_batch(records)?;
        let file = StagedFile {
            dataset: Dataset::Processed,
            topic: records
                .first()
                .map(|r| r.source.topic.clone())
                .unwrap_or_default(),
            partition: records.first().map_or(0, |r| r.source.partition),
            first_offset: first,
            last_offset: last,
            rows: batch.num_rows(),
            staged_rel: format!(
                "{STAGING_DIR}/rewrite-{}.parquet",
                uuid::Uuid::new_v4().simple()
            ),
            final_rel: final_rel.to_string(),
            raw_ids: records.iter().map(|r| r.raw_id).collect(),
            replaces: true,
        };
        let mut done = self.write_staged(vec![(file, vec![batch])]).await?;
        done.pop()
            .ok_or_else(|| anyhow::anyhow!("no file staged for {final_rel}"))
    }

    /// Writes the file `final_rel` of `dataset` anew at `staged_rel` from `records` (recovery
    /// of a registered file that is gone).
    pub async fn rebuild(
        &self,
        dataset: Dataset,
        final_rel: &str,
        staged_rel: &str,
        records: &[&LoadRecord],
    ) -> anyhow::Result<()> {
        let batches = match dataset {
            Dataset::Raw => chunks_by_bytes(records, RAW_ROW_GROUP_BYTES)
                .map(raw_batch)
                .collect::<Result<Vec<_>, _>>()?,
            Dataset::Processed => vec![processed_batch(records)?],
        };
        let file = StagedFile {
            dataset,
            topic: records
                .first()
                .map(|r| r.source.topic.clone())
                .unwrap_or_default(),
            partition: records.first().map_or(0, |r| r.source.partition),
            first_offset: offset_span(records).0,
            last_offset: offset_span(records).1,
            rows: batches.iter().map(RecordBatch::num_rows).sum(),
            staged_rel: staged_rel.to_string(),
            final_rel: final_rel.to_string(),
            raw_ids: records.iter().map(|r| r.raw_id).collect(),
            replaces: false,
        };
        self.write_staged(vec![(file, batches)]).await?;
        Ok(())
    }

    async fn write_staged(
        &self,
        jobs: Vec<(StagedFile, Vec<RecordBatch>)>,
    ) -> anyhow::Result<Vec<StagedFile>> {
        let root = self.root.clone();
        let staged = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<StagedFile>> {
            let mut done: Vec<StagedFile> = Vec::with_capacity(jobs.len());
            for (file, batches) in jobs {
                let path = root.join(&file.staged_rel);
                if let Err(e) = write_file(&path, &batches) {
                    let _ = std::fs::remove_file(&path);
                    for f in &done {
                        let _ = std::fs::remove_file(root.join(&f.staged_rel));
                    }
                    return Err(anyhow::anyhow!("cannot write {}: {e}", path.display()));
                }
                done.push(file);
            }
            fsync_dir(&root.join(STAGING_DIR))?;
            Ok(done)
        })
        .await??;
        Ok(staged)
    }

    /// Moves staged files into place. Idempotent: a file already moved (by this loader or by
    /// another's recovery) counts as done.
    pub async fn publish(&self, files: Vec<(String, String)>) -> io::Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || publish_blocking(&root, &files))
            .await
            .map_err(io::Error::other)?
    }

    /// Removes staged files whose batch did not commit.
    pub async fn discard(&self, files: &[StagedFile]) {
        for f in files {
            let _ = tokio::fs::remove_file(self.root.join(&f.staged_rel)).await;
        }
    }

    /// Removes files in staging that `keep` does not name; returns how many went.
    pub fn remove_orphans(&self, keep: &HashSet<String>) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.root.join(STAGING_DIR))? {
            let entry = entry?;
            let rel = format!("{STAGING_DIR}/{}", entry.file_name().to_string_lossy());
            if !keep.contains(&rel) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn publish_blocking(root: &Path, files: &[(String, String)]) -> io::Result<()> {
    let mut dirs = HashSet::new();
    for (final_rel, staged_rel) in files {
        let to = root.join(final_rel);
        let from = root.join(staged_rel);
        let dir = to
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf());
        create_dir_durably(&dir)?;
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                dirs.insert(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot move {} to {}: {e}", from.display(), to.display()),
                ));
            }
        }
    }
    for d in dirs {
        fsync_dir(&d)?;
    }
    Ok(())
}

/// The lowest and highest offsets of `records` (0, 0 when empty): what a file's name and
/// ledger row say it holds.
fn offset_span(records: &[&LoadRecord]) -> (i64, i64) {
    let offsets = records.iter().map(|r| r.source.offset);
    (
        offsets.clone().min().unwrap_or_default(),
        offsets.max().unwrap_or_default(),
    )
}

/// Creates `dir` and any missing parents, and fsyncs the parent of each directory it created:
/// a new `date=` directory is an entry in its parent, and until the parent is synced an OS
/// crash can lose the directory (and every file renamed into it) while the ledger says
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
    use crate::batch::{SourceRecord, decode};
    use chrono::{DateTime, Utc};
    use encode::ts_type;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::Compression;

    /// What an OS crash can lose is a directory entry not yet synced into its parent: every
    /// directory created on the way to a new `date=` partition is synced into its parent.
    #[test]
    fn new_partition_directories_are_created_durably() {
        let root = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(root.path()).unwrap();
        let dir = sink.root().join("processed/date=2026-12-01");
        assert_eq!(create_dir_durably(&dir).unwrap(), vec![dir.clone()]);
        assert!(dir.is_dir());
        assert!(
            create_dir_durably(&dir).unwrap().is_empty(),
            "nothing new, nothing synced"
        );
        let deep = sink.root().join("raw/a/b");
        assert_eq!(
            create_dir_durably(&deep).unwrap(),
            vec![sink.root().join("raw/a"), deep.clone()]
        );
    }

    #[test]
    fn chunks_hold_about_the_limit_and_every_record_once() {
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let size = refs[0].payload_text.len();
        for (limit, want) in [
            (1, vec![1, 1, 1]),
            (size * 2, vec![2, 1]),
            (usize::MAX, vec![3]),
        ] {
            let chunks: Vec<usize> = chunks_by_bytes(&refs, limit).map(<[_]>::len).collect();
            assert_eq!(chunks, want, "limit {limit}");
        }
        assert_eq!(chunks_by_bytes(&[], 10).count(), 0);
    }

    #[test]
    fn raw_files_get_a_row_group_per_few_megabytes() {
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let big: Vec<&LoadRecord> = std::iter::repeat_n(refs[0], 600).collect();
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<RecordBatch> = chunks_by_bytes(&big, RAW_ROW_GROUP_BYTES)
            .map(raw_batch)
            .collect::<Result<_, _>>()
            .unwrap();
        let path = dir.path().join("x.parquet");
        write_file(&path, &batches).unwrap();
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).unwrap())
                .unwrap();
        use parquet::file::reader::FileReader;
        let groups = reader.metadata().num_row_groups();
        let total = big.len() * big[0].payload_text.len();
        assert_eq!(groups, batches.len());
        assert!(
            groups >= total / RAW_ROW_GROUP_BYTES,
            "{groups} groups for {total} bytes"
        );
        assert!(groups > 1, "{total} bytes in one row group");
        assert_eq!(reader.metadata().file_metadata().num_rows(), 600);
    }

    fn records() -> Vec<LoadRecord> {
        let payload = include_bytes!("../../../../fixtures/randomuser/v1.3-compact-20-users.json");
        let day1 = DateTime::parse_from_rfc3339("2026-11-23T23:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let day2 = DateTime::parse_from_rfc3339("2026-11-24T00:00:01Z")
            .unwrap()
            .with_timezone(&Utc);
        let recs = vec![(0, 10, day1), (0, 11, day2), (1, 3, day2)]
            .into_iter()
            .map(|(p, o, at)| SourceRecord {
                topic: "raw".into(),
                partition: p,
                offset: o,
                key: Some(format!("k{o}")),
                fetch_id: Some(format!("k{o}")),
                payload: Some(payload.to_vec()),
                fetched_at: at,
            })
            .collect();
        let (good, bad) = decode(recs, 1 << 20, Utc::now(), false);
        assert!(bad.is_empty());
        good
    }

    #[tokio::test]
    async fn stages_by_partition_and_fetch_date_then_publishes_readable_snappy_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path()).unwrap();
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let staged = sink.stage(&refs).await.unwrap();
        assert_eq!(staged.len(), 6, "3 (partition, date) groups x 2 datasets");
        let finals: Vec<&str> = staged.iter().map(|f| f.final_rel.as_str()).collect();
        assert!(
            finals
                .iter()
                .any(|p| p.starts_with("processed/date=2026-11-23/raw-p0-o10-o10-"))
        );
        assert!(
            finals
                .iter()
                .any(|p| p.starts_with("raw/date=2026-11-24/raw-p1-o3-o3-"))
        );
        for f in &staged {
            assert!(dir.path().join(&f.staged_rel).exists());
            assert!(
                !dir.path().join(&f.final_rel).exists(),
                "nothing in place before publish"
            );
        }
        let pairs: Vec<(String, String)> = staged
            .iter()
            .map(|f| (f.final_rel.clone(), f.staged_rel.clone()))
            .collect();
        sink.publish(pairs.clone()).await.unwrap();
        sink.publish(pairs).await.unwrap(); // idempotent
        let mut users = 0;
        for f in staged.iter().filter(|f| f.dataset == Dataset::Processed) {
            let file = std::fs::File::open(dir.path().join(&f.final_rel)).unwrap();
            let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
            let meta = builder.metadata().clone();
            assert_eq!(
                meta.row_group(0).column(0).compression(),
                Compression::SNAPPY
            );
            for b in builder.build().unwrap() {
                let b = b.unwrap();
                assert_eq!(
                    b.schema()
                        .field_with_name("registered_date")
                        .unwrap()
                        .data_type(),
                    &ts_type()
                );
                users += b.num_rows();
            }
        }
        assert_eq!(users, 60);
        assert_eq!(
            sink.remove_orphans(&HashSet::new()).unwrap(),
            0,
            "staging is empty after publish"
        );
    }

    #[tokio::test]
    async fn orphans_are_removed_and_kept_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sink = ParquetSink::new(dir.path()).unwrap();
        let recs = records();
        let refs: Vec<&LoadRecord> = recs.iter().collect();
        let staged = sink.stage(&refs).await.unwrap();
        let keep: HashSet<String> = staged
            .iter()
            .take(2)
            .map(|f| f.staged_rel.clone())
            .collect();
        assert_eq!(sink.remove_orphans(&keep).unwrap(), 4);
        for f in &staged {
            assert_eq!(
                dir.path().join(&f.staged_rel).exists(),
                keep.contains(&f.staged_rel)
            );
        }
    }
}
