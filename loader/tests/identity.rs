//! A record's identity is its content identity (the extractor's fetch id, or the payload's
//! digest), never its position: a recreated topic loses nothing, a re-published record is
//! written once, and the same id with other bytes goes to the DLQ as a conflict. Against the
//! real broker and database.

mod support;

use etl_common::contract::dlq_header;
use randomuser_stub::{FaultPlan, Stub};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::Message;
use std::time::Duration;
use support::*;

const V14: &[u8] =
    include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");

async fn stub() -> Stub {
    Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .expect("stub starts")
}

/// Raw rows, processed rows, raw Parquet rows and processed Parquet rows.
async fn counts(db: &TestDb, data: &std::path::Path) -> (i64, i64, usize, usize) {
    (
        db.count("SELECT count(*) FROM raw_data").await,
        db.count("SELECT count(*) FROM processed_data").await,
        parquet_rows(&data.join("raw"), &["raw_id"]).len(),
        parquet_rows(&data.join("processed"), &["raw_id"]).len(),
    )
}

/// Deleted and created again under the same name, the topic restarts at offset 0: every new
/// record sits where an old one sat. Position as identity dropped them as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_loses_nothing() {
    let stub = stub().await;
    let topic = unique("recreated");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");

    run_extractor(&stub.url(), &topic, 3, 20).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "60 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 60
    })
    .await;
    loader.shutdown().await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&[&topic], &opts).await.unwrap() {
        r.expect("topic deleted");
    }
    // The broker refuses the name while the deletion is still under way.
    eventually(
        Duration::from_secs(60),
        "the topic created again",
        || async {
            let new = rdkafka::admin::NewTopic::new(
                &topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            );
            matches!(
                admin.create_topics(&[new], &opts).await.as_deref(),
                Ok([Ok(_)])
            )
        },
    )
    .await;

    run_extractor(&stub.url(), &topic, 3, 20).await;
    let again: Vec<i64> = read_all(&topic, 3)
        .await
        .iter()
        .map(|m| m.offset())
        .collect();
    assert_eq!(
        again,
        vec![0, 1, 2],
        "the new records reuse the old offsets"
    );
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "120 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 120
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (3, 0));
    assert_eq!(counts(&db, data.path()).await, (6, 120, 6, 120));
    db.drop_db().await;
}

/// The same records published again with their keys and headers (an operator's re-publish, a
/// MirrorMaker copy) sit at new offsets: they are the same records, written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_record_is_written_once() {
    let stub = stub().await;
    let topic = unique("republished");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();

    run_extractor(&stub.url(), &topic, 3, 20).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "60 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 60
    })
    .await;

    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for m in read_all(&topic, 3).await {
        let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(m.payload().unwrap())
            .key(m.key().unwrap());
        if let Some(h) = m.headers() {
            record = record.headers(h.clone());
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    loader
        .until("3 duplicates seen", |s| s.duplicates == 3)
        .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (3, 3));
    assert_eq!(counts(&db, data.path()).await, (3, 60, 3, 60));
    db.drop_db().await;
}

/// The same fetch id with other bytes is not the same record: the first one loaded stays and
/// the other goes to the DLQ as a `conflict`, in one batch or across batches. The same bytes are
/// the same record, whatever fetch id they come with or without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_fetch_id_with_other_bytes_is_a_conflict_for_the_dlq() {
    let topic = unique("conflict");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let (x, y) = (Some("fetch-x".to_string()), Some("fetch-y".to_string()));
    produce_as(
        &topic,
        &[
            (x.clone(), V13), // 0: loaded
            (x.clone(), V14), // 1: conflict, in the same batch
            (None, V14),      // 2: no fetch id: its digest; loaded
            (None, V14),      // 3: the same bytes again: a duplicate
            (y.clone(), V13), // 4: another fetch id with 0's bytes: the same record, a duplicate
        ],
    )
    .await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "131 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 131
    })
    .await;
    produce_as(&topic, &[(x.clone(), V14)]).await; // 5: conflict, in a later batch
    loader
        .until("2 conflicts dead-lettered", |s| s.dead_lettered == 2)
        .await;
    let summary = loader.shutdown().await;
    assert_eq!(
        (summary.loaded, summary.duplicates, summary.dead_lettered),
        (2, 2, 2)
    );
    assert_eq!(counts(&db, data.path()).await, (2, 131, 2, 131));
    let users_of_x: i64 = sqlx::query_scalar(
        "SELECT user_count::int8 FROM raw_data WHERE record_key = 'fetch:fetch-x'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(users_of_x, 20, "the first record of fetch-x stays");

    let dead = read_all(&format!("{topic}.dlq"), 2).await;
    let mut offsets = Vec::new();
    for m in &dead {
        let h = headers(m);
        assert_eq!(h[dlq_header::ERROR_KIND], "conflict");
        assert!(h[dlq_header::ERROR_MESSAGE].contains("fetch:fetch-x"));
        assert_eq!(
            m.payload(),
            Some(V14),
            "the conflicting bytes, kept for a person"
        );
        offsets.push(h[dlq_header::SOURCE_OFFSET].clone());
    }
    assert_eq!(offsets, vec!["1", "5"]);
    assert_eq!(
        headers(&dead[0])[dlq_header::DEAD_LETTER_ID],
        headers(&dead[1])[dlq_header::DEAD_LETTER_ID],
        "the same record dead-lettered twice has one dead-letter id"
    );
    db.drop_db().await;
}

