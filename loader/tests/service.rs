//! The loader as operators meet it: poison to the DLQ with its reason, status endpoints, and the
//! real binary's SIGTERM handling and `migrate` command.

mod support;

use etl_common::contract::dlq_header;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::time::Duration;
use support::*;

const V14: &[u8] =
    include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
const V10: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_with_its_reason_and_the_partition_moves_on() {
    let topic = unique("poison");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let poison: [&[u8]; 4] = [
        V10,
        b"<html>502 Bad Gateway</html>",
        b"\xff\xfe\xfd",
        br#"{"results":[]}"#,
    ];
    produce(
        &topic,
        &[V14, poison[0], poison[1], V13, poison[2], poison[3]],
    )
    .await;

    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "131 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 131
    })
    .await;
    eventually(Duration::from_secs(30), "4 dead-lettered", || async {
        loader
            .metric("etl_loader_records_dead_lettered_total")
            .await
            == 4.0
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (2, 4));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let h: HashMap<String, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(h[dlq_header::SOURCE_TOPIC], topic);
        assert_eq!(h[dlq_header::SOURCE_PARTITION], "0");
        assert!(!h[dlq_header::ERROR_MESSAGE].is_empty());
        assert_eq!(h[dlq_header::LOADER_VERSION], env!("CARGO_PKG_VERSION"));
        let offset: usize = h[dlq_header::SOURCE_OFFSET].parse().unwrap();
        assert_eq!(
            m.payload().unwrap(),
            [V14, poison[0], poison[1], V13, poison[2], poison[3]][offset],
            "payload kept byte for byte"
        );
        seen.push((offset, h[dlq_header::ERROR_KIND].clone()));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (1, "legacy_shape".to_string()),
            (2, "not_json".to_string()),
            (4, "invalid_utf8".to_string()),
            (5, "empty_results".to_string())
        ]
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_answer() {
    let topic = unique("status");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    let base = format!("http://{}", loader.status);
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    // Ready once PostgreSQL is migrated and the group has assigned the (empty) topic's
    // partition: an idle replica is ready, it does not wait for a record.
    eventually(
        Duration::from_secs(30),
        "ready on an empty topic",
        || async {
            let text = reqwest::get(format!("{base}/ready"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            r["checks"]["postgres"] == "ok"
                && r["checks"]["parquet"] == "ok"
                && r["checks"]["kafka"] == "ok"
        },
    )
    .await;
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // Free space on DATA_DIR, for the "almost full" alert.
    let capacity = loader.metric("etl_loader_data_dir_capacity_bytes").await;
    let available = loader.metric("etl_loader_data_dir_available_bytes").await;
    assert!(
        capacity > 0.0 && available > 0.0 && available <= capacity,
        "{available} of {capacity}"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "etl_loader_records_consumed_total",
        "etl_loader_batch_duration_seconds",
        "etl_loader_last_commit_timestamp_seconds",
    ] {
        assert!(metrics.contains(series), "{series} exported");
    }
    assert!(
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| l.starts_with("etl_")),
        "every series is etl_-prefixed"
    );
    loader.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_migrates_loads_and_exits_zero_on_sigterm() {
    let topic = unique("bin");
    create_topic(&topic, 1).await;
    produce(&topic, &[V13]).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loader");

    let check = std::process::Command::new(bin)
        .args(["migrate", "--check", "--log-dir", ""])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        !check.status.success(),
        "--check fails on an empty database"
    );
    let migrate = std::process::Command::new(bin)
        .args(["migrate", "--log-dir", ""])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stdout)
    );
    let out = String::from_utf8_lossy(&migrate.stdout).to_string();
    assert!(
        !out.contains(&db.url),
        "the database URL (with its password) is never logged"
    );

    let mut child = tokio::process::Command::new(bin)
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", unique("g"))
        .env("DATA_DIR", data.path())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOG_DIR", "")
        .env("LOADER_SKIP_MIGRATIONS", "true")
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "20 users loaded by the binary",
        || async { db.count("SELECT count(*) FROM processed_data").await == 20 },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    db.drop_db().await;
}

/// A record the transform accepts but PostgreSQL refuses (an index row too large) is isolated:
/// it goes to the DLQ as `rejected_by_sink` and the rest of its batch is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgres_refuses_is_dead_lettered_not_retried_forever() {
    let topic = unique("refused");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut hostile: serde_json::Value = serde_json::from_slice(V13).unwrap();
    let huge: String = (0..2000)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    hostile["results"][3]["login"]["uuid"] = serde_json::Value::String(huge);
    let hostile = serde_json::to_vec(&hostile).unwrap();
    produce(&topic, &[V14, &hostile, V13]).await;

    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(
        Duration::from_secs(60),
        "the two good records loaded",
        || async { db.count("SELECT count(*) FROM processed_data").await == 131 },
    )
    .await;
    eventually(Duration::from_secs(30), "1 dead-lettered", || async {
        loader
            .metric("etl_loader_records_dead_lettered_total")
            .await
            == 1.0
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (2, 1));
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 2);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["raw_id"]).len(),
        131,
        "no Parquet row for the refused record"
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    let kind = m
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == dlq_header::ERROR_KIND)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(kind.as_deref(), Some("rejected_by_sink"));
    assert_eq!(m.payload().unwrap(), hostile.as_slice());
    db.drop_db().await;
}

/// With LOADER_RAW_KEEP_LOGIN_SECRETS the raw Parquet copy is the response byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copies_can_be_kept_byte_for_byte() {
    let topic = unique("verbatim");
    create_topic(&topic, 1).await;
    produce(&topic, &[V13]).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.raw_keep_login_secrets = true;
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "20 users", || async {
        db.count("SELECT count(*) FROM processed_data").await == 20
    })
    .await;
    loader.shutdown().await;
    let raw = parquet_rows(&data.path().join("raw"), &["payload"]);
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0][0].as_deref().unwrap().as_bytes(), V13);
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data, jsonb_array_elements(payload->'results') u WHERE u->'login' ? 'sha256'").await,
        20
    );
    db.drop_db().await;
}
