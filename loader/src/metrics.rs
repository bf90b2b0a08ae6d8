//! The loader's Prometheus series, all prefixed `etl_loader_`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every series the loader exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Records received from Kafka.
    pub consumed: IntCounter,
    /// Records loaded for the first time.
    pub loaded: IntCounter,
    /// Records already loaded (re-delivery, replay), written nowhere.
    pub duplicates: IntCounter,
    /// Poison records sent to the DLQ, by kind.
    pub dead_lettered: IntCounterVec,
    /// Rows written, by sink and table/dataset.
    pub rows_written: IntCounterVec,
    /// Failed sink writes (outages, retried), by sink.
    pub sink_errors: IntCounterVec,
    /// Failed offset commits (the next commit carries later offsets; a loader starts from
    /// PostgreSQL's position, so nothing is re-read for them).
    pub commit_errors: IntCounter,
    /// Times the partitions were read again because PostgreSQL restarted or changed.
    pub read_again: IntCounter,
    /// Seconds from a batch's flush start to its offsets committed.
    pub batch_seconds: Histogram,
    /// Records per flushed batch.
    pub batch_records: Histogram,
    /// Records behind the partition's high watermark, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Unix time of the last successful offset commit.
    pub last_commit: IntGauge,
    /// Partitions this replica owns now.
    pub assigned_partitions: IntGauge,
    /// Partitions taken whose start in PostgreSQL differed from the group's offset in Kafka
    /// (`direction`: `behind`, the database restored behind it, re-read; `ahead`, a loader's
    /// Kafka commit lost; `moved_in_kafka`, another tool moved it, followed; `no_kafka_offset`,
    /// the topic re-created or the group's offsets gone: Kafka's start used).
    pub start_mismatches: IntCounterVec,
    /// Partitions the subscribed topic has, from the broker's metadata: the group's assigned
    /// partitions summed over replicas should equal it (an alert when they do not).
    pub topic_partitions: IntGaugeVec,
    /// Bytes free to this process on the `DATA_DIR` filesystem (alert before Parquet writes fail).
    pub data_dir_available: IntGauge,
    /// Size of the `DATA_DIR` filesystem.
    pub data_dir_capacity: IntGauge,
    /// Bytes written, by sink (PostgreSQL: payload bytes of new records; Parquet: file bytes).
    pub sink_bytes: IntCounterVec,
    /// Parquet files written (created or rewritten) and marked published.
    pub parquet_files: IntCounter,
    /// Payload bytes in PostgreSQL waiting for a Parquet roll, on every partition (owned by a
    /// replica or not: what waits is what nobody has written yet).
    pub parquet_waiting_bytes: IntGauge,
    /// How long the oldest record waiting for a roll has waited, on every partition.
    pub parquet_waiting_age: IntGauge,
    /// Files that cannot be built (their records no longer transform): left for an operator.
    pub parquet_files_failed: IntGauge,
    /// Small files a compaction replaced (with fewer, larger ones).
    pub lake_files_compacted: IntCounter,
}

