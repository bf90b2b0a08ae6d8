//! The batch write, the Parquet rolls and recovery against a real PostgreSQL: the crash
//! windows of the roll protocol, reproduced by leaving the ledger and the store as a crash would.

mod support;

use chrono::Utc;
use loader::sink::store::Store;
use loader::sink::{Cut, RollPolicy, Rolls, Sinks};
use std::time::Duration;
use support::*;

fn records(topic: &str, offsets: std::ops::Range<i64>) -> Vec<loader::batch::LoadRecord> {
    records_in(topic, 0, offsets)
}

/// Rolls whose store is a file, not a directory: every write fails, claims succeed.
fn broken_rolls(db: &TestDb, dir: &std::path::Path) -> Rolls {
    let not_a_dir = dir.join("not-a-directory");
    std::fs::write(&not_a_dir, b"").unwrap();
    Rolls::new(
        db.pool.clone(),
        Store::Local(not_a_dir),
        RollPolicy {
            max_bytes: 1 << 30,
            interval: Duration::ZERO,
        },
    )
    .unwrap()
}

/// Rolls into `dir`, closing files at `max_bytes` of input; nothing is due by age.
fn rolls(pool: &sqlx::PgPool, dir: &std::path::Path, max_bytes: u64) -> Rolls {
    let store = Store::Local(dir.to_path_buf());
    store.prepare().unwrap();
    Rolls::new(
        pool.clone(),
        store,
        RollPolicy {
            max_bytes,
            interval: Duration::from_secs(3600),
        },
    )
    .expect("rolls")
}

/// Deletes the lake's Delta logs: the objects stay, in no table.
fn forget_tables(dir: &std::path::Path) {
    for dataset in ["raw", "processed"] {
        std::fs::remove_dir_all(dir.join(dataset).join("_delta_log")).unwrap();
    }
}

async fn sinks(db: &TestDb, dir: &std::path::Path) -> Sinks {
    migrated_sinks(db, dir).await
}

/// The processed Parquet rows under `dir`.
fn processed_rows(dir: &std::path::Path) -> usize {
    parquet_rows(&dir.join("processed"), &["raw_id"]).len()
}

async fn waiting(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
        .await
}

#[tokio::test]
async fn a_batch_written_twice_is_rolled_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    let batch = records("t", 0..3);
    let first = s.write(&batch).await.unwrap();
    assert_eq!(
        (
            first.new_records,
            first.duplicate_records,
            first.users_written
        ),
        (3, 0, 333)
    );
    assert!(parquet_files(dir.path()).is_empty(), "nothing rolled yet");
    assert_eq!(waiting(&db).await, 3);
    // Overlapping re-delivery: offsets 1..4, of which only 3 is new.
    let second = s.write(&records("t", 1..4)).await.unwrap();
    assert_eq!(
        (
            second.new_records,
            second.duplicate_records,
            second.users_written
        ),
        (1, 2, 111)
    );
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 444);
    let report = s.rolls().roll("t", 0, Cut::All).await.unwrap();
    assert_eq!((report.claimed, report.written), (2, 2));
    assert_eq!((report.raw_rows, report.processed_rows), (4, 444));
    assert_eq!(processed_rows(dir.path()), 444);
    assert_eq!(
        parquet_files(dir.path()).len(),
        2,
        "one raw and one processed file"
    );
    assert_eq!(waiting(&db).await, 0);
    // Everything again: loaded before, so written nowhere, and nothing new to roll.
    let third = s.write(&records("t", 0..4)).await.unwrap();
    assert_eq!((third.new_records, third.duplicate_records), (0, 4));
    let again = s.rolls().roll("t", 0, Cut::All).await.unwrap();
    assert_eq!((again.claimed, again.written), (0, 0));
    s.write(&records("t", 4..7)).await.unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    assert_eq!(
        db.count(
            "SELECT count(*) FROM raw_data r WHERE NOT EXISTS (SELECT 1 FROM parquet_files f WHERE f.path = r.raw_file AND f.state = 'published' AND f.dataset = 'raw' AND r.kafka_offset BETWEEN f.first_offset AND f.last_offset)
                                              OR NOT EXISTS (SELECT 1 FROM parquet_files f WHERE f.path = r.processed_file AND f.state = 'published' AND f.dataset = 'processed' AND r.kafka_offset BETWEEN f.first_offset AND f.last_offset)"
        )
        .await,
        0,
        "every raw row names the published files that hold it"
    );
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 777);
    assert_eq!(processed_rows(dir.path()), 777);
    assert_eq!(
        db.count("SELECT count(*) FROM raw_payload_text").await
            + db.count("SELECT count(*) FROM raw_data WHERE payload_text IS NOT NULL")
                .await,
        0,
        "the exact payload is kept only until its raw file is published"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("_staging"))
            .unwrap()
            .count(),
        0
    );
    // Persian script survives PostgreSQL and Parquet byte for byte.
    let persian: Vec<String> =
        sqlx::query_scalar("SELECT full_name FROM processed_data WHERE nationality = 'IR'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!persian.is_empty());
    let pq: std::collections::HashSet<String> =
        parquet_rows(&dir.path().join("processed"), &["full_name"])
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect();
    for name in &persian {
        assert!(
            name.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c)),
            "{name}"
        );
        assert!(pq.contains(name), "{name} in Parquet");
    }
    db.drop_db().await;
}

