//! A streaming-replication standby promoted after it missed the last commits: its rows and
//! stored positions commit together, so the loaders read again exactly what it lost, and the
//! lake's files it does not know are adopted. Two real PostgreSQL clusters on this machine
//! (`scripts/pg-standby.sh`), the real broker.

mod support;

use randomuser_stub::{FaultPlan, Stub};
use sqlx::PgPool;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The two clusters, removed when dropped.
struct Clusters {
    dir: String,
}

impl Clusters {
    fn script(&self, args: &[&str]) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-standby.sh");
        let out = Command::new(script)
            .args(args)
            .output()
            .expect("run scripts/pg-standby.sh");
        assert!(
            out.status.success(),
            "pg-standby.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        self.script(&["down", &self.dir]);
    }
}

/// Users in `processed_data` (0 before the loader migrated, or while the server is unreachable).
async fn users(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_data")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_that_missed_commits_reads_them_again() {
    let (p1, p2) = (free_port(), free_port());
    let clusters = Clusters {
        dir: format!("/tmp/etl-standby-{}", uuid::Uuid::new_v4().simple()),
    };
    clusters.script(&["up", &clusters.dir, &p1.to_string(), &p2.to_string()]);
    let primary_url = format!("postgres://etl:etl@localhost:{p1}/etl");
    let standby_url = format!("postgres://etl:etl@localhost:{p2}/etl");
    let primary = PgPool::connect(&primary_url).await.unwrap();
    let standby = PgPool::connect(&standby_url).await.unwrap();

    let stub = Stub::start("127.0.0.1:0".parse().unwrap(), FaultPlan::default())
        .await
        .unwrap();
    let topic = unique("standby");
    create_topic(&topic, 1).await;
    let group = unique("g");
    let data = tempfile::tempdir().unwrap();
    let config = |url: &str| {
        let mut c = loader::RunConfig::for_test(url, &brokers(), &topic, &group, data.path())
            .expect("loader test config");
        c.parquet.roll_interval = Duration::ZERO;
        c
    };
    run_extractor(&stub.url(), &topic, 2, 20).await;
    let loader = RunningLoader::start(config(&primary_url)).await;
    eventually(
        Duration::from_secs(60),
        "40 users, on the standby too",
        || async { users(&primary).await == 40 && users(&standby).await == 40 },
    )
    .await;
    // The standby stops receiving; the primary goes on with two more records.
    standby.close().await;
    clusters.script(&["cut", &clusters.dir]);
    run_extractor(&stub.url(), &topic, 2, 20).await;
    eventually(
        Duration::from_secs(60),
        "80 users on the primary, rolled",
        || async {
            users(&primary).await == 80
                && sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM raw_data WHERE parquet_pending",
                )
                .fetch_one(&primary)
                .await
                .unwrap_or(1)
                    == 0
        },
    )
    .await;
    loader.shutdown().await;
    primary.close().await;

    // The primary is lost; the standby, 2 records behind, is promoted.
    clusters.script(&["promote", &clusters.dir]);
    let promoted = PgPool::connect(&standby_url).await.unwrap();
    assert_eq!(
        users(&promoted).await,
        40,
        "the standby missed the last 2 records"
    );
    let loader = RunningLoader::start(config(&standby_url)).await;
    loader
        .until("the 2 lost records read again", |s| {
            s.loaded + s.duplicates >= 2
        })
        .await;
    eventually(Duration::from_secs(60), "nothing left to roll", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM parquet_files WHERE state NOT IN ('published', 'compacted')",
        )
        .fetch_one(&promoted)
        .await
        .unwrap_or(1)
            == 0
    })
    .await;
    let summary = loader.shutdown().await;
    assert_eq!(summary.loaded + summary.duplicates, 2, "{summary:?}");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT user_uuid) FROM processed_data")
            .fetch_one(&promoted)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (80, 80), "every user once in PostgreSQL");
    let lake = parquet_rows(&data.path().join("processed"), &["user_uuid"]);
    assert_eq!(
        (
            lake.len(),
            histogram(lake.iter().map(|r| r[0].clone())).len()
        ),
        (80, 80),
        "every user once in the processed table"
    );
    promoted.close().await;
}
