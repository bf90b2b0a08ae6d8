//! The peer (issue 22): what a Kafka user would run instead of our loader — Kafka Connect (the
//! broker's own release, a standalone worker) with Debezium's JDBC sink — writing the same users
//! into PostgreSQL on the same machine, measured the same way.
//!
//! Its input is a topic of one record per user with a JSON schema ([`topic`]): the rows the
//! loader writes into `processed_data`, transformed before and untimed (the peer cannot turn a
//! response into users; this is in its favour). Each repetition gets a fresh worker
//! ([`connect`], `scripts/peer.sh`), a fresh database with `processed_data` as the migrations make
//! it (primary key and indexes; without the foreign key to `raw_data`, which the peer does not
//! write) and a fresh consumer group (a new connector name). Timed: from the connector's creation
//! until every row is in PostgreSQL (the last row of each partition present, then `count(*)`),
//! and apart from it the worker's start-up (spawn until its REST API offers the sink). The
//! documented defaults run first, then each `--peer-config`; repetitions are interleaved so the
//! machine's background load falls on every configuration alike.

pub mod connect;
pub mod topic;

use crate::db::FreshDb;
use crate::preload::Topic;
use crate::{Config, procfs};
use anyhow::Context;
use connect::Worker;
use serde_json::{Map, Value, json};
use sqlx::Connection;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use topic::UserTopic;

/// The tuned configuration run beside the documented defaults unless `--peer-config` says
/// otherwise: idempotent (upsert on the primary key), like the loader.
pub const BEST: &str = "insert.mode=upsert,primary.key.mode=record_key,tasks.max=6,batch.size=2000,consumer.override.max.poll.records=2000";

/// The peer step's settings (flattened into [`Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Repetitions of each peer configuration (medians and spread are reported); each gets a fresh
    /// worker, database and consumer group.
    #[arg(long, default_value_t = 3, value_parser = crate::positive)]
    pub peer_reps: usize,
    /// A peer configuration run after the documented defaults, repeatable: comma-separated
    /// `KEY=VALUE`, connector properties (e.g. `batch.size=2000`, `consumer.override.…`) and
    /// `jvm=NAME` (`scripts/peer.sh jvms`), `heap=JVM-HEAP-FLAGS`, `worker.PROP=VALUE`.
    #[arg(long = "peer-config", default_value = BEST)]
    pub peer_configs: Vec<String>,
    /// Leave the peer step out.
    #[arg(long)]
    pub skip_peer: bool,
    /// Run only the peer step (on its own preloaded topic), and add only its figures to `--out`.
    #[arg(long)]
    pub peer_only: bool,
    /// The Connect worker's REST port.
    #[arg(long, env = "CONNECT_PORT", default_value_t = 38083)]
    pub peer_port: u16,
    /// The script that provisions and starts the worker.
    #[arg(long, default_value = "scripts/peer.sh")]
    pub peer_script: PathBuf,
}

/// One configuration of the peer, parsed from `KEY=VALUE,…`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// As written, for the report.
    pub label: String,
    /// Connector properties over the base ones.
    pub connector: Vec<(String, String)>,
    /// `scripts/peer.sh`'s environment: the JVM, its heap, extra worker properties.
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// The documented defaults: nothing set but what the connector cannot run without.
    pub fn defaults() -> Self {
        Self {
            label: "documented defaults (insert.mode=insert, primary.key.mode=none, batch.size=500, tasks.max=1; OpenJDK 17, -Xms256M -Xmx2G)".to_string(),
            connector: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Parses `KEY=VALUE,…`.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut setup = Self {
            label: spec.trim().to_string(),
            connector: Vec::new(),
            env: Vec::new(),
        };
        let mut worker = Vec::new();
        for kv in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .with_context(|| format!("--peer-config: {kv:?} is not KEY=VALUE"))?;
            match k {
                "jvm" => setup.env.push(("PEER_JVM".into(), v.into())),
                "heap" => setup.env.push(("PEER_HEAP_OPTS".into(), v.into())),
                _ => match k.strip_prefix("worker.") {
                    Some(prop) => worker.push(format!("{prop}={v}")),
                    None => setup.connector.push((k.into(), v.into())),
                },
            }
        }
        if !worker.is_empty() {
            setup
                .env
                .push(("PEER_WORKER_PROPS".into(), worker.join("\n")));
        }
        Ok(setup)
    }

    /// The connector's configuration: the base (class, topic, database, target table) and this
    /// setup's properties over it.
    pub fn connector_config(&self, topic: &str, db_url: &str) -> anyhow::Result<Value> {
        let (jdbc, user, password) = jdbc_url(db_url)?;
        let mut config = Map::new();
        for (k, v) in [
            ("connector.class", connect::JDBC_SINK),
            ("tasks.max", "1"),
            ("topics", topic),
            ("connection.url", jdbc.as_str()),
            ("connection.username", user.as_str()),
            ("connection.password", password.as_str()),
            ("collection.name.format", "processed_data"),
        ] {
            config.insert(k.to_string(), json!(v));
        }
        for (k, v) in &self.connector {
            config.insert(k.clone(), json!(v));
        }
        Ok(Value::Object(config))
    }
}

