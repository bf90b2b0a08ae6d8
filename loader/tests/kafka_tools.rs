//! Offsets moved by Apache Kafka's own `kafka-consumer-groups --reset-offsets` are honoured: the
//! loader simply resumes from its group's offsets. Uses the Kafka jars `scripts/dev-services.sh`
//! resolved (the same class the `kafka-consumer-groups.sh` script runs).

mod support;

use randomuser_stub::{FaultPlan, Stub};
use std::time::Duration;
use support::*;

fn kafka_classpath() -> String {
    let state = std::env::var("ETL_SERVICES_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.services").to_string());
    let kafka = std::path::Path::new(&state).join("kafka");
    let lib = std::fs::read_dir(&kafka)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/dev-services.sh up)", kafka.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lib-"))
        })
        .expect("resolved Kafka jars");
    format!("{}/*", lib.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_with_kafka_consumer_groups_are_honoured() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("reset");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    run_extractor(&stub.url(), &topic, 5, 10).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "50 users", || async {
        db.count("SELECT count(*) FROM processed_data").await == 50
    })
    .await;
    loader.shutdown().await;

    let out = std::process::Command::new("java")
        .args([
            "-cp",
            &kafka_classpath(),
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        ])
        .args([
            "--bootstrap-server",
            &brokers(),
            "--group",
            &group,
            "--topic",
            &topic,
        ])
        .args(["--reset-offsets", "--to-earliest", "--execute"])
        .output()
        .expect("run kafka-consumer-groups");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(
        Duration::from_secs(60),
        "all 5 records re-delivered",
        || async { loader.metric("etl_loader_records_duplicate_total").await == 5.0 },
    )
    .await;
    loader.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 50);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["user_uuid"]).len(),
        50
    );
    db.drop_db().await;
}
