//! The ledgered write and start-up recovery against a real PostgreSQL: the crash windows of the
//! Parquet protocol, reproduced by leaving the data directory as a crash would.

mod support;

use chrono::Utc;
use loader::batch::{SourceRecord, decode};
use loader::sink::Sinks;
use loader::sink::parquet::ParquetSink;
use support::*;

fn records(topic: &str, offsets: std::ops::Range<i64>) -> Vec<loader::batch::LoadRecord> {
    let payload = include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    let recs = offsets
        .map(|o| SourceRecord {
            topic: topic.to_string(),
            partition: 0,
            offset: o,
            key: Some(format!("fetch-{o}")),
            fetch_id: Some(format!("{topic}-{o}")),
            payload: Some(payload.to_vec()),
            fetched_at: Utc::now(),
        })
        .collect();
    let (good, bad) = decode(recs, 1 << 24, Utc::now(), false);
    assert!(bad.is_empty());
    good
}

async fn sinks(db: &TestDb, dir: &std::path::Path) -> Sinks {
    loader::migrate::apply(&db.pool).await.unwrap();
    Sinks::new(db.pool.clone(), ParquetSink::new(dir).unwrap())
}

#[tokio::test]
async fn a_batch_written_twice_is_written_once() {
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
    assert_eq!(first.files_published, 2);
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
    assert_eq!(
        parquet_rows(&dir.path().join("processed"), &["raw_id"]).len(),
        444
    );
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
            .await,
        4
    );
    // The second write was speculative (the first was all new) and met duplicates: offset 3's
    // files hold it alone, and its row names them, not the discarded speculative ones.
    let (first, last): (i64, i64) = sqlx::query_as(
        "SELECT f.first_offset, f.last_offset FROM raw_data r JOIN parquet_files f ON f.path = r.processed_file WHERE r.kafka_offset = 3",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((first, last), (3, 3));
    // All duplicates, then new records again: the careful order, then back to speculation.
    let third = s.write(&records("t", 0..4)).await.unwrap();
    assert_eq!(
        (
            third.new_records,
            third.duplicate_records,
            third.files_published
        ),
        (0, 4, 0)
    );
    let fourth = s.write(&records("t", 4..6)).await.unwrap();
    assert_eq!((fourth.new_records, fourth.files_published), (2, 2));
    let fifth = s.write(&records("t", 6..7)).await.unwrap();
    assert_eq!((fifth.new_records, fifth.files_published), (1, 2));
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
    assert_eq!(
        parquet_rows(&dir.path().join("processed"), &["raw_id"]).len(),
        777
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

#[tokio::test]
async fn recovery_finishes_committed_files_and_removes_uncommitted_ones() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();

    // Crash after commit, before the move: the ledger says staged, the file sits in staging.
    let published: Vec<(String, String)> =
        sqlx::query_as("SELECT path, staged_path FROM parquet_files WHERE dataset = 'processed'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let (final_rel, staged_rel) = published[0].clone();
    std::fs::rename(dir.path().join(&final_rel), dir.path().join(&staged_rel)).unwrap();
    sqlx::query("UPDATE parquet_files SET state = 'staged', published_at = NULL WHERE path = $1")
        .bind(&final_rel)
        .execute(&db.pool)
        .await
        .unwrap();
    // Crash before commit: a staged file nobody registered.
    std::fs::write(
        dir.path().join("_staging/processed-orphan.parquet"),
        b"half a file",
    )
    .unwrap();

    let report = s.recover().await.unwrap();
    assert_eq!((report.finished, report.removed, report.missing), (1, 1, 0));
    assert!(dir.path().join(&final_rel).exists());
    assert!(parquet_files(&dir.path().join("_staging")).is_empty());
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'staged'")
            .await,
        0
    );
    assert_eq!(
        parquet_rows(&dir.path().join("processed"), &["raw_id"]).len(),
        222
    );
    // Recovery is idempotent.
    assert_eq!(
        s.recover().await.unwrap(),
        loader::sink::RecoveryReport::default()
    );
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

/// The processed Parquet rows under `dir`.
fn processed_rows(dir: &std::path::Path) -> usize {
    parquet_rows(&dir.join("processed"), &["raw_id"]).len()
}

/// The connection drops right after COMMIT went out (the server committed; the loader cannot
/// know): the staged files must stay for recovery, which publishes them because the ledger
/// names them. Deleting them, as before, left the ledger naming files that exist nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_is_unknown_keeps_its_files_for_recovery() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let cutter = CommitCutter::start(&db.url).await;
    let pool = loader::sink::lazy_pool(&cutter.url, 2).unwrap();
    let s = Sinks::new(pool, ParquetSink::new(dir.path()).unwrap());
    cutter.arm();
    let err = s
        .write(&records("t", 0..2))
        .await
        .expect_err("the COMMIT's answer never came");
    assert!(!err.is_data_error(), "an outage, not poison: {err}");
    assert_eq!(cutter.cuts(), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data").await,
        2,
        "the server committed"
    );
    let report = s.recover().await.unwrap();
    assert_eq!((report.finished, report.missing), (2, 0));
    // The re-delivered batch is all duplicates and writes no file; the files are complete.
    let again = s.write(&records("t", 0..2)).await.unwrap();
    assert_eq!((again.new_records, again.duplicate_records), (0, 2));
    assert_eq!(processed_rows(dir.path()), 222);
    assert_eq!(parquet_rows(&dir.path().join("raw"), &["raw_id"]).len(), 2);
    db.drop_db().await;
}

/// A file the ledger registered but that is gone from both staging and its place is written
/// again from the records raw_data says it holds.
#[tokio::test]
async fn recovery_rebuilds_a_registered_file_that_is_gone() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    let before = parquet_rows(
        &dir.path().join("processed"),
        &["raw_id", "user_uuid", "email"],
    );
    for f in parquet_files(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    sqlx::query("UPDATE parquet_files SET state = 'staged', published_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = s.recover().await.unwrap();
    assert_eq!((report.rebuilt, report.missing), (2, 0));
    let mut after = parquet_rows(
        &dir.path().join("processed"),
        &["raw_id", "user_uuid", "email"],
    );
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "the same users, under the same raw ids");
    assert_eq!(parquet_rows(&dir.path().join("raw"), &["raw_id"]).len(), 2);
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'staged'")
            .await,
        0
    );
    db.drop_db().await;
}

