//! Test harness: real Kafka and real PostgreSQL, read from `KAFKA_BROKERS` and `DATABASE_URL`
//! (defaults: the ones `scripts/dev-services.sh up` starts), one topic, group and database per
//! test, and the real services run in-process with a cancellation token for shutdown.
#![allow(dead_code)]

pub mod bucket;
pub mod engines;

use arrow::array::{Array, AsArray};
use loader::{RunConfig, RunSummary};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use sqlx::{Connection, PgPool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A setting `scripts/dev-services.sh env` exports (the TLS listener, its CA and SCRAM user);
/// the test fails (never skips) without it.
pub fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `eval \"$(scripts/dev-services.sh env)\"` (scripts/test.sh does)")
    })
}

/// The committed offsets of `group` on `topic`, read the way `loader status` reads them.
pub fn offsets(group: &str, topic: &str) -> loader::replay::GroupOffsets {
    loader::replay::GroupOffsets::new(
        &etl_common::kafka::KafkaArgs::for_brokers(brokers()),
        group,
        topic,
    )
    .expect("group offsets")
}

/// A port nothing listens on right now (for a process that must be told its port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker under test.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "localhost:9092".to_string())
}

/// The server the per-test databases are created on.
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://etl:etl@localhost:5432/etl".to_string())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates a topic as the project creates its topics (`max.message.bytes` =
/// `contract::MAX_MESSAGE_BYTES`, as compose and the README do) and waits until the broker knows it.
pub async fn create_topic(name: &str, partitions: i32) {
    let limit = etl_common::contract::MAX_MESSAGE_BYTES.to_string();
    create_topic_with(name, partitions, &[("max.message.bytes", &limit)]).await;
}

/// Creates a topic with these topic configs.
pub async fn create_topic_with(name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for r in results {
        r.expect("topic created");
    }
}

/// A fresh database with nothing in it, dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// Creates `etl_test_<uuid>` on the server of `DATABASE_URL`.
    pub async fn new() -> TestDb {
        let admin_url = admin_database_url();
        let name = format!("etl_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL parses");
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to test database");
        TestDb { name, url, pool }
    }

    /// A count query's answer; 0 while the loader has not created the tables yet.
    pub async fn count(&self, sql: &'static str) -> i64 {
        match sqlx::query_scalar(sql).fetch_one(&self.pool).await {
            Ok(n) => n,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => 0,
            Err(e) => panic!("count query {sql}: {e}"),
        }
    }

    /// Drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_database_url()).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
        }
    }
}

/// A loader running in-process.
pub struct RunningLoader {
    pub status: SocketAddr,
    pub stop: CancellationToken,
    pub task: JoinHandle<anyhow::Result<RunSummary>>,
    /// The run summary as it changes (see [`RunningLoader::until`]).
    pub summary: tokio::sync::watch::Receiver<RunSummary>,
}

impl RunningLoader {
    /// Builds and starts the real loader.
    pub async fn start(config: RunConfig) -> RunningLoader {
        let app = loader::Application::build(config)
            .await
            .expect("loader builds");
        let status = app.status_addr();
        let summary = app.summary();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run(stop.clone()));
        RunningLoader {
            status,
            stop,
            task,
            summary,
        }
    }

    /// Waits until the run summary satisfies `state` (no polling: woken on every change), or
    /// panics with `what` after 60 s. Returns the summary that satisfied it.
    pub async fn until(&self, what: &str, state: impl FnMut(&RunSummary) -> bool) -> RunSummary {
        let mut rx = self.summary.clone();
        let waited = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(state))
            .await
            .map(|r| r.map(|s| s.clone()));
        match waited {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => panic!("the loader stopped before: {what} ({:?})", *rx.borrow()),
            Err(_) => panic!(
                "timed out after 60 s waiting for: {what} ({:?})",
                *rx.borrow()
            ),
        }
    }

    /// Cancels and waits for a clean exit.
    pub async fn shutdown(self) -> RunSummary {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("loader stops within 60 s")
            .expect("loader task did not panic")
            .expect("loader exits Ok")
    }

    /// The value of an un-labelled series on `/metrics`, or the sum over its labels.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.status, name).await
    }
}