/// Files close at the roll size; a part-filled file waits for more (or for the interval).
#[tokio::test]
async fn files_roll_at_their_size_and_the_rest_waits() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let batch = records("t", 0..5);
    let size = batch[0].payload_text.len() as u64;
    let s = Sinks::new(db.pool.clone(), rolls(&db.pool, dir.path(), size * 2));
    s.write(&batch).await.unwrap();
    let w = s.rolls().waiting().await.unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].records, w[0].bytes as u64), (5, size * 5));
    let policy = s.rolls().policy();
    assert_eq!(policy.due(&w[0], Utc::now()), Some(Cut::Full));
    let report = s.rolls().roll("t", 0, Cut::Full).await.unwrap();
    assert_eq!(
        report.written, 4,
        "two files of two records, raw and processed"
    );
    assert_eq!(waiting(&db).await, 1, "the fifth waits for a full file");
    let spans: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT first_offset, last_offset FROM parquet_files WHERE dataset = 'raw' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(spans, vec![(0, 1), (2, 3)]);
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    assert_eq!(waiting(&db).await, 0);
    assert_eq!(parquet_rows(&dir.path().join("raw"), &["raw_id"]).len(), 5);
    db.drop_db().await;
}

/// A roll that claimed its files and died before writing them (here: the store refused) leaves
/// them pending; recovery writes them from the rows that name them, under the same names.
#[tokio::test]
async fn a_claimed_roll_that_died_is_written_by_recovery() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let broken = broken_rolls(&db, dir.path());
    let s = Sinks::new(db.pool.clone(), broken);
    s.write(&records("t", 0..2)).await.unwrap();
    let err = s.rolls().roll("t", 0, Cut::All).await.unwrap_err();
    assert_eq!(err.sink(), loader::events::Sink::Parquet, "{err}");
    let pending: Vec<String> =
        sqlx::query_scalar("SELECT path FROM parquet_files WHERE state = 'pending' ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending.len(), 2, "claimed, not written");
    assert_eq!(
        waiting(&db).await,
        0,
        "the records belong to the claimed files"
    );
    let s = sinks(&db, dir.path()).await;
    let report = s.recover().await.unwrap();
    assert_eq!((report.written, report.unbuildable), (2, 0));
    assert_eq!(processed_rows(dir.path()), 222);
    let mut written: Vec<String> = parquet_files(dir.path())
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
        .collect();
    written.sort();
    assert_eq!(written.len(), pending.len());
    for (object, path) in written.iter().zip(&pending) {
        let stem = path.trim_end_matches(".parquet");
        assert!(
            object.starts_with(&format!("{stem}-g0-")),
            "the names the claim fixed: {object} for {path}"
        );
    }
    db.drop_db().await;
}

