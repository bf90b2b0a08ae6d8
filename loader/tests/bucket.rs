//! Parquet on object storage, against a real S3 API server (moto, started by
//! `scripts/dev-services.sh`): the store's two writes, a whole load through `s3://` read back by
//! an independent reader (pyarrow's S3 filesystem), files of the rolled size. (A store that
//! stops answering is `bucket_outage.rs`: it freezes the one server every test here uses.)

mod support;

use bytes::Bytes;
use loader::config::BackfillArgs;
use loader::replay::Position;
use loader::sink::store::{Created, Store};
use randomuser_stub::{FaultPlan, Stub};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use support::bucket::*;
use support::engines;
use support::*;

/// Create never overwrites (S3's `If-None-Match: *`), replace does, and a missing object is
/// told from an unreachable one.
#[tokio::test]
async fn a_bucket_creates_once_and_replaces_whole() {
    let bucket = bucket();
    let url = url::Url::parse(&format!("s3://{bucket}/lake")).unwrap();
    let store = Store::from_url(&url, &settings()).unwrap();
    let key = "raw/date=2026-12-01/x.parquet";
    assert_eq!(store.size(key).await.unwrap(), None);
    assert_eq!(
        store.create(key, Bytes::from_static(b"one")).await.unwrap(),
        Created::New
    );
    assert_eq!(
        store
            .create(key, Bytes::from_static(b"two!"))
            .await
            .unwrap(),
        Created::Existed,
        "a second create leaves the first object"
    );
    assert_eq!(&store.read(key).await.unwrap()[..], b"one");
    store
        .replace(key, Bytes::from_static(b"three"))
        .await
        .unwrap();
    assert_eq!(store.size(key).await.unwrap(), Some(5));

    let unreachable = Store::from_url(
        &url,
        &[(
            "AWS_ENDPOINT_URL".to_string(),
            "http://127.0.0.1:9".to_string(),
        )]
        .into_iter()
        .chain(
            settings()
                .into_iter()
                .filter(|(k, _)| k != "AWS_ENDPOINT_URL"),
        )
        .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = unreachable.size(key).await.unwrap_err().to_string();
    assert!(err.contains(&format!("s3://{bucket}/lake")), "{err}");
    assert!(!err.contains("test"), "no credential in the error: {err}");
}

/// The whole product through `s3://`: every served user once in PostgreSQL and once in the
/// bucket, read back by pyarrow, in one file pair per partition (not one per fetch), Snappy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_through_s3_is_exactly_once_in_the_bucket() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("s3load");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    run_extractor(&stub.url(), &topic, 8, 25).await;

    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.parquet_url = Some(format!("s3://{bucket}/lake"));
    config.parquet.store_settings = store_settings();
    // Files roll on SIGTERM, not per batch: the load below is one roll per partition.
    config.parquet.roll_interval = Duration::from_secs(3600);
    config.batch_max_records = 2;
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "200 processed rows", || async {
        db.count("SELECT count(*) FROM processed_data").await == 200
    })
    .await;
    assert!(
        objects(&bucket, "lake").is_empty(),
        "nothing is rolled before its size or age"
    );
    assert!(
        loader.metric("etl_loader_parquet_waiting_bytes").await > 0.0,
        "what waits is shown"
    );
    loader.shutdown().await;

    let all = objects(&bucket, "lake");
    let processed: Vec<&Value> = all
        .iter()
        .filter(|o| {
            o["key"]
                .as_str()
                .unwrap()
                .starts_with("lake/processed/date=")
        })
        .collect();
    let raw: Vec<&Value> = all
        .iter()
        .filter(|o| o["key"].as_str().unwrap().starts_with("lake/raw/date="))
        .collect();
    assert_eq!(
        all.len(),
        processed.len() + raw.len(),
        "nothing else: {all:?}"
    );
    assert!(
        (1..=2).contains(&raw.len()) && raw.len() == processed.len(),
        "one file pair per partition that had records, not per batch: {all:?}"
    );
    for o in &all {
        assert_eq!(o["compression"], "SNAPPY", "{o}");
    }
    let users: Vec<(String, String)> = processed
        .iter()
        .flat_map(|o| {
            strings(o, "raw_id")
                .into_iter()
                .zip(strings(o, "user_index"))
        })
        .collect();
    assert_eq!(users.len(), 200, "every user once");
    assert_eq!(
        users.iter().collect::<HashSet<_>>().len(),
        200,
        "no duplicates"
    );
    let raw_ids: Vec<String> = raw.iter().flat_map(|o| strings(o, "raw_id")).collect();
    assert_eq!(raw_ids.len(), 8);
    let in_db: HashSet<String> = sqlx::query_scalar::<_, uuid::Uuid>("SELECT raw_id FROM raw_data")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(raw_ids.into_iter().collect::<HashSet<_>>(), in_db);
    let ledger: HashSet<String> =
        sqlx::query_scalar("SELECT 'lake/' || object FROM parquet_files WHERE state = 'published'")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let keys: HashSet<String> = all
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys, ledger,
        "the bucket holds exactly what the ledger published"
    );
    // The Delta tables, as the `deltalake` package reads them: the same users, once each.
    let table = engines::read(
        "deltalake",
        &format!("s3://{bucket}/lake/processed"),
        &["raw_id", "user_index"],
    );
    let in_table: HashSet<(String, String)> = table
        .values("raw_id")
        .into_iter()
        .zip(table.values("user_index"))
        .collect();
    assert_eq!((table.rows, in_table.len()), (200, 200));
    assert_eq!(in_table, users.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(table.files, Some(processed.len()));
    let raw_table = engines::read("deltalake", &format!("s3://{bucket}/lake/raw"), &["raw_id"]);
    assert_eq!(raw_table.rows, 8);
    assert!(
        std::fs::read_dir(data.path()).unwrap().next().is_none(),
        "nothing written to DATA_DIR"
    );
    db.drop_db().await;
}

