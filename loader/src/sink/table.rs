//! The lake's two Delta Lake tables, `<PARQUET_URL>/raw` and `<PARQUET_URL>/processed`, through
//! `delta_kernel` (docs/DESIGN.md, "The lake"): created on first use by whichever replica comes
//! first, a roll's files added in one commit, a rewrite's old file removed in the same commit
//! that adds the new one, a checkpoint every [`CHECKPOINT_INTERVAL`] commits.
//!
//! The kernel writes a commit as a put-if-absent of the next log entry and says `Conflicted`
//! when another writer took that version; it checks nothing else. What a retry must re-check (is
//! our file in the table already, is the file it replaces still live) is the caller's: see
//! [`crate::sink::roll`], which re-reads the table and the ledger before every attempt.

use super::parquet::Dataset;
use super::store::Store;
use anyhow::Context;
use arrow::array::{
    Array, ArrayRef, Int64Array, MapBuilder, MapFieldNames, RecordBatch, StringArray,
    StringBuilder, StructArray,
};
use arrow::datatypes::{DataType as ArrowType, Field, Fields, Schema as ArrowSchema};
use chrono::NaiveDate;
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::scan::state::ScanFile;
use delta_kernel::schema::{DataType, StructField, StructType};
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{FilteredEngineData, KernelError, Snapshot, SnapshotRef};
use delta_kernel_default_engine::DefaultEngineBuilder;
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use url::Url;

/// What the tables' commits name as their writer.
pub const ENGINE_INFO: &str = concat!("randomuser-etl-loader/", env!("CARGO_PKG_VERSION"));

/// A checkpoint after this many commits (Delta's own default interval): a reader replays at
/// most this many JSON commits on top of the last checkpoint.
pub const CHECKPOINT_INTERVAL: u64 = 10;

/// The partition column: the records' UTC fetch date, `date=YYYY-MM-DD/` in paths.
pub const PARTITION_COLUMN: &str = "date";

type Engine = dyn delta_kernel::Engine;

/// The two tables of one lake.
#[derive(Clone)]
pub struct Tables {
    engine: Arc<Engine>,
    store: Store,
    root: Url,
    /// The latest snapshot read of each table, updated incrementally.
    latest: Arc<[Mutex<Option<SnapshotRef>>; 2]>,
    /// Whether this runtime can write checkpoints (see [`Tables::new`]).
    checkpoints: bool,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").field("root", &self.root).finish()
    }
}

/// A table as one snapshot saw it: its version and its live files.
#[derive(Debug, Clone)]
pub struct TableState {
    snapshot: SnapshotRef,
    live: HashSet<String>,
}

impl TableState {
    /// The table version.
    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }

    /// Whether `path` (relative to the table) is one of the table's files at this version.
    pub fn is_live(&self, path: &str) -> bool {
        self.live.contains(path)
    }

    /// The live files whose path starts with `prefix`.
    pub fn live_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.live
            .iter()
            .map(String::as_str)
            .filter(move |p| p.starts_with(prefix))
    }

    /// Every live file.
    pub fn live(&self) -> impl Iterator<Item = &str> {
        self.live.iter().map(String::as_str)
    }
}

/// One file to add: where it is, its partition, and what engines skip files by.
#[derive(Debug, Clone)]
pub struct AddFile {
    /// Relative to the table: `date=YYYY-MM-DD/name.parquet`.
    pub path: String,
    /// Its fetch date (the partition value).
    pub date: NaiveDate,
    /// Object size in bytes.
    pub size: u64,
    /// When the object was written, milliseconds since the epoch.
    pub modified_ms: i64,
    /// `numRecords`, `nullCount`, `minValues`, `maxValues`, `tightBounds` (one row).
    pub stats: StructArray,
}

/// What a commit attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The commit is this table version.
    Committed(u64),
    /// Another writer took the version: read the table again and decide again.
    Conflicted,
}

/// A kernel failure, as an error with context.
fn kernel(e: KernelError) -> anyhow::Error {
    anyhow::Error::new(e)
}

