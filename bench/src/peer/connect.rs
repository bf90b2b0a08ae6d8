//! One Kafka Connect worker (`scripts/peer.sh worker`, which execs the JVM: the child's pid is the
//! worker's) and the few calls of its REST API the peer step makes.

use anyhow::Context;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The connector class the worker must offer before it counts as started.
pub const JDBC_SINK: &str = "io.debezium.connector.jdbc.JdbcSinkConnector";

/// Runs `script provision`: resolves the worker and the connector once (Maven Central); an
/// error, with the script's output, when it cannot.
pub fn provision(script: &Path) -> anyhow::Result<()> {
    let out = Command::new(script)
        .arg("provision")
        .output()
        .with_context(|| format!("running {} provision", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} provision failed ({}):\n{}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail_text(&String::from_utf8_lossy(&out.stderr), 30)
    );
    Ok(())
}

/// The JVM a worker started with `env` runs on (`script java`): its JDK's name and version.
pub fn java(script: &Path, env: &[(String, String)]) -> anyhow::Result<String> {
    let out = Command::new(script)
        .arg("java")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .with_context(|| format!("running {} java", script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} java: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `/usr/lib/jvm/NAME/bin/java VERSION` → `NAME VERSION`.
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (bin, version) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    let home = Path::new(bin).parent().and_then(Path::parent);
    let name = home
        .and_then(Path::file_name)
        .map_or_else(|| bin.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(format!("{name} {version}").trim().to_string())
}

/// A running worker; killed when dropped.
pub struct Worker {
    child: Child,
    port: u16,
    dir: PathBuf,
    http: reqwest::Client,
}

impl Worker {
    /// Starts a worker on `port` with its files under `dir`, its JVM and extra worker properties
    /// from `env` (`PEER_JVM`, `PEER_HEAP_OPTS`, …: see `scripts/peer.sh`).
    pub fn spawn(
        script: &Path,
        brokers: &str,
        port: u16,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} (the Connect worker's REST API) is taken: pass --peer-port or set CONNECT_PORT"
        );
        let log = dir.join("worker.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log handle")?;
        let child = Command::new(script)
            .arg("worker")
            .env("KAFKA_BROKERS", brokers)
            .env("CONNECT_PORT", port.to_string())
            .env("CONNECT_WORKER_DIR", dir)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {} worker", script.display()))?;
        Ok(Self {
            child,
            port,
            dir: dir.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building an HTTP client")?,
        })
    }

    /// The JVM's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// An error if the worker has exited, with its log's tail.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("polling the Connect worker")?
        {
            anyhow::bail!("the Connect worker exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the worker's own log and of its console.
    pub fn log_tail(&self) -> String {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "{}\n{}",
            tail_text(&read(self.dir.join("worker.log")), 10),
            tail_text(&read(self.dir.join("logs/server.log")), 15)
        )
    }

    /// Waits until the REST API answers and lists the JDBC sink, at most `limit`.
    pub async fn ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if let Ok(resp) = self.http.get(self.url("/connector-plugins")).send().await
                && resp.status().is_success()
                && resp.text().await.is_ok_and(|t| t.contains(JDBC_SINK))
            {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < limit,
                "the Connect worker did not offer {JDBC_SINK} within {limit:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates connector `name` with `config` (its answer echoes the password: not logged).
    pub async fn create(&self, name: &str, config: &Value) -> anyhow::Result<()> {
        let body = serde_json::json!({"name": name, "config": config});
        let resp = self
            .http
            .post(self.url("/connectors"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .context("creating the connector")?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| status.to_string());
            anyhow::bail!("the worker refused the connector ({status}): {message}");
        }
        Ok(())
    }

    /// An error naming the first failed connector or task of `name`, with its trace's head.
    pub async fn check_connector(&self, name: &str) -> anyhow::Result<()> {
        let Ok(resp) = self
            .http
            .get(self.url(&format!("/connectors/{name}/status")))
            .send()
            .await
        else {
            return Ok(());
        };
        let Ok(status) = serde_json::from_str::<Value>(&resp.text().await.unwrap_or_default())
        else {
            return Ok(());
        };
        let failed = std::iter::once(&status["connector"])
            .chain(status["tasks"].as_array().into_iter().flatten())
            .find(|s| s["state"] == "FAILED");
        if let Some(f) = failed {
            anyhow::bail!(
                "the connector failed (task {}):\n{}",
                f["id"],
                tail_text(f["trace"].as_str().unwrap_or("no trace"), 12)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`: nothing is measured after the load, so this only
    /// frees the port and the memory.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` lines of `text`.
fn tail_text(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
