//! End to end against a real broker and a real database: stub → extractor → topic → loader →
//! PostgreSQL + Parquet, with exact counts and content read back.

mod support;

use randomuser_stub::{FaultPlan, Stub};
use std::collections::HashSet;
use std::time::Duration;
use support::*;

async fn stub() -> Stub {
    Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .expect("stub starts")
}

/// Every user the stub served is in PostgreSQL and in Parquet exactly once, with its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_to_postgres_and_parquet_exactly_once() {
    let stub = stub().await;
    let topic = unique("e2e");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();

    let summary = run_extractor(&stub.url(), &topic, 6, 40).await;
    assert_eq!(summary.published, 6);
    assert_eq!(summary.users_published, 240);

    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "240 processed rows", || async {
        db.count("SELECT count(*) FROM processed_data").await == 240
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!(summary.loaded, 6);
    assert_eq!(summary.duplicates, 0);
    assert_eq!(summary.dead_lettered, 0);

    // PostgreSQL: one raw row per message, one processed row per served user.
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 6);
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 240);
    let in_db: Vec<String> = sqlx::query_scalar("SELECT user_uuid FROM processed_data")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_db.iter().cloned().collect::<HashSet<_>>(), served);
    assert_eq!(
        db.count("SELECT count(*) FROM processed_data p JOIN raw_data r USING (raw_id) WHERE p.full_name = '' OR p.email = '' OR r.payload->'results'->p.user_index->>'email' <> p.email").await,
        0,
        "every processed row matches its user in the stored raw payload"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data WHERE jsonb_array_length(payload->'results') <> user_count OR fetch_id IS NULL").await,
        0
    );

    // Data minimisation: the users' login password, salt and hashes are not in the raw copies.
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data, jsonb_array_elements(payload->'results') u WHERE u->'login' ?| array['password','salt','md5','sha1','sha256']").await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM raw_data, jsonb_array_elements(payload->'results') u WHERE u->'login' ? 'uuid'").await, 240);
    let raw_payloads = parquet_rows(&data.path().join("raw"), &["payload"]);
    assert!(
        raw_payloads
            .iter()
            .all(|r| !r[0].as_deref().unwrap().contains("\"sha256\"")),
        "no hashes in raw Parquet"
    );

    // Parquet: the same users, once each, and the same names as PostgreSQL.
    let rows = parquet_rows(
        &data.path().join("processed"),
        &["user_uuid", "full_name", "email"],
    );
    assert_eq!(rows.len(), 240, "processed Parquet rows");
    let uuids = histogram(rows.iter().map(|r| r[0].clone().unwrap()));
    assert!(uuids.values().all(|&n| n == 1), "no user twice in Parquet");
    assert_eq!(uuids.keys().cloned().collect::<HashSet<_>>(), served);
    let db_rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT user_uuid, full_name, email FROM processed_data")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let pq: HashSet<(String, String, String)> = rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap(),
                r[2].clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(pq, db_rows.into_iter().collect::<HashSet<_>>());
    let raw_rows = parquet_rows(&data.path().join("raw"), &["raw_id"]);
    assert_eq!(raw_rows.len(), 6);
    // Date partitions are the fetch date.
    let today = chrono::Utc::now().format("date=%Y-%m-%d").to_string();
    for f in parquet_files(data.path()) {
        let parent = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(
            parent == today || parent.starts_with("date="),
            "{}",
            f.display()
        );
    }
    assert!(
        parquet_files(&data.path().join("_staging")).is_empty(),
        "staging is empty"
    );
    db.drop_db().await;
}

/// The same records loaded again (a second group: a replay) add no row and no Parquet file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_the_same_records_twice_writes_nothing_new() {
    let stub = stub().await;
    let topic = unique("twice");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    run_extractor(&stub.url(), &topic, 4, 25).await;

    let first = RunningLoader::start(loader_config(&db, &topic, &unique("g1"), data.path())).await;
    eventually(Duration::from_secs(60), "100 rows", || async {
        db.count("SELECT count(*) FROM processed_data").await == 100
    })
    .await;
    first.shutdown().await;
    let files_before = parquet_files(data.path());

    let second = RunningLoader::start(loader_config(&db, &topic, &unique("g2"), data.path())).await;
    second
        .until("the second group to see all 4 records as duplicates", |s| {
            s.duplicates == 4
        })
        .await;
    let summary = second.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (0, 4));
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 100);
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 4);
    assert_eq!(
        parquet_files(data.path()),
        files_before,
        "no new Parquet file"
    );
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["user_uuid"]).len(),
        100
    );
    db.drop_db().await;
}

/// Two loaders in one group split a 4-partition topic and together load everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loaders_in_one_group_split_the_partitions() {
    let stub = stub().await;
    let topic = unique("split");
    create_topic(&topic, 4).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");

    let a = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    let b = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    // Both members joined and each owns two partitions before any data flows.
    eventually(
        Duration::from_secs(60),
        "both loaders to be assigned partitions",
        || async { support::assigned(a.status).await > 0 && support::assigned(b.status).await > 0 },
    )
    .await;
    let summary = run_extractor(&stub.url(), &topic, 24, 10).await;
    assert_eq!(summary.users_published, 240);
    eventually(Duration::from_secs(60), "240 rows", || async {
        db.count("SELECT count(*) FROM processed_data").await == 240
    })
    .await;
    let (sa, sb) = (a.shutdown().await, b.shutdown().await);
    assert_eq!(sa.loaded + sb.loaded, 24, "{sa:?} {sb:?}");
    assert!(
        sa.loaded > 0 && sb.loaded > 0,
        "both loaders did work: {sa:?} {sb:?}"
    );
    assert_eq!(sa.duplicates + sb.duplicates, 0);
    let partitions: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT kafka_partition FROM raw_data ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    // 24 random keys over 4 partitions: all four hold data with probability 99.6%, three or more
    // with 1 - 4e-7, so this does not flake while still showing the keys spread.
    assert!(
        partitions.len() >= 3,
        "keys spread over the partitions: {partitions:?}"
    );
    let rows = parquet_rows(&data.path().join("processed"), &["user_uuid"]);
    assert_eq!(rows.len(), 240);
    assert_eq!(histogram(rows.into_iter().map(|r| r[0].clone())).len(), 240);
    db.drop_db().await;
}
