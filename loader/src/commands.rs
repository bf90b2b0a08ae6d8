//! `loader replay`, `loader status` and `loader backfill`: the operator's offset tools; and
//! `loader vacuum` and `loader compact`, the tables' upkeep.

use crate::app::Application;
use crate::config::{BackfillArgs, ReplayArgs, StatusArgs};
use crate::replay::{GroupOffsets, Position, render_plan};
use std::collections::BTreeMap;

/// Prints the plan; with `--execute`, moves the group (refused while it has members).
pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let (group, topic) = (&t.group.group, &t.topic.topic);
    let offsets = GroupOffsets::new(&t.kafka, group, topic)?;
    let partitions = offsets.partitions(args.partitions.as_deref())?;
    let (members, known) = offsets.members()?;
    let plan = offsets.plan(&args.to, &partitions)?;
    if !known && plan.iter().all(|p| p.current.is_none()) {
        anyhow::bail!(
            "group {} is unknown: it has no committed offsets on topic {} (check --group / KAFKA_GROUP_ID)",
            group,
            topic
        );
    }
    print!("{}", render_plan(topic, group, &args.to.to_string(), &plan));
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
    offsets.commit(&targets)?;
    tracing::info!(%group, %topic, to = %args.to, "offsets moved");
    println!("offsets moved: the group resumes from the new offsets when its loaders start");
    Ok(())
}

/// Prints per partition the committed offset, end offset, lag and last commit time.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let (group, topic) = (&t.group.group, &t.topic.topic);
    let offsets = GroupOffsets::new(&t.kafka, group, topic)?;
    let partitions = offsets.partitions(None)?;
    let committed = offsets.committed(&partitions)?;
    let (members, known) = offsets.members()?;
    if !known && committed.values().all(|c| c.offset.is_none()) {
        anyhow::bail!(
            "group {} is unknown: it has no committed offsets on topic {}",
            group,
            topic
        );
    }
    let mut rows = Vec::new();
    for p in &partitions {
        let (low, high) = offsets.watermarks(*p)?;
        let c = committed.get(p);
        let offset = c.and_then(|c| c.offset);
        rows.push(PartitionStatus {
            partition: *p,
            committed: offset,
            end: high,
            lag: high - offset.unwrap_or(low).max(low),
            last_commit: c.and_then(|c| c.committed_at.clone()),
        });
    }
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    if args.json {
        let doc = serde_json::json!({
            "group": group, "topic": topic, "members": members, "total_lag": total, "partitions": rows,
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
    }
    Ok(())
}

/// One partition as `loader status` shows it: the JSON object and the table row.
#[derive(Debug, serde::Serialize)]
struct PartitionStatus {
    partition: i32,
    /// The committed offset; `None` when the group has none there.
    committed: Option<i64>,
    end: i64,
    lag: i64,
    last_commit: Option<String>,
}

impl PartitionStatus {
    const HEADER: [&str; 5] = ["partition", "committed", "end", "lag", "last commit"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.partition.to_string(),
            self.committed.map_or("none".to_string(), |v| v.to_string()),
            self.end.to_string(),
            self.lag.to_string(),
            self.last_commit.clone().unwrap_or_else(|| "-".to_string()),
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
    use anyhow::Context;
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
    use anyhow::Context;
    use secrecy::ExposeSecret;
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
