//! The fault suite: the guarantees of docs/DESIGN.md under real failures — killed loaders,
//! a stopped broker, a stopped database, replicas joining and leaving, a flaky API, poison.
//!
//! Every scenario asserts exact results: each user the stub served is in PostgreSQL and in the
//! Parquet files exactly once, each poison record is in the DLQ. Scenarios stop the shared broker
//! and database (through `scripts/dev-services.sh`), so they run one at a time. Each prints a
//! `RELIABILITY {json}` line and, when `ETL_RELIABILITY_OUT` names a file, appends it there
//! (`scripts/fault-suite.sh` turns those lines into docs/RELIABILITY.md).

mod support;

use rand::Rng;
use randomuser_stub::{Fault, FaultPlan, Stub};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Scenarios share the broker and the database, and some stop them: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const DEV_SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-services.sh");

/// What a scenario saw, for docs/RELIABILITY.md.
#[derive(Debug, Default, serde::Serialize)]
struct Outcome {
    scenario: &'static str,
    records: u64,
    users: usize,
    kills: u32,
    outages: Vec<String>,
    poison: usize,
    lost: usize,
    duplicated: usize,
    seconds: u64,
}

impl Outcome {
    fn report(&self) {
        let line = serde_json::to_string(self).unwrap_or_default();
        println!("RELIABILITY {line}");
        if let Ok(path) = std::env::var("ETL_RELIABILITY_OUT") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

fn services(cmd: &str) {
    let status = std::process::Command::new("bash")
        .args([DEV_SERVICES, cmd])
        .stdout(Stdio::null())
        .status()
        .expect("run dev-services.sh");
    assert!(status.success(), "dev-services.sh {cmd} failed");
}

/// Stops a service and starts it again when dropped, so a failing scenario cannot leave the
/// broker or the database down for the ones after it.
struct Outage {
    start: &'static str,
    restarted: bool,
}

impl Outage {
    fn begin(stop: &'static str, start: &'static str) -> Outage {
        services(stop);
        Outage {
            start,
            restarted: false,
        }
    }

    fn end(mut self) {
        services(self.start);
        self.restarted = true;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.restarted {
            services(self.start);
        }
    }
}

/// A loader process, as operators run it.
fn spawn_loader(
    db: &TestDb,
    topic: &str,
    group: &str,
    data: &Path,
    logs: &Path,
    extra: &[(&str, &str)],
) -> Child {
    std::fs::create_dir_all(logs).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("loader.out"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loader"));
    cmd.arg("run")
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
        .env("DATA_DIR", data)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_DIR", "")
        .env("LOG_LEVEL", "warn,loader=info")
        .env("BATCH_MAX_RECORDS", "5")
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOADER_BACKOFF_BASE", "100ms")
        .env("LOADER_BACKOFF_MAX", "2s")
        .env("LOADER_RECOVERY_INTERVAL", "2s")
        // Files span a second of batches, so crashes land inside and between rolls.
        .env("PARQUET_ROLL_INTERVAL", "1s")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn loader")
}

async fn sigterm(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("loader exits within 60 s of SIGTERM")
        .expect("wait for loader");
    assert!(exit.success(), "loader exit status after SIGTERM: {exit:?}");
}

/// Whether process `pid` is stopped (SIGSTOP: state `T` in `/proc/<pid>/stat`).
fn stopped(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

async fn kill9(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Runs the real extractor in-process until `fetches` accepted fetches are acknowledged.
fn extractor(
    url: &str,
    topic: &str,
    fetches: u64,
    results: u32,
    interval: &str,
) -> tokio::task::JoinHandle<extractor::RunSummary> {
    let config = extractor_config(url, topic, fetches, results, interval);
    tokio::spawn(async move {
        let app = extractor::Application::build(config)
            .await
            .expect("extractor builds");
        app.run(CancellationToken::new())
            .await
            .expect("extractor exits Ok")
    })
}

fn extractor_config(
    url: &str,
    topic: &str,
    fetches: u64,
    results: u32,
    interval: &str,
) -> extractor::Config {
    let mut config = extractor::Config::for_test(url, &brokers(), topic).expect("extractor config");
    config.max_fetches = Some(fetches);
    config.results = results;
    config.interval = etl_common::config::parse_duration(interval).unwrap();
    config.backoff_max = Duration::from_secs(2);
    config
}

/// Waits until PostgreSQL and Parquet both hold `expected` users and nothing is left staged,
/// then counts what is lost and what is duplicated in each: users in `processed_data` and in
/// processed Parquet, and raw records in `raw_data` against raw Parquet (each raw row's record
/// once in raw Parquet, nothing there that `raw_data` lacks).
async fn settle_and_count(
    db: &TestDb,
    data: &Path,
    served: &HashSet<String>,
    timeout: Duration,
) -> (usize, usize) {
    settle_and_count_in(db, &Lake::Local(data.to_path_buf()), served, timeout).await
}

/// Where a scenario's Parquet went.
enum Lake {
    /// A local directory (DATA_DIR).
    Local(std::path::PathBuf),
    /// A bucket on the test S3 server (under the prefix `lake/`): its Delta tables, read by the
    /// `deltalake` package.
    Bucket(String),
}

impl Lake {
    /// `column` of every row of every file of `dataset` (`raw` or `processed`).
    fn column(&self, dataset: &str, column: &str) -> Vec<String> {
        match self {
            Lake::Local(dir) => parquet_rows(&dir.join(dataset), &[column])
                .into_iter()
                .filter_map(|r| r[0].clone())
                .collect(),
            Lake::Bucket(bucket) => support::engines::read(
                "deltalake",
                &format!("s3://{bucket}/lake/{dataset}"),
                &[column],
            )
            .values(column),
        }
    }

    /// Nothing half-done left where readers could see it.
    fn clean(&self) -> bool {
        match self {
            Lake::Local(dir) => parquet_files(&dir.join("_staging")).is_empty(),
            Lake::Bucket(_) => true,
        }
    }
}

async fn settle_and_count_in(
    db: &TestDb,
    lake: &Lake,
    served: &HashSet<String>,
    timeout: Duration,
) -> (usize, usize) {
    let expected = served.len() as i64;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let db_n = db.count("SELECT count(*) FROM processed_data").await;
        let staged = db
            .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
            .await;
        let waiting = db
            .count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await;
        // Reading a bucket takes a Python process: only once PostgreSQL says all is written.
        let (pq_n, raw_pq_n, raw_n) = if db_n >= expected && staged == 0 && waiting == 0 {
            (
                lake.column("processed", "user_uuid").len() as i64,
                lake.column("raw", "raw_id").len() as i64,
                db.count("SELECT count(*) FROM raw_data").await,
            )
        } else {
            (0, 0, 1)
        };
        if db_n >= expected && staged == 0 && pq_n >= expected && raw_pq_n >= raw_n && lake.clean()
        {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!("not settled: db={db_n} parquet={pq_n} staged={staged} expected={expected}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let db_uuids: Vec<String> = sqlx::query_scalar("SELECT user_uuid FROM processed_data")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let pq_uuids: Vec<String> = lake.column("processed", "user_uuid");
    let mut lost = 0;
    let mut duplicated = 0;
    for (name, uuids) in [("PostgreSQL", db_uuids), ("Parquet", pq_uuids)] {
        let h = histogram(uuids);
        let dup: usize = h.values().map(|n| n - 1).sum();
        let missing = served.iter().filter(|u| !h.contains_key(*u)).count();
        let extra = h.keys().filter(|u| !served.contains(*u)).count();
        eprintln!(
            "{name}: {} distinct, {dup} duplicated, {missing} lost, {extra} never served",
            h.len()
        );
        assert_eq!(extra, 0, "{name} holds users the stub never served");
        lost += missing;
        duplicated += dup;
    }
    let raw_rows: Vec<String> = sqlx::query_scalar("SELECT raw_id::text FROM raw_data")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let raw_pq = histogram(lake.column("raw", "raw_id"));
    let raw_dup: usize = raw_pq.values().map(|n| n - 1).sum();
    let raw_missing = raw_rows
        .iter()
        .filter(|id| !raw_pq.contains_key(*id))
        .count();
    let raw_rows: HashSet<String> = raw_rows.into_iter().collect();
    let raw_extra = raw_pq.keys().filter(|id| !raw_rows.contains(*id)).count();
    eprintln!(
        "raw: {} rows in raw_data, {} distinct in raw Parquet, {raw_dup} duplicated, {raw_missing} lost, {raw_extra} not in raw_data",
        raw_rows.len(),
        raw_pq.len()
    );
    assert_eq!(raw_extra, 0, "raw Parquet holds records raw_data does not");
    lost += raw_missing;
    duplicated += raw_dup;
    (lost, duplicated)
}

/// A stub, an in-process loader (small batches) and the extractor loading 2,000 users, returned
/// once the first 200 are in PostgreSQL: the moment a scenario breaks something.
async fn load_under_way(
    db: &TestDb,
    topic: &str,
    data: &Path,
) -> (
    Stub,
    RunningLoader,
    tokio::task::JoinHandle<extractor::RunSummary>,
) {
    load_under_way_with(db, topic, data, |_| {}).await
}

/// As [`load_under_way`], with the loader's config adjusted by `configure`.
async fn load_under_way_with(
    db: &TestDb,
    topic: &str,
    data: &Path,
    configure: impl FnOnce(&mut loader::RunConfig),
) -> (
    Stub,
    RunningLoader,
    tokio::task::JoinHandle<extractor::RunSummary>,
) {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut config = loader_config(db, topic, &unique("g"), data);
    config.batch_max_records = 5;
    configure(&mut config);
    let loader = RunningLoader::start(config).await;
    let producing = extractor(&stub.url(), topic, 40, 50, "250ms");
    eventually(Duration::from_secs(60), "some users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await >= 200
    })
    .await;
    (stub, loader, producing)
}

async fn setup(partitions: i32) -> (String, TestDb, tempfile::TempDir) {
    let topic = unique("fault");
    create_topic(&topic, partitions).await;
    create_topic(&format!("{topic}.dlq"), 1).await;
    (topic, TestDb::new().await, tempfile::tempdir().unwrap())
}

/// 1. The loader killed (SIGKILL, or aborting itself at a failpoint: mid-batch, after the
///    database commit, before the offset commit, after a roll claimed its files, after an
///    object was written but before the ledger said so) again and again while a load of 6,000
///    users runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_killed_repeatedly_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(4).await;
    let logs = data.path().join("logs");
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let group = unique("g");
    let producing = extractor(&stub.url(), &topic, 60, 100, "300ms");

    let failpoints = [
        "",
        "mid-batch=0.3",
        "after-db-commit=0.3",
        "after-sinks=0.3",
        "after-roll-claim=0.5",
        "after-object-write=0.5",
        "after-table-commit=0.5",
    ];
    let mut kills = 0;
    for i in 0..14 {
        let fp = failpoints[i % failpoints.len()];
        let mut loader = spawn_loader(
            &db,
            &topic,
            &group,
            data.path(),
            &logs,
            &[("ETL_FAILPOINTS", fp)],
        );
        let wait = Duration::from_millis(rand::rng().random_range(700..2500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => kill9(&mut loader).await,
            // Aborted itself at a failpoint: a crash all the same.
            _ = loader.wait() => {}
        }
        kills += 1;
    }
    let summary = producing.await.unwrap();
    let mut last = spawn_loader(&db, &topic, &group, data.path(), &logs, &[]);
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 6000);
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    sigterm(&mut last).await;
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 60);
    Outcome {
        scenario: "1. loader killed -9 / aborted at failpoints (incl. between the object PUT and the table commit, and between the commit and the ledger), 14 times, under load",
        records: summary.published,
        users: served.len(),
        kills,
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(kills >= 10);
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 2. The broker stopped for 30 s mid-load, then started, with both services running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_for_30_seconds_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.batch_max_records = 5;
    let loader = RunningLoader::start(config).await;
    let app = extractor::Application::build(extractor_config(&stub.url(), &topic, 60, 50, "500ms"))
        .await
        .unwrap();
    let extractor_status = app.status_addr();
    let in_flight = app.metrics().in_flight;
    let producing = tokio::spawn(app.run(CancellationToken::new()));

    eventually(Duration::from_secs(60), "some users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await >= 200
    })
    .await;
    let outage = Outage::begin("stop-kafka", "start-kafka");
    let fetched_at_stop = stub.stats().ok;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let fetched_at_20s = stub.stats().ok;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let fetched_during = stub.stats().ok - fetched_at_stop;
    let paused = stub.stats().ok == fetched_at_20s;
    let backlog_during = in_flight.get();
    let ready_during = reqwest::get(format!("http://{}/ready", loader.status))
        .await
        .unwrap()
        .status();
    let extractor_ready_during = reqwest::get(format!("http://{extractor_status}/ready"))
        .await
        .unwrap()
        .status();
    outage.end();
    let summary = tokio::time::timeout(Duration::from_secs(180), producing)
        .await
        .expect("extractor finishes after the broker is back")
        .unwrap()
        .expect("extractor exits Ok");
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 3000);
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    loader.shutdown().await;
    Outcome {
        scenario: "2. broker stopped for 30 s mid-load (extractor and loader running)",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "broker 30 s; the extractor fetched {fetched_during} more responses, then paused with its backlog full ({backlog_during} awaiting the broker)"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    // EXTRACT_MAX_IN_FLIGHT is 4: it fills its backlog, then stops fetching instead of dropping.
    assert!(
        fetched_during <= 4,
        "fetched during the outage: {fetched_during}"
    );
    assert!(paused, "no fetch in the last 10 s of the outage");
    assert_eq!(backlog_during, 4, "the backlog is full and held");
    assert_eq!(
        extractor_ready_during, 503,
        "the extractor is not ready without its broker"
    );
    assert_eq!(
        ready_during, 503,
        "the loader is not ready without its broker"
    );
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 3. PostgreSQL stopped for 30 s mid-load, then started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_for_30_seconds_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let (stub, loader, producing) = load_under_way(&db, &topic, data.path()).await;
    let outage = Outage::begin("stop-postgres", "start-postgres");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let ready_during = reqwest::get(format!("http://{}/ready", loader.status))
        .await
        .unwrap()
        .status();
    tokio::time::sleep(Duration::from_secs(15)).await;
    outage.end();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let dead = loader
        .metric("etl_loader_records_dead_lettered_total")
        .await;
    let sink_errors = loader.metric("etl_loader_sink_errors_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "3. PostgreSQL stopped for 30 s mid-load",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "database 30 s; {sink_errors} failed writes retried, 0 dead-lettered"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!(
        ready_during, 503,
        "the loader is not ready without its database"
    );
    assert!(sink_errors > 0.0, "the outage was seen");
    assert_eq!(dead, 0.0, "an outage is never poison");
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 16. PostgreSQL crashes mid-load (an immediate shutdown: WAL not yet on disk is lost) while
///     the batches commit asynchronously (`DATABASE_SYNCHRONOUS_COMMIT=off`), with
///     the WAL writer slowed to 10 s and no roll due (a roll's commit is synchronous and would
///     flush the batches before it), so the crash takes back the seconds of batches the loader
///     had already counted and moved past. The running loader must notice that the server
///     restarted and read those batches again from the positions the server kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_crash_takes_back_asynchronous_commits() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let (stub, loader, producing) = load_under_way_with(&db, &topic, data.path(), |c| {
        c.parquet.roll_interval = Duration::from_secs(45);
        c.synchronous_commit = Some(loader::sink::SynchronousCommit::Off);
    })
    .await;
    services("slow-wal-postgres");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let loaded_before = loader.summary.borrow().loaded;
    let outage = Outage::begin("crash-postgres", "start-postgres");
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.end();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let read_again = loader.metric("etl_loader_read_again_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "16. PostgreSQL crashed mid-load (immediate shutdown) with asynchronous commits and the WAL writer at 10 s",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "crash after {loaded_before} records were counted loaded; partitions read again {read_again} times"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(read_again >= 1.0, "the restart was noticed");
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 4. Three loaders in one group, one joining or leaving (gracefully or killed) every few
///    seconds, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaders_join_and_leave_under_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(6).await;
    let logs = data.path().join("logs");
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let group = unique("g");
    let mut running: Vec<Child> = (0..3)
        .map(|_| spawn_loader(&db, &topic, &group, data.path(), &logs, &[]))
        .collect();
    let producing = extractor(&stub.url(), &topic, 60, 50, "300ms");
    let mut changes = Vec::new();
    let mut kills = 0;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1500..3500))).await;
        if running.len() > 1 && (running.len() == 3 || i % 2 == 0) {
            let mut leaving = running.remove(rand::rng().random_range(0..running.len()));
            if i % 3 == 0 {
                kill9(&mut leaving).await;
                kills += 1;
                changes.push("killed");
            } else {
                sigterm(&mut leaving).await;
                changes.push("left");
            }
        } else {
            running.push(spawn_loader(&db, &topic, &group, data.path(), &logs, &[]));
            changes.push("joined");
        }
    }
    let summary = producing.await.unwrap();
    while running.len() < 2 {
        running.push(spawn_loader(&db, &topic, &group, data.path(), &logs, &[]));
    }
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    for mut l in running {
        sigterm(&mut l).await;
    }
    let counts = histogram(changes.iter().copied());
    Outcome {
        scenario: "4. three loaders in one group, one joining or leaving every 1.5-3.5 s",
        records: summary.published,
        users: served.len(),
        kills,
        outages: vec![format!("membership changes: {counts:?}")],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 5. The API failing 30% of requests, in every way it has been seen to fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_api_thirty_percent_failures() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    // Every kind once for certain, then 30% of requests fail with a kind drawn at random.
    let plan = FaultPlan {
        script: Fault::ALL_REJECTED.to_vec(),
        fail_ratio: 0.3,
        retry_after_secs: 0,
        ..FaultPlan::default()
    };
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), plan)
        .await
        .unwrap();
    let loader = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    let summary = extractor(&stub.url(), &topic, 50, 40, "20ms")
        .await
        .unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 2000);
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let dead = loader
        .metric("etl_loader_records_dead_lettered_total")
        .await;
    loader.shutdown().await;
    let faults = stub.stats().faults;
    Outcome {
        scenario: "5. API stub failing 30% of requests (429, 500, 502 HTML, truncated, not JSON, error body, empty results)",
        records: summary.published,
        users: served.len(),
        outages: vec![format!("{} refused answers: {faults:?}", summary.refused)],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!(summary.published, 50, "only accepted answers are published");
    assert_eq!(dead, 0.0, "no refused answer reached the topic");
    for f in Fault::ALL_REJECTED {
        assert!(
            faults.get(f.name()).copied().unwrap_or(0) > 0,
            "{} never answered: {faults:?}",
            f.name()
        );
    }
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 6. Poison of every kind interleaved with good records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_of_every_kind_interleaved_with_good_records() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(1).await;
    let good: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    let legacy: &[u8] = include_bytes!("../../fixtures/randomuser/v1.0-legacy-6-users.json");
    let mut huge_uuid: serde_json::Value = serde_json::from_slice(good).unwrap();
    huge_uuid["results"][0]["login"]["uuid"] = serde_json::Value::String(
        (0..2000)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect(),
    );
    let huge_uuid = serde_json::to_vec(&huge_uuid).unwrap();
    let too_large = vec![b' '; 300 * 1024];
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("legacy_shape", legacy.to_vec()),
        ("not_json", b"<html><body>502 Bad Gateway</body></html>".to_vec()),
        ("not_json", good[..good.len() / 2].to_vec()),
        ("invalid_utf8", b"\xff\xfe{\"results\":[]}".to_vec()),
        ("empty_results", br#"{"results":[],"info":{"seed":"d3adb33f","results":1,"page":1,"version":"1.4"}}"#.to_vec()),
        ("api_error", br#"{"error":"Uh oh, something has gone wrong."}"#.to_vec()),
        ("wrong_shape", br#"{"results":[{"name":"x"}]}"#.to_vec()),
        ("unstorable", br#"{"results":[{"name":{"first":"a\u0000","last":"b"},"email":"e","registered":{"date":"2020-01-01T00:00:00Z"}}]}"#.to_vec()),
        ("too_large", too_large),
        ("rejected_by_sink", huge_uuid),
    ];
    // good, poison, good, poison, ... with a distinct user set per good record.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let mut expected_poison = HashMap::new();
    let mut served = HashSet::new();
    let mut offset = 0i64;
    for (i, (kind, bad)) in poison.iter().enumerate() {
        let mut doc: serde_json::Value = serde_json::from_slice(good).unwrap();
        for (j, u) in doc["results"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            let id = format!("good-{i}-{j}");
            u["login"]["uuid"] = serde_json::Value::String(id.clone());
            served.insert(id);
        }
        let good_i = serde_json::to_vec(&doc).unwrap();
        for payload in [good_i.as_slice(), bad.as_slice()] {
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(&topic).payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            offset += 1;
        }
        expected_poison.insert(offset - 1, (*kind, bad.clone()));
    }
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.max_record_bytes = 256 * 1024;
    config.batch_max_records = 7;
    let loader = RunningLoader::start(config).await;
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "every poison record dead-lettered",
        || async {
            loader
                .metric("etl_loader_records_dead_lettered_total")
                .await
                == poison.len() as f64
        },
    )
    .await;
    loader.shutdown().await;

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("dlq"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let mut in_dlq = HashMap::new();
    for _ in 0..poison.len() {
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
        let off: i64 = h["etl-dlq-source-offset"].parse().unwrap();
        in_dlq.insert(
            off,
            (
                h["etl-dlq-error-kind"].clone(),
                m.payload().unwrap_or_default().to_vec(),
            ),
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(2), consumer.recv())
            .await
            .is_err(),
        "nothing else in the DLQ"
    );
    let mut missing_poison = 0;
    for (off, (kind, payload)) in &expected_poison {
        match in_dlq.get(off) {
            Some((k, p)) if k == kind && p == payload => {}
            other => {
                missing_poison += 1;
                eprintln!(
                    "offset {off}: expected {kind}, DLQ has {:?}",
                    other.map(|(k, _)| k)
                );
            }
        }
    }
    Outcome {
        scenario: "6. poison of every kind interleaved with good records",
        records: offset as u64,
        users: served.len(),
        poison: in_dlq.len(),
        lost: lost + missing_poison,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!(
        missing_poison, 0,
        "every poison record in the DLQ with its kind, byte for byte"
    );
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 7. The data directory unwritable for 10 s mid-load (its staging area replaced by a file):
///    PostgreSQL goes on loading, the roller reports `parquet` not ready and retries, and the
///    files are written without loss once the directory is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_unwritable_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let (stub, loader, producing) = load_under_way(&db, &topic, data.path()).await;
    // Root ignores permission bits, so break the directory itself: staging becomes a file.
    let staging = data.path().join("_staging");
    let away = data.path().join("_staging.away");
    std::fs::rename(&staging, &away).unwrap();
    std::fs::write(&staging, b"not a directory").unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let ready = reqwest::get(format!("http://{}/ready", loader.status))
        .await
        .unwrap();
    let ready_status = ready.status();
    let ready_body = ready.text().await.unwrap();
    std::fs::remove_file(&staging).unwrap();
    std::fs::rename(&away, &staging).unwrap();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let dead = loader
        .metric("etl_loader_records_dead_lettered_total")
        .await;
    let parquet_errors = loader.metric("etl_loader_sink_errors_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "7. data directory unwritable for 10 s mid-load",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "DATA_DIR 10 s; {parquet_errors} failed writes retried, 0 dead-lettered"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!(ready_status, 503, "{ready_body}");
    assert!(!ready_body.contains(r#""parquet":"ok""#), "{ready_body}");
    assert!(parquet_errors > 0.0);
    assert_eq!(dead, 0.0, "an outage is never poison");
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// SIGTERM while the broker is down: the extractor waits its grace period, then says what it
/// could not send (and exits non-zero) instead of pretending all is well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_stopped_during_a_broker_outage_reports_what_it_could_not_send() {
    let _serial = SERIAL.lock().await;
    let topic = unique("fault");
    create_topic(&topic, 1).await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut config = extractor_config(&stub.url(), &topic, u64::MAX, 10, "100ms");
    config.max_fetches = None;
    config.shutdown_grace = Duration::from_secs(2);
    let app = extractor::Application::build(config).await.unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(app.run(stop.clone()));
    eventually(
        Duration::from_secs(30),
        "a few fetches published",
        || async { stub.stats().ok >= 3 },
    )
    .await;
    let outage = Outage::begin("stop-kafka", "start-kafka");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    outage.end();
    let err = result.expect_err("unsent payloads make the run fail");
    let text = format!("{err:#}");
    assert!(
        text.contains("were not acknowledged within EXTRACT_SHUTDOWN_GRACE"),
        "{text}"
    );
    assert!(
        text.starts_with("4 fetched payloads (40 users)"),
        "the full backlog is reported: {text}"
    );
    // Purged sends are told apart: never sent, or on the wire (may have landed).
    let (not_sent, unknown): (usize, usize) = {
        let tail = text.rsplit(": ").next().unwrap_or_default();
        let n = |what: &str| {
            tail.split(", ")
                .find(|p| p.contains(what))
                .and_then(|p| p.split(' ').next()?.parse().ok())
                .unwrap_or(usize::MAX)
        };
        (n("not sent"), n("unknown"))
    };
    assert_eq!(
        not_sent + unknown,
        4,
        "each payload is not sent or unknown: {text}"
    );
}

/// 8. An idle loader (everything loaded, nothing arriving), the broker stopped just past the
///    session timeout so the group forgets the loader, then new data right after it comes
///    back; three times. Revocations applied out of order used to cost the first record after
///    each rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_loader_broker_down_past_the_session_timeout_repeatedly() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.session_timeout = Duration::from_secs(6);
    // No sweep ticks: they used to apply queued revocations by chance.
    config.recovery_interval = Duration::from_secs(3600);
    let loader = RunningLoader::start(config).await;
    let rounds = 3;
    let mut records = 0;
    for round in 0..=rounds {
        let summary = extractor(&stub.url(), &topic, 4, 25, "50ms").await.unwrap();
        records += summary.published;
        let want = 100 * (round + 1);
        eventually(
            Duration::from_secs(60),
            &format!("{want} users loaded"),
            || async { db.count("SELECT count(*) FROM processed_data").await == want },
        )
        .await;
        if round < rounds {
            // Idle; the broker goes away for longer than the session timeout.
            let outage = Outage::begin("stop-kafka", "start-kafka");
            tokio::time::sleep(Duration::from_secs(9)).await;
            outage.end();
        }
    }
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len() as i64, 100 * (rounds + 1));
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(60)).await;
    loader.shutdown().await;
    let raw = db.count("SELECT count(*) FROM raw_data").await;
    let raw_pq = parquet_rows(&data.path().join("raw"), &["raw_id"]).len() as i64;
    Outcome {
        scenario: "8. idle loader, broker down 9 s (session timeout 6 s) then new data, 3 times",
        records,
        users: served.len(),
        outages: vec![format!(
            "broker 9 s x {rounds}; raw rows {raw}, raw Parquet rows {raw_pq}"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!((raw, raw_pq), (records as i64, records as i64));
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 9. Three replicas under load; one stops itself (`SIGSTOP`) inside a batch's transaction,
///    holding the shared ledger lock and uncommitted rows. The other two keep loading: the
///    sweeps never queue behind it, and the server ends its idle transaction
///    (`idle_in_transaction_session_timeout`), releasing the rows the others need. Then it is
///    continued, finds its session gone and its partitions moved, and writes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_inside_a_transaction_holds_nobody_up() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(6).await;
    let logs = data.path().join("logs");
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let group = unique("g");
    let session = [("KAFKA_SESSION_TIMEOUT", "6s")];
    let mut paused = spawn_loader(
        &db,
        &topic,
        &group,
        data.path(),
        &logs,
        &[session[0], ("ETL_FAILPOINTS", "mid-batch=stop")],
    );
    let pid = paused.id().expect("the paused loader's pid").to_string();
    let is_stopped = || stopped(&pid);
    let producing = extractor(&stub.url(), &topic, 40, 50, "200ms");
    eventually(
        Duration::from_secs(60),
        "the replica stops inside a batch",
        || async { is_stopped() },
    )
    .await;
    let mut others: Vec<Child> = (0..2)
        .map(|_| spawn_loader(&db, &topic, &group, data.path(), &logs, &session))
        .collect();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    // Everything is loaded while the paused replica still holds its transaction open or
    // until the server ends it: nobody waits for the paused process itself.
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(180)).await;
    let still_stopped = is_stopped();
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    // Continued, it must write nothing twice.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (lost_after, duplicated_after) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(60)).await;
    sigterm(&mut paused).await;
    for mut l in others.drain(..) {
        sigterm(&mut l).await;
    }
    Outcome {
        scenario: "9. three replicas; one SIGSTOPped inside a transaction while two load, then continued",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "replica paused mid-transaction for {}s; still stopped when the others had loaded everything: {still_stopped}",
            started.elapsed().as_secs()
        )],
        lost: lost.max(lost_after),
        duplicated: duplicated.max(duplicated_after),
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(
        still_stopped,
        "the others loaded everything without the paused replica"
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!((lost_after, duplicated_after), (0, 0));
    db.drop_db().await;
}

/// 10. The database connection cut right after COMMIT went out (the server committed, the
///     loader never hears so), five times under load, through a TCP proxy in front of
///     PostgreSQL. The staged files of each such batch must be published by recovery, not
///     discarded, and the re-delivered batch written nowhere twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_outcome_unknown_five_times_under_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let cutter = CommitCutter::start(&db.url).await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let mut config =
        loader::RunConfig::for_test(&cutter.url, &brokers(), &topic, &unique("g"), data.path())
            .expect("loader config through the proxy");
    config.batch_max_records = 5;
    let loader = RunningLoader::start(config).await;
    let producing = extractor(&stub.url(), &topic, 40, 50, "250ms");
    eventually(Duration::from_secs(60), "some users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await >= 100
    })
    .await;
    let cuts = 5;
    for i in 1..=cuts {
        cutter.arm();
        eventually(Duration::from_secs(60), &format!("cut {i}"), || async {
            cutter.cuts() == i
        })
        .await;
    }
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let sink_errors = loader.metric("etl_loader_sink_errors_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "10. database connection cut right after COMMIT is sent, 5 times under load",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "{cuts} commits with an unknown outcome; {sink_errors} failed writes retried"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(
        sink_errors >= cuts as f64,
        "every cut was seen as an outage"
    );
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// A network namespace of the test's own, joined to the host by a veth pair, in which a
/// process reaches the host's Kafka and PostgreSQL only through forwarders the test controls
/// (`support/tcp_forward.py` inside, [`HoldingProxy`] outside). Removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    forwarder: Option<std::process::Child>,
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

impl Netns {
    /// A namespace whose `127.0.0.1:{port}` reaches `host_ip:{host_port}` for each pair.
    fn create(n: u8, forwards: &[(u16, u16)]) -> (Netns, std::net::Ipv4Addr) {
        let name = format!("etlz{}-{n}", std::process::id());
        let (host_if, ns_if) = (
            format!("ez{n}h{}", std::process::id() % 10000),
            format!("ez{n}n"),
        );
        let host_ip = std::net::Ipv4Addr::new(10, 231, n, 1);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        // From here on a failure removes the namespace again.
        let mut ns = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            forwarder: None,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["addr", "add", &format!("10.231.{n}.2/30"), "dev", &ns_if]);
        in_ns(&["link", "set", &ns_if, "up"]);
        in_ns(&["link", "set", "lo", "up"]);
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            name.clone(),
            "python3".into(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/tcp_forward.py").into(),
        ];
        for (port, host_port) in forwards {
            args.extend([port.to_string(), host_ip.to_string(), host_port.to_string()]);
        }
        let forwarder = std::process::Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the forwarder in the namespace");
        ns.forwarder = Some(forwarder);
        (ns, host_ip)
    }

    /// A loader process inside the namespace.
    fn loader(&self, db: &TestDb, topic: &str, group: &str, data: &Path, logs: &Path) -> Child {
        std::fs::create_dir_all(logs).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("zombie.out"))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.name,
            env!("CARGO_BIN_EXE_loader"),
            "run",
        ])
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BROKERS", "localhost:9092")
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("KAFKA_DLQ_TOPIC", format!("{topic}.dlq"))
        .env("KAFKA_SESSION_TIMEOUT", "6s")
        .env("DATA_DIR", data)
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("LOG_DIR", "")
        .env("LOG_LEVEL", "warn,loader=info")
        .env("BATCH_MAX_RECORDS", "5")
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOADER_BACKOFF_BASE", "100ms")
        .env("LOADER_BACKOFF_MAX", "2s")
        .env("LOADER_RECOVERY_INTERVAL", "2s")
        // Files span a second of batches, so crashes land inside and between rolls.
        .env("PARQUET_ROLL_INTERVAL", "1s")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
        cmd.spawn().expect("spawn the loader in the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut f) = self.forwarder.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
        // Deleting the namespace deletes the veth pair with it, once nothing runs inside;
        // the host end is removed explicitly too, so a rerun starts clean.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// 11. A loader in its own network namespace cut off from the broker only (its Kafka path
///     dropped, PostgreSQL still reachable) for twice the session timeout under load, then
///     healed: a zombie that lost its partitions to the other loader while it could still write
///     to the database. It must write nothing twice and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_cut_off_from_the_broker_only_is_a_harmless_zombie() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(4).await;
    let logs = data.path().join("logs");
    let pg_port = url::Url::parse(&db.url).unwrap().port().unwrap_or(5432);
    let kafka_port: u16 = brokers()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9092);
    let (ns, host_ip) = Netns::create(7, &[(kafka_port, 19092), (pg_port, 15432)]);
    let kafka_path = HoldingProxy::start(
        SocketAddr::from((host_ip, 19092)),
        SocketAddr::from(([127, 0, 0, 1], kafka_port)),
    )
    .await;
    let _pg_path = HoldingProxy::start(
        SocketAddr::from((host_ip, 15432)),
        SocketAddr::from(([127, 0, 0, 1], pg_port)),
    )
    .await;
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let group = unique("g");
    let mut zombie = ns.loader(&db, &topic, &group, data.path(), &logs);
    let mut other = spawn_loader(
        &db,
        &topic,
        &group,
        data.path(),
        &logs,
        &[("KAFKA_SESSION_TIMEOUT", "6s")],
    );
    let producing = extractor(&stub.url(), &topic, 60, 50, "500ms");
    let zombie_log = logs.join("zombie.out");
    eventually(
        Duration::from_secs(90),
        "the namespaced loader has committed a batch",
        || async {
            std::fs::read_to_string(&zombie_log)
                .unwrap_or_default()
                .contains("batch committed")
        },
    )
    .await;
    kafka_path.hold();
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka_path.release();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let (lost, duplicated) =
        settle_and_count(&db, data.path(), &served, Duration::from_secs(120)).await;
    let zombie_log = std::fs::read_to_string(&zombie_log).unwrap_or_default();
    let zombie_wrote = zombie_log.matches("batch committed").count();
    sigterm(&mut other).await;
    let _ = zombie.start_kill();
    let _ = zombie.wait().await;
    drop(ns);
    Outcome {
        scenario: "11. a loader cut off from the broker only (own network namespace) for 12 s (session timeout 6 s) under load, then healed",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "Kafka path dropped 12 s, PostgreSQL reachable; the zombie committed {zombie_wrote} batches in all"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(
        zombie_wrote > 0,
        "the namespaced loader took part in the load: {}",
        &zombie_log[..zombie_log.len().min(4000)]
    );
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// The loader's settings for a bucket on the test S3 server (through `endpoint`), as
/// environment variables.
fn bucket_env(bucket: &str, endpoint: &str) -> Vec<(String, String)> {
    support::bucket::settings()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
        .chain([
            ("AWS_ENDPOINT_URL".to_string(), endpoint.to_string()),
            ("PARQUET_URL".to_string(), format!("s3://{bucket}/lake")),
            ("AWS_TIMEOUT".to_string(), "5s".to_string()),
        ])
        .collect()
}

/// 12. Parquet to a bucket: the loader killed (SIGKILL, or aborting at a failpoint — after a
///     roll claimed its files, after an object was stored but before the ledger said so, and
///     the batch's own points) again and again under load. Read back by pyarrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_loader_killed_repeatedly_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let logs = data.path().join("logs");
    let bucket = support::bucket::bucket();
    let env = bucket_env(&bucket, &support::bucket::endpoint());
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let group = unique("g");
    let producing = extractor(&stub.url(), &topic, 40, 100, "300ms");
    let failpoints = [
        "after-roll-claim=0.5",
        "after-object-write=0.5",
        "after-table-commit=0.5",
        "after-db-commit=0.3",
    ];
    let mut kills = 0;
    for i in 0..8 {
        let mut extra: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        extra.push(("ETL_FAILPOINTS", failpoints[i % failpoints.len()]));
        let mut loader = spawn_loader(&db, &topic, &group, data.path(), &logs, &extra);
        let wait = Duration::from_millis(rand::rng().random_range(700..2500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => kill9(&mut loader).await,
            _ = loader.wait() => {}
        }
        kills += 1;
    }
    let summary = producing.await.unwrap();
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut last = spawn_loader(&db, &topic, &group, data.path(), &logs, &extra);
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 4000);
    let lake = Lake::Bucket(bucket);
    let (lost, duplicated) =
        settle_and_count_in(&db, &lake, &served, Duration::from_secs(120)).await;
    sigterm(&mut last).await;
    Outcome {
        scenario: "12. bucket (S3 API): loader killed -9 / aborted at failpoints incl. after a roll's claim and after an object's PUT, 8 times, under load",
        records: summary.published,
        users: served.len(),
        kills,
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(kills >= 6);
    assert_eq!((lost, duplicated), (0, 0));
    assert!(
        parquet_files(data.path()).is_empty(),
        "nothing went to DATA_DIR"
    );
    db.drop_db().await;
}

/// 13. The bucket stops answering for 30 s mid-load (the S3 server frozen): PostgreSQL keeps
///     loading, `/ready` names the Parquet sink, the roller waits the store out, and nothing is
///     lost or duplicated in either sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_frozen_for_30_seconds_mid_load() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let bucket = support::bucket::bucket();
    let env = bucket_env(&bucket, &support::bucket::endpoint());
    let (stub, loader, producing) = load_under_way_with(&db, &topic, data.path(), |c| {
        c.parquet.parquet_url = Some(format!("s3://{bucket}/lake"));
        c.parquet.store_settings = support::bucket::secrets(env.clone());
        // Noticed in seconds, not after the default 30 s request timeout (which the client
        // retries before a request fails).
        c.parquet
            .store_settings
            .push(("AWS_TIMEOUT".into(), etl_common::config::Secret::from("2s")));
    })
    .await;
    let frozen = support::bucket::Frozen::store();
    let before = db.count("SELECT count(*) FROM processed_data").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = db.count("SELECT count(*) FROM processed_data").await;
    let ready = reqwest::get(format!("http://{}/ready", loader.status))
        .await
        .unwrap();
    let (ready_status, ready_body) = (ready.status(), ready.text().await.unwrap());
    drop(frozen);
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let lake = Lake::Bucket(bucket);
    let (lost, duplicated) =
        settle_and_count_in(&db, &lake, &served, Duration::from_secs(120)).await;
    let errors = loader.metric("etl_loader_sink_errors_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "13. bucket (S3 API) not answering for 30 s mid-load",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "store frozen 30 s; PostgreSQL went on ({before} → {during} users); {errors} failed rolls retried"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(
        during > before,
        "PostgreSQL kept loading while the store was out"
    );
    assert_eq!(ready_status, 503, "{ready_body}");
    assert!(ready_body.contains("parquet"), "{ready_body}");
    assert!(errors > 0.0);
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 14. The bucket throttles (`503 SlowDown` on every write) for 20 s from the start of a load:
///     the roller backs off and retries, and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_throttling_for_20_seconds() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(2).await;
    let bucket = support::bucket::bucket();
    let throttle = support::bucket::Throttle::start().await;
    let env = bucket_env(&bucket, &throttle.endpoint);
    let (stub, loader, producing) = load_under_way_with(&db, &topic, data.path(), |c| {
        c.parquet.parquet_url = Some(format!("s3://{bucket}/lake"));
        c.parquet.store_settings = support::bucket::secrets(env.clone());
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    throttle.stop();
    let refused = throttle.refused();
    let summary = producing.await.unwrap();
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    let lake = Lake::Bucket(bucket);
    let (lost, duplicated) =
        settle_and_count_in(&db, &lake, &served, Duration::from_secs(120)).await;
    let errors = loader.metric("etl_loader_sink_errors_total").await;
    loader.shutdown().await;
    Outcome {
        scenario: "14. bucket (S3 API) throttling (503 SlowDown on every write) for 20 s",
        records: summary.published,
        users: served.len(),
        outages: vec![format!(
            "{refused} writes refused with 503 SlowDown; {errors} failed rolls retried with backoff"
        )],
        lost,
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert!(refused > 0 && errors > 0.0);
    assert_eq!((lost, duplicated), (0, 0));
    db.drop_db().await;
}

/// 15. A writer that lost its lease wakes up late: loader A stops itself (SIGSTOP) right after
///     uploading a processed file, before its table commit. Its lease runs out; another replica
///     writes and commits the file; a `--reprocess` rewrites it (a new generation, swapped in
///     one commit). A is continued: its commit must neither add its stale object back nor remove
///     the rewrite — the table holds the rewrite alone, every user once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lease_cannot_undo_a_rewrite() {
    use loader::config::BackfillArgs;
    use loader::replay::Position;
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (topic, db, data) = setup(1).await;
    let logs = data.path().join("logs");
    let big = include_bytes!("../../fixtures/randomuser/v1.4-all-nationalities-111-users.json");
    produce_as(&topic, &[(Some("f0".into()), &big[..])]).await;
    let mut a = spawn_loader(
        &db,
        &topic,
        &unique("g"),
        data.path(),
        &logs,
        &[
            ("ETL_FAILPOINTS", "after-processed-object-write=stop"),
            ("PARQUET_ROLL_INTERVAL", "0s"),
        ],
    );
    let pid = a.id().expect("A's pid").to_string();
    let is_stopped = || stopped(&pid);
    eventually(
        Duration::from_secs(60),
        "A stops after uploading the processed file",
        || async { is_stopped() },
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE dataset = 'processed' AND state = 'pending' AND lease_owner IS NOT NULL")
            .await,
        1
    );
    // A's lease runs out; another replica (its own group: A still sits in A's) writes the file.
    sqlx::query("UPDATE parquet_files SET lease_until = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let b = RunningLoader::start(loader_config(&db, &topic, &unique("g"), data.path())).await;
    eventually(Duration::from_secs(60), "B publishes the file", || async {
        db.count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
            .await
            == 0
    })
    .await;
    b.shutdown().await;
    // A transform change, and its --reprocess: the processed file's next generation.
    sqlx::query("UPDATE processed_data SET full_name = 'stale'")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut run = loader_config(&db, &topic, "ignored", data.path());
    run.reprocess = true;
    let summary = backfill(BackfillArgs {
        from: Position::Earliest,
        to: None,
        group: None,
        run,
    })
    .await;
    assert_eq!(summary.reprocessed, 1);
    let processed = data.path().join("processed");
    let rewrite = parquet_files(&processed);
    assert_eq!(rewrite.len(), 1);
    assert!(rewrite[0].to_string_lossy().contains("-g1-"), "{rewrite:?}");

    // A goes on from its upload, with the table and the ledger moved on under it.
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    eventually(
        Duration::from_secs(60),
        "A sees the ledger moved past its generation",
        || async {
            std::fs::read_to_string(logs.join("loader.out"))
                .unwrap_or_default()
                .contains("the ledger moved past this file's generation")
        },
    )
    .await;
    sigterm(&mut a).await;
    assert_eq!(parquet_files(&processed), rewrite, "the rewrite alone");
    let table = support::engines::read(
        "deltalake",
        &processed.to_string_lossy(),
        &["raw_id", "user_index", "full_name"],
    );
    let keys: HashSet<(String, String)> = table
        .values("raw_id")
        .into_iter()
        .zip(table.values("user_index"))
        .collect();
    let duplicated = table.rows - keys.len();
    let stale = table
        .values("full_name")
        .iter()
        .filter(|n| *n == "stale")
        .count();
    Outcome {
        scenario: "15. a writer paused between its upload and its table commit past its lease, while the file was written by another and rewritten by --reprocess",
        records: 1,
        users: table.rows,
        kills: 0,
        lost: 111usize.saturating_sub(keys.len()),
        duplicated,
        seconds: started.elapsed().as_secs(),
        ..Outcome::default()
    }
    .report();
    assert_eq!((table.rows, keys.len()), (111, 111), "every user once");
    assert_eq!(stale, 0, "the rewrite's rows");
    db.drop_db().await;
}
