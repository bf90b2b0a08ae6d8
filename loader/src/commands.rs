//! `loader replay`, `loader status` and `loader backfill`: the operator's offset tools; and
//! `loader vacuum` and `loader compact`, the tables' upkeep.

use crate::app::Application;
use crate::config::{BackfillArgs, ReplayArgs, StatusArgs};
use crate::replay::{GroupOffsets, Position, render_plan};
use crate::sink::offsets::{self, KafkaOffset, Positions, Start};
use anyhow::Context;
use secrecy::ExposeSecret;
use std::collections::BTreeMap;

/// Prints the plan; with `--execute`, moves the group (refused while it has members): its
/// positions stored in PostgreSQL, which the loaders start from, then its committed offsets in
/// Kafka, which lag monitors and Kafka's tools read.
pub async fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let t = args.target.clone();
    let (group, topic) = (t.group.group.clone(), t.topic.topic.clone());
    let (to, only) = (args.to.clone(), args.partitions.clone());
    let (target, g, tp) = (t.clone(), group.clone(), topic.clone());
    let (mut plan, members, known) = blocking(move || {
        let offsets = GroupOffsets::new(&target.kafka, &g, &tp)?;
        let partitions = offsets.partitions(only.as_deref())?;
        let (members, known) = offsets.members()?;
        Ok((offsets.plan(&to, &partitions)?, members, known))
    })
    .await?;
    let all: Vec<i32> = plan.iter().map(|p| p.partition).collect();
    let stored = match stored_positions(&t, &all).await {
        Ok((stored, _)) => stored,
        Err(e) if !args.execute => {
            tracing::warn!(error = %format!("{e:#}"), "the plan counts from the group's offsets in Kafka only");
            BTreeMap::new()
        }
        Err(e) => {
            return Err(e.context("replay --execute moves the positions stored in PostgreSQL too"));
        }
    };
    // Where the loaders resume today: PostgreSQL's position, else the group's Kafka offset.
    for p in &mut plan {
        if let Some(position) = stored.get(&p.partition) {
            p.current = Some(*position);
        }
    }
    if !known && stored.is_empty() && plan.iter().all(|p| p.current.is_none()) {
        anyhow::bail!(
            "group {} is unknown: it has no committed offsets on topic {} (check --group / KAFKA_GROUP_ID)",
            group,
            topic
        );
    }
    print!(
        "{}",
        render_plan(&topic, &group, &args.to.to_string(), &plan)
    );
    if !args.execute {
        println!("dry run: nothing changed; add --execute to move the offsets");
        return Ok(());
    }
    if members > 0 {
        anyhow::bail!(
            "group {} has {members} active member(s): stop its loaders first; offsets cannot be moved under a running group",
            group
        );
    }
    let targets: BTreeMap<i32, i64> = plan.iter().map(|p| (p.partition, p.target)).collect();
    // PostgreSQL first: the loaders start from it, so once it has moved the replay happens even
    // if the Kafka commit below fails (the loaders then commit the new offsets themselves).
    let positions = Positions {
        group: group.clone(),
        by: "loader replay".to_string(),
        next: targets
            .iter()
            .map(|(p, o)| ((topic.clone(), *p), *o))
            .collect(),
    };
    let mut conn = connect(&t).await?;
    offsets::store(&mut conn, &positions)
        .await
        .context("cannot move the positions stored in PostgreSQL")?;
    let (g, tp) = (group.clone(), topic.clone());
    blocking(move || GroupOffsets::new(&t.kafka, &g, &tp)?.commit(&targets)).await?;
    tracing::info!(%group, %topic, to = %args.to, "offsets moved");
    println!(
        "offsets moved: the positions stored in PostgreSQL and the group's committed offsets in Kafka; the group resumes from them when its loaders start"
    );
    Ok(())
}

/// One connection to the database of `t`'s group.
async fn connect(
    t: &crate::config::GroupTopic,
) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let url = t.db.url()?;
    let pool = crate::sink::lazy_pool(url.expose_secret(), 1)?;
    pool.acquire()
        .await
        .context("cannot reach PostgreSQL (DATABASE_URL)")
}

/// The group's positions stored in PostgreSQL, and which of `partitions` without one
/// `raw_data` holds records of ([`offsets::read`]).
async fn stored_positions(
    t: &crate::config::GroupTopic,
    partitions: &[i32],
) -> anyhow::Result<(BTreeMap<i32, i64>, Vec<i32>)> {
    let mut conn = connect(t).await?;
    offsets::read(&mut conn, &t.group.group, &t.topic.topic, partitions)
        .await
        .context("cannot read the positions stored in PostgreSQL (is the schema migrated? loader migrate)")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the Kafka task failed")?
}

