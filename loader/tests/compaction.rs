//! Compaction against a real PostgreSQL and a local lake: small files become one file of the
//! same rows in one `dataChange: false` commit, read by the engines users run; a compaction
//! killed at each step (`kill -9` through a failpoint of `loader compact`) is finished once;
//! a `--reprocess` of compacted records, before or after the compaction's commit, rewrites the
//! compacted file and never brings the old files back.

mod support;

use loader::sink::store::Store;
use loader::sink::{Cut, RollPolicy, Rolls, Sinks};
use std::path::Path;
use std::time::Duration;
use support::*;

/// A loader's sinks over a migrated test database and the lake in `dir`; rolls of up to 128 MiB.
async fn sinks(db: &TestDb, dir: &Path) -> Sinks {
    loader::migrate::apply(&db.pool).await.unwrap();
    let store = Store::Local(dir.to_path_buf());
    store.prepare().unwrap();
    let policy = RollPolicy {
        max_bytes: 128 << 20,
        interval: Duration::from_secs(3600),
    };
    Sinks::new(
        db.pool.clone(),
        Rolls::new(db.pool.clone(), store, policy).unwrap(),
    )
}

/// Four rolls of two records each on partition 0: four small files per table.
async fn four_small_rolls(s: &Sinks) {
    for first in [0, 2, 4, 6] {
        s.write(&records_in("t", 0, first..first + 2))
            .await
            .unwrap();
        s.rolls().roll("t", 0, Cut::All).await.unwrap();
    }
}

/// Rows of a table: the asked-for columns as text.
type Rows = Vec<Vec<Option<String>>>;

/// Every row of both tables, sorted: raw (id, payload), processed (id, user, name).
fn rows(dir: &Path) -> (Rows, Rows) {
    let mut raw = parquet_rows(&dir.join("raw"), &["raw_id", "payload"]);
    let mut processed = parquet_rows(
        &dir.join("processed"),
        &["raw_id", "user_index", "full_name"],
    );
    raw.sort();
    processed.sort();
    (raw, processed)
}

/// The actions of the table's latest commit.
fn last_commit(table: &Path) -> Vec<serde_json::Value> {
    let log = table.join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let text = std::fs::read_to_string(commits.last().unwrap()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `loader compact` on `dir` and `db`, with `failpoints` armed.
fn compact_command(
    db: &TestDb,
    dir: &Path,
    args: &[&str],
    failpoints: &str,
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_loader"))
        .arg("compact")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("DATA_DIR", dir)
        .env("LOG_DIR", "")
        .env("ETL_FAILPOINTS", failpoints)
        .env_remove("PARQUET_URL")
        .output()
        .unwrap()
}

/// Each record is named by exactly one file, published, and the tables' files are exactly the
/// published ones' objects.
async fn ledger_matches_tables(db: &TestDb, dir: &Path) {
    let unpublished = db
        .count("SELECT count(*) FROM parquet_files WHERE state NOT IN ('published', 'compacted')")
        .await;
    assert_eq!(unpublished, 0, "every file is published or compacted");
    let mut objects: Vec<String> =
        sqlx::query_scalar("SELECT object FROM parquet_files WHERE state = 'published' ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    objects.sort();
    let mut live: Vec<String> = parquet_files(&dir.join("raw"))
        .into_iter()
        .chain(parquet_files(&dir.join("processed")))
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().to_string())
        .collect();
    live.sort();
    assert_eq!(objects, live, "the ledger's objects are the tables' files");
    let stray = db
        .count(
            "SELECT count(*) FROM raw_data r WHERE NOT EXISTS (SELECT 1 FROM parquet_files f WHERE f.path = r.raw_file AND f.state = 'published')
                OR NOT EXISTS (SELECT 1 FROM parquet_files f WHERE f.path = r.processed_file AND f.state = 'published')",
        )
        .await;
    assert_eq!(
        stray, 0,
        "every record names a published file of each table"
    );
}

/// Four small files per table become one each, in one commit per table marked as no data
/// change (Delta's OPTIMIZE), holding exactly the rows they held, raw payloads byte for byte;
/// `deltalake`, polars, DuckDB and Spark read the same rows after; `--dry-run` changes
/// nothing, and a second compaction has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_become_one_file_in_one_commit_that_changes_no_data() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let s = sinks(&db, dir.path()).await;
    four_small_rolls(&s).await;
    assert_eq!(parquet_files(&dir.path().join("raw")).len(), 4);
    assert_eq!(parquet_files(&dir.path().join("processed")).len(), 4);
    let before = rows(dir.path());
    assert_eq!(before.0.len(), 8);
    assert_eq!(before.1.len(), 888);

    let dry = compact_command(&db, dir.path(), &["--dry-run"], "");
    assert!(dry.status.success(), "{dry:?}");
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        out.contains("would compact 4 files into raw/date="),
        "{out}"
    );
    assert!(
        out.contains("would compact 4 files into processed/date="),
        "{out}"
    );
    assert_eq!(
        parquet_files(&dir.path().join("raw")).len(),
        4,
        "a dry run changes nothing"
    );

    let done = compact_command(&db, dir.path(), &[], "");
    assert!(done.status.success(), "{done:?}");
    for table in ["raw", "processed"] {
        let files = parquet_files(&dir.path().join(table));
        assert_eq!(files.len(), 1, "{table}: {files:?}");
        assert!(
            files[0].to_string_lossy().contains("-compact-"),
            "{files:?}"
        );
        let actions = last_commit(&dir.path().join(table));
        let info = actions.iter().find_map(|a| a.get("commitInfo")).unwrap();
        assert_eq!(info["operation"], "OPTIMIZE", "{info}");
        let adds: Vec<_> = actions.iter().filter_map(|a| a.get("add")).collect();
        let removes: Vec<_> = actions.iter().filter_map(|a| a.get("remove")).collect();
        assert_eq!((adds.len(), removes.len()), (1, 4), "{actions:?}");
        assert!(
            adds.iter()
                .chain(&removes)
                .all(|a| a["dataChange"] == false),
            "{actions:?}"
        );
    }
    assert_eq!(rows(dir.path()), before, "the same rows, byte for byte");
    ledger_matches_tables(&db, dir.path()).await;
    for engine in ["deltalake", "polars", "duckdb"] {
        let read = engines::read(
            engine,
            &dir.path().join("processed").to_string_lossy(),
            &["raw_id"],
        );
        assert_eq!(read.rows, 888, "{engine}");
        let read = engines::read(
            engine,
            &dir.path().join("raw").to_string_lossy(),
            &["raw_id"],
        );
        assert_eq!(read.rows, 8, "{engine}");
    }
    // Spark with Delta reads the log's OPTIMIZE commit (its removes) as Databricks would.
    let (raw, processed) = (
        dir.path().join("raw").to_string_lossy().to_string(),
        dir.path().join("processed").to_string_lossy().to_string(),
    );
    let spark = engines::spark(&[
        ("spark", &raw, &["raw_id"]),
        ("spark", &processed, &["raw_id"]),
    ]);
    assert_eq!((spark[0].rows, spark[1].rows), (8, 888), "Spark");

    let again = s.rolls().compact(false).await.unwrap();
    assert!(again.planned.is_empty(), "{again:?}");
    db.drop_db().await;
}

