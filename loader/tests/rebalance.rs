//! Rebalances and records are handled in the order they happened, against the real broker: a
//! partition taken away and given back while the loader is idle must not cost the first record
//! of its new assignment.

mod support;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;
use support::*;

const V13: &[u8] = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");

/// A topic of `partitions`, a fresh database, a data directory, a group and a producer.
async fn setup(
    prefix: &str,
    partitions: i32,
) -> (String, TestDb, tempfile::TempDir, String, FutureProducer) {
    let topic = unique(prefix);
    create_topic(&topic, partitions).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    (
        topic,
        TestDb::new().await,
        tempfile::tempdir().unwrap(),
        unique("g"),
        producer,
    )
}

/// A `loader run` process (so it can get SIGTERM) whose closing of its rolls hangs for good once
/// it has left the group: what it did before closing can be watched while it still runs.
/// Returns it and its status address.
fn spawn_hanging_at_close(
    db_url: &str,
    topic: &str,
    group: &str,
    data: &std::path::Path,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let status: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .arg("run")
        .env("DATABASE_URL", db_url)
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", topic)
        .env("KAFKA_GROUP_ID", group)
        .env("DATA_DIR", data)
        .env("METRICS_ADDR", status.to_string())
        .env("LOG_DIR", "")
        .env("LOADER_SHUTDOWN_GRACE", "120s")
        .env("ETL_FAILPOINTS", "before-roll-close=hang")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, status)
}

/// The nice value of each thread of process `pid`.
fn thread_nices(pid: u32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // After the command's closing parenthesis: the 3rd field (state) on; nice is the 19th.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
        .collect()
}

/// One extractor-shaped record (its own fetch id) to `partition`.
async fn produce_to(producer: &FutureProducer, topic: &str, partition: i32) {
    use etl_common::contract::{self, header};
    use rdkafka::message::{Header, OwnedHeaders};
    let id = uuid::Uuid::now_v7().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: header::SCHEMA,
            value: Some(contract::SCHEMA_VERSION),
        })
        .insert(Header {
            key: header::FETCH_ID,
            value: Some(id.as_str()),
        });
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(&id)
                .payload(&varied(V13, &id))
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// A second member joins (taking a partition from the idle loader) and leaves again (giving it
/// back), then new records arrive on both partitions; repeated. Before the fix, revocations
/// were applied only after the next record had been added, so the first record after such a
/// round trip was dropped as "revoked" while the fetch position moved past it, and the next
/// commit skipped it for good. A loader started afterwards in the same group finds everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_taken_and_given_back_loses_no_record() {
    let (topic, db, data, group, producer) = setup("giveback", 2).await;
    // No periodic sweep in the way: its tick used to apply queued revocations by chance.
    let mut config = loader_config(&db, &topic, &group, data.path());
    config.recovery_interval = Duration::from_secs(3600);
    let a = RunningLoader::start(config).await;
    eventually(
        Duration::from_secs(60),
        "A owns both partitions",
        || async { assigned(a.status).await == 2 },
    )
    .await;
    // What the "fewer partitions assigned than the topic has" alert compares with.
    eventually(
        Duration::from_secs(60),
        "the topic's partition count exported",
        || async { metric(a.status, "etl_loader_topic_partitions").await == 2.0 },
    )
    .await;

    let rounds = 6;
    let mut records = 0;
    for round in 0..rounds {
        let b = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
        eventually(Duration::from_secs(60), "B takes a partition", || async {
            assigned(b.status).await == 1 && assigned(a.status).await == 1
        })
        .await;
        b.shutdown().await;
        eventually(
            Duration::from_secs(60),
            "A has both partitions back",
            || async { assigned(a.status).await == 2 },
        )
        .await;
        // One partition first, then the other: in some round the first record is on the
        // partition that went away and came back.
        for partition in [round % 2, 1 - round % 2] {
            produce_to(&producer, &topic, partition).await;
            records += 1;
        }
        let want = 20 * records;
        eventually(
            Duration::from_secs(30),
            &format!("round {round}: {want} users loaded"),
            || async { db.count("SELECT count(*) FROM processed_data").await == want },
        )
        .await;
    }
    a.shutdown().await;

    // Nothing is waiting uncommitted either: a new member of the group has nothing to add.
    let c = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = c.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (0, 0));
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, records);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["raw_id"]).len() as i64,
        20 * records
    );
    db.drop_db().await;
}

