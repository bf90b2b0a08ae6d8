//! Secrets never leak: the loader is run with a database password it must use, and with a wrong
//! one (a failed login), and that password appears nowhere in what it prints, in its log files,
//! in `/metrics`, in `/ready`, or in `--help`; the same for the Kafka SASL password, over the
//! local broker's SASL_SSL listener. (extractor/tests/secrets.rs does the extractor's.)

mod support;

use sqlx::Connection;
use std::process::Stdio;
use std::time::Duration;
use support::*;

const CANARY: &str = "Leak-Canary-7f3a9c";

fn url_with(db: &TestDb, user: &str, password: &str) -> String {
    let mut u = url::Url::parse(&db.url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(Some(password)).unwrap();
    u.to_string()
}

/// Runs the loader binary with `url` (and `env`, which wins over the defaults set here) until
/// `until` returns, then SIGTERMs it; returns everything it printed.
async fn run_loader_for(
    url: &str,
    topic: &str,
    data: &std::path::Path,
    logs: &std::path::Path,
    env: &[(&str, String)],
    until: impl AsyncFnOnce(u16),
) -> String {
    let port = free_port();
    let out = logs.join(format!("out-{port}.txt"));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .arg("run")
        .env("DATABASE_URL", url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", unique("g"))
        .env("DATA_DIR", data)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_DIR", logs)
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOADER_BACKOFF_BASE", "100ms")
        .env("LOADER_BACKOFF_MAX", "500ms")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    until(port).await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    std::fs::read_to_string(out).unwrap()
}

async fn get(port: u16, path: &str) -> String {
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await {
            return r.text().await.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("status endpoint on {port} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_appears_nowhere() {
    let db = TestDb::new().await;
    let role = format!("leak_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{CANARY}'"),
        format!("GRANT CREATE, USAGE ON SCHEMA public TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let topic = topic_with_20_users("secrets").await;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let good = url_with(&db, &role, CANARY);
    let wrong = url_with(&db, &role, &format!("{CANARY}-wrong"));
    let mut seen = String::new();
    // What the status endpoints said, gathered inside the runs.
    let status_seen = std::sync::Mutex::new(String::new());

    // A failed login: `migrate` fails, `run` waits for the database and says why in /ready.
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .args(["migrate"])
        .env("DATABASE_URL", &wrong)
        .env("LOG_DIR", logs.path())
        .output()
        .unwrap();
    assert!(!migrate.status.success());
    seen += &String::from_utf8_lossy(&migrate.stdout);
    seen += &String::from_utf8_lossy(&migrate.stderr);
    seen += &run_loader_for(
        &wrong,
        &topic,
        data.path(),
        logs.path(),
        &[],
        async |port| {
            eventually(
                Duration::from_secs(30),
                "/ready names the failed login",
                || async {
                    get(port, "/ready")
                        .await
                        .contains("password authentication failed")
                },
            )
            .await;
            let ready = get(port, "/ready").await + &get(port, "/metrics").await;
            assert!(
                ready.contains("password authentication failed"),
                "the failed login is reported: {ready}"
            );
            status_seen.lock().unwrap().push_str(&ready);
        },
    )
    .await;

    // The right password: it loads, and still says nothing of it. (The tables are the role's.)
    let as_role = sqlx::PgPool::connect(&good).await.unwrap();
    seen += &run_loader_for(&good, &topic, data.path(), logs.path(), &[], async |port| {
        eventually(Duration::from_secs(60), "20 users loaded", || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM processed_data")
                .fetch_one(&as_role)
                .await
                .unwrap_or(0)
                == 20
        })
        .await;
        let text = get(port, "/ready").await + &get(port, "/metrics").await;
        status_seen.lock().unwrap().push_str(&text);
    })
    .await;

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .args(["run", "--help"])
        .env("DATABASE_URL", &good)
        .output()
        .unwrap();
    seen += &String::from_utf8_lossy(&help.stdout);
    for entry in std::fs::read_dir(logs.path()).unwrap().flatten() {
        seen += &std::fs::read_to_string(entry.path()).unwrap_or_default();
    }
    seen += &status_seen.lock().unwrap();

    assert!(
        seen.contains("postgres://") && seen.contains(":***@"),
        "URLs are printed, redacted"
    );
    assert_nowhere(&seen, &[("database password", CANARY)]);
    as_role.close().await;
    db.drop_db().await;
}

/// A fresh one-partition topic holding one real 20-user response.
async fn topic_with_20_users(prefix: &str) -> String {
    let topic = unique(prefix);
    create_topic(&topic, 1).await;
    produce(
        &topic,
        &[include_bytes!(
            "../../fixtures/randomuser/v1.3-compact-20-users.json"
        )],
    )
    .await;
    topic
}

/// Fails, showing the lines, if any of `secrets` (name, value) is in `seen`.
fn assert_nowhere(seen: &str, secrets: &[(&str, &str)]) {
    for (name, secret) in secrets {
        assert!(
            !seen.contains(secret),
            "the {name} leaked:\n{}",
            seen.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Least privilege: the owner migrates; `loader run` works as a role that may only read and write
/// rows in its tables (SELECT, INSERT, UPDATE — no DELETE but of the copies waiting for their
/// Parquet file, no DDL) and read the migration history, with LOADER_SKIP_MIGRATIONS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_run_needs_only_select_insert_update() {
    let db = TestDb::new().await;
    loader::migrate::apply(&db.pool).await.unwrap();
    let role = format!("writer_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let password = uuid::Uuid::new_v4().simple().to_string();
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE ON raw_data, processed_data, parquet_files, consumer_offsets TO {role}"
        ),
        format!("GRANT SELECT, INSERT, DELETE ON raw_payload_text TO {role}"),
        format!("GRANT SELECT ON _sqlx_migrations TO {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let topic = topic_with_20_users("leastpriv").await;
    let data = tempfile::tempdir().unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.db.url = Some(url_with(&db, &role, &password).into());
    config.skip_migrations = true;
    let loader = RunningLoader::start(config).await;
    eventually(
        Duration::from_secs(60),
        "20 users loaded by the restricted role",
        || async { db.count("SELECT count(*) FROM processed_data").await == 20 },
    )
    .await;
    loader.shutdown().await;
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
            .await,
        2
    );
    // --reprocess (rows updated in place, Parquet files rewritten) needs nothing more.
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.db.url = Some(url_with(&db, &role, &password).into());
    config.skip_migrations = true;
    config.reprocess = true;
    let loader = RunningLoader::start(config).await;
    eventually(
        Duration::from_secs(60),
        "the record reprocessed",
        || async {
            loader
                .metric("etl_loader_last_commit_timestamp_seconds")
                .await
                > 0.0
        },
    )
    .await;
    let summary = loader.shutdown().await;
    assert_eq!(summary.reprocessed, 1, "{summary:?}");
    assert_eq!(summary.dead_lettered, 0, "{summary:?}");
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 20);
    // And it really is restricted.
    let as_role = sqlx::PgPool::connect(&url_with(&db, &role, &password))
        .await
        .unwrap();
    assert!(
        sqlx::query("DELETE FROM processed_data")
            .execute(&as_role)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("CREATE TABLE x (y int)")
            .execute(&as_role)
            .await
            .is_err()
    );
    as_role.close().await;
    db.drop_db().await;
}

/// The Kafka SASL password, given in `KAFKA_SASL_PASSWORD`: wrong (the loader cannot join its
/// group and is not ready) and right (it loads over SASL_SSL); neither is printed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_password_appears_nowhere() {
    const WRONG: &str = "Leak-Canary-Kafka-c81d2e";
    let good = std::fs::read_to_string(setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE"))
        .unwrap()
        .trim()
        .to_string();
    assert!(good.len() >= 12, "a password long enough to search for");
    let db = TestDb::new().await;
    let topic = topic_with_20_users("secrets-kafka").await;
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let kafka = |password: &str| {
        vec![
            ("KAFKA_BROKERS", setting("ETL_TEST_KAFKA_TLS_BROKERS")),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_string()),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_string()),
            ("KAFKA_SASL_USERNAME", setting("ETL_TEST_KAFKA_SCRAM_USER")),
            ("KAFKA_SASL_PASSWORD", password.to_string()),
            ("KAFKA_SSL_CA_LOCATION", setting("ETL_TEST_TLS_CA")),
            ("LOG_LEVEL", "debug".to_string()),
        ]
    };
    let mut seen = String::new();
    // What the status endpoints said, gathered inside the runs.
    let status_seen = std::sync::Mutex::new(String::new());

    seen += &run_loader_for(
        &db.url,
        &topic,
        data.path(),
        logs.path(),
        &kafka(WRONG),
        async |port| {
            // The broker refused the login: /ready's kafka check says why.
            eventually(
                Duration::from_secs(30),
                "/ready names the Kafka failure",
                || async {
                    let ready: serde_json::Value =
                        serde_json::from_str(&get(port, "/ready").await).unwrap_or_default();
                    let kafka = ready["checks"]["kafka"].as_str().unwrap_or("ok");
                    kafka != "ok" && kafka != "not checked yet"
                },
            )
            .await;
            let ready = get(port, "/ready").await;
            assert!(ready.contains("\"ready\":false"), "{ready}");
            let text = ready + &get(port, "/metrics").await;
            status_seen.lock().unwrap().push_str(&text);
        },
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM processed_data").await,
        0,
        "nothing loaded through a failed login"
    );

    seen += &run_loader_for(
        &db.url,
        &topic,
        data.path(),
        logs.path(),
        &kafka(&good),
        async |port| {
            eventually(
                Duration::from_secs(60),
                "20 users loaded over SASL_SSL",
                || async { db.count("SELECT count(*) FROM processed_data").await == 20 },
            )
            .await;
            let text = get(port, "/ready").await + &get(port, "/metrics").await;
            status_seen.lock().unwrap().push_str(&text);
        },
    )
    .await;

    for sub in ["run", "replay", "status", "backfill"] {
        let help = std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
            .args([sub, "--help"])
            .env("KAFKA_SASL_PASSWORD", &good)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        assert!(help.contains("KAFKA_SASL_PASSWORD"), "{sub}: {help}");
        seen += &help;
    }
    for entry in std::fs::read_dir(logs.path()).unwrap().flatten() {
        seen += &std::fs::read_to_string(entry.path()).unwrap_or_default();
    }
    seen += &status_seen.lock().unwrap();
    assert!(
        seen.contains("etl_loader_records_loaded_total"),
        "the scan covered the metrics"
    );
    assert_nowhere(
        &seen,
        &[
            ("wrong Kafka password", WRONG),
            ("right Kafka password", good.as_str()),
        ],
    );
    db.drop_db().await;
}

/// The bucket's secret key: from `AWS_SECRET_ACCESS_KEY_FILE` against the test S3 server (files
/// written), and from `AWS_SECRET_ACCESS_KEY` against an endpoint that refuses connections (the
/// roll fails and says so), at debug level; the key is in neither run's output, log files,
/// `/metrics` or `/ready`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_secret_key_appears_nowhere() {
    let db = TestDb::new().await;
    let bucket = support::bucket::bucket();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let key_file = logs.path().join("aws-secret");
    std::fs::write(&key_file, format!("{CANARY}\n")).unwrap();
    let base = |endpoint: String| -> Vec<(&'static str, String)> {
        vec![
            ("PARQUET_URL", format!("s3://{bucket}/lake")),
            ("PARQUET_ROLL_INTERVAL", "0s".to_string()),
            ("AWS_ACCESS_KEY_ID", "etl".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_CONNECT_TIMEOUT", "1s".to_string()),
            ("LOG_LEVEL", "debug".to_string()),
        ]
    };
    let status_seen = std::sync::Mutex::new(String::new());
    let mut seen = String::new();

    let mut from_file = base(support::bucket::endpoint());
    from_file.push(("AWS_SECRET_ACCESS_KEY_FILE", key_file.display().to_string()));
    let topic = topic_with_20_users("s3secret").await;
    seen += &run_loader_for(
        &db.url,
        &topic,
        data.path(),
        logs.path(),
        &from_file,
        async |port| {
            eventually(Duration::from_secs(60), "the file pair written", || async {
                db.count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
                    .await
                    == 2
            })
            .await;
            let seen_here = get(port, "/ready").await + &get(port, "/metrics").await;
            *status_seen.lock().unwrap() += &seen_here;
        },
    )
    .await;
    assert_eq!(support::bucket::objects(&bucket, "lake").len(), 2);

    let mut unreachable = base("http://127.0.0.1:9".to_string());
    unreachable.push(("AWS_SECRET_ACCESS_KEY", CANARY.to_string()));
    let topic = topic_with_20_users("s3secret").await;
    seen += &run_loader_for(
        &db.url,
        &topic,
        data.path(),
        logs.path(),
        &unreachable,
        async |port| {
            eventually(
                Duration::from_secs(60),
                "the failed roll reported",
                || async {
                    get(port, "/ready").await.contains("parquet\":\"")
                        && !get(port, "/ready").await.contains("\"parquet\":\"ok\"")
                },
            )
            .await;
            let seen_here = get(port, "/ready").await + &get(port, "/metrics").await;
            *status_seen.lock().unwrap() += &seen_here;
        },
    )
    .await;
    seen += &status_seen.lock().unwrap();
    for entry in std::fs::read_dir(logs.path()).unwrap().flatten() {
        if entry.path() != key_file {
            seen += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    assert!(seen.contains("s3://"), "the store is named in the logs");
    assert_nowhere(&seen, &[("bucket secret key", CANARY)]);
    db.drop_db().await;
}
