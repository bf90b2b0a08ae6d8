//! Replay and backfill through topic offsets: consumer-group offsets are the loader's position,
//! so replaying is moving them, and the sinks' natural keys absorb what is re-delivered.
//!
//! This module resolves positions (earliest, latest, an offset, a time, a duration ago) to
//! per-partition offsets with the broker's own ListOffsets, reads and commits a group's offsets,
//! and builds the plan `loader replay` prints. Everything here is blocking librdkafka calls:
//! callers run it on a blocking thread.

use anyhow::Context;
use chrono::{DateTime, Utc};
use etl_common::kafka::KafkaArgs;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Where to move a group, or where a backfill starts or ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The oldest retained record.
    Earliest,
    /// The end: nothing left to read.
    Latest,
    /// This offset in every selected partition (clamped to what the partition holds).
    Offset(i64),
    /// The first record whose timestamp (the fetch time) is at or after this instant.
    Time(DateTime<Utc>),
    /// `Time(now - duration)`, e.g. `2h`.
    Ago(Duration),
}

/// As an operator writes it, and as it parses back: `earliest`, `latest`, `42`,
/// `2026-11-24T09:00:00Z`, `2h`.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Earliest => f.write_str("earliest"),
            Position::Latest => f.write_str("latest"),
            Position::Offset(n) => write!(f, "{n}"),
            Position::Time(t) => {
                f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            }
            Position::Ago(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "earliest" => return Ok(Position::Earliest),
            "latest" => return Ok(Position::Latest),
            _ => {}
        }
        if let Ok(n) = s.parse::<i64>() {
            return if n >= 0 {
                Ok(Position::Offset(n))
            } else {
                Err(format!("{s}: an offset cannot be negative"))
            };
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Position::Time(t.with_timezone(&Utc)));
        }
        if let Ok(d) = etl_common::config::parse_duration(s) {
            return Ok(Position::Ago(d));
        }
        Err(format!(
            "{s}: expected earliest, latest, an offset, an RFC 3339 time (2026-11-24T09:00:00Z) or a duration ago (2h)"
        ))
    }
}

/// A group's committed position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The committed offset (the next record to read), if any.
    pub offset: Option<i64>,
    /// When the loader committed it (from the commit's metadata; other tools leave none).
    pub committed_at: Option<String>,
    /// Whether a loader committed it (its stamp, [`crate::consumer::is_loaders_stamp`]), not
    /// another tool: an operator's move, which the loaders follow.
    pub by_loader: bool,
}

/// One partition of a replay plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionPlan {
    /// Partition.
    pub partition: i32,
    /// The group's committed offset now (`None`: never committed; it would start at the earliest).
    pub current: Option<i64>,
    /// The offset the group will resume from.
    pub target: i64,
    /// Oldest retained offset.
    pub low: i64,
    /// End offset (one past the newest record).
    pub high: i64,
}

impl PartitionPlan {
    /// Records that will be delivered again (0 when moving forward).
    pub fn replays(&self) -> i64 {
        (self.current.unwrap_or(self.low) - self.target).max(0)
    }

    /// Records that will be skipped, never loaded by this group (0 when moving back).
    pub fn skips(&self) -> i64 {
        (self.target - self.current.unwrap_or(self.low)).max(0)
    }
}

/// Offsets of one group on one topic.
pub struct GroupOffsets {
    consumer: BaseConsumer,
    group: String,
    topic: String,
}

