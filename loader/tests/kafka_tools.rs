//! Apache Kafka's own tools with the pipeline: offsets moved by `kafka-consumer-groups
//! --reset-offsets` are honoured (the loader resumes from its group's offsets), and the Helm
//! chart's topic script creates the topics with `kafka-topics`, over plaintext and SASL_SSL. Uses
//! the Kafka jars `scripts/dev-services.sh` resolved (the classes those scripts run).

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
    loader
        .until("all 5 records re-delivered", |s| s.duplicates == 5)
        .await;
    loader.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 50);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["user_uuid"]).len(),
        50
    );
    db.drop_db().await;
}

/// `kafka-topics.sh` as the chart's Job runs it: the class the script runs, from the resolved jars.
fn kafka_topics_wrapper(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("kafka-topics.sh");
    let script = format!(
        "#!/bin/sh\nexec java -Dkafka.logs.dir={} -cp '{}' org.apache.kafka.tools.TopicCommand \"$@\"\n",
        dir.display(),
        kafka_classpath()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The topic, its partitions and its `max.message.bytes`, as the broker reports them.
async fn described(topic: &str) -> (usize, Option<String>) {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let partitions = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap()
        .topics()[0]
        .partitions()
        .len();
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let limit = configs[0]
        .as_ref()
        .unwrap()
        .get("max.message.bytes")
        .and_then(|e| e.value.clone());
    (partitions, limit)
}

/// The chart's `files/create-topics.sh` creates the topic and its DLQ with the pipeline's record
/// limit, leaves existing ones alone (it runs again on every settings change), and speaks
/// SASL_SSL with the services' own variables, the password kept out of argv and output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_topic_script_creates_the_topics_over_plaintext_and_sasl_ssl() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../k8s/randomuser-etl/files/create-topics.sh"
    );
    let text = std::fs::read_to_string(script).unwrap();
    let limit = etl_common::contract::MAX_MESSAGE_BYTES.to_string();
    assert!(
        text.contains(&format!("MAX_MESSAGE_BYTES={limit}")),
        "the script's record limit is the contract's"
    );
    let dir = tempfile::tempdir().unwrap();
    let wrapper = kafka_topics_wrapper(dir.path());
    let run = |brokers: String, topic: &str, secured: bool| {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg(script)
            .env("KAFKA_BROKERS", brokers)
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
            .env("TOPIC_PARTITIONS", "3")
            .env("TOPIC_REPLICATION_FACTOR", "1")
            .env("KAFKA_TOPICS_CMD", &wrapper)
            .env("CLIENT_CONFIG", dir.path().join("client.properties"));
        if secured {
            cmd.env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
                .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
                .env("KAFKA_SASL_USERNAME", setting("ETL_TEST_KAFKA_SCRAM_USER"))
                .env(
                    "KAFKA_SASL_PASSWORD_FILE",
                    setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE"),
                )
                .env("KAFKA_SSL_CA_LOCATION", setting("ETL_TEST_TLS_CA"));
        }
        let out = cmd.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "create-topics.sh failed: {all}");
        all
    };

    let plain = unique("chart-topics");
    run(brokers(), &plain, false);
    run(brokers(), &plain, false); // again: nothing to do, still success
    assert_eq!(described(&plain).await, (3, Some(limit.clone())));
    assert_eq!(
        described(&format!("{plain}.dlq")).await,
        (1, Some(limit.clone()))
    );

    let secured = unique("chart-topics-sasl");
    let output = run(setting("ETL_TEST_KAFKA_TLS_BROKERS"), &secured, true);
    assert_eq!(described(&secured).await, (3, Some(limit.clone())));
    let password = std::fs::read_to_string(setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE")).unwrap();
    assert!(
        !output.contains(password.trim()),
        "the SASL password never reaches the output"
    );
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("client.properties"))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(
        mode & 0o077,
        0,
        "the client config is readable by its owner only"
    );
}
