//! Offsets kept where the data is: a database restored from a dump taken mid-load reads again,
//! by itself, exactly what it lost; a loader's Kafka commit lagging the database reads nothing
//! twice; an operator's move with Kafka's own tools is followed; `loader status` shows both
//! positions. Against the real broker and database, with
//! the real `pg_dump` and `pg_restore`.

mod support;

use randomuser_stub::{FaultPlan, Stub};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::process::Command;
use std::time::Duration;
use support::*;

fn loader_cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loader"))
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .env("DATABASE_URL", &db.url)
        .env("LOG_DIR", "")
        .output()
        .expect("run the loader binary")
}

/// A `pg_dump` of a test database, in a file of its own.
struct Dump {
    dir: tempfile::TempDir,
}

impl Dump {
    /// Dumps `db` as it is now (a consistent snapshot, taken while loaders write).
    fn of(db: &TestDb) -> Dump {
        let dump = Dump {
            dir: tempfile::tempdir().unwrap(),
        };
        pg_tool(
            "pg_dump",
            &[
                "--format=custom",
                "--dbname",
                &db.url,
                "--file",
                &dump.file(),
            ],
        );
        dump
    }

    fn file(&self) -> String {
        self.dir.path().join("etl.dump").display().to_string()
    }

    /// A new test database restored from the dump.
    async fn restore(&self) -> TestDb {
        let restored = TestDb::new().await;
        pg_tool(
            "pg_restore",
            &["--no-owner", "--dbname", &restored.url, &self.file()],
        );
        restored
    }
}

