//! `loader run` and `loader backfill`: build the clients and the status endpoint, then run the
//! [`crate::pipeline`] until shutdown, bounded by `LOADER_SHUTDOWN_GRACE`.

use crate::backfill::Range;
use crate::config::RunConfig;
use crate::consumer::{self, LoaderConsumer};
use crate::dlq::DeadLetters;
use crate::events::{RunSummary, Telemetry};
use crate::pipeline::Pipeline;
use crate::sink::{self, Rolls, Sinks};
use anyhow::Context;
use etl_common::backoff::Backoff;
use etl_common::config::redact_url;
use etl_common::status::{self, Liveness};
use etl_common::topic::{self, RECORD_OVERHEAD_BYTES, Sizing, TopicAdmin, Wanted};
use rdkafka::consumer::Consumer;
use secrecy::ExposeSecret;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

type StatusFuture = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A built loader: config checked, clients created, status endpoint bound.
pub struct Application {
    config: RunConfig,
    sinks: Sinks,
    dlq: DeadLetters,
    dlq_admin: TopicAdmin,
    consumer: Arc<LoaderConsumer>,
    telemetry: Telemetry,
    liveness: Liveness,
    status_addr: SocketAddr,
    status_server: StatusFuture,
    status_stop: CancellationToken,
    range: Option<Range>,
}

impl Application {
    /// Validates the config, creates the clients and binds the status endpoint. Connects to
    /// nothing yet: outages at start are waited out by [`Application::run`].
    pub async fn build(config: RunConfig) -> anyhow::Result<Self> {
        Self::build_inner(config, None).await
    }

    /// A loader that reads exactly `[starts[p], ends[p])` of every partition of `KAFKA_TOPIC`
    /// (assigned, not subscribed: no rebalancing), commits under its own group, and returns
    /// from [`Application::run`] once every partition reached its end.
    pub async fn build_range(
        config: RunConfig,
        starts: BTreeMap<i32, i64>,
        ends: BTreeMap<i32, i64>,
    ) -> anyhow::Result<Self> {
        Self::build_inner(config, Some((starts, ends))).await
    }

    async fn build_inner(
        config: RunConfig,
        range: Option<(BTreeMap<i32, i64>, BTreeMap<i32, i64>)>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let telemetry = Telemetry::new()?;
        let url = config.db.url()?;
        let server = std::sync::Arc::new(sink::ServerWatch::default());
        let pool = sink::watched_pool(
            url.expose_secret(),
            config.db.max_connections,
            server.clone(),
        )?;
        let store = config.parquet.store(&config.data_dir)?;
        store.prepare().with_context(|| store.describe())?;
        let parquet_url = store.describe();
        let rolls = Rolls::new(pool.clone(), store, config.parquet.policy())?;
        let sinks = Sinks::new(pool, rolls).with_server(server, config.synchronous_commit);
        let dlq = DeadLetters::new(&config.kafka, &config.dlq_topic)?;
        let dlq_admin = TopicAdmin::new(&config.kafka)?;

        let consumer = consumer::create(&config, range.is_some(), &telemetry)?;
        let range = match range {
            None => {
                consumer
                    .subscribe(&[&config.topic])
                    .with_context(|| format!("KAFKA_TOPIC={}: cannot subscribe", config.topic))?;
                None
            }
            Some((starts, ends)) => Some(Range::assign(&consumer, &config.topic, &starts, &ends)?),
        };

        let liveness = Liveness::new(config.health.stall_timeout);
        let status_stop = CancellationToken::new();
        let (status_addr, server) = status::serve(
            config.metrics_addr,
            telemetry.metrics().registry.clone(),
            telemetry.readiness().clone(),
            liveness.clone(),
            status_stop.clone(),
        )
        .await?;
        tracing::info!(
            topic = %config.topic,
            group = %config.group_id,
            dlq = %config.dlq_topic,
            brokers = %config.kafka.brokers,
            database = %redact_url(url.expose_secret()),
            parquet = %parquet_url,
            status = %status_addr,
            "loader starting"
        );
        Ok(Self {
            config,
            sinks,
            dlq,
            dlq_admin,
            consumer: Arc::new(consumer),
            telemetry,
            liveness,
            status_addr,
            status_server: Box::pin(server),
            status_stop,
            range,
        })
    }

    /// Where `/metrics`, `/health` and `/ready` are served.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The run summary as it changes: wait for a state (`wait_for(|s| s.loaded >= n)`) instead
    /// of polling. Take it before [`Application::run`], which consumes the application.
    pub fn summary(&self) -> tokio::sync::watch::Receiver<RunSummary> {
        self.telemetry.summary()
    }