/// Objects a crash left behind before the commit (whole, or torn by something else) are never
/// reused or overwritten: recovery writes each file as a new object, the table holds each file
/// once, and the leftovers stay as they were, in no table, for vacuum.
#[tokio::test]
async fn objects_from_before_a_crash_are_left_for_vacuum_not_reused() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let raw = parquet_files(&dir.path().join("raw")).remove(0);
    let processed = parquet_files(&dir.path().join("processed")).remove(0);
    let whole = std::fs::read(&raw).unwrap();
    let modified = std::fs::metadata(&raw).unwrap().modified().unwrap();
    std::fs::write(&processed, &whole[..whole.len() / 2]).unwrap();
    // As if the crash came before the commit: the objects are in no table.
    forget_tables(dir.path());
    sqlx::query("UPDATE parquet_files SET state = 'pending', published_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let s = sinks(&db, dir.path()).await;
    let report = s.recover().await.unwrap();
    assert_eq!(report.written, 2);
    let live = parquet_files(dir.path());
    assert_eq!(live.len(), 2);
    assert!(
        !live.contains(&raw) && !live.contains(&processed),
        "new objects: {live:?}"
    );
    assert_eq!(
        std::fs::metadata(&raw).unwrap().modified().unwrap(),
        modified,
        "the leftover is untouched"
    );
    assert_eq!(
        std::fs::read(&processed).unwrap().len(),
        whole.len() / 2,
        "the torn one too"
    );
    assert_eq!(
        processed_rows(dir.path()),
        222,
        "each user once, from the table"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
            .await,
        0
    );
    db.drop_db().await;
}

/// A loader of the previous version committed a batch (its files `staged`) and died before
/// moving them into place: the new loader writes them from the rows, so a rolling upgrade
/// loses nothing.
#[tokio::test]
async fn files_staged_by_the_previous_version_are_written_from_their_rows() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let before = parquet_rows(
        &dir.path().join("processed"),
        &["raw_id", "user_uuid", "email"],
    );
    for f in parquet_files(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    // The previous version had no tables.
    forget_tables(dir.path());
    let s = sinks(&db, dir.path()).await;
    std::fs::write(dir.path().join("_staging/processed-old.parquet"), b"old").unwrap();
    sqlx::query("UPDATE parquet_files SET state = 'staged', staged_path = '_staging/processed-old.parquet', published_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = s.recover().await.unwrap();
    assert_eq!((report.written, report.unbuildable), (2, 0));
    let mut after = parquet_rows(
        &dir.path().join("processed"),
        &["raw_id", "user_uuid", "email"],
    );
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "the same users, under the same raw ids");
    assert_eq!(parquet_rows(&dir.path().join("raw"), &["raw_id"]).len(), 2);
    db.drop_db().await;
}

/// A replica that hangs while writing a file (a paused process) holds that file's lease: a sweep
/// skips the file instead of waiting, batches go on, and once the lease runs out the sweep
/// writes it. No transaction is held open meanwhile (the server would end an idle one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_never_waits_behind_a_hung_writer() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 10..11)).await.unwrap();
    // Claimed by a roll whose writes failed (a store that is not a directory): both files pending.
    let broken = broken_rolls(&db, dir.path());
    broken.roll("t", 0, Cut::All).await.unwrap_err();
    let path: String = sqlx::query_scalar(
        "SELECT path FROM parquet_files WHERE dataset = 'processed' AND state = 'pending'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // A writer took the processed file's lease and hangs.
    sqlx::query(
        "UPDATE parquet_files SET lease_owner = gen_random_uuid(), lease_until = now() + interval '1 hour' WHERE path = $1",
    )
    .bind(&path)
    .execute(&db.pool)
    .await
    .unwrap();
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(open, 0);
    let sweep = tokio::time::timeout(Duration::from_secs(10), s.recover())
        .await
        .expect("the sweep does not wait for the lease")
        .unwrap();
    assert_eq!(
        (sweep.busy, sweep.written),
        (1, 1),
        "the raw file is written, the leased one left"
    );
    let objects_of = |path: &str| {
        let stem = path.trim_end_matches(".parquet").to_string();
        parquet_files(&dir.path().join("processed"))
            .into_iter()
            .filter(|f| {
                f.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&stem)
            })
            .count()
    };
    assert_eq!(objects_of(&path), 0);
    let written = tokio::time::timeout(Duration::from_secs(10), s.write(&records("t", 0..1)))
        .await
        .expect("a batch is not held up by a hung writer")
        .unwrap();
    assert_eq!(written.new_records, 1);
    // The hung writer's lease runs out.
    sqlx::query(
        "UPDATE parquet_files SET lease_until = now() - interval '1 second' WHERE path = $1",
    )
    .bind(&path)
    .execute(&db.pool)
    .await
    .unwrap();
    let after = s.recover().await.unwrap();
    assert_eq!((after.busy, after.written), (0, 1));
    assert_eq!(objects_of(&path), 1);
    db.drop_db().await;
}

