//! The lake as its users read it: the `raw` and `processed` Delta tables through the engines
//! they query them with — the `deltalake` package, polars, DuckDB, and Spark with Delta — and the
//! tables' own log (partition values, statistics) read as the JSON it is.

mod support;

use loader::config::BackfillArgs;
use loader::replay::Position;
use randomuser_stub::{FaultPlan, Stub};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;
use support::engines::{self, Read};
use support::*;

/// Every add action in `table`'s JSON commits, with its commit's version.
fn adds(table: &Path) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    for commit in commits {
        let version: u64 = commit
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .parse()
            .unwrap();
        for line in std::fs::read_to_string(&commit).unwrap().lines() {
            let action: Value = serde_json::from_str(line).unwrap();
            if let Some(add) = action.get("add") {
                out.push((version, add.clone()));
            }
        }
    }
    out
}

/// Each served user exactly once in what `read` saw of the processed table.
fn exactly_once(engine: &str, read: &Read, served: &HashSet<String>) {
    let uuids = read.values("user_uuid");
    assert_eq!(read.rows, served.len(), "{engine}: rows");
    let h = histogram(uuids.iter().cloned());
    assert_eq!(h.len(), served.len(), "{engine}: every user once");
    assert_eq!(h.into_keys().collect::<HashSet<_>>(), *served, "{engine}");
}

/// A load, then a `--reprocess` (each processed file rewritten and swapped in one commit): the
/// tables read the same in every engine — every served user once, every record once, ids as
/// UUID text, timestamps as UTC timestamps, `date` as the partition column — and Spark reads the
/// data files as plain Parquet too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_reads_the_tables_exactly_once_after_a_rewrite() {
    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("lake");
    create_topic(&topic, 2).await;
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    run_extractor(&stub.url(), &topic, 6, 40).await;
    let served: HashSet<String> = stub.served_uuids().into_iter().collect();
    assert_eq!(served.len(), 240);

    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.batch_max_records = 2;
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(60), "240 processed rows", || async {
        db.count("SELECT count(*) FROM processed_data").await == 240
    })
    .await;
    loader.shutdown().await;

    let processed = data.path().join("processed");
    let raw = data.path().join("raw");
    // The log: one add per live file, its partition value the date in its path, statistics
    // engines skip files by.
    let raw_ids: HashSet<String> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT raw_id FROM raw_data")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.to_string())
            .collect();
    for (table, offset_column) in [(&raw, "kafka_offset"), (&processed, "source_offset")] {
        let added = adds(table);
        assert!(!added.is_empty(), "{}", table.display());
        for (version, add) in &added {
            let path = add["path"].as_str().unwrap();
            let date = add["partitionValues"]["date"].as_str().unwrap();
            assert!(
                path.starts_with(&format!("date={date}/")),
                "v{version}: {path}"
            );
            assert_eq!(add["dataChange"], true);
            let stats: Value = serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
            let file = table.join(path);
            let rows = parquet_rows(&file, &["raw_id"]).len();
            assert_eq!(stats["numRecords"].as_u64(), Some(rows as u64), "{path}");
            let offsets: Vec<i64> = parquet_rows(&file, &[offset_column])
                .into_iter()
                .map(|r| r[0].as_deref().unwrap().parse().unwrap())
                .collect();
            assert_eq!(
                stats["minValues"][offset_column].as_i64(),
                offsets.iter().min().copied(),
                "{path}"
            );
            assert_eq!(
                stats["maxValues"][offset_column].as_i64(),
                offsets.iter().max().copied(),
                "{path}"
            );
            assert_eq!(stats["nullCount"]["raw_id"], 0);
        }
    }

    // --reprocess over everything: every processed file rewritten.
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
    assert_eq!(summary.reprocessed, 6);
    let live: Vec<_> = parquet_files(&processed);
    assert!(
        live.iter().all(|p| p.to_string_lossy().contains("-g1-")),
        "the table holds the rewrites only: {live:?}"
    );

    let processed_url = processed.to_string_lossy().to_string();
    let raw_url = raw.to_string_lossy().to_string();
    for engine in ["deltalake", "polars", "duckdb"] {
        let read = engines::read(
            engine,
            &processed_url,
            &["user_uuid", "raw_id", "full_name"],
        );
        exactly_once(engine, &read, &served);
        assert!(
            read.values("full_name").iter().all(|n| n != "stale"),
            "{engine} reads the rewritten files"
        );
        for id in read.values("raw_id") {
            assert!(raw_ids.contains(&id), "{engine}: raw_id {id} as UUID text");
        }
        assert!(
            read.schema.contains_key("date"),
            "{engine}: {:?}",
            read.schema
        );
        let raw_read = engines::read(engine, &raw_url, &["raw_id"]);
        assert_eq!(raw_read.rows, 6, "{engine}: every record once");
        assert_eq!(
            raw_read
                .values("raw_id")
                .into_iter()
                .collect::<HashSet<_>>(),
            raw_ids,
            "{engine}"
        );
    }
    let delta = engines::read("deltalake", &processed_url, &[]);
    assert!(
        delta.schema["registered_date"].starts_with("timestamp[us, tz=UTC]"),
        "{:?}",
        delta.schema
    );
    assert_eq!(delta.schema["raw_id"], "string");
    assert!(
        delta.schema["date"].starts_with("date32"),
        "{:?}",
        delta.schema
    );

    // Spark, with Delta and on the plain files (the types must be ones it accepts).
    let cols: &[&str] = &["user_uuid", "raw_id", "registered_date"];
    let spark = engines::spark(&[
        ("spark", &processed_url, cols),
        ("spark", &raw_url, &["raw_id", "fetched_at"]),
        ("spark-parquet", &processed_url, cols),
        ("spark-parquet", &raw_url, &["raw_id"]),
    ]);
    exactly_once("spark", &spark[0], &served);
    assert_eq!(spark[0].schema["raw_id"], "string");
    assert_eq!(spark[0].schema["registered_date"], "timestamp");
    assert_eq!(spark[0].schema["date"], "date");
    assert_eq!(spark[1].rows, 6);
    exactly_once("spark-parquet", &spark[2], &served);
    assert_eq!(spark[3].rows, 6);
    db.drop_db().await;
}