impl GroupOffsets {
    /// A client for `group` on `topic`; it never joins the group, so it moves nothing by itself.
    pub fn new(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<Self> {
        let mut cfg = kafka.client_config()?;
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("client.id", "randomuser-loader-offsets");
        let consumer: BaseConsumer = cfg.create().context("cannot create a Kafka client")?;
        Ok(Self {
            consumer,
            group: group.to_string(),
            topic: topic.to_string(),
        })
    }

    /// The topic's partitions (all, or those of `only` after checking they exist).
    pub fn partitions(&self, only: Option<&[i32]>) -> anyhow::Result<Vec<i32>> {
        let md = self
            .consumer
            .fetch_metadata(Some(&self.topic), TIMEOUT)
            .with_context(|| format!("cannot read the metadata of topic {}", self.topic))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| anyhow::anyhow!("topic {} does not exist", self.topic))?;
        if t.error().is_some() || t.partitions().is_empty() {
            anyhow::bail!("topic {} does not exist", self.topic);
        }
        let mut all: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        all.sort_unstable();
        match only {
            None => Ok(all),
            Some(sel) => {
                for p in sel {
                    if !all.contains(p) {
                        anyhow::bail!(
                            "topic {} has no partition {p} (it has {:?})",
                            self.topic,
                            all
                        );
                    }
                }
                Ok(sel.to_vec())
            }
        }
    }

    /// (oldest retained, end) offsets.
    pub fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.consumer
            .fetch_watermarks(&self.topic, partition, TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {}/{partition}", self.topic))
    }

    /// The group's committed offsets.
    pub fn committed(&self, partitions: &[i32]) -> anyhow::Result<BTreeMap<i32, Committed>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, TIMEOUT)
            .with_context(|| format!("cannot read group {}'s offsets", self.group))?;
        Ok(got
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                };
                let committed_at = serde_json::from_str::<serde_json::Value>(e.metadata())
                    .ok()
                    .and_then(|v| v["committed_at"].as_str().map(str::to_string));
                (
                    e.partition(),
                    Committed {
                        offset,
                        committed_at,
                        by_loader: crate::consumer::is_loaders_stamp(e.metadata()),
                    },
                )
            })
            .collect())
    }

    /// Members currently in the group, and whether the broker knows the group at all.
    pub fn members(&self) -> anyhow::Result<(usize, bool)> {
        let list = self
            .consumer
            .client()
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .with_context(|| format!("cannot describe group {}", self.group))?;
        let g = list.groups().iter().find(|g| g.name() == self.group);
        Ok(match g {
            Some(g) => (g.members().len(), g.state() != "Dead"),
            None => (0, false),
        })
    }

    /// Resolves `pos` to an offset per partition, within what each partition holds.
    pub fn resolve(
        &self,
        pos: &Position,
        partitions: &[i32],
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let mut out = BTreeMap::new();
        let time = match pos {
            Position::Time(t) => Some(*t),
            Position::Ago(d) => Some(Utc::now() - chrono::Duration::from_std(*d)?),
            _ => None,
        };
        let by_time = match time {
            Some(t) => {
                let mut tpl = TopicPartitionList::new();
                for p in partitions {
                    tpl.add_partition_offset(
                        &self.topic,
                        *p,
                        Offset::Offset(t.timestamp_millis()),
                    )?;
                }
                let r = self
                    .consumer
                    .offsets_for_times(tpl, TIMEOUT)
                    .context("cannot look up offsets by time")?;
                r.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset()))
                    .collect::<BTreeMap<i32, Offset>>()
            }
            None => BTreeMap::new(),
        };
        for p in partitions {
            let (low, high) = self.watermarks(*p)?;
            let target = match pos {
                Position::Earliest => low,
                Position::Latest => high,
                Position::Offset(n) => *n,
                // No record at or after the time: the end.
                Position::Time(_) | Position::Ago(_) => match by_time.get(p) {
                    Some(Offset::Offset(n)) => *n,
                    _ => high,
                },
            };
            out.insert(*p, target.clamp(low, high));
        }
        Ok(out)
    }

    /// The plan for moving the group to `pos`.
    pub fn plan(&self, pos: &Position, partitions: &[i32]) -> anyhow::Result<Vec<PartitionPlan>> {
        let targets = self.resolve(pos, partitions)?;
        let committed = self.committed(partitions)?;
        partitions
            .iter()
            .map(|p| {
                let (low, high) = self.watermarks(*p)?;
                Ok(PartitionPlan {
                    partition: *p,
                    current: committed.get(p).and_then(|c| c.offset),
                    target: targets[p],
                    low,
                    high,
                })
            })
            .collect()
    }

    /// Commits `offsets` for the group, stamped with the time (shown by `loader status`).
    pub fn commit(&self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        crate::consumer::commit(
            &self.consumer,
            offsets.iter().map(|(p, o)| (self.topic.as_str(), *p, *o)),
            "loader replay",
        )
        .with_context(|| format!("cannot commit group {}'s offsets", self.group))
    }
}

