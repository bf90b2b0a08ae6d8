//! The loader's memory is bounded by bytes, not by a roll's size or its records' count: a
//! stream of 5,000-user responses (about 5.5 MB each, the largest `EXTRACT_RESULTS` allows)
//! rolled into one file of several times the cap, by the real `loader run` process.

mod support;

use std::process::Stdio;
use std::time::Duration;
use support::*;

/// Responses in the roll: about 490 MB of JSON, one file.
const RESPONSES: u64 = 90;

/// The loader's peak resident memory must stay under this while it loads them and rolls them
/// into one file: under the roll's input, which a roll read by a count of records (64 of these
/// are 350 MB), or a file built in memory beside what loading holds, would exceed. Loading
/// alone peaks at about 215 MiB with responses this large (a debug build; a batch holds one
/// or two, and each is parsed whole).
const CAP_BYTES: u64 = 400 << 20;

/// What rolling the whole roll may add to the peak that loading reached: a record parsed (a
/// raw file's records are checked by the transform, one at a time), a page of rows and a row
/// group, not the file. Measured 20 to 100 MiB with two malloc arenas; 140 MiB with glibc's
/// default (eight per core), where a roll did not reuse what the batches had freed.
const ROLL_CAP_BYTES: u64 = 160 << 20;

/// `VmHWM` of process `pid`, in bytes; `None` once it has exited.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kb * 1024)
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
        input > CAP_BYTES,
        "the roll ({input} bytes) is well over the cap"
    );

    loader::migrate::apply(&db.pool).await.unwrap();
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
        // One file for everything: by size only after 1 GiB, by age after an hour; the
        // closing roll (SIGTERM) writes it.
        .env("PARQUET_ROLL_MAX_BYTES", (1u64 << 30).to_string())
        .env("PARQUET_ROLL_INTERVAL", "1h")
        .env("LOADER_SHUTDOWN_GRACE", "15m")
        .env_remove("MALLOC_ARENA_MAX")
        .env_remove("PARQUET_URL")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = loader.id().unwrap();
    eventually(
        Duration::from_secs(900),
        "every response in PostgreSQL",
        || async {
            db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
                .await
                == RESPONSES as i64
        },
    )
    .await;
    let loading = peak_rss(pid).unwrap_or_default();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    // The high-water mark, read until the process is gone: the closing roll is its last work.
    let mut peak = 0;
    let exit = loop {
        if let Some(p) = peak_rss(pid) {
            peak = peak.max(p);
        }
        if let Some(exit) = loader.try_wait().unwrap() {
            break exit;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
            .await,
        2,
        "one raw and one processed file"
    );

    assert_eq!(
        db.count("SELECT count(*) FROM processed_data").await,
        (RESPONSES * 5000) as i64
    );
    let raw = parquet_rows(&data.path().join("raw"), &["raw_id"]);
    assert_eq!(raw.len() as u64, RESPONSES, "one file, every response");
    let report = format!(
        "peak RSS {} MiB loading, {} MiB with the roll of {} MiB of input (caps: {} MiB, the roll {} MiB)",
        loading >> 20,
        peak >> 20,
        input >> 20,
        CAP_BYTES >> 20,
        ROLL_CAP_BYTES >> 20
    );
    println!("{report}");
    assert!(peak < CAP_BYTES, "{report}");
    assert!(peak.saturating_sub(loading) < ROLL_CAP_BYTES, "{report}");
    db.drop_db().await;
}