/// A member that leaves (SIGTERM) hands its partitions over before it closes its Parquet rolls,
/// which takes seconds at volume: the rest of the group goes on loading meanwhile instead of
/// stalling until the leaver exits. Loader A runs as a process whose roll closing never ends
/// (failpoint); B, in this process, must own every partition and load new records while A is
/// still closing. Whatever A left open waits in PostgreSQL and B's own closing writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_hands_its_partitions_over_before_closing_its_rolls() {
    let (topic, db, data, group, producer) = setup("leave", 2).await;
    let (mut a, a_status) = spawn_hanging_at_close(&db.url, &topic, &group, data.path());
    // A is a process: its status endpoint answers only once it has started.
    eventually(Duration::from_secs(60), "A's status endpoint", || async {
        reqwest::get(format!("http://{a_status}/health"))
            .await
            .is_ok()
    })
    .await;
    eventually(
        Duration::from_secs(60),
        "A owns both partitions",
        || async { assigned(a_status).await == 2 },
    )
    .await;
    let b = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "A and B own one each", || async {
        assigned(b.status).await == 1 && assigned(a_status).await == 1
    })
    .await;
    for partition in [0, 1] {
        produce_to(&producer, &topic, partition).await;
    }
    eventually(Duration::from_secs(60), "both records loaded", || async {
        db.count("SELECT count(*) FROM raw_data").await == 2
    })
    .await;

    let a_pid = a.id().unwrap();
    let before = thread_nices(a_pid);
    assert!(
        !before.is_empty() && before.iter().all(|n| *n < 10),
        "A loads at a normal priority: {before:?}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &a_pid.to_string()])
        .status()
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "B owns both partitions",
        || async { assigned(b.status).await == 2 },
    )
    .await;
    assert!(
        a.try_wait().unwrap().is_none(),
        "A is still closing its rolls: the partitions were handed over first"
    );
    // Closing is housekeeping: every thread of A (LOADER_CLOSING_NICE's default) yields to B.
    eventually(Duration::from_secs(30), "A closes at nice 10", || async {
        let nices = thread_nices(a_pid);
        !nices.is_empty() && nices.iter().all(|n| *n == 10)
    })
    .await;
    for partition in [0, 1] {
        produce_to(&producer, &topic, partition).await;
    }
    b.until("B loads what arrives on both partitions", |s| s.loaded >= 3)
        .await;
    a.kill().await.unwrap();
    b.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 4);
    assert_eq!(
        parquet_rows(&data.path().join("processed"), &["raw_id"]).len(),
        80,
        "B's closing wrote what A left open"
    );
    db.drop_db().await;
}

/// A member joining a loading group: the member that stays goes on loading the partitions it
/// keeps and never has a commit refused. Before the fix, each batch's synchronous commit, sent
/// while the group rebalanced, waited for the rebalance and was then refused with
/// `IllegalGeneration`; now batches store their offsets and librdkafka commits them outside
/// rebalances. Both members load with small batches, so dozens of commits fall in the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_loading_group_has_no_commit_refused() {
    let (topic, db, data, group, producer) = setup("join", 4).await;
    const RECORDS: i64 = 2000;
    for chunk in 0..(RECORDS / 100) {
        futures::future::join_all(
            (0..100).map(|i| produce_to(&producer, &topic, ((chunk * 100 + i) % 4) as i32)),
        )
        .await;
    }
    let config = || {
        let mut c = loader_config(&db, &topic, &group, data.path());
        c.batch_max_records = 5;
        c
    };
    let a = RunningLoader::start(config()).await;
    a.until("A is loading", |s| s.loaded >= 50).await;
    let b = RunningLoader::start(config()).await;
    b.until("B loads the partitions it took", |s| s.loaded >= 1)
        .await;
    let (a_during, b_first) = (a.summary.borrow().loaded, b.summary.borrow().loaded);
    eventually(Duration::from_secs(120), "everything loaded", || async {
        db.count("SELECT count(*) FROM raw_data").await == RECORDS
    })
    .await;
    let (a_end, b_end) = (a.summary.borrow().clone(), b.summary.borrow().clone());
    a.shutdown().await;
    b.shutdown().await;
    assert!(
        a_end.loaded > a_during && b_end.loaded > b_first,
        "both members loaded after the join: A {a_during} -> {}, B {b_first} -> {}",
        a_end.loaded,
        b_end.loaded
    );
    assert_eq!(
        (a_end.commit_errors, b_end.commit_errors),
        (0, 0),
        "no commit refused across the join (A, B)"
    );
    db.drop_db().await;
}