/// Reads a series from a status endpoint, summed over its labels.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends the in-process loader's log to the test's captured output, so a failing test shows
/// what the loader did (`TEST_LOG` filters it; info by default). Installed once per binary.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// A loader config for a test (its log captured: [`capture_logs`]).
pub fn loader_config(db: &TestDb, topic: &str, group: &str, data_dir: &Path) -> RunConfig {
    capture_logs();
    RunConfig::for_test(&db.url, &brokers(), topic, group, data_dir).expect("loader test config")
}

/// Runs a backfill in-process; it must exit by itself.
pub async fn backfill(args: loader::config::BackfillArgs) -> RunSummary {
    let app = loader::commands::backfill_app(args).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the backfill exits by itself")
        .unwrap()
}

/// Runs the real extractor against `url` until it has made `fetches` accepted fetches.
pub async fn run_extractor(
    url: &str,
    topic: &str,
    fetches: u64,
    results: u32,
) -> extractor::RunSummary {
    let mut config =
        extractor::Config::for_test(url, &brokers(), topic).expect("extractor test config");
    config.max_fetches = Some(fetches);
    config.results = results;
    let app = extractor::Application::build(config)
        .await
        .expect("extractor builds");
    tokio::time::timeout(Duration::from_secs(120), app.run(CancellationToken::new()))
        .await
        .expect("extractor finishes within 120 s")
        .expect("extractor exits Ok")
}

/// Polls `f` until it returns true, or panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every Parquet file of the lake under `dir`: a Delta table's live files (read from its log
/// with the kernel), anything else's `*.parquet` files, recursively; `_`-prefixed directories
/// (`_delta_log`, `_staging`) are not data.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    if dir.join("_delta_log").is_dir() {
        return table_files(dir);
    }
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if !e.file_name().to_string_lossy().starts_with('_') {
                out.extend(parquet_files(&p));
            }
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The live files of the Delta table at `dir`, at its latest version.
pub fn table_files(dir: &Path) -> Vec<PathBuf> {
    use delta_kernel::Snapshot;
    use delta_kernel::scan::state::ScanFile;
    let url = url::Url::from_directory_path(dir).expect("an absolute table path");
    let engine = delta_kernel_default_engine::DefaultEngineBuilder::new(std::sync::Arc::new(
        object_store::local::LocalFileSystem::new(),
    ))
    .build();
    let snapshot = Snapshot::builder_for(url.as_str())
        .build(&engine)
        .unwrap_or_else(|e| panic!("the Delta table {url}: {e}"));
    let scan = snapshot.scan_builder().build().expect("a scan");
    let mut paths: Vec<String> = Vec::new();
    for meta in scan.scan_metadata(&engine).expect("scan metadata") {
        paths = meta
            .expect("scan metadata")
            .visit_scan_files(paths, |acc: &mut Vec<String>, f: ScanFile| acc.push(f.path))
            .expect("scan files");
    }
    let mut files: Vec<PathBuf> = paths.iter().map(|p| dir.join(p)).collect();
    files.sort();
    files
}

/// The string columns `cols` of every row of every Parquet file under `dir`.
pub fn parquet_rows(dir: &Path, cols: &[&str]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        let file = std::fs::File::open(&path).expect("open parquet");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet footer")
            .build()
            .expect("parquet reader");
        for batch in reader {
            let batch = batch.expect("parquet batch");
            let arrays: Vec<_> = cols
                .iter()
                .map(|c| {
                    let a = batch
                        .column_by_name(c)
                        .unwrap_or_else(|| panic!("column {c} in {}", path.display()));
                    use arrow::datatypes::{DataType, TimeUnit};
                    if let DataType::Timestamp(_, Some(_)) = a.data_type() {
                        // Render UTC timestamps as RFC 3339 without needing a timezone database.
                        let naive = arrow::compute::cast(
                            a,
                            &DataType::Timestamp(TimeUnit::Microsecond, None),
                        )
                        .expect("cast timestamp");
                        let text =
                            arrow::compute::cast(&naive, &DataType::Utf8).expect("cast to text");
                        let with_z: arrow::array::StringArray = text
                            .as_string::<i32>()
                            .iter()
                            .map(|v| v.map(|v| format!("{v}Z")))
                            .collect();
                        return std::sync::Arc::new(with_z) as arrow::array::ArrayRef;
                    }
                    arrow::compute::cast(a, &DataType::Utf8).expect("cast to text")
                })
                .collect();
            for i in 0..batch.num_rows() {
                rows.push(
                    arrays
                        .iter()
                        .map(|a| {
                            let s = a.as_string::<i32>();
                            (!s.is_null(i)).then(|| s.value(i).to_string())
                        })
                        .collect(),
                );
            }
        }
    }
    rows
}

