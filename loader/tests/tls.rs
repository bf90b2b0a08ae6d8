//! Transport security against real servers: Kafka's SASL_SSL listener (SCRAM-SHA-512) and
//! PostgreSQL over TLS with `sslmode=verify-full`, both from `scripts/dev-services.sh` (whose
//! `env` command exports the settings read here). The pipeline runs end to end over TLS, and
//! wrong credentials or an unrelated CA are refused — so TLS is on and verified, not merely set.

mod support;

use etl_common::kafka::KafkaArgs;
use randomuser_stub::{FaultPlan, Stub};
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

/// SASL_SSL client settings, as a user would give them to either service.
fn tls_kafka(password_file: PathBuf, ca: &str) -> KafkaArgs {
    let mut k = KafkaArgs::for_brokers(setting("ETL_TEST_KAFKA_TLS_BROKERS"));
    k.security_protocol = Some("sasl_ssl".to_string());
    k.sasl_mechanism = Some("SCRAM-SHA-512".to_string());
    k.sasl_username = Some(setting("ETL_TEST_KAFKA_SCRAM_USER"));
    k.sasl_password_file = Some(password_file);
    k.ssl_ca_location = Some(PathBuf::from(ca));
    k
}

fn good_kafka() -> KafkaArgs {
    tls_kafka(
        PathBuf::from(setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE")),
        &setting("ETL_TEST_TLS_CA"),
    )
}

/// `url` with TLS required and the server's certificate checked against `ca` and `localhost`.
fn verify_full(url: &str, ca: &str) -> String {
    let mut u = url::Url::parse(url).expect("database URL parses");
    u.set_host(Some("localhost")).expect("host");
    u.query_pairs_mut()
        .append_pair("sslmode", "verify-full")
        .append_pair("sslrootcert", ca);
    u.to_string()
}

/// What librdkafka reported while a probe ran: its log lines and error events carry the reason
/// (an authentication failure, a certificate that does not verify) that a failed metadata request
/// only calls a transport failure.
#[derive(Default)]
struct Reports(Mutex<Vec<String>>);

impl Reports {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

impl ClientContext for Reports {
    fn log(&self, _level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.push(format!("{fac}: {message}"));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.push(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Reports {}

/// Whether a client built from `kafka` can read the cluster's metadata; if not, the error and
/// what librdkafka said about it.
async fn metadata_ok(kafka: &KafkaArgs) -> Result<(), String> {
    let mut cfg = kafka.client_config().map_err(|e| e.to_string())?;
    cfg.set("group.id", unique("tls-probe"));
    let consumer: BaseConsumer<Reports> = cfg
        .create_with_context(Reports::default())
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let result = consumer.fetch_metadata(None, Duration::from_secs(10));
        let Err(e) = result else { return Ok(()) };
        // Error events reach the context only when the consumer is polled.
        for _ in 0..5 {
            if let Some(Err(event)) = consumer.poll(Duration::from_millis(100)) {
                consumer.context().push(event.to_string());
            }
        }
        let reports = consumer.context().0.lock().unwrap().join("; ");
        Err(format!("{e}; librdkafka: {reports}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_over_sasl_ssl_and_verified_postgres_tls() {
    let ca = setting("ETL_TEST_TLS_CA");
    let topic = unique("tls");
    create_topic(&topic, 2).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();

    // The extractor publishes through the SASL_SSL listener only.
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut ex = extractor::Config::for_test(&stub.url(), "unused:1", &topic).unwrap();
    ex.kafka = good_kafka();
    ex.max_fetches = Some(3);
    ex.results = 40;
    let app = extractor::Application::build(ex).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("extractor finishes over TLS")
        .expect("extractor exits Ok");
    assert_eq!(summary.published, 3);

    // The loader consumes over SASL_SSL and writes over verified TLS.
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.kafka = good_kafka();
    // Tagged, so the check below sees the loader's connections and not the test's own plain ones.
    let mut url = url::Url::parse(&verify_full(&db.url, &ca)).unwrap();
    url.query_pairs_mut()
        .append_pair("application_name", "etl-tls-loader");
    config.db.url = Some(etl_common::config::Secret::from(url.to_string()));
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "120 users over TLS", || async {
        db.count("SELECT count(*) FROM processed_data").await == 120
    })
    .await;
    // Every connection the loader holds to this database is encrypted.
    let (tls, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database() AND a.application_name = 'etl-tls-loader'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(tls >= 1, "the loader holds a TLS connection");
    assert_eq!(plain, 0, "the loader holds no plain connection");
    let summary = loader.shutdown().await;
    assert_eq!(summary.loaded, 3);
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 3);
    let users: Vec<String> = sqlx::query_scalar("SELECT user_uuid FROM processed_data")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(users.len(), 120, "no user twice");
    let served: std::collections::HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(
        users.into_iter().collect::<std::collections::HashSet<_>>(),
        served,
        "exactly the users the stub served"
    );
    stub.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn kafka_refuses_a_wrong_password_and_an_unverified_broker() {
    let ca = setting("ETL_TEST_TLS_CA");
    metadata_ok(&good_kafka())
        .await
        .expect("the right password and CA connect");

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let err = metadata_ok(&tls_kafka(wrong, &ca))
        .await
        .expect_err("a wrong SCRAM password must not connect");
    assert!(
        err.contains("Authentication failed"),
        "refused by SCRAM authentication, not for something else: {err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password leaked: {err}"
    );

    let other = tls_kafka(
        PathBuf::from(setting("ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE")),
        &setting("ETL_TEST_TLS_OTHER_CA"),
    );
    let err = metadata_ok(&other)
        .await
        .expect_err("a broker certificate the CA did not sign must be refused");
    assert!(
        err.contains("certificate verify failed"),
        "refused by certificate verification, not for something else: {err}"
    );
}

#[tokio::test]
async fn postgres_verify_full_checks_the_certificate() {
    let url = admin_database_url();
    let mut conn = PgConnection::connect(&verify_full(&url, &setting("ETL_TEST_TLS_CA")))
        .await
        .expect("verify-full with the right CA connects");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
    conn.close().await.unwrap();

    let refused =
        PgConnection::connect(&verify_full(&url, &setting("ETL_TEST_TLS_OTHER_CA"))).await;
    let err = refused
        .expect_err("a server certificate the CA did not sign must be refused")
        .to_string();
    assert!(
        err.contains("invalid peer certificate"),
        "refused for its certificate, not for something else: {err}"
    );
}
