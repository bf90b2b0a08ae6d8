//! The loader's start-up check of `KAFKA_DLQ_TOPIC`, against the real broker: a dead-letter
//! topic too small for the largest record the loader accepts (`LOADER_MAX_RECORD_BYTES`) stops
//! it, named; an absent one is created with one partition and the project's record limit.

mod support;

use etl_common::contract::MAX_MESSAGE_BYTES;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

/// The topic's `max.message.bytes` and partition count, once the broker knows both.
async fn describe(topic: &str) -> Option<(usize, usize)> {
    // Asking about a topic must not make the broker create it (auto.create.topics.enable).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("admin client");
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let found = metadata.topics().first()?;
    if found.error().is_some() {
        return None;
    }
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
    Some((limit, found.partitions().len()))
}

/// A dead-letter topic at Kafka's default limit cannot hold a dead letter of a 16 MiB record
/// (the default `LOADER_MAX_RECORD_BYTES`): the loader refuses to start, naming the topic, its
/// limit and the variable, and says what would do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlq_too_small_for_the_largest_record_is_refused() {
    let topic = unique("dlqcheck");
    create_topic(&topic, 1).await;
    let dlq = format!("{topic}.dlq");
    create_topic_with(&dlq, 1, &[("max.message.bytes", "1048588")]).await;
    let data = tempfile::tempdir().unwrap();
    // Refused before the database is used: the URL is never connected to.
    let config = loader::RunConfig::for_test(
        "postgres://nobody@127.0.0.1:1/none",
        &brokers(),
        &topic,
        &unique("g"),
        data.path(),
    )
    .unwrap();
    let app = loader::Application::build(config).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the loader stops by itself")
        .expect_err("a DLQ too small for a 16 MiB dead letter");
    let text = format!("{error:#}");
    for part in [
        format!("topic {dlq}"),
        "max.message.bytes is 1048588 bytes".to_string(),
        format!(
            "LOADER_MAX_RECORD_BYTES={}",
            etl_common::contract::MAX_PAYLOAD_BYTES
        ),
        "lower LOADER_MAX_RECORD_BYTES to 1032204 or less".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
}

/// An absent dead-letter topic is created with one partition and the project's record limit,
/// and the loader runs; told not to create it, the loader refuses an absent one, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_dlq_is_created_or_refused_when_told_not_to() {
    let topic = unique("dlqnew");
    create_topic(&topic, 2).await;
    let dlq = format!("{topic}.dlq");
    let data = tempfile::tempdir().unwrap();

    let mut config = loader::RunConfig::for_test(
        "postgres://nobody@127.0.0.1:1/none",
        &brokers(),
        &topic,
        &unique("g"),
        data.path(),
    )
    .unwrap();
    config.dlq_create.create = false;
    let app = loader::Application::build(config).await.unwrap();
    let error = tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the loader stops by itself")
        .expect_err("an absent DLQ it may not create");
    let text = format!("{error:#}");
    for part in [
        format!("topic {dlq} (KAFKA_DLQ_TOPIC) does not exist"),
        "KAFKA_CREATE_TOPICS=false".to_string(),
    ] {
        assert!(text.contains(&part), "{part:?} missing from: {text}");
    }
    assert_eq!(describe(&dlq).await, None, "still absent");

    let db = TestDb::new().await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "the DLQ created", || async {
        describe(&dlq).await.is_some()
    })
    .await;
    assert_eq!(describe(&dlq).await, Some((MAX_MESSAGE_BYTES, 1)));
    loader.shutdown().await;
    db.drop_db().await;
}