/// Counts how many times each value occurs.
pub fn histogram<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut h = HashMap::new();
    for i in items {
        *h.entry(i).or_insert(0) += 1;
    }
    h
}

/// Partitions a loader currently has lag gauges for, i.e. owns and has statistics on.
pub async fn assigned(addr: SocketAddr) -> usize {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("etl_loader_assigned_partitions "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

/// Produces each payload to `topic` as the extractor does (a fresh fetch id as key and
/// `etl-fetch-id` header, the schema header) and waits for the acknowledgements.
pub async fn produce(topic: &str, payloads: &[&[u8]]) {
    let records: Vec<(Option<String>, &[u8])> = payloads
        .iter()
        .map(|p| (Some(uuid::Uuid::now_v7().to_string()), *p))
        .collect();
    produce_as(topic, &records).await;
}

/// Produces `(fetch id, payload)` pairs: with a fetch id as the extractor would, without one
/// as another tool would (no key, no headers). Waits for the acknowledgements.
pub async fn produce_as(topic: &str, records: &[(Option<String>, &[u8])]) {
    use etl_common::contract::{self, header};
    use rdkafka::message::{Header, OwnedHeaders};
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set(
            "message.max.bytes",
            etl_common::contract::MAX_MESSAGE_BYTES.to_string(),
        )
        .create()
        .unwrap();
    for (fetch_id, payload) in records {
        let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic).payload(*payload);
        if let Some(id) = fetch_id.as_deref() {
            record = record.key(id).headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: header::SCHEMA,
                        value: Some(contract::SCHEMA_VERSION),
                    })
                    .insert(Header {
                        key: header::FETCH_ID,
                        value: Some(id),
                    }),
            );
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// A TCP proxy in front of PostgreSQL that, once armed, cuts the connection right after it has
/// passed on a `COMMIT` (and given the server time to act on it): the client never learns the
/// outcome of a commit the server made. Real bytes, a real server, a real reset.
pub struct CommitCutter {
    /// `DATABASE_URL` through the proxy.
    pub url: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    /// Starts the proxy in front of the server of `db_url`.
    pub async fn start(db_url: &str) -> CommitCutter {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut url = url::Url::parse(db_url).expect("database URL");
        let upstream = format!(
            "{}:{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(5432)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        // The proxy reads the protocol: no TLS (the server offers it, and sqlx prefers it).
        url.query_pairs_mut().append_pair("sslmode", "disable");
        let armed = std::sync::Arc::new(AtomicBool::new(false));
        let cuts = std::sync::Arc::new(AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (a, c) = (a.clone(), c.clone());
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let muted = std::sync::Arc::new(AtomicBool::new(false));
                    let m = muted.clone();
                    let down = tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            // Muted: the server's answer to the COMMIT never reaches the client.
                            if !m.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                        if commit && a.swap(false, Ordering::SeqCst) {
                            muted.store(true, Ordering::SeqCst);
                            let _ = sw.write_all(&buf[..n]).await;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            c.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    down.abort();
                });
            }
        });
        CommitCutter {
            url: url.to_string(),
            armed,
            cuts,
        }
    }

    /// Cuts the connection after the next COMMIT.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP forwarder from `listen` to `upstream` that can be made to drop the path the way a
