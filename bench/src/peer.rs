//! The peer (issue 22): what a Kafka user would run instead of our loader — Kafka Connect (the
//! broker's own release, a standalone worker) with Debezium's JDBC sink — writing the same users
//! into PostgreSQL on the same machine, measured the same way.
//!
//! Its input is a topic of one record per user with a JSON schema ([`topic`]): the rows the
//! loader writes into `processed_data`, transformed before and untimed (the peer cannot turn a
//! response into users; this is in its favour). Each repetition gets a fresh worker
//! ([`connect`], `scripts/peer.sh`), a fresh database with `processed_data` as the migrations make
//! it (primary key and indexes; without the foreign key to `raw_data`, which the peer does not
//! write) and a fresh consumer group (a new connector name). Timed: from the moment the
//! connector's group has its partitions assigned (the broker says `Stable`: its consumers fetch
//! from then on, as the loader is timed from its first record) until every row is in PostgreSQL
//! (the last row of each partition present, then `count(*)`); apart from it the worker's start-up
//! (spawn until its REST API offers the sink) and the connector's (created until assigned: the
//! tasks' Hibernate and connection pools, the group's join). The documented defaults run first,
//! then each `--peer-config`; repetitions are interleaved so the machine's background load falls
//! on every configuration alike.

pub mod connect;
pub mod render;
pub mod setup;
pub mod topic;

use crate::db::FreshDb;
use crate::preload::Topic;
use crate::{Config, procfs};
use anyhow::Context;
use connect::Worker;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
pub use render::render;
pub use setup::{BEST, Setup};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use topic::UserTopic;

/// The peer step's settings (flattened into [`Config`]).
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// Repetitions of each peer configuration (medians and spread are reported); each gets a fresh
    /// worker, database and consumer group.
    #[arg(long, default_value_t = 3, value_parser = crate::positive)]
    pub peer_reps: usize,
    /// A peer configuration run after the documented defaults, repeatable: comma-separated
    /// `KEY=VALUE`, connector properties (e.g. `batch.size=2000`, `consumer.override.…`) and
    /// `jvm=NAME` (`scripts/peer.sh jvms`), `heap=JVM-HEAP-FLAGS`, `worker.PROP=VALUE`,
    /// `jdbc.PARAM=VALUE` (a PostgreSQL JDBC driver parameter, added to `connection.url`).
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

/// One repetition's figures.
#[derive(Debug, Clone)]
pub struct Rep {
    /// Worker spawn until its REST API offered the sink.
    pub startup: Duration,
    /// The worker's CPU time by then.
    pub startup_cpu: Duration,
    /// Connector created until its consumer group first had its partitions assigned: the tasks'
    /// own start (Hibernate, the connection pool) and the group's join.
    pub connector_start: Duration,
    /// Partitions assigned until the first row was in PostgreSQL: the first batch.
    pub first_row: Duration,
    /// Partitions assigned until the last row was in PostgreSQL: the load, as the loader's is
    /// timed from its first record consumed.
    pub load: Duration,
    /// The worker's CPU over `load`.
    pub cpu: Duration,
    /// PostgreSQL's CPU over `load`.
    pub pg_cpu: Duration,
    /// The worker's peak resident set (VmHWM) at the last row, bytes.
    pub peak_rss: u64,
}

/// What [`wait_loaded`] saw: when the connector's group first had its partitions (with the
/// worker's and PostgreSQL's CPU then), the first row, the last.
struct Loaded {
    assigned: Instant,
    cpu_at_start: Duration,
    pg_at_start: BTreeMap<u32, u64>,
    first: Instant,
    done: Instant,
}

/// The connector's consumer group (`connect-<name>`) as the broker describes it.
struct GroupWatch {
    client: Arc<BaseConsumer>,
    group: String,
}

impl GroupWatch {
    fn new(brokers: &str, connector: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("cannot create a Kafka client")?;
        Ok(Self {
            client: Arc::new(client),
            group: format!("connect-{connector}"),
        })
    }

    /// True once the group is `Stable` with members: its partitions are assigned, so its
    /// consumers fetch from now on.
    async fn assigned(&self) -> anyhow::Result<bool> {
        let (client, group) = (self.client.clone(), self.group.clone());
        tokio::task::spawn_blocking(move || {
            client
                .fetch_group_list(Some(&group), Duration::from_secs(5))
                .is_ok_and(|l| {
                    l.groups()
                        .iter()
                        .any(|g| g.state() == "Stable" && !g.members().is_empty())
                })
        })
        .await
        .context("describing the connector's group")
    }
}

