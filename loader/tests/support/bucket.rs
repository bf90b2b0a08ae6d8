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
