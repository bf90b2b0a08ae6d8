//! A pooled connection gives up the buffers its last use grew. Its own test binary: it reads
//! this process's resident set, which another test running beside it (producing hundreds of MB)
//! would move.

mod support;

use std::time::Duration;
use support::*;

/// `VmRSS` of this test process, in bytes.
fn rss_now() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A pooled connection that sent a large message (a batch's `Bind`) gives its buffer up when it
/// goes back to the pool. sqlx keeps a connection's write buffer as large as the largest message
/// it ever sent, so without that each connection that wrote a batch kept tens of MB for its
/// life, and the loader's memory grew with the connections it used. Four connections each
/// send 48 MB (a 64 MiB buffer each without the release: 256 MiB held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_back_in_the_pool_gives_up_its_large_buffers() {
    let db = TestDb::new().await;
    let pool = loader::sink::watched_pool(&db.url, 4, Default::default()).unwrap();
    let big = "x".repeat(48 << 20);
    let before = rss_now();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.acquire().await.unwrap();
        let n: i32 = sqlx::query_scalar("SELECT length($1)")
            .bind(&big)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(n, 48 << 20);
        held.push(conn);
    }
    drop(held);
    eventually(
        Duration::from_secs(30),
        "all four back in the pool",
        || async { pool.num_idle() == 4 },
    )
    .await;
    let after = rss_now();
    assert!(
        after < before + (64 << 20),
        "{} MiB before, {} MiB with four connections back in the pool",
        before >> 20,
        after >> 20
    );
    pool.close().await;
    db.drop_db().await;
}