/// Rows loaded before migration 3 take their fetch id as identity (the first of a fetch id
/// loaded twice keeps it, the copy its position); a re-delivery of one of them afterwards is a
/// duplicate, not a new row and not a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_rows_are_migrated_to_their_identity() {
    let db = TestDb::new().await;
    let old = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"));
    let mut names: Vec<_> = std::fs::read_dir(source)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in &names[..2] {
        std::fs::copy(source.join(name), old.path().join(name)).unwrap();
    }
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    let topic = unique("migrated");
    for (offset, fetch_id) in [(0i64, Some("F1")), (1, None), (2, Some("F1"))] {
        sqlx::query(
            "INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at)
             VALUES ($1, $2, 0, $3, $4, '{\"results\":[]}', 0, now())",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(&topic)
        .bind(offset)
        .bind(fetch_id)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    produce_as(&topic, &[(Some("F1".to_string()), V13)]).await;
    let data = tempfile::tempdir().unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    loader
        .until("the re-delivery seen", |s| s.duplicates == 1)
        .await;
    let summary = loader.shutdown().await;
    assert_eq!(
        (summary.loaded, summary.duplicates, summary.dead_lettered),
        (0, 1, 0)
    );
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT record_key FROM raw_data ORDER BY kafka_offset")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        keys,
        vec![
            "fetch:F1".to_string(),
            format!("position:{topic}/0/1"),
            format!("position:{topic}/0/2"),
        ]
    );

    // A loader of the previous version, still running during a rolling upgrade, inserts
    // without record_key: the row gets its identity, and the same fetch id again is absorbed
    // by its ON CONFLICT DO NOTHING instead of failing (which it would dead-letter).
    let old_insert = |offset: i64, fetch_id: &'static str| {
        sqlx::query(
            "INSERT INTO raw_data (raw_id, topic, kafka_partition, kafka_offset, fetch_id, payload, user_count, fetched_at)
             VALUES ($1, $2, 0, $3, $4, '{\"results\":[]}', 0, now()) ON CONFLICT DO NOTHING RETURNING raw_id",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(topic.clone())
        .bind(offset)
        .bind(fetch_id)
        .fetch_all(&db.pool)
    };
    assert_eq!(old_insert(7, "F2").await.unwrap().len(), 1);
    assert_eq!(
        old_insert(8, "F2").await.unwrap().len(),
        0,
        "the same record again"
    );
    let key: String = sqlx::query_scalar("SELECT record_key FROM raw_data WHERE kafka_offset = 7")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(key, "fetch:F2");
    db.drop_db().await;
}