/// Runs a PostgreSQL client tool, failing the test with its output if it fails.
fn pg_tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Users in `processed_data`, and how many distinct ones (none before the loader migrated).
async fn users(db: &TestDb) -> (i64, i64) {
    match sqlx::query_as("SELECT count(*), count(DISTINCT user_uuid) FROM processed_data")
        .fetch_one(&db.pool)
        .await
    {
        Ok(counts) => counts,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => (0, 0),
        Err(e) => panic!("counting users: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_behind_the_group_reads_again_what_it_lost() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("restored");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");

    // Loading; the dump is taken while the loader runs.
    run_extractor(&stub.url(), &topic, 4, 20).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "80 users loaded", || async {
        users(&db).await.0 == 80
    })
    .await;
    let dump = Dump::of(&db);
    run_extractor(&stub.url(), &topic, 4, 20).await;
    eventually(Duration::from_secs(60), "160 users loaded", || async {
        users(&db).await.0 == 160
    })
    .await;
    loader.shutdown().await;
    let committed: i64 = offsets(&group, &topic)
        .committed(&[0, 1])
        .unwrap()
        .values()
        .filter_map(|c| c.offset)
        .sum();
    assert_eq!(committed, 8, "the group committed all 8 records to Kafka");

    // The database comes back from the dump: 80 users, its positions at 4 records.
    let restored = dump.restore().await;
    assert_eq!(users(&restored).await, (80, 80));
    let status = loader_cli(
        &restored,
        &["status", "--group", &group, "--topic", &topic, "--json"],
    );
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let stored: i64 = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["database"].as_i64())
        .sum();
    assert_eq!(stored, 4, "{doc}");
    assert_eq!(
        doc["total_lag"], 4,
        "lag counts from the database's position: {doc}"
    );
    assert!(doc["differing"].as_u64().unwrap() >= 1, "{doc}");
    let table = loader_cli(&restored, &["status", "--group", &group, "--topic", &topic]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("database behind by"), "{text}");

    // Loaders running again read exactly what the database lost.
    let loader = RunningLoader::start(loader_config(&restored, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "160 users again", || async {
        users(&restored).await.0 == 160
    })
    .await;
    // The lake holds every user once too: its files the restored ledger did not know were
    // adopted before the records were read again.
    eventually(Duration::from_secs(60), "nothing left to roll", || async {
        restored
            .count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await
            == 0
            && restored
                .count("SELECT count(*) FROM parquet_files WHERE state <> 'published'")
                .await
                == 0
    })
    .await;
    loader
        .until("the 4 lost records read again", |s| {
            s.loaded + s.duplicates >= 4
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = loader.shutdown().await;
    // Read again: loaded, or duplicates of the records the lake's files gave back first
    // (adopted), depending on which the tables held; nothing else is read.
    assert_eq!(
        summary.loaded + summary.duplicates,
        4,
        "the 4 lost records read again, nothing else: {summary:?}"
    );
    assert_eq!(users(&restored).await, (160, 160), "every served user once");
    assert_eq!(restored.count("SELECT count(*) FROM raw_data").await, 8);
    let lake_users = parquet_rows(&data.path().join("processed"), &["user_uuid"]);
    assert_eq!(lake_users.len(), 160, "users in the processed table");
    assert_eq!(
        histogram(lake_users.iter().map(|r| r[0].clone())).len(),
        160,
        "distinct users in the processed table"
    );
    assert_eq!(parquet_rows(&data.path().join("raw"), &["raw_id"]).len(), 8);
    let served: std::collections::HashSet<String> = stub.served_uuids().into_iter().collect();
    let loaded: Vec<String> = sqlx::query_scalar("SELECT user_uuid FROM processed_data ORDER BY 1")
        .fetch_all(&restored.pool)
        .await
        .unwrap();
    assert_eq!(
        loaded.into_iter().collect::<std::collections::HashSet<_>>(),
        served,
        "exactly the served users"
    );

    // A loader's Kafka commit that lags the database (lost in a crash between the two): the
    // loaders start from the database and read nothing twice.
    offsets(&group, &topic)
        .commit(&[(0, 0), (1, 0)].into_iter().collect())
        .unwrap();
    run_extractor(&stub.url(), &topic, 1, 20).await;
    let loader = RunningLoader::start(loader_config(&restored, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "the new record", || async {
        users(&restored).await.0 == 180
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (1, 0));

    // An operator moves the group to the start with Kafka's own tooling (no loader stamp on
    // the commit): the loaders follow it, and the identity absorbs all 9 records.
    let tool: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in [0, 1] {
        tpl.add_partition_offset(&topic, p, Offset::Offset(0))
            .unwrap();
    }
    tool.commit(&tpl, CommitMode::Sync).unwrap();
    let loader = RunningLoader::start(loader_config(&restored, &topic, &group, data.path())).await;
    loader
        .until("all 9 records read again", |s| s.duplicates == 9)
        .await;
    let summary = loader.shutdown().await;
    assert_eq!((summary.loaded, summary.duplicates), (0, 9));
    assert_eq!(users(&restored).await, (180, 180));
    db.drop_db().await;
    restored.drop_db().await;
}

/// The lake ahead of a restored database: records rolled one file each after the backup, read
/// again afterwards as one backlog (which would roll as one file, under another name). The
/// tables' files the restored ledger does not know are adopted first, so every user is in the
/// tables once, and in PostgreSQL once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_ahead_of_a_restored_database_is_adopted_not_rolled_twice() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("lakeahead");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    let config = |db: &TestDb| {
        let mut c = loader_config(db, &topic, &group, data.path());
        // A file per batch.
        c.parquet.roll_interval = Duration::ZERO;
        c
    };
    let published = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM parquet_files WHERE state = 'published' AND dataset = 'raw'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
        }
    };
    run_extractor(&stub.url(), &topic, 2, 20).await;
    let loader = RunningLoader::start(config(&db)).await;
    eventually(Duration::from_secs(60), "40 users rolled", || async {
        users(&db).await.0 == 40
            && db
                .count("SELECT count(*) FROM raw_data WHERE parquet_pending")
                .await
                == 0
            && published(&db).await >= 1
    })
    .await;
    let dump = Dump::of(&db);
    let files_at_dump = published(&db).await;
    // Three more records, each rolled into a file of its own.
    for i in 1..=3 {
        run_extractor(&stub.url(), &topic, 1, 20).await;
        eventually(
            Duration::from_secs(60),
            "the record rolled alone",
            || async {
                users(&db).await.0 == 40 + 20 * i && published(&db).await == files_at_dump + i
            },
        )
        .await;
    }
    loader.shutdown().await;

    let restored = dump.restore().await;
    assert_eq!(users(&restored).await, (40, 40));
    let loader = RunningLoader::start(config(&restored)).await;
    eventually(Duration::from_secs(60), "100 users again, all rolled", || async {
        users(&restored).await.0 == 100
            && restored
                .count("SELECT count(*) FROM raw_data WHERE parquet_pending")
                .await
                == 0
            && restored
                .count("SELECT count(*) FROM parquet_files WHERE state NOT IN ('published', 'compacted')")
                .await
                == 0
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!(
        users(&restored).await,
        (100, 100),
        "every user once in PostgreSQL"
    );
    let lake_users = parquet_rows(&data.path().join("processed"), &["user_uuid"]);
    assert_eq!(
        (
            lake_users.len(),
            histogram(lake_users.iter().map(|r| r[0].clone())).len()
        ),
        (100, 100),
        "every user once in the processed table ({summary:?})"
    );
    assert_eq!(parquet_rows(&data.path().join("raw"), &["raw_id"]).len(), 5);
    assert_eq!(
        (summary.loaded, summary.duplicates),
        (0, 3),
        "the adopted records, read again, are duplicates"
    );
    db.drop_db().await;
    restored.drop_db().await;
}