/// With one connection in the pool, a roll and recovery must never wait for a second one while
/// holding the first.
#[tokio::test]
async fn rolls_and_recovery_work_with_a_single_connection() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let pool = loader::sink::lazy_pool(&db.url, 1).unwrap();
    let s = Sinks::new(pool.clone(), rolls(&pool, dir.path(), 1 << 20));
    s.write(&records("t", 0..1)).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), s.rolls().roll("t", 0, Cut::All))
        .await
        .expect("the roll finishes")
        .unwrap();
    assert_eq!(report.written, 2);
    sqlx::query("UPDATE parquet_files SET state = 'rewrite', generation = generation + 1")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), s.recover())
        .await
        .expect("recovery finishes")
        .unwrap();
    assert_eq!(report.written, 2);
    db.drop_db().await;
}

/// The connection drops right after the claim's COMMIT went out (the server committed; the
/// loader cannot know): the claimed files are pending in the ledger and recovery writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_commit_outcome_is_unknown_is_finished_by_recovery() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let cutter = CommitCutter::start(&db.url).await;
    let pool = loader::sink::lazy_pool(&cutter.url, 2).unwrap();
    let s = Sinks::new(pool.clone(), rolls(&pool, dir.path(), 1 << 30));
    s.write(&records("t", 0..2)).await.unwrap();
    cutter.arm();
    let err = s
        .rolls()
        .roll("t", 0, Cut::All)
        .await
        .expect_err("the COMMIT's answer never came");
    assert!(!err.is_data_error(), "an outage, not poison: {err}");
    assert_eq!(cutter.cuts(), 1);
    assert_eq!(waiting(&db).await, 0, "the server committed the claim");
    let report = s.recover().await.unwrap();
    assert_eq!((report.written, report.unbuildable), (2, 0));
    // The re-delivered batch is all duplicates; nothing waits and nothing is written twice.
    let again = s.write(&records("t", 0..2)).await.unwrap();
    assert_eq!((again.new_records, again.duplicate_records), (0, 2));
    assert_eq!(s.rolls().roll("t", 0, Cut::All).await.unwrap().written, 0);
    assert_eq!(processed_rows(dir.path()), 222);
    assert_eq!(parquet_rows(&dir.path().join("raw"), &["raw_id"]).len(), 2);
    db.drop_db().await;
}

#[tokio::test]
async fn migrate_check_reports_pending_then_up_to_date() {
    let db = TestDb::new().await;
    let before = loader::migrate::problems(&db.pool).await.unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(
        before.len(),
        migrations,
        "every migration pending: {before:?}"
    );
    assert!(
        before.iter().all(|p| p.contains("not applied")),
        "{before:?}"
    );
    loader::migrate::apply(&db.pool).await.unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    assert!(
        loader::migrate::problems(&db.pool)
            .await
            .unwrap()
            .is_empty()
    );
    // A migration edited after it was applied is reported, not silently accepted.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = (SELECT min(version) FROM _sqlx_migrations)")
        .execute(&db.pool)
        .await
        .unwrap();
    let changed = loader::migrate::problems(&db.pool).await.unwrap();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].contains("different contents"), "{changed:?}");
    db.drop_db().await;
}

/// `records` of `topic` at `offsets`, as if read from partition `partition`.
/// A roll a commit: past the checkpoint interval, the table has a checkpoint (and
/// `_last_checkpoint`), and readers (the kernel, the `deltalake` package) read it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_keeps_the_log_short() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    for offset in 0..12 {
        s.write(&records("t", offset..offset + 1)).await.unwrap();
        s.rolls().roll("t", 0, Cut::All).await.unwrap();
    }
    for dataset in ["raw", "processed"] {
        let log = dir.path().join(dataset).join("_delta_log");
        assert!(
            log.join("00000000000000000010.checkpoint.parquet")
                .is_file(),
            "{dataset}: {:?}",
            std::fs::read_dir(&log)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        let last: serde_json::Value =
            serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
        assert_eq!(last["version"], 10, "{dataset}");
        assert_eq!(
            parquet_files(&dir.path().join(dataset)).len(),
            12,
            "{dataset}"
        );
    }
    let read = support::engines::read(
        "deltalake",
        &dir.path().join("raw").to_string_lossy(),
        &["raw_id"],
    );
    assert_eq!((read.rows, read.files), (12, Some(12)));
    db.drop_db().await;
}