/// Sends `m`'s bytes to `topic`'s `partition`: with its key and headers when `as_is`, else as a
/// tool that copies values only (MirrorMaker filtering headers, `kcat` without `-H`) would.
async fn copy(
    producer: &rdkafka::producer::FutureProducer,
    m: &rdkafka::message::OwnedMessage,
    topic: &str,
    partition: i32,
    as_is: bool,
) {
    let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .payload(m.payload().unwrap());
    if as_is {
        record = record.key(m.key().unwrap());
        if let Some(h) = m.headers() {
            record = record.headers(h.clone());
        }
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Copies of the extractor's records with the same bytes and no key or headers are the same
/// records: written once, on the same partition or another, before or after the originals, with
/// two loaders loading the partitions side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_without_key_or_headers_are_written_once() {
    let stub = stub().await;
    let source = unique("source");
    create_topic(&source, 1).await;
    run_extractor(&stub.url(), &source, 4, 20).await;
    let originals = read_all(&source, 4).await;

    let topic = unique("copies");
    create_topic(&topic, 2).await;
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    // Records 0 and 1: bare copies first (partitions 0 and 1), then the originals. Records 2
    // and 3: the originals first, then bare copies (partitions 0 and 1).
    copy(&producer, &originals[0], &topic, 0, false).await;
    copy(&producer, &originals[1], &topic, 1, false).await;
    for m in &originals {
        copy(&producer, m, &topic, 0, true).await;
    }
    copy(&producer, &originals[2], &topic, 0, false).await;
    copy(&producer, &originals[3], &topic, 1, false).await;

    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    let a = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    let b = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "8 records seen", || async {
        let (sa, sb) = (a.summary.borrow().clone(), b.summary.borrow().clone());
        sa.loaded + sa.duplicates + sb.loaded + sb.duplicates == 8
    })
    .await;
    let (sa, sb) = (a.shutdown().await, b.shutdown().await);
    assert_eq!(
        (sa.loaded + sb.loaded, sa.duplicates + sb.duplicates),
        (4, 4),
        "{sa:?} {sb:?}"
    );
    assert_eq!(counts(&db, data.path()).await, (4, 80, 4, 80));
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT user_uuid) FROM processed_data")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(distinct, 80, "every served user once");
    db.drop_db().await;
}

/// A dead letter carries the record's own headers and gets its own time: fixed and re-published
/// with its headers (`kcat -H`), it is the record it was — loaded once however often it is
/// re-published, under its fetch id and with its fetch time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_dead_letter_republished_loads_once_as_itself() {
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    let stub = stub().await;
    let source = unique("source");
    create_topic(&source, 1).await;
    run_extractor(&stub.url(), &source, 1, 20).await;
    let original = read_all(&source, 1).await.remove(0);
    let fetch_id = headers(&original)[etl_common::contract::header::FETCH_ID].clone();

    let topic = unique("dead");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    // Cut short in transit, fetched two days ago: its key and headers intact.
    let fetched = chrono::Utc::now() - chrono::Duration::days(2);
    let fetched_text = etl_common::contract::format_fetched_at(fetched);
    let mut kept = OwnedHeaders::new();
    for h in original.headers().unwrap().iter() {
        let value = if h.key == etl_common::contract::header::FETCHED_AT {
            Some(fetched_text.as_bytes())
        } else {
            h.value
        };
        kept = kept.insert(Header { key: h.key, value });
    }
    let payload = original.payload().unwrap();
    // Cut at a character boundary: not JSON, but still UTF-8 (users' names are not ASCII).
    let text = std::str::from_utf8(payload).unwrap();
    let cut = (0..=payload.len() / 2)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap();
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&topic)
                .key(original.key().unwrap())
                .payload(&payload[..cut])
                .headers(kept)
                .timestamp(fetched.timestamp_millis()),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let before = chrono::Utc::now();
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    loader
        .until("dead-lettered", |s| s.dead_lettered == 1)
        .await;

    let dead = read_all(&dlq, 1).await.remove(0);
    let h = headers(&dead);
    assert_eq!(h[dlq_header::ERROR_KIND], "not_json");
    assert_eq!(h[etl_common::contract::header::FETCH_ID], fetch_id);
    assert_eq!(h[etl_common::contract::header::FETCHED_AT], fetched_text);
    assert_eq!(
        h[etl_common::contract::header::SCHEMA],
        etl_common::contract::SCHEMA_VERSION
    );
    let stamped = dead.timestamp().to_millis().unwrap();
    assert!(
        stamped >= before.timestamp_millis() - 1000,
        "a dead letter has its own time, not the fetch's: {stamped} vs {}",
        before.timestamp_millis()
    );

    // Fixed: the original bytes, re-published twice with the dead letter's key and headers.
    for _ in 0..2 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&topic)
                    .key(dead.key().unwrap())
                    .payload(payload)
                    .headers(dead.headers().unwrap().clone()),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    loader
        .until("loaded once, the second a duplicate", |s| {
            s.loaded == 1 && s.duplicates == 1
        })
        .await;
    loader.shutdown().await;
    assert_eq!(counts(&db, data.path()).await, (1, 20, 1, 20));
    let (key, at): (String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT record_key, fetched_at FROM raw_data")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(key, format!("fetch:{fetch_id}"));
    assert_eq!(
        etl_common::contract::format_fetched_at(at),
        fetched_text,
        "its fetch time, not the dead letter's"
    );
    db.drop_db().await;
}
