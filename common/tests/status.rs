//! The status endpoint faces whatever can reach its port: it answers GET on its three paths only
//! and keeps answering through junk (bad methods, huge paths, garbage, clients that never finish).

use etl_common::status::{self, Liveness, Readiness};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn raw_request(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything: that is a refusal too.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A status server on an ephemeral port over these checks: its address, its stop token and the
/// task serving it.
async fn start(
    readiness: &Readiness,
    liveness: &Liveness,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let stop = CancellationToken::new();
    let (addr, server) = status::serve(
        "127.0.0.1:0".parse().unwrap(),
        prometheus::Registry::new(),
        readiness.clone(),
        liveness.clone(),
        stop.clone(),
    )
    .await
    .unwrap();
    (addr, stop, tokio::spawn(server))
}

#[tokio::test]
async fn only_get_on_three_paths_and_it_survives_junk() {
    let readiness = Readiness::default();
    readiness.register("kafka");
    readiness.set_failed("kafka", "broker unreachable");
    let (addr, stop, task) = start(&readiness, &Liveness::new(Duration::from_secs(3600))).await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("broker unreachable"));
    assert_eq!(
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Other methods and paths are refused.
    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let r = client
            .request(method.clone(), format!("{base}/metrics"))
            .body(vec![b'x'; 1 << 20])
            .send()
            .await;
        if let Ok(r) = r {
            assert!(
                r.status().is_client_error(),
                "{method} answered {}",
                r.status()
            );
        }
    }
    assert_eq!(
        client
            .get(format!("{base}/admin"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(format!("{base}/health/../metrics/x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A huge path, garbage bytes, and a client that opens a request and never finishes it.
    let huge = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000));
    let answer = raw_request(addr, huge.as_bytes()).await;
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    let _ = raw_request(addr, b"\x00\x01\x02 not http at all\r\n\r\n").await;
    // 2 MB of headers: the request head is bounded (hyper's read buffer), so it is refused
    // (431) or the connection closed, never read whole into memory and answered.
    let mut big = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2_000 {
        big += &format!("X-Junk-{i}: {}\r\n", "b".repeat(1_000));
    }
    big += "\r\n";
    let answer = raw_request(addr, big.as_bytes()).await;
    assert!(
        !answer.contains(" 200 "),
        "{}",
        &answer[..answer.len().min(80)]
    );
    // A body on a GET is not read into memory either: the answer does not wait for 1 MB.
    let mut with_body =
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    with_body.extend(std::iter::repeat_n(b'x', 1024));
    let answer = raw_request(addr, &with_body).await;
    assert!(answer.starts_with("HTTP/1.1 "), "answered: {answer:?}");
    // Many slow clients, each holding a request it never finishes.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }

    // Still serving.
    readiness.set_ok("kafka");
    assert_eq!(
        client
            .get(format!("{base}/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(slow);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// `/health` follows the heartbeat alone: a loop that stopped turning is 503 even while every
/// readiness check passes, and an outage (a failing check) never makes it 503.
#[tokio::test]
async fn health_fails_when_the_heartbeat_stops_and_only_then() {
    let readiness = Readiness::default();
    readiness.register("postgres");
    readiness.set_failed("postgres", "connection refused");
    let liveness = Liveness::new(Duration::from_millis(300));
    let (addr, stop, task) = start(&readiness, &liveness).await;
    let health = || async {
        let r = reqwest::get(format!("http://{addr}/health")).await.unwrap();
        let code = r.status().as_u16();
        let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        (code, body)
    };

    // Beating through an outage: alive, though not ready.
    let beating = {
        let liveness = liveness.clone();
        tokio::spawn(async move {
            loop {
                liveness.beat();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health().await.0, 200);
    }
    assert_eq!(
        reqwest::get(format!("http://{addr}/ready"))
            .await
            .unwrap()
            .status(),
        503
    );

    // The loop stops turning: 503 once the stall timeout has passed, saying so.
    beating.abort();
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, body) = health().await;
        if code == 503 {
            seen = Some(body);
            break;
        }
    }
    let body = seen.expect("/health never answered 503 after the heartbeat stopped");
    assert_eq!(body["status"], "stalled");
    assert!(body["last_beat_seconds_ago"].as_f64().unwrap() > 0.3);

    liveness.beat();
    assert_eq!(health().await.0, 200, "a loop that turns again is alive");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
