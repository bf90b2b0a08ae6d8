//! Replay, backfill and status against the real broker and database.

mod support;

use loader::config::BackfillArgs;
use loader::replay::Position;
use randomuser_stub::{FaultPlan, Stub};
use std::collections::HashSet;
use std::time::Duration;
use support::*;

async fn stub() -> Stub {
    Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap()
}

fn loader_cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .args(args)
        .env("KAFKA_BROKERS", brokers())
        .env("DATABASE_URL", &db.url)
        .env("LOG_DIR", "")
        .output()
        .expect("run the loader binary")
}

/// Loads everything on `topic` with `group` and stops.
async fn load_all(db: &TestDb, topic: &str, group: &str, data: &std::path::Path, users: i64) {
    let loader = RunningLoader::start(loader_config(db, topic, group, data)).await;
    eventually(Duration::from_secs(60), "all users loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == users
    })
    .await;
    loader.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_earliest_over_a_loaded_database_changes_nothing() {
    let stub = stub().await;
    let topic = unique("replay");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    run_extractor(&stub.url(), &topic, 4, 25).await;
    load_all(&db, &topic, &group, data.path(), 100).await;
    let files_before = parquet_files(data.path());
    let committed_before = offsets(&group, &topic).committed(&[0, 1]).unwrap();
    assert_eq!(
        committed_before
            .values()
            .filter_map(|c| c.offset)
            .sum::<i64>(),
        4
    );
    // (Both fetches may hash to one partition; the other then has no commit at all.)
    assert!(
        committed_before
            .values()
            .filter(|c| c.offset.is_some())
            .all(|c| c.committed_at.is_some()),
        "the loader stamps its commits"
    );

    // Dry run: the plan, and nothing moves.
    let dry = loader_cli(
        &db,
        &[
            "replay", "--group", &group, "--topic", &topic, "--to", "earliest",
        ],
    );
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(
        out.contains("total: 4 records replayed, 0 skipped"),
        "{out}"
    );
    assert!(out.contains("dry run"), "{out}");
    assert_eq!(
        offsets(&group, &topic).committed(&[0, 1]).unwrap(),
        committed_before
    );

    let exec = loader_cli(
        &db,
        &[
            "replay",
            "--group",
            &group,
            "--topic",
            &topic,
            "--to",
            "earliest",
            "--execute",
        ],
    );
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let moved = offsets(&group, &topic).committed(&[0, 1]).unwrap();
    assert!(moved.values().all(|c| c.offset == Some(0)), "{moved:?}");

    // The loader resumes from the moved offsets: everything re-delivered, nothing written.
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    loader
        .until("4 records re-delivered as duplicates", |s| {
            s.duplicates == 4
        })
        .await;
    loader.shutdown().await;
    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 100);
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 4);
    assert_eq!(parquet_files(data.path()), files_before);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_to_move_a_running_group_and_names_unknown_ones() {
    let stub = stub().await;
    let topic = unique("refuse");
    create_topic(&topic, 1).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    run_extractor(&stub.url(), &topic, 1, 5).await;
    let loader = RunningLoader::start(loader_config(&db, &topic, &group, data.path())).await;
    eventually(Duration::from_secs(60), "loaded", || async {
        db.count("SELECT count(*) FROM processed_data").await == 5
    })
    .await;

    let refused = loader_cli(
        &db,
        &[
            "replay",
            "--group",
            &group,
            "--topic",
            &topic,
            "--to",
            "earliest",
            "--execute",
        ],
    );
    let err = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("active member"), "{err}");
    loader.shutdown().await;

    let unknown_group = loader_cli(
        &db,
        &[
            "replay",
            "--group",
            "no-such-group",
            "--topic",
            &topic,
            "--to",
            "earliest",
        ],
    );
    let err = String::from_utf8_lossy(&unknown_group.stdout).to_string()
        + &String::from_utf8_lossy(&unknown_group.stderr);
    assert_eq!(unknown_group.status.code(), Some(1), "{err}");
    assert!(err.contains("group no-such-group is unknown"), "{err}");

    let unknown_topic = loader_cli(
        &db,
        &["status", "--group", &group, "--topic", "no-such-topic-here"],
    );
    let err = String::from_utf8_lossy(&unknown_topic.stdout).to_string()
        + &String::from_utf8_lossy(&unknown_topic.stderr);
    assert_eq!(unknown_topic.status.code(), Some(1), "{err}");
    assert!(
        err.contains("topic no-such-topic-here does not exist"),
        "{err}"
    );

    let bad_position = loader_cli(
        &db,
        &[
            "replay", "--group", &group, "--topic", &topic, "--to", "soonish",
        ],
    );
    assert_eq!(
        bad_position.status.code(),
        Some(2),
        "a bad argument is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad_position.stderr).contains("expected earliest"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_lag_and_last_commit_and_times_past_the_end_replay_nothing() {
    let stub = stub().await;
    let topic = unique("status");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let group = unique("g");
    run_extractor(&stub.url(), &topic, 4, 5).await;
    load_all(&db, &topic, &group, data.path(), 20).await;
    run_extractor(&stub.url(), &topic, 3, 5).await;

    let out = loader_cli(
        &db,
        &["status", "--group", &group, "--topic", &topic, "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["total_lag"], 3, "{doc}");
    assert_eq!(doc["members"], 0);
    let committed: Vec<&serde_json::Value> = doc["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["committed"].is_null())
        .collect();
    assert!(!committed.is_empty(), "{doc}");
    for p in committed {
        assert!(
            p["last_commit"].is_string(),
            "the loader stamps its commits: {p}"
        );
    }
    let table = loader_cli(&db, &["status", "--group", &group, "--topic", &topic]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(text.contains("total lag: 3"), "{text}");
    // The table lines up: every column starts where its header does, on every row.
    let lines: Vec<&str> = text.lines().skip(1).take(3).collect();
    assert!(lines[0].starts_with("partition"), "{text}");
    for column in ["committed", "end", "lag", "last commit"] {
        let at = lines[0].find(column).unwrap();
        for row in &lines[1..] {
            assert!(
                row.as_bytes()[at - 1] == b' ' && row.as_bytes()[at] != b' ',
                "{column} at {at}:\n{text}"
            );
        }
    }
    // The plan names the position as the operator wrote it.
    let plan = loader_cli(
        &db,
        &["replay", "--group", &group, "--topic", &topic, "--to", "2h"],
    );
    let text = String::from_utf8_lossy(&plan.stdout).to_string();
    assert!(text.contains(", to 2h\n"), "{text}");

    let future = Position::Time(chrono::Utc::now() + chrono::Duration::hours(1));
    let plan = offsets(&group, &topic).plan(&future, &[0, 1]).unwrap();
    for p in &plan {
        assert_eq!(
            p.target, p.high,
            "no record at or after a future time: the end"
        );
        assert_eq!(p.replays(), 0);
    }
    assert_eq!(
        plan.iter().map(|p| p.skips()).sum::<i64>(),
        3,
        "moving to the end skips the unread 3"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_from_a_time_loads_exactly_what_was_fetched_after_it() {
    let stub = stub().await;
    let topic = unique("backfill");
    create_topic(&topic, 2).await;
    run_extractor(&stub.url(), &topic, 3, 10).await;
    let first: HashSet<String> = stub.served_uuids().into_iter().collect();
    // Record timestamps are the producer's clock in milliseconds: `between` is a millisecond
    // after every record fetched so far and before every record fetched from here on.
    let between = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    while chrono::Utc::now() <= between + chrono::Duration::milliseconds(1) {
        tokio::task::yield_now().await;
    }
    run_extractor(&stub.url(), &topic, 2, 10).await;
    let second: HashSet<String> = stub
        .served_uuids()
        .into_iter()
        .filter(|u| !first.contains(u))
        .collect();
    assert_eq!(second.len(), 20);

    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    let args = BackfillArgs {
        from: Position::Time(between),
        to: None,
        group: None,
        run: loader_config(&db, &topic, "ignored", data.path()),
    };
    let summary = backfill(args).await;
    assert_eq!((summary.consumed, summary.loaded), (2, 2));
    let loaded: HashSet<String> = sqlx::query_scalar("SELECT user_uuid FROM processed_data")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(loaded, second, "exactly the second load's users");
    let pq: HashSet<String> = parquet_rows(&data.path().join("processed"), &["user_uuid"])
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect();
    assert_eq!(pq, second);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_bounds_are_respected() {
    let stub = stub().await;
    let topic = unique("bounds");
    create_topic(&topic, 1).await;
    run_extractor(&stub.url(), &topic, 6, 5).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();

    // The binary, as an operator runs it: offsets 2 and 3 only (the end is exclusive).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .args(["backfill", "--from", "2", "--to", "4"])
        .env("KAFKA_BROKERS", brokers())
        .env("KAFKA_TOPIC", &topic)
        .env("KAFKA_GROUP_ID", "must-not-be-used")
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", data.path())
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("BATCH_MAX_AGE", "200ms")
        .env("LOG_DIR", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("backfill finished: 2 records read, 2 loaded")
    );
    let loaded: Vec<i64> = sqlx::query_scalar("SELECT kafka_offset FROM raw_data ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(loaded, vec![2, 3]);
    assert!(
        offsets("must-not-be-used", &topic).committed(&[0]).unwrap()[&0]
            .offset
            .is_none(),
        "the backfill used its own group, not KAFKA_GROUP_ID"
    );

    // A start past the end loads nothing and still exits cleanly.
    let args = BackfillArgs {
        from: Position::Time(chrono::Utc::now() + chrono::Duration::hours(1)),
        to: None,
        group: None,
        run: loader_config(&db, &topic, "ignored", data.path()),
    };
    let summary = backfill(args).await;
    assert_eq!(summary.consumed, 0);
    assert_eq!(db.count("SELECT count(*) FROM raw_data").await, 2);
    db.drop_db().await;
}

/// `--reprocess` (after a transform change): rows recomputed in place, each Parquet file
/// rewritten as a new object that replaces the old one in the table in one commit, nothing
/// duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocess_updates_rows_in_place_and_rewrites_their_parquet_files() {
    let stub = stub().await;
    let topic = unique("reprocess");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    run_extractor(&stub.url(), &topic, 3, 10).await;
    load_all(&db, &topic, &unique("g"), data.path(), 30).await;
    let files_before = parquet_files(data.path());
    // What an older transform left behind.
    sqlx::query(
        "UPDATE processed_data SET full_name = 'stale', processed_at = '2000-01-01T00:00:00Z'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let created_before: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT user_uuid, created_at FROM processed_data ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let started = chrono::Utc::now();

    let mut run = loader_config(&db, &topic, "ignored", data.path());
    run.reprocess = true;
    let args = BackfillArgs {
        from: Position::Earliest,
        to: None,
        group: None,
        run,
    };
    let summary = backfill(args).await;
    assert_eq!(
        (summary.loaded, summary.duplicates, summary.reprocessed),
        (0, 3, 3)
    );

    assert_eq!(db.count("SELECT count(*) FROM processed_data").await, 30);
    assert_eq!(
        db.count("SELECT count(*) FROM processed_data WHERE full_name = 'stale'")
            .await,
        0
    );
    let after: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT user_uuid, created_at FROM processed_data ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        after, created_before,
        "updated in place: same rows, created_at kept"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM processed_data WHERE processed_at < now() - interval '1 hour'"
        )
        .await,
        0
    );

    let files_after = parquet_files(data.path());
    assert_eq!(files_after.len(), files_before.len(), "a file for a file");
    for before in &files_before {
        // <name>-g0-<tag>.parquet, rewritten as <name>-g1-<tag>.parquet.
        let name = before.to_string_lossy();
        let stem = &name[..name.rfind("-g0-").expect("a first generation")];
        if before.starts_with(data.path().join("processed")) {
            assert!(
                files_after
                    .iter()
                    .any(|a| a.to_string_lossy().starts_with(&format!("{stem}-g1-")))
                    && !files_after.contains(before),
                "{name} is replaced in the table by its rewrite: {files_after:?}"
            );
        } else {
            assert!(files_after.contains(before), "raw files are not rewritten");
        }
    }
    let rows = parquet_rows(
        &data.path().join("processed"),
        &["user_uuid", "full_name", "processed_at"],
    );
    assert_eq!(rows.len(), 30);
    assert_eq!(
        histogram(rows.iter().map(|r| r[0].clone())).len(),
        30,
        "no duplicates"
    );
    let db_names: HashSet<(String, String)> =
        sqlx::query_as("SELECT user_uuid, full_name FROM processed_data")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let pq_names: HashSet<(String, String)> = rows
        .iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(pq_names, db_names);
    for r in &rows {
        let at = chrono::DateTime::parse_from_rfc3339(r[2].as_deref().unwrap()).unwrap();
        assert!(
            at >= started - chrono::Duration::seconds(1),
            "Parquet rewritten by the reprocess: {at}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM parquet_files WHERE state = 'staged'")
            .await,
        0
    );
    assert!(parquet_files(&data.path().join("_staging")).is_empty());
    db.drop_db().await;
}
