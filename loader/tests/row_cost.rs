//! What a row costs PostgreSQL (issue 22), and that the cheaper way loses nothing: payloads
//! lz4-compressed (migration 8), the payload text waiting for its raw Parquet file in an
//! unlogged table (migration 9).

mod support;

use loader::sink::Cut;
use support::*;

fn records(topic: &str, offsets: std::ops::Range<i64>) -> Vec<loader::batch::LoadRecord> {
    records_in(topic, 0, offsets)
}

/// Migration 8: the payloads a batch stores are lz4-compressed (pglz was most of what a raw row
/// cost PostgreSQL), on a server built with lz4, as Debian's and the official images are.
#[tokio::test]
async fn payloads_are_stored_lz4_compressed() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = migrated_sinks(&db, dir.path()).await;
    s.write(&records("t", 0..2)).await.unwrap();
    let methods: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT pg_column_compression(r.payload), pg_column_compression(w.payload_text)
         FROM raw_data r JOIN raw_payload_text w USING (raw_id)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let lz4 = (Some("lz4".to_string()), Some("lz4".to_string()));
    assert_eq!(
        methods,
        vec![lz4.clone(), lz4],
        "compression of (payload, payload_text)"
    );
    db.drop_db().await;
}

/// Migration 9: the payload text waiting for its raw file lives in an unlogged table (no WAL, no
/// replica, no backup) and goes once the file is published. A crash empties unlogged tables: the
/// raw file of records waiting then is written from the jsonb, the same JSON value.
#[tokio::test]
async fn waiting_payloads_are_unlogged_and_a_crash_that_empties_them_loses_nothing() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = migrated_sinks(&db, dir.path()).await;
    let persistence: String = sqlx::query_scalar(
        "SELECT relpersistence::text FROM pg_class WHERE oid = 'raw_payload_text'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(persistence, "u", "raw_payload_text is unlogged");
    let batch = records("t", 0..2);
    s.write(&batch).await.unwrap();
    let waiting: Vec<String> =
        sqlx::query_scalar("SELECT payload_text FROM raw_payload_text ORDER BY payload_text")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut stored: Vec<String> = batch.iter().map(|r| r.payload_text.clone()).collect();
    stored.sort();
    assert_eq!(waiting, stored, "the text waits as the loader stored it");
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data WHERE payload_text IS NOT NULL")
            .await,
        0,
        "not in raw_data"
    );
    // What a crash leaves: the unlogged table empty, the rows waiting.
    sqlx::query("TRUNCATE raw_payload_text")
        .execute(&db.pool)
        .await
        .unwrap();
    let report = s.rolls().roll("t", 0, Cut::All).await.unwrap();
    assert_eq!((report.written, report.raw_rows), (2, 2), "{report:?}");
    let in_file: Vec<serde_json::Value> = parquet_rows(&dir.path().join("raw"), &["payload"])
        .into_iter()
        .map(|row| serde_json::from_str(row[0].as_deref().unwrap()).unwrap())
        .collect();
    let want: Vec<serde_json::Value> = batch
        .iter()
        .map(|r| serde_json::from_str(&r.payload_text).unwrap())
        .collect();
    assert_eq!(in_file, want, "the raw file holds the same JSON values");
    // Its user counts are raw_data's (not decoded again when the file is built).
    let mut counts: Vec<String> = parquet_rows(&dir.path().join("raw"), &["user_count"])
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    let mut want_counts: Vec<String> = batch.iter().map(|r| r.users.len().to_string()).collect();
    counts.sort();
    want_counts.sort();
    assert_eq!(counts, want_counts, "the raw file's user counts");
    db.drop_db().await;
}
