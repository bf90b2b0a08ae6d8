//! The tests' S3: moto's endpoint and settings, buckets, and the independent reader
//! (`s3.py`: boto3 and pyarrow) that reads back what the loader wrote.

use super::*;
use serde_json::Value;
use std::process::Command;

pub fn endpoint() -> String {
    setting("ETL_TEST_S3_ENDPOINT")
}

/// Runs the independent reader (`support/s3.py`) with `args`; its stdout.
pub fn s3py(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/s3.py");
    let out = Command::new(setting("ETL_TEST_PYTHON"))
        .arg(script)
        .arg(endpoint())
        .args(args)
        .output()
        .expect("run the python reader");
    assert!(
        out.status.success(),
        "s3.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A new, empty bucket.
pub fn bucket() -> String {
    let name = unique("bkt").to_lowercase().replace('_', "-");
    s3py(&["mkbucket", &name]);
    name
}

/// The settings a loader needs for moto, as a user would set them in the environment.
pub fn settings() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("AWS_ENDPOINT_URL".to_string(), endpoint())])
    .collect()
}

/// `settings` as the loader's `store_settings` (values are secrets there).
pub fn secrets(settings: Vec<(String, String)>) -> Vec<(String, etl_common::config::Secret)> {
    settings
        .into_iter()
        .map(|(k, v)| (k, etl_common::config::Secret::from(v)))
        .collect()
}

/// [`settings`], ready for `config.parquet.store_settings`.
pub fn store_settings() -> Vec<(String, etl_common::config::Secret)> {
    secrets(settings())
}

/// Every object under `prefix`, as pyarrow reads it.
pub fn objects(bucket: &str, prefix: &str) -> Vec<Value> {
    let text = s3py(&["read", bucket, prefix]);
    match serde_json::from_str::<Value>(&text).expect("reader's JSON") {
        Value::Array(v) => v,
        other => panic!("not a list: {other}"),
    }
}

pub fn strings(object: &Value, column: &str) -> Vec<String> {
    object["columns"][column]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Freezes moto (`dev-services.sh stop-s3`) until dropped, so a failing test never leaves it
/// frozen for the next one.
pub struct Frozen;

impl Frozen {
    /// Freezes the store.
    pub fn store() -> Frozen {
        let ok = Command::new(services()).arg("stop-s3").status().unwrap();
        assert!(ok.success(), "stop-s3");
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new(services()).arg("start-s3").status();
    }
}

fn services() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-services.sh")
}

/// An HTTP proxy in front of the S3 server that answers every write (PUT/POST) with S3's
/// `503 SlowDown` while throttling is on, as a bucket over its request rate does, and passes
/// everything else through. Real HTTP over real sockets; the loader's own client sees it.
pub struct Throttle {
    /// The endpoint to give the loader instead of the server's.
    pub endpoint: String,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// What the proxy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refuse {
    /// Every write, `503 SlowDown`.
    Writes,
    /// Conditional writes (`If-None-Match`), `501 Not Implemented`, as a store without them.
    Conditional,
}

impl Throttle {
    /// Starts the proxy, throttling.
    pub async fn start() -> Throttle {
        Self::start_refusing(Refuse::Writes).await
    }

    /// A store without conditional writes: `501 Not Implemented` to any PUT with
    /// `If-None-Match`, everything else passed through.
    pub async fn without_conditional_writes() -> Throttle {
        Self::start_refusing(Refuse::Conditional).await
    }

    async fn start_refusing(refuse: Refuse) -> Throttle {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let upstream = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .replace("localhost", "127.0.0.1");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let on = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicUsize::new(0));
        let (o, r) = (on.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (o, r, upstream) = (o.clone(), r.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &o, &r, refuse).await;
                });
            }
        });
        Throttle {
            endpoint: format!("http://127.0.0.1:{port}"),
            on,
            refused,
        }
    }

    /// Stops throttling.
    pub fn stop(&self) {
        self.on.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one request (head and `Content-Length` body) from `client`; `None` at end of stream.
async fn read_request(
    client: &mut tokio::net::TcpStream,
    buffered: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffered.len() < head_end + length {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buffered.drain(..head_end + length).collect()))
}

async fn serve(
    mut client: tokio::net::TcpStream,
    upstream: &str,
    on: &std::sync::atomic::AtomicBool,
    refused: &std::sync::atomic::AtomicUsize,
    refuse: Refuse,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let mut buffered = Vec::new();
    loop {
        let Some(request) = read_request(&mut client, &mut buffered).await? else {
            return Ok(());
        };
        let write = request.starts_with(b"PUT ") || request.starts_with(b"POST ");
        let conditional = String::from_utf8_lossy(&request)
            .to_ascii_lowercase()
            .contains("\r\nif-none-match:");
        if refuse == Refuse::Conditional && write && conditional && on.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented.</Message></Error>";
            let answer = format!(
                "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            continue;
        }
        if refuse == Refuse::Writes && write && on.load(Ordering::SeqCst) {
            refused.fetch_add(1, Ordering::SeqCst);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let answer = format!(
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            continue;
        }
        // Everything from here on goes to the server, this request first.
        let mut server = tokio::net::TcpStream::connect(upstream).await?;
        server.write_all(&request).await?;
        server.write_all(&buffered).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
}