/// `postgres://user:password@host:port/db?sslmode=…` as a JDBC URL, user and password.
pub fn jdbc_url(db_url: &str) -> anyhow::Result<(String, String, String)> {
    let url = url::Url::parse(db_url).context("DATABASE_URL is not a URL")?;
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let host = url.host_str().context("DATABASE_URL has no host")?;
    let mut jdbc = format!(
        "jdbc:postgresql://{host}:{}{}",
        url.port().unwrap_or(5432),
        url.path()
    );
    if let Some((_, mode)) = url.query_pairs().find(|(k, _)| k == "sslmode") {
        let _ = write!(jdbc, "?sslmode={mode}");
    }
    let password = url.password().map(decode).unwrap_or_default();
    Ok((jdbc, decode(url.username()), password))
}

/// One repetition's figures.
#[derive(Debug, Clone)]
pub struct Rep {
    /// Worker spawn until its REST API offered the sink.
    pub startup: Duration,
    /// The worker's CPU time by then.
    pub startup_cpu: Duration,
    /// Connector created until the last row was in PostgreSQL.
    pub load: Duration,
    /// First row until the last row.
    pub rows: Duration,
    /// The worker's CPU over `load`.
    pub cpu: Duration,
    /// PostgreSQL's CPU over `load`.
    pub pg_cpu: Duration,
    /// The worker's peak resident set (VmHWM) at the last row, bytes.
    pub peak_rss: u64,
}

/// One configuration's repetitions.
#[derive(Debug, Clone)]
pub struct PeerRun {
    /// Its setup.
    pub setup: Setup,
    /// Its repetitions.
    pub reps: Vec<Rep>,
}

/// The peer step's results.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The input topic's users.
    pub users: u64,
    /// Its bytes (keys and values with their envelopes).
    pub bytes: u64,
    /// Its partitions.
    pub partitions: usize,
    /// The documented defaults first, then each `--peer-config`.
    pub runs: Vec<PeerRun>,
}

/// Runs the peer step on the responses of `source` (unless `--skip-peer`), returning its
/// Markdown section (empty when skipped).
pub async fn step(config: &Config, run_id: &str, source: &Topic) -> anyhow::Result<String> {
    if config.peer.skip_peer {
        return Ok(String::new());
    }
    let peer = measure(config, run_id, source).await?;
    Ok(render(&peer))
}

/// `--peer-only`: preloads a topic of `--records` × `--users`, runs the peer step on it and adds
/// its section to `--out`.
pub async fn only(
    config: &Config,
    run_id: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let raw = format!("{run_id}.raw");
    crate::kafka::create_topic(&config.brokers, &raw, config.partitions).await?;
    let data = crate::preload::build(config.records, config.users, run_id)?;
    let source = crate::preload::produce(&config.brokers, &raw, data).await?;
    let result = measure(config, run_id, &source).await;
    crate::kafka::delete_topic(&config.brokers, &raw).await;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "## {} — the peer only\n",
        started.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(text, "- machine: {}", crate::report::machine());
    let _ = writeln!(text, "- command: `{}`\n", config.command);
    text.push_str(&render(&result?));
    println!("{text}");
    crate::report::prepend(&config.out, &text)?;
    eprintln!("[bench] written to {}", config.out.display());
    Ok(())
}

/// Provisions the peer, builds its topic from `source` and runs every configuration
/// `--peer-reps` times.
pub async fn measure(config: &Config, run_id: &str, source: &Topic) -> anyhow::Result<Peer> {
    let args = &config.peer;
    let script = &args.peer_script;
    let mut setups = vec![Setup::defaults()];
    for spec in &args.peer_configs {
        setups.push(Setup::parse(spec)?);
    }
    let provisioning = Instant::now();
    connect::provision(script)?;
    eprintln!(
        "[bench] peer: Kafka Connect and Debezium's JDBC sink ready in {:.1} s",
        provisioning.elapsed().as_secs_f64()
    );
    let name = format!("{run_id}.users");
    crate::kafka::create_topic(&config.brokers, &name, config.partitions).await?;
    let result = async {
        let topic = topic::produce(&config.brokers, &name, source).await?;
        eprintln!(
            "[bench] peer: {} users in {name}, {:.1} MB with their envelopes",
            topic.users,
            topic.bytes as f64 / 1e6
        );
        let mut runs: Vec<PeerRun> = setups
            .into_iter()
            .map(|setup| PeerRun {
                setup,
                reps: Vec::new(),
            })
            .collect();
        for rep in 1..=args.peer_reps {
            for run in runs.iter_mut() {
                let r = once(config, &topic, &run.setup).await.with_context(|| {
                    format!("peer, {}, repetition {rep}", run.setup.label)
                })?;
                eprintln!(
                    "[bench] peer ({}), repetition {rep}: {:.0} users/s, start-up {:.1} s, Connect {:.2} cores, PostgreSQL {:.2} cores",
                    run.setup.label,
                    topic.users as f64 / r.load.as_secs_f64().max(1e-9),
                    r.startup.as_secs_f64(),
                    procfs::cores(r.cpu, r.load),
                    procfs::cores(r.pg_cpu, r.load),
                );
                run.reps.push(r);
            }
        }
        anyhow::Ok(Peer {
            users: topic.users,
            bytes: topic.bytes,
            partitions: topic.last.len(),
            runs,
        })
    }
    .await;
    crate::kafka::delete_topic(&config.brokers, &name).await;
    result
}