impl Metrics {
    /// Reads the `DATA_DIR` filesystem's free and total space into the gauges.
    pub fn observe_data_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let st = rustix::fs::statvfs(dir)?;
        let unit = st.f_frsize.max(1);
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.data_dir_available
            .set(clamp(st.f_bavail.saturating_mul(unit)));
        self.data_dir_capacity
            .set(clamp(st.f_blocks.saturating_mul(unit)));
        Ok(())
    }

    /// Creates and registers every series.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let consumed = IntCounter::new(
            "etl_loader_records_consumed_total",
            "Records received from Kafka",
        )?;
        let loaded = IntCounter::new(
            "etl_loader_records_loaded_total",
            "Records loaded for the first time",
        )?;
        let duplicates = IntCounter::new(
            "etl_loader_records_duplicate_total",
            "Records already loaded (re-delivered or replayed), written nowhere",
        )?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "etl_loader_records_dead_lettered_total",
                "Poison records sent to the DLQ",
            ),
            &["kind"],
        )?;
        let rows_written = IntCounterVec::new(
            Opts::new("etl_loader_rows_written_total", "Rows written per sink"),
            &["sink", "table"],
        )?;
        let sink_errors = IntCounterVec::new(
            Opts::new(
                "etl_loader_sink_errors_total",
                "Failed sink writes (retried)",
            ),
            &["sink"],
        )?;
        let commit_errors =
            IntCounter::new("etl_loader_commit_errors_total", "Failed offset commits")?;
        let read_again = IntCounter::new(
            "etl_loader_read_again_total",
            "Times the partitions were read again from PostgreSQL's positions after it restarted or changed",
        )?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "etl_loader_batch_duration_seconds",
                "Batch flush latency, sinks to commit",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let batch_records = Histogram::with_opts(
            HistogramOpts::new("etl_loader_batch_records", "Records per flushed batch").buckets(
                vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            ),
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "etl_loader_consumer_lag",
                "Records behind the high watermark",
            ),
            &["topic", "partition"],
        )?;
        let last_commit = IntGauge::new(
            "etl_loader_last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit",
        )?;
        let assigned_partitions = IntGauge::new(
            "etl_loader_assigned_partitions",
            "Partitions this replica owns",
        )?;
        let start_mismatches = IntCounterVec::new(
            Opts::new(
                "etl_loader_start_position_mismatches_total",
                "Partitions taken whose position in PostgreSQL differed from the group's committed offset in Kafka",
            ),
            &["direction"],
        )?;
        let topic_partitions = IntGaugeVec::new(
            Opts::new(
                "etl_loader_topic_partitions",
                "Partitions of the topic, from the broker's metadata",
            ),
            &["topic"],
        )?;
        let data_dir_available = IntGauge::new(
            "etl_loader_data_dir_available_bytes",
            "Bytes available to the loader on the DATA_DIR filesystem",
        )?;
        let data_dir_capacity = IntGauge::new(
            "etl_loader_data_dir_capacity_bytes",
            "Size of the DATA_DIR filesystem in bytes",
        )?;
        let sink_bytes = IntCounterVec::new(
            Opts::new("etl_loader_sink_bytes_total", "Bytes written per sink"),
            &["sink"],
        )?;
        let parquet_files = IntCounter::new(
            "etl_loader_parquet_files_written_total",
            "Parquet files written and published",
        )?;
        let parquet_waiting_bytes = IntGauge::new(
            "etl_loader_parquet_waiting_bytes",
            "Payload bytes loaded into PostgreSQL and waiting for a Parquet roll, on every partition (not Kafka backlog)",
        )?;
        let parquet_waiting_age = IntGauge::new(
            "etl_loader_parquet_waiting_age_seconds",
            "Age of the oldest record waiting for a Parquet roll, on every partition",
        )?;
        let parquet_files_failed = IntGauge::new(
            "etl_loader_parquet_files_failed",
            "Parquet files that cannot be built (their records no longer transform), left for an operator",
        )?;
        let lake_files_compacted = IntCounter::new(
            "etl_loader_lake_files_compacted_total",
            "Small files of the lake's tables that a compaction replaced with larger ones",
        )?;
        for c in [
            Box::new(assigned_partitions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(start_mismatches.clone()),
            Box::new(lake_files_compacted.clone()),
            Box::new(parquet_files_failed.clone()),
            Box::new(topic_partitions.clone()),
            Box::new(sink_bytes.clone()),
            Box::new(parquet_files.clone()),
            Box::new(parquet_waiting_bytes.clone()),
            Box::new(parquet_waiting_age.clone()),
            Box::new(data_dir_available.clone()),
            Box::new(data_dir_capacity.clone()),
            Box::new(consumed.clone()),
            Box::new(loaded.clone()),
            Box::new(duplicates.clone()),
            Box::new(dead_lettered.clone()),
            Box::new(rows_written.clone()),
            Box::new(sink_errors.clone()),
            Box::new(commit_errors.clone()),
            Box::new(read_again.clone()),
            Box::new(batch_seconds.clone()),
            Box::new(batch_records.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(last_commit.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Self {
            registry,
            consumed,
            loaded,
            duplicates,
            dead_lettered,
            rows_written,
            sink_errors,
            commit_errors,
            read_again,
            batch_seconds,
            batch_records,
            consumer_lag,
            last_commit,
            assigned_partitions,
            start_mismatches,
            topic_partitions,
            data_dir_available,
            data_dir_capacity,
            sink_bytes,
            parquet_files,
            parquet_waiting_bytes,
            parquet_waiting_age,
            parquet_files_failed,
            lake_files_compacted,
        })
    }
}