/// One configuration's repetitions.
#[derive(Debug, Clone)]
pub struct PeerRun {
    /// Its setup.
    pub setup: Setup,
    /// The JVM it ran on: its JDK and version.
    pub jvm: String,
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
    let _ = writeln!(text, "- command: `{}`", config.command);
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
        let mut runs = Vec::with_capacity(setups.len());
        for setup in setups {
            runs.push(PeerRun {
                jvm: connect::java(script, &setup.env)?,
                setup,
                reps: Vec::new(),
            });
        }
        for rep in 1..=args.peer_reps {
            for run in runs.iter_mut() {
                let r = once(config, &topic, &run.setup).await.with_context(|| {
                    format!("peer, {}, repetition {rep}", run.setup.label)
                })?;
                eprintln!(
                    "[bench] peer ({}), repetition {rep}: {:.0} users/s, worker start-up {:.1} s, connector start {:.1} s, Connect {:.2} cores, PostgreSQL {:.2} cores",
                    run.setup.label,
                    topic.users as f64 / r.load.as_secs_f64().max(1e-9),
                    r.startup.as_secs_f64(),
                    r.connector_start.as_secs_f64(),
                    procfs::cores(r.cpu, r.load),
                    procfs::cores(r.pg_cpu, r.load),
                );
                run.reps.push(r);
            }
        }
        anyhow::Ok(Peer {
            users: topic.users,
            bytes: topic.bytes,
            partitions: usize::try_from(config.partitions).unwrap_or(0),
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
        let group = GroupWatch::new(&config.brokers, &connector)?;
        let created = Instant::now();
        worker.create(&connector, &connector_config).await?;
        let loaded = wait_loaded(&mut worker, &connector, &group, &mut conn, topic).await?;
        let cpu = procfs::cpu(pid)?.saturating_sub(loaded.cpu_at_start);
        let pg_cpu = procfs::postgres_cpu_since(&loaded.pg_at_start);
        let peak_rss = procfs::peak_rss(pid)?;
        worker.stop(Duration::from_secs(30)).await;
        let _ = conn.close().await;
        anyhow::Ok(Rep {
            startup,
            startup_cpu,
            connector_start: loaded.assigned - created,
            first_row: loaded.first - loaded.assigned,
            load: loaded.done - loaded.assigned,
            cpu,
            pg_cpu,
            peak_rss,
        })
    }
    .await;
    db.drop().await;
    result
}

/// Watches the connector's group until its partitions are assigned, then polls PostgreSQL until
/// the first row is there and until the last row of every partition is and `count(*)` says all
/// are; watches the worker and the connector's tasks meanwhile.
async fn wait_loaded(
    worker: &mut Worker,
    connector: &str,
    group: &GroupWatch,
    conn: &mut sqlx::PgConnection,
    topic: &UserTopic,
) -> anyhow::Result<Loaded> {
    let (ids, indexes): (Vec<uuid::Uuid>, Vec<i32>) = topic.last.values().copied().unzip();
    let started = Instant::now();
    let mut assigned: Option<(Instant, Duration, BTreeMap<u32, u64>)> = None;
    let mut first: Option<Instant> = None;
    let mut checked = Instant::now();
    loop {
        if first.is_none() {
            let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM processed_data)")
                .fetch_one(&mut *conn)
                .await
                .context("polling processed_data")?;
            // A group that went Stable and rebalanced again between two looks is seen late: the
            // first row bounds it.
            if assigned.is_none() && (any || group.assigned().await?) {
                assigned = Some((
                    Instant::now(),
                    procfs::cpu(worker.pid())?,
                    procfs::postgres_snapshot(),
                ));
            }
            if any {
                first = Some(Instant::now());
            }
        }
        if let Some(first_at) = first {
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
                if let Some((at, cpu_at_start, pg_at_start)) =
                    assigned.take_if(|_| n as u64 == topic.users)
                {
                    return Ok(Loaded {
                        assigned: at,
                        cpu_at_start,
                        pg_at_start,
                        first: first_at,
                        done,
                    });
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