/// One repetition: a fresh database and worker, one connector, until every row is in.
async fn once(config: &Config, topic: &UserTopic, setup: &Setup) -> anyhow::Result<Rep> {
    let db = FreshDb::create(&config.database_url, "bench_peer", true).await?;
    let dir = tempfile::tempdir().context("creating the worker's directory")?;
    let result = async {
        let mut conn = sqlx::PgConnection::connect(&db.url)
            .await
            .with_context(|| format!("connecting to {}", db.name))?;
        // processed_data as the loader has it, less the foreign key to raw_data (not written here).
        sqlx::raw_sql(
            "DO $$ DECLARE c text; BEGIN
               FOR c IN SELECT conname FROM pg_constraint
                        WHERE conrelid = 'processed_data'::regclass AND contype = 'f' LOOP
                 EXECUTE format('ALTER TABLE processed_data DROP CONSTRAINT %I', c);
               END LOOP; END $$",
        )
        .execute(&mut conn)
        .await
        .context("dropping processed_data's foreign key")?;
        let spawned = Instant::now();
        let mut worker = Worker::spawn(
            &config.peer.peer_script,
            &config.brokers,
            config.peer.peer_port,
            dir.path(),
            &setup.env,
        )?;
        worker.ready(Duration::from_secs(300)).await?;
        let startup = spawned.elapsed();
        let pid = worker.pid();
        let startup_cpu = procfs::cpu(pid)?;
        let connector = format!("bench-peer-{}", uuid::Uuid::new_v4().simple());
        let connector_config = setup.connector_config(&topic.name, &db.url)?;
        let pg_before = procfs::postgres_cpu();
        let created = Instant::now();
        worker.create(&connector, &connector_config).await?;
        let (first, done) = wait_loaded(&mut worker, &connector, &mut conn, topic).await?;
        let cpu = procfs::cpu(pid)?.saturating_sub(startup_cpu);
        let pg_cpu = procfs::postgres_cpu().saturating_sub(pg_before);
        let peak_rss = procfs::peak_rss(pid)?;
        worker.stop(Duration::from_secs(30)).await;
        let _ = conn.close().await;
        anyhow::Ok(Rep {
            startup,
            startup_cpu,
            load: done - created,
            rows: done - first,
            cpu,
            pg_cpu,
            peak_rss,
        })
    }
    .await;
    db.drop().await;
    result
}

