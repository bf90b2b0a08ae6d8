//! A bucket that stops answering mid-load, against a real S3 API server (moto, frozen with
//! `dev-services.sh stop-s3`). Alone in its binary: freezing the server would stall any other
//! test using it.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::bucket::*;
use support::*;

/// The store stops answering for a while during a load (moto frozen): PostgreSQL goes on
/// loading, the roller waits the store out with backoff and `/ready` names the Parquet sink
/// meanwhile, and once the store is back every user is in the bucket once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_is_waited_out() {
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
            (Some("f1".into()), &big[..]),
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