impl Tables {
    /// The tables under `store`'s root. Must be called inside the Tokio runtime (the kernel's
    /// engine runs its I/O there); checkpoints are written on a multi-threaded one only (the
    /// loader's; a single-threaded test runtime gets none).
    pub fn new(store: &Store) -> anyhow::Result<Self> {
        let (object_store, root) = store.table_access()?;
        let handle = tokio::runtime::Handle::try_current()
            .context("the Delta tables need a Tokio runtime")?;
        // The kernel blocks on its I/O: on the loader's multi-threaded runtime it runs there (its
        // calls are made from blocking threads); a single-threaded runtime (a test's) cannot be
        // blocked on, so the kernel gets a thread of its own — where writing a checkpoint
        // deadlocks (it blocks on that thread from that thread), so there are none there.
        let checkpoints = handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        let engine: Arc<Engine> = match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => Arc::new(
                DefaultEngineBuilder::new(object_store)
                    .with_task_executor(Arc::new(TokioMultiThreadExecutor::new(handle)))
                    .build(),
            ),
            _ => Arc::new(DefaultEngineBuilder::new(object_store).build()),
        };
        Ok(Self {
            engine,
            store: store.clone(),
            root,
            latest: Arc::new([Mutex::new(None), Mutex::new(None)]),
            checkpoints,
        })
    }

    /// The table URL of `dataset` (with a trailing slash).
    pub fn url(&self, dataset: Dataset) -> Url {
        // The root ends in '/', and dataset names are plain words.
        self.root
            .join(&format!("{}/", dataset.as_str()))
            .unwrap_or_else(|_| self.root.clone())
    }

    fn slot(&self, dataset: Dataset) -> &Mutex<Option<SnapshotRef>> {
        match dataset {
            Dataset::Raw => &self.latest[0],
            Dataset::Processed => &self.latest[1],
        }
    }

    /// The table as it is now, created first if it does not exist yet.
    pub async fn state(&self, dataset: Dataset) -> anyhow::Result<TableState> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.state_blocking(dataset))
            .await
            .context("the table read was cancelled")?
    }

    /// The table as it is now, or `None` if it does not exist (nothing is created).
    pub async fn existing_state(&self, dataset: Dataset) -> anyhow::Result<Option<TableState>> {
        let log = format!("{}/_delta_log/", dataset.as_str());
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if this.store.any_under_blocking(&log)? {
                this.state_blocking(dataset).map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .context("the table read was cancelled")?
    }

    /// The table as it was at `version` (time travel): what a reader of that version needs.
    pub async fn state_at(&self, dataset: Dataset, version: u64) -> anyhow::Result<TableState> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let url = this.url(dataset);
            let snapshot = Snapshot::builder_for(url.as_str())
                .at_version(version)
                .build(&*this.engine)
                .map_err(kernel)
                .with_context(|| format!("reading version {version} of the Delta table {url}"))?;
            let live = live_files(&*this.engine, &snapshot)?;
            Ok(TableState { snapshot, live })
        })
        .await
        .context("the table read was cancelled")?
    }

    fn state_blocking(&self, dataset: Dataset) -> anyhow::Result<TableState> {
        let snapshot = self.latest_blocking(dataset)?;
        let live = live_files(&*self.engine, &snapshot)?;
        Ok(TableState { snapshot, live })
    }

    fn latest_blocking(&self, dataset: Dataset) -> anyhow::Result<SnapshotRef> {
        let url = self.url(dataset);
        let cached = self
            .slot(dataset)
            .lock()
            .map_err(|_| anyhow::anyhow!("a table read panicked"))?
            .clone();
        let snapshot = match cached {
            Some(s) => Snapshot::builder_from(s)
                .build(&*self.engine)
                .map_err(kernel)
                .with_context(|| format!("reading the Delta table {url}"))?,
            None => self.open_or_create(dataset)?,
        };
        *self
            .slot(dataset)
            .lock()
            .map_err(|_| anyhow::anyhow!("a table read panicked"))? = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Opens the table, creating it when there is none; two replicas creating it at once is
    /// harmless (one commits version 0, the other finds it).
    fn open_or_create(&self, dataset: Dataset) -> anyhow::Result<SnapshotRef> {
        let url = self.url(dataset);
        // No table yet reads as one of several errors (an empty or missing log); whatever it
        // was, creating the table tells a missing table (created) from an existing one (found)
        // from a store that cannot be reached (the same error again).
        // (A log is looked for first: the kernel logs a missing table as an error.)
        let log = format!("{}/_delta_log/", dataset.as_str());
        if self.store.any_under_blocking(&log)?
            && let Ok(s) = Snapshot::builder_for(url.as_str()).build(&*self.engine)
        {
            return check_schema(dataset, &url, s);
        }
        if url.scheme() == "file"
            && let Ok(dir) = url.to_file_path()
        {
            super::store::create_dir_durably(&dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let created = create_table(url.as_str(), table_schema(dataset), ENGINE_INFO, false)
            .with_data_layout(DataLayout::partitioned([PARTITION_COLUMN]))
            .build(&*self.engine, Box::new(FileSystemCommitter::new()));
        match created {
            Ok(txn) => match txn.commit(&*self.engine).map_err(kernel)? {
                CommitResult::Committed(c) => {
                    tracing::info!(table = %url, "created the Delta table");
                    if let Some(s) = c.post_commit_snapshot() {
                        return Ok(s.clone());
                    }
                }
                CommitResult::Conflicted(_) => {}
                CommitResult::Retryable(r) => {
                    return Err(kernel(r.error))
                        .with_context(|| format!("creating the Delta table {url}"));
                }
            },
            Err(KernelError::TableAlreadyExistsAtPath(_)) => {}
            Err(e) => {
                return Err(kernel(e)).with_context(|| format!("creating the Delta table {url}"));
            }
        }
        let s = Snapshot::builder_for(url.as_str())
            .build(&*self.engine)
            .map_err(kernel)
            .with_context(|| format!("reading the Delta table {url}"))?;
        check_schema(dataset, &url, s)
    }

    /// Commits `adds` and the removal of `removes` (live files of `state`) in one commit on top
    /// of `state`'s version. `data_change: false` marks a rearrangement (compaction) that
    /// streaming readers skip.
    pub async fn commit(
        &self,
        dataset: Dataset,
        state: &TableState,
        adds: Vec<AddFile>,
        removes: Vec<String>,
        operation: Operation,
    ) -> anyhow::Result<Commit> {
        let this = self.clone();
        let snapshot = state.snapshot.clone();
        tokio::task::spawn_blocking(move || {
            this.commit_blocking(dataset, snapshot, adds, removes, operation)
        })
        .await
        .context("the table commit was cancelled")?
    }

    fn commit_blocking(
        &self,
        dataset: Dataset,
        snapshot: SnapshotRef,
        adds: Vec<AddFile>,
        removes: Vec<String>,
        operation: Operation,
    ) -> anyhow::Result<Commit> {
        let engine = &*self.engine;
        let url = self.url(dataset);
        let (op, data_change) = match operation {
            Operation::Append => (UpdateTableOperation::Write, true),
            Operation::Rewrite => (UpdateTableOperation::Update, true),
            Operation::Compact => (UpdateTableOperation::Optimize, false),
        };
        let mut txn = snapshot
            .clone()
            .update_table(op, ENGINE_INFO, data_change)
            .build(engine, Box::new(FileSystemCommitter::new()))
            .map_err(kernel)
            .with_context(|| format!("starting a commit to {url}"))?;
        for add in &adds {
            txn.add_files(Box::new(ArrowEngineData::new(add_file_row(add)?)));
        }
        if !removes.is_empty() {
            let wanted: HashSet<&str> = removes.iter().map(String::as_str).collect();
            let (selected, found) = select_files(engine, &snapshot, &wanted)?;
            anyhow::ensure!(
                found == wanted.len(),
                "{url}: {} of the files to remove are not in version {}",
                wanted.len() - found,
                snapshot.version()
            );
            for f in selected {
                txn.remove_files(f);
            }
        }
        let committed = match txn
            .commit(engine)
            .map_err(kernel)
            .with_context(|| format!("committing to {url}"))?
        {
            CommitResult::Committed(c) => c,
            CommitResult::Conflicted(_) => return Ok(Commit::Conflicted),
            CommitResult::Retryable(r) => {
                return Err(kernel(r.error)).with_context(|| format!("committing to {url}"));
            }
        };
        let version = committed.commit_version();
        if let Some(after) = committed.post_commit_snapshot() {
            if self.checkpoints
                && committed.post_commit_stats().commits_since_checkpoint >= CHECKPOINT_INTERVAL
            {
                // Best effort: a failed checkpoint costs readers time, never data.
                match after.checkpoint(engine, None) {
                    Ok(_) => tracing::info!(table = %url, version, "wrote a Delta checkpoint"),
                    Err(e) => {
                        tracing::warn!(table = %url, version, error = %e, "could not write a Delta checkpoint")
                    }
                }
            }
            if let Ok(mut slot) = self.slot(dataset).lock() {
                *slot = Some(after.clone());
            }
        }
        Ok(Commit::Committed(version))
    }
}

/// What a commit does, as the table's history names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// New files (a roll).
    Append,
    /// Files replaced by recomputed ones (`--reprocess`, an adopted file).
    Rewrite,
    /// Small files replaced by one with the same rows (`dataChange: false`).
    Compact,
}

/// An existing table must be ours: the same partition column and the columns we write.
fn check_schema(dataset: Dataset, url: &Url, s: SnapshotRef) -> anyhow::Result<SnapshotRef> {
    let partitions = s.table_configuration().logical_partition_columns();
    anyhow::ensure!(
        partitions == [PARTITION_COLUMN.to_string()],
        "{url} is a Delta table partitioned by {partitions:?}, not by {PARTITION_COLUMN}: PARQUET_URL points at another table"
    );
    let want = table_schema(dataset);
    let have = s.schema();
    for field in want.fields() {
        anyhow::ensure!(
            have.field(field.name()).map(|f| f.data_type()) == Some(field.data_type()),
            "{url}: the table has no column {} of type {} (PARQUET_URL points at another table, or one of an incompatible version)",
            field.name(),
            field.data_type()
        );
    }
    Ok(s)
}

/// The Delta schema of `dataset`'s table: the Parquet columns, then the partition column.
pub fn table_schema(dataset: Dataset) -> Arc<StructType> {
    let arrow = match dataset {
        Dataset::Raw => super::parquet::raw_schema(),
        Dataset::Processed => super::parquet::processed_schema(),
    };
    let mut fields: Vec<StructField> = super::parquet::delta_fields(&arrow);
    fields.push(StructField::not_null(PARTITION_COLUMN, DataType::DATE));
    #[allow(clippy::expect_used)]
    Arc::new(StructType::try_new(fields).expect("column names are unique"))
}

/// The add-files row the kernel takes for `add`.
fn add_file_row(add: &AddFile) -> anyhow::Result<RecordBatch> {
    let mut partition = MapBuilder::new(
        Some(MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        }),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    partition.keys().append_value(PARTITION_COLUMN);
    partition
        .values()
        .append_value(add.date.format("%Y-%m-%d").to_string());
    partition.append(true)?;
    let entry = ArrowType::Struct(Fields::from(vec![
        Field::new("key", ArrowType::Utf8, false),
        Field::new("value", ArrowType::Utf8, true),
    ]));
    let schema = ArrowSchema::new(vec![
        Field::new("path", ArrowType::Utf8, false),
        Field::new(
            "partitionValues",
            ArrowType::Map(Arc::new(Field::new("key_value", entry, false)), false),
            false,
        ),
        Field::new("size", ArrowType::Int64, false),
        Field::new("modificationTime", ArrowType::Int64, false),
        Field::new("stats", add.stats.data_type().clone(), true),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![add.path.as_str()])),
        Arc::new(partition.finish()),
        Arc::new(Int64Array::from(vec![i64::try_from(add.size)?])),
        Arc::new(Int64Array::from(vec![add.modified_ms])),
        Arc::new(add.stats.clone()),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
}

/// The live files of `snapshot`.
fn live_files(engine: &Engine, snapshot: &SnapshotRef) -> anyhow::Result<HashSet<String>> {
    let scan = snapshot.clone().scan_builder().build().map_err(kernel)?;
    let mut live = HashSet::new();
    for meta in scan.scan_metadata(engine).map_err(kernel)? {
        live = meta
            .map_err(kernel)?
            .visit_scan_files(live, |acc: &mut HashSet<String>, f: ScanFile| {
                acc.insert(f.path);
            })
            .map_err(kernel)?;
    }
    Ok(live)
}

/// The scan rows of `wanted` (to remove them), and how many were found.
fn select_files(
    engine: &Engine,
    snapshot: &SnapshotRef,
    wanted: &HashSet<&str>,
) -> anyhow::Result<(Vec<FilteredEngineData>, usize)> {
    let scan = snapshot.clone().scan_builder().build().map_err(kernel)?;
    let mut out = Vec::new();
    let mut found = 0;
    for meta in scan.scan_metadata(engine).map_err(kernel)? {
        let (data, selection) = meta.map_err(kernel)?.scan_files.into_parts();
        let data = ArrowEngineData::try_from_engine_data(data).map_err(kernel)?;
        let paths = data
            .record_batch()
            .column_by_name("path")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .context("scan metadata without a path column")?
            .clone();
        // A selection vector shorter than the batch selects the rest.
        let keep: Vec<bool> = (0..paths.len())
            .map(|i| {
                selection.get(i).copied().unwrap_or(true)
                    && !paths.is_null(i)
                    && wanted.contains(paths.value(i))
            })
            .collect();
        let n = keep.iter().filter(|k| **k).count();
        if n > 0 {
            found += n;
            out.push(FilteredEngineData::try_new(data, keep).map_err(kernel)?);
        }
    }
    Ok((out, found))
}
