//! A bucket that stops answering mid-load, against a real S3 API server (moto, frozen with
//! `dev-services.sh stop-s3`). Alone in their binary, one at a time: freezing the server would
//! stall any other test using it.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::bucket::*;
use support::*;

/// One test at a time: each freezes the one S3 server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The store stops answering for a while during a load (moto frozen): PostgreSQL goes on
/// loading, the roller waits the store out with backoff and `/ready` names the Parquet sink
/// meanwhile, and once the store is back every user is in the bucket once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_is_waited_out() {
    let _serial = SERIAL.lock().await;
    let topic = unique("s3down");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let big = include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    let small = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    produce_as(&topic, &[(Some("f0".into()), &big[..])]).await;
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.parquet_url = Some(format!("s3://{bucket}"));
    config.parquet.store_settings = store_settings();
    // A frozen store is noticed in seconds, not the default 30.
    config
        .parquet
        .store_settings
        .push(("AWS_TIMEOUT".into(), etl_common::config::Secret::from("2s")));
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "the first roll", || async {
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
            .await
            == 2
    })
    .await;

    let frozen = Frozen::store();
    produce_as(
        &topic,
        &[
            (Some("f1".into()), &varied(big, "f1")[..]),
            (Some("f2".into()), &small[..]),
        ],
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "PostgreSQL goes on loading",
        || async { db.count("SELECT count(*) FROM processed_data").await == 111 * 2 + 20 },
    )
    .await;
    eventually(Duration::from_secs(60), "/ready names the sink", || async {
        let ready = reqwest::get(format!("http://{}/ready", loader.status))
            .await
            .unwrap();
        ready.status() == 503 && ready.text().await.unwrap().contains("parquet")
    })
    .await;
    assert!(loader.metric("etl_loader_sink_errors_total").await >= 1.0);
    drop(frozen);

    eventually(Duration::from_secs(120), "every file published", || async {
        db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await
            == 0
            && db
                .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
                .await
                == 0
    })
    .await;
    eventually(Duration::from_secs(30), "/ready again", || async {
        reqwest::get(format!("http://{}/ready", loader.status))
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    loader.shutdown().await;
    let mut per_user: HashMap<(String, String), usize> = HashMap::new();
    for o in objects(&bucket, "")
        .iter()
        .filter(|o| o["key"].as_str().unwrap().starts_with("processed/"))
    {
        for k in strings(o, "raw_id")
            .into_iter()
            .zip(strings(o, "user_index"))
        {
            *per_user.entry(k).or_default() += 1;
        }
    }
    assert_eq!(per_user.len(), 111 * 2 + 20);
    assert!(per_user.values().all(|&n| n == 1), "no user twice");
    db.drop_db().await;
}

/// A deploy while the bucket is down: the loader restarts with files claimed and unwritten, and
/// its start-up does not wait for the store — PostgreSQL loads new records at once — while the
/// roller waits the store out; once it is back, every user is in the table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_store_is_down_keeps_postgres_loading() {
    let _serial = SERIAL.lock().await;
    let topic = unique("s3restart");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let bucket = bucket();
    let data = tempfile::tempdir().unwrap();
    let big = include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    let small = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    let group = unique("g");
    let config = || {
        let mut config = loader_config(&db, &topic, &group, data.path());
        config.parquet.parquet_url = Some(format!("s3://{bucket}"));
        config.parquet.store_settings = store_settings();
        config
            .parquet
            .store_settings
            .push(("AWS_TIMEOUT".into(), etl_common::config::Secret::from("2s")));
        // A file per batch: every batch tries the store.
        config.parquet.roll_interval = Duration::ZERO;
        config
    };
    produce_as(&topic, &[(Some("f0".into()), &big[..])]).await;
    let first = RunningLoader::start(config()).await;
    eventually(Duration::from_secs(60), "the first roll", || async {
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
            .await
            == 2
    })
    .await;
    let frozen = Frozen::store();
    produce_as(&topic, &[(Some("f1".into()), &varied(big, "f1")[..])]).await;
    eventually(
        Duration::from_secs(60),
        "loaded, claimed, not written",
        || async {
            db.count("SELECT count(*) FROM processed_data").await == 222
                && db
                    .count("SELECT count(*) FROM parquet_files WHERE state = 'pending'")
                    .await
                    == 2
        },
    )
    .await;
    first.shutdown().await;

    // The restart, the store still down.
    let second = RunningLoader::start(config()).await;
    produce_as(&topic, &[(Some("f2".into()), &small[..])]).await;
    eventually(
        Duration::from_secs(20),
        "PostgreSQL loads while the store is down",
        || async { db.count("SELECT count(*) FROM processed_data").await == 242 },
    )
    .await;
    assert!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'pending'")
            .await
            >= 2,
        "the files still wait for the store"
    );
    drop(frozen);
    eventually(Duration::from_secs(120), "every file published", || async {
        db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await
            == 0
            && db
                .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
                .await
                == 0
    })
    .await;
    second.shutdown().await;
    let table = support::engines::read(
        "deltalake",
        &format!("s3://{bucket}/processed"),
        &["raw_id", "user_index"],
    );
    let keys: std::collections::HashSet<(String, String)> = table
        .values("raw_id")
        .into_iter()
        .zip(table.values("user_index"))
        .collect();
    assert_eq!((table.rows, keys.len()), (242, 242), "every user once");
    db.drop_db().await;
}
