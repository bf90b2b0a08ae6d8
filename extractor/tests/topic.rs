//! The extractor's start-up check of `KAFKA_TOPIC`, against the real broker (whose
//! `auto.create.topics.enable` is on and whose record limit is Kafka's default, about 1 MB, as
//! on a cluster users bring): a topic too small for `EXTRACT_RESULTS` stops it before the first
//! fetch, an absent one is created with the project's settings, or refused when it may not
//! create it.

mod support;

use etl_common::contract::MAX_MESSAGE_BYTES;
use extractor::{Application, Config};
use randomuser_stub::{FaultPlan, Stub};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use std::time::Duration;
use support::brokers;
use tokio_util::sync::CancellationToken;

/// An admin client whose questions about a topic never make the broker create it.
fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("admin client")
}

/// The topic's `max.message.bytes` and partition count, or `None` if the broker does not know it.
async fn describe(topic: &str) -> Option<(usize, usize)> {
    let admin = admin();
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe_configs");
    let config = described.into_iter().next()?.ok()?;
    let limit = config
        .get("max.message.bytes")?
        .value
        .as_deref()?
        .parse()
        .ok()?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics().first()?.partitions().len();
    Some((limit, partitions))
}

/// Makes the broker create `topic` by itself, as a producer asking for its metadata does on a
/// broker with `auto.create.topics.enable=true`: Kafka's default limit, 1 partition here.
async fn auto_create(topic: &str) -> usize {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let _ = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Some((limit, _)) = describe(topic).await {
            return limit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker never auto-created {topic}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stub() -> Stub {
    Stub::start("127.0.0.1:0".parse().expect("addr"), FaultPlan::default())
        .await
        .expect("stub")
}

/// The measured failure: 5,000 users against a topic the broker auto-created. The extractor
/// used to fetch 5,000 users and then exit with `MessageSizeTooLarge`, naming neither the
/// topic's limit nor `EXTRACT_RESULTS`; it now refuses before fetching, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_created_topic_too_small_for_5000_users_is_refused_before_fetching() {
    let topic = format!("extract-auto-{}", uuid::Uuid::new_v4().simple());
    let limit = auto_create(&topic).await;
    assert!(
        limit < 2 << 20,
        "Kafka's default limit, about 1 MB: {limit}"
    );
    let stub = stub().await;
    let mut config = Config::for_test(&stub.url(), &brokers(), &topic).unwrap();
    config.results = 5000;
    config.max_fetches = Some(1);
    let app = Application::build(config).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the extractor stops by itself")
        .expect_err("the topic cannot hold a 5,000-user response");
    let text = format!("{error:#}");
    for part in [
        format!("topic {topic}"),
        format!("max.message.bytes is {limit} bytes"),
        "EXTRACT_RESULTS=5000".to_string(),
        "lower EXTRACT_RESULTS to".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    assert_eq!(stub.stats().requests, 0, "nothing was fetched: {text}");
    assert_eq!(
        describe(&topic).await.map(|d| d.0),
        Some(limit),
        "left as it was"
    );
}

/// An absent topic is created with the project's limit and `KAFKA_TOPIC_PARTITIONS`, and then
/// takes a 5,000-user response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_topic_is_created_and_takes_5000_users() {
    let topic = format!("extract-new-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(describe(&topic).await, None, "absent to begin with");
    let stub = stub().await;
    let mut config = Config::for_test(&stub.url(), &brokers(), &topic).unwrap();
    config.results = 5000;
    config.max_fetches = Some(1);
    config.partitions = 3;
    let app = Application::build(config).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(120), app.run(CancellationToken::new()))
        .await
        .expect("the extractor stops by itself")
        .expect("the created topic holds a 5,000-user response");
    assert_eq!((summary.published, summary.users_published), (1, 5000));
    assert_eq!(describe(&topic).await, Some((MAX_MESSAGE_BYTES, 3)));
}

/// Told not to create topics, the extractor refuses an absent one, naming it and the variable,
/// and fetches nothing; the topic stays absent (asking about it did not auto-create it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_topic_it_may_not_create_is_refused() {
    let topic = format!("extract-absent-{}", uuid::Uuid::new_v4().simple());
    let stub = stub().await;
    let mut config = Config::for_test(&stub.url(), &brokers(), &topic).unwrap();
    config.topic_create.create = false;
    let app = Application::build(config).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the extractor stops by itself")
        .expect_err("an absent topic it may not create");
    let text = format!("{error:#}");
    for part in [
        format!("topic {topic}"),
        "KAFKA_TOPIC".to_string(),
        "does not exist".to_string(),
        "KAFKA_CREATE_TOPICS=false".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    assert_eq!(stub.stats().requests, 0, "nothing was fetched");
    assert_eq!(describe(&topic).await, None, "still absent");
}

/// The binary: the refusal is its exit status 1 and its last log line, which names the topic,
/// the limit and `EXTRACT_RESULTS` (what an operator sees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_1_naming_the_topic_and_the_variable() {
    let topic = format!("extract-bin-{}", uuid::Uuid::new_v4().simple());
    let limit = auto_create(&topic).await;
    let stub = stub().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .env("RANDOMUSER_URL", stub.url())
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("EXTRACT_RESULTS", "5000")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_DIR", "")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("exits by itself")
        .expect("runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for part in [
        topic.clone(),
        format!("max.message.bytes is {limit} bytes"),
        "EXTRACT_RESULTS=5000".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    assert_eq!(stub.stats().requests, 0, "nothing was fetched");
}
