//! The loader as operators meet it: poison to the DLQ with its reason, status endpoints, and the
//! real binary's SIGTERM handling and `migrate` command.

mod support;

use etl_common::contract::dlq_header;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::time::Duration;
use support::*;

const V14: &[u8] =
    include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
const V10: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_with_its_reason_and_the_partition_moves_on() {
    let topic = unique("poison");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let poison: [&[u8]; 4] = [
        V10,
        b"<html>502 Bad Gateway</html>",
        b"\xff\xfe\xfd",
        br#"{"results":[]}"#,
    ];
    produce(
        &topic,
        &[V14, poison[0], poison[1], V13, poison[2], poison[3]],
    )
    .await;

    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    loader
        .until("2 loaded, 4 dead-lettered", |s| {
            s.loaded == 2 && s.dead_lettered == 4
        })
        .await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 131);
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (2, 4));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let h: HashMap<String, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(h[dlq_header::SOURCE_TOPIC], topic);
        assert_eq!(h[dlq_header::SOURCE_PARTITION], "0");
        assert!(!h[dlq_header::ERROR_MESSAGE].is_empty());
        assert_eq!(h[dlq_header::LOADER_VERSION], env!("CARGO_PKG_VERSION"));
        let offset: usize = h[dlq_header::SOURCE_OFFSET].parse().unwrap();
        assert_eq!(
            m.payload().unwrap(),
            [V14, poison[0], poison[1], V13, poison[2], poison[3]][offset],
            "payload kept byte for byte"
        );
        seen.push((offset, h[dlq_header::ERROR_KIND].clone()));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (1, "legacy_shape".to_string()),
            (2, "not_json".to_string()),
            (4, "invalid_utf8".to_string()),
            (5, "empty_results".to_string())
        ]
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoints_answer() {
    let topic = unique("status");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    let base = format!("http://{}", loader.status);
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    // Ready once PostgreSQL is migrated and the group has assigned the (empty) topic's
    // partition: an idle replica is ready, it does not wait for a record.
    eventually(
        Duration::from_secs(30),
        "ready on an empty topic",
        || async {
            let text = reqwest::get(format!("{base}/ready"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let r: serde_json::Value = serde_json::from_str(&text).unwrap();
            r["checks"]["postgres"] == "ok"
                && r["checks"]["parquet"] == "ok"
                && r["checks"]["kafka"] == "ok"
        },
    )
    .await;
    let ready = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // Free space on DATA_DIR, for the "almost full" alert.
    let capacity = loader.metric("etl_loader_data_dir_capacity_bytes").await;
    let available = loader.metric("etl_loader_data_dir_available_bytes").await;
    assert!(
        capacity > 0.0 && available > 0.0 && available <= capacity,
        "{available} of {capacity}"
    );
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "etl_loader_records_consumed_total",
        "etl_loader_batch_duration_seconds",
        "etl_loader_last_commit_timestamp_seconds",
    ] {
        assert!(metrics.contains(series), "{series} exported");
    }
    assert!(
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .all(|l| l.starts_with("etl_")),
        "every series is etl_-prefixed"
    );
    loader.shutdown().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_migrates_loads_and_exits_zero_on_sigterm() {
    let topic = unique("bin");
    create_topic(&topic, 1).await;
    produce(&topic, &[V13]).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_loader");

    let check = std::process::Command::new(bin)
        .args(["migrate", "--check", "--log-dir", ""])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        !check.status.success(),
        "--check fails on an empty database"
    );
    // With a wait, --check waits in one process for the schema (as an init container does while
    // the migrate Job runs) instead of failing into a restart loop.
    let mut waiting = tokio::process::Command::new(bin)
        .args(["migrate", "--check", "--wait", "60s", "--log-dir", ""])
        .env("DATABASE_URL", &db.url)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(waiting.stdout.take().unwrap()).lines();
        let saw_wait = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("MIGRATE_WAIT") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(saw_wait, Ok(true), "--check --wait logs that it waits");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }
    let migrate = std::process::Command::new(bin)
        .args(["migrate", "--log-dir", ""])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stdout)
    );
    let out = String::from_utf8_lossy(&migrate.stdout).to_string();
    assert!(
        !out.contains(&db.url),
        "the database URL (with its password) is never logged"
    );
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        waited.success(),
        "--check --wait passes once migrated: {waited:?}"
    );

    let mut child = tokio::process::Command::new(bin)
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", unique("g"))
        .env("DATA_DIR", data.path())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOG_DIR", "")
        .env("LOADER_SKIP_MIGRATIONS", "true")
        .spawn()
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "20 users loaded by the binary",
        || async { db.count("SELECT count(*) FROM processed_data").await == 20 },
    )
    .await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    db.drop_db().await;
}