/// What a member is stopped before answering, in
/// [`stop_with_an_unanswered_assignment`].
enum Unanswered {
    /// A partition given back as the other member leaves.
    GivenBack,
    /// The empty first round of a cooperative rebalance as another member joins.
    FirstRound,
}

/// A member told to stop while an assignment waits to be taken (its start is looked up in
/// PostgreSQL, which it cannot reach): librdkafka waits for every assignment it reported to be
/// answered, even an empty one, before it runs the revocation that leaving the group needs.
/// Before the fix, nothing answered it: the member's leave timed out, it stayed in the group
/// while it closed its rolls (here for good: they hang), a member started meanwhile was given
/// nothing, and the close at exit (which polls until librdkafka is done) never returned —
/// `bench` saw a loader not exit in 120 s. Now the leaving member answers the assignment and
/// leaves at once: the others own every partition while it is still closing its rolls.
async fn stop_with_an_unanswered_assignment(case: Unanswered) {
    let (topic, db, data, group, producer) = setup("unanswered", 2).await;
    let pg_port = url::Url::parse(&db.url).unwrap().port().unwrap_or(5432);
    let proxy_port = free_port();
    let a_pg = HoldingProxy::start(
        ([127, 0, 0, 1], proxy_port).into(),
        ([127, 0, 0, 1], pg_port).into(),
    )
    .await;
    let mut a_url = url::Url::parse(&db.url).unwrap();
    a_url.set_port(Some(proxy_port)).unwrap();
    let (mut a, a_status) = spawn_hanging_at_close(a_url.as_str(), &topic, &group, data.path());
    eventually(
        Duration::from_secs(60),
        "A owns both partitions",
        || async {
            reqwest::get(format!("http://{a_status}/health"))
                .await
                .is_ok()
                && assigned(a_status).await == 2
        },
    )
    .await;
    for partition in [0, 1] {
        produce_to(&producer, &topic, partition).await;
    }
    // A's own count: its batch is over (not only its rows visible).
    eventually(Duration::from_secs(60), "A loads both records", || async {
        metric(a_status, "etl_loader_records_loaded_total").await == 2.0
    })
    .await;
    let config = || loader_config(&db, &topic, &group, data.path());
    // From here A cannot reach PostgreSQL: what it is given next waits to be taken.
    let others = match case {
        Unanswered::GivenBack => {
            let b = RunningLoader::start(config()).await;
            eventually(Duration::from_secs(60), "A and B own one each", || async {
                assigned(b.status).await == 1 && assigned(a_status).await == 1
            })
            .await;
            a_pg.hold();
            b.shutdown().await;
            eventually(
                Duration::from_secs(60),
                "A is given B's partition back",
                || async { assigned(a_status).await == 2 },
            )
            .await;
            vec![]
        }
        Unanswered::FirstRound => {
            a_pg.hold();
            let b = RunningLoader::start(config()).await;
            eventually(
                Duration::from_secs(60),
                "A gives a partition up for B",
                || async { assigned(a_status).await == 1 },
            )
            .await;
            vec![b]
        }
    };
    std::process::Command::new("kill")
        .args(["-TERM", &a.id().unwrap().to_string()])
        .status()
        .unwrap();
    let c = RunningLoader::start(config()).await;
    let mut stay = others;
    stay.push(c);
    eventually(
        Duration::from_secs(60),
        "the others own both partitions: A left the group",
        || async {
            let mut owned = 0;
            for m in &stay {
                owned += assigned(m.status).await;
            }
            owned == 2
        },
    )
    .await;
    assert!(
        a.try_wait().unwrap().is_none(),
        "A is still closing its rolls (they hang): it left the group before"
    );
    a.kill().await.unwrap();
    a_pg.release();
    produce_to(&producer, &topic, 0).await;
    eventually(
        Duration::from_secs(60),
        "what arrives is loaded",
        || async { db.count("SELECT count(*) FROM raw_data").await == 3 },
    )
    .await;
    for m in stay {
        m.shutdown().await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopping_before_it_takes_a_partition_given_back_leaves_the_group() {
    stop_with_an_unanswered_assignment(Unanswered::GivenBack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopping_before_it_answers_a_first_round_leaves_the_group() {
    stop_with_an_unanswered_assignment(Unanswered::FirstRound).await;
}