/// The bucket throttles (`503 SlowDown` on every write) for a while: the roller backs off and
/// retries, counting each failed attempt, PostgreSQL keeps loading, and once the store accepts
/// writes again every user is in the bucket once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_store_is_backed_off_and_retried() {
    let topic = unique("s3slow");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let throttle = Throttle::start().await;
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.parquet_url = Some(format!("s3://{bucket}"));
    config.parquet.store_settings = secrets(
        settings()
            .into_iter()
            .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
            .chain([("AWS_ENDPOINT_URL".to_string(), throttle.endpoint.clone())])
            .collect(),
    );
    let loader = RunningLoader::start(config).await;
    let big = include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    let small = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    produce_as(
        &topic,
        &[
            (Some("t1".into()), &big[..]),
            (Some("t2".into()), &small[..]),
        ],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "PostgreSQL loads meanwhile",
        || async { db.count("SELECT count(*) FROM processed_data").await == 131 },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "writes refused and retried",
        || async {
            throttle.refused() >= 3 && loader.metric("etl_loader_sink_errors_total").await >= 2.0
        },
    )
    .await;
    throttle.stop();
    eventually(Duration::from_secs(60), "every file published", || async {
        db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await
            == 0
            && db
                .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
                .await
                == 0
    })
    .await;
    loader.shutdown().await;
    let processed: Vec<Value> = objects(&bucket, "")
        .into_iter()
        .filter(|o| o["key"].as_str().unwrap().starts_with("processed/"))
        .collect();
    let users: Vec<(String, String)> = processed
        .iter()
        .flat_map(|o| {
            strings(o, "raw_id")
                .into_iter()
                .zip(strings(o, "user_index"))
        })
        .collect();
    assert_eq!(users.len(), 131);
    assert_eq!(users.iter().collect::<HashSet<_>>().len(), 131);
    db.drop_db().await;
}

fn processed_objects(bucket: &str) -> Vec<Value> {
    objects(bucket, "lake")
        .into_iter()
        .filter(|o| {
            o["key"]
                .as_str()
                .unwrap()
                .starts_with("lake/processed/date=")
        })
        .collect()
}

/// Rolls by age, at the defaults' proportions with time scaled down: the default 30 s fetches
/// and 10 min interval make 20 fetches per file; here 100 ms fetches and a 2 s interval. Files
/// follow the interval, not the fetches (before rolls, every fetch was a file pair of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_roll_by_age_not_per_fetch() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("s3age");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.parquet_url = Some(format!("s3://{bucket}/lake"));
    config.parquet.store_settings = store_settings();
    config.parquet.roll_interval = Duration::from_secs(2);
    let loader = RunningLoader::start(config).await;
    let mut extractor =
        extractor::Config::for_test(&stub.url(), &brokers(), &topic).expect("extractor config");
    extractor.max_fetches = Some(60);
    extractor.results = 5;
    extractor.interval = Duration::from_millis(100);
    let app = extractor::Application::build(extractor).await.unwrap();
    let published = app
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .unwrap()
        .published;
    assert_eq!(published, 60);
    eventually(
        Duration::from_secs(60),
        "everything rolled by age",
        || async {
            db.count("SELECT count(*) FROM processed_data").await == 300
                && db
                    .count("SELECT count(*) FROM raw_data WHERE parquet_pending")
                    .await
                    == 0
                && db
                    .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
                    .await
                    == 0
        },
    )
    .await;
    let before_sigterm = processed_objects(&bucket).len();
    loader.shutdown().await;
    let files = processed_objects(&bucket);
    assert_eq!(
        files.len(),
        before_sigterm,
        "rolled by age, nothing left for SIGTERM"
    );
    let users: usize = files
        .iter()
        .map(|o| o["rows"].as_u64().unwrap() as usize)
        .sum();
    assert_eq!(users, 300);
    // 60 fetches over ~6 s at a 2 s interval: a handful of files, not 60.
    assert!(
        (2..=12).contains(&files.len()),
        "{} processed files for 60 fetches",
        files.len()
    );
    db.drop_db().await;
}