/// Polls PostgreSQL until the first row is there, then until the last row of every partition is
/// and `count(*)` says all are; watches the worker and the connector's tasks meanwhile.
async fn wait_loaded(
    worker: &mut Worker,
    connector: &str,
    conn: &mut sqlx::PgConnection,
    topic: &UserTopic,
) -> anyhow::Result<(Instant, Instant)> {
    let (ids, indexes): (Vec<uuid::Uuid>, Vec<i32>) = topic.last.values().copied().unzip();
    let started = Instant::now();
    let mut first = None;
    let mut checked = Instant::now();
    loop {
        if first.is_none() {
            let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_data)")
                .fetch_one(&mut *conn)
                .await
                .context("polling processed_data")?;
            if any {
                first = Some(Instant::now());
            }
        }
        if first.is_some() {
            let present: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM processed_data
                 JOIN unnest($1::uuid[], $2::int4[]) AS k(raw_id, user_index) USING (raw_id, user_index)",
            )
            .bind(&ids)
            .bind(&indexes)
            .fetch_one(&mut *conn)
            .await
            .context("polling processed_data")?;
            if present == ids.len() as i64 {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_data")
                    .fetch_one(&mut *conn)
                    .await
                    .context("counting processed_data")?;
                let done = Instant::now();
                anyhow::ensure!(
                    n as u64 <= topic.users,
                    "{n} rows for {} users",
                    topic.users
                );
                if n as u64 == topic.users {
                    return Ok((first.unwrap_or(done), done));
                }
            }
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            worker.check_alive()?;
            worker.check_connector(connector).await?;
            checked = Instant::now();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the peer did not load {} users within 30 min",
            topic.users
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// Of `values` (not empty).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median (min–max)`, with `decimals` decimals; the median alone for one value.
    pub fn show(&self, decimals: usize) -> String {
        if self.min == self.max {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }
}

impl PeerRun {
    fn spread(&self, f: impl Fn(&Rep) -> f64) -> Spread {
        Spread::of(self.reps.iter().map(f))
    }
}

/// The peer's section, as Markdown.
pub fn render(p: &Peer) -> String {
    let mut s = String::new();
    let users = p.users as f64;
    let reps = p.runs.first().map_or(0, |r| r.reps.len());
    let _ = writeln!(
        s,
        "\nPeer: Kafka Connect 4.1.1 (a standalone worker from the broker's release jars) with Debezium's JDBC sink 3.4.3.Final and the PostgreSQL driver, from a topic of one record per user ({} users, {:.1} MB with their JSON-schema envelopes, {} partitions, lz4) holding the rows the loader writes into `processed_data` (transformed before, untimed). Each repetition: a fresh worker, database (`processed_data` from the migrations: primary key and indexes, no foreign key to `raw_data`) and consumer group. Medians of {reps} repetition(s) (min–max); rate and CPU from the connector's creation until the last row is in PostgreSQL, start-up apart.\n",
        p.users,
        p.bytes as f64 / 1e6,
        p.partitions
    );
    let _ = writeln!(
        s,
        "| configuration | users/s | users/s, first row → last | worker start-up (CPU) | Connect CPU (cores) | Connect CPU per 1,000 users | Connect peak RSS | PostgreSQL CPU (cores) | PostgreSQL CPU per 1,000 users |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &p.runs {
        let rate = run.spread(|r| users / r.load.as_secs_f64().max(1e-9));
        let rows = run.spread(|r| users / r.rows.as_secs_f64().max(1e-9));
        let startup = run.spread(|r| r.startup.as_secs_f64());
        let startup_cpu = run.spread(|r| r.startup_cpu.as_secs_f64());
        let cores = run.spread(|r| procfs::cores(r.cpu, r.load));
        let per_k = run.spread(|r| r.cpu.as_secs_f64() * 1e3 / users * 1e3);
        let rss = run.spread(|r| r.peak_rss as f64 / 1024.0 / 1024.0);
        let pg = run.spread(|r| procfs::cores(r.pg_cpu, r.load));
        let pg_per_k = run.spread(|r| r.pg_cpu.as_secs_f64() * 1e3 / users * 1e3);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} s ({} s) | {} | {} ms | {} MB | {} | {} ms |",
            run.setup.label,
            rate.show(0),
            rows.show(0),
            startup.show(1),
            startup_cpu.show(1),
            cores.show(2),
            per_k.show(0),
            rss.show(0),
            pg.show(2),
            pg_per_k.show(0),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_config_of_a_setup() {
        let setup = Setup::parse(
            "insert.mode=upsert, primary.key.mode=record_key,tasks.max=6,jvm=temurin,heap=-Xms1G -Xmx1G,worker.plugin.discovery=service_load",
        )
        .unwrap();
        assert_eq!(
            setup.env,
            vec![
                ("PEER_JVM".to_string(), "temurin".to_string()),
                ("PEER_HEAP_OPTS".to_string(), "-Xms1G -Xmx1G".to_string()),
                (
                    "PEER_WORKER_PROPS".to_string(),
                    "plugin.discovery=service_load".to_string()
                ),
            ]
        );
        let config = setup
            .connector_config("t.users", "postgres://etl:p%40ss@localhost:35432/bench_x")
            .unwrap();
        assert_eq!(
            config,
            json!({
                "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
                "tasks.max": "6",
                "topics": "t.users",
                "connection.url": "jdbc:postgresql://localhost:35432/bench_x",
                "connection.username": "etl",
                "connection.password": "p@ss",
                "collection.name.format": "processed_data",
                "insert.mode": "upsert",
                "primary.key.mode": "record_key",
            })
        );
        let defaults = Setup::defaults()
            .connector_config("t", "postgres://u@h/d?sslmode=require")
            .unwrap();
        assert_eq!(defaults["tasks.max"], "1");
        assert_eq!(
            defaults["connection.url"],
            "jdbc:postgresql://h:5432/d?sslmode=require"
        );
        assert!(defaults.get("insert.mode").is_none(), "the default, insert");
        assert!(Setup::parse("batch.size").is_err());
        assert!(Setup::parse(BEST).is_ok());
    }

    #[test]
    fn spread_of_repetitions() {
        let s = Spread::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
        assert_eq!(Spread::of([5.0]).show(0), "5");
    }
}