/// Two replicas, each with its own view of the tables, roll at the same moment, again and again:
/// the table is created once, the commits that lose a race are retried, and every file is in the
/// table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_committing_at_once_add_each_file_once() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let a = sinks(&db, dir.path()).await;
    let b = sinks(&db, dir.path()).await;
    for round in 0..6 {
        a.write(&records_in("t", 0, round..round + 1))
            .await
            .unwrap();
        b.write(&records_in("t", 1, round..round + 1))
            .await
            .unwrap();
        let (ra, rb) = tokio::join!(
            a.rolls().roll("t", 0, Cut::All),
            b.rolls().roll("t", 1, Cut::All)
        );
        assert_eq!(
            (ra.unwrap().written, rb.unwrap().written),
            (2, 2),
            "round {round}"
        );
    }
    for dataset in ["raw", "processed"] {
        let table = dir.path().join(dataset);
        let first =
            std::fs::read_to_string(table.join("_delta_log/00000000000000000000.json")).unwrap();
        assert_eq!(first.matches("\"metaData\"").count(), 1, "created once");
        let files = parquet_files(&table);
        assert_eq!(files.len(), 12, "{dataset}: {files:?}");
    }
    let read = support::engines::read(
        "deltalake",
        &dir.path().join("processed").to_string_lossy(),
        &["raw_id", "user_index"],
    );
    let keys: std::collections::HashSet<(String, String)> = read
        .values("raw_id")
        .into_iter()
        .zip(read.values("user_index"))
        .collect();
    assert_eq!((read.rows, keys.len()), (12 * 111, 12 * 111));
    db.drop_db().await;
}

/// Files published before the tables existed (raw_id as a 16-byte Parquet UUID, in no table):
/// migration 5 marks them for adoption and recovery rebuilds each into its table, raw_id as
/// text, the same rows, the old object gone.
#[tokio::test]
async fn files_published_before_the_tables_are_adopted() {
    use arrow::array::{Array, AsArray, FixedSizeBinaryArray, RecordBatch};
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..3)).await.unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let before = parquet_rows(&dir.path().join("processed"), &["raw_id", "user_uuid"]);
    // What the previous version left: no tables, each file under its ledger name, raw_id as 16
    // bytes.
    let old_files: Vec<std::path::PathBuf> = parquet_files(dir.path())
        .into_iter()
        .map(|object| {
            let name = object.to_string_lossy().to_string();
            let legacy = format!("{}.parquet", &name[..name.rfind("-g0-").unwrap()]);
            std::fs::rename(&object, &legacy).unwrap();
            std::path::PathBuf::from(legacy)
        })
        .collect();
    assert_eq!(old_files.len(), 2);
    forget_tables(dir.path());
    for file in &old_files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        let mut fields: Vec<_> = batches[0].schema().fields().iter().cloned().collect();
        fields[0] = std::sync::Arc::new(arrow::datatypes::Field::new(
            "raw_id",
            arrow::datatypes::DataType::FixedSizeBinary(16),
            false,
        ));
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(file).unwrap(),
            schema.clone(),
            None,
        )
        .unwrap();
        for b in batches {
            let ids = b.column(0).as_string::<i32>();
            let bytes = FixedSizeBinaryArray::try_from_iter(
                ids.iter()
                    .map(|v| uuid::Uuid::parse_str(v.unwrap()).unwrap().into_bytes()),
            )
            .unwrap();
            assert_eq!(bytes.len(), b.num_rows());
            let mut columns = b.columns().to_vec();
            columns[0] = std::sync::Arc::new(bytes);
            w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
                .unwrap();
        }
        w.close().unwrap();
    }
    // Migration 5's own statements for the files it finds.
    let migration = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/20261206000005_delta_tables.sql"
    ))
    .unwrap();
    let updates: Vec<String> = migration
        .split(';')
        .map(str::trim)
        .filter(|st| st.starts_with("UPDATE parquet_files"))
        .map(str::to_string)
        .collect();
    assert_eq!(updates.len(), 2);
    sqlx::query("UPDATE parquet_files SET object = NULL, table_version = NULL, generation = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    for st in updates {
        sqlx::raw_sql(sqlx::AssertSqlSafe(st))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'adopt'")
            .await,
        2
    );

    let s = sinks(&db, dir.path()).await;
    let report = s.recover().await.unwrap();
    assert_eq!(report.written, 2);
    let adopted = parquet_files(dir.path());
    assert!(
        adopted.iter().all(|p| p.to_string_lossy().contains("-g1-")),
        "{adopted:?}"
    );
    for old in &old_files {
        assert!(!old.exists(), "the old object is gone: {}", old.display());
    }
    let mut after = parquet_rows(&dir.path().join("processed"), &["raw_id", "user_uuid"]);
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "the same rows, raw_id as text");
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
            .await,
        0
    );
    db.drop_db().await;
}