/// Prints per partition the committed offset in Kafka and the position stored in PostgreSQL
/// (flagging a difference), the end offset, the lag and the last commit time.
pub async fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let t = args.target.clone();
    let (group, topic) = (t.group.group.clone(), t.topic.topic.clone());
    let (target, g, tp) = (t.clone(), group.clone(), topic.clone());
    let (partitions, committed, members, known, marks) = blocking(move || {
        let offsets = GroupOffsets::new(&target.kafka, &g, &tp)?;
        let partitions = offsets.partitions(None)?;
        let committed = offsets.committed(&partitions)?;
        let (members, known) = offsets.members()?;
        let marks = partitions
            .iter()
            .map(|p| offsets.watermarks(*p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((partitions, committed, members, known, marks))
    })
    .await?;
    let (stored, holding, database_error) = match stored_positions(&t, &partitions).await {
        Ok((stored, holding)) => (stored, holding, None),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the positions stored in PostgreSQL are not shown");
            (BTreeMap::new(), Vec::new(), Some(format!("{e:#}")))
        }
    };
    if !known && stored.is_empty() && committed.values().all(|c| c.offset.is_none()) {
        anyhow::bail!(
            "group {} is unknown: it has no committed offsets on topic {}",
            group,
            topic
        );
    }
    let mut rows = Vec::new();
    for (p, (low, high)) in partitions.iter().zip(marks) {
        let c = committed.get(p);
        let offset = c.and_then(|c| c.offset);
        let database = stored.get(p).copied();
        // Where the loaders start it, by their own rule (only when the database answered).
        let start = match (&database_error, offset) {
            (Some(_), _) => Start::Kafka,
            (None, None) => {
                offsets::start_of(database, holding.contains(p), Some(KafkaOffset::Absent))
            }
            // The loaders stamp their commits; a commit without the stamp is another tool's.
            (None, Some(o)) => {
                let kafka = if c.is_some_and(|c| c.by_loader) {
                    KafkaOffset::Loaders(o)
                } else {
                    KafkaOffset::Others(o)
                };
                offsets::start_of(database, holding.contains(p), Some(kafka))
            }
        };
        let position = match start {
            Start::At(o) => o,
            Start::Beginning => low,
            Start::Kafka => offset.unwrap_or(low),
        };
        rows.push(PartitionStatus {
            partition: *p,
            committed: offset,
            database,
            starts_at: position.max(low),
            differs: position.max(low) != offset.unwrap_or(low).max(low),
            end: high,
            lag: high - position.max(low),
            last_commit: c.and_then(|c| c.committed_at.clone()),
        });
    }
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    let differing = rows.iter().filter(|r| r.differs).count();
    if args.json {
        let doc = serde_json::json!({
            "group": group, "topic": topic, "members": members, "total_lag": total,
            "differing": differing, "database_error": database_error, "partitions": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("group {group}, topic {topic}, {members} active member(s)");
        let table: Vec<Vec<String>> = rows.iter().map(PartitionStatus::cells).collect();
        print!(
            "{}",
            etl_common::table::render(&PartitionStatus::HEADER, &table)
        );
        println!("total lag: {total}");
        if let Some(e) = database_error {
            println!("database: not read ({e})");
        }
        if differing > 0 {
            println!(
                "{differing} partition(s) start elsewhere than the group's offset in Kafka: the loaders start where \"starts at\" says (a database restored behind the group reads again what it lost; a loader's lagging Kafka commit reads nothing twice)"
            );
        }
    }
    Ok(())
}

/// One partition as `loader status` shows it: the JSON object and the table row.
#[derive(Debug, serde::Serialize)]
struct PartitionStatus {
    partition: i32,
    /// The committed offset in Kafka; `None` when the group has none there.
    committed: Option<i64>,
    /// The position stored in PostgreSQL; `None` when it has none.
    database: Option<i64>,
    /// Where the loaders start the partition (docs/DESIGN.md, "Offsets kept where the data is").
    starts_at: i64,
    /// True when that is not the committed offset in Kafka.
    differs: bool,
    end: i64,
    lag: i64,
    last_commit: Option<String>,
}

impl PartitionStatus {
    const HEADER: [&str; 8] = [
        "partition",
        "committed",
        "database",
        "starts at",
        "end",
        "lag",
        "last commit",
        "note",
    ];

    fn cells(&self) -> Vec<String> {
        let none = || "none".to_string();
        let committed = self.committed.unwrap_or(self.starts_at);
        let note = if !self.differs {
            "-".to_string()
        } else if self.starts_at < committed {
            format!("database behind by {}", committed - self.starts_at)
        } else {
            format!("database ahead by {}", self.starts_at - committed)
        };
        vec![
            self.partition.to_string(),
            self.committed.map_or_else(none, |v| v.to_string()),
            self.database.map_or_else(none, |v| v.to_string()),
            self.starts_at.to_string(),
            self.end.to_string(),
            self.lag.to_string(),
            self.last_commit.clone().unwrap_or_else(|| "-".to_string()),
            note,
        ]
    }
}

/// Resolves the range and builds a loader that reads exactly it, under its own group.
pub async fn backfill_app(args: BackfillArgs) -> anyhow::Result<Application> {
    if matches!(args.to, Some(Position::Earliest)) {
        anyhow::bail!("--to earliest is an empty range");
    }
    let mut config = args.run;
    let group = args.group.clone().unwrap_or_else(|| {
        format!(
            "backfill-{}-{}",
            config.topic,
            chrono::Utc::now().timestamp()
        )
    });
    config.group_id = group.clone();
    let (kafka, topic, from, to) = (
        config.kafka.clone(),
        config.topic.clone(),
        args.from.clone(),
        args.to.clone(),
    );
    let (starts, ends) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let offsets = GroupOffsets::new(&kafka, &group, &topic)?;
        let partitions = offsets.partitions(None)?;
        let starts = offsets.resolve(&from, &partitions)?;
        let ends = offsets.resolve(to.as_ref().unwrap_or(&Position::Latest), &partitions)?;
        Ok((starts, ends))
    })
    .await??;
    let total: i64 = starts.iter().map(|(p, s)| (ends[p] - s).max(0)).sum();
    tracing::info!(group = %config.group_id, topic = %config.topic, ?starts, ?ends, records = total, "backfill range resolved");
    Application::build_range(config, starts, ends).await
}

