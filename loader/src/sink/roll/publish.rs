//! Publishing claimed files: each built from the rows that name it and streamed to the store
//! as a new object, then the prepared files of a table committed in one commit, fenced against
//! every other writer ([`Rolls::publish`]).

use super::paths::{date_of, in_table, is_object_of};
use super::{COMMIT_ATTEMPTS, FAILURES_IN_A_ROW, LEASE, READ_BYTES, READ_USERS, RollReport, Rolls};
use crate::batch::LoadRecord;
use crate::sink::SinkError;
use crate::sink::ledger::{self, Unpublished};
use crate::sink::parquet::{self, Dataset, FileWriter};
use crate::sink::postgres;
use crate::sink::table::{AddFile, Commit, Operation, TableState};
use anyhow::Context;
use std::time::Duration;

/// One file built, uploaded and ready to enter its table.
struct Prepared {
    /// The ledger's file.
    path: String,
    /// Its generation when built.
    generation: i64,
    /// The object holding it now (relative to `PARQUET_URL`).
    object: String,
    /// An object that held it before and is in no table (an adopted file's), deleted once the
    /// new one is in.
    stale: Option<String>,
    /// Rows in it.
    rows: i64,
    /// What the commit adds.
    add: AddFile,
    /// The objects (relative to the table) of the files compacted into it: the commit removes
    /// those still live.
    replaces: Vec<String>,
    /// Whether it is a compaction (the same rows rearranged: `dataChange: false`).
    compaction: bool,
}

/// What preparing one file came to.
enum Prepare {
    /// Built and uploaded.
    Ready(Box<Prepared>),
    /// Already in the table (a commit before a crash, or another writer's).
    InTable {
        path: String,
        generation: i64,
        object: String,
        rows: i64,
    },
    /// Its records no longer transform, or none names it: it cannot be built.
    Unbuildable(String),
}