/// Records waiting on a partition no replica owns — a topic the group no longer reads (a changed
/// `KAFKA_TOPIC`; the same as a whole group stopped at once, or a topic recreated with fewer
/// partitions) — are rolled by a replica that does not own them, once they have waited past the
/// roll interval and a grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_nobody_owns_are_rolled_all_the_same() {
    use loader::batch::{SourceRecord, decode};
    let db = TestDb::new().await;
    let data = tempfile::tempdir().unwrap();
    loader::migrate::apply(&db.pool).await.unwrap();
    // Loaded from the topic the group used to read, never rolled.
    let old = unique("old");
    let payload = include_bytes!("../../fixtures/randomuser/v1.3-compact-20-users.json");
    let sources = (0..3)
        .map(|o| SourceRecord {
            topic: old.clone(),
            partition: 2,
            offset: o,
            key: Some(format!("{old}-{o}")),
            fetch_id: Some(format!("{old}-{o}")),
            payload: Some(varied(payload, &format!("{old}-{o}"))),
            fetched_at: chrono::Utc::now(),
            headers: Vec::new(),
        })
        .collect();
    let (records, poison) = decode(sources, 1 << 24, chrono::Utc::now(), false);
    assert!(poison.is_empty());
    let store = loader::sink::store::Store::Local(data.path().to_path_buf());
    store.prepare().unwrap();
    let policy = loader::sink::RollPolicy {
        max_bytes: 1 << 30,
        interval: Duration::from_secs(3600),
    };
    let sinks = loader::sink::Sinks::new(
        db.pool.clone(),
        loader::sink::Rolls::new(db.pool.clone(), store, policy).unwrap(),
    );
    sinks.write(&records).await.unwrap();
    // They have waited an hour.
    sqlx::query("UPDATE raw_data SET created_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();

    // The group now reads another topic.
    let topic = unique("new");
    create_topic(&topic, 1).await;
    let mut config = loader_config(&db, &topic, &unique("g"), data.path());
    config.parquet.roll_interval = Duration::from_secs(2);
    let loader = RunningLoader::start(config).await;
    eventually(Duration::from_secs(30), "the orphans rolled", || async {
        db.count("SELECT count(*) FROM raw_data WHERE parquet_pending")
            .await
            == 0
            && db
                .count("SELECT count(*) FROM parquet_files WHERE state = 'published'")
                .await
                == 2
    })
    .await;
    assert_eq!(loader.metric("etl_loader_parquet_waiting_bytes").await, 0.0);
    loader.shutdown().await;
    let read = engines::read(
        "deltalake",
        &data.path().join("processed").to_string_lossy(),
        &["source_topic"],
    );
    assert_eq!(read.rows, 60);
    assert!(read.values("source_topic").iter().all(|t| *t == old));
    db.drop_db().await;
}
