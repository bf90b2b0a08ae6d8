//! The extractor against a real broker: only accepted answers reach the topic, unmodified, with
//! the contract's key, timestamp and headers; refused answers are counted by kind and retried.

mod support;

use etl_common::contract::{self, header};
use extractor::{Application, Config};
use randomuser_stub::{Fault, FaultPlan, Stub};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::{brokers, create_topic};
use tokio_util::sync::CancellationToken;

async fn read_all(topic: &str, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < expected {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("message within 30 s")
            .unwrap();
        out.push(m.detach());
    }
    // Nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "more messages than expected"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_answers_are_retried_and_never_published() {
    let topic = format!("extract-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    let plan = FaultPlan {
        script: Fault::ALL_REJECTED.to_vec(),
        retry_after_secs: 1,
        ..FaultPlan::default()
    };
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), plan)
        .await
        .unwrap();
    let mut config = Config::for_test(&stub.url(), &brokers(), &topic).unwrap();
    config.max_fetches = Some(2);
    config.results = 7;
    let app = Application::build(config).await.unwrap();
    let status = app.status_addr();
    let metrics = app.metrics();
    let run = tokio::spawn(app.run(CancellationToken::new()));
    // The status endpoint serves the same registry while the service runs (the fetch series
    // appear with the first fetch, once the topic is checked).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(format!("http://{status}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("etl_extractor_fetches_total") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.fetched, 2);
    assert_eq!(summary.refused, 7, "every scripted fault refused once");
    assert_eq!(summary.published, 2);
    let errors: HashMap<&str, u64> = [
        "rate_limited",
        "server_error",
        "truncated",
        "not_json",
        "api_error",
        "empty_results",
    ]
    .into_iter()
    .map(|k| (k, metrics.fetch_errors.with_label_values(&[k]).get()))
    .collect();
    // The bare 500 and the 502 HTML page are both server errors.
    let expected = HashMap::from([
        ("rate_limited", 1),
        ("server_error", 2),
        ("truncated", 1),
        ("not_json", 1),
        ("api_error", 1),
        ("empty_results", 1),
    ]);
    assert_eq!(errors, expected);
    assert_eq!(metrics.records_produced.get(), 2);
    // Threshold 5: the fifth failure opens the breaker; the two half-open probes fail and reopen it.
    assert_eq!(metrics.circuit_opened.get(), 3);
    assert_eq!(
        metrics.circuit_state.get(),
        0,
        "closed again after the good answer"
    );
    assert_eq!(stub.stats().faults.values().sum::<u64>(), 7);

    let messages = read_all(&topic, 2).await;
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let mut published = HashSet::new();
    for m in &messages {
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        let id = uuid::Uuid::parse_str(key).expect("key is a UUID");
        assert_eq!(id.get_version_num(), 7, "key is a UUIDv7");
        let h: HashMap<&str, &str> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| (h.key, std::str::from_utf8(h.value.unwrap()).unwrap()))
            .collect();
        assert_eq!(h[header::SCHEMA], contract::SCHEMA_VERSION);
        assert_eq!(h[header::API_VERSION], "1.4");
        assert_eq!(h[header::USER_COUNT], "7");
        assert_eq!(h[header::FETCH_ID], key, "the fetch id header is the key");
        assert!(
            h[header::SOURCE_URL].starts_with("http://127.0.0.1:"),
            "{}",
            h[header::SOURCE_URL]
        );
        assert!(!h[header::PRODUCER].is_empty());
        let fetched_at =
            contract::parse_fetched_at(h[header::FETCHED_AT]).expect("fetched-at parses");
        assert_eq!(
            m.timestamp().to_millis(),
            Some(fetched_at.timestamp_millis()),
            "timestamp = fetch time"
        );
        let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let users = body["results"].as_array().unwrap();
        assert_eq!(users.len(), 7);
        for u in users {
            published.insert(u["login"]["uuid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        published, served,
        "exactly the served users, from good answers only"
    );
}

#[tokio::test]
async fn sigterm_flushes_and_exits_zero() {
    let topic = format!("extract-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let logs =
        std::env::temp_dir().join(format!("extractor-logs-{}", uuid::Uuid::new_v4().simple()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .env("RANDOMUSER_URL", stub.url())
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("EXTRACT_INTERVAL", "100ms")
        .env("EXTRACT_RESULTS", "5")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_DIR", &logs)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stub.stats().ok < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "extractor fetched nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    // Every good answer served is on the topic: nothing fetched was dropped at shutdown.
    let served = stub.stats().ok as usize;
    let messages = read_all(&topic, served).await;
    assert_eq!(messages.len(), served);
    let log_text: String = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log_text.contains("all fetched payloads acknowledged"),
        "log file written: {log_text}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// An API that accepts the connection and never answers keeps a fetch in flight for the whole
/// request timeout (30 s by default). SIGTERM must still end the run within the shutdown grace,
/// which bounds the in-flight fetch and the acknowledgements together, so the process is never
/// killed by the orchestrator's grace period mid-flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_an_in_flight_fetch() {
    let topic = format!("extract-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    // A black hole: connections are accepted and held, nothing is ever answered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let mut config =
        extractor::Config::for_test(&format!("http://{addr}/api/1.4/"), &brokers(), &topic)
            .expect("extractor test config");
    config.request_timeout = Duration::from_secs(60);
    config.shutdown_grace = Duration::from_secs(1);
    let app = extractor::Application::build(config).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(app.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await; // the first fetch is in flight
    stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends within the grace, not after the 60 s request timeout")
        .unwrap()
        .expect("nothing was fetched, so nothing is unacknowledged");
    assert_eq!((summary.fetched, summary.published), (0, 0));
    held.abort();
}

/// A broker outage at start is waited out: not ready (`/ready` 503), but alive — `/health` stays
/// 200 for many stall timeouts — and nothing is fetched, since the topic cannot be checked yet
/// (a fetch whose response the topic might not hold would be wasted). SIGTERM ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_at_start_is_not_ready_but_alive() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let dead_broker = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let mut config = Config::for_test(&stub.url(), &dead_broker, "extract-outage").unwrap();
    config.max_in_flight = 1;
    config.health.stall_timeout = Duration::from_secs(1);
    config.shutdown_grace = Duration::from_millis(500);
    let app = Application::build(config).await.unwrap();
    let status = app.status_addr();
    let metrics = app.metrics();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(app.run(shutdown.clone()));
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{status}{path}"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(
            get("/health").await,
            200,
            "waiting for the broker is not a stall"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get("/ready").await, 503, "the broker is unreachable");
    assert_eq!(
        stub.stats().requests,
        0,
        "nothing fetched before the topic is checked"
    );
    assert_eq!(metrics.fetches.with_label_values(&["ok"]).get(), 0);
    shutdown.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("SIGTERM ends the wait")
        .unwrap()
        .expect("a clean exit: nothing was fetched, nothing is lost");
    assert_eq!(summary, extractor::RunSummary::default());
}