/// Deletes the data files no live table version holds once past the retention (`--dry-run`:
/// lists them), and prints what it did.
pub async fn vacuum(args: &crate::config::VacuumArgs) -> anyhow::Result<()> {
    args.retention.validate()?;
    let store = args.lake.store()?;
    let tables = crate::sink::table::Tables::new(&store)?;
    let report =
        crate::sink::vacuum::vacuum(&store, &tables, args.retention.retention, args.dry_run)
            .await
            .with_context(|| format!("vacuuming {}", store.describe()))?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for key in &report.deleted {
        println!("{verb} {key}");
    }
    println!(
        "{}: {verb} {} files ({} bytes); {} in the tables; {} younger than the retention kept",
        store.describe(),
        report.deleted.len(),
        report.bytes,
        report.live,
        report.kept_recent
    );
    tracing::info!(
        deleted = report.deleted.len(),
        bytes = report.bytes,
        live = report.live,
        kept_recent = report.kept_recent,
        dry_run = args.dry_run,
        "vacuum finished"
    );
    Ok(())
}

/// Compacts the tables' small files (`--dry-run`: lists the compactions), and prints what it
/// did.
pub async fn compact(args: &crate::config::CompactArgs) -> anyhow::Result<()> {
    let store = args.lake.store()?;
    let url = args.db.url()?;
    let pool = crate::sink::lazy_pool(url.expose_secret(), args.db.max_connections)?;
    let rolls = crate::sink::Rolls::new(pool, store.clone(), args.lake.parquet.policy())?;
    let report = rolls
        .compact(args.dry_run)
        .await
        .with_context(|| format!("compacting {}", store.describe()))?;
    let verb = if args.dry_run {
        "would compact"
    } else {
        "compacted"
    };
    for plan in &report.planned {
        println!("{verb} {} files into {}", plan.members.len(), plan.path);
    }
    println!(
        "{}: {verb} {} files into {}; {} written ({} bytes); {} skipped (changed by another writer)",
        store.describe(),
        report
            .planned
            .iter()
            .map(|p| p.members.len())
            .sum::<usize>(),
        report.planned.len(),
        report.written,
        report.bytes,
        report.skipped
    );
    tracing::info!(
        planned = report.planned.len(),
        replaced = report.replaced,
        written = report.written,
        bytes = report.bytes,
        skipped = report.skipped,
        dry_run = args.dry_run,
        "compaction finished"
    );
    Ok(())
}