    /// Checks the dead-letter topic (waiting out a broker outage; refusing one that cannot hold
    /// the largest dead letter), then runs until `shutdown` is cancelled: finishes the open
    /// batch if the sinks allow, commits, and returns. A batch that cannot be finished — the
    /// sinks are out, or the drain takes longer than `LOADER_SHUTDOWN_GRACE` — is left
    /// uncommitted (it will be re-delivered).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<RunSummary> {
        // However it ends (drained, out of grace, refused), an assignment librdkafka still
        // waits on is answered before the consumer closes, or the close would poll for ever.
        let _answered = AnswerOnExit(self.consumer.clone());
        let status_task = tokio::spawn(self.status_server);
        let checked = check_dlq(
            &self.config,
            &self.dlq_admin,
            &self.telemetry,
            &self.liveness,
            &shutdown,
        )
        .await;
        if !matches!(checked, Ok(true)) {
            self.status_stop.cancel();
            let _ = status_task.await;
            return checked.map(|_| self.telemetry.snapshot());
        }
        // Stopped by the caller, or by a store that cannot hold the tables (below).
        let stop = shutdown.child_token();
        let refused = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
        let probe = tokio::spawn(refuse_a_store_without_conditional_writes(
            self.sinks.rolls().store().clone(),
            stop.clone(),
            refused.clone(),
        ));
        let shutdown = stop;
        let grace = self.config.shutdown_grace;
        let grace_over = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
            }
        };
        let mut pipeline = Pipeline {
            config: self.config,
            sinks: self.sinks,
            dlq: self.dlq,
            consumer: self.consumer,
            telemetry: self.telemetry,
            liveness: self.liveness,
            shutdown,
            range: self.range,
        };
        // Dropping the pipeline mid-write is what a crash does, and the sinks are built to survive
        // that: the transaction rolls back or the ledger finishes it, and nothing is committed.
        let result = tokio::select! {
            result = pipeline.run() => result,
            () = grace_over => {
                tracing::warn!(
                    grace = ?grace,
                    "LOADER_SHUTDOWN_GRACE ran out; the open batch is left uncommitted and will be re-delivered"
                );
                Ok(())
            }
        };
        self.status_stop.cancel();
        let _ = status_task.await;
        probe.abort();
        if let Some(e) = refused.lock().ok().and_then(|mut r| r.take()) {
            return Err(e);
        }
        result.map(|()| pipeline.telemetry.snapshot())
    }
}

/// Answers, when dropped, any assignment the consumer has not taken ([`consumer::leaving`]).
struct AnswerOnExit(Arc<LoaderConsumer>);

impl Drop for AnswerOnExit {
    fn drop(&mut self) {
        consumer::leaving(&self.0);
    }
}

/// The start-up check of `KAFKA_DLQ_TOPIC` ([`etl_common::topic`]): created when absent (one
/// partition, as the chart's topics Job makes it), refused when its `max.message.bytes` cannot
/// hold a dead letter of the largest record the loader accepts (`LOADER_MAX_RECORD_BYTES`) with
/// its headers. Larger poison is dead-lettered without its payload (`crate::dlq`), so that limit
/// is what a dead letter's payload can reach. `Ok(false)` when shutdown came first.
async fn check_dlq(
    config: &RunConfig,
    admin: &TopicAdmin,
    telemetry: &Telemetry,
    liveness: &Liveness,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let wanted = Wanted {
        topic: config.dlq_topic.clone(),
        topic_variable: "KAFKA_DLQ_TOPIC",
        partitions: 1,
        create: config.dlq_create.clone(),
        sizing: Sizing {
            variable: "LOADER_MAX_RECORD_BYTES",
            value: config.max_record_bytes as u64,
            record_bytes: |payload| {
                usize::try_from(payload)
                    .unwrap_or(usize::MAX)
                    .saturating_add(RECORD_OVERHEAD_BYTES)
            },
        },
    };
    let checked = topic::check(
        admin,
        &wanted,
        shutdown,
        Backoff::new(config.backoff_base, config.backoff_max),
        liveness,
        |e, delay| {
            telemetry.failed(crate::events::Check::Kafka, format!("{e:#}"));
            tracing::warn!(topic = %config.dlq_topic, error = format!("{e:#}"), retry_in = ?delay, "cannot check the dead-letter topic yet; retrying");
        },
    )
    .await?;
    Ok(checked.is_some())
}

/// Checks, beside the load and without holding it up, that the store honours conditional
/// writes, which the tables' commits need to stay exactly once; a store that does not (`501`,
/// the condition ignored, `AWS_S3_CONDITIONAL_PUT=disabled`) stops the loader with an error
/// naming the setting. A store that cannot be reached decides nothing: asked again later.
async fn refuse_a_store_without_conditional_writes(
    store: crate::sink::store::Store,
    stop: CancellationToken,
    refused: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
) {
    loop {
        match store.honours_conditional_writes().await {
            Ok(true) => return,
            Ok(false) => {
                let error = anyhow::anyhow!(
                    "PARQUET_URL={}: the store does not honour conditional writes (a PUT with If-None-Match: *), which the Delta tables' commits need; use a store that does (AWS S3, MinIO, Cloudflare R2, GCS, Azure) and, for an S3-compatible one, leave AWS_S3_CONDITIONAL_PUT at etag",
                    store.describe()
                );
                tracing::error!(error = %error, "refusing the Parquet store; stopping");
                if let Ok(mut slot) = refused.lock() {
                    *slot = Some(error);
                }
                stop.cancel();
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not check the store's conditional writes yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                }
            }
        }
    }
}
