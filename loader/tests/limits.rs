//! Record sizes through the shipped limits (`etl_common::contract::MAX_PAYLOAD_BYTES` and
//! `MAX_MESSAGE_BYTES`, the topics' `max.message.bytes` as the project creates them), against
//! the real broker: the API's largest answer loads end to end, big poison is dead-lettered
//! whole, and poison too big for a DLQ with Kafka's default limit is dead-lettered as its
//! headers, digest and size instead of stopping its partition.

mod support;

use etl_common::contract::dlq_header;
use randomuser_stub::{FaultPlan, Stub};
use rdkafka::message::Message;
use std::time::Duration;
use support::*;

const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");

/// Non-JSON bytes of `n` bytes (an HTML error page grown large, say).
fn junk(n: usize) -> Vec<u8> {
    let mut v = b"<html>".to_vec();
    v.resize(n, b'x');
    v
}

/// 5,000 users, the most the API gives in one answer (~5.5 MB of JSON): fetched, published,
/// loaded into both sinks. The extractor used to stop with `MessageSizeTooLarge`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_user_response_loads_end_to_end() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("big");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let summary = run_extractor(&stub.url(), &topic, 1, 5000).await;
    assert_eq!((summary.published, summary.users_published), (1, 5000));
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(120), "5000 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 5000
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (1, 0));
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 1);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["user_uuid"]).len(),
        5000
    );
    assert_eq!(parquet_rows(&data.path().join("raw"), &["raw_id"]).len(), 1);
    db.drop_db().await;
}

/// Poison of 990 KB and of 15 MB, each followed by a good record: both dead-lettered with
/// their bytes, the partition moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_poison_is_dead_lettered_whole() {
    let topic = unique("bigpoison");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let (small, large) = (junk(990 * 1000), junk(15 * 1000 * 1000));
    produce(&topic, &[&small, V13, &large, &varied(V13, "second")]).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    loader
        .until("2 records loaded and 2 dead letters", |s| {
            s.loaded == 2 && s.dead_lettered == 2
        })
        .await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 40);
    loader.shutdown().await;
    let dead = read_all(&format!("{topic}.dlq"), 2).await;
    for (m, want) in dead.iter().zip([&small, &large]) {
        let h = headers(m);
        assert_eq!(h[dlq_header::ERROR_KIND], "not_json");
        assert_eq!(m.payload().map(<[u8]>::len), Some(want.len()));
        assert_eq!(m.payload(), Some(&want[..]), "kept byte for byte");
        assert_eq!(h[dlq_header::PAYLOAD_BYTES], want.len().to_string());
        assert!(!h.contains_key(dlq_header::PAYLOAD_OMITTED));
    }
    db.drop_db().await;
}

/// A dead-letter topic left at Kafka's default limit (about 1 MB) refuses a 1.5 MB poison
/// record: it is dead-lettered as its headers, digest and size, and the record behind it loads.
/// The loader used to retry it forever ("cannot dead-letter; retrying … MessageSizeTooLarge").
/// `LOADER_MAX_RECORD_BYTES` is 1,000,000, so the start-up check accepts that topic (every
/// record the loader accepts fits in it); the poison, larger, is `too_large`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_too_big_for_the_dlq_is_dead_lettered_without_its_payload() {
    let topic = unique("dlqlimit");
    create_topic(&topic, 1).await;
    create_topic_with(
        &format!("{topic}.dlq"),
        1,
        &[("max.message.bytes", "1048588")],
    )
    .await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let poison = junk(1_500_000);
    produce(&topic, &[&poison, V13]).await;
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.max_record_bytes = 1_000_000;
    let loader = RunningLoader::start(config).await;
    eventually(
        Duration::from_secs(60),
        "the record behind the poison loads",
        || async { db.count("SELECT count(*) FROM processed_data").await == 20 },
    )
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (1, 1));
    let dead = read_all(&format!("{topic}.dlq"), 1).await;
    let h = headers(&dead[0]);
    assert_eq!(h[dlq_header::ERROR_KIND], "too_large");
    assert_eq!(h[dlq_header::PAYLOAD_OMITTED], "true");
    assert_eq!(h[dlq_header::PAYLOAD_BYTES], "1500000");
    assert_eq!(
        h[dlq_header::PAYLOAD_SHA256],
        loader::transform::Identity::of(None, &poison)
            .key
            .trim_start_matches("sha256:")
    );
    assert_eq!(h[dlq_header::SOURCE_OFFSET], "0");
    assert_eq!(dead[0].payload().map_or(0, <[u8]>::len), 0);
    db.drop_db().await;
}