/// `loader backfill`, `--reprocess` and a replay work unchanged against a bucket: a backfill's
/// rolls are closed at its end, a reprocess writes each file anew and swaps it for the old one
/// in one table commit, and a replay over loaded data writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reprocess_and_replay_work_against_a_bucket() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("s3replay");
    create_topic(&topic, 2).await;
    run_extractor(&stub.url(), &topic, 3, 10).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let run = || {
        let mut c = loader_config(&db, &topic, "ignored", data.path());
        c.parquet.parquet_url = Some(format!("s3://{bucket}/lake"));
        c.parquet.store_settings = store_settings();
        // Nothing rolls by age during the test: only the end of the backfill closes the rolls.
        c.parquet.roll_interval = Duration::from_secs(3600);
        c
    };
    let backfill_all = |run| {
        backfill(BackfillArgs {
            from: Position::Earliest,
            to: None,
            group: None,
            run,
        })
    };
    let summary = backfill_all(run()).await;
    assert_eq!(summary.loaded, 3);
    let first = processed_objects(&bucket);
    let keys: Vec<String> = first
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    let users: Vec<String> = first.iter().flat_map(|o| strings(o, "user_uuid")).collect();
    assert_eq!(users.len(), 30, "the backfill's rolls closed at its end");
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(users.iter().cloned().collect::<HashSet<_>>(), served);

    // A transform change: stale rows, then --reprocess over the same range.
    sqlx::query("UPDATE processed_data SET email = 'stale@example.com'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut again = run();
    again.reprocess = true;
    let summary = backfill_all(again).await;
    assert_eq!((summary.loaded, summary.reprocessed), (0, 3));
    let rewritten = processed_objects(&bucket);
    let new_keys: Vec<String> = rewritten
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .filter(|k| !keys.contains(k))
        .collect();
    assert_eq!(
        new_keys.len(),
        keys.len(),
        "a new object per file: {new_keys:?}"
    );
    assert!(new_keys.iter().all(|k| k.contains("-g1-")), "{new_keys:?}");
    let table = engines::read(
        "deltalake",
        &format!("s3://{bucket}/lake/processed"),
        &["email"],
    );
    assert_eq!(
        table.files,
        Some(keys.len()),
        "the old files left the table"
    );
    let emails = table.values("email");
    assert_eq!(emails.len(), 30);
    assert!(emails.iter().all(|e| e != "stale@example.com"));
    let in_db: HashSet<String> = sqlx::query_scalar("SELECT email FROM processed_data")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(emails.into_iter().collect::<HashSet<_>>(), in_db);

    // A replay of everything with a running group: all duplicates, no object written.
    let mut group = run();
    group.group_id = unique("g");
    let loader = RunningLoader::start(group).await;
    loader
        .until("the replay consumed everything", |s| s.duplicates == 3)
        .await;
    loader.shutdown().await;
    let all: Vec<String> = objects(&bucket, "lake")
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        all.len(),
        keys.len() * 3,
        "raw, processed and its rewrite, nothing new: {all:?}"
    );
    db.drop_db().await;
}

/// A store that does not honour conditional writes (`501 Not Implemented` to `If-None-Match`,
/// as some S3-compatible stores answer) cannot keep the tables exactly once: the loader refuses
/// it at start — while PostgreSQL loads, never blocking on the store — with an error that
/// names `PARQUET_URL` and the setting, instead of retrying the rolls forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_conditional_writes_is_refused_at_start() {
    let topic = unique("s3nocond");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let proxy = Throttle::without_conditional_writes().await;
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.parquet_url = Some(format!("s3://{bucket}"));
    config.parquet.store_settings = secrets(
        settings()
            .into_iter()
            .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
            .chain([("AWS_ENDPOINT_URL".to_string(), proxy.endpoint.clone())])
            .collect(),
    );
    let app = loader::Application::build(config).await.unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(60),
        app.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the loader stops by itself");
    let err = format!("{:#}", run.expect_err("refused"));
    assert!(proxy.refused() >= 1);
    assert!(
        err.contains("conditional writes")
            && err.contains("PARQUET_URL")
            && err.contains("AWS_S3_CONDITIONAL_PUT"),
        "{err}"
    );
    assert!(!err.contains("test"), "no credential in the error: {err}");
    db.drop_db().await;
}