/// Renders a replay plan as the table `loader replay` prints.
pub fn render_plan(topic: &str, group: &str, to: &str, plan: &[PartitionPlan]) -> String {
    let mut s = format!("replay plan: group {group}, topic {topic}, to {to}\n");
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.current.map_or("none".to_string(), |c| c.to_string()),
                p.target.to_string(),
                p.replays().to_string(),
                p.skips().to_string(),
                format!("{}..{}", p.low, p.high),
            ]
        })
        .collect();
    s += &etl_common::table::render(
        &[
            "partition",
            "current",
            "new",
            "replays",
            "skips",
            "retained",
        ],
        &rows,
    );
    let replays: i64 = plan.iter().map(PartitionPlan::replays).sum();
    let skips: i64 = plan.iter().map(PartitionPlan::skips).sum();
    s.push_str(&format!(
        "total: {replays} records replayed, {skips} skipped\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_print_as_typed_and_parse_back() {
        for typed in [
            "earliest",
            "latest",
            "42",
            "2h",
            "90m",
            "2026-11-24T09:00:00Z",
        ] {
            let p: Position = typed.parse().unwrap();
            let shown = p.to_string();
            assert_eq!(shown.parse(), Ok(p.clone()), "{typed} shown as {shown}");
        }
        assert_eq!(Position::Ago(Duration::from_secs(7200)).to_string(), "2h");
        assert_eq!(
            "2026-11-24T09:00:00Z"
                .parse::<Position>()
                .unwrap()
                .to_string(),
            "2026-11-24T09:00:00Z"
        );
    }

    #[test]
    fn positions_parse_in_every_form() {
        assert_eq!("earliest".parse(), Ok(Position::Earliest));
        assert_eq!("latest".parse(), Ok(Position::Latest));
        assert_eq!("42".parse(), Ok(Position::Offset(42)));
        assert_eq!("2h".parse(), Ok(Position::Ago(Duration::from_secs(7200))));
        assert_eq!(
            "2026-11-24T09:00:00Z".parse(),
            Ok(Position::Time(
                DateTime::parse_from_rfc3339("2026-11-24T09:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc)
            ))
        );
        assert!("-1".parse::<Position>().is_err());
        assert!(
            "yesterday-ish"
                .parse::<Position>()
                .unwrap_err()
                .contains("expected earliest")
        );
    }

    #[test]
    fn plan_counts_replays_and_skips() {
        let back = PartitionPlan {
            partition: 0,
            current: Some(10),
            target: 4,
            low: 0,
            high: 12,
        };
        assert_eq!((back.replays(), back.skips()), (6, 0));
        let fwd = PartitionPlan {
            partition: 1,
            current: Some(3),
            target: 12,
            low: 0,
            high: 12,
        };
        assert_eq!((fwd.replays(), fwd.skips()), (0, 9));
        let never = PartitionPlan {
            partition: 2,
            current: None,
            target: 0,
            low: 0,
            high: 5,
        };
        assert_eq!(
            (never.replays(), never.skips()),
            (0, 0),
            "a new group starts at the earliest anyway"
        );
        let text = render_plan("t", "g", "earliest", &[back, fwd]);
        assert!(
            text.contains("total: 6 records replayed, 9 skipped"),
            "{text}"
        );
    }
}