/// `loader compact` killed (abort, as `kill -9`) after registering its files, after uploading
/// an object, and after a table's commit: the next compaction or sweep finishes what it
/// started, and every row is in exactly one live file each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_killed_at_each_step_is_finished_once() {
    for point in [
        "after-compaction-register",
        "after-object-write",
        "after-table-commit",
    ] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let s = sinks(&db, dir.path()).await;
        four_small_rolls(&s).await;
        let before = rows(dir.path());

        let killed = compact_command(&db, dir.path(), &[], &format!("{point}=1"));
        assert!(
            !killed.status.success(),
            "{point}: the failpoint fired: {killed:?}"
        );
        assert_eq!(
            rows(dir.path()),
            before,
            "{point}: the tables hold every row once"
        );
        let waiting = db
            .count("SELECT count(*) FROM parquet_files WHERE state = 'compact'")
            .await;
        assert!(waiting >= 1, "{point}: the compaction is registered");

        // A loader's sweep finishes it (the raw one, and the processed one if it got there)
        // once the dead writer's lease has run out: within a lease (30 s), not a long upload's
        // worth of time.
        let killed_at = std::time::Instant::now();
        eventually(
            Duration::from_secs(45),
            "a sweep takes the compaction over",
            || async {
                s.recover().await.unwrap();
                db.count("SELECT count(*) FROM parquet_files WHERE state = 'compact'")
                    .await
                    == 0
            },
        )
        .await;
        println!("{point}: taken over after {:?}", killed_at.elapsed());
        let done = compact_command(&db, dir.path(), &[], "");
        assert!(done.status.success(), "{point}: {done:?}");
        assert_eq!(rows(dir.path()), before, "{point}: no row lost or doubled");
        assert_eq!(parquet_files(&dir.path().join("raw")).len(), 1, "{point}");
        assert_eq!(
            parquet_files(&dir.path().join("processed")).len(),
            1,
            "{point}"
        );
        ledger_matches_tables(&db, dir.path()).await;
        db.drop_db().await;
    }
}

/// A `--reprocess` of records whose file was compacted rewrites the compacted file (the old
/// small files stay out of the table), whether it asks before the compaction's commit or
/// after; the rewritten file holds what PostgreSQL holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprocess_of_compacted_records_rewrites_the_compacted_file() {
    for before_commit in [false, true] {
        let db = TestDb::new().await;
        let dir = tempfile::tempdir().unwrap();
        let s = sinks(&db, dir.path()).await;
        four_small_rolls(&s).await;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT path FROM parquet_files WHERE dataset = 'processed' ORDER BY path",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if before_commit {
            // The processed compaction registered and its object written, not committed (a
            // compaction killed there; the raw one finished).
            let killed = compact_command(&db, dir.path(), &[], "after-processed-object-write=1");
            assert!(!killed.status.success());
        } else {
            s.rolls().compact(false).await.unwrap();
        }
        // What a `--reprocess` does for these records: new rows, their files marked.
        sqlx::query("UPDATE processed_data SET full_name = 'reprocessed'")
            .execute(&db.pool)
            .await
            .unwrap();
        let marked = {
            let mut tx = db.pool.begin().await.unwrap();
            let marked = loader::sink::ledger::mark_rewrite(&mut tx, &members[..1])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            marked
        };
        assert_eq!(marked.len(), 1, "{marked:?}");
        assert!(
            marked[0].contains("-compact-"),
            "the compacted file is marked: {marked:?}"
        );
        s.rolls().rewrite(&marked).await.unwrap();
        s.recover().await.unwrap();

        let names = parquet_rows(&dir.path().join("processed"), &["full_name"]);
        assert_eq!(
            names.len(),
            888,
            "before_commit={before_commit}: every user once"
        );
        assert!(
            names.iter().all(|r| r[0].as_deref() == Some("reprocessed")),
            "before_commit={before_commit}: the rewrite's rows"
        );
        assert_eq!(parquet_files(&dir.path().join("processed")).len(), 1);
        ledger_matches_tables(&db, dir.path()).await;
        db.drop_db().await;
    }
}
