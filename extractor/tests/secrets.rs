//! Secrets never leak from the extractor. The real binary is run against the local Kafka's
//! SASL_SSL listener (scripts/dev-services.sh) with the SCRAM password in `KAFKA_SASL_PASSWORD`:
//! once wrong (a failed login, reported on `/ready`) and once right (it publishes). Neither
//! password appears in its stdout/stderr, its log files, `/metrics`, `/ready` or `--help`.

mod support;

use randomuser_stub::{FaultPlan, Stub};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::{brokers, create_topic, setting};

const WRONG: &str = "Leak-Canary-Kafka-4b1e9d";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Records in `topic`, read through the plain listener.
fn record_count(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    high - low
}

async fn get(port: u16, path: &str) -> Option<String> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    r.text().await.ok()
}

/// The extractor binary over SASL_SSL with `password`, its output going to a file in `logs`.
fn extractor(
    password: &str,
    stub_url: &str,
    topic: &str,
    logs: &Path,
    port: u16,
) -> (tokio::process::Child, PathBuf) {
    let out = logs.join(format!("out-{port}.txt"));
    let file = std::fs::File::create(&out).expect("output file");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .env("RANDOMUSER_URL", stub_url)
        .env("KAFKA_BROKERS", setting("ETL_TEST_KAFKA_TLS_BROKERS"))
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        .env("KAFKA_SASL_USERNAME", setting("ETL_TEST_KAFKA_SCRAM_USER"))
        .env("KAFKA_SASL_PASSWORD", password)
        .env("KAFKA_SSL_CA_LOCATION", setting("ETL_TEST_TLS_CA"))
        .env("KAFKA_TOPIC", topic)
        .env("EXTRACT_INTERVAL", "200ms")
        .env("EXTRACT_RESULTS", "5")
        .env("EXTRACT_MAX_FETCHES", "2")
        .env("EXTRACT_SHUTDOWN_GRACE", "1s")
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_DIR", logs)
        .env("LOG_LEVEL", "debug")
        .stdout(Stdio::from(file.try_clone().expect("dup output file")))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("start the extractor");
    (child, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_password_appears_nowhere() {
    let good = std::fs::read_to_string(setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE"))
        .expect("the SCRAM password file")
        .trim()
        .to_string();
    assert!(good.len() >= 12, "a password long enough to search for");
    let topic = format!("secrets-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic).await;
    let stub = Stub::start("127.0.0.1:0".parse().expect("addr"), FaultPlan::default())
        .await
        .expect("stub");
    let logs_dir = tempfile::tempdir().expect("a scratch directory");
    let logs = logs_dir.path().to_path_buf();
    let mut seen = String::new();

    // A failed login: nothing is published, and /ready says the broker is out.
    let port = free_port();
    let (mut child, out) = extractor(WRONG, &stub.url(), &topic, &logs, port);
    let started = Instant::now();
    let ready = loop {
        if let Some(r) = get(port, "/ready").await
            && r.contains("broker unreachable")
        {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the failed login never showed on /ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    seen += &ready;
    seen += &get(port, "/metrics").await.unwrap_or_default();
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the extractor stops on SIGTERM")
        .expect("its exit status");
    seen += &std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        record_count(&topic),
        0,
        "nothing got through a failed login"
    );

    // The right password: it publishes its two fetches and exits 0 by itself.
    let port = free_port();
    let (mut child, out) = extractor(&good, &stub.url(), &topic, &logs, port);
    let mut status_seen = String::new();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("poll the child") {
            break exit;
        }
        if let Some(r) = get(port, "/metrics").await {
            status_seen = r + &get(port, "/ready").await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        exit.success(),
        "{exit:?}: {}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    seen += &status_seen;
    seen += &std::fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        record_count(&topic),
        2,
        "both fetches published over SASL_SSL"
    );

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_extractor"))
        .arg("--help")
        .env("KAFKA_SASL_PASSWORD", &good)
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("KAFKA_SASL_PASSWORD"), "{help}");
    seen += &help;

    for entry in std::fs::read_dir(&logs).expect("logs").flatten() {
        seen += &std::fs::read_to_string(entry.path()).unwrap_or_default();
    }
    assert!(
        seen.contains("etl_extractor_records_produced_total"),
        "the scan covered the metrics"
    );
    for (name, secret) in [("wrong", WRONG), ("right", good.as_str())] {
        assert!(
            !seen.contains(secret),
            "the {name} password leaked:\n{}",
            seen.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    stub.stop().await;
}
