//! The loader's memory is bounded by bytes, not by a roll's size or its records' count: a
//! stream of 5,000-user responses (about 5.5 MB each, the largest `EXTRACT_RESULTS` allows)
//! rolled into one file of several times the cap, by the real `loader run` process.

mod support;

use std::process::Stdio;
use std::time::Duration;
use support::*;

/// Responses in the roll: about 330 MB of JSON, one file.
const RESPONSES: u64 = 60;

/// The loader's peak resident memory must stay under this while it loads them and rolls them
/// into one file: well under the roll's input, which a file built in memory (or read back
/// whole, or read from PostgreSQL by a count of records) would exceed.
const CAP_BYTES: u64 = 220 << 20;

/// `VmHWM` of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_of_5000_user_responses_streams_under_a_memory_cap() {
    let db = TestDb::new().await;
    let topic = unique("memory");
    create_topic_with(
        &topic,
        1,
        &[(
            "max.message.bytes",
            &etl_common::contract::MAX_MESSAGE_BYTES.to_string(),
        )],
    )
    .await;
    let pool = randomuser_stub::fixture_users().unwrap();
    let mut input = 0u64;
    for page in 0..RESPONSES {
        let (body, _) = randomuser_stub::response(&pool, "memory", page, 5000);
        let bytes = serde_json::to_vec(&body).unwrap();
        input += bytes.len() as u64;
        produce(&topic, &[&bytes]).await;
    }
    assert!(
        input > 2 * CAP_BYTES,
        "the roll ({input} bytes) is well over the cap"
    );

    let data = tempfile::tempdir().unwrap();
    let mut loader = tokio::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", unique("memory"))
        .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
        .env("DATA_DIR", data.path())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_DIR", "")
        .env("LOG_LEVEL", "warn")
        // One file for everything: by size only after 1 GiB, by age once all is loaded.
        .env("PARQUET_ROLL_MAX_BYTES", (1u64 << 30).to_string())
        .env("PARQUET_ROLL_INTERVAL", "20s")
        .env_remove("PARQUET_URL")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = loader.id().unwrap();
    eventually(
        Duration::from_secs(600),
        "the responses rolled into the lake",
        || async {
            db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
                .await
                == 2
        },
    )
    .await;
    let peak = peak_rss(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = loader.wait().await.unwrap();
    assert!(exit.success(), "{exit:?}");

    assert_eq!(
        db.count("SELECT count(*) FROM processed_data").await,
        (RESPONSES * 5000) as i64
    );
    let raw = parquet_rows(&data.path().join("raw"), &["raw_id"]);
    assert_eq!(raw.len() as u64, RESPONSES, "one file, every response");
    println!(
        "peak RSS {} MiB for a roll of {} MiB of input (cap {} MiB)",
        peak >> 20,
        input >> 20,
        CAP_BYTES >> 20
    );
    assert!(
        peak < CAP_BYTES,
        "peak RSS {} MiB over the cap of {} MiB",
        peak >> 20,
        CAP_BYTES >> 20
    );
    db.drop_db().await;
}