/// A batch that hangs inside its transaction (a paused replica) holds the shared ledger lock.
/// A sweep that queued an exclusive request behind it would queue every later batch of every
/// replica behind itself: the sweep only tries the lock, and batches go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_never_waits_behind_a_hung_batch() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    let mut hung = db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(loader::sink::postgres::LEDGER_LOCK)
        .execute(&mut *hung)
        .await
        .unwrap();
    // A committed file left in staging (its replica crashed before the move), and a staged
    // file nobody registered (perhaps the hung batch's own).
    s.write(&records("t", 10..11)).await.unwrap();
    let (final_rel, staged_rel): (String, String) = sqlx::query_as(
        "SELECT path, staged_path FROM parquet_files WHERE dataset = 'processed' LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    std::fs::rename(dir.path().join(&final_rel), dir.path().join(&staged_rel)).unwrap();
    sqlx::query("UPDATE parquet_files SET state = 'staged' WHERE path = $1")
        .bind(&final_rel)
        .execute(&db.pool)
        .await
        .unwrap();
    let unregistered = dir
        .path()
        .join("_staging/processed-maybe-the-hung-batch.parquet");
    std::fs::write(&unregistered, b"not yet registered").unwrap();
    let sweep = tokio::time::timeout(std::time::Duration::from_secs(10), s.recover())
        .await
        .expect("the sweep does not wait for the lock")
        .unwrap();
    assert!(
        sweep.deferred,
        "removing and rebuilding wait for the ledger"
    );
    assert_eq!(
        (sweep.finished, sweep.removed),
        (1, 0),
        "a committed file is published anyway; an unregistered one is left alone"
    );
    assert!(dir.path().join(&final_rel).exists());
    assert!(unregistered.exists());
    let written = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.write(&records("t", 0..1)),
    )
    .await
    .expect("a batch is not queued behind a sweep")
    .unwrap();
    assert_eq!(written.new_records, 1);
    hung.rollback().await.unwrap();
    let after = s.recover().await.unwrap();
    assert!(!after.deferred);
    assert_eq!(after.removed, 1, "once the ledger is free the orphan goes");
    db.drop_db().await;
}

/// With one connection in the pool, recovery must not wait for a second one while it holds
/// the first (it marked files published through the pool, and so waited on itself).
#[tokio::test]
async fn recovery_works_with_a_single_connection() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    let pool = loader::sink::lazy_pool(&db.url, 1).unwrap();
    let s = Sinks::new(pool, ParquetSink::new(dir.path()).unwrap());
    s.write(&records("t", 0..1)).await.unwrap();
    sqlx::query("UPDATE parquet_files SET state = 'staged', published_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), s.recover())
        .await
        .expect("recovery finishes")
        .unwrap();
    assert_eq!(report.finished, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'staged'")
            .await,
        0
    );
    db.drop_db().await;
}