/// One file that cannot be written (its date directory is blocked by a file of that name: a
/// store that refuses that one key) does not hold the others up: they are written and committed,
/// the roll reports the failure, and the blocked file waits (an outage, not poison) until the
/// store takes it.
#[tokio::test]
async fn one_failing_file_does_not_block_the_others() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    let mut old = records_in("t", 0, 0..1);
    let day = chrono::DateTime::parse_from_rfc3339("2020-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    old[0].source.fetched_at = day;
    s.write(&old).await.unwrap();
    s.write(&records_in("t", 0, 1..2)).await.unwrap();
    for dataset in ["raw", "processed"] {
        std::fs::create_dir_all(dir.path().join(dataset)).unwrap();
        std::fs::write(
            dir.path().join(dataset).join("date=2020-01-01"),
            b"in the way",
        )
        .unwrap();
    }
    let err = s.rolls().roll("t", 0, Cut::All).await.unwrap_err();
    assert_eq!(err.sink(), loader::events::Sink::Parquet, "{err}");
    for dataset in ["raw", "processed"] {
        let files = parquet_files(&dir.path().join(dataset));
        assert_eq!(
            files.len(),
            1,
            "{dataset}: the good file is in the table: {files:?}"
        );
        assert!(!files[0].to_string_lossy().contains("2020-01-01"));
    }
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'pending'")
            .await,
        2,
        "the blocked pair waits"
    );
    for dataset in ["raw", "processed"] {
        std::fs::remove_file(dir.path().join(dataset).join("date=2020-01-01")).unwrap();
    }
    let report = s.recover().await.unwrap();
    assert_eq!(report.written, 2);
    assert_eq!(parquet_files(&dir.path().join("processed")).len(), 2);
    db.drop_db().await;
}

/// A raw file whose records no longer decode (here: a stored payload the transform refuses) is
/// marked `failed` with its reason, counted, and not retried forever; the other files are
/// written — the processed file of the same records too, since it is built from the rows
/// PostgreSQL holds, not from a new transform.
#[tokio::test]
async fn a_file_that_cannot_be_built_is_marked_failed_beside_good_ones() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records_in("t", 0, 0..1)).await.unwrap();
    s.write(&records_in("t", 1, 0..1)).await.unwrap();
    sqlx::query("UPDATE raw_payload_text SET payload_text = '{\"results\": []}' WHERE raw_id IN (SELECT raw_id FROM raw_data WHERE kafka_partition = 1)")
        .execute(&db.pool)
        .await
        .unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let report = s.rolls().roll("t", 1, Cut::All).await.unwrap();
    assert_eq!((report.unbuildable, report.written), (1, 1), "{report:?}");
    let failed: Vec<(String, String)> = sqlx::query_as(
        "SELECT path, failed_reason FROM parquet_files WHERE state = 'failed' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].0.starts_with("raw/") && failed[0].0.contains("-p1-"),
        "{failed:?}"
    );
    assert!(failed[0].1.contains("no longer decodes"), "{failed:?}");
    assert_eq!(s.rolls().failed_files().await.unwrap(), 1);
    assert_eq!(parquet_files(&dir.path().join("raw")).len(), 1);
    assert_eq!(parquet_files(&dir.path().join("processed")).len(), 2);
    // Not retried by the sweep: nothing pending.
    let again = s.recover().await.unwrap();
    assert_eq!((again.written, again.unbuildable), (0, 0));
    db.drop_db().await;
}