/// firewall rule dropping packets does: while held, nothing is read or written either way (no
/// reset, no close; TCP's own buffers fill and it waits), new connections wait unanswered; once
/// released, the bytes flow again in order.
pub struct HoldingProxy {
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl HoldingProxy {
    /// Starts forwarding.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> HoldingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        let held = std::sync::Arc::new(AtomicBool::new(false));
        let h = held.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    while h.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    async fn pipe(
                        mut r: tokio::net::tcp::OwnedReadHalf,
                        mut w: tokio::net::tcp::OwnedWriteHalf,
                        held: std::sync::Arc<AtomicBool>,
                    ) {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            while held.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            let n = match tokio::time::timeout(
                                Duration::from_millis(100),
                                r.read(&mut buf),
                            )
                            .await
                            {
                                Err(_) => continue,
                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                Ok(Ok(n)) => n,
                            };
                            if w.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = w.shutdown().await;
                    }
                    let up = tokio::spawn(pipe(cr, sw, h.clone()));
                    let down = tokio::spawn(pipe(sr, cw, h));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        HoldingProxy { held, task }
    }

    /// Drops the path (as a firewall would).
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Heals it.
    pub fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The first `n` records of `topic`, as the broker holds them (key, headers, payload).
pub async fn read_all(topic: &str, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .expect("consume");
        out.push(m.detach());
    }
    out
}

/// A record's headers as text.
pub fn headers(m: &rdkafka::message::OwnedMessage) -> HashMap<String, String> {
    use rdkafka::message::{Headers, Message};
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Records of `topic`'s `partition` at `offsets`, each the 111-user fixture response, decoded as
/// a batch would be.
pub fn records_in(
    topic: &str,
    partition: i32,
    offsets: std::ops::Range<i64>,
) -> Vec<loader::batch::LoadRecord> {
    use loader::batch::{SourceRecord, decode};
    let payload =
        include_bytes!("../../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    let recs = offsets
        .map(|o| SourceRecord {
            topic: topic.to_string(),
            partition,
            offset: o,
            key: Some(format!("fetch-{partition}-{o}")),
            fetch_id: Some(format!("{topic}-{partition}-{o}")),
            payload: Some(varied(payload, &format!("{topic}-{partition}-{o}"))),
            fetched_at: chrono::Utc::now(),
            headers: Vec::new(),
        })
        .collect();
    let (good, bad) = decode(recs, 1 << 24, chrono::Utc::now(), false);
    assert!(bad.is_empty());
    good
}

/// `payload` (a captured response) with its `info.seed` replaced by one derived from `tag`, the
/// same length: another response with the same users. The same bytes are the same record
/// (docs/DESIGN.md, "Record identity"), so tests that need several records of one capture vary
/// it.
pub fn varied(payload: &[u8], tag: &str) -> Vec<u8> {
    use sha2::Digest;
    let text = std::str::from_utf8(payload).expect("a captured response is UTF-8");
    let at = text.find("\"seed\"").expect("the capture has info.seed");
    let open = at + 6 + text[at + 6..].find('"').expect("the seed's value");
    let close = open + 1 + text[open + 1..].find('"').expect("the seed's end");
    let hex = hex::encode(sha2::Sha256::digest(tag.as_bytes()));
    let len = close - open - 1;
    let seed: String = hex.chars().cycle().take(len).collect();
    let mut out = payload.to_vec();
    out[open + 1..close].copy_from_slice(seed.as_bytes());
    out
}

/// Both sinks on a migrated `db`, rolling into `dir` at 128 MiB of input (nothing due by age).
pub async fn migrated_sinks(db: &TestDb, dir: &Path) -> loader::sink::Sinks {
    loader::migrate::apply(&db.pool).await.unwrap();
    let store = loader::sink::store::Store::Local(dir.to_path_buf());
    store.prepare().unwrap();
    let rolls = loader::sink::Rolls::new(
        db.pool.clone(),
        store,
        loader::sink::RollPolicy {
            max_bytes: 128 << 20,
            interval: Duration::from_secs(3600),
        },
    )
    .expect("rolls");
    loader::sink::Sinks::new(db.pool.clone(), rolls)
}
