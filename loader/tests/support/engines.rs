//! The lake as users read it: `lake.py` runs the engines they query Delta tables with (the
//! `deltalake` package, polars, DuckDB, Spark with Delta) over a table, and returns the rows.
//! Nothing there shares code with the loader.

use super::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

/// What an engine read from one table.
#[derive(Debug, Clone)]
pub struct Read {
    /// Rows in the table.
    pub rows: usize,
    /// The asked-for columns, as text, row by row.
    pub columns: HashMap<String, Vec<Option<String>>>,
    /// Column name → the engine's type name.
    pub schema: HashMap<String, String>,
    /// Data files it read (`None` when the engine does not say).
    pub files: Option<usize>,
}

impl Read {
    fn from_json(v: &Value) -> Read {
        let columns = v["columns"]
            .as_object()
            .expect("columns")
            .iter()
            .map(|(k, vals)| {
                let vals = vals
                    .as_array()
                    .expect("a column")
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect();
                (k.clone(), vals)
            })
            .collect();
        let schema = v["schema"]
            .as_object()
            .expect("schema")
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_string()))
            .collect();
        Read {
            rows: v["rows"].as_u64().expect("rows") as usize,
            columns,
            schema,
            files: v["files"].as_u64().map(|n| n as usize),
        }
    }

    /// One column's non-null values.
    pub fn values(&self, column: &str) -> Vec<String> {
        self.columns[column].iter().flatten().cloned().collect()
    }
}

fn command() -> Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/lake.py");
    let mut c = Command::new(setting("ETL_TEST_PYTHON"));
    c.arg(script);
    if let Ok(endpoint) = std::env::var("ETL_TEST_S3_ENDPOINT") {
        c.env("S3_ENDPOINT", endpoint);
    }
    c
}

/// `engine` (`deltalake`, `deltalake@<version>`, `polars`, `duckdb`) reads `table` (a directory
/// or `s3://…`).
pub fn read(engine: &str, table: &str, columns: &[&str]) -> Read {
    let out = command()
        .arg(engine)
        .arg(table)
        .args(columns)
        .output()
        .expect("run lake.py");
    assert!(
        out.status.success(),
        "lake.py {engine} {table}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Read::from_json(&serde_json::from_slice(&out.stdout).expect("lake.py's JSON"))
}

/// Several reads in one Spark session (its start is the slow part): `(engine, table, columns)`
/// with engine `spark` (the Delta table) or `spark-parquet` (its files as plain Parquet).
pub fn spark(reads: &[(&str, &str, &[&str])]) -> Vec<Read> {
    let mut child = command()
        .arg("spark-batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lake.py under Spark");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (engine, table, columns) in reads {
            let line = serde_json::json!([engine, table, columns]);
            writeln!(stdin, "{line}").expect("write to lake.py");
        }
    }
    let out = child.wait_with_output().expect("lake.py under Spark");
    assert!(
        out.status.success(),
        "lake.py spark-batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let answers: Vec<Read> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| Read::from_json(&serde_json::from_str(l).expect("lake.py's JSON")))
        .collect();
    assert_eq!(answers.len(), reads.len(), "one answer per read: {text}");
    answers
}