/// A processed file holds `processed_data`'s rows as PostgreSQL holds them when it is built
/// (what a `--reprocess` recomputed, or a correction an operator made), not a new transform of
/// the payloads.
#[tokio::test]
async fn processed_files_hold_the_rows_postgres_holds() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    sqlx::query("UPDATE processed_data SET full_name = 'as stored' WHERE user_index < 5")
        .execute(&db.pool)
        .await
        .unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let mut in_file = parquet_rows(
        &dir.path().join("processed"),
        &["raw_id", "user_index", "full_name", "processed_at"],
    );
    let mut in_db: Vec<Vec<Option<String>>> =
        sqlx::query_as::<_, (uuid::Uuid, i32, String, chrono::DateTime<Utc>)>(
            "SELECT raw_id, user_index, full_name, processed_at FROM processed_data",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, i, name, at)| {
            vec![
                Some(id.to_string()),
                Some(i.to_string()),
                Some(name),
                Some(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
            ]
        })
        .collect();
    in_file.sort();
    in_db.sort();
    assert_eq!(in_file.len(), 222);
    assert_eq!(in_file, in_db);
    db.drop_db().await;
}

/// Vacuum deletes what no table version within the retention holds — here a rewrite's old file,
/// once the retention has passed since the commit that removed it, not since it was written (a
/// reader of the version before, or a time-travel query, still reads it until then) — and
/// nothing else: not the table's files, not the log, not a file younger than the retention (an
/// upload not yet committed). `--dry-run` deletes nothing; the command refuses a retention
/// under an hour by its variable's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_deletes_only_old_files_no_version_holds() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    s.rolls().roll("t", 0, Cut::All).await.unwrap();
    let old = parquet_files(&dir.path().join("processed")).remove(0);
    sqlx::query(
        "UPDATE parquet_files SET state = 'rewrite', generation = generation + 1 WHERE dataset = 'processed'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(s.recover().await.unwrap().written, 1);
    let live = parquet_files(dir.path());
    assert_eq!(live.len(), 2);
    assert!(
        !live.contains(&old) && old.exists(),
        "replaced, still on disk"
    );
    // An hour and a half old; and an upload of a moment ago that is in no table yet.
    let then = std::time::SystemTime::now() - Duration::from_secs(5400);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(then)
        .unwrap();
    let fresh = old.with_file_name("t-p0-o9-o9-00000000.parquet");
    std::fs::copy(&old, &fresh).unwrap();

    let vacuum = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
            .arg("vacuum")
            .args(args)
            .env("DATA_DIR", dir.path())
            .env("LOG_DIR", "")
            .env_remove("PARQUET_URL")
            .output()
            .unwrap()
    };
    let name = old.file_name().unwrap().to_string_lossy().to_string();
    // Written 90 minutes ago, removed a moment ago: version 1 holds it, and it is recent.
    let kept = vacuum(&["--vacuum-retention", "1h"]);
    assert!(kept.status.success(), "{kept:?}");
    let out = String::from_utf8_lossy(&kept.stdout);
    assert!(out.contains("deleted 0 files"), "{out}");
    assert!(old.exists(), "a file removed within the retention stays");
    let before = support::engines::read(
        "deltalake@1",
        &dir.path().join("processed").to_string_lossy(),
        &["raw_id"],
    );
    assert_eq!(
        before.rows, 222,
        "the version before the rewrite reads whole"
    );
    // Now the whole log is 90 minutes old: the removal too.
    for entry in std::fs::read_dir(dir.path().join("processed/_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
    }
    let refused = vacuum(&["--vacuum-retention", "10m"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("LAKE_VACUUM_RETENTION")
            || String::from_utf8_lossy(&refused.stdout).contains("LAKE_VACUUM_RETENTION"),
        "{refused:?}"
    );
    let dry = vacuum(&["--vacuum-retention", "1h", "--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        out.contains("would delete processed/") && out.contains(&name),
        "{out}"
    );
    assert!(old.exists(), "a dry run deletes nothing");

    let done = vacuum(&["--vacuum-retention", "1h"]);
    assert!(done.status.success(), "{done:?}");
    let out = String::from_utf8_lossy(&done.stdout);
    assert!(out.contains("deleted 1 files"), "{out}");
    assert!(!old.exists(), "the replaced file is gone");
    assert!(fresh.exists(), "a file younger than the retention stays");
    assert_eq!(parquet_files(dir.path()), live, "the tables' files stay");
    let read = support::engines::read(
        "deltalake",
        &dir.path().join("processed").to_string_lossy(),
        &["raw_id"],
    );
    assert_eq!(read.rows, 222, "the table reads whole");
    db.drop_db().await;
}
