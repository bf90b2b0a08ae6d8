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
    let dump = tempfile::tempdir().unwrap();
    let file = dump.path().join("etl.dump");
    pg_tool(
        "pg_dump",
        &[
            "--format=custom",
            "--dbname",
            &db.url,
            "--file",
            file.to_str().unwrap(),
        ],
    );
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
    let restored = TestDb::new().await;
    pg_tool(
        "pg_restore",
        &[
            "--no-owner",
            "--dbname",
            &restored.url,
            file.to_str().unwrap(),
        ],
    );
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
    // The lake holds every user once too. Here the records read again roll in the same groups
    // as before the restore, so their files get the same names (fixed by their records) and
    // the tables, which already hold those files, are not given them twice. Records that roll
    // in other groups than before are the open case (docs/DESIGN.md, "Known limits").
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
    let summary = loader.shutdown().await;
    assert_eq!(
        (summary.loaded, summary.duplicates),
        (4, 0),
        "the 4 lost records read again, nothing else"
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