impl Rolls {
    /// Builds, uploads and commits `files` into their tables: per table, the files prepared go in
    /// one commit. One file that fails does not hold the others up: they are committed, and the
    /// first failure is returned after (the failed file waits for the next roll or sweep).
    ///
    /// Exactly once, whoever else is writing: a file's object name is fixed by its records and
    /// its generation, and before every commit attempt the table is read and then the ledger, in
    /// that order. A file already in the table is not added again (a crash after the commit, a
    /// commit whose outcome was lost, another replica that got there first); a file the ledger
    /// has moved past (a newer `--reprocess`) is dropped; anything committed by someone else
    /// after the table was read makes the put-if-absent of the next log entry fail, and the
    /// attempt starts over. A rewrite removes whatever object of the file is live and adds the
    /// new one in the same commit.
    pub async fn publish(&self, files: &[Unpublished]) -> Result<RollReport, SinkError> {
        let mut report = RollReport::default();
        let mut failure: Option<SinkError> = None;
        for dataset in [Dataset::Raw, Dataset::Processed] {
            let mine: Vec<&Unpublished> = files
                .iter()
                .filter(|f| Dataset::of_path(&f.path) == dataset)
                .collect();
            if mine.is_empty() {
                continue;
            }
            if self.failing() >= FAILURES_IN_A_ROW {
                // The store, not a file: the rest would wait out the same timeouts one by one,
                // and the failure would be reported that much later.
                failure.get_or_insert(SinkError::Parquet(anyhow::anyhow!(
                    "the store failed {FAILURES_IN_A_ROW} times in a row; {} files wait for the next attempt",
                    mine.len()
                )));
                continue;
            }
            if let Err(e) = self.publish_to(dataset, &mine, &mut report).await {
                tracing::warn!(dataset = dataset.as_str(), error = %e, "could not publish Parquet files");
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn publish_to(
        &self,
        dataset: Dataset,
        files: &[&Unpublished],
        report: &mut RollReport,
    ) -> Result<(), SinkError> {
        let lake = |e: anyhow::Error| SinkError::Parquet(e);
        // The table first, the ledger after (see `publish`).
        let table = match self.tables.state(dataset).await {
            Ok(table) => table,
            Err(e) => {
                self.failed(true);
                return Err(lake(e));
            }
        };
        let mut ready = Vec::new();
        let mut failure = None;
        // Leases renewed until the files are committed (dropped on return).
        let mut keepers = Vec::new();
        for file in files {
            if self.failing() >= FAILURES_IN_A_ROW {
                failure.get_or_insert(SinkError::Parquet(anyhow::anyhow!(
                    "the store failed {FAILURES_IN_A_ROW} times in a row; the rest waits for the next attempt"
                )));
                break;
            }
            let Some(mut keeper) = self.building(&file.path) else {
                report.busy += 1;
                continue;
            };
            let leased = {
                let mut conn = self.pool.acquire().await?;
                ledger::lease(&mut conn, &file.path, self.owner, LEASE).await?
            };
            let Some(leased) = leased else {
                report.busy += 1;
                continue;
            };
            self.keep_lease(&mut keeper);
            keepers.push(keeper);
            let prepared = self.prepare(&table, &leased).await;
            self.failed(prepared.is_err());
            match prepared {
                Ok(Prepare::Ready(p)) => ready.push(*p),
                Ok(Prepare::InTable {
                    path,
                    generation,
                    object,
                    rows,
                }) => {
                    let mut conn = self.pool.acquire().await?;
                    ledger::mark_published(
                        &mut conn,
                        &path,
                        generation,
                        &object,
                        table.version(),
                        rows,
                    )
                    .await?;
                }
                Ok(Prepare::Unbuildable(reason)) => {
                    let mut conn = self.pool.acquire().await?;
                    ledger::mark_failed(&mut conn, &leased.path, leased.generation, &reason)
                        .await?;
                    report.unbuildable += 1;
                }
                Err(e) => {
                    let mut conn = self.pool.acquire().await?;
                    ledger::release(&mut conn, &leased.path, self.owner).await?;
                    tracing::warn!(path = %file.path, error = %e, "could not write a Parquet file; the others go on");
                    failure.get_or_insert(e);
                }
            }
        }
        // A compaction commits apart: its commit changes no data (`dataChange: false`), which a
        // roll's does.
        let (compactions, data): (Vec<Prepared>, Vec<Prepared>) =
            ready.into_iter().partition(|p| p.compaction);
        match (data.is_empty(), compactions.is_empty()) {
            (true, true) => {}
            (false, true) => self.commit(dataset, table, data, report).await?,
            (true, false) => self.commit(dataset, table, compactions, report).await?,
            (false, false) => {
                self.commit(dataset, table.clone(), data, report).await?;
                self.commit(dataset, table, compactions, report).await?;
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Commits `ready` files into `dataset`'s table, starting from `table` (read before the
    /// ledger was), re-reading both after every conflict or unknown outcome.
    async fn commit(
        &self,
        dataset: Dataset,
        mut table: TableState,
        mut ready: Vec<Prepared>,
        report: &mut RollReport,
    ) -> Result<(), SinkError> {
        let lake = |e: anyhow::Error| SinkError::Parquet(e);
        let mut last_error = None;
        for attempt in 0..COMMIT_ATTEMPTS {
            if attempt > 0 {
                table = self.tables.state(dataset).await.map_err(lake)?;
                // The ledger after the table: a file moved on by then is not ours to add.
                let paths: Vec<String> = ready.iter().map(|p| p.path.clone()).collect();
                let now = {
                    let mut conn = self.pool.acquire().await?;
                    ledger::generations(&mut conn, &paths).await?
                };
                ready.retain(|p| {
                    let current = now.get(&p.path) == Some(&p.generation);
                    if !current {
                        tracing::info!(path = %p.path, generation = p.generation, "the ledger moved past this file's generation while it was written; leaving it to the newer writer");
                    }
                    current
                });
            }
            // A file with an object of its generation in the table is in: ours, from an attempt
            // whose answer was lost, or another writer's (ours is then left to vacuum).
            let mut done = Vec::new();
            let mut todo = Vec::new();
            for mut p in ready {
                let prefix = in_table(&parquet::generation_prefix(&p.path, p.generation));
                match table.live_with_prefix(&prefix).next() {
                    Some(live) => {
                        p.object = format!("{}/{live}", dataset.as_str());
                        done.push(p);
                    }
                    None => todo.push(p),
                }
            }
            self.published(&done, table.version(), report).await?;
            ready = todo;
            if ready.is_empty() {
                return Ok(());
            }
            let adds: Vec<AddFile> = ready.iter().map(|p| p.add.clone()).collect();
            // Every live object of a file being written is an older generation's, or one of the
            // files compacted into it: replaced.
            let mut removes = Vec::new();
            for p in &ready {
                removes.extend(p.replaces.iter().filter(|o| table.is_live(o)).cloned());
                let stem = in_table(p.path.trim_end_matches(".parquet"));
                removes.extend(
                    table
                        .live_with_prefix(&stem)
                        .filter(|o| is_object_of(o, &stem))
                        .map(str::to_string),
                );
            }
            let operation = if ready.iter().all(|p| p.compaction) {
                Operation::Compact
            } else if removes.is_empty() {
                Operation::Append
            } else {
                Operation::Rewrite
            };
            match self
                .tables
                .commit(dataset, &table, adds, removes, operation)
                .await
            {
                Ok(Commit::Committed(version)) => {
                    crate::failpoint::hit("after-table-commit");
                    return self.published(&ready, version, report).await;
                }
                Ok(Commit::Conflicted) => {
                    tracing::debug!(
                        dataset = dataset.as_str(),
                        "another writer committed first; reading the table again"
                    );
                }
                Err(e) => {
                    // The commit may have landed: the next attempt reads the table and sees.
                    tracing::warn!(dataset = dataset.as_str(), error = %format!("{e:#}"), "a table commit failed; reading the table again");
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                }
            }
        }
        Err(SinkError::Parquet(last_error.unwrap_or_else(|| {
            anyhow::anyhow!(
                "{COMMIT_ATTEMPTS} commit attempts to the {} table lost to other writers",
                dataset.as_str()
            )
        })))
    }

    /// Marks `files` published at table `version` and deletes the stale objects they leave.
    async fn published(
        &self,
        files: &[Prepared],
        version: u64,
        report: &mut RollReport,
    ) -> Result<(), SinkError> {
        for p in files {
            let marked = {
                let mut conn = self.pool.acquire().await?;
                ledger::mark_published(&mut conn, &p.path, p.generation, &p.object, version, p.rows)
                    .await?
            };
            if marked {
                report.written += 1;
                report.bytes += p.add.size;
                match Dataset::of_path(&p.path) {
                    Dataset::Raw => report.raw_rows += p.rows as u64,
                    Dataset::Processed => report.processed_rows += p.rows as u64,
                }
            }
            if let Some(stale) = &p.stale
                && let Err(e) = self.store.delete(stale).await
            {
                tracing::warn!(object = %stale, error = %e, "could not delete an adopted file's old object; vacuum will");
            }
        }
        Ok(())
    }

    /// Builds and uploads `file` as a new object, unless an object of its generation is in the
    /// table already.
    async fn prepare(&self, table: &TableState, file: &Unpublished) -> Result<Prepare, SinkError> {
        let parquet = |e: anyhow::Error| SinkError::Parquet(e);
        let dataset = Dataset::of_path(&file.path);
        let prefix = in_table(&parquet::generation_prefix(&file.path, file.generation));
        if let Some(live) = table.live_with_prefix(&prefix).next() {
            let rows = {
                let mut conn = self.pool.acquire().await?;
                ledger::row_count(&mut conn, &file.path).await?
            };
            return Ok(Prepare::InTable {
                path: file.path.clone(),
                generation: file.generation,
                object: format!("{}/{live}", dataset.as_str()),
                rows,
            });
        }
        let object = parquet::new_object(&file.path, file.generation);
        let sink = self
            .store
            .begin(&object)
            .await
            .map_err(|e| parquet(e.into()))?;
        let mut writer = FileWriter::new(dataset, sink).map_err(|e| parquet(e.into()))?;
        let stale = match self.fill(&mut writer, file).await {
            Ok(Ok(stale)) => stale,
            Ok(Err(reason)) => {
                self.store.discard(writer.abandon()).await;
                return Ok(Prepare::Unbuildable(reason));
            }
            Err(e) => {
                self.store.discard(writer.abandon()).await;
                return Err(e);
            }
        };
        let rows = writer.rows();
        let replaces = {
            let mut conn = self.pool.acquire().await?;
            ledger::members_of(&mut conn, &file.path).await?
        };
        let (sink, stats) = writer.finish().await.map_err(parquet)?;
        let size = match self.store.complete(&object, sink).await {
            Ok(size) => size,
            Err(e) => return Err(parquet(e.into())),
        };
        crate::failpoint::hit("after-object-write");
        if dataset == Dataset::Processed {
            crate::failpoint::hit("after-processed-object-write");
        }
        let date = date_of(&file.path).map_err(parquet)?;
        Ok(Prepare::Ready(Box::new(Prepared {
            path: file.path.clone(),
            generation: file.generation,
            stale,
            rows: rows as i64,
            add: AddFile {
                path: in_table(&object),
                date,
                size,
                modified_ms: chrono::Utc::now().timestamp_millis(),
                stats,
            },
            object,
            replaces: replaces.iter().map(|m| in_table(m)).collect(),
            compaction: file.state == "compact",
        })))
    }

    /// Writes `file`'s rows into `writer`: a compaction's from the objects of the files it
    /// replaces (a raw file's payloads byte for byte), an adopted file's from its old object
    /// (returned, to delete once the new one is in) or, failing that, from PostgreSQL like any
    /// other file; the reason it cannot be built, if it cannot.
    async fn fill(
        &self,
        writer: &mut FileWriter,
        file: &Unpublished,
    ) -> Result<Result<Option<String>, String>, SinkError> {
        if file.state == "compact" {
            let members = {
                let mut conn = self.pool.acquire().await?;
                ledger::members_of(&mut conn, &file.path).await?
            };
            if members.is_empty() {
                return Ok(Err("a compaction with no files to compact".into()));
            }
            // One member in memory at a time: each is smaller than a roll.
            for member in members {
                let old = self
                    .store
                    .read(&member)
                    .await
                    .map_err(|e| SinkError::Parquet(e.into()))?;
                parquet::convert(old, writer)
                    .await
                    .with_context(|| format!("compacting {member}"))
                    .map_err(SinkError::Parquet)?;
            }
            return Ok(Ok(None));
        }
        if file.state == "adopt" {
            match self.store.read(&file.path).await {
                Ok(old) => match parquet::convert(old, writer).await {
                    Ok(()) => return Ok(Ok(Some(file.path.clone()))),
                    Err(e) if writer.rows() == 0 => {
                        tracing::warn!(path = %file.path, error = %format!("{e:#}"), "an adopted file's old object cannot be converted; rebuilding it from PostgreSQL");
                    }
                    Err(e) => return Err(SinkError::Parquet(e)),
                },
                Err(e) => {
                    tracing::warn!(path = %file.path, error = %e, "an adopted file's old object cannot be read; rebuilding it from PostgreSQL");
                }
            }
        }
        let mut conn = self.pool.acquire().await?;
        Ok(self
            .build(&mut conn, writer, &file.path)
            .await?
            .map(|()| None))
    }

    /// Writes the rows that name `path` into `writer`, read a page at a time — pages of about
    /// `READ_BYTES` of payload (raw) or `READ_USERS` users (processed), sized by the file's largest record;
    /// the reason it cannot be built if no record names it or (raw) one no longer holds the users
    /// `raw_data` counted. Both hold the rows PostgreSQL holds, not a new transform's: a raw
    /// payload is checked, not decoded again (that cost as much CPU as loading it).
    async fn build(
        &self,
        conn: &mut sqlx::PgConnection,
        writer: &mut FileWriter,
        path: &str,
    ) -> Result<Result<(), String>, SinkError> {
        let dataset = Dataset::of_path(path);
        let mut after = (i64::MIN, uuid::Uuid::nil());
        let limit = postgres::page_size(conn, dataset, path, READ_BYTES, READ_USERS).await?;
        let mut records = 0usize;
        loop {
            let page: Vec<LoadRecord> = match dataset {
                Dataset::Processed => postgres::processed_rows_in(conn, path, after, limit).await?,
                Dataset::Raw => {
                    let page = postgres::raw_rows_in(conn, path, after, limit).await?;
                    if let Some((offset, error)) = page
                        .iter()
                        .find_map(|r| still_holds_its_users(r).err().map(|e| (r.source.offset, e)))
                    {
                        let reason =
                            format!("the record at offset {offset} no longer decodes: {error}");
                        tracing::error!(path, %reason, "cannot write a Parquet file");
                        return Ok(Err(reason));
                    }
                    page
                }
            };
            let Some(last) = page.last() else {
                break;
            };
            after = (last.source.offset, last.raw_id);
            let full = page.len() as i64 == limit;
            records += page.len();
            let refs: Vec<&LoadRecord> = page.iter().collect();
            writer.push(&refs).await.map_err(SinkError::Parquet)?;
            if !full {
                break;
            }
        }
        if records == 0 {
            tracing::error!(path, "the ledger names a Parquet file that no record names");
            return Ok(Err("no record names this file".into()));
        }
        Ok(Ok(()))
    }
}

/// A raw row's payload text still holds the users `raw_data` counted when it was loaded: JSON
/// with a `results` array that long (its elements skipped, not built). Catches a payload edited
/// or damaged since, at a fraction of a decode's cost.
fn still_holds_its_users(record: &LoadRecord) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        results: Vec<serde::de::IgnoredAny>,
    }
    let envelope: Envelope =
        serde_json::from_str(&record.payload_text).map_err(|e| format!("not a response: {e}"))?;
    let (holds, counted) = (envelope.results.len(), record.user_count());
    if i32::try_from(holds).ok() == Some(counted) {
        Ok(())
    } else {
        Err(format!(
            "it holds {holds} users where raw_data counted {counted}"
        ))
    }
}