/// A record the transform accepts but PostgreSQL refuses (an index row too large) is isolated:
/// it goes to the DLQ as `rejected_by_sink` and the rest of its batch is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgres_refuses_is_dead_lettered_not_retried_forever() {
    let topic = unique("refused");
    create_topic(&topic, 1).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut hostile: serde_json::Value = serde_json::from_slice(V13).unwrap();
    let huge: String = (0..2000)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    hostile["results"][3]["login"]["uuid"] = serde_json::Value::String(huge);
    let hostile = serde_json::to_vec(&hostile).unwrap();
    produce(&topic, &[V14, &hostile, V13]).await;

    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    loader
        .until("the two good records loaded, 1 dead-lettered", |s| {
            s.loaded == 2 && s.dead_lettered == 1
        })
        .await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 131);
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.dead_lettered), (2, 1));
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 2);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["raw_id"]).len(),
        131,
        "no Parquet row for the refused record"
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    let kind = m
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == dlq_header::ERROR_KIND)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(kind.as_deref(), Some("rejected_by_sink"));
    assert_eq!(m.payload().unwrap(), hostile.as_slice());
    db.drop_db().await;
}

/// With LOADER_RAW_KEEP_LOGIN_SECRETS the raw Parquet copy is the response byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_copies_can_be_kept_byte_for_byte() {
    let topic = unique("verbatim");
    create_topic(&topic, 1).await;
    produce(&topic, &[V13]).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.raw_keep_login_secrets = true;
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "20 users", || async {
        db.count("SELECT count(*) FROM processed_data").await == 20
    })
    .await;
    loader.shutdown().await;
    let raw = parquet_rows(&data.path().join("raw"), &["payload"]);
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0][0].as_deref().unwrap().as_bytes(), V13);
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data, jsonb_array_elements(payload->'results') u WHERE u->'login' ? 'sha256'").await,
        20
    );
    db.drop_db().await;
}

/// SIGTERM while the database hangs mid-batch: the drain is bounded by LOADER_SHUTDOWN_GRACE
/// (so the orchestrator's SIGKILL never comes first), the hung batch is left uncommitted, and a
/// later loader loads it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_cannot_hold_shutdown_past_the_grace() {
    let db = TestDb::new().await;
    let topic = unique("hung");
    create_topic(&topic, 1).await;
    produce(&topic, &[V13]).await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    let mut config = loader_config(&db, &topic, &group, data.path());
    config.shutdown_grace = Duration::from_secs(1);
    // No Parquet sweep or roll check while the database hangs: the write must be what hangs.
    config.recovery_interval = Duration::from_secs(3600);
    config.parquet.roll_interval = Duration::from_secs(3600);
    let loader = RunningLoader::start(config).await;
    loader
        .until("the first batch committed", |s| s.batches == 1)
        .await;

    // The database hangs: another session holds raw_data locked, so the next batch's INSERT
    // waits for ever (no error, no answer — lock_timeout is 0 by default).
    let mut locker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE raw_data IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    produce(&topic, &[V14]).await;
    loader
        .until("the second batch's write is on", |s| s.in_flight == 1)
        .await;

    // Without the grace this never returns: the write waits on the lock for ever.
    loader.stop.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(30), loader.task)
        .await
        .expect("shutdown is bounded by LOADER_SHUTDOWN_GRACE despite the hung database")
        .expect("no panic")
        .expect("exits Ok");
    assert_eq!(summary.loaded, 1, "only the first record was loaded");
    let committed = offsets(&group, &topic).committed(&[0]).unwrap();
    assert_eq!(
        committed[&0].offset,
        Some(1),
        "the hung batch is uncommitted"
    );
    locker.rollback().await.unwrap();

    // A loader with a working database picks the batch up: every user exactly once.
    let config = loader_config(&db, &topic, &group, data.path());
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "both records loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 131
    })
    .await;
    loader.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 2);
    assert_eq!(
        db.count("SELECT count(DISTINCT user_uuid) FROM processed_data")
            .await,
        131
    );
    let parquet = parquet_rows(&data.path().join("processed"), &["user_uuid"]);
    assert_eq!(parquet.len(), 131, "Parquet: every user once");
    assert_eq!(histogram(parquet).len(), 131);
    db.drop_db().await;
}

/// Hostile strings inside an otherwise valid response are data: SQL-looking text, control and
/// bidi characters, quotes, a path and a `\u0000`-looking text are stored verbatim in PostgreSQL
/// and Parquet, nothing is executed, and no file name takes anything from the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_stored_verbatim_and_never_executed() {
    let db = TestDb::new().await;
    let topic = unique("hostile");
    create_topic(&topic, 1).await;
    let first = "Robert'); DROP TABLE processed_data;--";
    let last = "\u{202e}\u{1}\t\"O'Brien\" \\u0000 $1 %s";
    let email = "x@y.z'; DELETE FROM raw_data WHERE '1'='1";
    let city = "../../../etc/passwd";
    let mut doc: serde_json::Value = serde_json::from_slice(V13).unwrap();
    let user = &mut doc["results"][0];
    user["name"]["first"] = first.into();
    user["name"]["last"] = last.into();
    user["email"] = email.into();
    user["location"]["city"] = city.into();
    let uuid = user["login"]["uuid"].as_str().unwrap().to_string();
    produce(&topic, &[&serde_json::to_vec(&doc).unwrap()]).await;

    let data = tempfile::tempdir().unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "20 users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 20
    })
    .await;
    loader.shutdown().await;

    let (f, l, e, c): (String, String, String, String) = sqlx::query_as(
        "SELECT first_name, last_name, email, city FROM processed_data WHERE user_uuid = $1",
    )
    .bind(&uuid)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (f.as_str(), l.as_str(), e.as_str(), c.as_str()),
        (first, last, email, city)
    );
    assert_eq!(
        db.count("SELECT count(*) FROM raw_data").await,
        1,
        "nothing deleted"
    );
    let raw_first: String =
        sqlx::query_scalar("SELECT payload->'results'->0->'name'->>'first' FROM raw_data")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(raw_first, first);

    let rows = parquet_rows(
        &data.path().join("processed"),
        &["user_uuid", "first_name", "last_name", "email", "city"],
    );
    let row = rows
        .iter()
        .find(|r| r[0].as_deref() == Some(uuid.as_str()))
        .expect("the user is in Parquet");
    assert_eq!(
        row[1..].iter().map(|v| v.as_deref()).collect::<Vec<_>>(),
        vec![Some(first), Some(last), Some(email), Some(city)]
    );
    for path in parquet_files(data.path()) {
        let rel = path
            .strip_prefix(data.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            !rel.contains("passwd") && !rel.contains("..") && !rel.contains('\''),
            "{rel}"
        );
    }
    assert!(
        !std::path::Path::new("/etc/passwd.parquet").exists() && !data.path().join("etc").exists()
    );
    db.drop_db().await;
}

/// `GET path` on a local status server: the status code and the JSON body.
async fn status_of(port: u16, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or_default())
}

/// Liveness is the loop turning, nothing else: a database outage longer than the stall timeout
/// keeps `/health` at 200 (only `/ready` fails: a restart would not help), an idle loader stays
/// alive, and a loop wedged in its own code (a thread blocked for good after a write) answers 503
/// so the orchestrator restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_when_the_loop_is_wedged_not_when_a_dependency_is_down() {
    let bin = env!("CARGO_BIN_EXE_loader");
    let topic = unique("live");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let spawn = |database_url: String, port: u16, failpoints: &str| {
        tokio::process::Command::new(bin)
            .arg("run")
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BROKERS", brokers())
            .env("KAFKA_TOPIC", &topic)
            .env("KAFKA_GROUP_ID", unique("g"))
            .env("DATA_DIR", data.path())
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("BATCH_MAX_AGE", "200ms")
            .env("LOADER_BACKOFF_MAX", "1s")
            .env("HEALTH_STALL_TIMEOUT", "2s")
            .env("LOG_DIR", "")
            .env("ETL_FAILPOINTS", failpoints)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };

    // 1. The database is unreachable for three stall timeouts: not ready, alive throughout.
    let dead_db = format!("postgres://etl:etl@127.0.0.1:{}/etl", free_port());
    let port = free_port();
    let mut outage = spawn(dead_db, port, "");
    eventually(Duration::from_secs(30), "/ready names the database", || async {
        matches!(reqwest::get(format!("http://127.0.0.1:{port}/ready")).await, Ok(r) if r.status() == 503)
    })
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let (code, body) = status_of(port, "/health").await;
        assert_eq!(code, 200, "an outage is not a dead loop: {body}");
        let (code, body) = status_of(port, "/ready").await;
        assert_eq!(code, 503);
        assert_ne!(body["checks"]["postgres"], "ok", "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    outage.kill().await.unwrap();

    // 2. Idle, then wedged: the thread writing the first batch blocks for good after the write.
    let port = free_port();
    let mut wedged = spawn(db.url.clone(), port, "after-sinks=hang");
    eventually(Duration::from_secs(60), "ready on the empty topic", || async {
        matches!(reqwest::get(format!("http://127.0.0.1:{port}/ready")).await, Ok(r) if r.status() == 200)
    })
    .await;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(
            status_of(port, "/health").await.0,
            200,
            "an idle loop is alive"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    produce(&topic, &[V13]).await;
    eventually(Duration::from_secs(60), "the batch written", || async {
        db.count("SELECT count(*) FROM processed_data").await == 20
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "/health 503 once the loop stopped turning",
        || async { status_of(port, "/health").await.0 == 503 },
    )
    .await;
    let (_, body) = status_of(port, "/health").await;
    assert_eq!(body["status"], "stalled", "{body}");
    assert!(
        body["last_beat_seconds_ago"].as_f64().unwrap() > 2.0,
        "{body}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(
        metrics.status(),
        200,
        "the status server itself still answers"
    );
    wedged.kill().await.unwrap();
    db.drop_db().await;
}
